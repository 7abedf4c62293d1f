"""Model configs, synthetic weights and the float64 references, checked against
properties and hand-worked values (not against themselves)."""
import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from kernels import models, reference as ref
from wse.errors import ConfigError


# --------------------------------------------------------------------- models
@pytest.mark.parametrize("name,d,heads,kv,ff,layers", [
    ("gpt2-small", 768, 12, 12, 3072, 12),
    ("llama3-8b", 4096, 32, 8, 14336, 32),
    ("llama2-13b", 5120, 40, 40, 13824, 40),
    ("llama3-70b", 8192, 64, 8, 28672, 80),
])
def test_presets_have_the_published_dimensions(name, d, heads, kv, ff, layers):
    m = models.preset(name)
    assert (m.d_model, m.n_heads, m.n_kv_heads, m.d_ff, m.n_layers) == (d, heads, kv, ff, layers)
    assert m.head_dim == 128 or name == "gpt2-small"


@pytest.mark.parametrize("name,billions,tied", [
    ("gpt2-small", 0.124, True), ("llama3-8b", 8.03, False),
    ("llama2-13b", 13.0, False), ("llama3-70b", 70.6, False),
])
def test_parameter_counts_match_the_published_model_sizes(name, billions, tied):
    m = models.preset(name)
    embeddings = m.vocab_size * m.d_model * (1 if tied else 2)
    if m.family == "gpt2":
        embeddings += m.max_seq_len * m.d_model
    total = m.n_layers * m.layer_params() + embeddings
    assert abs(total / 1e9 - billions) / billions < 0.01


def test_tiny_preset_is_a_small_llama():
    m = models.preset("tiny")
    assert (m.family, m.d_model, m.n_heads, m.n_kv_heads, m.d_ff, m.n_layers) == \
        ("llama", 64, 4, 2, 128, 2)


def test_unknown_preset_is_a_config_error():
    with pytest.raises(ConfigError, match="gpt5"):
        models.preset("gpt5")


@pytest.mark.parametrize("changes", [
    {"d_model": 65}, {"n_kv_heads": 3}, {"family": "mamba"}, {"n_layers": 0},
])
def test_inconsistent_configs_are_rejected(changes):
    with pytest.raises(ConfigError):
        models.preset("tiny").replace(**changes)


def test_random_weights_are_seeded_float32_with_fan_in_scale():
    m = models.preset("gpt2-small")
    a = models.random_weights(m, seed=7, n_layers=1)
    b = models.random_weights(m, seed=7, n_layers=1)
    c = models.random_weights(m, seed=8, n_layers=1)
    assert a.n_layers == 1 and a.layers[0].wq.dtype == np.float32
    np.testing.assert_array_equal(a.layers[0].w_up, b.layers[0].w_up)
    assert not np.array_equal(a.layers[0].w_up, c.layers[0].w_up)
    lw = a.layers[0]
    assert lw.wq.shape == (768, 768) and lw.w_down.shape == (3072, 768)
    assert math.isclose(lw.w_up.std(), 1 / math.sqrt(768), rel_tol=0.02)
    assert math.isclose(lw.w_down.std(), 1 / math.sqrt(3072), rel_tol=0.02)
    assert lw.bq is not None and lw.w_gate is None
    assert a.position_embedding.shape == (1024, 768)
    llama = models.random_weights(models.preset("tiny"))
    assert llama.n_layers == 2 and llama.layers[0].bq is None
    assert llama.layers[0].wk.shape == (64, 32) and llama.layers[0].w_gate.shape == (64, 128)


# ------------------------------------------------------------- linear algebra
def test_matmul_and_gemv_match_hand_values():
    A = [[1, 2], [3, 4]]
    B = [[5, 6], [7, 8]]
    np.testing.assert_array_equal(ref.matmul(A, B), [[19, 22], [43, 50]])
    np.testing.assert_array_equal(ref.matmul(A, B, transpose_b=True), [[17, 23], [39, 53]])
    np.testing.assert_array_equal(ref.gemv(A, [1, -1]), [-1, -1])
    assert ref.matmul(np.float32([[1]]), [[2]]).dtype == np.float64
    with pytest.raises(ConfigError):
        ref.matmul(np.ones((2, 3)), np.ones((2, 3)))


