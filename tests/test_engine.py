"""The engine's rules, one test (or more) per rule in docs/engine.md.

Cycle expectations are derived in each docstring from the rules:
T_R = ramp latency, H = hop latency, B = wavelets in a stream, S = vector
start-up (an instruction issued at t moves its first element at t + S),
D = datapath latency (an element put on the ramp at t is at the router at
t + D + T_R), c = issue cycles of an instruction.
"""
import json

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import wse
from wse import routes, testing
from wse.engine import float_to_half_bits


def line_stream(cols: int, length: int, src: int = 0, dst: int | None = None,
                cfg: wse.WaferConfig | None = None, **run_options):
    """PE src streams `length` wavelets to PE dst along row 0 of a 1 x cols grid."""
    dst = cols - 1 if dst is None else dst
    cfg = cfg or wse.WSE2.with_grid(rows=1, cols=cols)
    prog = wse.Program(cfg)
    plan = routes.transfers(prog, "x", [(src, dst)])
    color = plan.colors[0]
    data = prog.buffer("data", (length,))
    if src == dst:      # a PE streaming to itself through its router
        both = prog.role("loop", where=prog.pes(cols=src))
        with both.task("main", entry=True) as t:
            t.mov(prog.fabout(color, length), data.view(), async_=True)
            t.mov(data.view(), prog.fabin(color, length))
    else:
        sender = prog.role("sender", where=prog.pes(cols=src))
        with sender.task("main", entry=True) as t:
            t.mov(prog.fabout(color, length), data.view())
        receiver = prog.role("receiver", where=prog.pes(cols=dst))
        with receiver.task("main", entry=True) as t:
            t.mov(data.view(), prog.fabin(color, length))
    values = np.zeros((1, cols, length), np.float32)
    values[0, src] = np.arange(1, length + 1)
    prog.load(data, values)
    result = prog.run(record_links=True, record_deliveries=True, **run_options)
    return result, data


@pytest.mark.nojit
def test_one_wavelet_latency_is_hops_plus_two_ramps():
    """A send issued at cycle 0 moves its wavelet at S; it is at its router
    D + T_R later, crosses h links at H each and reaches the far PE's ramp
    T_R later: ready at S + D + 2*T_R + h*H. The receive consumes it that
    cycle, so the run ends one cycle later."""
    cfg = wse.WSE2.with_grid(rows=1, cols=5)
    result, _ = line_stream(5, 1, cfg=cfg)
    (ready, pe, _, _), = result.report.delivery_events.tolist()
    h = 4
    assert pe == 4
    assert ready == cfg.vector_startup_cycles + cfg.datapath_latency \
        + 2 * cfg.ramp_latency + h * cfg.hop_latency
    assert result.report.cycles == ready + 1


@settings(max_examples=25, deadline=None)
@given(hops=st.integers(0, 9), hop_latency=st.integers(1, 3), ramp_latency=st.integers(1, 3))
def test_latency_follows_the_configured_constants(hops, hop_latency, ramp_latency):
    """Same rule for any latencies: ready at S + D + 2*T_R + h*H (queues deep
    enough that credits never limit a single wavelet)."""
    cfg = wse.WSE2.with_grid(rows=1, cols=hops + 1).replace(
        hop_latency=hop_latency, ramp_latency=ramp_latency)
    result, _ = line_stream(hops + 1, 1, cfg=cfg)
    (ready, _, _, _), = result.report.delivery_events.tolist()
    assert ready == cfg.vector_startup_cycles + cfg.datapath_latency \
        + 2 * ramp_latency + hops * hop_latency


def test_a_long_stream_sustains_one_wavelet_per_cycle():
    """B wavelets over h hops: the first arrives at S + D + 2*T_R + h*H, then
    one per cycle, so the run takes S + D + 2*T_R + h*H + B cycles and each
    link carries its B wavelets in B consecutive cycles."""
    B, cols = 500, 6
    result, data = line_stream(cols, B)
    report = result.report
    cfg = wse.WSE2
    assert report.cycles == cfg.vector_startup_cycles + cfg.datapath_latency \
        + 2 * cfg.ramp_latency + (cols - 1) * cfg.hop_latency + B
    events = report.link_events
    for pe in range(cols - 1):
        cycles = np.sort(events[events[:, 1] == pe, 0])
        assert len(cycles) == B
        assert np.all(np.diff(cycles) == 1)
    np.testing.assert_array_equal(result.read(data)[0, -1], np.arange(1, B + 1))


