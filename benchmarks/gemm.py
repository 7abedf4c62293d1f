"""GEMM benchmark: SUMMA, Cannon and MeshGEMM on square problems and grids.

Every point runs in a child process (so its wall time and peak memory are its
own): `python -m benchmarks.gemm --point ALGORITHM SIZE GRID` prints one JSON
row (ALGORITHM gemmt: C = A @ B.T by GEMM-T, B in its own layout; not in
the suites, which compare the A @ B algorithms). quick: 256^3 on 8x8 and 16x16 and 512^3 on 32x32; full: 2048^3 (fp16)
on 64x64, 128x128, 256x256 (run in full so far: MeshGEMM on 64x64 in 18 min, and
on 128x128 SUMMA in 3.4 min, Cannon in 16 and MeshGEMM in 30, each on one core;
docs/gemm.md) and 8192^3 on 256x256 from its first steps (FIRST_STEPS).

Where a full emulation is too long (8192^3 on 256x256: about 6.8e10
wavelet-hops), `python -m benchmarks.gemm --first-steps ALGORITHM SIZE GRID
K1 K2 [K3 ...]` emulates only the first K1, then the first K2, ... of the L
steps on the full grid with the full-size tiles (kernels.matmul.gemm_first_steps),
extrapolates the last two linearly to L (`extrapolate_cycles`) and gives the
cycles per step between consecutive runs (equal when the pace is steady); its
row says "extrapolated": true and carries every partial run. The result of a partial
run cannot be checked, so the row holds no error figure; each partial run's
cycles and wavelet-hops are compared with the model for the same steps.
Cannon's and MeshGEMM's initial skew (on the fabric, before the first step)
is a one-off that alone moves half as many wavelet-hops as all the steps
(3.4e10 at 8192^3 on 256x256, hours here): the partial runs emulate the
steps only (skew="host") and the row adds the skew's cycles from the model,
model_cycles(fabric skew) - model_cycles(host skew), as "skew_cycles_model".
"""
from __future__ import annotations

import json
import resource
import time

from benchmarks.child import point_row
from benchmarks.options import add_point_option, command_line

QUICK_POINTS = [(256, 8), (256, 16), (512, 32)]
FULL_POINTS = [(2048, 64), (2048, 128), (2048, 256), (8192, 256)]
# points measured by their first steps, extrapolated: the step counts per
# algorithm (Cannon's pace settles at step 3, see docs/gemm.md)
FIRST_STEPS = {(8192, 256): {"summa": [1, 2, 3], "cannon": [3, 4], "meshgemm": [1, 2, 3]}}
ALGORITHMS = ("summa", "cannon", "meshgemm")


