"""Engine throughput: wavelet-hops and PE-cycles emulated per wall-clock second.

Two saturated workloads, each beside a bare Numba loop on the same grid that
moves one value per PE per cycle (the practical ceiling of any cycle-level
emulator written in Numba on this machine):

  multicast  PE (0, 0) floods B wavelets: row 0 forwards East and South, every
             other PE forwards South; every PE takes each wavelet off its ramp.
  shift      every PE streams B wavelets to its East neighbour while receiving
             B from its West neighbour (two colors alternate by column).

Ratios are measured in the same process, medians of `repeats` runs.
"""
from __future__ import annotations

import statistics
import time

import numpy as np
from numba import njit

import wse


@njit(cache=True)
def bare_shift_loop(grid: np.ndarray, cycles: int) -> float:
    """Move one value per PE per cycle to the East neighbour (wrapping)."""
    rows, cols = grid.shape
    nxt = np.empty_like(grid)
    for _ in range(cycles):
        for y in range(rows):
            for x in range(cols):
                nxt[y, x + 1 if x + 1 < cols else 0] = grid[y, x]
        grid, nxt = nxt, grid
    return grid[0, 0]


def multicast_program(cfg: wse.WaferConfig, length: int) -> wse.Program:
    prog = wse.Program(cfg)
    c = prog.color("flood")
    rows, cols = cfg.rows, cfg.cols
    rx = np.full((rows, cols), 1 << 0, np.uint8)              # from N
    rx[0, :] = 1 << 3                                         # row 0: from W
    rx[0, 0] = 1 << 4                                         # root: from its ramp
    tx = np.full((rows, cols), (1 << 4) | (1 << 2), np.uint8)  # to RAMP and S
    tx[0, :] |= 1 << 1                                        # row 0 also East
    tx[0, -1] &= ~np.uint8(1 << 1)
    tx[-1, :] &= ~np.uint8(1 << 2)
    tx[0, 0] &= ~np.uint8(1 << 4)                             # the root keeps no copy
    if rows == 1 and cols == 1:
        tx[0, 0] = 1 << 4
    prog.route_masks(c, rx, tx)
    x = prog.buffer("x", (length,), "float32")
    root = prog.role("root", where=prog.pes(rows=0, cols=0))
    with root.task("main", entry=True) as t:
        t.mov(prog.fabout(c, length), x.view())
    others = np.ones((rows, cols), bool)
    others[0, 0] = False
    leaf = prog.role("leaf", where=others)
    with leaf.task("main", entry=True) as t:
        t.mov(x.view(), prog.fabin(c, length))
    prog.load(x, np.arange(length, dtype=np.float32))
    return prog


def shift_program(cfg: wse.WaferConfig, length: int) -> wse.Program:
    prog = wse.Program(cfg)
    even, odd = prog.color("even"), prog.color("odd")
    rows, cols = cfg.rows, cfg.cols
    xs = np.broadcast_to(np.arange(cols), (rows, cols))
    for color, parity in ((even, 0), (odd, 1)):
        rx = np.zeros((rows, cols), np.uint8)
        tx = np.zeros((rows, cols), np.uint8)
        senders = (xs % 2 == parity) & (xs < cols - 1)
        rx[senders], tx[senders] = 1 << 4, 1 << 1             # RAMP -> E
        receivers = (xs % 2 != parity) & (xs > 0)
        rx[receivers], tx[receivers] = 1 << 3, 1 << 4         # W -> RAMP
        prog.route_masks(color, rx, tx)
    send_color = prog.color_param_indices("send", np.where(xs % 2 == 0, even.index, odd.index))
    recv_color = prog.color_param_indices("recv", np.where(xs % 2 == 0, odd.index, even.index))
    out = prog.buffer("out", (length,), "float32")
    inp = prog.buffer("in", (length,), "float32")
    middle = prog.role("middle", where=prog.pes(cols=slice(1, cols - 1)))
    with middle.task("main", entry=True) as t:
        t.mov(prog.fabout(send_color, length), out.view(), async_=True)
        t.mov(inp.view(), prog.fabin(recv_color, length))
        t.wait()
    if cols > 1:
        first = prog.role("first", where=prog.pes(cols=0))
        with first.task("main", entry=True) as t:
            t.mov(prog.fabout(send_color, length), out.view())
        last = prog.role("last", where=prog.pes(cols=cols - 1))
        with last.task("main", entry=True) as t:
            t.mov(inp.view(), prog.fabin(recv_color, length))
    prog.load(out, np.arange(length, dtype=np.float32))
    return prog


def measure(workload: str, rows: int, cols: int, length: int, repeats: int = 3) -> dict:
    cfg = wse.WSE2.with_grid(rows=rows, cols=cols)
    build = multicast_program if workload == "multicast" else shift_program
    walls, report = [], None
    for _ in range(repeats):
        prog = build(cfg, length)
        result = prog.run()
        walls.append(result.report.wall_seconds)
        report = result.report
    wall = statistics.median(walls)
    grid = np.zeros((rows, cols), np.float32)
    bare_shift_loop(grid, 1)                       # compile outside the timing
    bare = []
    for _ in range(repeats):
        started = time.perf_counter()
        bare_shift_loop(grid, report.cycles)
        bare.append(time.perf_counter() - started)
    bare_wall = statistics.median(bare)
    pe_cycles = rows * cols * report.cycles
    return {
        "workload": workload, "grid": f"{rows}x{cols}", "wavelets_per_stream": length,
        "cycles": report.cycles, "wavelet_hops": report.wavelet_hops,
        "engine_wall_s": wall, "bare_wall_s": bare_wall,
        "engine_hops_per_s": report.wavelet_hops / wall,
        "engine_pe_cycles_per_s": pe_cycles / wall,
        "engine_ns_per_step": 1e9 * wall / max(report.router_steps + report.pe_steps, 1),
        "bare_hops_per_s": pe_cycles / bare_wall,
        "ratio_hops": (report.wavelet_hops / wall) / (pe_cycles / bare_wall),
        "ratio_pe_cycles": (pe_cycles / wall) / (pe_cycles / bare_wall),
    }


def run(size: int = 256, length: int = 256, repeats: int = 3) -> list[dict]:
    return [measure(w, size, size, length, repeats) for w in ("multicast", "shift")]


if __name__ == "__main__":
    import sys
    size = int(sys.argv[1]) if len(sys.argv) > 1 else 256
    for row in run(size):
        print({k: (f"{v:.3g}" if isinstance(v, float) else v) for k, v in row.items()})
