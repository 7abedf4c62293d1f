"""PNG plots of benchmark results (matplotlib, Agg backend, loaded on first use).

Every function writes one PNG and returns its path, so a topic module's
`plot(rows, out_dir)` can be a few calls of these:

    link_heatmap(report, path)        wavelets per link per cycle, one panel per port
    busy_heatmap(report, path)        fraction of the run each PE was busy
    algorithm_bars(rows, path, ...)   one bar per algorithm, grouped by a config column
    scaling_curves(rows, path)        emulator wall time and memory against PEs x cycles
    wafer_vs_gpu_bars(rows, path)     wafer and GPU side by side, per metric
    throughput_bars(rows, path)       engine throughput beside the bare-loop ceiling
    calibration_bars(rows, path)      GPU cost model beside published measurements
"""
from __future__ import annotations

import pathlib
from collections import defaultdict

import numpy as np

PORTS = ("N", "E", "S", "W")


def pyplot():
    """matplotlib.pyplot on the file-only Agg backend, imported on first use."""
    import matplotlib
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    return plt


def _save(fig, path) -> pathlib.Path:
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    pyplot().close(fig)
    return path


def _grid_image(ax, values: np.ndarray, vmax: float, cmap: str = "viridis"):
    """A per-PE image with x = column (East) and y = row (South, downwards)."""
    return ax.imshow(values, origin="upper", cmap=cmap, vmin=0.0, vmax=vmax,
                     interpolation="nearest", aspect="equal")


def link_heatmap(report, path, title: str | None = None) -> pathlib.Path:
    """Link utilisation: wavelets each PE's router sent out of each side,
    divided by the run's cycles (1.0 = the link carried a wavelet every cycle)."""
    plt = pyplot()
    cycles = max(int(report.cycles), 1)
    util = np.asarray(report.link_wavelets, dtype=float) / cycles
    vmax = max(float(util.max()), 1e-9)
    fig, axes = plt.subplots(2, 2, figsize=(9, 8))
    fig.subplots_adjust(left=0.07, right=0.84, top=0.9, bottom=0.07, hspace=0.3, wspace=0.25)
    image = None
    for port, ax in zip(range(4), axes.flat):
        image = _grid_image(ax, util[:, :, port], vmax)
        ax.set_title(f"out of the {PORTS[port]} side (max {util[:, :, port].max():.2f})")
        ax.set_xlabel("column (x)")
        ax.set_ylabel("row (y)")
    fig.colorbar(image, cax=fig.add_axes([0.87, 0.2, 0.025, 0.6]), label="wavelets per cycle")
    fig.suptitle(title or f"Link utilisation, {report.rows}x{report.cols} grid, "
                 f"{report.cycles} cycles, {report.wavelet_hops} wavelet-hops")
    return _save(fig, path)


def busy_heatmap(report, path, title: str | None = None) -> pathlib.Path:
    """Fraction of the run's cycles each PE spent busy (running a task)."""
    plt = pyplot()
    cycles = max(int(report.cycles), 1)
    busy = np.asarray(report.busy_cycles, dtype=float) / cycles
    fig, ax = plt.subplots(figsize=(6.5, 5.5))
    fig.subplots_adjust(left=0.1, right=0.95, top=0.92, bottom=0.1)
    image = _grid_image(ax, busy, max(float(busy.max()), 1e-9), cmap="magma")
    fig.colorbar(image, ax=ax, label="busy cycles / run cycles")
    ax.set_xlabel("column (x)")
    ax.set_ylabel("row (y)")
    ax.set_title(title or f"PE busy fraction, {report.rows}x{report.cols} grid, "
                 f"{report.cycles} cycles (mean {busy.mean():.2f})")
    return _save(fig, path)


def _label(row: dict, keys) -> str:
    return ", ".join(f"{row[k]}" for k in keys if k in row)


def algorithm_bars(rows: list[dict], path, value: str = "cycles", algorithm: str = "algorithm",
                   group_by=None, title: str | None = None, log: bool = False) -> pathlib.Path | None:
    """One bar per algorithm, grouped by the other configuration columns
    (`group_by`, default: every non-numeric column but the algorithm's).
    Returns None when no row has both the algorithm and the value."""
    usable = [r for r in rows if algorithm in r and isinstance(r.get(value), (int, float))
              and not isinstance(r.get(value), bool)]
    if not usable:
        return None
    if group_by is None:
        group_by = [k for k in usable[0] if k != algorithm
                    and isinstance(usable[0][k], str)]
    groups: dict[str, dict[str, float]] = defaultdict(dict)
    algorithms: list[str] = []
    for r in usable:
        name = str(r[algorithm])
        if name not in algorithms:
            algorithms.append(name)
        groups[_label(r, group_by) or "all"][name] = float(r[value])
    plt = pyplot()
    labels = list(groups)
    width = 0.8 / len(algorithms)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(labels) * len(algorithms) * 0.5 + 3), 4.5),
                           constrained_layout=True)
    xs = np.arange(len(labels))
    for i, name in enumerate(algorithms):
        heights = [groups[g].get(name, np.nan) for g in labels]
        ax.bar(xs + (i - (len(algorithms) - 1) / 2) * width, heights, width, label=name)
    ax.set_xticks(xs, labels, rotation=20 if len(labels) > 3 else 0, ha="right" if len(labels) > 3 else "center")
    ax.set_ylabel(value)
    if log:
        ax.set_yscale("log")
    ax.legend(title=algorithm)
    ax.set_title(title or f"{value} by {algorithm}")
    return _save(fig, path)


