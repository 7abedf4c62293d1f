"""Property-based testing for wafer kernels: machine-level hypothesis
strategies, `assert_close` and `check_report`.

    from wse import testing
    from hypothesis import given, settings, strategies as st

    @settings(max_examples=20, deadline=None)
    @given(st.data())
    def test_my_doubling(data):
        cfg = data.draw(testing.wafer_configs())
        x = data.draw(testing.pe_vectors(cfg.rows, cfg.cols, 4, max_magnitude=1e3))
        y, report = my_doubling(x, cfg)
        testing.assert_close(y, 2.0 * x.astype(np.float64), "float32")
        testing.check_report(report, cfg=cfg)

This module imports hypothesis, so `import wse` does not import it; import it
as `from wse import testing` in test code only.

What is here
  * configurations: `grids`, `wafer_configs` (small grids, optionally varied
    latencies and queue depths);
  * values: `elements` (dtype-exact floats, with awkward ones: -0.0, tiny and
    huge magnitudes, fp16 subnormals), `matrices`, `pe_vectors`;
  * the engine's own inputs: `routes` (random route sets) and `programs`
    (random PE programs, built with `ProgramSpec.build`), for fuzzing;
  * `assert_close(actual, reference, dtype, terms=...)` with the tolerances
    documented on it, and `check_report(report or run result)` for the
    invariants every run must satisfy;
  * `assert_engines_agree(run)`: the same call on the wavelet and the stream
    engine gives the same values, counts, events and errors, to the bit.
Problems of the project's kernels (collectives, GEMM, GEMV, attention), each
with its float64 reference, are in kernels.strategies.
"""
from __future__ import annotations

import dataclasses
import math
from collections import Counter
from dataclasses import dataclass

import numpy as np
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from . import isa
from .config import DTYPES, PRESETS, WSE2, WaferConfig
from .errors import ConfigError
from .lowering import ENGINES

__all__ = [
    "DTYPES", "AWKWARD_VALUES", "UNIT_ROUNDOFF", "RTOL_SAFETY",
    "grids", "wafer_configs", "dtypes", "elements", "matrices", "pe_vectors",
    "RouteSpec", "routes", "ProgramSpec", "programs",
    "tolerance", "assert_close", "check_report",
    "ENGINES", "run_on_each_engine", "assert_engines_agree",
]

NUMPY_DTYPES = {"float32": np.float32, "float16": np.float16}


def _dtype_name(dtype) -> str:
    name = np.dtype(dtype).name if not isinstance(dtype, str) else dtype
    if name not in NUMPY_DTYPES:
        raise ConfigError(f"dtype {dtype!r}: expected one of {DTYPES}")
    return name


# ----------------------------------------------------------------------------
# Configurations
def grids(min_rows: int = 1, max_rows: int = 4, min_cols: int = 1, max_cols: int = 4,
          square: bool = False):
    """(rows, cols) of a small grid; square=True gives rows == cols."""
    if square:
        side = st.integers(max(min_rows, min_cols), min(max_rows, max_cols))
        return side.map(lambda n: (n, n))
    return st.tuples(st.integers(min_rows, max_rows), st.integers(min_cols, max_cols))


@st.composite
def wafer_configs(draw, min_rows: int = 1, max_rows: int = 4, min_cols: int = 1,
                  max_cols: int = 4, square: bool = False, base: WaferConfig = WSE2,
                  vary_timing: bool = False):
    """`base` on a small grid. vary_timing also draws the parameters the vendor has
    not published (ramp and hop latency, queue depths, async slots), so a kernel's
    cycle formula is tested against more than the defaults."""
    rows, cols = draw(grids(min_rows, max_rows, min_cols, max_cols, square))
    cfg = base.with_grid(rows=rows, cols=cols)
    if vary_timing:
        cfg = cfg.replace(ramp_latency=draw(st.integers(1, 3)),
                          hop_latency=draw(st.integers(1, 2)),
                          queue_depth=draw(st.integers(1, 6)),
                          input_queue_depth=draw(st.integers(1, 6)),
                          async_slots=draw(st.integers(1, 4)))
    return cfg


def dtypes(choices=DTYPES):
    return st.sampled_from(tuple(_dtype_name(d) for d in choices))


# ----------------------------------------------------------------------------
# Values
AWKWARD_VALUES = {
    "float32": (0.0, -0.0, 1.0, -1.0, 2.0 ** -149, -(2.0 ** -149), 2.0 ** -126,
                (1 - 2.0 ** -23) * 2.0 ** -126, 1.0 + 2.0 ** -23, 1.0 - 2.0 ** -24,
                float(np.float32(0.1)), float(np.float32(1e-30)), -float(np.float32(1e-30)),
                float(np.float32(1e30)), -float(np.float32(1e30)),
                float(np.finfo(np.float32).max), -float(np.finfo(np.float32).max),
                65504.0, 2.0 ** -24),
    "float16": (0.0, -0.0, 1.0, -1.0, 2.0 ** -24, -(2.0 ** -24), 1023 * 2.0 ** -24,
                2.0 ** -14, -(2.0 ** -14), 1.0 + 2.0 ** -10, 1.0 - 2.0 ** -11,
                float(np.float16(0.1)), 65504.0, -65504.0, 2048.0, 2050.0),
}
"""Per dtype: values that trip careless code (signed zero, the smallest
subnormal, the largest subnormal and the smallest normal, one ulp either side
of 1, the largest finite value). All are exactly representable in the dtype."""


