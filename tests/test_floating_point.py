"""NaN, infinities, signed zeros and subnormals through the engine's operations
and through the fabric, compared with NumPy; and run(trap_nan=True).

NumPy is the reference for which entries are NaN or infinite; finite results
must agree to 1 ulp (the engine evaluates transcendental functions in double
precision and rounds once, NumPy's float32 paths are not always correctly
rounded).
"""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import wse

SPECIALS = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, 1.0, -1.0, 2.5, 1e-45, -3e-39,
                     3e38, -3e38, 88.72, 89.5, -100.0], np.float32)
NP = {"float32": np.float32, "float16": np.float16}


def as_dtype(values, dtype):
    """values rounded to dtype (3e38 becomes inf in float16, quietly)."""
    with np.errstate(over="ignore"):
        return np.asarray(values, np.float32).astype(NP[dtype])


def all_pairs(values):
    """a, b covering every ordered pair of values."""
    return np.repeat(values, len(values)), np.tile(values, len(values))


def numpy_op(name, a, b, s):
    """NumPy's float32 result (the engine computes in float32 and rounds to the
    destination dtype once)."""
    a, b, s = a.astype(np.float32), b.astype(np.float32), np.float32(s)
    with np.errstate(all="ignore"):
        return {
            "add": lambda: a + b, "sub": lambda: a - b, "mul": lambda: a * b,
            "max": lambda: np.maximum(a, b), "min": lambda: np.minimum(a, b),
            "fmac": lambda: a + b * s, "scale": lambda: a * s, "adds": lambda: a + s,
            "subs": lambda: a - s, "exp": lambda: np.exp(a), "recip": lambda: 1 / a,
            "rsqrt": lambda: 1 / np.sqrt(a + s), "tanh": lambda: np.tanh(a),
            # the overflow-free form: the engine's sigmoid never overflows exp
            "sigmoid": lambda: np.where(a >= 0, 1 / (1 + np.exp(-a)),
                                        np.exp(a) / (1 + np.exp(a))),
        }[name]()


def run_elementwise(name, a, b, s, dtype):
    """Run op `name` on one PE over buffers a and b of dtype; returns the result."""
    n = len(a)
    prog = wse.Program(wse.WSE2.with_grid(rows=1, cols=1))
    bufs = {key: prog.buffer(key, (n,), dtype) for key in ("a", "b", "y")}
    prog.load(bufs["a"], a)
    prog.load(bufs["b"], b)
    role = prog.role("r")
    y, va, vb = bufs["y"].view(), bufs["a"].view(), bufs["b"].view()
    with role.task("main", entry=True) as t:
        if name in ("add", "sub", "mul", "max", "min"):
            getattr(t, name)(y, va, vb)
        elif name == "fmac":
            t.fmac(y, va, vb, s)
        elif name in ("scale", "adds", "subs"):
            getattr(t, name)(y, va, s)
        elif name == "rsqrt":
            t.rsqrt(y, va, eps=s)
        else:
            getattr(t, name)(y, va)
    return prog.run().read(bufs["y"])[0, 0]


def assert_like_numpy(actual, expected, dtype):
    """Same NaNs, same infinities, finite values within 1 ulp of dtype."""
    actual = np.asarray(actual).astype(np.float64)
    expected = np.asarray(expected).astype(NP[dtype]).astype(np.float64)
    np.testing.assert_array_equal(np.isnan(actual), np.isnan(expected), err_msg="NaN pattern")
    inf = np.isinf(expected)
    np.testing.assert_array_equal(np.isinf(actual), inf, err_msg="infinity pattern")
    np.testing.assert_array_equal(actual[inf], expected[inf], err_msg="sign of infinity")
    finite = np.isfinite(expected)
    ulp = np.spacing(np.abs(expected[finite]).astype(NP[dtype])).astype(np.float64)
    error = np.abs(actual[finite] - expected[finite])
    assert (error <= ulp).all(), (actual[finite][error > ulp], expected[finite][error > ulp])


BINARY = ["add", "sub", "mul", "max", "min", "fmac"]
UNARY = ["scale", "adds", "subs", "exp", "recip", "rsqrt", "tanh", "sigmoid"]


