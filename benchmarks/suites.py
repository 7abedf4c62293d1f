"""Benchmark suites: a registry of topics, run by `wse bench` and `python -m benchmarks`.

A topic is a module `benchmarks/<topic>.py` exposing `run(quick=True) ->
list[dict]` (the rows of a table) and optionally `plot(rows, out_dir) ->
list[pathlib.Path]`. Modules are imported only when their topic runs, and a
topic whose module has not been written yet is listed as "not available",
so the suites grow as modules land.

For every topic that ran, `run_suite` writes into the output folder:
    <topic>.json   {"topic", "title", "config", "package", "machine", "seconds", "rows"}
    <topic>.csv    the rows (nested values as JSON text)
    <topic>*.png   its plots
and for the whole run summary.json (every topic's status, time and files).
"""
from __future__ import annotations

import csv
import datetime
import importlib
import json
import os
import pathlib
import platform
import subprocess
import time
import traceback
from dataclasses import dataclass, field
from typing import Callable

DEFAULT_OUT = "bench-out"


# ---------------------------------------------------------------- topics
def _run_module(module, quick: bool, out_dir: pathlib.Path):
    """The contract every topic module follows: run(quick) and maybe plot(rows, out_dir)."""
    rows = module.run(quick=quick)
    if hasattr(module, "plot"):
        pngs = module.plot(rows, out_dir)
    else:
        from . import plots
        pngs = plots.auto_plot(module.__name__.rsplit(".", 1)[-1], rows, out_dir)
    return rows, list(pngs or [])


ENGINE_SIZE = {True: 64, False: 256}


def _run_engine(module, quick: bool, out_dir: pathlib.Path):
    """engine_throughput.run takes a grid size: quick = 64x64, full = 256x256."""
    rows = module.run(size=ENGINE_SIZE[quick], length=256, repeats=3)
    from . import plots
    return rows, [plots.throughput_bars(rows, out_dir / "engine_throughput.png")]


def _run_gpu_calibration(module, quick: bool, out_dir: pathlib.Path):
    """gpu_calibration.run() has one size only (it is a cost model: milliseconds)."""
    rows = module.run()
    from . import plots
    made = plots.calibration_bars(rows, out_dir / "gpu_calibration.png")
    return rows, [made] if made else []


FABRIC_GRID = {True: 16, False: 64}
FABRIC_LENGTH = {True: 64, False: 256}
FABRIC_KERNELS: tuple[str, ...] | None = None
"""The kernels the fabric topic maps; None: every registered kernel with an example."""
FABRIC_PLOTS = True


def _run_fabric_maps(module, quick: bool, out_dir: pathlib.Path):
    """Where traffic and work land on the grid: link-utilisation and PE-busy
    heatmaps of each registered kernel's example (kernels.registry) on one
    square grid. Each row gives the engine's cycles beside the kernel's own
    cost model (None for a kernel without one)."""
    import wse
    from kernels import registry

    from . import plots
    n, length = FABRIC_GRID[quick], FABRIC_LENGTH[quick]
    cfg = wse.WSE2.with_grid(rows=n, cols=n)
    rows, pngs = [], []
    for kernel in registry.KERNELS.values():
        if kernel.example is None or FABRIC_KERNELS is not None \
                and kernel.name not in FABRIC_KERNELS:
            continue
        call = kernel.example(cfg, length)
        report = kernel.function(*call.args, **call.kwargs)[-1]
        if FABRIC_PLOTS:
            pngs.append(plots.link_heatmap(report, out_dir / f"fabric_{kernel.name}_links.png",
                                           title=f"{call.what}: link utilisation ({n}x{n})"))
            pngs.append(plots.busy_heatmap(report, out_dir / f"fabric_{kernel.name}_busy.png",
                                           title=f"{call.what}: PE busy fraction ({n}x{n})"))
        rows.append({
            "kernel": call.what, "grid": f"{n}x{n}", "wavelets_per_pe": length,
            "cycles": report.cycles,
            "cycles_formula": kernel.cost(cfg, call) if kernel.cost is not None else None,
            "wavelet_hops": report.wavelet_hops,
            "busiest_link_per_cycle": report.busiest_link_wavelets / max(report.cycles, 1),
            "mean_busy_fraction": float(report.busy_cycles.mean()) / max(report.cycles, 1),
            "engine_wall_s": report.wall_seconds,
        })
    return rows, pngs