def elements(dtype: str = "float32", awkward: bool = True, max_magnitude: float | None = None,
             allow_nan: bool = False, allow_infinity: bool = False):
    """Python floats exactly representable in `dtype`.

    awkward mixes in AWKWARD_VALUES (those within max_magnitude); max_magnitude
    bounds |value| (use it where sums or products must stay finite)."""
    dtype = _dtype_name(dtype)
    width = 32 if dtype == "float32" else 16
    bound = {}
    if max_magnitude is not None:
        limit = float(NUMPY_DTYPES[dtype](max_magnitude))
        bound = {"min_value": -limit, "max_value": limit}
    plain = st.floats(width=width, allow_nan=allow_nan and not bound,
                      allow_infinity=allow_infinity and not bound, allow_subnormal=True,
                      **bound)
    specials = []
    if allow_nan:
        specials.append(math.nan)
    if allow_infinity:
        specials += [math.inf, -math.inf]
    if awkward:
        specials += [v for v in AWKWARD_VALUES[dtype]
                     if max_magnitude is None or abs(v) <= max_magnitude]
    if specials:
        return st.one_of(plain, st.sampled_from(specials))
    return plain


def matrices(shape, dtype: str = "float32", **element_options):
    """An ndarray of `shape` (a tuple or a strategy of tuples) in `dtype`;
    element_options go to `elements`."""
    dtype = _dtype_name(dtype)
    return hnp.arrays(NUMPY_DTYPES[dtype], shape, elements=elements(dtype, **element_options))


def pe_vectors(rows: int, cols: int, length: int, dtype: str = "float32", **element_options):
    """One vector of `length` per PE: shape (rows, cols, length)."""
    return matrices((rows, cols, length), dtype, **element_options)


# ----------------------------------------------------------------------------
# Random routes and programs (for fuzzing the engine)
PORT_BITS = {name: 1 << index for index, name in enumerate(isa.PORT_NAMES)}


@dataclass(frozen=True)
class RouteSpec:
    """The rx and tx port masks of one color, each (rows, cols) uint8."""
    rx: np.ndarray
    tx: np.ndarray
    how: str           # "random", "line" (a multicast) or "pairs" (point-to-point)


def _off_grid_bits(rows: int, cols: int) -> np.ndarray:
    """Per PE, the tx bits that would leave the grid."""
    bits = np.zeros((rows, cols), np.uint8)
    bits[0, :] |= PORT_BITS["N"]
    bits[-1, :] |= PORT_BITS["S"]
    bits[:, 0] |= PORT_BITS["W"]
    bits[:, -1] |= PORT_BITS["E"]
    return bits


@st.composite
def _route(draw, rows: int, cols: int, off_grid: bool):
    how = draw(st.sampled_from(("random", "line", "pairs")))
    rx = np.zeros((rows, cols), np.uint8)
    tx = np.zeros((rows, cols), np.uint8)
    if how == "random":
        rng = _rng(draw)
        rx[:] = rng.integers(0, 32, (rows, cols))
        tx[:] = rng.integers(0, 32, (rows, cols))
    elif how == "line":
        # flood along one row or column from a root, the idiom of a broadcast
        along_x = draw(st.booleans())
        length = cols if along_x else rows
        fwd, back = ("E", "W") if along_x else ("S", "N")
        line = draw(st.integers(0, (rows if along_x else cols) - 1))
        root = draw(st.integers(0, length - 1))
        for i in range(length):
            onward = (PORT_BITS[fwd] if i >= root and i < length - 1 else 0) | \
                (PORT_BITS[back] if i <= root and i > 0 else 0)
            if i == root:
                r_bits, t_bits = PORT_BITS["RAMP"], onward or PORT_BITS["RAMP"]
            else:
                r_bits = PORT_BITS[back if i > root else fwd]
                t_bits = PORT_BITS["RAMP"] | onward
            at = (line, i) if along_x else (i, line)
            rx[at], tx[at] = r_bits, t_bits
    else:
        # straight paths between random PE pairs on one row or column
        for _ in range(draw(st.integers(1, 3))):
            along_x = draw(st.booleans())
            length = cols if along_x else rows
            line = draw(st.integers(0, (rows if along_x else cols) - 1))
            s, d = draw(st.integers(0, length - 1)), draw(st.integers(0, length - 1))
            step = 1 if d >= s else -1
            out, inn = (("E", "W") if step > 0 else ("W", "E")) if along_x else \
                (("S", "N") if step > 0 else ("N", "S"))
            for i in range(s, d + step, step):
                at = (line, i) if along_x else (i, line)
                rx[at] = PORT_BITS["RAMP"] if i == s else PORT_BITS[inn]
                tx[at] = PORT_BITS["RAMP"] if i == d else PORT_BITS[out]
    if not off_grid:
        tx &= ~_off_grid_bits(rows, cols)
    return RouteSpec(rx, tx, how)


def routes(rows: int, cols: int, min_colors: int = 1, max_colors: int = 3,
           off_grid: bool = False):
    """A list of RouteSpec, one per color: random port masks, floods along a line
    and point-to-point paths. off_grid=True keeps tx bits that leave the grid (the
    program builder must reject them)."""
    return st.lists(_route(rows, cols, off_grid), min_size=min_colors, max_size=max_colors)


VECTOR_OPS = {
    # name: (number of vector operands after dst, takes a scalar)
    "mov": (1, False), "add": (2, False), "sub": (2, False), "mul": (2, False),
    "max": (2, False), "min": (2, False), "fmac": (2, True), "scale": (1, True),
    "adds": (1, True), "subs": (1, True), "exp": (1, False), "rsqrt": (1, True),
    "recip": (1, False), "tanh": (1, False), "sigmoid": (1, False), "fill": (0, True),
    "sum": (1, False), "rmax": (1, False), "dot": (2, False),
}


