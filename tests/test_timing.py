"""What a PE pays: instruction issue, vector start-up, datapath latency, task
start, tile products and software transcendentals (docs/engine.md, rules
18-23), each against the engine, and the zero-cost special case."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import wse
from wse import isa, testing, timing

CFG = wse.WSE2


def one_pe_run(emit, buffers, cfg=CFG, dtype="float32"):
    """Run `emit(task, bufs)` as the entry task of a 1 x 1 grid; returns (cycles, bufs, result)."""
    cfg = cfg.with_grid(1, 1)
    prog = wse.Program(cfg)
    bufs = {name: prog.buffer(name, (size,), dtype) for name, size in buffers.items()}
    rng = np.random.default_rng(0)
    for b in bufs.values():
        prog.load(b, rng.standard_normal(b.size).astype(np.float32))
    with prog.role("pe").task("main", entry=True) as t:
        emit(t, bufs)
    result = prog.run()
    return result.report.cycles, bufs, result


def test_an_empty_loop_of_1000_iterations_costs_at_least_1000_cycles():
    """set counter + test + 1000 branches, one cycle each: 1002."""
    def emit(t, b):
        with t.loop(1000):
            pass
    cycles, _, _ = one_pe_run(emit, {})
    assert cycles >= 1000
    assert cycles == 2 * CFG.scalar_op_cycles + 1000 * CFG.scalar_op_cycles


def test_256_single_element_adds_cost_more_than_one_256_element_add():
    def singles(t, b):
        for i in range(256):
            t.add(b["x"].view(i, 1), b["x"].view(i, 1), b["y"].view(i, 1))

    def whole(t, b):
        t.add(b["x"].view(), b["x"].view(), b["y"].view())
    many, _, _ = one_pe_run(singles, {"x": 256, "y": 256})
    one, _, _ = one_pe_run(whole, {"x": 256, "y": 256})
    assert one == timing.vector_cycles(256, "float32", CFG)
    assert many == 256 * timing.vector_cycles(1, "float32", CFG)
    assert many > one


@pytest.mark.parametrize("name,op", [("exp", isa.OP_EXP), ("recip", isa.OP_RECIP),
                                     ("rsqrt", isa.OP_RSQRT), ("tanh", isa.OP_TANH),
                                     ("sigmoid", isa.OP_SIGMOID)])
def test_a_transcendental_costs_its_software_sequence(name, op):
    """exp of 256 fp32 values: 9 passes, each with issue and start-up (wse.isa)."""
    x = {"x": 256}
    cost, _, _ = one_pe_run(lambda t, b: getattr(t, name)(b["x"].view(), b["x"].view()), x)
    add, _, _ = one_pe_run(lambda t, b: t.add(b["x"].view(), b["x"].view(), b["x"].view()), x)
    assert cost == timing.vector_cycles(256, "float32", CFG, op)
    assert cost > add * isa.SOFTWARE_SEQUENCE_PASSES[op] // 2
    assert cost > add


def test_the_idealised_pe_charges_one_pass_for_a_transcendental():
    zero = CFG.without_instruction_costs()
    x = {"x": 256}
    cost, _, _ = one_pe_run(lambda t, b: t.exp(b["x"].view(), b["x"].view()), x, cfg=zero)
    assert cost == 256 == timing.vector_cycles(256, "float32", zero, isa.OP_EXP)


def test_a_transcendental_on_a_fabric_operand_is_refused():
    prog = wse.Program(CFG.with_grid(1, 2))
    c = prog.color("c")
    x = prog.buffer("x", (4,))
    with prog.role("pe").task("main", entry=True) as t:
        with pytest.raises(wse.errors.ProgramError, match="exp works on memory operands"):
            t.exp(x.view(), prog.fabin(c, 4))


@settings(max_examples=25, deadline=None)
@given(m=st.integers(1, 9), k=st.integers(1, 9), n=st.integers(1, 9),
       dtype=st.sampled_from(["float32", "float16"]), transpose_b=st.booleans(),
       zero=st.booleans())
def test_matmul_is_a_loop_nest_whose_cycles_and_values_are_known(m, k, n, dtype,
                                                                 transpose_b, zero):
    """The engine counts exactly `timing.matmul_cycles`; with every instruction
    cost 0 that is a tile at peak SIMD rate, rounded up per FMAC."""
    cfg = CFG.without_instruction_costs() if zero else CFG
    A = np.random.default_rng(1).standard_normal((m, k)).astype(np.float32)
    B = np.random.default_rng(2).standard_normal((n, k) if transpose_b else (k, n))
    A, B = (v.astype(np.float16 if dtype == "float16" else np.float32) for v in (A, B))

    def emit(t, b):
        t.matmul(b["c"].view(), b["a"].view(), b["b"].view(), m, k, n, transpose_b=transpose_b)
    cfg1 = cfg.with_grid(1, 1)
    prog = wse.Program(cfg1)
    bufs = {name: prog.buffer(name, (size,), dtype)
            for name, size in (("c", m * n), ("a", m * k), ("b", k * n))}
    prog.load(bufs["a"], A.reshape(-1))
    prog.load(bufs["b"], B.reshape(-1))
    with prog.role("pe").task("main", entry=True) as t:
        emit(t, bufs)
    result = prog.run()
    assert result.report.cycles == timing.matmul_cycles(m, k, n, dtype, cfg, transpose_b)
    loop = timing.matmul_loop(m, k, n, transpose_b, cfg=cfg, dtype=dtype)
    if zero:
        assert result.report.cycles == loop.outer * loop.inner * timing.simd_cycles(
            loop.length, dtype, cfg)
    ref = A.astype(np.float64) @ (B.T if transpose_b else B).astype(np.float64)
    got = result.read(bufs["c"]).reshape(m, n).astype(np.float64)
    scale = np.abs(A.astype(np.float64)) @ np.abs((B.T if transpose_b else B).astype(np.float64))
    testing.assert_close(got, ref, dtype, terms=k, scale=scale + 1.0)


def _two_pe_forward(cfg):
    """PE 0 streams 1 wavelet to PE 1 (one hop); PE 1 adds its own and forwards
    to PE 2, which stores it."""
    cfg = cfg.with_grid(1, 3)
    prog = wse.Program(cfg)
    a, b = prog.color("a"), prog.color("b")
    prog.route(a, rx="RAMP", tx="E", where=prog.pes(cols=0))
    prog.route(a, rx="W", tx="RAMP", where=prog.pes(cols=1))
    prog.route(b, rx="RAMP", tx="E", where=prog.pes(cols=1))
    prog.route(b, rx="W", tx="RAMP", where=prog.pes(cols=2))
    x = prog.buffer("x", (1,))
    with prog.role("first", where=prog.pes(cols=0)).task("main", entry=True) as t:
        t.mov(prog.fabout(a, 1), x.view())
    with prog.role("mid", where=prog.pes(cols=1)).task("main", entry=True) as t:
        t.add(prog.fabout(b, 1), prog.fabin(a, 1), x.view())
    with prog.role("last", where=prog.pes(cols=2)).task("main", entry=True) as t:
        t.mov(x.view(), prog.fabin(b, 1))
    return prog.run().report.cycles


def test_a_forwarded_element_pays_the_datapath_once_per_pe_it_leaves():
    """Each PE that puts the element on its ramp adds datapath_latency; the
    first also its vector start-up: startup + 2 (2 T_R + H + datapath) + 1."""
    T_R, H = CFG.ramp_latency, CFG.hop_latency
    cycles = _two_pe_forward(CFG)
    assert cycles == CFG.vector_startup_cycles + 2 * (2 * T_R + H + CFG.datapath_latency) + 1
    zero = CFG.without_instruction_costs()
    assert _two_pe_forward(zero) == 2 * (2 * T_R + H) + 1


def test_a_data_task_starts_after_the_activation_latency():
    """PE 0 sends one wavelet at startup; PE 1's data task fires when it is
    ready (2 T_R + H after it left the datapath), starts task_start_cycles
    later and issues one scalar add (startup + 1 element)."""
    cfg = CFG.with_grid(1, 2)
    prog = wse.Program(cfg)
    c = prog.color("c")
    prog.route(c, rx="RAMP", tx="E", where=prog.pes(cols=0))
    prog.route(c, rx="W", tx="RAMP", where=prog.pes(cols=1))
    x = prog.buffer("x", (1,))
    with prog.role("send", where=prog.pes(cols=0)).task("main", entry=True) as t:
        t.mov(prog.fabout(c, 1), x.view())
    with prog.role("recv", where=prog.pes(cols=1)).data_task("on", c) as t:
        t.adds(x.view(), x.view(), wse.program.WAVELET)
    cycles = prog.run().report.cycles
    arrive = cfg.vector_startup_cycles + cfg.datapath_latency + 2 * cfg.ramp_latency \
        + cfg.hop_latency
    assert cycles == arrive + cfg.task_start_cycles + timing.vector_cycles(1, "float32", cfg)


def test_an_async_operation_takes_its_issue_cycle_from_the_main_thread():
    """An async copy holds the main thread for its issue cycle: what follows
    issues c later (a synchronous copy after it waits longer, for the shared
    datapath, so only control instructions after it show the issue cycle)."""
    def emit(t, b):
        t.mov(b["y"].view(), b["x"].view(), async_=True)
        t.mov(b["z"].view(), b["x"].view())
    cycles, _, _ = one_pe_run(emit, {"x": 64, "y": 64, "z": 64})
    per = timing.simd_cycles(64, "float32", CFG)
    # both share the datapath: the second starts when the first is done
    assert cycles == CFG.vector_startup_cycles + 2 * per

    # the datapath hides the issue cycle above; a loop of control
    # instructions after the async copy shows it: c, then 2c + 100c
    def then_loop(t, b):
        t.mov(b["y"].view(), b["x"].view(), async_=True)
        with t.loop(100):
            pass
    cycles, _, _ = one_pe_run(then_loop, {"x": 64, "y": 64})
    c = CFG.scalar_op_cycles
    assert cycles == c + 2 * c + 100 * c > timing.vector_cycles(64, "float32", CFG)