MEMORY_GRID = {True: (256, 256), False: (996, 757)}


def _run_memory(module, quick: bool, out_dir: pathlib.Path):
    """benchmarks.memory measures a whole process's peak RSS, so it runs in a
    child process: quick on 256 x 256 PEs, full on WSE-2's whole 996 x 757 fabric."""
    import ast
    import sys
    rows, cols = MEMORY_GRID[quick]
    done = subprocess.run([sys.executable, "-m", module.__name__, str(rows), str(cols)],
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{module.__name__} {rows} {cols} failed:\n{done.stderr[-2000:]}")
    return [ast.literal_eval(done.stdout.strip().splitlines()[-1])], []


@dataclass(frozen=True)
class Topic:
    name: str
    module: str
    title: str
    runner: Callable = _run_module
    """runner(module, quick, out_dir) -> (rows, png paths)."""
    key_columns: tuple[str, ...] = ()
    """The columns a narrow terminal shows first."""
    alone: bool = False
    """Its figures are the emulator's own speed or memory: with several jobs it
    still runs with no other topic beside it."""


TOPICS: dict[str, Topic] = {t.name: t for t in [
    Topic("engine", "benchmarks.engine_throughput",
          "Engine throughput beside the same-run bare Numba loop", _run_engine, alone=True),
    Topic("collectives", "benchmarks.collectives", "Collectives: algorithms on mesh lines"),
    Topic("gemm", "benchmarks.gemm", "GEMM algorithms",
          key_columns=("algorithm", "size", "grid", "cycles", "model_cycles",
                       "compute_efficiency")),
    Topic("gemv", "benchmarks.gemv", "GEMV algorithms"),
    Topic("attention", "benchmarks.attention", "Attention"),
    Topic("transformer", "benchmarks.transformer", "Transformer layer: wafer vs GPU"),
    Topic("scaling", "benchmarks.scaling", "Emulator scaling: wall time and memory vs PEs x cycles",
          alone=True),
    Topic("memory", "benchmarks.memory", "Peak memory of a whole-wafer run (full suite only)",
          _run_memory, alone=True),
    Topic("fabric", "benchmarks.suites", "Fabric heatmaps: link utilisation and PE busy",
          _run_fabric_maps, key_columns=("kernel", "cycles", "cycles_formula")),
    Topic("gpu_calibration", "benchmarks.gpu_calibration",
          "GPU cost model against published nccl-tests figures", _run_gpu_calibration),
    Topic("validation", "benchmarks.validation",
          "Published hardware figures beside the emulator's (docs/validation.md)",
          key_columns=("key", "published", "emulated", "error_pct", "status")),
]}

SUITES = {"quick": [t for t in TOPICS if t != "memory"], "full": list(TOPICS)}
"""quick runs every topic at its small sizes but the whole-wafer memory run;
full runs every topic at full size."""


def resolve(names: list[str]) -> tuple[list[str], bool | None]:
    """Topic names for `--suite` arguments, and whether a whole suite named the
    size (True: quick, False: full, None: topics named one by one). Raises
    ValueError on an unknown name."""
    if not names:
        names = ["quick"]
    chosen: list[str] = []
    quick = None
    for name in names:
        if name in SUITES:
            if quick is not None and quick != (name == "quick"):
                raise ValueError("choose either the quick or the full suite, not both")
            quick = name == "quick"
            topics = SUITES[name]
        elif name in TOPICS:
            topics = [name]
        else:
            raise ValueError(f"unknown suite or topic {name!r}: expected quick, full or one of "
                             f"{', '.join(TOPICS)}")
        chosen.extend(t for t in topics if t not in chosen)
    return chosen, quick


# ---------------------------------------------------------------- records
def environment() -> dict:
    """Package version and machine, recorded with every result."""
    import numpy

    import wse
    machine = {
        "platform": platform.platform(), "machine": platform.machine(),
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(), "cpu_count": os.cpu_count(),
        "cpus_usable": usable_cpus(),
    }
    try:
        import psutil
        machine["memory_gib"] = round(psutil.virtual_memory().total / (1 << 30), 1)
    except ImportError:
        pass
    versions = {"wse": wse.__version__, "numpy": numpy.__version__}
    try:
        from importlib.metadata import version
        versions["numba"] = version("numba")
    except Exception:           # numba's metadata missing: record what we know
        pass
    return {"package": {"name": "wse", "version": wse.__version__, "git": _git_commit(),
                        "versions": versions},
            "machine": machine}


def _git_commit() -> str | None:
    root = pathlib.Path(__file__).resolve().parent.parent
    try:
        done = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=root,
                              capture_output=True, text=True, timeout=5, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() or None


def _plain(value):
    """JSON-ready copy of a row value (NumPy scalars and arrays included)."""
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, pathlib.PurePath):
        return str(value)
    return value