def test_queue_depth_below_the_credit_round_trip_halves_throughput():
    """Credits freed in cycle t are seen at t+1, so a queue slot is busy for
    H + 1 cycles per wavelet (T_R + 1 at the ramps). With depth 1 every link
    carries a wavelet only every other cycle... and at the ramps every third."""
    B = 60
    cfg = wse.WSE2.with_grid(rows=1, cols=3).replace(queue_depth=1, input_queue_depth=1)
    result, data = line_stream(3, B, cfg=cfg)
    np.testing.assert_array_equal(result.read(data)[0, -1], np.arange(1, B + 1))
    # the ramps (occupancy T_R + 1 = 3 cycles) are the bottleneck
    assert result.report.cycles >= 3 * B


def test_backpressure_stalls_the_sender_and_drops_nothing():
    """The receiver first computes for S + 2000 cycles (a 2000-element fp32
    op); the sender fills the queues on its path and then stalls. Every
    wavelet still arrives, in order, and the sender's stall shows in its
    report. The receive issues when the op is done and moves its first
    element S later: S + 2000 + S + B."""
    B = 200
    cfg = wse.WSE2.with_grid(rows=1, cols=4)
    prog = wse.Program(cfg)
    plan = routes.transfers(prog, "x", [(0, 3)])
    c = plan.colors[0]
    data = prog.buffer("data", (B,))
    busy = prog.buffer("busy", (2000,))
    sender = prog.role("sender", where=prog.pes(cols=0))
    with sender.task("main", entry=True) as t:
        t.mov(prog.fabout(c, B), data.view())
    receiver = prog.role("receiver", where=prog.pes(cols=3))
    with receiver.task("main", entry=True) as t:
        t.scale(busy.view(), busy.view(), 2.0)
        t.mov(data.view(), prog.fabin(c, B))
    values = np.zeros((1, 4, B), np.float32)
    values[0, 0] = np.arange(B)
    prog.load(data, values)
    result = prog.run(record_deliveries=True)
    np.testing.assert_array_equal(result.read(data)[0, 3], np.arange(B))
    report = result.report
    assert report.stall_cycles[0, 0] > 1500
    # the stream resumes at one wavelet per cycle once the receiver listens
    assert report.cycles == 2 * cfg.vector_startup_cycles + 2000 + B
    assert report.ramp_in[0, 3] == B and report.ramp_out[0, 0] == B


def test_two_colors_share_a_link_fairly():
    """PE 0 streams B wavelets on each of two colors to PE 2 (two async sends):
    the slots take turns at PE 0's ramp, the routers serve the colors round
    robin, so the link 1 -> 2 carries them alternately, one wavelet per cycle,
    and the run takes 2B cycles plus the latency of one path (the second send
    issues c after the first and starts S later)."""
    B = 100
    cfg = wse.WSE2.with_grid(rows=1, cols=3)
    prog = wse.Program(cfg)
    a, b = prog.color("a"), prog.color("b")
    for c in (a, b):
        prog.route(c, rx="RAMP", tx="E", where=prog.pes(cols=0))
        prog.route(c, rx="W", tx="E", where=prog.pes(cols=1))
        prog.route(c, rx="W", tx="RAMP", where=prog.pes(cols=2))
    xa = prog.buffer("xa", (B,))
    xb = prog.buffer("xb", (B,))
    src = prog.role("src", where=prog.pes(cols=0))
    with src.task("main", entry=True) as t:
        t.mov(prog.fabout(a, B), xa.view(), async_=True)
        t.mov(prog.fabout(b, B), xb.view(), async_=True)
        t.wait()
    dst = prog.role("dst", where=prog.pes(cols=2))
    with dst.task("main", entry=True) as t:
        t.mov(xa.view(), prog.fabin(a, B), async_=True)
        t.mov(xb.view(), prog.fabin(b, B), async_=True)
        t.wait()
    prog.load(xa, np.where(np.arange(3)[None, :, None] == 0, 1.0, 0.0) * np.ones((1, 3, B)))
    prog.load(xb, np.where(np.arange(3)[None, :, None] == 0, 2.0, 0.0) * np.ones((1, 3, B)))
    result = prog.run(record_links=True)
    events = result.report.link_events
    keys = events[:, 0] * 100 + events[:, 1] * 10 + events[:, 2]
    assert len(np.unique(keys)) == len(keys), "a link carried two wavelets in one cycle"
    link = events[events[:, 1] == 1]
    assert len(link) == 2 * B
    colors_in_order = link[np.argsort(link[:, 0]), 3]
    # alternating: no color waits more than one turn
    assert np.all(colors_in_order[1:] != colors_in_order[:-1])
    assert np.all(result.read(xa)[0, 2] == 1.0) and np.all(result.read(xb)[0, 2] == 2.0)
    # the source ramp serialises both streams: 2B wavelets at one per cycle
    path = cfg.vector_startup_cycles + cfg.datapath_latency + 2 * cfg.ramp_latency \
        + 2 * cfg.hop_latency
    assert 2 * B <= result.report.cycles <= 2 * B + path + cfg.scalar_op_cycles + 2


