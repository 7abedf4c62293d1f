"""GEMV benchmark: the pipeline (chain allreduce) GEMV against MeshGEMV (K-tree).

Every point runs in a child process: `python -m benchmarks.gemv --point
ALGORITHM SIZE GRID` prints one JSON row (W is SIZE x SIZE fp16, one vector).
quick: 1K and 2K on 64x64; full: 4K, 8K and 16K on 256x256, and 16K on
720x720 (the scale point: wall time and peak memory are recorded).
"""
from __future__ import annotations

import json
import resource
import time

from benchmarks.child import point_row
from benchmarks.options import add_point_option, command_line

QUICK_POINTS = [(1024, 64), (2048, 64)]
FULL_POINTS = [(4096, 256), (8192, 256), (16384, 256), (16384, 720)]
ALGORITHMS = ("pipeline", "meshgemv")


def measure_point(algorithm: str, size: int, grid: int, dtype: str = "float16") -> dict:
    import numpy as np

    import wse
    from kernels import matmul as G, matvec as V
    cfg = wse.WSE2.with_grid(rows=grid, cols=grid)
    rng = np.random.default_rng(0)
    W = rng.standard_normal((size, size), dtype=np.float32).astype(np.float16)
    x = rng.standard_normal(size).astype(np.float16)
    started = time.perf_counter()
    y, report = V.gemv(W, x, cfg, algorithm=algorithm, dtype=dtype)
    wall = time.perf_counter() - started
    extra = report.extra["gemv"]
    # check a few rows against float64
    rows = rng.choice(size, size=min(size, 16), replace=False)
    Wr = W[rows].astype(np.float64)
    ref = Wr @ x.astype(np.float64)
    scale = np.abs(Wr) @ np.abs(x.astype(np.float64))
    err = float((np.abs(y[rows] - ref) / scale).max())
    return {"algorithm": algorithm, "size": size, "grid": f"{grid}x{grid}", "pes": grid * grid,
            "dtype": dtype, "cycles": report.cycles, "model_cycles": extra["model_cycles"],
            "model_ratio": report.cycles / extra["model_cycles"],
            "matmul_cycles": extra["matmul_cycles"], "allreduce_cycles": extra["allreduce_cycles"],
            "seconds": report.seconds, "microseconds": report.seconds * 1e6,
            "compute_efficiency": report.compute_efficiency,
            "communication_share": extra["communication_share"],
            "stall_cycles_mean": extra["stall_cycles_mean"], "tile": extra["tile"],
            "wavelet_hops": report.wavelet_hops, "engine_wall_s": report.wall_seconds,
            "wall_s": wall,
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "max_rel_error": err,
            "within_tolerance": bool(err <= G.tolerance(dtype, "float32", size, grid))}


def run(quick: bool = True, points=None, timeout: float | None = None) -> list[dict]:
    chosen = points if points is not None else (QUICK_POINTS if quick else FULL_POINTS)
    return [point_row(measure_point, (a, s, g), timeout) for s, g in chosen for a in ALGORITHMS]


def plot(rows: list[dict], out_dir) -> list:
    import pathlib

    from benchmarks.plots import pyplot
    plt = pyplot()
    ok = [r for r in rows if r.get("status") == "ok"]
    if not ok:
        return []
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cases = sorted({(r["size"], r["pes"], r["grid"]) for r in ok})
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    width = 0.4
    for k, algorithm in enumerate(ALGORITHMS):
        by_case = {(r["size"], r["pes"], r["grid"]): r for r in ok if r["algorithm"] == algorithm}
        xs = [i + (k - 0.5) * width for i in range(len(cases))]
        for ax, key in zip(axes, ("microseconds", "communication_share")):
            ax.bar(xs, [by_case[c][key] if c in by_case else 0 for c in cases], width,
                   label=algorithm)
    for ax, title in zip(axes, ("time (us at 1.1 GHz)", "share of cycles in the allreduce")):
        ax.set_xticks(range(len(cases)))
        ax.set_xticklabels([f"{s}\n{g}" for s, _, g in cases], fontsize=8)
        ax.set_title(title)
    axes[0].legend()
    fig.suptitle("GEMV y = W x, fp16 W (square), on the WSE-2 model")
    path = out / "gemv.png"
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return [path]


def _main(argv: list[str] | None = None) -> None:
    parser = command_line("gemv", __doc__, "the full-size points (4K to 16K, module docstring)")
    add_point_option(parser, ("ALGORITHM", "SIZE", "GRID"))
    args = parser.parse_args(argv)
    if args.point:
        print(json.dumps(measure_point(*args.point)))
        return
    for row in run(quick=not args.full):
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    _main()