@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("name", BINARY + UNARY)
def test_special_values_propagate_like_numpy(name, dtype):
    values = as_dtype(SPECIALS, dtype)
    a, b = all_pairs(values) if name in BINARY else (values, values)
    for s in ([0.0, 2.0, np.inf, np.nan] if name in ("fmac", "scale", "adds", "subs", "rsqrt")
              else [0.0]):
        got = run_elementwise(name, a, b, s, dtype)
        assert_like_numpy(got, numpy_op(name, a, b, s), dtype)


@pytest.mark.nojit
def test_nan_propagates_through_add_without_jit():
    a, b = all_pairs(np.array([np.nan, np.inf, -np.inf, 1.0], np.float32))
    with np.errstate(invalid="ignore"):
        expected = a + b
    assert_like_numpy(run_elementwise("add", a, b, 0.0, "float32"), expected, "float32")


def test_max_and_min_of_signed_zeros_return_a_zero():
    got_max = run_elementwise("max", np.array([0.0, -0.0]), np.array([-0.0, 0.0]), 0, "float32")
    got_min = run_elementwise("min", np.array([0.0, -0.0]), np.array([-0.0, 0.0]), 0, "float32")
    assert (got_max == 0).all() and (got_min == 0).all()


@pytest.mark.parametrize("values", [
    [1.0, np.inf, -np.inf], [1.0, np.nan, 5.0], [-np.inf, -np.inf], [np.inf, 1.0],
    [-0.0, -0.0], [3e38, 3e38], [2.0, -1.0, 0.5]])
def test_reductions_propagate_like_numpy(values):
    x = np.array(values, np.float32)
    ones = np.ones_like(x)
    n = len(x)
    prog = wse.Program(wse.WSE2.with_grid(rows=1, cols=1))
    bx, bo, out = prog.buffer("x", (n,)), prog.buffer("ones", (n,)), prog.buffer("out", (3,))
    prog.load(bx, x)
    prog.load(bo, ones)
    role = prog.role("r")
    with role.task("main", entry=True) as t:
        t.sum(out.view(offset=0, length=1), bx.view())
        t.rmax(out.view(offset=1, length=1), bx.view())
        t.dot(out.view(offset=2, length=1), bx.view(), bx.view())
    got = prog.run().read(out)[0, 0]
    with np.errstate(all="ignore"):
        expected = np.array([np.sum(x, dtype=np.float32), np.max(x), np.dot(x, x)], np.float32)
    assert_like_numpy(got, expected, "float32")


def send_east(values, dtype, receiver_adds=None):
    """PE (0, 0) streams `values` (a dtype buffer) to PE (1, 0), which stores them
    (or adds its own `receiver_adds` to them). Returns (received, report)."""
    n = len(values)
    prog = wse.Program(wse.WSE2.with_grid(rows=1, cols=2))
    c = prog.color("east")
    prog.route(c, rx="RAMP", tx="E", where=prog.pes(cols=0))
    prog.route(c, rx="W", tx="RAMP", where=prog.pes(cols=1))
    x = prog.buffer("x", (n,), dtype)
    y = prog.buffer("y", (n,), dtype)
    data = np.zeros((1, 2, n), NP[dtype])
    data[0, 0] = values
    if receiver_adds is not None:
        data[0, 1] = receiver_adds
    prog.load(x, data)
    sender = prog.role("send", where=prog.pes(cols=0))
    with sender.task("main", entry=True) as t:
        t.mov(prog.fabout(c, n), x.view())
    receiver = prog.role("recv", where=prog.pes(cols=1))
    with receiver.task("main", entry=True) as t:
        if receiver_adds is None:
            t.mov(y.view(), prog.fabin(c, n))
        else:
            t.add(y.view(), prog.fabin(c, n), x.view())
    return prog, y


@pytest.mark.nojit
@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_fabric_carries_special_values_bit_for_bit(dtype):
    values = as_dtype(SPECIALS, dtype)
    if dtype == "float16":
        values = np.concatenate([values, np.array([2.0 ** -24, -(2.0 ** -24), 1023 * 2.0 ** -24,
                                                   65504.0], np.float16)])
    prog, y = send_east(values, dtype)
    got = prog.run().read(y)[0, 1]
    bits = np.uint32 if dtype == "float32" else np.uint16
    np.testing.assert_array_equal(got.view(bits), values.view(bits))


