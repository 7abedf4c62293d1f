"""Emulator scaling: wall time and memory against the work emulated (PEs x cycles).

Workload: kernels.collectives.shift along x with wrap-around, every PE
streaming B wavelets to its East neighbour (the wrap stream runs back over
the whole row), so every PE is busy for most of the run and the run lasts
    cycles = sigma + delta + 2*T_R + (cols - 1)*H + B + c
(kernels.collectives.cost("shift", ...): start-up, datapath, ramps, the
wrap stream's hops, the stream, the final wait). Work = rows x cols x cycles PE-cycles.

Each grid point runs in a fresh Python process so that its peak memory is
its own: the child imports the kernels, warms the engine up on a 2x2 grid
(loading or compiling Numba's code), resets its peak-RSS count, runs the
point and reports how far its peak RSS (VmHWM) rose above its resident set
before the point: the memory the emulation of that grid needed.

    python -m benchmarks.scaling            # quick points, printed as rows
    python -m benchmarks.scaling --full
"""
from __future__ import annotations

import json
import subprocess
import sys

from benchmarks.options import add_point_option, command_line

QUICK_POINTS = [(8, 8, 128), (16, 16, 128), (32, 32, 128), (64, 64, 128)]
FULL_POINTS = [(n, n, b) for b in (128, 512) for n in (16, 32, 64, 128, 192, 256)]


def _peak_rss_mib() -> float:
    """This process's peak resident set (VmHWM), MiB."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0   # KiB on Linux


def _reset_peak_rss() -> bool:
    """Start the peak-RSS count afresh (Linux: writing 5 to clear_refs resets
    VmHWM), so that compiling or loading the engine does not mask the point's
    own peak. False where the kernel does not allow it."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _rss_mib() -> float:
    import psutil
    return psutil.Process().memory_info().rss / (1 << 20)


def measure_point(rows: int, cols: int, length: int) -> dict:
    """Run one point in this process (call it in a fresh one: see run())."""
    import time

    import numpy as np

    import wse
    from kernels.collectives import cost, shift

    warm_cfg = wse.WSE2.with_grid(rows=2, cols=2)
    shift(np.zeros((2, 2, 4), np.float32), warm_cfg, along="x", k=1)
    reset = _reset_peak_rss()
    baseline = _rss_mib() if reset else _peak_rss_mib()
    cfg = wse.WSE2.with_grid(rows=rows, cols=cols)
    x = np.random.default_rng(0).standard_normal((rows, cols, length)).astype(np.float32)
    started = time.perf_counter()
    y, report = shift(x, cfg, along="x", k=1)
    kernel_wall = time.perf_counter() - started
    if not np.array_equal(y, np.roll(x, 1, axis=1)):
        raise AssertionError(f"shift on {rows}x{cols} moved the wrong values")
    peak = _peak_rss_mib()
    pes = rows * cols
    pe_cycles = pes * report.cycles
    return {
        "grid": f"{rows}x{cols}", "pes": pes, "wavelets_per_pe": length,
        "cycles": report.cycles,
        "cycles_formula": cost("shift", "plain", cols, length, cfg, k=1),
        "pe_cycles": pe_cycles, "wavelet_hops": report.wavelet_hops,
        "engine_wall_s": report.wall_seconds, "kernel_wall_s": kernel_wall,
        "ns_per_pe_cycle": 1e9 * report.wall_seconds / pe_cycles,
        "peak_rss_mb": peak, "rss_growth_mb": max(peak - baseline, 0.0),
        "bytes_per_pe": max(peak - baseline, 0.0) * (1 << 20) / pes,
        "peak_reset": reset,
    }


def _measure_in_child(rows: int, cols: int, length: int) -> dict:
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.scaling", "--point", str(rows), str(cols), str(length)],
        capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"scaling point {rows}x{cols} B={length} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def run(quick: bool = True, points=None) -> list[dict]:
    """One row per (grid, B), smallest work first. `points`: [(rows, cols, B)]."""
    chosen = points if points is not None else (QUICK_POINTS if quick else FULL_POINTS)
    chosen = sorted(chosen, key=lambda p: (p[2], p[0] * p[1]))
    return [_measure_in_child(*p) for p in chosen]


def plot(rows: list[dict], out_dir) -> list:
    import pathlib

    from . import plots
    if not rows:
        return []
    return [plots.scaling_curves(rows, pathlib.Path(out_dir) / "scaling.png")]


def _main(argv: list[str] | None = None) -> None:
    parser = command_line("scaling", __doc__, "the full-size grids")
    add_point_option(parser, ("ROWS", "COLS", "LENGTH"))
    args = parser.parse_args(argv)
    if args.point:
        print(json.dumps(measure_point(*args.point)))
        return
    for row in run(quick=not args.full):
        print({k: (f"{v:.3g}" if isinstance(v, float) else v) for k, v in row.items()})


if __name__ == "__main__":
    _main()
