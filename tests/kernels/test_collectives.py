"""Collectives: numerics against float64 NumPy, cycles against the cost
functions in kernels/collectives.py, traffic against what each algorithm must
move, the fragment API, and bad input."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import wse
from kernels import collectives as C
from wse.errors import ConfigError, RouteError

SETTINGS = settings(max_examples=12, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])


def _grid_sizes():
    """Mostly small sides, sometimes up to 32 (non-powers of two included)."""
    return st.one_of(st.integers(1, 6), st.integers(1, 6), st.integers(7, 32))


def _lengths():
    return st.one_of(st.integers(1, 8), st.integers(1, 8), st.integers(9, 2048))


@st.composite
def problems(draw, axes=("x", "y", "xy")):
    rows, cols = draw(_grid_sizes()), draw(_grid_sizes())
    if rows * cols > 64:                    # keep big grids to short vectors
        B = draw(st.integers(1, 16))
    else:
        B = draw(_lengths())
    along = draw(st.sampled_from(axes))
    seed = draw(st.integers(0, 2**31 - 1))
    x = np.random.default_rng(seed).standard_normal((rows, cols, B)).astype(np.float32)
    return wse.WSE2.with_grid(rows, cols), x, along


def _reference(x, along, op):
    f = np.sum if op == "sum" else np.max
    axis = {"x": 1, "y": 0, "xy": (0, 1)}[along]
    return f(x.astype(np.float64), axis=axis)


def _assert_fp32_close(y, x, along, op):
    ref = _reference(x, along, op)
    scale = _reference(np.abs(x), along, "sum") if op == "sum" else np.abs(ref)
    # fp32 accumulation: a sum of n terms is within n * 2^-24 of sum |x_i|
    n = x.shape[1] if along == "x" else x.shape[0] if along == "y" else x.shape[0] * x.shape[1]
    assert np.all(np.abs(y - ref) <= (n + 1) * 2.0**-24 * scale + 1e-30)


# ----------------------------------------------------------------------------
# numerics
@SETTINGS
@given(problems(), st.sampled_from(C.REDUCE_ALGORITHMS), st.sampled_from(C.OPS), st.data())
def test_reduce_matches_numpy(problem, algorithm, op, data):
    cfg, x, along = problem
    if along == "xy":
        root = (data.draw(st.integers(0, cfg.cols - 1)), data.draw(st.integers(0, cfg.rows - 1)))
    else:
        root = data.draw(st.integers(0, (cfg.cols if along == "x" else cfg.rows) - 1))
    y, report = C.reduce(x, cfg, along=along, root=root, op=op, algorithm=algorithm)
    assert y.dtype == np.float32
    assert y.shape == _reference(x, along, op).shape
    _assert_fp32_close(y, x, along, op)


@SETTINGS
@given(problems(), st.sampled_from(C.ALLREDUCE_ALGORITHMS), st.sampled_from(C.OPS))
def test_allreduce_matches_numpy(problem, algorithm, op):
    cfg, x, along = problem
    y, _ = C.allreduce(x, cfg, along=along, op=op, algorithm=algorithm)
    ref = _reference(x, along, op)
    full = np.broadcast_to(np.expand_dims(ref, {"x": 1, "y": 0, "xy": (0, 1)}[along]), x.shape)
    assert y.shape == x.shape and y.dtype == np.float32
    n = x.shape[1] if along == "x" else x.shape[0] if along == "y" else x.shape[0] * x.shape[1]
    scale = np.broadcast_to(np.expand_dims(_reference(np.abs(x), along, "sum"),
                                           {"x": 1, "y": 0, "xy": (0, 1)}[along]), x.shape)
    assert np.all(np.abs(y - full) <= (n + 1) * 2.0**-24 * scale + 1e-30)


@SETTINGS
@given(problems(), st.data())
def test_broadcast_copies_the_root(problem, data):
    cfg, x, along = problem
    if along == "xy":
        root = (data.draw(st.integers(0, cfg.cols - 1)), data.draw(st.integers(0, cfg.rows - 1)))
        expected = np.broadcast_to(x[root[1], root[0]], x.shape)
    elif along == "x":
        root = data.draw(st.integers(0, cfg.cols - 1))
        expected = np.broadcast_to(x[:, root:root + 1], x.shape)
    else:
        root = data.draw(st.integers(0, cfg.rows - 1))
        expected = np.broadcast_to(x[root:root + 1], x.shape)
    y, _ = C.broadcast(x, cfg, along=along, root=root)
    np.testing.assert_array_equal(y, expected)


@SETTINGS
@given(problems(axes=("x", "y")), st.sampled_from(C.RINGS), st.integers(-40, 40))
def test_shift_moves_along_the_ring(problem, ring, k):
    cfg, x, along = problem
    P = cfg.cols if along == "x" else cfg.rows
    order = C._ring_order(P, ring)
    # streams whose paths share a router need distinct colors (interval graph:
    # the most paths through one router)
    paths = [sorted((order[j], order[(j + k) % P])) for j in range(P) if k % P]
    needed = max((sum(lo <= i <= hi for lo, hi in paths) for i in range(P)), default=0)
    if needed > cfg.num_colors:
        with pytest.raises(RouteError, match="colors"):
            C.shift(x, cfg, along=along, k=k, ring=ring)
        return
    y, _ = C.shift(x, cfg, along=along, k=k, ring=ring)
    expected = np.empty_like(x)
    for j in range(P):
        src, dst = order[j], order[(j + k) % P]
        if along == "x":
            expected[:, dst] = x[:, src]
        else:
            expected[dst] = x[src]
    np.testing.assert_array_equal(y, expected)


def test_shift_without_wrap_keeps_the_first_vectors():
    cfg = wse.WSE2.with_grid(2, 6)
    x = np.arange(2 * 6 * 3, dtype=np.float32).reshape(2, 6, 3)
    y, _ = C.shift(x, cfg, along="x", k=2, wrap=False)
    np.testing.assert_array_equal(y[:, 2:], x[:, :4])
    np.testing.assert_array_equal(y[:, :2], x[:, :2])


# rounding stores of fp16 partial sums on the longest path into the root
FP16_STORES = {"chain": lambda P: 1, "star": lambda P: P, "tree": lambda P: 2 * P.bit_length(),
               "two_phase": lambda P: 2, "ktree": lambda P: 3}


@pytest.mark.parametrize("algorithm", C.REDUCE_ALGORITHMS)
def test_fp16_accumulates_in_fp32_and_rounds_on_store(algorithm):
    """fp16 data stays fp16 in SRAM; each fold computes in fp32 and rounds once
    when it stores, and streams forwarded by fold_send stay fp32. So the error
    is at most (stores on the path) * 2^-11 * sum|x|."""
    P, B = 13, 40
    cfg = wse.WSE2.with_grid(1, P)
    x = np.random.default_rng(1).uniform(-1, 1, (1, P, B)).astype(np.float16)
    y, report = C.reduce(x, cfg, algorithm=algorithm)
    ref = x.astype(np.float64).sum(axis=1)
    bound = FP16_STORES[algorithm](P) * 2.0**-11 * np.abs(x.astype(np.float64)).sum(axis=1)
    assert np.all(np.abs(y - ref) <= bound + 2.0**-24)
    # and the chain rounds exactly once: fp32 sum along the chain, one fp16 store
    if algorithm == "chain":
        chain = x[0, -1].astype(np.float32)
        for i in range(P - 2, 0, -1):
            chain = chain + x[0, i].astype(np.float32)
        np.testing.assert_array_equal(y[0], (x[0, 0].astype(np.float32) + chain)
                                      .astype(np.float16).astype(np.float32))


def test_float64_and_integer_inputs_come_back_as_float32():
    cfg = wse.WSE2.with_grid(1, 4)
    x = np.arange(12, dtype=np.int64).reshape(1, 4, 3)
    y, _ = C.allreduce(x.astype(np.float64), cfg)
    assert y.dtype == np.float32
    np.testing.assert_array_equal(y[0, 2], x[0].sum(axis=0))
    y, _ = C.reduce(x, cfg, op="max", algorithm="tree")
    np.testing.assert_array_equal(y[0], x[0].max(axis=0))


# ----------------------------------------------------------------------------
# timing: emulated cycles against the first-principles cost functions
TIMING_P = (2, 7, 32, 128)
TIMING_B = (1, 64, 1024)
# every cost model holds with the instruction costs (the default) and without
# them (the idealised PE of cfg.without_instruction_costs())
CONFIGS = pytest.mark.parametrize("base", [wse.WSE2, wse.WSE2.without_instruction_costs()],
                                  ids=["costs", "zero"])


def _timing_cases(algorithms, allreduce):
    for algorithm in algorithms:
        for P in TIMING_P:
            for B in TIMING_B:
                if algorithm == "star" and B > 1 and P - 1 + allreduce > 24:
                    continue
                yield algorithm, P, B


@CONFIGS
@pytest.mark.parametrize("algorithm,P,B", list(_timing_cases(C.REDUCE_ALGORITHMS, False)))
def test_reduce_cycles_match_cost(algorithm, P, B, base):
    cfg = base.with_grid(1, P)
    x = np.ones((1, P, B), np.float32)
    _, report = C.reduce(x, cfg, algorithm=algorithm)
    assert report.cycles == C.cost("reduce", algorithm, P, B, cfg)


@CONFIGS
@pytest.mark.parametrize("algorithm,P,B", list(_timing_cases(C.ALLREDUCE_ALGORITHMS, True)))
def test_allreduce_cycles_match_cost(algorithm, P, B, base):
    cfg = base.with_grid(1, P)
    x = np.ones((1, P, B), np.float32)
    _, report = C.allreduce(x, cfg, algorithm=algorithm)
    assert report.cycles == C.cost("allreduce", algorithm, P, B, cfg)


# interior roots: arms of equal cost (the middle of an odd line), arms whose
# last streams reach the root 1, 2, 3 cycles apart (the ramp slots the earlier
# stream still takes, _join_cost), short vectors below and above the input
# queue's depth, and very unequal arms
INTERIOR = [(3, 1, 1), (5, 2, 2), (7, 3, 3), (8, 4, 3), (9, 5, 4), (13, 4, 6), (16, 2, 8),
            (7, 64, 3), (32, 64, 11), (32, 1, 30), (33, 6, 16), (64, 4, 31), (64, 4, 32),
            (128, 64, 64)]


@pytest.mark.parametrize("P,B,root", INTERIOR)
@pytest.mark.parametrize("algorithm", ["chain", "tree", "two_phase", "ktree"])
@CONFIGS
def test_interior_root_cycles_match_cost(algorithm, P, B, root, base):
    cfg = base.with_grid(1, P)
    _, report = C.reduce(np.ones((1, P, B), np.float32), cfg, root=root, algorithm=algorithm)
    assert report.cycles == C.cost("reduce", algorithm, P, B, cfg, root=root)


@pytest.mark.parametrize("P,B,root", INTERIOR + [(2, 3, 1), (20, 16, 19)])
@pytest.mark.parametrize("algorithm", ["chain", "tree", "two_phase", "ktree"])
@CONFIGS
def test_allreduce_from_any_root_matches_cost(algorithm, P, B, root, base):
    """Reduce into the root (both arms at once), flood back both ways:
    reduce(root) + sigma + delta + 2 T_R + max(root, P-1-root) H + B, exactly."""
    cfg = base.with_grid(1, P)
    x = np.random.default_rng(P * B + root).standard_normal((1, P, B)).astype(np.float32)
    y, report = C.allreduce(x, cfg, algorithm=algorithm, root=root)
    assert report.cycles == C.cost("allreduce", algorithm, P, B, cfg, root=root) \
        == C.cost("reduce", algorithm, P, B, cfg, root=root) \
        + C.stream_cycles(max(root, P - 1 - root), B, cfg)
    _assert_fp32_close(y[:, :1], x, "x", "sum")
    np.testing.assert_array_equal(y, np.broadcast_to(y[:, :1], y.shape))


@pytest.mark.parametrize("changes", [{"input_queue_depth": 8}, {"hop_latency": 2},
                                     {"ramp_latency": 3, "queue_depth": 8}])
def test_join_cost_follows_the_config(changes):
    """The join of two arms at an interior root (the earlier stream's ramp
    slots, the input queue's depth) on other timing constants; queues at
    least as deep as the credit round trips (rule 6 of docs/engine.md)."""
    for base in (wse.WSE2, wse.WSE2.without_instruction_costs()):
        for P, B, root in [(9, 5, 4), (13, 9, 6), (33, 6, 16), (40, 16, 20)]:
            cfg = base.with_grid(1, P).replace(**changes)
            for algorithm in ("chain", "ktree"):
                _, report = C.allreduce(np.ones((1, P, B), np.float32), cfg,
                                        algorithm=algorithm, root=root)
                assert report.cycles == C.cost("allreduce", algorithm, P, B, cfg, root=root)


@pytest.mark.parametrize("P,B", [(3, 1), (8, 4), (33, 2), (64, 16), (128, 1), (128, 64)])
@CONFIGS
def test_ktree_allreduce_is_rooted_where_it_costs_least(P, B, base):
    """WaferLLM's two-tree: its default root is the cheapest root by cost
    (the middle of the line, give or take a PE, for short vectors), and the
    engine agrees with the cost there. Mid-rooted, it beats the same
    algorithm rooted at the end whenever the latency it saves exceeds the
    B cycles of the second arm's fold."""
    cfg = base.with_grid(1, P)
    root = C.default_allreduce_root("ktree", P, B, cfg)
    costs = [C.cost("allreduce", "ktree", P, B, cfg, root=r) for r in range(P)]
    assert costs[root] == min(costs) == C.cost("allreduce", "ktree", P, B, cfg)
    if B <= 16:
        assert abs(2 * root - (P - 1)) <= 4
        assert costs[root] < costs[0]
    x = np.random.default_rng(B).standard_normal((1, P, B)).astype(np.float32)
    y, report = C.allreduce(x, cfg, algorithm="ktree")
    assert report.cycles == costs[root]
    _assert_fp32_close(y[:, 3 % P], x, "x", "sum")


@pytest.mark.parametrize("collective,P,B,root", [
    ("reduce", 2, 1, 0), ("reduce", 12, 16, 0), ("reduce", 24, 12, 0), ("reduce", 64, 3, 63),
    ("reduce", 16, 16, 5), ("reduce", 23, 40, 11), ("reduce", 200, 1, 77),
    ("allreduce", 16, 16, 0), ("allreduce", 23, 24, 0)])
def test_star_streams_whole_vectors_in_order_through_the_switches(collective, P, B, root):
    """Each arm's sources reach the root one vector after another, nearest
    first (their routers' switches hold the farther streams back until the
    nearer one is in), so the root's ramp never idles after the first
    wavelet when H = 1: S + D + 2 T_R + H + (P-1) B, plus the wait's issue
    c with two arms (allreduce: reduce into index 0, then flood back), for
    any P (one color per arm), any ramp latency; and for H = 2 the cost's
    recurrence over the sources' arrivals. Values against float64."""
    for base in (wse.WSE2, wse.WSE2.without_instruction_costs()):
        # T_R = 3 with queues deep enough for the PE's credit round trip
        # D + T_R + 1 (rule 6 of docs/engine.md)
        for cfg in (base.with_grid(1, P),
                    base.with_grid(1, P).replace(ramp_latency=3, queue_depth=8),
                    base.with_grid(1, P).replace(hop_latency=2)):
            call = C.reduce if collective == "reduce" else C.allreduce
            kw = {"root": root} if collective == "reduce" else {}
            x = np.random.default_rng(P).standard_normal((1, P, B)).astype(np.float32)
            y, report = call(x, cfg, algorithm="star", **kw)
            assert np.allclose(y.reshape(-1, B)[0], x[0].astype(np.float64).sum(axis=0),
                               atol=1e-4 * P)
            assert report.cycles == C.cost(collective, "star", P, B, cfg, **kw)
            if cfg.hop_latency > 1:
                continue
            both_arms = 0 < root < P - 1
            expected = cfg.vector_startup_cycles + cfg.datapath_latency + 2 * cfg.ramp_latency \
                + cfg.hop_latency + (P - 1) * B + both_arms * cfg.scalar_op_cycles
            if collective == "allreduce":       # flood back from index 0
                expected += C.stream_cycles(P - 1, B, cfg)
            assert report.cycles == expected


@CONFIGS
@pytest.mark.parametrize("P,B,root", [(2, 1, 0), (7, 64, 3), (32, 1024, 31)])
def test_broadcast_cycles_are_exact(P, B, root, base):
    cfg = base.with_grid(1, P)
    _, report = C.broadcast(np.ones((1, P, B), np.float32), cfg, root=root)
    assert report.cycles == cfg.vector_startup_cycles + cfg.datapath_latency \
        + 2 * cfg.ramp_latency + max(root, P - 1 - root) * cfg.hop_latency + B \
        == C.cost("broadcast", "flood", P, B, cfg, root=root)


@CONFIGS
@pytest.mark.parametrize("ring", C.RINGS)
@pytest.mark.parametrize("P,B,k", [(2, 1, 1), (7, 64, 1), (32, 1024, -1)])
def test_unit_shift_cycles_are_exact(ring, P, B, k, base):
    cfg = base.with_grid(1, P)
    _, report = C.shift(np.ones((1, P, B), np.float32), cfg, k=k, ring=ring)
    assert report.cycles == C.cost("shift", ring, P, B, cfg, k=k)


def test_cost_follows_the_config():
    """Costs move with the config as the engine does (a slower hop, a slower
    ramp, a longer start-up, slower issue), with and without instruction
    costs. A fold_send chain streams at one element a cycle only while the
    router queue a PE sends into covers the credit round trip through its
    ramp and datapath: the cost assumes full rate, so the slower ramp
    (T_R = 3) is checked on deeper router queues (8; with the default 4 and
    instruction costs the engine is 7 cycles over at B = 32, P = 16; the
    same for datapath_latency >= 2 at T_R = 2)."""
    for base in (wse.WSE2, wse.WSE2.without_instruction_costs()):
        full_rate = {"queue_depth": 8}
        for changes in ({"hop_latency": 2}, {"ramp_latency": 3, **full_rate},
                        {"vector_startup_cycles": 5}, {"scalar_op_cycles": 2}):
            cfg = base.with_grid(1, 16).replace(**changes)
            for algorithm in ("chain", "tree", "two_phase"):
                _, report = C.reduce(np.ones((1, 16, 32), np.float32), cfg, algorithm=algorithm)
                assert report.cycles == C.cost("reduce", algorithm, 16, 32, cfg)


# ----------------------------------------------------------------------------
# traffic
def test_chain_uses_each_row_link_exactly_B_times():
    rows, P, B = 3, 9, 17
    cfg = wse.WSE2.with_grid(rows, P)
    _, report = C.reduce(np.ones((rows, P, B), np.float32), cfg, root=0, algorithm="chain")
    links = report.link_wavelets
    assert report.wavelet_hops == rows * (P - 1) * B
    np.testing.assert_array_equal(links[:, 1:, 3], B)      # every West link, B each
    assert links[:, 0, 3].sum() == 0 and links[:, :, :3].sum() == 0


@pytest.mark.parametrize("algorithm", C.REDUCE_ALGORITHMS)
def test_reduce_moves_only_what_it_must(algorithm):
    """Every stream crosses each link between its ends once: hops = B * sum of
    stream lengths, and the streams are those of the algorithm's plan."""
    P, B = 11, 5
    cfg = wse.WSE2.with_grid(1, P)
    _, report = C.reduce(np.ones((1, P, B), np.float32), cfg, root=0, algorithm=algorithm)
    s = C._best_group_size(algorithm, P, B, cfg) if algorithm in ("two_phase", "ktree") else None
    plan = C._arm_plan(algorithm, P, s)
    length = sum(abs(c[j + 1] - c[j]) for phase in plan for c in phase for j in range(len(c) - 1))
    assert report.wavelet_hops == B * length
    expected = {"chain": P - 1, "star": P * (P - 1) // 2}
    if algorithm in expected:
        assert length == expected[algorithm]
    assert report.link_wavelets[0, :, 1].sum() + report.link_wavelets[0, :, 3].sum() \
        == report.wavelet_hops


def test_ring_and_broadcast_traffic():
    P, B = 8, 24
    cfg = wse.WSE2.with_grid(1, P)
    _, report = C.broadcast(np.ones((1, P, B), np.float32), cfg, root=2)
    assert report.wavelet_hops == (P - 1) * B
    np.testing.assert_array_equal(report.link_wavelets[0, 2:-1, 1], B)   # East of the root
    np.testing.assert_array_equal(report.link_wavelets[0, 1:3, 3], B)    # West of the root
    for algorithm, ring in (("ring", "plain"), ("ring_interleaved", "interleaved")):
        _, report = C.allreduce(np.ones((1, P, B), np.float32), cfg, algorithm=algorithm)
        chunk = -(-B // P)
        assert report.wavelet_hops == 2 * (P - 1) * chunk * sum(C._ring_hops(P, ring))
    # the interleaved ring never sends farther than two hops: no link carries
    # more than two streams' worth in one direction
    _, report = C.allreduce(np.ones((1, P, B), np.float32), cfg, algorithm="ring_interleaved")
    assert report.link_wavelets.max() <= 2 * 2 * (P - 1) * (B // P)


# ----------------------------------------------------------------------------
# auto and the fragment API
@pytest.mark.parametrize("P,B", [(2, 1), (32, 1), (32, 1024), (128, 64)])
def test_auto_picks_the_cheapest_by_cost(P, B):
    cfg = wse.WSE2.with_grid(1, P)
    x = np.random.default_rng(0).standard_normal((1, P, B)).astype(np.float32)
    for collective, names in (("reduce", C.REDUCE_ALGORITHMS),
                              ("allreduce", C.ALLREDUCE_ALGORITHMS)):
        best = C.choose(collective, P, B, cfg)
        feasible = [a for a in names
                    if C.colors_needed(collective, a, P) <= cfg.num_colors]
        assert C.cost(collective, best, P, B, cfg) == min(C.cost(collective, a, P, B, cfg)
                                                         for a in feasible)
    y, r_auto = C.reduce(x, cfg, algorithm="auto")
    _, r_best = C.reduce(x, cfg, algorithm=C.choose("reduce", P, B, cfg))
    assert r_auto.cycles == r_best.cycles
    _assert_fp32_close(y, x, "x", "sum")
    _, r_auto = C.allreduce(x, cfg, algorithm="auto")
    assert r_auto.cycles == C.cost("allreduce", "auto", P, B, cfg) \
        == min(C.cost("allreduce", a, P, B, cfg) for a in C.ALLREDUCE_ALGORITHMS
               if C.colors_needed("allreduce", a, P) <= cfg.num_colors)


@pytest.mark.parametrize("B", [1, 4, 16, 64])
def test_auto_allreduces_a_long_line_by_the_mid_rooted_two_tree(B):
    """At decode's line lengths and vector lengths (P = 420, a few to a few
    dozen elements) the mid-rooted two-tree is the cheapest allreduce by
    cost, several times cheaper than the chain into an end and the flood
    back."""
    cfg = wse.WSE2.with_grid(420, 420)
    assert C.choose("allreduce", 420, B, cfg) == "ktree"
    root = C.default_allreduce_root("ktree", 420, B, cfg)
    assert abs(2 * root - 419) <= 4
    assert 3 * C.cost("allreduce", "ktree", 420, B, cfg) < C.cost("allreduce", "chain", 420, B, cfg)


def test_fragment_fuses_local_compute_with_the_collective():
    """A kernel scales its vector, allreduces it and adds one, in one run."""
    rows, cols, B = 3, 7, 10
    cfg = wse.WSE2.with_grid(rows, cols)
    x = np.random.default_rng(3).standard_normal((rows, cols, B)).astype(np.float32)
    prog = wse.Program(cfg)
    buf = prog.buffer("v", (B,))
    frag = C.allreduce_fragment(prog, buf, along="x", algorithm="tree")
    frag.install("fused", before=lambda t, mask: t.scale(buf.view(), buf.view(), 2.0),
                 after=lambda t, mask: t.adds(buf.view(), buf.view(), 1.0))
    prog.load(buf, x)
    result = prog.run()
    y = result.read(buf)
    expected = np.broadcast_to(2 * x.sum(axis=1, keepdims=True) + 1, x.shape)
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(ConfigError):
        frag.emit(None, np.ones((rows, cols), bool))    # spans several parts


def test_fragments_compose_in_sequence():
    cfg = wse.WSE2.with_grid(4, 5)
    x = np.random.default_rng(4).standard_normal((4, 5, 6)).astype(np.float32)
    prog = wse.Program(cfg)
    buf = prog.buffer("v", (6,))
    red = C.reduce_fragment(prog, buf, along="y", root=3, algorithm="chain")
    frag = red.then(C.broadcast_fragment(prog, buf, along="y", root=3))
    frag.install()
    prog.load(buf, x)
    y = prog.run().read(buf)
    np.testing.assert_allclose(y, np.broadcast_to(x.sum(axis=0), x.shape), rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------
# bad input
def test_bad_input_gets_one_clear_error():
    cfg = wse.WSE2.with_grid(2, 4)
    x = np.ones((2, 4, 3), np.float32)
    with pytest.raises(ConfigError, match="B must be"):
        C.reduce(np.ones((2, 4, 0)), cfg)
    with pytest.raises(ConfigError, match="shape"):
        C.allreduce(np.ones((4, 2, 3)), cfg)
    with pytest.raises(ConfigError, match="root"):
        C.reduce(x, cfg, root=4)
    with pytest.raises(ConfigError, match="root"):
        C.broadcast(x, cfg, along="xy", root=(0, 2))
    with pytest.raises(ConfigError, match="root"):
        C.reduce(x, cfg, along="xy", root=1)
    with pytest.raises(ConfigError, match="unknown reduce algorithm"):
        C.reduce(x, cfg, algorithm="butterfly")
    with pytest.raises(ConfigError, match="unknown allreduce algorithm"):
        C.allreduce(x, cfg, algorithm="butterfly")
    with pytest.raises(ConfigError, match="root"):
        C.allreduce(x, cfg, algorithm="ktree", root=4)
    with pytest.raises(ConfigError, match="root"):
        C.allreduce(x, cfg, along="xy", algorithm="ktree", root=1)
    with pytest.raises(ConfigError, match="root"):
        C.cost("allreduce", "ktree", 4, 3, cfg, root=4)
    with pytest.raises(ConfigError, match="lengths"):
        C.ktree_allreduce_plan(4, cfg, [])
    with pytest.raises(ConfigError, match="unknown broadcast algorithm"):
        C.broadcast(x, cfg, algorithm="tree")
    with pytest.raises(ConfigError, match="op"):
        C.reduce(x, cfg, op="prod")
    with pytest.raises(ConfigError, match="along"):
        C.reduce(x, cfg, along="z")
    with pytest.raises(ConfigError, match="distinct"):
        prog = wse.Program(cfg)
        b = prog.buffer("b", (3,))
        C.shift_fragment(prog, b, b)


def test_more_colors_than_the_config_has_is_a_route_error():
    one = wse.WSE2.with_grid(1, 30).replace(num_colors=1)   # star from the middle needs 2
    with pytest.raises(RouteError, match="colors"):
        C.reduce(np.ones((1, 30, 2), np.float32), one, algorithm="star", root=15)
    small = wse.WSE2.with_grid(1, 16).replace(num_colors=3)
    with pytest.raises(RouteError):
        C.reduce(np.ones((1, 16, 2), np.float32), small, algorithm="tree")


# ----------------------------------------------------------------------------
# The same properties on the kernel strategies' problems (kernels.strategies),
# with awkward values (negative zero, tiny and huge magnitudes) and random
# timing constants, and the run invariants checked on every report (wse.testing).
from kernels import strategies  # noqa: E402
from wse import testing as T  # noqa: E402


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(strategies.collective_problems(alongs=("x", "y"), ops=C.OPS, max_rows=5, max_cols=6,
                                      max_length=16, vary_timing=True),
       st.sampled_from(C.REDUCE_ALGORITHMS))
def test_toolkit_reduce_and_allreduce_hold_the_invariants(problem, algorithm):
    y, report = C.reduce(problem.x, problem.cfg, along=problem.along, root=problem.root,
                         op=problem.op, algorithm=algorithm)
    T.assert_close(y, problem.reference("reduce"), "float32", terms=problem.line_length)
    T.check_report(report, cfg=problem.cfg)
    y, report = C.allreduce(problem.x, problem.cfg, along=problem.along, op=problem.op,
                            algorithm="ring_interleaved")
    T.assert_close(y, problem.reference("allreduce"), "float32", terms=problem.line_length)
    T.check_report(report, cfg=problem.cfg)


# ----------------------------------------------------------------------------
# against the published WSE-2 fabric model (Luczynski et al., HPDC 2024)
@pytest.mark.parametrize("P,B", [(2, 1), (8, 16), (32, 1), (64, 256), (300, 4), (512, 4096)])
def test_flood_and_chain_follow_the_published_fabric_model(P, B):
    """flood B + P + 2 T_R and chain B + (2 T_R + 2)(P - 1), within max(5%, 3 cycles)."""
    from benchmarks.collectives import published_point
    for name in ("flood broadcast", "chain reduce"):
        r = published_point(name, P, B)
        assert r["agrees"], r


@pytest.mark.parametrize("P,B", [(2, 1), (8, 4), (64, 1), (64, 64), (512, 4)])
def test_star_follows_the_published_fabric_model(P, B):
    """star B (P - 1) + 2 T_R + 1, within max(5%, 3 cycles)."""
    from benchmarks.collectives import published_point
    r = published_point("star reduce", P, B)
    assert r["agrees"], r