def scaling_curves(rows: list[dict], path, title: str | None = None) -> pathlib.Path:
    """Emulator cost against work: wall time against PE-cycles (log-log, with a
    slope-1 guide through the largest point) and peak memory against PEs."""
    plt = pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.5), constrained_layout=True)
    by_length: dict[int, list[dict]] = defaultdict(list)
    for r in rows:
        by_length[r["wavelets_per_pe"]].append(r)
    for length, group in sorted(by_length.items()):
        group = sorted(group, key=lambda r: r["pe_cycles"])
        work = np.array([r["pe_cycles"] for r in group], float)
        left.plot(work, [r["engine_wall_s"] for r in group], "o-", label=f"engine loop, B={length}")
        left.plot(work, [r["kernel_wall_s"] for r in group], "s--", alpha=0.6,
                  label=f"build + run, B={length}")
        right.plot([r["pes"] for r in group], [r["rss_growth_mb"] for r in group], "o-",
                   label=f"B={length}")
    largest = max(rows, key=lambda r: r["pe_cycles"])
    guide = np.array([min(r["pe_cycles"] for r in rows), largest["pe_cycles"]], float)
    left.plot(guide, largest["engine_wall_s"] * guide / largest["pe_cycles"], ":", color="gray",
              label="proportional to work")
    left.set_xscale("log")
    left.set_yscale("log")
    left.set_xlabel("PEs x cycles")
    left.set_ylabel("wall seconds")
    left.set_title("time against work")
    left.legend(fontsize=8)
    right.set_xscale("log")
    right.set_xlabel("PEs")
    right.set_ylabel("peak RSS growth over a warmed-up process (MiB)")
    right.set_title("memory against grid size")
    right.legend(fontsize=8)
    fig.suptitle(title or "Emulator scaling (shift along x, one process per point)")
    return _save(fig, path)


def wafer_vs_gpu_bars(rows: list[dict], path, title: str | None = None) -> pathlib.Path:
    """rows: {"metric", "unit", "wafer", "gpu"}; one pair of bars per metric on a
    log axis (the two sides often differ by orders of magnitude). A side that
    is None is left out and marked "n/a"."""
    plt = pyplot()
    fig, axes = plt.subplots(1, len(rows), figsize=(3.2 * len(rows) + 1, 4.2),
                             constrained_layout=True, squeeze=False)
    for ax, r in zip(axes[0], rows):
        names, values = [], []
        for side, color in (("wafer", "tab:blue"), ("gpu", "tab:orange")):
            names.append(r.get(f"{side}_label", side))
            values.append(r.get(side))
        heights = [v if v is not None else 0.0 for v in values]
        bars = ax.bar(names, heights, color=["tab:blue", "tab:orange"])
        for bar, v in zip(bars, values):
            text = "n/a" if v is None else f"{v:.3g}"
            ax.annotate(text, (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                        ha="center", va="bottom", fontsize=9)
        if all(v is not None and v > 0 for v in values):
            ax.set_yscale("log")
        ax.set_title(f"{r['metric']} ({r.get('unit', '')})")
    fig.suptitle(title or "Wafer vs GPU")
    return _save(fig, path)


def throughput_bars(rows: list[dict], path, title: str | None = None) -> pathlib.Path:
    """Engine PE-cycles per second beside the same-run bare Numba loop."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5), constrained_layout=True)
    labels = [f"{r['workload']}\n{r['grid']}" for r in rows]
    xs = np.arange(len(rows))
    engine = [r["engine_pe_cycles_per_s"] for r in rows]
    bare = [r["bare_hops_per_s"] for r in rows]
    ax.bar(xs - 0.2, engine, 0.4, label="engine (PE-cycles/s)")
    ax.bar(xs + 0.2, bare, 0.4, label="bare Numba loop (values moved/s)")
    for x, r in zip(xs, rows):
        ax.annotate(f"{r['ratio_pe_cycles']:.1%} of bare", (x - 0.2, r["engine_pe_cycles_per_s"]),
                    ha="center", va="bottom", fontsize=8)
    ax.set_yscale("log")
    ax.set_xticks(xs, labels)
    ax.set_ylabel("per wall-clock second")
    ax.legend()
    ax.set_title(title or "Engine throughput against the bare-loop ceiling")
    return _save(fig, path)


def calibration_bars(rows: list[dict], path, title: str | None = None) -> pathlib.Path | None:
    """GPU cost model beside each published figure (relative: model / published)."""
    points = [r for r in rows if r.get("published") is not None]
    if not points:
        return None
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(points) + 1.5), constrained_layout=True)
    labels, ratios = [], []
    for r in points:
        model = r["time_us"] if r["metric"] == "time_us" else r["busbw_GBps"]
        size = r["nbytes"]
        unit = "B"
        for name, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
            if size >= scale:
                size, unit = size / scale, name
                break
        labels.append(f"{r['cluster']} {size:g} {unit} ({'time' if r['metric'] == 'time_us' else 'busbw'})")
        ratios.append(model / r["published"])
    ys = np.arange(len(points))
    ax.barh(ys, ratios, color=["tab:green" if 0.8 <= q <= 1.25 else "tab:red" for q in ratios])
    ax.axvline(1.0, color="black", lw=1)
    ax.set_yticks(ys, labels, fontsize=8)
    ax.set_xlabel("model / published")
    ax.set_title(title or "GPU cost model against published nccl-tests figures")
    return _save(fig, path)


def auto_plot(topic: str, rows: list[dict], out_dir) -> list[pathlib.Path]:
    """A fallback for topic modules without plot(): algorithm bars when the rows
    name an algorithm and a cycle count."""
    for value in ("cycles", "seconds", "time_us"):
        made = algorithm_bars(rows, pathlib.Path(out_dir) / f"{topic}_{value}.png", value=value,
                              title=f"{topic}: {value} by algorithm")
        if made:
            return [made]
    return []