def test_multicast_delivers_every_wavelet_exactly_once_to_each_destination():
    """A 2-D flood from the corner: every wavelet injected by the root is
    delivered once to each of the other rows*cols - 1 PEs, none is lost or
    duplicated, and the hop count is B per link of the spanning tree."""
    rows, cols, B = 4, 5, 30
    cfg = wse.WSE2.with_grid(rows=rows, cols=cols)
    from benchmarks.engine_throughput import multicast_program
    prog = multicast_program(cfg, B)
    result = prog.run(record_deliveries=True, record_links=True)
    deliveries = result.report.delivery_events
    ids = deliveries[:, 3]
    assert set(ids.tolist()) == set(range(B))
    per_pe = {}
    for _, pe, _, wid in deliveries.tolist():
        per_pe.setdefault(pe, []).append(wid)
    assert set(per_pe) == set(range(1, rows * cols))
    for pe, got in per_pe.items():
        assert sorted(got) == list(range(B)), f"PE {pe} got {sorted(got)}"
    tree_links = (cols - 1) + cols * (rows - 1)
    assert result.report.wavelet_hops == B * tree_links
    assert result.report.ramp_out.sum() == B
    # and every wavelet followed its route, one per link per cycle
    assert {"links", "deliveries", "paths"} <= set(testing.check_report(result))


def test_identical_runs_give_identical_cycles_bits_and_traffic():
    from kernels.collectives import reduce
    rng = np.random.default_rng(5)
    cfg = wse.WSE2.with_grid(rows=3, cols=7)
    x = rng.standard_normal((3, 7, 33)).astype(np.float32)
    y1, r1 = reduce(x, cfg, along="x", root=3)
    y2, r2 = reduce(x, cfg, along="x", root=3)
    assert r1.cycles == r2.cycles
    assert y1.tobytes() == y2.tobytes()
    np.testing.assert_array_equal(r1.link_wavelets, r2.link_wavelets)
    np.testing.assert_array_equal(r1.stall_cycles, r2.stall_cycles)


@pytest.mark.nojit
def test_a_two_pe_wait_cycle_is_a_deadlock():
    """Each PE first waits to receive from the other, then sends: nothing can move."""
    cfg = wse.WSE2.with_grid(rows=1, cols=2)
    prog = wse.Program(cfg)
    plan = routes.transfers(prog, "x", [(0, 1), (1, 0)])
    send = prog.color_param_indices("send", plan.send_color)
    recv = prog.color_param_indices("recv", plan.recv_color)
    buf = prog.buffer("buf", (4,))
    both = prog.role("both")
    with both.task("main", entry=True) as t:
        t.mov(buf.view(), prog.fabin(recv, 4))
        t.mov(prog.fabout(send, 4), buf.view())
    with pytest.raises(wse.FabricDeadlockError) as err:
        prog.run()
    text = str(err.value)
    assert "PE (0, 0)" in text and "PE (1, 0)" in text and "receive on color" in text