def test_arithmetic_on_fabric_operands_propagates_like_numpy():
    a, b = all_pairs(np.array([np.nan, np.inf, -np.inf, -0.0, 3e38, 1.0], np.float32))
    prog, y = send_east(a, "float32", receiver_adds=b)
    with np.errstate(all="ignore"):
        assert_like_numpy(prog.run().read(y)[0, 1], a + b, "float32")


@settings(max_examples=30, deadline=None)
@given(st.lists(st.floats(width=32, allow_nan=True, allow_infinity=True), min_size=1,
                max_size=64))
def test_float16_results_round_like_numpy(values):
    """A float32 value moved into a float16 buffer is rounded once, to nearest
    even, exactly as NumPy's astype(float16) (overflow to inf, subnormals)."""
    x = np.array(values, np.float32)
    n = len(x)
    prog = wse.Program(wse.WSE2.with_grid(rows=1, cols=1))
    src, dst = prog.buffer("src", (n,)), prog.buffer("dst", (n,), "float16")
    prog.load(src, x)
    role = prog.role("r")
    with role.task("main", entry=True) as t:
        t.mov(dst.view(), src.view())
    got = prog.run().read(dst)[0, 0]
    with np.errstate(all="ignore"):
        expected = x.astype(np.float16)
    nan = np.isnan(expected)
    np.testing.assert_array_equal(np.isnan(got), nan)
    np.testing.assert_array_equal(got[~nan].view(np.uint16), expected[~nan].view(np.uint16))


# ----------------------------------------------------------------------------
# trap_nan
def inf_times_zero_program():
    """On a 1 x 2 grid both PEs scale x by 2 (4 cycles), then multiply by zero;
    only PE (1, 0) holds an inf (at element 2), so only it makes a NaN, in the
    multiply that starts at cycle 4."""
    prog = wse.Program(wse.WSE2.with_grid(rows=1, cols=2))
    x = prog.buffer("x", (4,))
    zero = prog.buffer("zero", (4,))
    data = np.ones((1, 2, 4), np.float32)
    data[0, 1, 2] = np.inf
    prog.load(x, data)
    prog.load(zero, np.zeros(4, np.float32))
    role = prog.role("r")
    with role.task("main", entry=True) as t:
        t.scale(x.view(), x.view(), 2.0)
        t.mul(x.view(), x.view(), zero.view())
    return prog, x


@pytest.mark.nojit
def test_trap_nan_names_the_pe_the_element_and_the_cycle():
    prog, _ = inf_times_zero_program()
    with pytest.raises(wse.FloatingPointTrap) as caught:
        prog.run(trap_nan=True)
    message = str(caught.value)
    # the mul issues when the 4-element fp32 scale is done, start-up S after its issue
    issued = prog.cfg.vector_startup_cycles + 4
    assert "PE (1, 0)" in message and "element 2" in message and f"cycle {issued}" in message
    assert "role 'r' task 'main' instruction 1" in message


@pytest.mark.nojit
def test_without_trap_the_nan_lands_in_memory():
    prog, x = inf_times_zero_program()
    got = prog.run().read(x)
    assert np.isnan(got[0, 1, 2]) and np.count_nonzero(np.isnan(got)) == 1
    np.testing.assert_array_equal(got[0, 0], np.zeros(4, np.float32))


@pytest.mark.nojit
def test_trap_nan_on_a_fabric_operand_reports_the_cycle_the_element_arrives():
    """Element i of a one-hop stream is ready at the receiver at
    S + D + 2*T_R + H + i (sent from start-up S on, out of the datapath D
    later), so inf + -inf at element 2 makes its NaN in cycle 2 + 1 + 4 + 1 + 2."""
    prog, _ = send_east(np.array([1.0, 1.0, -np.inf], np.float32), "float32",
                        receiver_adds=np.array([0.0, 0.0, np.inf], np.float32))
    cfg = prog.cfg
    with pytest.raises(wse.FloatingPointTrap) as caught:
        prog.run(trap_nan=True)
    cycle = cfg.vector_startup_cycles + cfg.datapath_latency + 2 * cfg.ramp_latency \
        + cfg.hop_latency + 2
    message = str(caught.value)
    assert "PE (1, 0)" in message and "element 2" in message and f"cycle {cycle}" in message


