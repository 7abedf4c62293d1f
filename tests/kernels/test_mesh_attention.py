"""kernels.mesh_attention (kernels.attention): ring and GEMM attention on the
mesh against the float64 reference."""
import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import wse
from kernels.layers import head_layout, place_sequence, tiles_to_matrix
from kernels.mesh_attention import (GemmAttentionPlan, _live_slots, _softmax_program,
                                    attention as mesh_attention, longest_gemm_sequence)
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
# algorithm="gemm": scores by GEMM-T, softmax by max- and sum-allreduces, P V by GEMM
@settings(max_examples=8, deadline=None)
@given(group=st.integers(1, 3), rows=st.integers(1, 7), heads=st.sampled_from([1, 2, 3]),
       extra_cols=st.integers(0, 2), kv_group=st.sampled_from([1, 3]), seq=st.integers(1, 13),
       causal=st.booleans(), dtype=st.sampled_from(["float32", "float16"]),
       seed=st.integers(0, 10))
def test_gemm_attention_matches_reference(group, rows, heads, extra_cols, kv_group, seq,
                                          causal, dtype, seed):
    """Any grid: g = cols // heads need not divide the rows (a column then
    keeps one key block fewer, its last score slot masked)."""
    if heads % kv_group:
        kv_group = 1
    cols = heads * group + extra_cols
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
    assert [p["name"] for p in report.phases] == ["scores", "softmax", "pv"]


def test_gemm_scores_are_gemmt_side_by_side_per_head_with_masked_blocks_skipped():
    """The scores phase is a kernels.gemm GEMM-T run on each head's R x g
    columns at once (its cycles one such run's, its traffic H times it), Q
    and K used where they lie, the causal blocks above the diagonal skipped:
    R(R+1)/2 of the R^2 score blocks are computed. The P V phase is SUMMA
    with K cut into the R key blocks, row y multiplying blocks 0 .. y."""
    import kernels
    Q, K, V = _inputs(2, 2, 8, 8, 8, 4)
    cfg = wse.WSE2.with_grid(rows=4, cols=4)
    _, report = mesh_attention(Q, K, V, cfg, causal=True, algorithm="gemm")
    scores = next(ph for ph in report.phases if ph["name"] == "scores")
    sub = wse.WSE2.with_grid(rows=4, cols=2)
    skip = np.triu(np.ones((4, 4), bool), 1)
    _, one = kernels.gemm(np.ones((8, 8)), np.ones((8, 8)), sub, algorithm="gemmt",
                          dtype="float32", transpose_b=True, skip_blocks=skip)
    assert scores["cycles"] == one.cycles
    assert scores["wavelet_hops"] == 2 * one.wavelet_hops
    assert report.extra["gemm_attention"]["score_blocks_computed"] == 10
    pv = next(ph for ph in report.phases if ph["name"] == "pv")
    _, pv_one = kernels.gemm(np.ones((8, 8)), np.ones((8, 8)), sub, algorithm="summa",
                             dtype="float32", k_split=4, a_lower=True)
    assert pv["cycles"] == pv_one.cycles
    assert pv["flops"] == 2 * pv_one.flops                    # 10 of the 16 key blocks


def test_gemm_softmax_exponentiates_only_live_score_blocks():
    """A PE's live slots (blocks it may see) form a prefix of its slots;
    causal: PE (x, y) keeps key blocks x, x+g, ... and sees those <= y. The
    causal softmax does fewer exp passes than the full one on the same
    grid, by the skipped blocks."""
    p = GemmAttentionPlan(6, 2, 4, 3, 3, "float32", True)
    live = _live_slots(p, 18)
    y, x = np.arange(6)[:, None], np.arange(2)[None, :]
    assert (live == np.where(y >= x, (y - x) // 2 + 1, 0)).all()
    full = _live_slots(GemmAttentionPlan(6, 2, 4, 3, 3, "float32", False), 18)
    assert (full == 3).all()
    cfg = wse.WSE2.with_grid(rows=6, cols=2)
    layout = head_layout(1, 8, 2)
    compute = {}
    for causal in (True, False):
        plan = GemmAttentionPlan(6, 2, layout.width, 3, 3, "float32", causal)
        scores = np.zeros((6, 2, plan.st_q * plan.nt))
        prog, _ = _softmax_program(cfg, layout, plan, scores, 18, 1.0)
        compute[causal] = int(prog.run().report.compute_cycles.sum())
    assert compute[True] < compute[False]


def test_gemm_attention_rows_of_one_head_share_a_max_and_sum_allreduce():
    """The same problem on 1 column (no allreduce) and on 2 and 4 columns per head
    (segmented max- and sum-allreduces along X) gives the same output."""
    Q, K, V = _inputs(1, 1, 8, 8, 8, 5)
    outs = [mesh_attention(Q, K, V, wse.WSE2.with_grid(rows=4, cols=c), algorithm="gemm")[0]
            for c in (1, 2, 4)]
    for O in outs[1:]:
        np.testing.assert_allclose(O, outs[0], rtol=1e-5, atol=1e-6)


def test_auto_picks_gemm_where_its_scores_fit_and_ring_elsewhere():
    Q, K, V = _inputs(2, 2, 6, 6, 8, 2)
    _, r = mesh_attention(Q, K, V, wse.WSE2.with_grid(rows=4, cols=4))
    assert r.extra["attention"]["algorithm"] == "gemm"
    _, r = mesh_attention(Q, K, V, wse.WSE2.with_grid(rows=3, cols=4))    # g = 2, R = 3
    assert r.extra["attention"]["algorithm"] == "gemm"
    # 64 positions on 8 rows: gemm keeps 8 x 64 scores per PE (4,672 bytes in
    # all), the ring 8 x 8 (2,480 bytes)
    small = wse.WSE2.with_grid(rows=8, cols=2).replace(sram_bytes=4096)
    Q, K, V = _inputs(2, 2, 64, 64, 8, 2)
    _, r = mesh_attention(Q, K, V, small)
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
    with pytest.raises(wse.ConfigError, match="unknown attention algorithm"):
        mesh_attention(Q, K, V, wse.WSE2.with_grid(rows=4, cols=4), algorithm="flash")
