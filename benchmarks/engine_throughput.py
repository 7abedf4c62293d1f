"""Engine throughput: wavelet-hops and PE-cycles emulated per wall-clock second,
on both engines ("wavelet": every wavelet stepped; "stream": repeating periods
advanced in bulk, the same results to the bit), each beside a bare Numba loop
on the same grid that moves one value per PE per cycle for as many cycles (the
practical ceiling of a cycle-level emulator written in Numba on this machine).

Two saturated engine workloads and an instruction-bound one:
  multicast  PE (0, 0) floods B wavelets: row 0 forwards East and South, every
             other PE forwards South; every PE takes each wavelet off its ramp.
  shift      every PE streams B wavelets to its East neighbour while receiving
             B from its West neighbour (two colors alternate by column).
  tile_products  every PE runs one 16 x 16 x 16 tile product on its main
             thread (fp16 operands into an fp32 accumulator, the GEMM's
             default): a loop nest of FMAC and control instructions, no fabric
             (B does not apply; its rate is PE-cycles per second).
and whole library calls (`--library`): a flood broadcast, a chain reduce and a
two-phase allreduce of B elements per PE along rows, and MeshGEMM.

Each figure is the median of `repeats` runs in one process; the stream
engine's rows also give the fraction of wavelet-hops it advanced in bulk.
Wall times depend on what else runs on the machine: say whether it was shared.

    python -m benchmarks.engine_throughput --sizes 64,128 --library --shared
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


def tile_products_program(cfg: wse.WaferConfig, products: int = 1, size: int = 16) -> wse.Program:
    """Every PE runs `products` tile products C += A B of size^3 on its main
    thread (`TaskBuilder.matmul`): fp16 A and B, an fp32 C."""
    prog = wse.Program(cfg)
    a = prog.buffer("a", (size * size,), "float16")
    b = prog.buffer("b", (size * size,), "float16")
    c = prog.buffer("c", (size * size,), "float32")
    rng = np.random.default_rng(0)
    prog.load(a, rng.standard_normal(size * size).astype(np.float16))
    prog.load(b, rng.standard_normal(size * size).astype(np.float16))
    with prog.role("pe").task("main", entry=True) as t:
        for _ in range(products):
            t.matmul(c.view(), a.view(), b.view(), size, size, size)
    return prog


WORKLOADS = {
    "multicast": multicast_program,
    "shift": shift_program,
    "tile_products": lambda cfg, length: tile_products_program(cfg),
}
ENGINES = ("wavelet", "stream")


def bare_seconds(rows: int, cols: int, cycles: int, repeats: int) -> float:
    """Median wall time of the bare loop over `cycles` cycles of a rows x cols grid."""
    grid = np.zeros((rows, cols), np.float32)
    bare_shift_loop(grid, 1)                       # compile outside the timing
    walls = []
    for _ in range(repeats):
        started = time.perf_counter()
        bare_shift_loop(grid, cycles)
        walls.append(time.perf_counter() - started)
    return statistics.median(walls)


def _row(workload: str, engine: str, rows: int, cols: int, report: wse.RunReport,
         engine_wall: float, call_wall: float, bare_wall: float, length: int) -> dict:
    pe_cycles = rows * cols * report.cycles
    bare_rate = pe_cycles / bare_wall
    return {
        "workload": f"{workload}/{engine}", "engine": engine, "grid": f"{rows}x{cols}",
        "wavelets_per_stream": length, "cycles": report.cycles,
        "wavelet_hops": report.wavelet_hops,
        "engine_wall_s": engine_wall, "call_wall_s": call_wall, "bare_wall_s": bare_wall,
        "engine_hops_per_s": report.wavelet_hops / engine_wall,
        "engine_pe_cycles_per_s": pe_cycles / engine_wall,
        "engine_ns_per_step": 1e9 * engine_wall / max(report.router_steps + report.pe_steps, 1),
        "bare_hops_per_s": bare_rate,
        "ratio_hops": (report.wavelet_hops / engine_wall) / bare_rate,
        "ratio_pe_cycles": (pe_cycles / engine_wall) / bare_rate,
        "bulk_hop_fraction": report.extra.get("bulk_hop_fraction", 0.0),
        "bulk_column_fraction": (report.extra.get("bulk_column_cycles", 0)
                                 / max(report.extra.get("bulk_cycles", 0), 1)),
    }


def _timed(call, engine: str, repeats: int):
    """(last report, median engine wall, median call wall) of `call()` run on
    `engine` after one untimed run; call returns a RunReport (several phases'
    engine walls add up in it)."""
    engine_walls, call_walls, report = [], [], None
    with wse.run_options(engine=engine):
        call()                                     # warm: compiled, pages touched
    for _ in range(repeats):
        with wse.run_options(engine=engine):
            started = time.perf_counter()
            report = call()
            call_walls.append(time.perf_counter() - started)
        engine_walls.append(report.wall_seconds)
    return report, statistics.median(engine_walls), statistics.median(call_walls)


def _compare(workload: str, rows: int, cols: int, length: int, call, repeats: int,
             engines=ENGINES) -> list[dict]:
    """Rows for `call` on each engine; the engines must agree on cycles and hops."""
    out, seen = [], None
    for engine in engines:
        report, engine_wall, call_wall = _timed(call, engine, repeats)
        if seen is not None and seen != (report.cycles, report.wavelet_hops):
            raise AssertionError(f"{workload}: engines disagree: {seen} vs "
                                 f"{(report.cycles, report.wavelet_hops)}")
        seen = (report.cycles, report.wavelet_hops)
        bare = bare_seconds(rows, cols, report.cycles, repeats)
        out.append(_row(workload, engine, rows, cols, report, engine_wall, call_wall, bare,
                        length))
    return out


def measure(workload: str, rows: int, cols: int, length: int, repeats: int = 3,
            engines=ENGINES) -> list[dict]:
    """An engine workload (a name in WORKLOADS) on each engine."""
    cfg = wse.WSE2.with_grid(rows=rows, cols=cols)
    build = WORKLOADS[workload]
    return _compare(workload, rows, cols, length, lambda: build(cfg, length).run().report,
                    repeats, engines)


def library_calls(size: int, length: int = 256) -> dict:
    """Whole library calls on a size x size grid: name -> call returning a report."""
    from kernels import collectives, matmul
    cfg = wse.WSE2.with_grid(rows=size, cols=size)
    x = np.random.default_rng(0).standard_normal((size, size, length)).astype(np.float32)
    tile = 4
    rng = np.random.default_rng(1)
    A = rng.standard_normal((size * tile, size * tile))
    B = rng.standard_normal((size * tile, size * tile))
    return {
        "broadcast_flood": lambda: collectives.broadcast(x, cfg, along="x", root=0,
                                                         algorithm="flood")[1],
        "reduce_chain": lambda: collectives.reduce(x, cfg, along="x", root=0,
                                                   algorithm="chain")[1],
        "allreduce_two_phase": lambda: collectives.allreduce(x, cfg, along="x",
                                                             algorithm="two_phase")[1],
        f"meshgemm_{size * tile}": lambda: matmul.gemm(A, B, cfg, algorithm="meshgemm")[1],
    }


def run(size: int = 256, length: int = 256, repeats: int = 3, library: bool = False,
        engines=ENGINES, calls: tuple = (), report=None) -> list[dict]:
    """Rows for the engine workloads and, with `library`, the library calls
    (those named in `calls`, default all); `report(rows)` sees each workload's
    rows as they come."""
    rows = []
    for w in WORKLOADS:
        rows += measure(w, size, size, length, repeats, engines)
        if report:
            report(rows[-len(engines):])
    if library:
        for name, call in library_calls(size, length).items():
            if calls and not any(name.startswith(c) for c in calls):
                continue
            rows += _compare(name, size, size, length, call, repeats, engines)
            if report:
                report(rows[-len(engines):])
    return rows


def speedups(rows: list[dict]) -> list[dict]:
    """Stream over wavelet engine, per workload and grid (engine wall time)."""
    by = {(r["workload"].rsplit("/", 1)[0], r["grid"], r["engine"]): r for r in rows}
    out = []
    for (workload, grid, engine), r in by.items():
        if engine != "stream" or (workload, grid, "wavelet") not in by:
            continue
        w = by[(workload, grid, "wavelet")]
        out.append({"workload": workload, "grid": grid,
                    "wavelet_hops_per_s": w["engine_hops_per_s"],
                    "stream_hops_per_s": r["engine_hops_per_s"],
                    "bare_values_per_s": r["bare_hops_per_s"],
                    "speedup": w["engine_wall_s"] / r["engine_wall_s"],
                    "call_speedup": w["call_wall_s"] / r["call_wall_s"],
                    "bulk_hop_fraction": r["bulk_hop_fraction"],
                    "stream_share_of_bare": r["ratio_hops"]})
    return out


def main(argv=None) -> None:
    import argparse
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("size", nargs="?", type=int, default=None,
                        help="one grid size (default: --sizes)")
    parser.add_argument("--sizes", default="64", help="comma-separated grid sizes")
    parser.add_argument("--length", type=int, default=256, help="elements per PE stream")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--library", action="store_true", help="also whole library calls")
    parser.add_argument("--calls", default="",
                        help="comma-separated library calls (name prefixes; default all)")
    parser.add_argument("--shared", action="store_true",
                        help="say the machine was shared with other work")
    args = parser.parse_args(argv)
    sizes = [args.size] if args.size else [int(s) for s in args.sizes.split(",")]
    print(f"machine: {'shared with other work' if args.shared else 'quiet'}; "
          f"medians of {args.repeats}")
    print(f"{'workload':22} {'grid':>8} {'wavelet Mhop/s':>15} {'stream Mhop/s':>14} "
          f"{'bare Mval/s':>12} {'speedup':>8} {'call x':>7} {'bulk':>6}")
    def rate(hops_per_s, width):      # an instruction-bound workload moves no wavelets
        return f"{hops_per_s / 1e6:{width}.1f}" if hops_per_s > 0 else f"{'-':>{width}}"

    def report(rows):
        for s in speedups(rows):
            print(f"{s['workload']:22} {s['grid']:>8} {rate(s['wavelet_hops_per_s'], 15)} "
                  f"{rate(s['stream_hops_per_s'], 14)} {s['bare_values_per_s'] / 1e6:12.0f} "
                  f"{s['speedup']:8.2f} {s['call_speedup']:7.2f} "
                  f"{s['bulk_hop_fraction']:6.1%}", flush=True)

    calls = tuple(c for c in args.calls.split(",") if c)
    for size in sizes:
        run(size, args.length, args.repeats, args.library, calls=calls, report=report)


if __name__ == "__main__":
    main()
