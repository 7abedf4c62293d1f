"""The `wse` command, application code on top of wse and kernels.

    wse info [PRESET]                            a preset's parameters and their sources
    wse run KERNEL [--grid RxC] [--preset P] ... run one kernel, print its RunReport
    wse compare --model M --phase decode ...     a transformer on the wafer vs a GPU cluster
    wse bench [TOPIC ...] [--suite quick|full]   benchmark suites (= python -m benchmarks)

Bad arguments print one line and exit with status 2. `wse run` takes its
kernels, their inputs and their options from kernels.registry. Every import
beyond argparse and the registry happens inside the command that needs it,
so that `wse --help` loads neither rich, matplotlib nor numba.
"""
from __future__ import annotations

import argparse
import importlib
import sys

EXIT_USAGE = 2
EXIT_FAILED = 1

GPU_SPEC_HELP = "N x a GPU name: 8xH100, 16xA100, 4xH200, 8xB200"


class UsageError(Exception):
    """A bad argument, or a kernel that is not there: one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    """argparse, but an error is one line (with where to find help), not the usage block."""

    def error(self, message):
        raise UsageError(f"{self.prog}: {message} (see '{self.prog} --help')")


# ------------------------------------------------------------------ argument types
def parse_grid(text: str) -> tuple[int, int]:
    """'16x16' -> (rows, cols)."""
    parts = text.lower().split("x")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise argparse.ArgumentTypeError(f"grid {text!r} must look like ROWSxCOLS, e.g. 16x16")
    rows, cols = (int(p) for p in parts)
    if rows < 1 or cols < 1:
        raise argparse.ArgumentTypeError(f"grid {text!r} needs at least one row and one column")
    return rows, cols


def parse_preset(text: str) -> str:
    """'wse2', 'WSE-2', 'WSE2' -> 'WSE2'."""
    from wse.config import PRESETS
    key = text.upper().replace("-", "").replace("_", "")
    if key not in PRESETS:
        raise argparse.ArgumentTypeError(f"unknown preset {text!r}: expected one of "
                                         f"{', '.join(PRESETS)}")
    return key


def parse_gpus(text: str) -> tuple[int, str]:
    """'8xH100' -> (8, 'H100')."""
    count, sep, name = text.partition("x")
    if not sep or not count.strip().isdigit() or int(count) < 1 or not name:
        raise argparse.ArgumentTypeError(f"GPUs {text!r} must be {GPU_SPEC_HELP}")
    from wse.gpu import DEVICES
    if name.strip().upper() not in DEVICES:
        raise argparse.ArgumentTypeError(f"unknown GPU {name!r} in {text!r}: expected one of "
                                         f"{', '.join(DEVICES)}")
    return int(count), name.strip().upper()


def wafer_config(preset: str, grid: tuple[int, int]):
    """The preset on a rows x cols region; the region must fit the wafer."""
    from wse.config import PRESETS
    base = PRESETS[preset]
    rows, cols = grid
    if rows > base.rows or cols > base.cols:
        raise UsageError(f"grid {rows}x{cols} does not fit {base.name}'s {base.rows}x{base.cols} "
                         "fabric")
    return base.with_grid(rows=rows, cols=cols)


# ------------------------------------------------------------------ kernels
def _argument_type(parse):
    """`parse` as an argparse type: its ValueError becomes a one-line usage error."""
    def checked(text: str):
        try:
            return parse(text)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from None
    return checked


def _accepts(fn, parameter: str) -> bool:
    import inspect
    try:
        return parameter in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


def _qualname(fn) -> str:
    return f"{fn.__module__}.{fn.__name__}"


def _kernel_settings(args, kernel) -> dict:
    """The kernel's option values; an option given that does not apply to it is a usage error."""
    from kernels import registry
    applies = {o.name for o in kernel.options}
    for option in registry.options().values():
        if getattr(args, option.name) is not None and option.name not in applies:
            raise UsageError(f"wse run {kernel.name}: {option.flag} does not apply to "
                             f"{kernel.name} (its options: "
                             f"{', '.join(o.flag for o in kernel.options) or 'none'})")
    return kernel.settings({name: getattr(args, name) for name in applies
                            if getattr(args, name) is not None})


