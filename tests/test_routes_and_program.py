"""Route helpers and the program builder: shapes, colorings and clear errors."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import wse
from wse import routes


@pytest.mark.nojit
@given(pairs=st.lists(st.tuples(st.integers(0, 30), st.integers(0, 30)), max_size=12))
def test_interval_coloring_never_shares_a_router_and_is_minimal(pairs):
    """Two streams on one color never touch the same router; the number of
    colors equals the largest number of streams covering one router (optimal)."""
    colors = routes.color_intervals(pairs)
    spans = [(min(p), max(p)) for p in pairs]
    for i in range(len(pairs)):
        for j in range(i + 1, len(pairs)):
            if colors[i] == colors[j]:
                (a, b), (c, d) = spans[i], spans[j]
                assert b < c or d < a
    depth = max((sum(lo <= r <= hi for lo, hi in spans) for r in range(31)), default=0)
    assert (max(colors) + 1 if colors else 0) == depth


@pytest.mark.nojit
@pytest.mark.parametrize("p", [1, 2, 3, 6, 7, 16])
def test_interleaved_ring_neighbours_are_at_most_two_apart(p):
    order = routes.interleaved_order(p)
    assert sorted(order) == list(range(p))
    for a, b in zip(order, order[1:] + order[:1]):
        assert abs(a - b) <= 2


@pytest.mark.nojit
def test_shift_with_wrap_needs_three_colors_and_sets_paths():
    prog = wse.Program(wse.WSE2.with_grid(rows=2, cols=5))
    plan = routes.shift(prog, "x", k=1, wrap=True)
    assert len(plan.colors) == 3
    # the wrap stream 4 -> 0 travels West through columns 3..1
    wrap = plan.colors[plan.color_of_pair[plan.pairs.index((4, 0))]]
    rx, tx = prog.routes_of(wrap)
    assert tx[0, 4] == 1 << wse.isa.WEST and rx[0, 4] == 1 << wse.isa.RAMP
    assert all(tx[0, c] == 1 << wse.isa.WEST for c in (1, 2, 3))
    assert tx[1, 0] == 1 << wse.isa.RAMP and rx[1, 0] == 1 << wse.isa.EAST
    assert (plan.send_color >= 0).all() and (plan.recv_color >= 0).all()


def test_shift_along_y_moves_rows_down():
    from kernels.collectives import shift
    cfg = wse.WSE2.with_grid(rows=4, cols=3)
    x = np.arange(4 * 3 * 5, dtype=np.float32).reshape(4, 3, 5)
    y, report = shift(x, cfg, along="y", k=1)
    np.testing.assert_array_equal(y, np.roll(x, 1, axis=0))
    # B wavelets over the longest path (the wrap, 3 hops), sent from the
    # start-up S on, out of the datapath D later: S + D + 2*T_R + 3*H + B,
    # and the closing wait's issue cycle c
    assert report.cycles == cfg.vector_startup_cycles + cfg.datapath_latency \
        + 2 * cfg.ramp_latency + 3 * cfg.hop_latency + 5 + cfg.scalar_op_cycles


@pytest.mark.nojit
def test_too_many_colors_is_a_clear_route_error():
    prog = wse.Program(wse.WSE2.with_grid(rows=1, cols=2).replace(num_colors=2))
    prog.color("a")
    prog.color("b")
    with pytest.raises(wse.RouteError, match="all 2 colors"):
        prog.color("c")


@pytest.mark.nojit
@pytest.mark.parametrize("field,value", [("rows", 0), ("hop_latency", 0), ("queue_depth", 0),
                                         ("clock_hz", -1.0), ("num_colors", 100),
                                         ("link_bits", 64), ("rows", 2.5)])
def test_config_fields_are_validated(field, value):
    with pytest.raises(wse.ConfigError, match=f"WaferConfig.{field}"):
        wse.WSE2.replace(**{field: value})


@pytest.mark.nojit
def test_presets_keep_per_pe_parameters_on_a_smaller_grid():
    small = wse.WSE3.with_grid(rows=4, cols=8)
    assert (small.rows, small.cols) == (4, 8)
    assert small.fmacs_per_cycle_fp16 == 8 and small.sram_bytes == 48 * 1024
    assert wse.WSE2.rows * wse.WSE2.cols == 757 * 996
    docs = dict((name, doc) for name, _, doc in wse.WSE2.fields_with_docs())
    assert "Hot Chips" in docs["sram_bytes"] and "ASSUMPTION" in docs["queue_depth"]


@pytest.mark.nojit
def test_builder_rejects_malformed_programs():
    prog = wse.Program(wse.WSE2.with_grid(rows=1, cols=2))
    c = prog.color("c")
    a = prog.buffer("a", (4,))
    with pytest.raises(wse.ProgramError, match="reaches element 5"):
        a.view(offset=2, length=4)
    role = prog.role("r")
    t = role.task("main", entry=True)
    with pytest.raises(wse.ProgramError, match="cannot write to a fabric input"):
        t.mov(prog.fabin(c, 4), a.view())
    with pytest.raises(wse.ProgramError, match="both operands read the same color"):
        t.add(a.view(), prog.fabin(c, 4), prog.fabin(c, 4))
    with pytest.raises(wse.ProgramError, match="no task 'nope'"):
        t.activate("nope")
    with pytest.raises(wse.ProgramError, match="shape"):
        prog.load(a, np.zeros(3))
    with pytest.raises(wse.RouteError, match="unknown router port"):
        prog.route(c, rx="UP", tx="E")


def test_deferred_loads_let_buffers_follow_them_and_land_in_order():
    """prog.load(..., deferred=True) checks the shape at once, records the load
    and writes it when the SRAM image is laid out, so a buffer can still be
    allocated after it; an immediate load lays the image out and then refuses
    new buffers."""
    cfg = wse.WSE2.with_grid(rows=2, cols=3)
    prog = wse.Program(cfg)
    a = prog.buffer("a", (4,))
    data = np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4)
    prog.load(a, np.full(4, -1.0), deferred=True)
    prog.load(a, data, deferred=True)                   # the later load wins
    with pytest.raises(wse.ProgramError, match="shape"):
        prog.load(a, np.zeros(3), deferred=True)
    b = prog.buffer("b", (2,), "float16")               # allowed: nothing written yet
    prog.load(b, [1.5, 2.5], where=prog.pes(rows=1), deferred=True)
    prog.role("idle_too")
    result = prog.run()
    np.testing.assert_array_equal(result.read(a), data)
    np.testing.assert_array_equal(result.read(b)[1], np.broadcast_to([1.5, 2.5], (3, 2)))
    np.testing.assert_array_equal(result.read(b)[0], np.zeros((3, 2)))
    prog = wse.Program(cfg)
    a = prog.buffer("a", (4,))
    prog.load(a, data, deferred=True)
    prog.load(a, np.zeros(4))                           # immediate: writes the deferred one first
    with pytest.raises(wse.ProgramError, match="allocate every buffer before loading data"):
        prog.buffer("late", (1,))
    np.testing.assert_array_equal(prog.run().read(a), np.zeros((2, 3, 4)))


def test_resume_starts_from_the_previous_runs_sram_and_counts_host_bytes():
    """Program.resume(result.image()) keeps every buffer's final values from the
    previous run with no host bytes (report.host_bytes_loaded counts only what
    is loaded on top: elements x itemsize on the PEs written); a program whose
    layout differs is refused, naming the first buffer that differs."""
    cfg = wse.WSE2.with_grid(rows=2, cols=3)

    def build(dtype_b="float16", size_a=4):
        prog = wse.Program(cfg)
        a = prog.buffer("a", (size_a,))
        b = prog.buffer("b", (2,), dtype_b)
        with prog.role("all").task("main", entry=True) as t:
            t.adds(a.view(), a.view(), 1.0)             # a += 1 on every run
        return prog, a, b

    prog, a, b = build()
    data = np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4)
    prog.load(a, data)
    prog.load(b, [1.5, 2.5], where=prog.pes(rows=1))
    first = prog.run()
    assert first.report.host_bytes_loaded == 6 * 4 * 4 + 3 * 2 * 2
    image = first.image()
    np.testing.assert_array_equal(image.read("a"), data + 1)
    again, a2, b2 = build()
    again.resume(image)
    second = again.run()
    assert second.report.host_bytes_loaded == 0
    np.testing.assert_array_equal(second.read(a2), data + 2)
    np.testing.assert_array_equal(second.read(b2)[1], np.broadcast_to([1.5, 2.5], (3, 2)))
    third, a3, _ = build()
    third.resume(second.image())
    third.load(a3, np.zeros(4), where=third.pes(cols=0))
    result = third.run()
    assert result.report.host_bytes_loaded == 2 * 4 * 4
    np.testing.assert_array_equal(result.read(a3)[:, 0], np.ones((2, 4)))
    np.testing.assert_array_equal(result.read(a3)[:, 1:], data[:, 1:] + 3)
    with pytest.raises(wse.ConfigError, match="buffer 'b' is float32"):
        build("float32")[0].resume(result.image())
    with pytest.raises(wse.ConfigError, match="buffer 'a' is float32 \\(5,\\)"):
        build(size_a=5)[0].resume(result.image())
    with pytest.raises(wse.ConfigError, match="gone"):
        image.read("a")
