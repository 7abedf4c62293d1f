"""The kernel registry: one record per kernel.

    from kernels import registry
    record = registry.get("gemm")
    call = record.inputs(cfg, record.settings(), seed=0)
    C, report = record.function(*call.args, **call.kwargs)
    expected = record.reference(*call.reference_args)

The `wse run` command (benchmarks.cli), the benchmark suites (the fabric
topic) and the kernel strategies (kernels.strategies) all read KERNELS, so
adding a kernel is its module plus one `Kernel(...)` record in the list at
the end of this module (or a `register(Kernel(...))` call elsewhere).
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Callable

import numpy as np

import wse
from wse.errors import ConfigError

from . import collectives, models, reference
from .matmul import gemm, gemm_t, model_cycles as gemm_model_cycles, plan as gemm_plan
from .matvec import gemv, model_cycles as gemv_model_cycles, plan as gemv_plan
from .mesh_attention import attention
from .transformer import prefill


# ------------------------------------------------------------------ records
def positive_int(text: str) -> int:
    """A command-line value that must be an integer >= 1."""
    if not text.strip().isdigit() or int(text) < 1:
        raise ValueError(f"{text!r} is not a positive integer")
    return int(text)


@dataclass(frozen=True)
class Option:
    """A `wse run` option that a kernel's inputs read: --name (underscores
    become dashes). parse turns the text into the value; None makes a flag."""
    name: str
    default: object
    help: str
    parse: Callable[[str], object] | None = str
    choices: tuple | None = None
    metavar: str | None = None

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


@dataclass(frozen=True)
class Call:
    """One run: function(*args, **kwargs), its float64 reference
    reference(*reference_args), and what it is in words."""
    args: tuple
    kwargs: dict
    reference_args: tuple
    what: str


@dataclass(frozen=True)
class Kernel:
    """A kernel and everything the command line, the suites and the tests
    need to run it.

    function    the kernel; returns (result, ..., report)
    reference   its float64 reference (kernels.reference)
    inputs      inputs(cfg, settings, seed) -> Call: seeded random inputs for
                `wse run`, settings holding a value for each of `options`
    options     the `wse run` options that apply, with their defaults
    problems    "module:function" of its hypothesis problem strategy (read by
                kernels.strategies; a string so that hypothesis, a test
                dependency, loads only there), or None
    cost        cost(cfg, call) -> predicted cycles of the call (None where the
                model does not cover it), or None: no cost model
    example     example(cfg, length) -> Call: a representative run on a square
                grid, `length` values per PE, for the fabric heatmaps; or None
    summary     what it computes, in a few words
    """
    name: str
    function: Callable
    reference: Callable
    inputs: Callable[..., Call]
    options: tuple[Option, ...] = ()
    problems: str | None = None
    cost: Callable[[wse.WaferConfig, Call], int | None] | None = None
    example: Callable[[wse.WaferConfig, int], Call] | None = None
    summary: str = ""

    def settings(self, given: dict | None = None) -> dict:
        """Each option's value: `given` where it has one, else its default."""
        given = given or {}
        return {o.name: given.get(o.name, o.default) for o in self.options}


KERNELS: dict[str, Kernel] = {}


def register(kernel: Kernel) -> Kernel:
    """Add a kernel; an option it shares with another must be the same Option
    (the command line has one --flag per name)."""
    if kernel.name in KERNELS:
        raise ConfigError(f"a kernel named {kernel.name!r} is already registered")
    known = {o.name: o for k in KERNELS.values() for o in k.options}
    for option in kernel.options:
        if known.get(option.name, option) != option:
            raise ConfigError(f"kernel {kernel.name!r}: option {option.flag} differs from the "
                              "one other kernels registered")
    KERNELS[kernel.name] = kernel
    return kernel


def get(name: str) -> Kernel:
    if name not in KERNELS:
        raise ConfigError(f"unknown kernel {name!r}: expected one of {', '.join(KERNELS)}")
    return KERNELS[name]