def _hidden_states(value):
    """A transformer prefill (kernel and reference) returns a PrefillResult: its hidden states."""
    return getattr(value, "hidden", value)


def _max_errors(result, expected):
    import numpy as np
    result = np.asarray(result, dtype=np.float64)
    if result.shape != expected.shape:
        return None
    err = float(np.max(np.abs(result - expected))) if result.size else 0.0
    scale = float(np.max(np.abs(expected))) if expected.size else 0.0
    return err, err / scale if scale else err


def cmd_run(args) -> int:
    from kernels import registry
    kernel = registry.get(args.kernel)
    settings = _kernel_settings(args, kernel)
    cfg = wafer_config(args.preset, args.grid)
    fn = kernel.function
    name = _qualname(fn)
    kwargs = {}
    if args.algorithm is not None:
        if not _accepts(fn, "algorithm"):
            raise UsageError(f"wse run {args.kernel}: {name} has no algorithm parameter, so "
                             f"--algorithm {args.algorithm} cannot be applied")
        kwargs["algorithm"] = args.algorithm
    dtype = args.dtype
    if _accepts(fn, "dtype"):
        kwargs["dtype"] = dtype = dtype or registry.default(fn, "dtype") or "float32"
    elif dtype not in (None, "float32"):
        raise UsageError(f"wse run {args.kernel}: {name} has no dtype parameter (it computes in "
                         f"float32), so --dtype {dtype} cannot be applied")
    else:
        dtype = "float32"
    call = kernel.inputs(cfg, settings, args.seed)
    import contextlib

    import wse
    # every Program.run inside the kernel records its task slices
    tracing = wse.run_options(trace=True) if args.trace else contextlib.nullcontext()
    with tracing:
        returned = fn(*call.args, **call.kwargs, **kwargs)
    result, report = returned[0], returned[-1]
    expected = kernel.reference(*call.reference_args)
    errors = _max_errors(_hidden_states(result), _hidden_states(expected))

    from rich.console import Console
    console = Console()
    console.print(report_table(report, f"{name}: {call.what} on {cfg.name} {cfg.rows}x{cfg.cols}"
                                       f" ({dtype})", errors))
    if args.trace:
        if report.task_events is None:
            print(f"wse run {args.kernel}: {name} returned a report without task events "
                  "(it combines runs in a way that drops them); no trace written", file=sys.stderr)
            return EXIT_FAILED
        slices = report.to_chrome_trace(args.trace)
        console.print(f"wrote {slices} task slices to {args.trace} (open in ui.perfetto.dev or "
                      "chrome://tracing; 1 cycle = 1 us)")
    if args.json:
        report.to_json(args.json)
        console.print(f"wrote the report to {args.json}")
    if args.plot:
        import pathlib

        from . import plots
        out = pathlib.Path(args.plot)
        made = [plots.link_heatmap(report, out / f"{args.kernel}_links.png"),
                plots.busy_heatmap(report, out / f"{args.kernel}_busy.png")]
        console.print("wrote " + ", ".join(str(p) for p in made))
    return 0