# ------------------------------------------------------------ mesh collectives
MESH = np.arange(2 * 3 * 2, dtype=float).reshape(2, 3, 2)   # rows=2, cols=3, B=2


def test_reduce_along_each_axis():
    np.testing.assert_array_equal(ref.reduce(MESH, "x"), [[6, 9], [24, 27]])
    np.testing.assert_array_equal(ref.reduce(MESH, "y"), [[6, 8], [10, 12], [14, 16]])
    np.testing.assert_array_equal(ref.reduce(MESH, "xy"), [30, 36])
    np.testing.assert_array_equal(ref.reduce(MESH, "x", op="max"), [[4, 5], [10, 11]])


def test_allreduce_puts_the_reduction_on_every_pe():
    out = ref.allreduce(MESH, "x")
    assert out.shape == MESH.shape
    np.testing.assert_array_equal(out[1, 2], [24, 27])
    np.testing.assert_array_equal(ref.allreduce(MESH, "xy")[0, 1], [30, 36])


def test_broadcast_roots_are_column_row_and_pe():
    np.testing.assert_array_equal(ref.broadcast(MESH, "x", root=2)[1, 0], MESH[1, 2])
    np.testing.assert_array_equal(ref.broadcast(MESH, "y", root=1)[0, 2], MESH[1, 2])
    np.testing.assert_array_equal(ref.broadcast(MESH, "xy", root=(2, 0))[1, 1], MESH[0, 2])
    with pytest.raises(ConfigError):
        ref.broadcast(MESH, "x", root=3)
    with pytest.raises(ConfigError):
        ref.reduce(MESH, "z")


# ----------------------------------------------------------------- layer math
@settings(max_examples=30, deadline=None)
@given(st.lists(st.floats(-50, 50), min_size=1, max_size=12), st.floats(-100, 100))
def test_softmax_sums_to_one_and_ignores_shifts(values, shift):
    p = ref.softmax(values)
    assert math.isclose(p.sum(), 1.0, rel_tol=1e-12)
    np.testing.assert_allclose(ref.softmax(np.array(values) + shift), p, rtol=1e-9, atol=1e-15)


def test_norms():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5, 16)) * 3 + 1
    y = ref.rmsnorm(x, np.ones(16), eps=0.0)
    np.testing.assert_allclose(np.sqrt(np.mean(y ** 2, axis=-1)), 1.0)
    z = ref.layernorm(x, np.full(16, 2.0), np.full(16, 0.5), eps=0.0)
    np.testing.assert_allclose(z.mean(axis=-1), 0.5)
    np.testing.assert_allclose(z.std(axis=-1), 2.0)


def test_activations_at_known_points():
    assert ref.gelu(0.0) == 0.0
    assert math.isclose(ref.gelu(1.0), 0.8411919906082768, rel_tol=1e-12)  # tanh form
    assert math.isclose(ref.silu(1.0), 1 / (1 + math.exp(-1)), rel_tol=1e-12)
    assert math.isclose(ref.gelu(-10.0), 0.0, abs_tol=1e-12)


def test_rope_rotates_pairs_and_keeps_only_relative_position():
    rng = np.random.default_rng(1)
    q, k = rng.standard_normal(8), rng.standard_normal(8)
    np.testing.assert_array_equal(ref.rope(q[None], [0]), q[None])        # position 0: identity
    rq = ref.rope(np.stack([q, q]), [3, 10])
    np.testing.assert_allclose(np.linalg.norm(rq, axis=-1), np.linalg.norm(q))
    # q at m, k at n: the score depends on m - n only
    s1 = ref.rope(q[None], [7])[0] @ ref.rope(k[None], [2])[0]
    s2 = ref.rope(q[None], [15])[0] @ ref.rope(k[None], [10])[0]
    assert math.isclose(s1, s2, rel_tol=1e-10)
    # pairing is (i, i + hd/2): a unit vector in slot 0 moves into slot 4
    e0 = np.eye(8)[0]
    out = ref.rope(e0[None], [1], theta=10000.0)[0]
    np.testing.assert_allclose(out[[0, 4]], [math.cos(1), math.sin(1)])


