"""kernels.attention: ring attention on the mesh against the float64 reference."""
import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import wse
from kernels.attention import attention as mesh_attention
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
    O, report = mesh_attention(Q, K, V, cfg, causal=causal)
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
        O, r = mesh_attention(Q, K, V, cfg, causal=False)
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
