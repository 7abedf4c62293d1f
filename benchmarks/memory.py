"""Peak memory of a full-wafer run: a neighbour shift on every PE of a
757 x 996 grid (WSE-2's fabric) with 4 KiB of SRAM in use per PE (a 2 KiB
send buffer and a 2 KiB receive buffer, 512 fp32 each, all streamed).

Run it in its own process: peak resident memory (ru_maxrss) covers the whole
process, including NumPy's and Numba's own footprint.
"""
from __future__ import annotations

import resource
import sys
import time

import numpy as np

import wse
from benchmarks.engine_throughput import shift_program


def run(rows: int = 996, cols: int = 757, elements: int = 512) -> dict:
    cfg = wse.WSE2.with_grid(rows=rows, cols=cols)
    started = time.perf_counter()
    prog = shift_program(cfg, elements)
    built = time.perf_counter()
    result = prog.run()
    finished = time.perf_counter()
    received = result.read(prog.buffers[1])
    expected = np.arange(elements, dtype=np.float32)
    assert np.array_equal(received[:, 1:], np.broadcast_to(expected, received[:, 1:].shape))
    report = result.report
    return {
        "grid": f"{cols}x{rows}", "pes": rows * cols,
        "sram_used_bytes_per_pe": int(report.sram_peak_bytes.max()),
        "cycles": report.cycles, "wavelet_hops": report.wavelet_hops,
        "build_s": built - started, "run_s": finished - built,
        "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20,
    }


if __name__ == "__main__":
    args = [int(a) for a in sys.argv[1:]]
    print(run(*args))