def write_json(path: pathlib.Path, record: dict) -> pathlib.Path:
    path.write_text(json.dumps(_plain(record), indent=1, default=str))
    return path


def write_csv(path: pathlib.Path, rows: list[dict]) -> pathlib.Path:
    columns: list[str] = []
    for row in rows:
        columns.extend(k for k in row if k not in columns)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: (json.dumps(_plain(v)) if isinstance(v, (dict, list, tuple))
                                 else _plain(v)) for k, v in row.items()})
    return path


# ---------------------------------------------------------------- running
@dataclass
class TopicResult:
    name: str
    title: str
    status: str
    """"ok", "not available" or "error"."""
    seconds: float = 0.0
    rows: list = field(default_factory=list)
    files: list = field(default_factory=list)
    message: str = ""
    span: tuple[float, float] = (0.0, 0.0)
    """When it ran (time.time() at its start and end), to tell what ran beside it."""
    beside: list = field(default_factory=list)
    """The topics that ran at the same time (several jobs), by name."""


def _load(topic: Topic):
    """The topic's module, or the reason it is not available (a string)."""
    try:
        module = importlib.import_module(topic.module)
    except ModuleNotFoundError as error:
        missing = error.name or ""
        if missing == topic.module or missing.split(".")[0] in ("benchmarks", "kernels"):
            return f"module {missing} does not exist yet"
        raise
    if topic.runner is _run_module and not callable(getattr(module, "run", None)):
        return f"{topic.module} has no run(quick) function"
    return module