@pytest.mark.nojit
def test_a_wavelet_from_a_port_outside_rx_is_a_route_error():
    cfg = wse.WSE2.with_grid(rows=1, cols=3)
    prog = wse.Program(cfg)
    prog.color("first")          # so that the route looked up is color 1's
    c = prog.color("c")
    prog.route(c, rx="RAMP", tx="E", where=prog.pes(cols=0))
    prog.route(c, rx="N", tx="RAMP", where=prog.pes(cols=1))     # expects the wrong side
    buf = prog.buffer("buf", (2,))
    src = prog.role("src", where=prog.pes(cols=0))
    with src.task("main", entry=True) as t:
        t.mov(prog.fabout(c, 2), buf.view())
    with pytest.raises(wse.RouteError) as err:
        prog.run()
    text = str(err.value)
    # sent at S, at its router D + T_R later, one hop on: S + D + T_R + H
    arrives = cfg.vector_startup_cycles + cfg.datapath_latency + cfg.ramp_latency \
        + cfg.hop_latency
    assert "PE (1, 0)" in text and "port W" in text and f"cycle {arrives}" in text \
        and "rx={N}" in text


@pytest.mark.nojit
def test_a_send_into_a_route_that_does_not_take_the_ramp_names_the_pe_and_color():
    """Color index 1 on PE 1 of 3: the error names that queue's PE, color and
    route, not a neighbour's or another color's (queues are indexed by color,
    then PE)."""
    cfg = wse.WSE2.with_grid(rows=1, cols=3)
    prog = wse.Program(cfg)
    prog.color("first")
    c = prog.color("second")
    prog.route(c, rx="W", tx="RAMP", where=prog.pes(cols=1))
    buf = prog.buffer("buf", (2,))
    with prog.role("src", where=prog.pes(cols=1)).task("main", entry=True) as t:
        t.mov(prog.fabout(c, 2), buf.view())
    with pytest.raises(wse.RouteError) as err:
        prog.run()
    text = str(err.value)
    # the element leaves the datapath D after its start S and reaches the router T_R later
    arrives = cfg.vector_startup_cycles + cfg.datapath_latency + cfg.ramp_latency
    assert "PE (1, 0)" in text and "color 1 (second)" in text and "port RAMP" in text \
        and f"cycle {arrives}" in text and "rx={W}" in text, text


@pytest.mark.nojit
def test_routes_that_leave_the_grid_are_rejected_when_built():
    prog = wse.Program(wse.WSE2.with_grid(rows=2, cols=2))
    c = prog.color("c")
    with pytest.raises(wse.RouteError, match=r"PE \(1, 0\).*port E"):
        prog.route(c, rx="RAMP", tx="E", where=prog.pes(rows=0))


@pytest.mark.nojit
def test_an_oversized_buffer_is_an_sram_overflow_naming_pe_buffer_and_bytes():
    prog = wse.Program(wse.WSE2.with_grid(rows=2, cols=2))
    prog.buffer("a", (8000,))                    # 32000 bytes
    with pytest.raises(wse.SramOverflowError) as err:
        prog.buffer("b", (5000,), where=prog.pes(rows=1, cols=1))   # 20000 more
    text = str(err.value)
    assert "PE (1, 1)" in text and "'b'" in text and "20000 bytes" in text
    assert "17152 of 49152" in text


def test_memory_ops_cost_elements_over_simd_width():
    """fp32: 1 element per cycle; fp16: 4 per cycle (WSE-2), after the
    start-up S; a tile product is the loop nest wse.timing.matmul_cycles
    counts. Two async memory ops share the datapath, so they take the sum of
    their costs: the second issues c after the first, its start-up is over
    before the datapath frees."""
    cfg = wse.WSE2.with_grid(rows=1, cols=1)
    S = cfg.vector_startup_cycles
    cases = [("float32", 1000, S + 1000), ("float16", 1000, S + 250),
             ("float16", 1001, S + 251)]
    for dtype, n, expected in cases:
        prog = wse.Program(cfg)
        a = prog.buffer("a", (n,), dtype)
        role = prog.role("r")
        with role.task("main", entry=True) as t:
            t.add(a.view(), a.view(), a.view())
        assert prog.run().report.cycles == expected, dtype
    prog = wse.Program(cfg)
    A = prog.buffer("A", (8 * 16,), "float16")
    Bm = prog.buffer("B", (16 * 4,), "float16")
    C = prog.buffer("C", (8 * 4,), "float32")
    role = prog.role("r")
    with role.task("main", entry=True) as t:
        t.matmul(C.view(), A.view(), Bm.view(), 8, 16, 4)
    assert prog.run().report.cycles == wse.timing.matmul_cycles(8, 16, 4, "float16", cfg)
    prog = wse.Program(cfg)
    a = prog.buffer("a", (300,))
    b = prog.buffer("b", (200,))
    role = prog.role("r")
    with role.task("main", entry=True) as t:
        t.scale(a.view(), a.view(), 2.0, async_=True)
        t.scale(b.view(), b.view(), 2.0, async_=True)
        t.wait()
    assert prog.run().report.cycles == S + 500 + cfg.scalar_op_cycles