@dataclass(frozen=True)
class ProgramSpec:
    """A random program as plain data; `build()` turns it into a wse.Program
    through the public API (which may reject it with a WseError)."""
    cfg: WaferConfig
    route_specs: tuple
    buffers: tuple          # (name, size, dtype, where mask or None)
    data: tuple             # per buffer: (rows, cols, size) float32 values
    roles: tuple            # (name, where mask, tasks); task: (name, kind, color, entry, code)
    color_param: np.ndarray | None
    int_param: np.ndarray

    def build(self):
        """(program, buffers): the Program with data loaded, and its Buffers."""
        from .program import WAVELET, Program
        prog = Program(self.cfg)
        colors = [prog.color(f"c{i}") for i in range(len(self.route_specs))]
        for color, spec in zip(colors, self.route_specs):
            prog.route_masks(color, spec.rx, spec.tx)
        buffers = [prog.buffer(name, size, dtype, where=where)
                   for name, size, dtype, where in self.buffers]
        for buf, values in zip(buffers, self.data):
            prog.load(buf, values)
        color_param = (prog.color_param_indices("color_param", self.color_param)
                       if self.color_param is not None else None)
        int_param = prog.param("int_param", self.int_param)
        registers = [prog.reg(), prog.reg()]

        def operand(t, spec):
            kind = spec[0]
            if kind == "mem":
                _, b, offset, length, stride, use_reg = spec
                buf = buffers[b % len(buffers)]
                if use_reg == "offset":
                    return buf.view(offset=registers[0] * 1 + offset, length=length, stride=stride)
                if use_reg == "length":
                    return buf.view(offset=offset, length=registers[1], stride=stride)
                return buf.view(offset=offset, length=length, stride=stride)
            _, c, length, by_param, length_in_reg = spec
            color = color_param if by_param and color_param is not None else \
                colors[c % len(colors)] if colors else color_param
            if color is None:
                return None
            if length_in_reg:
                length = registers[1]
            return prog.fabin(color, length) if kind == "fabin" else prog.fabout(color, length)

        def scalar(t, spec):
            if spec[0] == "imm":
                return spec[1]
            if spec[0] == "wavelet":
                return WAVELET
            return buffers[spec[1] % len(buffers)].scalar(spec[2])

        def emit(t, role, code):
            for ins in code:
                what = ins[0]
                if what == "vector":
                    _, name, dst, srcs, s, async_, on_done = ins
                    args = [operand(t, d) for d in (dst, *srcs)]
                    if any(a is None for a in args):
                        continue
                    kw = {"async_": async_}
                    if on_done is not None and async_:
                        kw["on_done"] = on_done
                    if VECTOR_OPS[name][1]:
                        args.append(scalar(t, s))
                    getattr(t, name)(*args, **kw)
                elif what == "matmul":
                    _, c, a, b, m, k, n, tb = ins
                    t.matmul(operand(t, c), operand(t, a), operand(t, b), m, k, n,
                             transpose_b=tb)
                elif what == "wait":
                    t.wait(ins[1])
                elif what == "loop":
                    count = int_param if ins[1] == "param" else ins[1]
                    with t.loop(count):
                        emit(t, role, ins[2])
                elif what == "set":
                    t.set(registers[ins[1]], int_param if ins[2] == "param" else ins[2])
                elif what == "affine":
                    t.affine(registers[ins[1]], registers[ins[2]], ins[3], ins[4])
                elif what == "mod":
                    t.mod(registers[ins[1]], ins[2])
                elif what == "activate":
                    t.activate(ins[1])

        for name, where, tasks in self.roles:
            role = prog.role(name, where=where)
            builders = []
            for task_name, kind, c, entry, _ in tasks:
                if kind == "data":
                    if not colors:
                        continue
                    builders.append(role.data_task(task_name, colors[c % len(colors)]))
                else:
                    builders.append(role.task(task_name, entry=entry))
            for t, (_, _, _, _, code) in zip(builders, tasks):
                emit(t, role, code)
        return prog, buffers


def _rng(draw) -> np.random.Generator:
    return np.random.default_rng(draw(st.integers(0, 2 ** 32 - 1)))


# The program generator draws plain integers and picks from Python tuples:
# building a hypothesis strategy per operand made generation cost more than
# running the engine.
def _pick(draw, options):
    return options[draw(st.integers(0, len(options) - 1))]


def _memory_operand(draw, sizes):
    """A view of a random buffer: mostly in range, sometimes not (on purpose)."""
    b = draw(st.integers(0, len(sizes) - 1))
    size = sizes[b]
    use_reg = _pick(draw, ("", "", "", "", "offset", "length"))
    if draw(st.integers(0, 99)) == 0:          # anything, in range or not
        return ("mem", b, draw(st.integers(0, 12)), draw(st.integers(0, 12)),
                draw(st.integers(0, 2)), use_reg)
    stride = _pick(draw, (1, 1, 1, 2, 0))
    offset = draw(st.integers(0, size - 1))
    reach = (size - 1 - offset) // stride + 1 if stride else 4
    return ("mem", b, offset, draw(st.integers(0, reach)), stride, use_reg)


def _operand(draw, sizes, n_colors: int, fabric_kind: str | None):
    """A memory view (2 in 3) or, with fabric_kind, a fabric descriptor."""
    if fabric_kind is None or n_colors == 0 or draw(st.integers(0, 2)) < 2:
        return _memory_operand(draw, sizes)
    return (fabric_kind, draw(st.integers(0, n_colors - 1)), draw(st.integers(0, 6)),
            draw(st.booleans()), draw(st.integers(0, 3)) == 0)


SCALAR_IMMEDIATES = (0.0, 1.0, -2.5, 0.5, math.inf, math.nan)
REGISTER_VALUES = (0, 1, 2, 5, -1, 1 << 40, "param")