def run_topic(name: str, quick: bool, out_dir: pathlib.Path, config: dict | None = None,
              env: dict | None = None) -> TopicResult:
    """Run one topic and write its JSON, CSV and plots. Never raises for a
    topic's own failure: the result says "error" and <topic>.error.txt holds
    the traceback."""
    topic = TOPICS[name]
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    began = time.time()
    started = time.perf_counter()
    try:
        module = _load(topic)
        if isinstance(module, str):
            return TopicResult(name, topic.title, "not available", message=module,
                               span=(began, time.time()))
        rows, pngs = topic.runner(module, quick, out_dir)
    except Exception as error:     # a failing topic must not stop the suite
        path = out_dir / f"{name}.error.txt"
        path.write_text(traceback.format_exc())
        return TopicResult(name, topic.title, "error", time.perf_counter() - started,
                           files=[path], message=f"{type(error).__name__}: {error}",
                           span=(began, time.time()))
    seconds = time.perf_counter() - started
    record = {"topic": name, "title": topic.title,
              "config": dict(config or {}, topic=name, module=topic.module, quick=quick),
              **(env or environment()),
              "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "seconds": seconds, "rows": rows}
    files = [write_json(out_dir / f"{name}.json", record), write_csv(out_dir / f"{name}.csv", rows),
             *pngs]
    return TopicResult(name, topic.title, "ok", seconds, rows, files, span=(began, time.time()))


def _run_topic_in_worker(name, quick, out_dir, config, env) -> TopicResult:
    """run_topic in a worker process; the rows come back as their JSON holds
    them (whatever a topic's rows carry need not cross processes)."""
    result = run_topic(name, quick, out_dir, config, env)
    result.rows = json.loads(json.dumps(_plain(result.rows), default=str))
    result.files = [str(f) for f in result.files]
    return result


def _longest_first(names: list[str], out_dir: pathlib.Path) -> list[str]:
    """Topics in the order to hand to workers: the longest first, by the
    seconds the last summary.json in out_dir gives (those without one first,
    in suite order), so that the shorter ones fill in beside them."""
    try:
        last = json.loads((out_dir / "summary.json").read_text())
        seconds = {t["topic"]: float(t["seconds"]) for t in last["topics"]}
    except (OSError, ValueError, KeyError, TypeError):
        seconds = {}
    return sorted(names, key=lambda n: -seconds.get(n, float("inf")))


def _note_beside(results: list[TopicResult], out_dir: pathlib.Path) -> None:
    """Set each result's `beside` from the spans, and add it to its JSON."""
    for r in results:
        r.beside = [o.name for o in results if o is not r
                    and o.span[0] < r.span[1] and r.span[0] < o.span[1]]
        path = out_dir / f"{r.name}.json"
        if r.status == "ok" and path.exists():
            record = json.loads(path.read_text())
            record["ran_beside"] = r.beside
            write_json(path, record)


def usable_cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def run_suite(names: list[str], quick: bool, out_dir, console=None, show_progress: bool = True,
              config: dict | None = None, jobs: int = 1) -> list[TopicResult]:
    """Run topics with a progress bar, printing each table as it finishes;
    write summary.json. Returns the results, in the order of `names`.

    jobs > 1: the topics marked `alone` (the emulator's own speed and memory)
    run first, one at a time, with nothing beside them; the others then run
    in `jobs` worker processes, longest first. Each topic's JSON and the
    summary say which topics ran beside it (their wall times shared the
    machine; cycles and every emulated figure do not depend on it)."""
    from rich.console import Console
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, SpinnerColumn,
                               TextColumn, TimeElapsedColumn)
    if jobs < 1:
        raise ValueError(f"jobs must be at least 1, got {jobs}")
    console = console or Console()
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    env = environment()
    config = dict(config or {}, suite_quick=quick, jobs=jobs)
    pooled = [n for n in _longest_first(names, out_dir) if not TOPICS[n].alone]
    if jobs == 1 or len(pooled) < 2:      # nothing would run beside anything
        pooled = []
    done: dict[str, TopicResult] = {}
    started = time.perf_counter()
    columns = [SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
               MofNCompleteColumn(), TimeElapsedColumn()]
    with Progress(*columns, console=console, disable=not show_progress) as progress:
        task = progress.add_task("benchmarks", total=len(names))

        def finished(result: TopicResult) -> None:
            done[result.name] = result
            progress.console.print(render_result(result, console.width))
            progress.advance(task)

        for name in [n for n in names if n not in pooled]:
            progress.update(task, description=f"{name}: running")
            finished(run_topic(name, quick, out_dir, config, env))
        if pooled:
            import concurrent.futures
            import multiprocessing
            progress.update(task, description=f"{', '.join(pooled)}: running, {jobs} at a time")
            # spawn, not fork: the progress bar's thread is running
            spawn = multiprocessing.get_context("spawn")
            with concurrent.futures.ProcessPoolExecutor(min(jobs, len(pooled)),
                                                        mp_context=spawn) as pool:
                futures = {pool.submit(_run_topic_in_worker, n, quick, out_dir, config, env): n
                           for n in pooled}
                for future in concurrent.futures.as_completed(futures):
                    try:
                        finished(future.result())
                    except Exception as error:     # the worker itself died (memory, a signal)
                        name = futures[future]
                        finished(TopicResult(name, TOPICS[name].title, "error",
                                             message=f"its worker process failed: "
                                                     f"{type(error).__name__}: {error}"))
        progress.update(task, description="done")
    total = time.perf_counter() - started
    results = [done[n] for n in names]
    _note_beside(results, out_dir)
    summary = {"config": config, **env, "seconds": total,
               "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
               "topics": [{"topic": r.name, "title": r.title, "status": r.status,
                           "seconds": r.seconds, "message": r.message, "ran_beside": r.beside,
                           "files": [pathlib.Path(f).name for f in r.files]} for r in results]}
    write_json(out_dir / "summary.json", summary)
    console.print(render_summary(results, total, out_dir))
    return results