def test_long_computations_are_skipped_not_stepped():
    """A 64x64x64 fp32 matmul costs its loop nest's cycles (over 262144) in
    about one engine step per instruction, not one per cycle."""
    cfg = wse.WSE2.with_grid(rows=1, cols=1)
    prog = wse.Program(cfg)
    A = prog.buffer("A", (64 * 64,))
    Bm = prog.buffer("B", (64 * 64,))
    C = prog.buffer("C", (64 * 64,))
    role = prog.role("r")
    with role.task("main", entry=True) as t:
        t.matmul(C.view(), A.view(), Bm.view(), 64, 64, 64)
    rng = np.random.default_rng(0)
    a = rng.standard_normal((64, 64)).astype(np.float32)
    b = rng.standard_normal((64, 64)).astype(np.float32)
    prog.load(A, a.reshape(-1))
    prog.load(Bm, b.reshape(-1))
    result = prog.run()
    assert result.report.cycles == wse.timing.matmul_cycles(64, 64, 64, "float32", cfg)
    assert result.report.cycles > 64 ** 3
    instructions = wse.timing.matmul_loop(64, 64, 64, cfg=cfg).instructions()
    assert result.report.pe_steps <= 2 * instructions
    np.testing.assert_allclose(result.read(C).reshape(64, 64), a.astype(np.float64) @ b,
                               rtol=1e-4, atol=1e-4)


@pytest.mark.nojit
def test_max_cycles_always_applies():
    cfg = wse.WSE2.with_grid(rows=1, cols=1)
    prog = wse.Program(cfg)
    a = prog.buffer("a", (4,))
    role = prog.role("r")
    with role.task("main", entry=True) as t:
        with t.loop(1_000_000):
            t.adds(a.view(), a.view(), 1.0)
    with pytest.raises(wse.CycleLimitError, match="max_cycles = 500"):
        prog.run(max_cycles=500)


def test_an_infinite_loop_of_free_instructions_still_advances_time():
    """Scalar instructions cost 0 cycles, but at most instructions_per_cycle
    retire per cycle, so a spinning PE cannot hang the emulator."""
    cfg = wse.WSE2.with_grid(rows=1, cols=1)
    prog = wse.Program(cfg)
    role = prog.role("r")
    with role.task("main", entry=True) as t:
        r = t.reg()
        with t.loop(10 ** 9):
            t.addi(r, 1)
    with pytest.raises(wse.CycleLimitError):
        prog.run(max_cycles=1000)


def test_data_tasks_fire_per_wavelet_and_local_tasks_on_completion():
    """The sink's data task adds each arriving wavelet into acc[0]; the
    source's async send activates a local task when it completes, which
    writes a marker."""
    B = 10
    cfg = wse.WSE2.with_grid(rows=1, cols=2)
    prog = wse.Program(cfg)
    c = prog.color("c")
    prog.route(c, rx="RAMP", tx="E", where=prog.pes(cols=0))
    prog.route(c, rx="W", tx="RAMP", where=prog.pes(cols=1))
    data = prog.buffer("data", (B,))
    acc = prog.buffer("acc", (1,))
    src = prog.role("src", where=prog.pes(cols=0))
    done = src.task("done")
    with done:
        done.fill(acc.view(), 42.0)
    main = src.task("main", entry=True)
    main.mov(prog.fabout(c, B), data.view(), async_=True, on_done="done")
    sink = prog.role("sink", where=prog.pes(cols=1))
    with sink.data_task("recv", c) as t:
        t.adds(acc.view(), acc.view(), wse.WAVELET)
    values = np.zeros((1, 2, B), np.float32)
    values[0, 0] = np.arange(B)
    prog.load(data, values)
    result = prog.run()
    got = result.read(acc)
    assert got[0, 0, 0] == 42.0
    assert got[0, 1, 0] == sum(range(B))