def options() -> dict[str, Option]:
    """Every registered kernel's options, by name."""
    return {o.name: o for k in KERNELS.values() for o in k.options}


def default(function: Callable, parameter: str):
    """The default of a function's parameter (None when it has none)."""
    value = inspect.signature(function).parameters[parameter].default
    return None if value is inspect.Parameter.empty else value


# ------------------------------------------------------------------ options
ALONG = Option("along", "x", "within rows (x), columns (y) or the whole grid (xy)",
               choices=("x", "y", "xy"))
SIZE = Option("size", 16, "values per PE (default 16)", positive_int, metavar="B")
M = Option("m", None, "rows of A / W (default 4 x the larger grid side)", positive_int)
K = Option("k", None, "inner dimension (default 4 x the larger grid side)", positive_int)
N = Option("n", None, "columns of B (default 4 x the larger grid side)", positive_int)
SEQ = Option("seq", 16, "sequence length (default 16)", positive_int)
HEAD_DIM = Option("head_dim", 16, "head dimension (default 16)", positive_int)
NO_CAUSAL = Option("no_causal", False, "no causal mask", None)
MODEL = Option("model", "tiny", "model preset whose first layer runs (default tiny)")


def _side(cfg) -> int:
    return 4 * max(cfg.rows, cfg.cols)


