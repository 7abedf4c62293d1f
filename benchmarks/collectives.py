"""Collectives on one row of P PEs: emulated cycles against the cost functions.

For every reduce and allreduce algorithm and every (P, B) of the sweep this
runs the kernel on a 1 x P grid (reduce: root at index 0; allreduce: each
algorithm's `default_allreduce_root`, the cheapest root for ktree, WaferLLM's
mid-rooted two-tree, index 0 for the others), records the engine's cycle
count beside `kernels.collectives.cost`, and marks the cheapest algorithm per
(P, B). Star needs one color per source, so it runs only while P - 1 fits in
the config's colors.

    python -m benchmarks.collectives            # full sweep (P to 512, B to 4096)
    python -m benchmarks.collectives --quick    # a small subset
    python -m benchmarks.collectives --plot docs/img --markdown
    python -m benchmarks.collectives --published [--quick]   # against HPDC 2024

The published sweep (`published_sweep`) runs flood broadcast, chain reduce
and star reduce on 1 x P (root 0) and sets the emulated cycles beside the
WSE-2 fabric model of Luczynski et al., "Near-Optimal Wafer-Scale Reduce"
(HPDC 2024, T_R = 2, within 4% of CS-2 measurements):
    flood broadcast  B + P + 2 T_R
    chain reduce     B + (2 T_R + 2)(P - 1)
    star reduce      B (P - 1) + 2 T_R + 1
Agreement: within max(5%, 3 cycles): the published formulas are models
within a few percent of the hardware, so at small P and B a cycle or two
either way is inside their own error. A point the engine cannot run is
printed as not emulated, with the reason.
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
                    root = (C.default_allreduce_root(algorithm, P, B, grid)
                            if collective == "allreduce" else 0)
                    group.append({
                        "collective": collective, "algorithm": algorithm, "P": P, "B": B,
                        "root": root,
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


PUBLISHED_T_R = 2
PUBLISHED = {
    "flood broadcast": lambda P, B: B + P + 2 * PUBLISHED_T_R,
    "chain reduce": lambda P, B: B + (2 * PUBLISHED_T_R + 2) * (P - 1),
    "star reduce": lambda P, B: B * (P - 1) + 2 * PUBLISHED_T_R + 1,
}


def agrees(cycles: int, published: int) -> bool:
    """Within max(5%, 3 cycles) of the published figure."""
    return abs(cycles - published) <= max(0.05 * published, 3)


def published_point(name: str, P: int, B: int, cfg: wse.WaferConfig = wse.WSE2) -> dict:
    """One (algorithm, P, B) of the published sweep: emulated cycles (None and
    a reason when the engine cannot run it), the published cycles, the error."""
    grid = cfg.with_grid(1, P)
    row = {"algorithm": name, "P": P, "B": B, "published": PUBLISHED[name](P, B),
           "cycles": None, "rel_error": None, "agrees": None, "reason": ""}
    x = np.ones((1, P, B), np.float32)
    if name == "flood broadcast":
        _, report = C.broadcast(x, grid, root=0)
    else:
        _, report = C.reduce(x, grid, root=0, algorithm=name.split()[0])
    row["cycles"] = report.cycles
    row["rel_error"] = (report.cycles - row["published"]) / row["published"]
    row["agrees"] = agrees(report.cycles, row["published"])
    return row


def published_sweep(quick: bool = True, cfg: wse.WaferConfig = wse.WSE2) -> list[dict]:
    Ps, Bs = (QUICK_P, QUICK_B) if quick else (FULL_P, FULL_B)
    return [published_point(name, P, B, cfg) for name in PUBLISHED for P in Ps for B in Bs]


def published_summary(rows: list[dict]) -> dict[str, dict]:
    """Per algorithm: worst relative error, points emulated, points within
    max(5%, 3 cycles), points not emulated."""
    out: dict[str, dict] = {}
    for r in rows:
        s = out.setdefault(r["algorithm"], {"worst": 0.0, "worst_at": None, "emulated": 0,
                                            "agree": 0, "not_emulated": 0, "worst_cycles": 0})
        if r["cycles"] is None:
            s["not_emulated"] += 1
            continue
        s["emulated"] += 1
        s["agree"] += bool(r["agrees"])
        s["worst_cycles"] = max(s["worst_cycles"], abs(r["cycles"] - r["published"]))
        if abs(r["rel_error"]) >= abs(s["worst"]):
            s["worst"], s["worst_at"] = r["rel_error"], (r["P"], r["B"])
    return out


def published_markdown(rows: list[dict]) -> str:
    lines = ["| algorithm | P | B | emulated | published | error | within max(5%, 3) |",
             "|---|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        if r["cycles"] is None:
            lines.append(f"| {r['algorithm']} | {r['P']} | {r['B']} | not emulated | "
                         f"{r['published']} | - | {r['reason']} |")
        else:
            lines.append(f"| {r['algorithm']} | {r['P']} | {r['B']} | {r['cycles']} | "
                         f"{r['published']} | {100 * r['rel_error']:+.1f}% | "
                         f"{'yes' if r['agrees'] else '**no**'} |")
    return "\n".join(lines)


def _print_published(quick: bool) -> None:
    rows = published_sweep(quick)
    print(published_markdown(rows))
    print("\nworst error against the published model, per algorithm:")
    for name, s in published_summary(rows).items():
        at = f"at P = {s['worst_at'][0]}, B = {s['worst_at'][1]}" if s["worst_at"] else ""
        print(f"  {name:16s} {100 * s['worst']:+7.1f}% {at} (most cycles off: "
              f"{s['worst_cycles']}); {s['agree']} of {s['emulated']} "
              f"emulated points within max(5%, 3 cycles); {s['not_emulated']} not emulated")


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
    parser.add_argument("--published", action="store_true",
                        help="only the sweep against the published WSE-2 fabric model")
    args = parser.parse_args(argv)
    if args.published:
        _print_published(args.quick)
        return
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
