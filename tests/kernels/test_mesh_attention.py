"""kernels.mesh_attention (kernels.attention): ring and GEMM attention on the
mesh against the float64 reference."""
import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import wse
from kernels.layers import head_layout, place_sequence, tiles_to_matrix
from kernels.mesh_attention import (GemmAttentionPlan, _feature_columns, _key_order,
                                    attention as mesh_attention, b_tiles_to_matrix,
                                    k_move_hops, k_move_lower_bounds,
                                    longest_gemm_sequence, move_keys)
from kernels import reference


def _inputs(heads, kv_heads, sq, sk, hd, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((heads, sq, hd)), rng.standard_normal((kv_heads, sk, hd)),
            rng.standard_normal((kv_heads, sk, hd)))


@settings(max_examples=6, deadline=None)
@given(rows=st.integers(1, 5), extra_cols=st.integers(0, 4), heads=st.sampled_from([1, 2, 4]),
       group=st.sampled_from([1, 2]), seq=st.integers(1, 11), causal=st.booleans(),
       seed=st.integers(0, 10))
def test_attention_matches_reference(rows, extra_cols, heads, group, seq, causal, seed):
    if heads % group:
        group = 1
    cols = heads + extra_cols
    sk = seq if causal else seq + seed % 4
    Q, K, V = _inputs(heads, heads // group, seq, sk, 8, seed)
    cfg = wse.WSE2.with_grid(rows=rows, cols=cols)
    O, report = mesh_attention(Q, K, V, cfg, causal=causal, algorithm="ring")
    np.testing.assert_allclose(O, reference.attention(Q, K, V, causal=causal), rtol=1e-4,
                               atol=1e-5)
    assert report.extra["attention"]["columns_per_head"] == cols // heads


def test_attention_fp16_within_2e_2():
    Q, K, V = _inputs(4, 2, 12, 12, 16, 3)
    cfg = wse.WSE2.with_grid(rows=4, cols=8)
    O, _ = mesh_attention(Q, K, V, cfg, causal=True, dtype="float16")
    assert O.dtype == np.float16
    ref = reference.attention(Q, K, V, causal=True)
    assert np.abs(O - ref).max() / np.abs(ref).max() < 2e-2


def test_single_head_2d_input_and_cost_grows_with_ring_steps():
    Q, K, V = (a[0] for a in _inputs(1, 1, 8, 8, 4, 1))
    reports = {}
    for rows in (2, 4, 8):
        cfg = wse.WSE2.with_grid(rows=rows, cols=1)
        O, r = mesh_attention(Q, K, V, cfg, causal=False, algorithm="ring")
        np.testing.assert_allclose(O, reference.attention(Q, K, V, causal=False), rtol=1e-4,
                                   atol=1e-6)
        reports[rows] = r
    # R steps of shifting K/V blocks of st = 8/R rows: the K/V wavelets on the
    # ring per step are 2*st*hd + st per PE, R-1 shifts, and every stream of the
    # interleaved ring crosses 1 or 2 links (its hop lengths sum to 2R - 2)
    for rows, r in reports.items():
        stq = 8 // rows
        per_stream = 2 * stq * 4 + stq
        hops = (2 * rows - 2) if rows > 1 else 0
        assert r.wavelet_hops == (rows - 1) * per_stream * hops


def test_bad_inputs_get_one_clear_error():
    cfg = wse.WSE2.with_grid(rows=2, cols=2)
    Q, K, V = _inputs(4, 2, 4, 4, 8)
    with pytest.raises(wse.ConfigError, match="at least 4 PEs"):
        mesh_attention(Q, K, V, cfg)
    Q, K, V = _inputs(2, 2, 3, 5, 8)
    with pytest.raises(wse.ConfigError, match="as many queries as keys"):
        mesh_attention(Q, K, V, cfg, causal=True)
    with pytest.raises(wse.ConfigError, match="multiple"):
        mesh_attention(*_inputs(2, 3, 4, 4, 8)[:1], *_inputs(3, 3, 4, 4, 8)[1:], cfg)
    with pytest.raises(wse.ConfigError, match="dtype"):
        mesh_attention(*_inputs(2, 2, 4, 4, 8), cfg, dtype="int8")
    Q, K, V = _inputs(2, 2, 4, 4, 8)
    Q[0, 0, 0] = math.nan
    with pytest.raises(wse.ConfigError, match="NaN"):
        mesh_attention(Q, K, V, cfg)


# ---------------------------------------------------------------------------
# algorithm="gemm": scores by kernels.gemm, softmax by max- and sum-allreduces, P V by GEMM
@settings(max_examples=6, deadline=None)
@given(group=st.integers(1, 3), blocks=st.integers(1, 3), heads=st.sampled_from([1, 2, 3]),
       extra_cols=st.integers(0, 2), kv_group=st.sampled_from([1, 3]), seq=st.integers(1, 13),
       causal=st.booleans(), dtype=st.sampled_from(["float32", "float16"]),
       seed=st.integers(0, 10))
def test_gemm_attention_matches_reference(group, blocks, heads, extra_cols, kv_group, seq,
                                          causal, dtype, seed):
    """Grids with g = cols // heads dividing the rows (the layout gemm needs)."""
    if heads % kv_group:
        kv_group = 1
    rows, cols = group * blocks, heads * group + extra_cols
    if cols // heads != group:          # extra columns must not widen the head groups
        cols = heads * group
    sk = seq if causal else seq + seed % 3
    Q, K, V = _inputs(heads, heads // kv_group, seq, sk, 8, seed)
    cfg = wse.WSE2.with_grid(rows=rows, cols=cols)
    O, report = mesh_attention(Q, K, V, cfg, causal=causal, dtype=dtype, algorithm="gemm")
    ref = reference.attention(Q, K, V, causal=causal)
    if dtype == "float32":
        np.testing.assert_allclose(O, ref, rtol=1e-4, atol=1e-5)
    else:
        assert np.abs(O - ref).max() / np.abs(ref).max() < 2e-2
    assert report.extra["attention"]["algorithm"] == "gemm"
    assert [p["name"] for p in report.phases] == ["k_move", "scores", "softmax", "pv"]


def test_gemm_scores_and_pv_are_the_gemm_kernel_side_by_side_per_head():
    """The scores and P V phases are kernels.gemm SUMMA runs on each head's R x g
    columns at once: their cycles are one such GEMM's, their traffic H times it."""
    import kernels
    Q, K, V = _inputs(2, 2, 8, 8, 8, 4)
    cfg = wse.WSE2.with_grid(rows=4, cols=4)
    _, report = mesh_attention(Q, K, V, cfg, causal=True, algorithm="gemm")
    scores = next(ph for ph in report.phases if ph["name"] == "scores")
    p = GemmAttentionPlan(4, 2, 4, 2, 2, "float32", True)
    A = np.ones((4 * p.st_q, 4 * p.kt))
    B = np.ones((4 * p.st_k, 4 * p.kt))
    _, one = kernels.gemm(A, B, wse.WSE2.with_grid(rows=4, cols=2), algorithm="summa",
                          dtype="float32", transpose_b=True)
    assert scores["cycles"] == one.cycles
    assert scores["wavelet_hops"] == 2 * one.wavelet_hops


def test_gemm_attention_rows_of_one_head_share_a_max_and_sum_allreduce():
    """The same problem on 1 column (no allreduce) and on 2 and 4 columns per head
    (segmented max- and sum-allreduces along X) gives the same output."""
    Q, K, V = _inputs(1, 1, 8, 8, 8, 5)
    outs = [mesh_attention(Q, K, V, wse.WSE2.with_grid(rows=4, cols=c), algorithm="gemm")[0]
            for c in (1, 2, 4)]
    for O in outs[1:]:
        np.testing.assert_allclose(O, outs[0], rtol=1e-5, atol=1e-6)


def test_auto_picks_gemm_where_it_applies_and_ring_elsewhere():
    Q, K, V = _inputs(2, 2, 6, 6, 8, 2)
    _, r = mesh_attention(Q, K, V, wse.WSE2.with_grid(rows=4, cols=4))
    assert r.extra["attention"]["algorithm"] == "gemm"
    _, r = mesh_attention(Q, K, V, wse.WSE2.with_grid(rows=3, cols=4))    # g = 2 does not divide 3
    assert r.extra["attention"]["algorithm"] == "ring"


def test_gemm_attention_longest_sequence_fits_and_one_more_row_overflows():
    cfg = wse.WSE2.with_grid(rows=4, cols=4).replace(sram_bytes=4096)
    layout = head_layout(2, 8, 4)
    longest = longest_gemm_sequence(cfg, layout, "float32")
    assert longest > 0 and longest % 4 == 0
    Q, K, V = _inputs(2, 2, longest, longest, 8, 1)
    O, _ = mesh_attention(Q, K, V, cfg, algorithm="gemm")
    np.testing.assert_allclose(O, reference.attention(Q, K, V), rtol=1e-4, atol=1e-5)
    Q, K, V = _inputs(2, 2, longest + 1, longest + 1, 8, 1)
    with pytest.raises(wse.SramOverflowError, match=f"longest sequence that fits this grid is "
                                                    f"{longest} tokens"):
        mesh_attention(Q, K, V, cfg, algorithm="gemm")


def test_gemm_attention_bad_input_errors():
    Q, K, V = _inputs(2, 2, 6, 6, 8)
    with pytest.raises(wse.ConfigError, match="divide"):
        mesh_attention(Q, K, V, wse.WSE2.with_grid(rows=3, cols=4), algorithm="gemm")
    with pytest.raises(wse.ConfigError, match="unknown attention algorithm"):
        mesh_attention(Q, K, V, wse.WSE2.with_grid(rows=4, cols=4), algorithm="flash")


@pytest.mark.parametrize("rows,heads,group,hd,st_k,extra,dtype", [
    (4, 2, 2, 8, 2, 0, "float32"), (6, 2, 3, 12, 2, 1, "float32"), (8, 1, 1, 8, 2, 0, "float32"),
    (8, 2, 4, 16, 3, 0, "float16"), (12, 1, 3, 24, 2, 0, "float32"),
    (33, 1, 1, 8, 7, 0, "float16"), (1, 1, 1, 8, 2, 0, "float32")])
def test_k_move_leaves_the_b_tiles_the_scores_gemm_needs(rows, heads, group, hd, st_k, extra,
                                                         dtype):
    """move_keys leaves on every PE exactly the B block of the scores GEMM that the
    host's placement (_feature_columns, _key_order) gives, value by value; its
    wavelet-hops are the element-hops of k_move_hops; each run is at least its
    first-principles lower bound."""
    cols = heads * group + extra
    layout = head_layout(heads, hd, cols)
    cfg = wse.WSE2.with_grid(rows=rows, cols=cols)
    p = GemmAttentionPlan(rows, group, layout.width, st_k, st_k, dtype, True)
    rng = np.random.default_rng(rows + cols)
    K = rng.standard_normal((rows * st_k, heads * hd))
    K = K.astype(np.float16 if dtype == "float16" else np.float32).astype(np.float64)
    k_tiles = place_sequence(K, layout, rows, st_k)
    tiles, report = move_keys(cfg, layout, p, k_tiles)
    feat, keys = _feature_columns(p), _key_order(p)
    valid = feat >= 0
    for h, (lo, hi) in enumerate(layout.segments):
        expected = np.zeros((group * p.nt, rows * p.kt))
        Kh = tiles_to_matrix(k_tiles[:, lo:hi + 1], layout.width)
        expected[:, valid] = Kh[keys][:, feat[valid]]
        np.testing.assert_array_equal(b_tiles_to_matrix(tiles[:, lo:hi + 1], p), expected)
    assert not tiles[:, heads * group:].any()            # idle columns hold nothing
    moved, hops = k_move_hops(p, rows * st_k)
    assert report.wavelet_hops == heads * hops
    assert (moved > 0) == (report.wavelet_hops > 0)
    bounds = k_move_lower_bounds(cfg, p)
    for phase in report.phases:
        assert phase["cycles"] >= bounds[phase["name"]]


def test_gemm_attention_charges_the_k_move():
    """The k_move phase is move_keys' run on the same tiles, and the total adds it."""
    Q, K, V = _inputs(2, 2, 8, 8, 8, 4)
    cfg = wse.WSE2.with_grid(rows=4, cols=4)
    _, report = mesh_attention(Q, K, V, cfg, causal=True, algorithm="gemm")
    layout = head_layout(2, 8, 4)
    p = GemmAttentionPlan(4, 2, layout.width, 2, 2, "float32", True)
    k_tiles = place_sequence(K.transpose(1, 0, 2).reshape(8, -1), layout, 4, 2)
    _, move = move_keys(cfg, layout, p, k_tiles)
    phase = report.phases[0]
    assert phase["name"] == "k_move" and phase["cycles"] == move.cycles > 0
    assert phase["wavelet_hops"] == move.wavelet_hops == 2 * k_move_hops(p, 8)[1]
    assert report.cycles == sum(ph["cycles"] for ph in report.phases)