# ---------------------------------------------------------------- tables
def format_value(value) -> str:
    if isinstance(value, bool) or value is None:
        return "" if value is None else str(value)
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, int):
        return f"{value:,}" if abs(value) >= 100_000 else str(value)
    return str(value)


def rows_table(rows: list[dict], title: str = "", max_rows: int = 40, width: int = 100,
               key_columns: tuple[str, ...] = ()):
    """A rich Table of rows that fits `width` characters: every column when
    they fit; else turned on its side (one line per column) when that fits;
    else the key columns and then as many others as fit, in order (the rest
    stay in the CSV and JSON)."""
    from rich.table import Table
    columns: list[str] = []
    for row in rows:
        columns.extend(k for k in row if k not in columns)
    shown = rows[:max_rows]
    nested = [c for c in columns if any(isinstance(r.get(c), (dict, list, tuple)) for r in shown)]
    columns = [c for c in columns if c not in nested]
    cells = {c: [format_value(r.get(c)) for r in shown] for c in columns}
    notes = [f"nested values in the JSON: {', '.join(nested)}"] if nested else []

    def column_width(c) -> int:      # the widest cell, its padding and one border
        return max([len(c)] + [len(v) for v in cells[c]]) + 3

    table = Table(title=title, title_justify="left")
    labels = [", ".join([str(v) for v in r.values() if isinstance(v, str)][:3]) or f"row {i}"
              for i, r in enumerate(shown)]
    sideways = max(map(len, columns), default=0) + 4 + sum(
        max([len(label)] + [len(cells[c][i]) for c in columns]) + 3
        for i, label in enumerate(labels))
    if sum(map(column_width, columns)) + 1 > width and sideways <= width:
        table.add_column("")
        for label in labels:
            table.add_column(label, justify="right")
        for c in columns:
            table.add_row(c, *cells[c])
        table.caption = "; ".join(notes) or None
        return table
    if sum(map(column_width, columns)) + 1 > width:
        chosen, room = [], width - 1
        for c in [k for k in key_columns if k in columns] + columns:
            if c not in chosen and column_width(c) <= room:
                chosen.append(c)
                room -= column_width(c)
        left_out = [c for c in columns if c not in chosen]
        columns = [c for c in columns if c in chosen]
        notes.append(f"{len(left_out)} more columns in the CSV and JSON: {', '.join(left_out)}")
    for c in columns:
        table.add_column(c, no_wrap=True, justify="right" if all(
            isinstance(r.get(c), (int, float)) or r.get(c) is None for r in shown) else "left")
    for i in range(len(shown)):
        table.add_row(*(cells[c][i] for c in columns))
    if len(rows) > max_rows:
        notes.append(f"{len(rows) - max_rows} more rows in the CSV")
    table.caption = "; ".join(notes) or None
    return table


def render_result(result: TopicResult, width: int = 100):
    from rich.text import Text
    if result.status == "ok":
        return rows_table(result.rows, f"{result.name}: {result.title} ({result.seconds:.1f} s)",
                          width=width, key_columns=TOPICS[result.name].key_columns)
    style = "yellow" if result.status == "not available" else "bold red"
    return Text(f"{result.name}: {result.status}: {result.message}", style=style)


def render_summary(results: list[TopicResult], seconds: float, out_dir: pathlib.Path):
    from rich.table import Table
    table = Table(title=f"Suite finished in {seconds:.1f} s; results in {out_dir}/",
                  title_justify="left")
    shared = any(r.beside for r in results)
    for c in ("topic", "status", "seconds", "files") + (("ran beside",) if shared else ()):
        table.add_column(c)
    colours = {"ok": "green", "not available": "yellow", "error": "bold red"}
    for r in results:
        table.add_row(r.name, f"[{colours[r.status]}]{r.status}[/]", f"{r.seconds:.1f}",
                      ", ".join(pathlib.Path(f).name for f in r.files) or r.message,
                      *((", ".join(r.beside) or "-",) if shared else ()))
    return table