def report_table(report, title: str, errors=None):
    """A RunReport as a two-column rich table (with the error against float64)."""
    from rich.table import Table
    table = Table(title=title, title_justify="left")
    table.add_column("figure")
    table.add_column("value", justify="right")
    s = report.summary()
    rows = [
        ("cycles", f"{s['cycles']:,}"),
        ("time at clock", f"{s['seconds'] * 1e6:.3f} us"),
        ("wavelet-hops", f"{s['wavelet_hops']:,}"),
        ("busiest link", f"{s['busiest_link_wavelets']:,} wavelets "
                         f"({s['busiest_link_wavelets'] / max(s['cycles'], 1):.2f} per cycle)"),
        ("FLOPs", f"{s['flops']:,}"),
        ("compute efficiency", f"{s['compute_efficiency']:.2%}"),
        ("mean compute cycles per PE", f"{s['compute_cycles_mean']:.1f}"),
        ("mean stall cycles per PE", f"{s['stall_cycles_mean']:.1f}"),
        ("max busy cycles of a PE", f"{s['busy_cycles_max']:,}"),
        ("max SRAM of a PE", f"{s['sram_peak_bytes_max']:,} B"),
        ("energy", f"{s['energy_joules']:.4g} J"),
    ]
    rows += [(f"  energy: {k}", f"{v:.4g} J") for k, v in report.energy_breakdown.items()]
    rows += [(f"  phase {p['name']}", f"{p['cycles']:,} cycles") for p in report.phases]
    for group, values in report.extra.items():
        if isinstance(values, dict):
            rows += [(f"  {group}.{k}", _short(v)) for k, v in values.items()]
        else:
            rows.append((f"  {group}", _short(values)))
    if errors is not None:
        rows += [("max |error| vs float64", f"{errors[0]:.3g}"),
                 ("  relative to max |reference|", f"{errors[1]:.3g}")]
    rows.append(("emulator wall time", f"{s['wall_seconds']:.3f} s"))
    for figure, value in rows:
        table.add_row(figure, value)
    return table