def test_trap_nan_in_a_data_task_on_the_wavelet_operand():
    prog = wse.Program(wse.WSE2.with_grid(rows=1, cols=2))
    c = prog.color("east")
    prog.route(c, rx="RAMP", tx="E", where=prog.pes(cols=0))
    prog.route(c, rx="W", tx="RAMP", where=prog.pes(cols=1))
    x = prog.buffer("x", (2,))
    data = np.zeros((1, 2, 2), np.float32)
    data[0, 0] = [1.0, np.inf]
    prog.load(x, data)
    sender = prog.role("send", where=prog.pes(cols=0))
    with sender.task("main", entry=True) as t:
        t.mov(prog.fabout(c, 2), x.view())
    receiver = prog.role("recv", where=prog.pes(cols=1))
    with receiver.data_task("on_wavelet", c) as t:
        t.scale(x.view(length=1), x.view(length=1), wse.WAVELET)   # 0 * inf on the 2nd
    prog.run()                                                     # no trap: completes
    with pytest.raises(wse.FloatingPointTrap, match=r"PE \(1, 0\).*task 'on_wavelet'"):
        prog.run(trap_nan=True)


def test_trap_nan_with_a_float16_destination():
    prog = wse.Program(wse.WSE2.with_grid(rows=1, cols=1))
    x = prog.buffer("x", (4,), "float16")
    prog.load(x, np.array([1.0, 60000.0, 2.0, 3.0], np.float16))
    role = prog.role("r")
    with role.task("main", entry=True) as t:
        t.scale(x.view(), x.view(), 2.0)            # 120000 overflows fp16 to inf
        t.sub(x.view(), x.view(), x.view())         # inf - inf = NaN
    with pytest.raises(wse.FloatingPointTrap, match="element 1"):
        prog.run(trap_nan=True)


# ----------------------------------------------------------------------------
# the FMAC's own loops
@pytest.mark.parametrize("stride", [1, 3])
@pytest.mark.parametrize("acc, mult", [("float32", "float32"), ("float32", "float16"),
                                       ("float16", "float16")])
def test_fmac_loops_agree_with_the_general_loop_and_numpy_bit_for_bit(acc, mult, stride):
    """The tile product's FMAC (acc = acc + b * s) has loops of its own for
    these dtypes; with NaN traps on the engine takes its general element loop.
    Both give NumPy's float32 a + b * s rounded once to the accumulator's dtype,
    to the bit: subnormals, signed zeros, overflow to inf included."""
    n = 41
    rng = np.random.default_rng(7)
    specials = np.array([0.0, -0.0, 1e-45, -3e-39, 6e-8, 65504.0, 3e38, -3e38], np.float32)
    a = as_dtype(np.concatenate([rng.standard_normal(n - 8) * 100, specials]), acc)
    b = as_dtype(np.concatenate([rng.standard_normal(n - 8), specials[::-1]]), mult)
    s = as_dtype([1.75], mult)
    results = []
    for trap in (False, True):
        prog = wse.Program(wse.WSE2.with_grid(rows=1, cols=1))
        c_buf = prog.buffer("c", (n * stride,), acc)
        b_buf = prog.buffer("b", (n * stride,), mult)
        s_buf = prog.buffer("s", (1,), mult)
        spread = np.zeros(n * stride, np.float32)
        spread[::stride] = a
        prog.load(c_buf, spread.astype(NP[acc]))
        spread[::stride] = b
        prog.load(b_buf, spread.astype(NP[mult]))
        prog.load(s_buf, s)
        with prog.role("r").task("main", entry=True) as t:
            c = c_buf.view(length=n, stride=stride)
            t.fmac(c, c, b_buf.view(length=n, stride=stride), s_buf.view(length=1))
        results.append(prog.run(trap_nan=trap).read(c_buf)[0, 0][::stride])
    with np.errstate(all="ignore"):
        expected = (a.astype(np.float32) + b.astype(np.float32) * s.astype(np.float32)[0]
                    ).astype(NP[acc])
    assert not np.isnan(expected).any()
    for got in results:
        np.testing.assert_array_equal(got.view(np.uint32 if acc == "float32" else np.uint16),
                                      expected.view(np.uint32 if acc == "float32" else np.uint16))
