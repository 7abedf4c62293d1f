"""kernels.layers: feature layouts, segmented allreduce, norm/RoPE/activation emitters."""
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import wse
from kernels import reference
from kernels.layers import (FeatureLayout, SegmentChannel, allreduce_cycles,
                            block_transpose_cycles, block_transpose_hops,
                            block_transpose_program, build_roles,
                            emit_gelu, emit_norm, emit_rope, emit_swiglu, place_matrix,
                            rope_tables)


def test_plain_layout_round_trip_and_padding():
    lay = FeatureLayout.plain(10, 4)
    assert lay.width == 3
    M = np.arange(20.0).reshape(2, 10)
    T = lay.scatter(M)
    assert T.shape == (2, 4, 3)
    assert T[0, 3, 1] == 0 and T[0, 3, 0] == 9          # feature 9, then padding
    np.testing.assert_array_equal(lay.gather(T), M)


@pytest.mark.parametrize("heads, hd, parts", [(4, 16, 4), (4, 16, 8), (4, 16, 12), (2, 8, 5)])
def test_head_layout_keeps_rope_pairs_together(heads, hd, parts):
    lay = FeatureLayout.heads(heads, hd, parts)
    g = parts // heads
    assert lay.group == g and len(lay.segments) == heads and lay.width % 2 == 0
    idx = lay.index
    first, second = idx[:, 0::2], idx[:, 1::2]
    real = first >= 0
    # each adjacent pair is (i, i + hd/2) of one head
    np.testing.assert_array_equal(second[real], first[real] + hd // 2)
    assert sorted(idx[idx >= 0].tolist()) == list(range(heads * hd))
    for h, (lo, hi) in enumerate(lay.segments):
        feats = idx[lo:hi + 1]
        assert set(feats[feats >= 0] // hd) == {h}
    M = np.random.default_rng(0).standard_normal((3, heads * hd))
    np.testing.assert_array_equal(lay.gather(lay.scatter(M)), M)


def test_head_layout_needs_a_pe_per_head():
    with pytest.raises(wse.ConfigError, match="at least 4 PEs"):
        FeatureLayout.heads(4, 16, 3)


def test_place_matrix_blocks():
    W = np.random.default_rng(1).standard_normal((10, 8))
    a, b = FeatureLayout.plain(10, 3), FeatureLayout.heads(2, 4, 2)
    blocks = place_matrix(W, a, b)
    assert blocks.shape == (3, 2, a.width, b.width)
    for p in range(3):
        for q in range(2):
            for i, fi in enumerate(a.index[p]):
                for j, fj in enumerate(b.index[q]):
                    expect = W[fi, fj] if fi >= 0 and fj >= 0 else 0.0
                    assert blocks[p, q, i, j] == expect
    with pytest.raises(wse.ConfigError, match="does not match"):
        place_matrix(W[:, :6], a, b)


def _segment_reference(x, along, segments, op):
    """float64 reduction of x inside each segment, broadcast over it."""
    expect = x.astype(np.float64).copy()
    red = np.sum if op == "sum" else np.max
    for lo, hi in segments:
        if along == "x":
            expect[:, lo:hi + 1] = red(x[:, lo:hi + 1].astype(np.float64), axis=1, keepdims=True)
        else:
            expect[lo:hi + 1] = red(x[lo:hi + 1].astype(np.float64), axis=0, keepdims=True)
    return expect


@st.composite
def segmented_lines(draw):
    """A line of 1..40 PEs cut into segments (of 1, 2, 3, odd and even
    lengths), 1..3 lines beside it, and 1..3 allreduces of different lengths
    and ops."""
    along = draw(st.sampled_from("xy"))
    length = draw(st.integers(1, 40))
    cuts = draw(st.sets(st.integers(1, max(1, length - 1)), max_size=6)) if length > 1 else set()
    bounds = [0] + sorted(c for c in cuts if c < length) + [length]
    segments = [(a, b - 1) for a, b in zip(bounds, bounds[1:])]
    calls = draw(st.lists(st.tuples(st.integers(1, 40), st.sampled_from(["sum", "max"])),
                          min_size=1, max_size=3, unique_by=lambda c: c[0]))
    return along, length, draw(st.integers(1, 3)), segments, calls


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(segmented_lines(), st.sampled_from([wse.WSE2, wse.WSE2.without_instruction_costs()]),
       st.integers(0, 2**31 - 1))
def test_segmented_allreduce_values_and_cycles(problem, base, seed):
    """Every PE of every segment ends with the segment's sum or max (float64
    reference; fp32 sums of g terms within g 2^-24 sum|x|), also when one
    task allreduces several times on the same channel with different lengths
    and ops; one allreduce takes exactly the cycles of its cost function."""
    along, length, other, segments, calls = problem
    rows, cols = (other, length) if along == "x" else (length, other)
    cfg = base.with_grid(rows, cols)
    rng = np.random.default_rng(seed)
    xs = [rng.standard_normal((rows, cols, n)).astype(np.float32) for n, _ in calls]
    prog = wse.Program(cfg)
    bufs = [prog.buffer(f"v{k}", (n,), "float32") for k, (n, _) in enumerate(calls)]
    for buf, x in zip(bufs, xs):
        prog.load(buf, x)
    ch = SegmentChannel(prog, along, segments, "s")

    def body(t, parts):
        for buf, (n, op) in zip(bufs, calls):
            ch.allreduce(t, parts["s"], buf.view(), n, op)
    build_roles(prog, {"s": ch}, body)
    res = prog.run()
    g = max(hi - lo + 1 for lo, hi in segments)
    for buf, x, (n, op) in zip(bufs, xs, calls):
        expect = _segment_reference(x, along, segments, op)
        scale = _segment_reference(np.abs(x), along, segments, "sum")
        assert np.all(np.abs(res.read(buf) - expect) <= (g + 1) * 2.0**-24 * scale + 1e-30)
    if len(calls) == 1:
        n = calls[0][0]
        assert res.report.cycles == ch.cycles(n) == max(
            allreduce_cycles(cfg, hi - lo + 1, n) for lo, hi in segments)


@pytest.mark.parametrize("n", [1, 10, 35])
def test_a_long_line_allreduces_by_the_mid_rooted_two_tree(n):
    """Decode's reductions over a 420-PE line: the channel roots them in the
    middle and reduces both halves by the two-tree; the engine's cycles equal
    the cost function, under a third of the chain into an end and the flood
    back (sigma + (g-1)(2 T_R + H + delta) + n + sigma + delta + 2 T_R
    + (g-1) H + n), and the values are right."""
    g = 420
    cfg = wse.WSE2.with_grid(1, g)
    x = np.random.default_rng(n).standard_normal((1, g, n)).astype(np.float32)
    prog = wse.Program(cfg)
    buf = prog.buffer("v", (n,), "float32")
    prog.load(buf, x)
    ch = SegmentChannel(prog, "x", [(0, g - 1)], "row")
    build_roles(prog, {"row": ch}, lambda t, parts: ch.allreduce(t, parts["row"], buf.view(), n))
    res = prog.run()
    np.testing.assert_allclose(res.read(buf), _segment_reference(x, "x", [(0, g - 1)], "sum"),
                               rtol=1e-5, atol=1e-4)
    root = int(np.flatnonzero(ch.label[0] >= SegmentChannel.ROOT)[0])
    assert abs(2 * root - (g - 1)) <= 4
    T, H = cfg.ramp_latency, cfg.hop_latency
    su, dp = cfg.vector_startup_cycles, cfg.datapath_latency
    chain_and_flood = su + (g - 1) * (2 * T + H + dp) + n + su + dp + 2 * T + (g - 1) * H + n
    assert res.report.cycles == allreduce_cycles(cfg, g, n) < chain_and_flood / 3
    assert len(prog.colors) <= 5


def test_segment_channel_bad_input_gets_one_clear_error():
    prog = wse.Program(wse.WSE2.with_grid(2, 5))
    with pytest.raises(wse.ConfigError, match=r"segment \(3, 5\).*outside the 5 PEs"):
        SegmentChannel(prog, "x", [(0, 2), (3, 5)], "bad")
    ch = SegmentChannel(prog, "x", [(0, 4)], "ok")
    buf = prog.buffer("v", (3,), "float32")
    with pytest.raises(wse.ConfigError, match="unknown reduce op 'prod'"):
        build_roles(prog, {"ok": ch}, lambda t, parts: ch.allreduce(t, parts["ok"], buf.view(),
                                                                    3, "prod"))


def _run_rowwise(cfg, arrays, body, out_names):
    prog = wse.Program(cfg)
    bufs = {k: prog.buffer(k, (v.shape[-1],), "float32") for k, v in arrays.items()}
    for k, v in arrays.items():
        prog.load(bufs[k], v)
    row = SegmentChannel(prog, "x", [(0, cfg.cols - 1)], "row")
    build_roles(prog, {"row": row}, lambda t, parts: body(t, parts, row, bufs))
    res = prog.run()
    return {k: res.read(bufs[k]).astype(np.float64) for k in out_names}


@pytest.mark.parametrize("kind", ["rms", "layer"])
def test_norm_over_a_row_of_pes(kind):
    rows, cols, st, w = 2, 3, 2, 4
    cfg = wse.WSE2.with_grid(rows=rows, cols=cols)
    rng = np.random.default_rng(3)
    X = rng.standard_normal((rows * st, cols * w))
    weight, bias = rng.standard_normal(cols * w), rng.standard_normal(cols * w)
    tiles = X.reshape(rows, st, cols, w).transpose(0, 2, 1, 3).reshape(rows, cols, st * w)
    per_col = lambda v: np.broadcast_to(v.reshape(cols, w)[None], (rows, cols, w))  # noqa
    arrays = {"x": tiles, "out": np.zeros_like(tiles), "stats": np.zeros((rows, cols, 3 * st + w)),
              "w": per_col(weight), "b": per_col(bias)}

    def body(t, parts, row, b):
        emit_norm(t, parts, row, parts["row"], b["x"], b["out"], b["stats"], st, w, cols * w,
                  kind, 1e-5, b["w"], b["b"] if kind == "layer" else None)

    out = _run_rowwise(cfg, arrays, body, ["out"])["out"]
    got = out.reshape(rows, cols, st, w).transpose(0, 2, 1, 3).reshape(rows * st, cols * w)
    ref = (reference.rmsnorm(X, weight) if kind == "rms"
           else reference.layernorm(X, weight, bias))
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)


def test_rope_matches_rotate_half_reference():
    heads, hd, cols = 2, 8, 4
    lay = FeatureLayout.heads(heads, hd, cols)
    positions = np.array([0, 3, 17])
    rng = np.random.default_rng(4)
    Q = rng.standard_normal((len(positions), heads * hd))
    cos, sin = rope_tables(lay, positions, 10000.0)           # (3, cols, w/2)
    tiles = lay.scatter(Q).transpose(1, 0, 2).reshape(1, cols, -1)
    n = tiles.shape[-1]
    cfg = wse.WSE2.with_grid(rows=1, cols=cols)
    arrays = {"x": tiles, "cos": cos.transpose(1, 0, 2).reshape(1, cols, -1),
              "sin": sin.transpose(1, 0, 2).reshape(1, cols, -1), "tmp": np.zeros((1, cols, n))}
    out = _run_rowwise(cfg, arrays, lambda t, p, r, b: emit_rope(t, b["x"], b["cos"], b["sin"],
                                                                 b["tmp"], n), ["x"])["x"]
    got = lay.gather(out.reshape(cols, len(positions), -1).transpose(1, 0, 2))
    ref = reference.rope(Q.reshape(len(positions), heads, hd).transpose(1, 0, 2), positions)
    np.testing.assert_allclose(got, ref.transpose(1, 0, 2).reshape(len(positions), -1),
                               rtol=1e-5, atol=1e-5)


def test_activations():
    cfg = wse.WSE2.with_grid(rows=1, cols=2)
    rng = np.random.default_rng(5)
    x, g, u = (rng.standard_normal((1, 2, 6)) * 2 for _ in range(3))
    arrays = {"x": x, "tmp": np.zeros_like(x), "g": g, "u": u, "o": np.zeros_like(x)}

    def body(t, parts, row, b):
        emit_gelu(t, b["x"], b["tmp"], 6)
        emit_swiglu(t, b["g"], b["u"], b["o"], 6)

    out = _run_rowwise(cfg, arrays, body, ["x", "o"])
    np.testing.assert_allclose(out["x"], reference.gelu(x), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out["o"], reference.silu(g) * u, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("zero_cost", [False, True])
@pytest.mark.parametrize("n, b", [(1, 5), (2, 1), (2, 24), (3, 1), (3, 16), (5, 7), (8, 1),
                                  (8, 40)])
def test_block_transpose_moves_every_tile_to_the_mirrored_pe(n, b, zero_cost):
    """Values, traffic (tile (x, y) crosses 2|x - y| links) and cycles against the
    first-principles bounds; exact where no PE's ramp carries two streams at once
    (n = 2) or the tiles are single wavelets (b = 1: the far tile's latency)
    when instructions cost nothing; with instruction costs, bounds only
    (see block_transpose_cycles)."""
    base = wse.WSE2.without_instruction_costs() if zero_cost else wse.WSE2
    cfg = base.with_grid(rows=n, cols=n)
    tiles = np.random.default_rng(n * 100 + b).standard_normal((n, n, b))
    prog, dst = block_transpose_program(cfg, tiles)
    result = prog.run()
    np.testing.assert_array_equal(result.read(dst), tiles.transpose(1, 0, 2).astype(np.float32))
    assert result.report.wavelet_hops == block_transpose_hops(n, b)
    lower, upper = block_transpose_cycles(cfg, n, b)
    assert lower <= result.report.cycles <= upper
    if (n <= 2 or b == 1) and (zero_cost or n == 1):
        assert result.report.cycles == lower


def test_block_transpose_rejects_a_rectangular_grid():
    cfg = wse.WSE2.with_grid(rows=2, cols=3)
    with pytest.raises(wse.ConfigError, match="square grid"):
        block_transpose_program(cfg, np.zeros((2, 3, 4)))
