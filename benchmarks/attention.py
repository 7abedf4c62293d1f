"""kernels.attention on the mesh, algorithm "gemm" (scores Q K^T by GEMM-T
with Q and K where the prefill layout holds them and the fully masked causal
blocks skipped, softmax by max- and sum-allreduces, P V by SUMMA) beside
"ring" (ring attention, online softmax): cycles, traffic and accuracy.

Each case runs causal attention with H heads of hd features over a sequence
of `per_row` positions per row on an n x n grid (every PE keeps 4 positions;
its share of a head's features, hd / (n / H), shrinks as n grows) and reports the cycles, the cycles per ring step (the
kernel runs n steps), wavelet-hops, the error against kernels.reference and
the emulator's wall time. With fixed tiles the per-step cost should stay
falling as n grows (fewer features per PE), while each step's shift stays at
most two hops and the score reduction runs over the g = n / H columns of one
head.

`llama_proxies` runs one LLaMA-3-8B head of the 660 x 660 prefill (4096
tokens, fp16) with the gemm algorithm on R x g columns, R = 33 g, whose PEs
hold the same tiles as at g = 20 (R = 660): 7 queries, 8 features, 231
score columns (33 key blocks of 7 per PE); the heads of the real run are
side by side and identical. The phases are scores (GEMM-T), softmax and pv
(SUMMA); each is fitted a + b g on the two largest proxies and evaluated at
g = 20.

Run alone: python -m benchmarks.attention [--full] [--llama]
"""
from __future__ import annotations

import pathlib
import time

import numpy as np

import wse
from benchmarks.options import command_line

QUICK = [(4, 4), (8, 4), (16, 4)]             # (grid side, heads)
FULL = QUICK + [(32, 4), (64, 8)]


def run(quick: bool = True) -> list[dict]:
    from kernels import reference
    from kernels import attention
    rows = []
    per_row, hd = 4, 32
    for n, heads in (QUICK if quick else FULL):
        seq = per_row * n
        rng = np.random.default_rng(n)
        Q = rng.standard_normal((heads, seq, hd))
        K = rng.standard_normal((max(heads // 2, 1), seq, hd))
        V = rng.standard_normal(K.shape)
        cfg = wse.WSE2.with_grid(rows=n, cols=n)
        for algorithm in ("gemm", "ring"):
            started = time.perf_counter()
            O, report = attention(Q, K, V, cfg, causal=True, algorithm=algorithm)
            wall = time.perf_counter() - started
            err = None
            if seq <= 64:
                ref = reference.attention(Q, K, V, causal=True)
                err = float(np.abs(O - ref).max() / np.abs(ref).max())
            rows.append({"algorithm": algorithm, "grid": f"{n}x{n}", "heads": heads, "seq": seq,
                         "head_dim": hd, "columns_per_head": n // heads, "cycles": report.cycles,
                         "phases": {p["name"]: p["cycles"] for p in report.phases},
                         "cycles_per_step": report.cycles / n,
                         "wavelet_hops": report.wavelet_hops,
                         "busiest_link_wavelets": report.busiest_link_wavelets,
                         "flops": report.flops, "compute_efficiency": report.compute_efficiency,
                         "rel_err": err, "wall_s": wall})
    return rows


def llama_proxies(groups=(1, 2, 4, 8), target_group: int = 20) -> list[dict]:
    """One head, gemm algorithm, on 33g x g PEs (see the module docstring); the
    phases' cycles fitted a + b*g on the last two and evaluated at g = 20."""
    from kernels import attention
    rows = []
    for g in groups:
        R = 33 * g
        hd, seq = 8 * g, 7 * R
        rng = np.random.default_rng(g)
        Q, K, V = (rng.standard_normal((1, seq, hd)) for _ in range(3))
        cfg = wse.WSE2.with_grid(rows=R, cols=g)
        started = time.perf_counter()
        _, report = attention(Q, K, V, cfg, causal=True, dtype="float16", algorithm="gemm")
        rows.append({"algorithm": "gemm", "grid": f"{R}x{g}", "seq": seq, "head_dim": hd,
                     "cycles": report.cycles,
                     "phases": {p["name"]: p["cycles"] for p in report.phases},
                     "score_columns_per_pe": report.extra["gemm_attention"]["score_columns_per_pe"],
                     "wall_s": time.perf_counter() - started})
    a, b = rows[-2], rows[-1]
    ga, gb = (int(r["grid"].split("x")[1]) for r in (a, b))
    at = {}
    for name in a["phases"]:
        slope = (b["phases"][name] - a["phases"][name]) / (gb - ga)
        at[name] = b["phases"][name] + slope * (target_group - gb)
    rows.append({"algorithm": "gemm", "grid": f"{33 * target_group}x{target_group} (one head of "
                 f"660x660, extrapolated from g = {ga}, {gb})", "phases": at,
                 "cycles": sum(at.values())})
    return rows


def plot(rows, out_dir) -> list[pathlib.Path]:
    from benchmarks.plots import pyplot
    plt = pyplot()
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for algorithm, style in (("gemm", "o-"), ("ring", "s--")):
        mine = [r for r in rows if r.get("algorithm") == algorithm and "cycles_per_step" in r]
        ax.plot([int(r["grid"].split("x")[0]) for r in mine], [r["cycles"] for r in mine], style,
                label=f"{algorithm}: cycles")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("grid side n (n x n PEs, 4 positions per row)")
    ax.legend()
    ax.set_title("attention on the mesh: gemm against ring")
    fig.tight_layout()
    path = out_dir / "attention.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return [path]


def _main(argv: list[str] | None = None) -> None:
    parser = command_line("attention", __doc__, "the larger grids")
    parser.add_argument("--llama", action="store_true",
                        help="add the LLaMA-3-8B head proxies (660 x 660 per-PE sizes)")
    args = parser.parse_args(argv)
    rows = run(quick=not args.full)
    if args.llama:
        rows += llama_proxies()
    for r in rows:
        print(r)
    print(plot(rows, "bench-out"))


if __name__ == "__main__":
    _main()