def measure_point(algorithm: str, size: int, grid: int, dtype: str = "float16") -> dict:
    import numpy as np

    import wse
    from kernels import matmul as G, reference
    cfg = wse.WSE2.with_grid(rows=grid, cols=grid)
    rng = np.random.default_rng(0)
    A = rng.standard_normal((size, size)).astype(np.float32)
    B = rng.standard_normal((size, size)).astype(np.float32)
    # GEMM-T computes A @ B.T with B in its own layout (`--point gemmt SIZE GRID`)
    transpose_b = algorithm in G.TRANSPOSED_ALGORITHMS
    started = time.perf_counter()
    C, report = G.gemm(A, B, cfg, algorithm=algorithm, dtype=dtype, transpose_b=transpose_b)
    wall = time.perf_counter() - started
    extra = report.extra["gemm"]
    row = {"algorithm": algorithm, "transpose_b": transpose_b, "size": size, "grid": f"{grid}x{grid}", "pes": grid * grid,
           "dtype": dtype, "cycles": report.cycles, "model_cycles": extra["model_cycles"],
           "model_ratio": report.cycles / extra["model_cycles"],
           "skew": extra["skew"],
           "seconds": report.seconds, "compute_efficiency": report.compute_efficiency,
           "communication_share": extra["communication_share"],
           "compute_cycles_mean": extra["compute_cycles_mean"],
           "stall_cycles_mean": extra["stall_cycles_mean"],
           "wavelet_hops": report.wavelet_hops,
           "expected_wavelet_hops": extra["expected_wavelet_hops"],
           "tile": extra["tile"], "sram_bytes_per_pe": extra["sram_bytes_per_pe"],
           "engine_wall_s": report.wall_seconds, "wall_s": wall,
           "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    # spot-check the result against float64 on a few rows (a full check is O(n^3))
    rows = rng.choice(size, size=min(size, 8), replace=False)
    ref = reference.matmul(A[rows], B, transpose_b)
    scale = np.abs(A[rows]).astype(np.float64) @ np.abs(B.T if transpose_b else B)
    tol = G.tolerance(dtype, "float32", size, G.plan(size, size, size, cfg, algorithm,
                                                     transpose_b=transpose_b).k_blocks)
    row["max_rel_error"] = float((np.abs(C[rows] - ref) / scale).max())
    row["within_tolerance"] = bool(row["max_rel_error"] <= tol)
    return row


def extrapolate_cycles(k1: int, cycles1: int, k2: int, cycles2: int, steps: int) -> float:
    """Cycles of all `steps` steps from runs of the first k1 < k2 steps: the
    programs repeat one step, so after the first the cycles grow by a fixed
    amount per step; the last step (no shift after it) is in both runs."""
    if not 1 <= k1 < k2 <= steps:
        raise ValueError(f"need 1 <= k1 < k2 <= steps, got k1={k1}, k2={k2}, steps={steps}")
    return cycles2 + (steps - k2) * (cycles2 - cycles1) / (k2 - k1)


def measure_first_steps(algorithm: str, size: int, grid: int, ks: list[int],
                        dtype: str = "float16") -> dict:
    """Emulate the first k steps for each k in ks (increasing), without the
    skew, extrapolate the last two to all L and add the skew's cycles from
    the model (see the module docstring)."""
    import numpy as np

    import wse
    from kernels import matmul as G
    cfg = wse.WSE2.with_grid(rows=grid, cols=grid)
    rng = np.random.default_rng(0)
    A = rng.standard_normal((size, size)).astype(np.float32)
    B = rng.standard_normal((size, size)).astype(np.float32)
    p = G.plan(size, size, size, cfg, algorithm, dtype, "float32")
    steps_only = G.plan(size, size, size, cfg, algorithm, dtype, "float32", skew="host")
    skew_cycles = G.model_cycles(p, cfg) - G.model_cycles(steps_only, cfg)
    runs = []
    for k in ks:
        started = time.perf_counter()
        report = G.gemm_first_steps(A, B, cfg, k, algorithm=algorithm, dtype=dtype,
                                    skew="host")
        extra = report.extra["gemm"]
        runs.append({"steps_run": k, "cycles": report.cycles,
                     "model_cycles": extra["model_cycles"],
                     "wavelet_hops": report.wavelet_hops,
                     "expected_wavelet_hops": extra["expected_wavelet_hops"],
                     "engine_wall_s": report.wall_seconds,
                     "wall_s": time.perf_counter() - started})
    steps_cycles = extrapolate_cycles(ks[-2], runs[-2]["cycles"], ks[-1], runs[-1]["cycles"],
                                      p.steps)
    cycles = steps_cycles + skew_cycles
    per_step = [(b["cycles"] - a["cycles"]) / (b["steps_run"] - a["steps_run"])
                for a, b in zip(runs, runs[1:])]
    mm_total = p.steps * G.matmul_cycles(p, cfg)
    peak = grid * grid * cfg.peak_flops_per_pe_cycle(dtype)
    return {"algorithm": algorithm, "size": size, "grid": f"{grid}x{grid}", "pes": grid * grid,
            "dtype": dtype, "extrapolated": True, "steps": p.steps, "runs": runs,
            "cycles_per_step": per_step, "steps_cycles": round(steps_cycles),
            "skew_cycles_model": skew_cycles,
            "cycles": round(cycles), "model_cycles": G.model_cycles(p, cfg),
            "model_ratio": cycles / G.model_cycles(p, cfg),
            "seconds": cycles / cfg.clock_hz,
            "compute_efficiency": 2 * size ** 3 / (cycles * peak),
            "communication_share": 1.0 - mm_total / cycles,
            "expected_wavelet_hops": G.expected_wavelet_hops(p),
            "tile": [p.mt, p.kt, p.nt], "sram_bytes_per_pe": p.sram_bytes(),
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def overflow_message(size: int = 2048, grid: int = 16) -> str:
    """The SramOverflowError text for a problem that does not fit."""
    import numpy as np

    import wse
    from kernels import matmul as G
    cfg = wse.WSE2.with_grid(rows=grid, cols=grid)
    try:
        G.gemm(np.ones((size, size)), np.ones((size, size)), cfg, algorithm="meshgemm")
    except wse.SramOverflowError as exc:
        return str(exc)
    return "(fits)"


def _measure_in_child(algorithm: str, size: int, grid: int, timeout: float | None) -> dict:
    ks = FIRST_STEPS.get((size, grid), {}).get(algorithm)
    if ks:
        return point_row(measure_first_steps, (algorithm, size, grid, ks), timeout)
    return point_row(measure_point, (algorithm, size, grid), timeout)


def run(quick: bool = True, points=None, timeout: float | None = None) -> list[dict]:
    """One row per (algorithm, size, grid); `points`: [(size, grid)]."""
    chosen = points if points is not None else (QUICK_POINTS if quick else FULL_POINTS)
    rows = [_measure_in_child(a, s, g, timeout) for s, g in chosen for a in ALGORITHMS]
    rows.append({"algorithm": "meshgemm", "size": 2048, "grid": "16x16", "pes": 256,
                 "status": "SramOverflowError: " + overflow_message()})
    return rows


def plot(rows: list[dict], out_dir) -> list:
    """Cycles, efficiency and communication share per point and algorithm;
    extrapolated points (--first-steps) are hatched."""
    import pathlib

    from benchmarks.plots import pyplot
    plt = pyplot()
    ok = [r for r in rows if r.get("status") == "ok" or r.get("extrapolated")]
    if not ok:
        return []
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cases = sorted({(r["size"], r["pes"], r["grid"]) for r in ok})
    labels = [f"{s}^3\n{g}" for s, _, g in cases]
    fig, axes = plt.subplots(1, 3, figsize=(18, 4.5))
    width = 0.8 / len(ALGORITHMS)
    for k, algorithm in enumerate(ALGORITHMS):
        by_case = {(r["size"], r["pes"], r["grid"]): r for r in ok if r["algorithm"] == algorithm}
        xs = [i + (k - 1) * width for i in range(len(cases))]
        for ax, key in zip(axes, ("cycles", "compute_efficiency", "communication_share")):
            vals = [by_case[c][key] if c in by_case else 0 for c in cases]
            bars = ax.bar(xs, vals, width, label=algorithm, color=f"C{k}")
            for bar, c in zip(bars, cases):
                if by_case.get(c, {}).get("extrapolated"):
                    bar.set_hatch("//")
    for ax, title in zip(axes, ("cycles (log)", "compute efficiency", "communication share")):
        ax.set_xticks(range(len(cases)))
        ax.set_xticklabels(labels, fontsize=8)
        ax.set_title(title)
    axes[0].set_yscale("log")
    axes[0].legend()
    fig.suptitle("GEMM on the WSE-2 model (fp16 tiles, fp32 accumulator; "
                 "hatched: extrapolated from the first steps)")
    path = out / "gemm.png"
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return [path]


def _main(argv: list[str] | None = None) -> None:
    parser = command_line(
        "gemm", __doc__, "the full-size points (2048^3 and 8192^3, module docstring)",
        epilog="Without --point, --first-steps or --plot: run the quick (or --full) "
               "suite and print one JSON row per point.")
    mode = parser.add_mutually_exclusive_group()
    add_point_option(mode, ("ALGORITHM", "SIZE", "GRID"))
    mode.add_argument("--first-steps", nargs="+", metavar="ARG",
                      help="ALGORITHM SIZE GRID K1 K2 [K3 ...]: emulate the first K1, K2, ... "
                           "steps and extrapolate the last two to all steps")
    mode.add_argument("--plot", nargs=2, metavar=("ROWS_JSONL", "DIR"),
                      help="draw the rows of a JSON-lines file into DIR")
    mode.add_argument("--points", metavar="SIZE:GRID,...",
                      help="run these points (every algorithm) instead of a suite")
    args = parser.parse_args(argv)
    if args.point:
        print(json.dumps(measure_point(*args.point)))
    elif args.first_steps:
        if len(args.first_steps) < 5:
            parser.error("--first-steps needs ALGORITHM SIZE GRID and at least two step counts")
        algorithm, size, grid, *steps = args.first_steps
        print(json.dumps(measure_first_steps(algorithm, int(size), int(grid),
                                             [int(v) for v in steps])))
    elif args.plot:
        with open(args.plot[0]) as f:
            rows = [json.loads(line) for line in f if line.strip()]
        for path in plot(rows, args.plot[1]):
            print(path)
    else:
        points = None
        if args.points:
            points = [tuple(int(v) for v in p.split(":")) for p in args.points.split(",")]
        for row in run(quick=not args.full, points=points):
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    _main()