def _code(draw, sizes, n_colors: int, local_tasks, data_task: bool, depth: int, max_len: int):
    code = []
    kinds = ("vector",) * 6 + ("wait", "set", "affine", "mod", "matmul") + \
        (("loop",) if depth < 2 else ()) + (("activate",) if local_tasks else ())
    op_names = tuple(sorted(VECTOR_OPS))
    for _ in range(draw(st.integers(0, max_len))):
        kind = _pick(draw, kinds)
        if kind == "vector":
            name = _pick(draw, op_names)
            n_src, _ = VECTOR_OPS[name]
            memory_only = name in ("sum", "rmax", "dot")
            srcs = tuple(_operand(draw, sizes, n_colors, None if memory_only else "fabin")
                         for _ in range(n_src))
            dst = _operand(draw, sizes, n_colors, None if memory_only else "fabout")
            which = draw(st.integers(0, 2 if data_task else 1))
            scalar = (("imm", _pick(draw, SCALAR_IMMEDIATES)) if which == 0 else
                      ("mem", draw(st.integers(0, len(sizes) - 1)), _pick(draw, (0, 0, 0, 1, 5)))
                      if which == 1 else ("wavelet",))
            async_ = draw(st.booleans())
            on_done = _pick(draw, (None, *local_tasks)) if async_ else None
            code.append(("vector", name, dst, srcs, scalar, async_, on_done))
        elif kind == "matmul":
            tiles = [("mem", draw(st.integers(0, len(sizes) - 1)), draw(st.integers(0, 1)),
                      1, 1, "") for _ in range(3)]
            code.append(("matmul", *tiles, draw(st.integers(1, 2)), draw(st.integers(1, 2)),
                         draw(st.integers(1, 2)), draw(st.booleans())))
        elif kind == "wait":
            code.append(("wait", _pick(draw, (None, 1, 2))))
        elif kind == "loop":
            body = _code(draw, sizes, n_colors, local_tasks, data_task, depth + 1,
                         max(1, max_len // 2))
            code.append(("loop", _pick(draw, (0, 1, 2, 3, "param")), body))
        elif kind == "set":
            code.append(("set", draw(st.integers(0, 1)), _pick(draw, REGISTER_VALUES)))
        elif kind == "affine":
            code.append(("affine", draw(st.integers(0, 1)), draw(st.integers(0, 1)),
                         draw(st.integers(-2, 3)), draw(st.integers(-2, 3))))
        elif kind == "mod":
            code.append(("mod", draw(st.integers(0, 1)), draw(st.integers(1, 4))))
        else:
            code.append(("activate", _pick(draw, local_tasks)))
    return tuple(code)


@st.composite
def programs(draw, min_rows: int = 1, max_rows: int = 4, min_cols: int = 1, max_cols: int = 4,
             max_colors: int = 3, max_buffers: int = 3, max_roles: int = 3,
             max_instructions: int = 5, fabric: bool = True, vary_timing: bool = True,
             max_size: int = 10):
    """A ProgramSpec: random routes, buffers (random dtype, size and placement),
    roles by random PE assignment, local and data tasks whose code mixes vector
    operations on random descriptors (memory views, fabric in/out, by color or
    by per-PE color parameter, register offsets and lengths), async operations
    with on_done tasks, waits, loops, register arithmetic and activations.
    Most of it is legal; some of it is not, on purpose. Buffers hold 1 to
    `max_size` elements (so streams are at most that long)."""
    cfg = draw(wafer_configs(min_rows, max_rows, min_cols, max_cols, vary_timing=vary_timing))
    rows, cols = cfg.rows, cfg.cols
    n_colors = draw(st.integers(0, max_colors)) if fabric else 0
    route_specs = tuple(draw(routes(rows, cols, n_colors, n_colors,
                                    off_grid=draw(st.integers(0, 9)) == 0)))
    # per-PE tables come from a drawn seed: drawing them element by element
    # made generation slower than running the engine
    rng = _rng(draw)
    n_buffers = draw(st.integers(1, max_buffers))
    buffers, data = [], []
    for b in range(n_buffers):
        size = draw(st.integers(1, max_size))
        dtype = draw(dtypes())
        where = rng.integers(0, 2, (rows, cols)).astype(bool) if draw(st.integers(0, 2)) == 0 \
            else None
        buffers.append((f"b{b}", size, dtype, where))
        palette = np.array((0.0, 1.0, -1.0, 0.5, 3.0, -0.0, 1e-3), np.float32)
        data.append(palette[rng.integers(0, len(palette), (rows, cols, size))])
    sizes = tuple(b[1] for b in buffers)
    n_roles = draw(st.integers(1, max_roles))
    role_of_pe = rng.integers(0, n_roles + 1, (rows, cols))
    roles = []
    for r in range(n_roles):
        n_tasks = draw(st.integers(1, 3))
        kinds = [draw(st.sampled_from(("local", "local", "data"))) if i else "local"
                 for i in range(n_tasks)]
        local_names = [f"t{i}" for i, k in enumerate(kinds) if k == "local"]
        tasks = []
        for i, kind in enumerate(kinds):
            code = _code(draw, sizes, n_colors, tuple(local_names), kind == "data", 0,
                         max_instructions)
            tasks.append((f"t{i}", kind, draw(st.integers(0, max(n_colors - 1, 0))),
                          i == 0, code))
        roles.append((f"role{r}", role_of_pe == r + 1, tuple(tasks)))
    color_param = None
    if n_colors:
        color_param = rng.integers(-1, n_colors + 1, (rows, cols))
        if draw(st.integers(0, 3)):          # mostly valid per-PE colors
            color_param = np.clip(color_param, 0, n_colors - 1)
    int_param = rng.integers(0, 4, (rows, cols))
    return ProgramSpec(cfg, route_specs, tuple(buffers), tuple(data), tuple(roles),
                       color_param, int_param)


# ----------------------------------------------------------------------------
# Assertions
UNIT_ROUNDOFF = {"float32": 2.0 ** -24, "float16": 2.0 ** -11}
"""u: half the distance from 1 to the next representable number."""
RTOL_SAFETY = 4
"""Multiplier on the first-order rounding bound (covers a rounding of the
inputs, of each partial result and of the output)."""


def tolerance(dtype, terms: int = 1) -> tuple[float, float]:
    """(rtol, atol) that `assert_close` uses for `dtype` and `terms` accumulated terms:
        rtol = RTOL_SAFETY * u * (terms + 1)
        atol = (terms + 1) * smallest subnormal of dtype
    u = 2**-24 (float32) or 2**-11 (float16). terms + 1 is the number of
    roundings on the worst path of a recursive sum of `terms` products plus
    the final rounding to dtype (the classic gamma_n bound, Higham, Accuracy
    and Stability of Numerical Algorithms, 2nd ed., section 3.1)."""
    dtype = _dtype_name(dtype)
    if int(terms) < 0:
        raise ConfigError(f"terms = {terms}: must be >= 0")
    rtol = RTOL_SAFETY * UNIT_ROUNDOFF[dtype] * (int(terms) + 1)
    atol = (int(terms) + 1) * float(np.finfo(NUMPY_DTYPES[dtype]).smallest_subnormal)
    return rtol, atol


def assert_close(actual, reference, dtype, terms: int = 1, scale=None, rtol: float | None = None,
                 err_msg: str = "") -> None:
    """Assert that `actual` (computed in `dtype`) matches a float64 `reference`.

    Non-finite entries must agree exactly: NaN where the reference is NaN, the
    same infinity where it is infinite. Finite entries must satisfy
        |actual - reference| <= rtol * magnitude + atol
    elementwise, with (rtol, atol) = tolerance(dtype, terms) unless rtol is given,
    and magnitude = |reference| + max|reference| (so results that cancel to
    near zero are judged against the size of the whole result), or `scale`
    when given (e.g. |A| @ |B| for a matrix product, the rigorous bound).
    `terms` is the length of the longest sum behind one output (K for a GEMM,
    the number of PEs for a reduction; 1 for element-wise work).
    The inputs behind `reference` must be exactly representable in dtype (the
    strategies of this module guarantee it)."""
    actual = np.asarray(actual)
    ref = np.asarray(reference, np.float64)
    if actual.shape != ref.shape:
        raise AssertionError(f"{err_msg}shape {actual.shape} != reference shape {ref.shape}")
    act = actual.astype(np.float64)
    base_rtol, atol = tolerance(dtype, terms)
    rtol = base_rtol if rtol is None else float(rtol)
    finite = np.isfinite(ref)
    same_special = (np.isnan(ref) & np.isnan(act)) | (np.isinf(ref) & (act == ref))
    bad = ~finite & ~same_special
    if scale is None:
        magnitude = np.abs(ref) + (np.abs(ref[finite]).max() if finite.any() else 0.0)
    else:
        magnitude = np.broadcast_to(np.abs(np.asarray(scale, np.float64)), ref.shape)
    with np.errstate(invalid="ignore"):
        error = np.abs(act - ref)
        allowed = rtol * magnitude + atol
        bad |= finite & ~(error <= allowed)
    if bad.any():
        where = np.argwhere(bad)
        first = tuple(int(i) for i in where[0])
        raise AssertionError(
            f"{err_msg}{int(bad.sum())} of {bad.size} entries differ beyond tolerance "
            f"(dtype {_dtype_name(dtype)}, terms {terms}, rtol {rtol:.3g}, atol {atol:.3g}); "
            f"first at {first}: actual {act[first]!r}, reference {ref[first]!r}, "
            f"allowed error {float(allowed[first]) if finite[first] else 0.0:.3g}")


def _latencies(cfg) -> tuple[int, int, int]:
    """(T_R, H, E): E is the earliest cycle a wavelet can leave a sender's
    datapath (a send's start-up S plus the datapath latency D)."""
    if cfg is None:
        return 1, 1, 0      # the smallest a config allows: the bounds stay valid
    return cfg.ramp_latency, cfg.hop_latency, cfg.vector_startup_cycles + cfg.datapath_latency


def _neighbour(pe: int, port: int, cols: int) -> int:
    return pe + isa.PORT_DX[port] + isa.PORT_DY[port] * cols


def _distance_to(mask: np.ndarray) -> np.ndarray:
    """Per PE, the Manhattan distance to the nearest PE in mask (large where none)."""
    rows, cols = mask.shape
    ys, xs = np.nonzero(mask)
    if len(ys) == 0:
        return np.full(mask.shape, 1 << 30, np.int64)
    gy, gx = np.mgrid[0:rows, 0:cols]
    return (np.abs(gy[..., None] - ys) + np.abs(gx[..., None] - xs)).min(axis=-1)


def _route_paths(program, color_index: int, source: int, limit: int):
    """Follow the static route of a color from `source`'s ramp: Counters of the
    (pe, port) links crossed and of the PEs delivered to, counting every path
    (two paths to one PE deliver two copies), with each delivery's hop count."""
    rx, tx = (m.reshape(-1) for m in program.routes_of(program.colors[color_index]))
    cols = program.cols
    links, deliveries, hops = Counter(), Counter(), {}
    frontier = [(source, 0)]
    steps = 0
    while frontier:
        pe, distance = frontier.pop()
        steps += 1
        if steps > limit:
            raise AssertionError(f"color index {color_index}: the route from PE "
                                 f"({source % cols}, {source // cols}) does not end")
        for port in range(5):
            if not tx[pe] >> port & 1:
                continue
            if port == isa.RAMP:
                deliveries[pe] += 1
                hops[pe] = min(hops.get(pe, distance), distance)
            else:
                links[(pe, port)] += 1
                frontier.append((_neighbour(pe, port, cols), distance + 1))
    return links, deliveries, hops


def check_report(report, cfg: WaferConfig | None = None, program=None) -> tuple[str, ...]:
    """Assert the invariants every completed run satisfies; returns the names of
    the checks that could be made.

    `report` is a RunReport or a RunResult (which brings its program and config).
    Without a config the latencies are taken as 1 (the bounds stay valid, only
    looser) and SRAM capacity from the preset of the report's config name.

    Always:
      counts     all counts are non-negative; wavelet_hops = sum of link_wavelets;
                 no link leaves the grid; if nothing was injected nothing moved.
      sram       sram_peak_bytes <= the PE's SRAM (when the capacity is known).
      rate       no link, ramp-in or ramp-out carries more wavelets than there
                 were cycles.
      bound      cycles >= what traffic and distance imply. A wavelet leaves a
                 sender's datapath no earlier than E = S + D (start-up plus
                 datapath latency), is at its router T_R later and hops in H
                 each; a link carries one wavelet per cycle and every wavelet
                 ends in a ramp. For a link out of router r into n carrying c:
                   cycles >= E + 2*T_R + (d_in(r) + 1 + d_out(n))*H + c
                 (d_in: hops from the nearest injecting PE, d_out: hops to the
                 nearest receiving PE); a PE receiving c: E + 2*T_R + d_in*H + c;
                 a PE injecting c: E + 2*T_R + d_out*H + c. Without a config
                 E = 0 and T_R = H = 1.
    With report.link_events (run(record_links=True)):
      links      no (cycle, pe, port) twice; per link, the events add up to
                 link_wavelets.
    With report.delivery_events (run(record_deliveries=True)):
      deliveries no PE receives two wavelets ready in the same cycle; per PE the
                 events add up to ramp_in; the wavelet ids delivered are exactly
                 the ones injected (0 .. sum(ramp_out) - 1).
    With both and the program (a RunResult):
      paths      every wavelet crosses exactly the links of its color's route from
                 its source and is delivered to each destination of that route
                 once per path, no earlier than E + 2*T_R + hops*H; each PE's count
                 of sources equals its ramp_out.
    """
    from .program import RunResult
    if isinstance(report, RunResult):
        program = program or report.program
        cfg = cfg or report.program.cfg
        report = report.report
    if cfg is None and program is not None:
        cfg = program.cfg
    done = []
    rows, cols, cycles = report.rows, report.cols, int(report.cycles)
    T_R, H, E = _latencies(cfg)
    links = np.asarray(report.link_wavelets)
    ramp_in, ramp_out = np.asarray(report.ramp_in), np.asarray(report.ramp_out)

    def fail(what: str):
        raise AssertionError(f"check_report: {what}")

    # counts
    if links.shape != (rows, cols, 4) or ramp_in.shape != (rows, cols) \
            or ramp_out.shape != (rows, cols):
        fail(f"array shapes {links.shape}, {ramp_in.shape}, {ramp_out.shape} do not match "
             f"the {rows} x {cols} grid")
    for name in ("link_wavelets", "ramp_in", "ramp_out", "busy_cycles", "compute_cycles",
                 "stall_cycles", "sram_peak_bytes"):
        value = np.asarray(getattr(report, name))
        if (value < 0).any():
            fail(f"{name} has negative entries")
    if cycles < 0 or report.flops < 0 or report.energy_joules < 0:
        fail("cycles, flops and energy must be non-negative")
    if int(links.sum()) != int(report.wavelet_hops):
        fail(f"wavelet_hops = {report.wavelet_hops} but link_wavelets sum to {int(links.sum())}")
    leaving = np.stack([np.zeros((rows, cols), bool)] * 4, axis=-1)
    leaving[0, :, isa.NORTH] = leaving[-1, :, isa.SOUTH] = True
    leaving[:, 0, isa.WEST] = leaving[:, -1, isa.EAST] = True
    if (links[leaving] != 0).any():
        fail("wavelets left the grid through an edge link")
    if ramp_out.sum() == 0 and (links.sum() or ramp_in.sum()):
        fail("nothing was injected, yet wavelets moved")
    done.append("counts")

    # sram
    capacity = cfg.sram_bytes if cfg is not None else next(
        (p.sram_bytes for p in PRESETS.values() if p.name == report.config_name), None)
    if capacity is not None:
        peak = np.asarray(report.sram_peak_bytes)
        if (peak > capacity).any():
            y, x = np.argwhere(peak > capacity)[0]
            fail(f"PE ({x}, {y}) holds {peak[y, x]} bytes, more than its {capacity}")
        done.append("sram")

    # rate: one wavelet per cycle per link and per ramp direction
    for name, value in (("a link", links), ("a ramp (in)", ramp_in), ("a ramp (out)", ramp_out)):
        if value.size and value.max() > cycles:
            fail(f"{name} carried {int(value.max())} wavelets in {cycles} cycles")
    done.append("rate")

    # bound: cycles implied by traffic and distance
    d_in = _distance_to(ramp_out > 0)
    d_out = _distance_to(ramp_in > 0)
    need, why = 0, ""
    for y, x in zip(*np.nonzero(ramp_in)):
        b = E + 2 * T_R + d_in[y, x] * H + int(ramp_in[y, x])
        if b > need:
            need, why = b, f"PE ({x}, {y}) receives {int(ramp_in[y, x])} wavelets"
    for y, x in zip(*np.nonzero(ramp_out)):
        b = E + 2 * T_R + d_out[y, x] * H + int(ramp_out[y, x])
        if b > need:
            need, why = b, f"PE ({x}, {y}) injects {int(ramp_out[y, x])} wavelets"
    for y, x, port in zip(*np.nonzero(links)):
        ny, nx = y + isa.PORT_DY[port], x + isa.PORT_DX[port]
        b = E + 2 * T_R + (d_in[y, x] + 1 + d_out[ny, nx]) * H + int(links[y, x, port])
        if b > need:
            need, why = b, (f"the {isa.PORT_NAMES[port]} link of PE ({x}, {y}) carries "
                            f"{int(links[y, x, port])} wavelets")
    if cycles < need:
        fail(f"{cycles} cycles, but {why}: at least {need} (T_R={T_R}, H={H}, E={E})")
    done.append("bound")

    # links
    total_hops = int(links.sum())
    link_events = report.link_events
    if link_events is not None and len(link_events) == total_hops:
        ev = np.asarray(link_events, np.int64).reshape(-1, 5)
        keys = ev[:, 0] * (rows * cols * 4) + ev[:, 1] * 4 + ev[:, 2]
        if len(np.unique(keys)) != len(keys):
            k = Counter(keys.tolist()).most_common(1)[0][0]
            fail(f"a link carried two wavelets in one cycle (cycle {k // (rows * cols * 4)})")
        if (ev[:, 0] < 0).any() or (ev[:, 0] >= max(cycles, 1)).any():
            fail("a link event lies outside the run")
        per_link = np.zeros(rows * cols * 4, np.int64)
        np.add.at(per_link, ev[:, 1] * 4 + ev[:, 2], 1)
        if not np.array_equal(per_link.reshape(rows, cols, 4), links):
            fail("link events do not add up to link_wavelets")
        done.append("links")
    else:
        link_events = None

    # deliveries
    delivery_events = report.delivery_events
    injected = int(ramp_out.sum())
    if delivery_events is not None and len(delivery_events) == int(ramp_in.sum()):
        dv = np.asarray(delivery_events, np.int64).reshape(-1, 4)
        keys = dv[:, 0] * (rows * cols) + dv[:, 1]
        if len(np.unique(keys)) != len(keys):
            fail("a PE's ramp delivered two wavelets in one cycle")
        if len(dv) and dv[:, 0].max() >= max(cycles, 1):
            fail(f"a wavelet is delivered at cycle {dv[:, 0].max()}, after the run's "
                 f"{cycles} cycles")
        per_pe = np.bincount(dv[:, 1], minlength=rows * cols).reshape(rows, cols)
        if not np.array_equal(per_pe, ramp_in):
            fail("delivery events do not add up to ramp_in")
        if set(dv[:, 3].tolist()) != set(range(injected)):
            fail(f"{injected} wavelets were injected but the delivered ids are "
                 f"{sorted(set(dv[:, 3].tolist()))[:10]}...")
        done.append("deliveries")
    else:
        delivery_events = None

    # paths: replay each wavelet along its route
    if program is not None and link_events is not None and delivery_events is not None:
        ev_by_id: dict[int, list] = {}
        for t, pe, port, c, wid in ev.tolist():
            ev_by_id.setdefault(wid, []).append((t, pe, port, c))
        dv_by_id: dict[int, list] = {}
        for ready, pe, c, wid in dv.tolist():
            dv_by_id.setdefault(wid, []).append((ready, pe, c))
        sources = Counter()
        limit = 8 * rows * cols * 5 + 8
        for wid, got in dv_by_id.items():
            colors = {c for _, _, c in got} | {c for _, _, _, c in ev_by_id.get(wid, [])}
            if len(colors) != 1:
                fail(f"wavelet {wid} changed color on its way")
            color = colors.pop()
            crossed = ev_by_id.get(wid, [])
            if crossed:
                targets = {_neighbour(pe, port, cols) for _, pe, port, _ in crossed}
                roots = {pe for _, pe, _, _ in crossed} - targets
                if len(roots) != 1:
                    fail(f"wavelet {wid}: its links do not form a tree from one source")
                source = roots.pop()
            else:
                receivers = {pe for _, pe, _ in got}
                if len(receivers) != 1:
                    fail(f"wavelet {wid} reached several PEs without crossing a link")
                source = receivers.pop()
            sources[source] += 1
            want_links, want_pes, hops = _route_paths(program, color, source, limit)
            if Counter((pe, port) for _, pe, port, _ in crossed) != want_links:
                fail(f"wavelet {wid} (color index {color}) did not follow its route from PE "
                     f"({source % cols}, {source // cols})")
            delivered = Counter(pe for _, pe, _ in got)
            if delivered != want_pes:
                fail(f"wavelet {wid} (color index {color}) from PE ({source % cols}, "
                     f"{source // cols}) was delivered to {sorted(delivered.items())} "
                     f"(PE: copies), its route reaches {sorted(want_pes.items())}")
            for ready, pe, _ in got:
                if ready < E + 2 * T_R + hops[pe] * H:
                    fail(f"wavelet {wid} is ready at PE ({pe % cols}, {pe // cols}) in cycle "
                         f"{ready}, before E + 2*T_R + {hops[pe]}*H")
        counted = np.zeros(rows * cols, np.int64)
        for pe, n in sources.items():
            counted[pe] = n
        if not np.array_equal(counted.reshape(rows, cols), ramp_out):
            fail("wavelets traced back to their sources do not add up to ramp_out")
        done.append("paths")
    return tuple(done)


# ----------------------------------------------------------------------------
# The two engines (ENGINES: their names, from wse.lowering)
# stream-engine scratch and bookkeeping that the wavelet engine has no use for
_ENGINE_SCRATCH = ("actions", "signature", "bulk_rows", "bulk_sleep", "bulk_stall",
                   "bulk_moves", "col_queue_of", "col_queues", "col_actions", "col_order",
                   "col_consumers", "col_val", "col_id", "col_ready", "col_group_moves",
                   "col_group_queues", "beside")


def run_on_each_engine(run) -> dict:
    """{engine: outcome} for `run()` called inside `wse.run_options(engine=...)`
    for each engine; an outcome is ("ok", what run returned) or ("error", the
    error's class name, its message). Only wse errors are caught."""
    from .errors import WseError
    from .program import run_options
    outcomes = {}
    for engine in ENGINES:
        with run_options(engine=engine):
            try:
                outcomes[engine] = ("ok", run())
            except WseError as error:
                outcomes[engine] = ("error", type(error).__name__, str(error))
    return outcomes


def assert_engines_agree(run) -> dict:
    """Assert that `run()` gives the same outcome on both engines: the same error
    class and message, or results equal to the bit: arrays byte for byte, run
    reports field by field (events and the Chrome trace included; not the wall
    time or the stream engine's own bulk figures), run results' whole final
    engine state. Returns the stream engine's bulk figures (report.extra of the
    first report found; {} after an error)."""
    outcomes = run_on_each_engine(run)
    wavelet, stream = outcomes["wavelet"], outcomes["stream"]
    assert wavelet[0] == stream[0], f"wavelet engine: {wavelet[:3]}; stream engine: {stream[:3]}"
    if wavelet[0] == "error":
        assert wavelet == stream, f"wavelet engine: {wavelet}; stream engine: {stream}"
        return {}
    bulk: dict = {}
    _assert_same(wavelet[1], stream[1], "result", bulk)
    return bulk


def _pending_timers(heap: np.ndarray, state) -> np.ndarray:
    """(time, PE) of the live entries of a timer heap, sorted."""
    from . import engine
    times = heap[0, :int(state.counters[engine.K_HEAP_SIZE])]
    pes = heap[1, :len(times)]
    live = state.pe[pes, engine.P_WAKE] == times
    order = np.lexsort((pes[live], times[live]))
    return np.stack([times[live][order], pes[live][order]])


def _same_array(a: np.ndarray, b: np.ndarray) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def _assert_same(a, b, where: str, bulk: dict) -> None:
    from . import engine
    from .program import RunResult
    from .report import RunReport
    assert type(a) is type(b), f"{where}: {type(a).__name__} vs {type(b).__name__}"
    if isinstance(a, RunResult):
        for name in engine.State._fields:
            if name in _ENGINE_SCRATCH:
                continue
            x, y = getattr(a.state, name), getattr(b.state, name)
            if name == "counters":
                # the stream engine's own bookkeeping, how many timers were
                # set and fired (a PE that runs ahead sets one where stepping
                # set one per step) and PE steps (a main thread running ahead
                # beside its fabric operations leaves steps of the slots alone
                # where stepping takes one step for both)
                keep = np.ones(len(x), bool)
                keep[[engine.K_STEPS_PE, engine.K_RECORDING, engine.K_ACTIONS,
                      engine.K_BULK_CYCLES,
                      engine.K_BULK_HOPS, engine.K_BULK_ATTEMPTS,
                      engine.K_BULK_MISMATCH, engine.K_BULK_COLUMNS, engine.K_HEAP_PUSHES,
                      engine.K_TIMERS_FIRED, engine.K_PROGRESS_AHEAD,
                      engine.K_AHEAD_STEPS]] = False
                x, y = x[keep], y[keep]
            elif name == "heap":
                # the pending timers, not the order the heap keeps them in
                x, y = (_pending_timers(h, r.state) for h, r in ((x, a), (y, b)))
            assert _same_array(x, y), f"{where}: final engine state '{name}' differs" + (
                f" at {np.flatnonzero(x != y)[:8].tolist()}" if x.shape == y.shape else "")
        _assert_same(a.report, b.report, f"{where}.report", bulk)
    elif isinstance(a, RunReport):
        if not bulk:
            bulk.update(b.extra)
        assert b.extra.get("bulk_mismatches", 0) == 0, f"{where}: replayed moves found " \
            f"their operands not as recorded ({b.extra})"
        for name in a.__dataclass_fields__:
            if name in ("wall_seconds", "pe_steps"):      # emulator work, not the machine's
                continue
            x, y = getattr(a, name), getattr(b, name)
            if name == "extra":
                y = {k: v for k, v in y.items()
                     if not (k == "engine" or k.startswith(("bulk_", "ahead_")))}
            _assert_same(x, y, f"{where}.{name}", bulk)
        trace_a, trace_b = _chrome_trace(a), _chrome_trace(b)
        assert trace_a == trace_b, f"{where}: Chrome traces differ"
    elif isinstance(a, np.ndarray):
        assert _same_array(a, b), f"{where}: arrays differ"
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), f"{where}: keys {sorted(a)} vs {sorted(b)}"
        for k in a:
            _assert_same(a[k], b[k], f"{where}[{k!r}]", bulk)
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), f"{where}: lengths {len(a)} vs {len(b)}"
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same(x, y, f"{where}[{i}]", bulk)
    elif isinstance(a, float):
        assert a == b or (a != a and b != b), f"{where}: {a!r} vs {b!r}"
    elif dataclasses.is_dataclass(a):
        _assert_same({f.name: getattr(a, f.name) for f in dataclasses.fields(a)},
                     {f.name: getattr(b, f.name) for f in dataclasses.fields(b)}, where, bulk)
    elif hasattr(a, "__dict__") and not isinstance(a, type):
        _assert_same(vars(a), vars(b), where, bulk)
    else:
        assert a == b, f"{where}: {a!r} vs {b!r}"


def _chrome_trace(report) -> str | None:
    """The Chrome trace JSON `report.to_chrome_trace` writes, or None untraced."""
    import os
    import tempfile
    if report.task_events is None:
        return None
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "trace.json")
        report.to_chrome_trace(path)
        with open(path) as f:
            return f.read()
