"""GEMM benchmark: SUMMA, Cannon and MeshGEMM on square problems and grids.

Every point runs in a child process (so its wall time and peak memory are its
own): `python -m benchmarks.gemm --point ALGORITHM SIZE GRID` prints one JSON
row. quick: 256^3 on 8x8 and 16x16 and 512^3 on 32x32; full: the issue's
points, 2048^3 (fp16) on 64x64, 128x128, 256x256 and 8192^3 on 256x256
(the last ones take long; see docs/gemm.md for what finished).
"""
from __future__ import annotations

import importlib
import json
import resource
import subprocess
import sys
import time

QUICK_POINTS = [(256, 8), (256, 16), (512, 32)]
FULL_POINTS = [(2048, 64), (2048, 128), (2048, 256), (8192, 256)]
ALGORITHMS = ("summa", "cannon", "meshgemm")


def measure_point(algorithm: str, size: int, grid: int, dtype: str = "float16") -> dict:
    import numpy as np

    import wse
    G = importlib.import_module("kernels.gemm")
    from kernels import reference
    cfg = wse.WSE2.with_grid(rows=grid, cols=grid)
    rng = np.random.default_rng(0)
    A = rng.standard_normal((size, size)).astype(np.float32)
    B = rng.standard_normal((size, size)).astype(np.float32)
    started = time.perf_counter()
    C, report = G.gemm(A, B, cfg, algorithm=algorithm, dtype=dtype)
    wall = time.perf_counter() - started
    extra = report.extra["gemm"]
    row = {"algorithm": algorithm, "size": size, "grid": f"{grid}x{grid}", "pes": grid * grid,
           "dtype": dtype, "cycles": report.cycles, "model_cycles": extra["model_cycles"],
           "model_ratio": report.cycles / extra["model_cycles"],
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
    ref = reference.matmul(A[rows], B)
    scale = np.abs(A[rows]).astype(np.float64) @ np.abs(B)
    tol = G.tolerance(dtype, "float32", size, extra["steps"])
    row["max_rel_error"] = float((np.abs(C[rows] - ref) / scale).max())
    row["within_tolerance"] = bool(row["max_rel_error"] <= tol)
    return row


def overflow_message(size: int = 2048, grid: int = 16) -> str:
    """The SramOverflowError text for a problem that does not fit."""
    import numpy as np

    import wse
    G = importlib.import_module("kernels.gemm")
    cfg = wse.WSE2.with_grid(rows=grid, cols=grid)
    try:
        G.gemm(np.ones((size, size)), np.ones((size, size)), cfg, algorithm="meshgemm")
    except wse.SramOverflowError as exc:
        return str(exc)
    return "(fits)"


def _measure_in_child(algorithm: str, size: int, grid: int, timeout: float | None) -> dict:
    try:
        done = subprocess.run([sys.executable, "-m", "benchmarks.gemm", "--point", algorithm,
                               str(size), str(grid)], capture_output=True, text=True,
                              check=False, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"algorithm": algorithm, "size": size, "grid": f"{grid}x{grid}",
                "pes": grid * grid, "status": f"not finished within {timeout:.0f} s"}
    if done.returncode != 0:
        return {"algorithm": algorithm, "size": size, "grid": f"{grid}x{grid}",
                "pes": grid * grid, "status": "failed: " + done.stderr.strip()[-300:]}
    row = json.loads(done.stdout.strip().splitlines()[-1])
    row["status"] = "ok"
    return row


def run(quick: bool = True, points=None, timeout: float | None = None) -> list[dict]:
    """One row per (algorithm, size, grid); `points`: [(size, grid)]."""
    chosen = points if points is not None else (QUICK_POINTS if quick else FULL_POINTS)
    rows = [_measure_in_child(a, s, g, timeout) for s, g in chosen for a in ALGORITHMS]
    rows.append({"algorithm": "meshgemm", "size": 2048, "grid": "16x16", "pes": 256,
                 "status": "SramOverflowError: " + overflow_message()})
    return rows


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
    labels = [f"{s}^3\n{g}" for s, _, g in cases]
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    width = 0.8 / len(ALGORITHMS)
    for k, algorithm in enumerate(ALGORITHMS):
        by_case = {(r["size"], r["pes"], r["grid"]): r for r in ok if r["algorithm"] == algorithm}
        xs = [i + (k - 1) * width for i in range(len(cases))]
        for ax, key in zip(axes, ("cycles", "compute_efficiency", "communication_share")):
            vals = [by_case[c][key] if c in by_case else 0 for c in cases]
            ax.bar(xs, vals, width, label=algorithm)
    for ax, title in zip(axes, ("cycles (log)", "compute efficiency", "communication share")):
        ax.set_xticks(range(len(cases)))
        ax.set_xticklabels(labels, fontsize=8)
        ax.set_title(title)
    axes[0].set_yscale("log")
    axes[0].legend()
    fig.suptitle("GEMM on the WSE-2 model (fp16 tiles, fp32 accumulator)")
    path = out / "gemm.png"
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return [path]


def _main(argv: list[str]) -> None:
    if argv[:1] == ["--point"]:
        print(json.dumps(measure_point(argv[1], int(argv[2]), int(argv[3]))))
        return
    if argv[:1] == ["--points"]:          # --points SIZE:GRID,SIZE:GRID [--plot DIR]
        pts = [tuple(int(v) for v in p.split(":")) for p in argv[1].split(",")]
        rows = run(points=pts)
    else:
        rows = run(quick="--full" not in argv)
    for row in rows:
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    _main(sys.argv[1:])
