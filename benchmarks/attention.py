"""kernels.attention (ring attention on the mesh): cycles, traffic and accuracy.

Each case runs causal attention with H heads of hd features over a sequence
of `per_row` positions per row on an n x n grid (every PE keeps 4 positions;
its share of a head's features, hd / (n / H), shrinks as n grows) and reports the cycles, the cycles per ring step (the
kernel runs n steps), wavelet-hops, the error against kernels.reference and
the emulator's wall time. With fixed tiles the per-step cost should stay
falling as n grows (fewer features per PE), while each step's shift stays at
most two hops and the score reduction runs over the g = n / H columns of one
head.

Run alone: python -m benchmarks.attention [--full]
"""
from __future__ import annotations

import pathlib
import sys
import time

import numpy as np

import wse

QUICK = [(4, 4), (8, 4), (16, 4)]             # (grid side, heads)
FULL = QUICK + [(32, 4), (64, 8)]


def run(quick: bool = True) -> list[dict]:
    from kernels import reference
    from kernels.attention import attention
    rows = []
    per_row, hd = 4, 32
    for n, heads in (QUICK if quick else FULL):
        seq = per_row * n
        rng = np.random.default_rng(n)
        Q = rng.standard_normal((heads, seq, hd))
        K = rng.standard_normal((max(heads // 2, 1), seq, hd))
        V = rng.standard_normal(K.shape)
        cfg = wse.WSE2.with_grid(rows=n, cols=n)
        started = time.perf_counter()
        O, report = attention(Q, K, V, cfg, causal=True)
        wall = time.perf_counter() - started
        err = None
        if seq <= 64:
            ref = reference.attention(Q, K, V, causal=True)
            err = float(np.abs(O - ref).max() / np.abs(ref).max())
        rows.append({"grid": f"{n}x{n}", "heads": heads, "seq": seq, "head_dim": hd,
                     "columns_per_head": n // heads, "cycles": report.cycles,
                     "cycles_per_step": report.cycles / n, "wavelet_hops": report.wavelet_hops,
                     "busiest_link_wavelets": report.busiest_link_wavelets,
                     "flops": report.flops, "compute_efficiency": report.compute_efficiency,
                     "rel_err": err, "wall_s": wall})
    return rows


def plot(rows, out_dir) -> list[pathlib.Path]:
    from benchmarks.plots import pyplot
    plt = pyplot()
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    sides = [int(r["grid"].split("x")[0]) for r in rows]
    ax.plot(sides, [r["cycles_per_step"] for r in rows], "o-", label="cycles per ring step")
    ax.plot(sides, [r["cycles"] for r in rows], "s--", label="cycles")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("grid side n (n x n PEs, 4 positions per row)")
    ax.legend()
    ax.set_title("ring attention on the mesh")
    fig.tight_layout()
    path = out_dir / "attention.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return [path]


if __name__ == "__main__":
    rows = run(quick="--full" not in sys.argv)
    for r in rows:
        print(r)
    print(plot(rows, "bench-out"))