def _short(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


# ------------------------------------------------------------------ info
def _sources_legend() -> dict[str, str]:
    """Source tag -> publication: wse.config.SOURCES, else the '[SDK]  ...'
    lines of wse.config's docstring."""
    import re

    from wse import config
    legend = dict(getattr(config, "SOURCES", {}))
    for line in (config.__doc__ or "").splitlines():
        found = re.match(r"\s*\[(\w+)\]\s+(.+)", line)
        if found:
            legend.setdefault(found.group(1), found.group(2).strip())
    return legend


def _sources_of(doc: str, legend: dict[str, str]) -> str:
    """The short tags of the sources a field's documentation cites ([SDK], or
    the expanded [Cerebras SDK documentation]), and ASSUMPTION where it says so."""
    import re
    tags = []
    for cited in re.findall(r"\[([^\]]+)\]", doc):
        tag = next((t for t, text in legend.items() if cited.startswith((t, text))), None)
        tags.append(tag or cited)
    if "ASSUMPTION" in doc:
        tags.append("ASSUMPTION")
    return ", ".join(dict.fromkeys(tags)) or "-"


def cmd_info(args) -> int:
    from rich.console import Console
    from rich.table import Table

    from wse.config import PRESETS
    cfg = PRESETS[args.preset]
    table = Table(title=f"{args.preset}: {cfg.name} (wse.{args.preset}; other presets: "
                        f"{', '.join(p for p in PRESETS if p != args.preset)})",
                  title_justify="left", show_lines=True)
    table.add_column("parameter", no_wrap=True)
    table.add_column("value", justify="right", no_wrap=True)
    table.add_column("source", overflow="fold", min_width=10)
    table.add_column("what it is and where it comes from", ratio=1)
    legend = _sources_legend()
    for name, value, doc in cfg.fields_with_docs():
        shown = f"{value:.4g}" if isinstance(value, float) else f"{value}"
        table.add_row(name, shown, _sources_of(doc, legend), doc)
    console = Console()
    console.print(table)
    derived = Table(title="Derived", title_justify="left")
    derived.add_column("figure")
    derived.add_column("value", justify="right")
    derived.add_row("PEs", f"{cfg.num_pes:,}")
    derived.add_row("SRAM, all PEs", f"{cfg.num_pes * cfg.sram_bytes / (1 << 30):.2f} GiB")
    for dtype in ("float16", "float32"):
        peak = cfg.num_pes * cfg.peak_flops_per_pe_cycle(dtype) * cfg.clock_hz
        derived.add_row(f"peak {dtype}", f"{peak / 1e15:.3g} PFLOP/s")
    derived.add_row("link bandwidth, one direction",
                    f"{cfg.link_bits / 8 * cfg.clock_hz / 1e9:.2f} GB/s")
    console.print(derived)
    sources = Table(title="Sources", title_justify="left")
    sources.add_column("tag")
    sources.add_column("source")
    for tag, text in legend.items():
        sources.add_row(tag, text)
    sources.add_row("ASSUMPTION", "not published; a field so that it can be varied")
    console.print(sources)
    return 0


# ------------------------------------------------------------------ compare
def _optional_module(name: str):
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as error:
        if error.name != name:
            raise
        return None


def _gpu_side(model, phase: str, seq: int, cluster, tp, seed: int):
    """The GPU cluster's cost for the whole model, from one emulated layer
    (every layer does the same work) times the model's layer count."""
    import numpy as np

    from kernels import models, sharded
    tp = sharded.default_tp(model, cluster) if tp is None else tp
    positions = seq + 1 if phase == "decode" else seq
    sharded.check_fits(model, cluster, tp, positions)        # the whole model must fit
    weights = models.random_weights(model, seed=seed, n_layers=1)
    rng = np.random.default_rng(seed)
    if phase == "prefill":
        x = rng.standard_normal((seq, model.d_model)).astype(np.float32)
        _, report = sharded.prefill(model, weights, x, cluster, tp=tp)
    else:
        state = models.KVCache.random(model, seq, rng)
        _, _, report = sharded.decode_step(model, weights, state, cluster, tp=tp)
    return tp, weights, report


def cmd_compare(args) -> int:
    from kernels import models

    from wse.gpu import Cluster, device
    model = models.preset(args.model)
    if args.seq > model.max_seq_len - (args.phase == "decode"):
        raise UsageError(f"wse compare: --seq {args.seq} exceeds {model.name}'s max_seq_len "
                         f"{model.max_seq_len}")
    cfg = wafer_config(args.preset, args.grid)
    n_gpus, gpu_name = args.gpus
    cluster = Cluster(device(gpu_name), n_gpus=n_gpus)
    if args.tp is not None and args.tp > n_gpus:
        raise UsageError(f"wse compare: --tp {args.tp} exceeds the {n_gpus} GPUs of --gpus")

    from rich.console import Console
    from rich.table import Table
    console = Console()
    with console.status(f"emulating one {model.name} layer on {cluster.name}"):
        tp, weights, gpu = _gpu_side(model, args.phase, args.seq, cluster, args.tp, args.seed)
    layers = model.n_layers
    what = (f"{model.name} {args.phase}: "
            + (f"{args.seq} prompt positions" if args.phase == "prefill"
               else f"one new token after {args.seq} cached positions")
            + f", {layers} layers (one emulated, times {layers})")

    wafer, wafer_problem, status = None, None, 0
    transformer = _optional_module("kernels.transformer")
    if transformer is None or not callable(getattr(transformer, "compare", None)):
        wafer_problem = ("not available yet (kernels.transformer.compare has not been written); "
                         "the GPU side comes from kernels.sharded")
    else:
        from wse.errors import ConfigError, SramOverflowError, WseError
        try:
            with console.status(f"emulating one {model.name} layer on a {cfg.rows}x{cfg.cols} "
                                "wafer"):
                wafer = _wafer_side(transformer, model, weights, args.phase, args.seq, cfg,
                                    args.seed)
        except WseError as error:      # the GPU side still stands; say why the wafer's does not
            wafer_problem = f"failed: {type(error).__name__}: {error}"
            status = EXIT_USAGE if isinstance(error, (ConfigError, SramOverflowError)) \
                else EXIT_FAILED

    table = Table(title=what, title_justify="left")
    table.add_column("figure")
    table.add_column(f"wafer {cfg.name} {cfg.rows}x{cfg.cols}", justify="right")
    table.add_column(f"GPUs {cluster.name}, tp={tp}", justify="right")
    rows = _comparison_rows(gpu, wafer, layers)
    for r in rows:
        fmt = r["format"]
        table.add_row(f"{r['metric']} ({r['unit']})",
                      fmt.format(r["wafer"]) if r["wafer"] is not None
                      else "-" if r.get("gpu_only") else "not available",
                      "-" if r["gpu"] is None else fmt.format(r["gpu"]))
    console.print(table)
    if wafer is None:
        console.print(f"[yellow]wafer side: {wafer_problem}[/]")
    else:
        tokens = args.seq if args.phase == "prefill" else 1
        console.print(_render_any(transformer.compare(wafer, gpu, tokens=tokens),
                                  "kernels.transformer.compare, one layer"))
    if args.plot:
        import pathlib

        from . import plots
        path = pathlib.Path(args.plot) / f"compare_{model.name}_{args.phase}.png"
        for r in rows:
            r["wafer_label"] = f"wafer {cfg.rows}x{cfg.cols}"
            r["gpu_label"] = cluster.name
        plots.wafer_vs_gpu_bars(rows, path, title=what)
        console.print(f"wrote {path}")
    if args.json:
        import json
        with open(args.json, "w") as f:
            json.dump({"model": model.name, "phase": args.phase, "seq": args.seq,
                       "grid": list(args.grid), "preset": args.preset, "gpus": cluster.name,
                       "tp": tp, "layers": layers, "rows": [{k: v for k, v in r.items()
                                                             if k != "format"} for r in rows],
                       "gpu_layer_report": gpu.to_dict(),
                       "wafer_layer_report": None if wafer is None else wafer.to_dict(False)},
                      f, indent=1)
        console.print(f"wrote {args.json}")
    return status


def _wafer_side(transformer, model, weights, phase, seq, cfg, seed):
    """One layer on the wafer through kernels.transformer (`transformer`):
    prefill of `seq` random hidden states, or one decode_step from the cache
    of a float64 reference prefill of `seq` positions, with target=cfg;
    returns the run's RunReport."""
    import numpy as np

    from kernels import reference
    rng = np.random.default_rng(seed)
    if phase == "prefill":
        x = rng.standard_normal((seq, model.d_model)).astype(np.float32)
        returned = transformer.prefill(model, weights, x, target=cfg)
    else:
        prompt = rng.standard_normal((seq, model.d_model)).astype(np.float32)
        state = reference.prefill(model, weights, prompt).cache
        returned = transformer.decode_step(model, weights, state, target=cfg)
    return returned[-1]


def _comparison_rows(gpu, wafer, layers: int) -> list[dict]:
    def wafer_value(get):
        return None if wafer is None else get(wafer) * layers
    return [
        {"metric": "time", "unit": "ms", "format": "{:.4g}",
         "wafer": wafer_value(lambda r: r.seconds * 1e3), "gpu": gpu.seconds * layers * 1e3},
        {"metric": "energy", "unit": "J", "format": "{:.4g}",
         "wafer": wafer_value(lambda r: r.energy_joules), "gpu": gpu.energy_joules * layers},
        {"metric": "FLOPs", "unit": "GFLOP", "format": "{:.4g}",
         "wafer": wafer_value(lambda r: r.flops / 1e9), "gpu": gpu.flops * layers / 1e9},
        {"metric": "GPU communication time", "unit": "ms", "format": "{:.4g}", "gpu_only": True,
         "wafer": None, "gpu": gpu.comm_seconds * layers * 1e3},
        {"metric": "fabric byte-hops", "unit": "MB", "format": "{:.4g}",
         "wafer": wafer_value(lambda r: r.wavelet_hops * 4 / 1e6), "gpu": None},
        {"metric": "bytes sent between GPUs", "unit": "MB", "format": "{:.4g}", "gpu_only": True,
         "wafer": None, "gpu": gpu.bytes_sent_total * layers / 1e6},
    ]


def _render_any(value, title: str):
    """A table of what compare() returns: rows of (metric, wafer, gpu, unit)
    tuples (kernels.transformer.Comparison), rows of dicts, a dict, or text."""
    from rich.table import Table
    rows = getattr(value, "rows", value)
    if isinstance(rows, list) and rows and all(isinstance(r, tuple) and len(r) == 4
                                               for r in rows):
        table = Table(title=title, title_justify="left")
        for c in ("metric", "wafer", "GPUs", "unit"):
            table.add_column(c, justify="left" if c in ("metric", "unit") else "right")
        for metric, w, g, unit in rows:
            table.add_row(str(metric), _short(w) if w is not None else "-",
                          _short(g) if g is not None else "-", str(unit))
        return table
    if isinstance(rows, list) and rows and all(isinstance(r, dict) for r in rows):
        from .suites import rows_table
        return rows_table(rows, title)
    if isinstance(value, dict):
        table = Table(title=title, title_justify="left")
        table.add_column("key")
        table.add_column("value")
        for k, v in value.items():
            table.add_row(str(k), str(v))
        return table
    return str(value)


# ------------------------------------------------------------------ bench
def cmd_bench(args) -> int:
    from . import suites
    if args.list:
        import importlib.util
        from rich.console import Console
        from rich.table import Table
        table = Table(title="Benchmark topics (wse bench NAME ...)", title_justify="left")
        for c in ("topic", "module", "available", "what it measures"):
            table.add_column(c)
        for t in suites.TOPICS.values():
            there = importlib.util.find_spec(t.module) is not None
            table.add_row(t.name, t.module, "yes" if there else "not yet", t.title)
        Console().print(table)
        return 0
    try:
        names, quick = suites.resolve(args.names + args.suite)
    except ValueError as error:
        raise UsageError(f"wse bench: {error}") from None
    if quick is None:
        quick = not args.full
    elif args.full and quick:
        raise UsageError("wse bench: --full contradicts --suite quick")
    jobs = args.jobs if args.jobs is not None else suites.usable_cpus()
    if jobs < 1:
        raise UsageError(f"wse bench: --jobs must be at least 1, got {jobs}")
    results = suites.run_suite(names, quick, args.out, show_progress=not args.no_progress,
                               config={"command": "wse bench " + " ".join(args.raw_argv)},
                               jobs=jobs)
    return EXIT_FAILED if any(r.status == "error" for r in results) else 0


# ------------------------------------------------------------------ parser
def _add_machine_options(p, grid: str):
    p.add_argument("--grid", type=parse_grid, default=parse_grid(grid), metavar="ROWSxCOLS",
                   help=f"the region of the wafer to emulate (default {grid})")
    p.add_argument("--preset", type=parse_preset, default="WSE2", metavar="PRESET",
                   help="wafer parameters: WSE2 or WSE3 (default WSE2; see 'wse info')")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="wse", description="A cycle-level emulator of a wafer-scale engine: "
                     "run kernels, compare with GPUs, benchmark.")
    from wse import __version__
    parser.add_argument("--version", action="version", version=f"wse {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    from kernels import registry
    positive = _argument_type(registry.positive_int)

    info = commands.add_parser("info", help="a preset's parameters and their sources",
                               description="Print a wafer preset's parameters, each with its "
                               "value, its source tag and its documentation.")
    info.add_argument("preset", nargs="?", type=parse_preset, default="WSE2", metavar="PRESET",
                      help="WSE2 (default) or WSE3")
    info.set_defaults(handler=cmd_info)

    run = commands.add_parser(
        "run", help="run one kernel and print its RunReport",
        description="Run one kernel of the registry (kernels.registry) on random inputs, check "
        "it against its float64 NumPy reference and print its RunReport as a table. An option "
        "that does not apply to the kernel prints one line and exits with status 2.")
    run.add_argument("kernel", choices=list(registry.KERNELS), metavar="KERNEL",
                     help="one of: " + "; ".join(f"{k.name} ({k.summary})"
                                                 for k in registry.KERNELS.values()))
    _add_machine_options(run, "4x4")
    run.add_argument("--dtype", choices=("float32", "float16"), default=None,
                     help="element type the kernel computes in (default: the kernel's own, "
                     "float32 for kernels without a dtype parameter)")
    run.add_argument("--algorithm", default=None,
                     help="the kernel's algorithm, e.g. chain, ring, summa, cannon, meshgemm "
                     "(default: the kernel's own default)")
    for option in registry.options().values():
        users = ", ".join(k.name for k in registry.KERNELS.values() if option in k.options)
        how = {"action": "store_true"} if option.parse is None else {
            "type": _argument_type(option.parse), "choices": option.choices,
            "metavar": option.metavar}
        # default None: cmd_run tells an option given from one left out
        run.add_argument(option.flag, default=None, help=f"{users}: {option.help}", **how)
    run.add_argument("--seed", type=int, default=0, help="seed of the random inputs (default 0)")
    run.add_argument("--trace", metavar="FILE", default=None,
                     help="write a Chrome trace (one slice per task run per PE) to FILE; every "
                     "engine run inside the kernel is traced (wse.run_options)")
    run.add_argument("--json", metavar="FILE", default=None,
                     help="write the full report (per-PE arrays included) as JSON")
    run.add_argument("--plot", metavar="DIR", default=None,
                     help="write link-utilisation and PE-busy heatmaps (PNG) into DIR")
    run.set_defaults(handler=cmd_run)

    compare = commands.add_parser(
        "compare", help="a transformer on the wafer vs a GPU cluster",
        description="Time, energy and traffic of a transformer phase on a wafer region and on "
        "a GPU cluster (Megatron tensor parallelism, kernels.sharded). One layer is emulated "
        "on each side and multiplied by the model's layer count.")
    compare.add_argument("--model", default="llama3-8b",
                         help="model preset: tiny, gpt2-small, llama3-8b, llama2-13b, "
                         "llama3-70b (default llama3-8b)")
    compare.add_argument("--phase", choices=("prefill", "decode"), default="decode",
                         help="prefill a prompt, or decode one token (default decode)")
    compare.add_argument("--seq", type=positive, default=128,
                         help="prompt length (prefill) or cached positions (decode); default 128")
    _add_machine_options(compare, "420x420")
    compare.add_argument("--gpus", type=parse_gpus, default=parse_gpus("8xH100"),
                         metavar="NxGPU", help=f"the GPU cluster: {GPU_SPEC_HELP} "
                         "(default 8xH100)")
    compare.add_argument("--tp", type=positive, default=None,
                         help="tensor-parallel degree (default: the largest up to the GPU count "
                         "that divides the model)")
    compare.add_argument("--seed", type=int, default=0, help="seed of the synthetic weights")
    compare.add_argument("--plot", metavar="DIR", default=None,
                         help="write wafer-vs-GPU bars (PNG) into DIR")
    compare.add_argument("--json", metavar="FILE", default=None,
                         help="write the comparison and both per-layer reports as JSON")
    compare.set_defaults(handler=cmd_compare)

    bench = commands.add_parser(
        "bench", help="run benchmark suites (also: python -m benchmarks)",
        description="Run benchmark suites or single topics; print tables, write JSON, CSV and "
        "PNG files. 'quick' takes about 1.5 minutes on 2 cores once the engine is compiled; see "
        "benchmarks/RESULTS.md for a full run.")
    bench.add_argument("names", nargs="*", metavar="NAME",
                       help="quick (default), full, or topic names (see --list); the same as "
                       "--suite NAME ...")
    bench.add_argument("--suite", nargs="+", default=[], metavar="NAME",
                       help="quick (default), full, or topic names (see --list)")
    bench.add_argument("--full", action="store_true",
                       help="run the named topics at full size (the full suite does)")
    bench.add_argument("--out", default="bench-out", metavar="DIR",
                       help="where results go (default ./bench-out)")
    bench.add_argument("--no-progress", action="store_true", help="no progress bar")
    bench.add_argument("--jobs", type=int, default=None, metavar="N",
                       help="topics run N at a time, each in a process of its own (default: "
                       "the usable CPUs; 1: one after the other in this process); the "
                       "engine's speed and memory topics always run alone")
    bench.add_argument("--list", action="store_true",
                       help="list the topics and whether their modules exist yet")
    bench.set_defaults(handler=cmd_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 ok, 1 failed, 2 bad usage)."""
    from wse.errors import ConfigError, SramOverflowError, WseError
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        args.raw_argv = argv[1:]
        return args.handler(args)
    except UsageError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except (ConfigError, SramOverflowError) as error:
        command = f"wse {argv[0]}" if argv else "wse"
        print(f"{command}: {type(error).__name__}: {error}", file=sys.stderr)
        return EXIT_USAGE
    except WseError as error:
        command = f"wse {argv[0]}" if argv else "wse"
        print(f"{command}: {type(error).__name__}: {error}", file=sys.stderr)
        return EXIT_FAILED
    except SystemExit as done:          # --help and --version
        return done.code if isinstance(done.code, int) else 0
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