def test_attention_hand_cases():
    V = np.array([[1.0, 0.0], [0.0, 1.0], [2.0, 2.0]])
    K = np.zeros((3, 2))
    Q = np.zeros((3, 2))
    causal = ref.attention(Q, K, V, causal=True)
    np.testing.assert_allclose(causal[0], V[0])                   # sees only itself
    np.testing.assert_allclose(causal[2], V.mean(axis=0))         # equal scores: mean
    full = ref.attention(Q, K, V, causal=False)
    np.testing.assert_allclose(full[0], V.mean(axis=0))
    # decode: one query against three keys sees them all
    np.testing.assert_allclose(ref.attention(Q[:1], K, V)[0], V.mean(axis=0))


def test_grouped_query_attention_equals_repeated_kv_heads():
    rng = np.random.default_rng(2)
    Q = rng.standard_normal((4, 5, 8))
    K, V = rng.standard_normal((2, 5, 8)), rng.standard_normal((2, 5, 8))
    gqa = ref.attention(Q, K, V)
    mha = ref.attention(Q, np.repeat(K, 2, axis=0), np.repeat(V, 2, axis=0))
    np.testing.assert_allclose(gqa, mha)


# ---------------------------------------------------------------- transformer
@pytest.mark.parametrize("name", ["tiny", "tiny-gpt2"])
def test_prefill_is_causal(name):
    """Changing a later position leaves earlier outputs untouched."""
    m = models.preset(name)
    w = models.random_weights(m, seed=4)
    x = np.random.default_rng(4).standard_normal((6, m.d_model))
    y = x.copy()
    y[4:] += 1.0
    a, _ = ref.prefill(m, w, x)
    b, _ = ref.prefill(m, w, y)
    np.testing.assert_allclose(a[:4], b[:4], rtol=1e-12, atol=1e-12)
    assert not np.allclose(a[4:], b[4:])


@pytest.mark.parametrize("name", ["tiny", "tiny-gpt2"])
def test_decode_with_cache_equals_a_longer_prefill(name):
    m = models.preset(name)
    w = models.random_weights(m, seed=5)
    x = np.random.default_rng(5).standard_normal((7, m.d_model))
    full, full_cache = ref.prefill(m, w, x)
    out, state = ref.prefill(m, w, x[:5])
    for pos in (5, 6):
        step, state = ref.decode_step(m, w, state, x[pos])
        np.testing.assert_allclose(step, full[pos], rtol=1e-10, atol=1e-10)
    assert state.length == 7
    for k, fk in zip(state.keys, full_cache.keys):
        np.testing.assert_allclose(k, fk, rtol=1e-10, atol=1e-10)


def test_layer_is_a_residual_block_with_the_documented_pieces():
    """Rebuild one llama layer from the reference's own primitives, by hand."""
    m = models.preset("tiny")
    lw = models.random_weights(m, seed=6).layers[0]
    x = np.random.default_rng(6).standard_normal((3, m.d_model))
    pos = np.arange(3)
    h = ref.rmsnorm(x, lw.attn_norm, m.norm_eps)
    q = ref.rope((h @ lw.wq).reshape(3, 4, 16).transpose(1, 0, 2), pos)
    k = ref.rope((h @ lw.wk).reshape(3, 2, 16).transpose(1, 0, 2), pos)
    v = (h @ lw.wv).reshape(3, 2, 16).transpose(1, 0, 2)
    a = ref.attention(q, k, v).transpose(1, 0, 2).reshape(3, 64)
    x1 = x + a @ lw.wo
    h1 = ref.rmsnorm(x1, lw.mlp_norm, m.norm_eps)
    expected = x1 + (ref.silu(h1 @ lw.w_gate) * (h1 @ lw.w_up)) @ lw.w_down
    np.testing.assert_allclose(ref.layer(m, lw, x, pos), expected, rtol=1e-12, atol=1e-12)


def test_reference_rejects_wrong_shapes_and_positions():
    m = models.preset("tiny")
    w = models.random_weights(m, n_layers=1)
    with pytest.raises(ConfigError):
        ref.prefill(m, w, np.zeros((4, 32)))
    with pytest.raises(ConfigError):
        ref.prefill(m, w, np.zeros((m.max_seq_len + 1, 64)))