def test_chrome_trace_has_a_slice_per_task_run(tmp_path):
    cfg = wse.WSE2.with_grid(rows=1, cols=4)
    result, _ = line_stream(4, 8, cfg=cfg, trace=True)
    path = tmp_path / "trace.json"
    n = result.report.to_chrome_trace(path)
    trace = json.loads(path.read_text())
    slices = [e for e in trace["traceEvents"] if e["ph"] == "X"]
    assert n == len(slices) == 2
    assert {s["name"] for s in slices} == {"sender.main", "receiver.main"}
    recv = next(s for s in slices if s["name"] == "receiver.main")
    assert recv["ts"] == 0 and recv["dur"] == result.report.cycles


def test_report_is_json_ready_and_counts_links_by_port():
    result, _ = line_stream(4, 8)
    report = result.report
    d = json.loads(json.dumps(report.to_dict()))
    assert d["cycles"] == report.cycles
    assert report.link_wavelets.shape == (1, 4, 4)
    np.testing.assert_array_equal(report.link_wavelets[0, :, 1], [8, 8, 8, 0])   # East
    assert report.link_wavelets[..., [0, 2, 3]].sum() == 0
    assert report.wavelet_hops == 24
    assert report.sram_peak_bytes.max() == 32
    assert report.energy_joules > 0


@pytest.mark.nojit
def test_fp16_rounding_matches_numpy_on_every_half_and_on_random_floats():
    halves = np.arange(65536, dtype=np.uint16).view(np.float16)
    finite = halves[np.isfinite(halves)]
    for h in finite[:: 97 if _no_jit() else 1]:
        assert float_to_half_bits(np.float32(h)) == h.view(np.uint16)
    rng = np.random.default_rng(1)
    floats = np.concatenate([rng.standard_normal(2000) * 10.0 ** rng.integers(-9, 6, 2000),
                             [65504.0, 65520.0, 65519.99, 6e-8, 2.98e-8, 2.99e-8, -0.0]])
    floats = floats.astype(np.float32)
    with np.errstate(over="ignore"):          # values past 65504 round to inf, as intended
        expected = floats.astype(np.float16).view(np.uint16)
    for f, bits in list(zip(floats, expected))[:: 50 if _no_jit() else 1]:
        assert float_to_half_bits(f) == bits, f


def _no_jit() -> bool:
    import os
    return os.environ.get("NUMBA_DISABLE_JIT") == "1"


@pytest.mark.skipif(_no_jit(), reason="counts compiled specialisations")
def test_every_program_runs_on_one_compiled_engine():
    """The engine is compiled once for each tuple of argument types it meets,
    and an array's memory layout is part of its type (a cold compile takes
    minutes): programs with one task and with several, both engines, traced
    or not, all lower to the same types."""
    from wse import engine
    def one_task():
        prog = wse.Program(wse.WSE2.with_grid(rows=1, cols=1))
        out = prog.buffer("out", (4,))
        with prog.role("only").task("main", entry=True) as t:
            t.fill(out.view(), 3.0)
        assert (prog.run().read(out) == 3.0).all()
    def three_tasks():
        test_data_tasks_fire_per_wavelet_and_local_tasks_on_completion()
    for run in (one_task, three_tasks):
        for options in ({"engine": "wavelet"}, {"engine": "stream"}, {"trace": True}):
            with wse.run_options(**options):
                run()
    assert len(engine.run.signatures) == 1, engine.run.signatures


@pytest.mark.nojit
def test_program_errors_name_the_pe_and_instruction():
    prog = wse.Program(wse.WSE2.with_grid(rows=1, cols=2))
    a = prog.buffer("a", (4,))
    role = prog.role("r")
    with role.task("main", entry=True) as t:
        r = t.reg()
        t.set(r, 3)
        t.mov(a.view(offset=r * 2, length=2), a.view(length=2))   # elements 6..7 of 4
    with pytest.raises(wse.ProgramError, match=r"PE \(0, 0\).*role 'r' task 'main'.*'a'"):
        prog.run()