# ------------------------------------------------------------------ collectives
def _pe_vectors(cfg, length: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((cfg.rows, cfg.cols, length))


def _fabric_vectors(cfg, length: int) -> np.ndarray:
    return _pe_vectors(cfg, length, 0).astype(np.float32)


def _line_cost(name: str, algorithm: str, cfg, call: Call, **model) -> int | None:
    """collectives.cost for the call (a model of one line: None along xy)."""
    along = call.kwargs.get("along", "x")
    if along == "xy":
        return None
    line = cfg.cols if along == "x" else cfg.rows
    return collectives.cost(name, algorithm, line, call.args[0].shape[2], cfg, **model)


def _algorithm(function, call: Call) -> str:
    return call.kwargs.get("algorithm", default(function, "algorithm"))


def _broadcast_inputs(cfg, s, seed) -> Call:
    x = _pe_vectors(cfg, s["size"], seed)
    root = (0, 0) if s["along"] == "xy" else 0
    return Call((x, cfg), {"along": s["along"], "root": root}, (x, s["along"], root),
                f"broadcast along {s['along']}, {s['size']} values per PE")


def _broadcast_cost(cfg, call: Call) -> int:
    """The flood: one stream of B over D hops, D to the farthest PE
    (collectives.stream_cycles)."""
    along, root, B = call.kwargs["along"], call.kwargs["root"], call.args[0].shape[2]
    if along == "xy":
        rx, ry = root
        D = max(rx, cfg.cols - 1 - rx) + max(ry, cfg.rows - 1 - ry)
        return collectives.stream_cycles(D, B, cfg)
    return collectives.cost("broadcast", "flood", cfg.cols if along == "x" else cfg.rows, B,
                            cfg, root=root)


def _broadcast_example(cfg, length: int) -> Call:
    centre = cfg.rows // 2
    x = _fabric_vectors(cfg, length)
    return Call((x, cfg), {"along": "xy", "root": (centre, centre)}, (x, "xy", (centre, centre)),
                "broadcast xy from the centre")


def _shift_inputs(cfg, s, seed) -> Call:
    if s["along"] == "xy":
        raise ConfigError("shift moves along a line: --along must be x or y")
    x = _pe_vectors(cfg, s["size"], seed)
    return Call((x, cfg), {"along": s["along"]}, (x, s["along"]),
                f"shift along {s['along']}, {s['size']} values per PE")


def _shift_cost(cfg, call: Call) -> int | None:
    return _line_cost("shift", call.kwargs.get("ring", default(collectives.shift, "ring")), cfg,
                      call, k=call.kwargs.get("k", default(collectives.shift, "k")))


def _shift_example(cfg, length: int) -> Call:
    x = _fabric_vectors(cfg, length)
    return Call((x, cfg), {"along": "x", "k": 1}, (x, "x", 1), "shift x by 1 (wrap)")


def _allreduce_inputs(cfg, s, seed) -> Call:
    x = _pe_vectors(cfg, s["size"], seed)
    return Call((x, cfg), {"along": s["along"]}, (x, s["along"]),
                f"allreduce along {s['along']}, {s['size']} values per PE")


def _reduce_inputs(cfg, s, seed) -> Call:
    """Into PE (0, 0): the first PE of each line, or of the grid along xy."""
    x = _pe_vectors(cfg, s["size"], seed)
    root = (0, 0) if s["along"] == "xy" else 0
    return Call((x, cfg), {"along": s["along"], "root": root}, (x, s["along"]),
                f"reduce along {s['along']}, {s['size']} values per PE")


def _reduce_cost(cfg, call: Call) -> int | None:
    return _line_cost("reduce", _algorithm(collectives.reduce, call), cfg, call,
                      root=call.kwargs.get("root", default(collectives.reduce, "root")))


def _reduce_example(cfg, length: int) -> Call:
    x = _fabric_vectors(cfg, length)
    return Call((x, cfg), {"along": "x", "root": 0, "algorithm": "chain"}, (x, "x"),
                "reduce x, chain to column 0")


def _allreduce_cost(cfg, call: Call) -> int | None:
    return _line_cost("allreduce", _algorithm(collectives.allreduce, call), cfg, call)


def _allreduce_example(cfg, length: int) -> Call:
    x = _fabric_vectors(cfg, length)
    return Call((x, cfg), {"along": "x", "algorithm": "chain"}, (x, "x"), "allreduce x, chain")


# ------------------------------------------------------------------ matrices
def _gemm_inputs(cfg, s, seed) -> Call:
    rng = np.random.default_rng(seed)
    m, k, n = s["m"] or _side(cfg), s["k"] or _side(cfg), s["n"] or _side(cfg)
    A, B = rng.standard_normal((m, k)), rng.standard_normal((k, n))
    return Call((A, B, cfg), {}, (A, B), f"gemm C({m}x{n}) = A({m}x{k}) B({k}x{n})")


def _gemm_cost(cfg, call: Call) -> int:
    """kernels.matmul.model_cycles of the call's plan."""
    A, B = call.args[:2]
    options = {p: call.kwargs.get(p, default(gemm, p))
               for p in ("algorithm", "dtype", "accumulate", "transpose_b", "skew")}
    N = B.shape[0] if options["transpose_b"] else B.shape[1]
    return gemm_model_cycles(gemm_plan(A.shape[0], A.shape[1], N, cfg, **options), cfg)


def _gemm_example(cfg, length: int) -> Call:
    side = 4 * cfg.rows
    rng = np.random.default_rng(1)
    A, B = rng.standard_normal((side, side)), rng.standard_normal((side, side))
    return Call((A, B, cfg), {}, (A, B), f"gemm {side}x{side}x{side}")


def _gemmt_inputs(cfg, s, seed) -> Call:
    rng = np.random.default_rng(seed)
    m, k, n = s["m"] or _side(cfg), s["k"] or _side(cfg), s["n"] or _side(cfg)
    A, B = rng.standard_normal((m, k)), rng.standard_normal((n, k))
    return Call((A, B, cfg), {}, (A, B, True), f"gemmt C({m}x{n}) = A({m}x{k}) B({n}x{k})^T")


def _gemmt_cost(cfg, call: Call) -> int:
    """kernels.matmul.model_cycles of the call's GEMM-T plan."""
    A, B = call.args[:2]
    options = {p: call.kwargs.get(p, default(gemm_t, p)) for p in ("dtype", "accumulate")}
    return gemm_model_cycles(gemm_plan(A.shape[0], A.shape[1], B.shape[0], cfg, "gemmt",
                                       transpose_b=True, **options), cfg)


def _gemmt_example(cfg, length: int) -> Call:
    side = 4 * cfg.rows
    rng = np.random.default_rng(1)
    A, B = rng.standard_normal((side, side)), rng.standard_normal((side, side))
    return Call((A, B, cfg), {}, (A, B, True), f"gemmt {side}x{side}x{side}")


def _gemv_inputs(cfg, s, seed) -> Call:
    rng = np.random.default_rng(seed)
    m, k = s["m"] or _side(cfg), s["k"] or _side(cfg)
    W, x = rng.standard_normal((m, k)), rng.standard_normal(k)
    return Call((W, x, cfg), {}, (W, x), f"gemv y({m}) = W({m}x{k}) x({k})")


def _gemv_cost(cfg, call: Call) -> int:
    """kernels.matvec.model_cycles of the call's plan."""
    W, x = call.args[:2]
    options = {p: call.kwargs.get(p, default(gemv, p))
               for p in ("algorithm", "dtype", "accumulate")}
    batch = x.shape[1] if np.ndim(x) == 2 else 1
    return gemv_model_cycles(gemv_plan(W.shape, batch, cfg, **options), cfg)


# ------------------------------------------------------------------ attention, layer
def _attention_inputs(cfg, s, seed) -> Call:
    rng = np.random.default_rng(seed)
    Q, K_, V = (rng.standard_normal((s["seq"], s["head_dim"])) for _ in range(3))
    causal = not s["no_causal"]
    return Call((Q, K_, V, cfg), {"causal": causal}, (Q, K_, V, causal),
                f"attention over {s['seq']} positions, head_dim {s['head_dim']}, "
                f"{'causal' if causal else 'full'}")


def _layer_inputs(cfg, s, seed) -> Call:
    model = models.preset(s["model"])
    weights = models.random_weights(model, seed=seed, n_layers=1)
    x = np.random.default_rng(seed).standard_normal((s["seq"], model.d_model))
    return Call((model, weights, x), {"target": cfg}, (model, weights, x),
                f"one {model.name} layer, prefill over {s['seq']} positions")


# ------------------------------------------------------------------ the kernels
for _record in (
    Kernel("broadcast", collectives.broadcast, reference.broadcast, _broadcast_inputs,
           (ALONG, SIZE), "kernels.strategies:collective_problems", _broadcast_cost,
           _broadcast_example, "the root's vector to every PE of its line"),
    Kernel("shift", collectives.shift, reference.shift, _shift_inputs, (ALONG, SIZE),
           None, _shift_cost, _shift_example, "every PE's vector to its neighbour on a ring"),
    Kernel("reduce", collectives.reduce, reference.reduce, _reduce_inputs,
           (ALONG, SIZE), "kernels.strategies:collective_problems", _reduce_cost,
           _reduce_example, "the sum of each line's vectors into its root"),
    Kernel("allreduce", collectives.allreduce, reference.allreduce, _allreduce_inputs,
           (ALONG, SIZE), "kernels.strategies:collective_problems",
           _allreduce_cost, _allreduce_example, "the sum of each line's vectors on every PE"),
    Kernel("gemm", gemm, reference.matmul, _gemm_inputs, (M, K, N),
           "kernels.strategies:gemm_problems", _gemm_cost, _gemm_example, "C = A @ B"),
    Kernel("gemmt", gemm_t, reference.matmul, _gemmt_inputs, (M, K, N),
           "kernels.strategies:gemmt_problems", _gemmt_cost, _gemmt_example,
           "C = A @ B^T by GEMM-T, B in its own (N, K) layout"),
    Kernel("gemv", gemv, reference.gemv, _gemv_inputs, (M, K),
           "kernels.strategies:gemv_problems", _gemv_cost, None, "y = W @ x"),
    Kernel("attention", attention, reference.attention, _attention_inputs,
           (SEQ, HEAD_DIM, NO_CAUSAL), "kernels.strategies:attention_problems", None, None,
           "softmax(Q K^T / sqrt(d)) V"),
    Kernel("layer", prefill, reference.prefill, _layer_inputs, (SEQ, MODEL),
           None, None, None, "one transformer layer, prefill"),
):
    register(_record)
