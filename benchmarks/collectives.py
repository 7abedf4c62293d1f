"""Collectives on one row of P PEs: emulated cycles against the cost functions.

For every reduce and allreduce algorithm and every (P, B) of the sweep this
runs the kernel on a 1 x P grid (root at index 0), records the engine's cycle
count beside `kernels.collectives.cost`, and marks the cheapest algorithm per
(P, B). Star needs one color per source, so it runs only while P - 1 fits in
the config's colors.

    python -m benchmarks.collectives            # full sweep (P to 512, B to 4096)
    python -m benchmarks.collectives --quick    # a small subset
    python -m benchmarks.collectives --plot docs/img --markdown
"""
from __future__ import annotations

import argparse
import pathlib
import time

import numpy as np

import wse
from kernels import collectives as C

FULL_P = (2, 4, 8, 16, 32, 64, 128, 256, 512)
FULL_B = (1, 4, 16, 64, 256, 1024, 4096)
QUICK_P = (2, 8, 32, 128)
QUICK_B = (1, 64, 1024)


def _runs(collective: str):
    if collective == "reduce":
        return C.REDUCE_ALGORITHMS, C.reduce
    return C.ALLREDUCE_ALGORITHMS, C.allreduce


def run(quick: bool = True, cfg: wse.WaferConfig = wse.WSE2) -> list[dict]:
    """One row per (collective, algorithm, P, B): cycles, predicted, relative error,
    and whether it is the fastest algorithm of its (collective, P, B)."""
    Ps, Bs = (QUICK_P, QUICK_B) if quick else (FULL_P, FULL_B)
    rows = []
    for collective in ("reduce", "allreduce"):
        algorithms, call = _runs(collective)
        for P in Ps:
            grid = cfg.with_grid(1, P)
            for B in Bs:
                x = np.ones((1, P, B), np.float32)
                group = []
                for algorithm in algorithms:
                    if C.colors_needed(collective, algorithm, P) > grid.num_colors:
                        continue
                    started = time.perf_counter()
                    _, report = call(x, grid, algorithm=algorithm)
                    predicted = C.cost(collective, algorithm, P, B, grid)
                    group.append({
                        "collective": collective, "algorithm": algorithm, "P": P, "B": B,
                        "cycles": report.cycles, "predicted": predicted,
                        "rel_error": (report.cycles - predicted) / predicted,
                        "wavelet_hops": report.wavelet_hops,
                        "wall_seconds": time.perf_counter() - started,
                    })
                best = min(r["cycles"] for r in group)
                for r in group:
                    r["best"] = r["cycles"] == best
                rows += group
    return rows


def max_errors(rows: list[dict]) -> dict[tuple[str, str], float]:
    """Largest |cycles - predicted| / predicted per (collective, algorithm)."""
    out: dict[tuple[str, str], float] = {}
    for r in rows:
        key = (r["collective"], r["algorithm"])
        out[key] = max(out.get(key, 0.0), abs(r["rel_error"]))
    return out


def markdown(rows: list[dict], collective: str) -> str:
    """Cycles per (P, B) and algorithm; the fastest in bold."""
    algorithms = [a for a in _runs(collective)[0]
                  if any(r["algorithm"] == a and r["collective"] == collective for r in rows)]
    lines = ["| P | B | " + " | ".join(algorithms) + " | best |",
             "|---:|---:|" + "---:|" * len(algorithms) + "---|"]
    cells: dict[tuple[int, int], dict[str, dict]] = {}
    for r in rows:
        if r["collective"] == collective:
            cells.setdefault((r["P"], r["B"]), {})[r["algorithm"]] = r
    for (P, B), by_alg in sorted(cells.items()):
        row = []
        for a in algorithms:
            r = by_alg.get(a)
            if r is None:
                row.append("-")
            else:
                row.append(f"**{r['cycles']}**" if r["best"] else str(r["cycles"]))
        best = [a for a, r in by_alg.items() if r["best"]]
        lines.append(f"| {P} | {B} | " + " | ".join(row) + f" | {', '.join(best)} |")
    return "\n".join(lines)


def plot(rows: list[dict], out_dir) -> list[pathlib.Path]:
    """Cycles against P (one panel per B) and against B (one panel per P), log-log,
    per collective; the fastest algorithm of each point is circled."""
    from benchmarks.plots import pyplot
    plt = pyplot()

    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for collective in ("reduce", "allreduce"):
        sub = [r for r in rows if r["collective"] == collective]
        if not sub:
            continue
        algorithms = [a for a in _runs(collective)[0] if any(r["algorithm"] == a for r in sub)]
        for x_key, panel_key in (("P", "B"), ("B", "P")):
            panels = sorted({r[panel_key] for r in sub})
            fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.4),
                                     squeeze=False, sharey=False)
            handles = {}
            for ax, value in zip(axes[0], panels):
                for a in algorithms:
                    pts = sorted((r[x_key], r["cycles"], r["best"]) for r in sub
                                 if r["algorithm"] == a and r[panel_key] == value)
                    if not pts:
                        continue
                    xs, ys, best = zip(*pts)
                    # one color per algorithm in every panel (star is absent from some)
                    line, = ax.plot(xs, ys, marker=".", label=a,
                                    color=f"C{algorithms.index(a)}")
                    handles.setdefault(a, line)
                    bx = [x for x, b in zip(xs, best) if b]
                    by = [y for y, b in zip(ys, best) if b]
                    ax.scatter(bx, by, s=70, facecolors="none", edgecolors=line.get_color())
                ax.set_xscale("log", base=2)
                ax.set_yscale("log")
                ax.set_title(f"{panel_key} = {value}", fontsize=9)
                ax.set_xlabel(x_key)
            axes[0][0].set_ylabel("cycles")
            axes[0][-1].legend(handles.values(), handles.keys(), fontsize=7)
            fig.suptitle(f"{collective} on a 1 x P row (circled: fastest)", fontsize=10)
            fig.tight_layout()
            path = out_dir / f"collectives_{collective}_vs_{x_key}.png"
            fig.savefig(path, dpi=110)
            plt.close(fig)
            written.append(path)
    return written


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small subset of (P, B)")
    parser.add_argument("--plot", metavar="DIR", help="write PNG plots into DIR")
    parser.add_argument("--markdown", action="store_true", help="print markdown tables")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    rows = run(quick=args.quick)
    print(f"{len(rows)} runs in {time.perf_counter() - started:.1f} s")
    print("max |cycles - cost| / cost per algorithm:")
    for (collective, algorithm), err in sorted(max_errors(rows).items()):
        print(f"  {collective:9s} {algorithm:17s} {100 * err:6.2f} %")
    if args.markdown:
        for collective in ("reduce", "allreduce"):
            print(f"\n### {collective}\n")
            print(markdown(rows, collective))
    if args.plot:
        for path in plot(rows, args.plot):
            print("wrote", path)


if __name__ == "__main__":
    main()