def _status(prog) -> np.ndarray:
    """Run `prog` through lowering and the engine directly: the counters, status included."""
    from wse import engine, lowering
    static, ncolors = prog.compile()
    static = static._replace(settings=lowering.settings(prog.cfg, ncolors,
                                                        wse.program.RUN_DEFAULTS))
    state = lowering.new_state(static, prog._arena.copy(), ncolors, prog.cfg, 0)
    engine.run(static, state)
    return state.counters


@pytest.mark.nojit
def test_a_failure_carries_kind_instruction_buffer_and_element_in_fields_of_their_own():
    from wse import engine, isa
    prog = wse.Program(wse.WSE2.with_grid(rows=1, cols=2))
    prog.buffer("pad", (8,))
    a = prog.buffer("a", (4,))
    role = prog.role("r")
    with role.task("main", entry=True) as t:
        r = t.reg()
        t.set(r, 3)                                                 # instruction 0
        t.mov(a.view(offset=r * 2, length=2), a.view(length=2))   # 1: elements 6..7 of 4
    st = _status(prog)
    assert (st[engine.ST_CODE], st[engine.ST_KIND]) == (isa.STATUS_PROGRAM, isa.PROG_BOUNDS)
    assert (st[engine.ST_PE], st[engine.ST_INSTR], st[engine.ST_BUF], st[engine.ST_ELEMENT]) \
        == (0, 1, a.id, 6)


@pytest.mark.nojit
def test_wavelets_nobody_consumes_are_a_leftover_deadlock_with_their_count():
    from wse import engine, isa
    prog = wse.Program(wse.WSE2.with_grid(rows=1, cols=2))
    c = prog.color("c")
    prog.route(c, rx="RAMP", tx="E", where=prog.pes(cols=0))
    prog.route(c, rx="W", tx="RAMP", where=prog.pes(cols=1))
    x = prog.buffer("x", (2,))
    with prog.role("sender", where=prog.pes(cols=0)).task("main", entry=True) as t:
        t.mov(prog.fabout(c, 2), x.view())
    st = _status(prog)
    assert (st[engine.ST_CODE], st[engine.ST_KIND]) == (isa.STATUS_DEADLOCK,
                                                         isa.DEADLOCK_LEFTOVER)
    assert (st[engine.ST_PE], st[engine.ST_COLOR], st[engine.ST_COUNT]) == (1, c.index, 2)
    with pytest.raises(wse.FabricDeadlockError, match=r"PE \(1, 0\), color \d+ \(c\): 2 wavel"):
        prog.run()

def test_run_options_reach_the_runs_inside_a_kernel(tmp_path):
    """A kernel built of several runs is traced whole: phases follow each other."""
    from kernels.collectives import allreduce
    cfg = wse.WSE2.with_grid(rows=2, cols=3)
    x = np.ones((2, 3, 4), np.float32)
    with wse.run_options(trace=True):
        _, report = allreduce(x, cfg, along="x", algorithm="chain")
    assert report.task_events is not None and len(report.task_events) > 0
    assert report.task_events[:, 3].max() <= report.cycles
    assert report.to_chrome_trace(tmp_path / "t.json") == len(report.task_events)
    _, plain = allreduce(x, cfg, along="x", algorithm="chain")
    assert plain.task_events is None
    with pytest.raises(wse.ConfigError, match="unknown run options"):
        with wse.run_options(colour=True):
            pass


def _two_senders_one_color(B, advance=True):
    """PEs 1 and 2 stream B wavelets each to PE 0 on one color. PE 1's
    router takes its own ramp first and, once PE 1's stream is in, PE 2's."""
    cfg = wse.WSE2.with_grid(rows=1, cols=3)
    prog = wse.Program(cfg)
    c = prog.color("c")
    prog.route(c, rx="E", tx="RAMP", where=prog.pes(cols=0))
    prog.route(c, rx="RAMP", tx="W", where=prog.pes(cols=1), switch=("E", "W"))
    prog.route(c, rx="RAMP", tx="W", where=prog.pes(cols=2))
    x = prog.buffer("x", (2 * B,))
    with prog.role("near", where=prog.pes(cols=1)).task("main", entry=True) as t:
        t.mov(prog.fabout(c, B, advance_switch=advance), x.view(0, B))
    with prog.role("far", where=prog.pes(cols=2)).task("main", entry=True) as t:
        t.mov(prog.fabout(c, B), x.view(0, B))
    with prog.role("root", where=prog.pes(cols=0)).task("main", entry=True) as t:
        t.mov(x.view(), prog.fabin(c, 2 * B))
    values = np.zeros((1, 3, 2 * B), np.float32)
    values[0, 1, :B] = np.arange(B) + 100
    values[0, 2, :B] = np.arange(B) + 200
    prog.load(x, values)
    return prog, x


def test_a_switch_orders_two_senders_on_one_color():
    """The far PE's stream waits at its router until the near PE's is in, then
    follows it without a gap: PE 0 gets 100.., then 200.., in
    S + D + 2 T_R + H + 2B cycles."""
    B = 20
    prog, x = _two_senders_one_color(B)
    result = prog.run()
    np.testing.assert_array_equal(result.read(x)[0, 0],
                                  np.concatenate([np.arange(B) + 100, np.arange(B) + 200]))
    cfg = prog.cfg
    assert result.report.cycles == cfg.vector_startup_cycles + cfg.datapath_latency \
        + 2 * cfg.ramp_latency + cfg.hop_latency + 2 * B
    assert result.report.stall_cycles[0, 2] > 0          # the far PE waited for the switch


def test_a_stream_for_a_switch_that_never_moves_deadlocks_and_a_stray_port_is_a_route_error():
    prog, _ = _two_senders_one_color(4, advance=False)
    with pytest.raises(wse.FabricDeadlockError):
        prog.run(deadlock_window=200)
    cfg = wse.WSE2.with_grid(rows=1, cols=3)
    prog = wse.Program(cfg)
    c = prog.color("c")
    prog.route(c, rx="RAMP", tx="E", where=prog.pes(cols=0))
    prog.route(c, rx="N", tx="RAMP", where=prog.pes(cols=1), switch=("S", "RAMP"))
    buf = prog.buffer("buf", (2,))
    with prog.role("src", where=prog.pes(cols=0)).task("main", entry=True) as t:
        t.mov(prog.fabout(c, 2), buf.view())
    with pytest.raises(wse.RouteError, match=r"rx=\{N\} \(rx=\{S\} in its switch's other position\)"):
        prog.run()


def test_a_wrapping_view_adds_k_vectors_into_one():
    """add over 3 x 4 elements with wrap=4: acc[i mod 4] += stream[i]; a
    memory operand wraps the same way."""
    cfg = wse.WSE2.with_grid(rows=1, cols=2)
    prog = wse.Program(cfg)
    c = prog.color("c")
    prog.route(c, rx="RAMP", tx="E", where=prog.pes(cols=0))
    prog.route(c, rx="W", tx="RAMP", where=prog.pes(cols=1))
    src = prog.buffer("src", (12,))
    acc = prog.buffer("acc", (4,))
    with prog.role("send", where=prog.pes(cols=0)).task("main", entry=True) as t:
        t.mov(prog.fabout(c, 12), src.view())
        t.add(acc.view(0, 12, wrap=4), src.view(), acc.view(0, 12, wrap=4))
    with prog.role("fold", where=prog.pes(cols=1)).task("main", entry=True) as t:
        t.add(acc.view(0, 12, wrap=4), prog.fabin(c, 12), acc.view(0, 12, wrap=4))
    data = np.arange(12, dtype=np.float32)
    prog.load(src, np.broadcast_to(data, (1, 2, 12)))
    result = prog.run()
    expected = data.reshape(3, 4).sum(axis=0)
    np.testing.assert_array_equal(result.read(acc)[0, 1], expected)
    np.testing.assert_array_equal(result.read(acc)[0, 0], expected)
    with pytest.raises(wse.errors.ProgramError, match="wrap must be >= 0"):
        acc.view(0, 4, wrap=-1)
