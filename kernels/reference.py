"""Float64 NumPy references: slow, simple, obviously right.

Every fast path in the project (wafer kernels, the sharded GPU model) is
tested against these. They favour plain loops and the textbook formula over
speed; all inputs are converted to float64 and all outputs are float64.

Conventions shared with the kernels:
  * Mesh data has shape (rows, cols, B): one length-B vector per PE, PE (x, y)
    at [y, x] (x is the column, y the row). along="x" means among the PEs of
    each row, "y" among the PEs of each column, "xy" the whole grid.
  * Linear layers compute x @ W with W of shape (in, out).
  * RoPE uses the "rotate half" pairing (element i with element i + hd/2),
    as Hugging Face's LLaMA does, with frequency theta^(-2i/hd).
  * GELU is the tanh approximation (GPT-2's):
    0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))).
  * Attention scales scores by 1/sqrt(head_dim). With causal=True and fewer
    queries than keys, the queries are the last positions (decode).
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from wse.errors import ConfigError

from .models import KVCache, LayerWeights, ModelConfig, ModelWeights

_AXES = {"x": (1,), "y": (0,), "xy": (0, 1)}
_OPS = {"sum": np.sum, "max": np.max, "min": np.min}


def _f64(a) -> np.ndarray:
    return np.asarray(a, dtype=np.float64)


# ------------------------------------------------------------------ linear algebra
def matmul(A, B, transpose_b: bool = False) -> np.ndarray:
    """C = A @ B, or A @ B.T with transpose_b. C[i, j] = sum_k A[i, k] B[k, j]."""
    A, B = _f64(A), _f64(B)
    if transpose_b:
        B = B.T
    if A.ndim != 2 or B.ndim != 2 or A.shape[1] != B.shape[0]:
        raise ConfigError(f"matmul: cannot multiply {A.shape} by {B.shape}")
    return np.einsum("ik,kj->ij", A, B)


def gemv(W, x) -> np.ndarray:
    """y = W @ x for W (m, n) and x (n,) (or (n, B): B vectors at once)."""
    W, x = _f64(W), _f64(x)
    if W.ndim != 2 or x.shape[0] != W.shape[1]:
        raise ConfigError(f"gemv: cannot apply a {W.shape} matrix to a {x.shape} vector")
    return np.einsum("ij,j...->i...", W, x)


# ---------------------------------------------------------------- mesh collectives
def _check_mesh(x, along: str, op: str = "sum") -> np.ndarray:
    x = _f64(x)
    if x.ndim != 3:
        raise ConfigError(f"expected mesh data of shape (rows, cols, B), got {x.shape}")
    if along not in _AXES:
        raise ConfigError(f"along = {along!r}: expected 'x', 'y' or 'xy'")
    if op not in _OPS:
        raise ConfigError(f"op = {op!r}: expected one of {', '.join(_OPS)}")
    return x


def reduce(x, along: str = "x", op: str = "sum") -> np.ndarray:
    """Reduce the PEs' vectors: along "x" -> (rows, B), "y" -> (cols, B), "xy" -> (B,)."""
    x = _check_mesh(x, along, op)
    return _OPS[op](x, axis=_AXES[along])


def allreduce(x, along: str = "x", op: str = "sum") -> np.ndarray:
    """Every PE gets the reduction of its row ("x"), column ("y") or grid ("xy").
    Returns (rows, cols, B)."""
    x = _check_mesh(x, along, op)
    reduced = _OPS[op](x, axis=_AXES[along], keepdims=True)
    return np.broadcast_to(reduced, x.shape).copy()


def broadcast(x, along: str = "x", root=0) -> np.ndarray:
    """Every PE gets the root's vector: along "x" root is a column index (each
    row copies x[row, root]); along "y" a row index; along "xy" an (x, y) PE."""
    x = _check_mesh(x, along)
    rows, cols, _ = x.shape
    out = np.empty_like(x)
    if along == "x":
        if not 0 <= root < cols:
            raise ConfigError(f"broadcast root column {root} outside 0..{cols - 1}")
        for r in range(rows):
            for c in range(cols):
                out[r, c] = x[r, root]
    elif along == "y":
        if not 0 <= root < rows:
            raise ConfigError(f"broadcast root row {root} outside 0..{rows - 1}")
        for r in range(rows):
            for c in range(cols):
                out[r, c] = x[root, c]
    else:
        rx, ry = root
        if not (0 <= rx < cols and 0 <= ry < rows):
            raise ConfigError(f"broadcast root PE {root} outside the {cols} x {rows} grid")
        out[:, :] = x[ry, rx]
    return out


def shift(x, along: str = "x", k: int = 1) -> np.ndarray:
    """Every PE gets the vector of the PE k places before it on its row ("x")
    or column ("y"), wrapping around."""
    x = _check_mesh(x, along)
    if along == "xy":
        raise ConfigError("shift moves along a row or a column: along must be 'x' or 'y'")
    return np.roll(x, k, axis=1 if along == "x" else 0)


# -------------------------------------------------------------------- layer pieces
def softmax(x, axis: int = -1) -> np.ndarray:
    """exp(x - max) / sum(exp(x - max)) along `axis` (fully masked rows are not allowed)."""
    x = _f64(x)
    shifted = np.exp(x - np.max(x, axis=axis, keepdims=True))
    return shifted / np.sum(shifted, axis=axis, keepdims=True)


def rmsnorm(x, weight, eps: float = 1e-5) -> np.ndarray:
    """x / sqrt(mean(x^2) + eps) * weight, over the last axis."""
    x = _f64(x)
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * _f64(weight)


def layernorm(x, weight, bias=None, eps: float = 1e-5) -> np.ndarray:
    """(x - mean) / sqrt(var + eps) * weight + bias, over the last axis (biased variance)."""
    x = _f64(x)
    mean = np.mean(x, axis=-1, keepdims=True)
    var = np.mean((x - mean) ** 2, axis=-1, keepdims=True)
    out = (x - mean) / np.sqrt(var + eps) * _f64(weight)
    return out if bias is None else out + _f64(bias)


def rope(x, positions, theta: float = 10000.0) -> np.ndarray:
    """Rotate each (x[i], x[i + hd/2]) pair of x (..., seq, hd) by angle
    position * theta^(-2i/hd)."""
    x = _f64(x)
    hd = x.shape[-1]
    if hd % 2:
        raise ConfigError(f"rope needs an even head dimension, got {hd}")
    half = hd // 2
    positions = _f64(positions)
    if positions.shape != (x.shape[-2],):
        raise ConfigError(f"rope: {positions.shape} positions for {x.shape[-2]} rows")
    out = np.empty_like(x)
    for s, pos in enumerate(positions):
        for i in range(half):
            angle = pos * theta ** (-2.0 * i / hd)
            c, sn = np.cos(angle), np.sin(angle)
            a, b = x[..., s, i], x[..., s, i + half]
            out[..., s, i] = a * c - b * sn
            out[..., s, i + half] = a * sn + b * c
    return out


def gelu(x) -> np.ndarray:
    """GELU, tanh approximation (as GPT-2)."""
    x = _f64(x)
    return 0.5 * x * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x ** 3)))


def silu(x) -> np.ndarray:
    """x * sigmoid(x)."""
    x = _f64(x)
    return x / (1.0 + np.exp(-x))


def attention(Q, K, V, causal: bool = True) -> np.ndarray:
    """softmax(Q K^T / sqrt(d) [+ causal mask]) V.

    Q: (sq, d) or (heads, sq, d); K, V: (sk, d) or (kv_heads, sk, d) with
    heads a multiple of kv_heads (grouped-query attention: query head h reads
    KV head h // (heads // kv_heads)). Causal: query i sits at position
    sk - sq + i and sees keys 0..sk - sq + i.
    """
    Q, K, V = _f64(Q), _f64(K), _f64(V)
    single = Q.ndim == 2
    if single:
        Q, K, V = Q[None], K[None], V[None]
    heads, sq, d = Q.shape
    kv_heads, sk, _ = K.shape
    if K.shape != V.shape[:2] + (d,) or heads % kv_heads or (causal and sq > sk):
        raise ConfigError(f"attention: Q {Q.shape}, K {K.shape}, V {V.shape} do not fit")
    group = heads // kv_heads
    out = np.zeros((heads, sq, V.shape[-1]))
    for h in range(heads):
        k, v = K[h // group], V[h // group]
        for i in range(sq):
            visible = sk - sq + i + 1 if causal else sk
            scores = np.array([np.dot(Q[h, i], k[j]) for j in range(visible)]) / np.sqrt(d)
            weights = softmax(scores)
            out[h, i] = weights @ v[:visible]
    return out[0] if single else out


# ------------------------------------------------------------------------- layers
def _norm(model: ModelConfig, x, weight, bias) -> np.ndarray:
    if model.family == "gpt2":
        return layernorm(x, weight, bias, model.norm_eps)
    return rmsnorm(x, weight, model.norm_eps)


def _linear(x, w, b) -> np.ndarray:
    y = matmul(x, w)
    return y if b is None else y + _f64(b)


def _heads(x, n: int) -> np.ndarray:
    """(seq, n*hd) -> (n, seq, hd)."""
    seq, width = x.shape
    return x.reshape(seq, n, width // n).transpose(1, 0, 2)


def layer_with_kv(model: ModelConfig, lw: LayerWeights, x, positions,
                  past_keys=None, past_values=None):
    """One decoder layer on x (seq, d_model) at the given absolute positions,
    attending to past keys/values (kv_heads, past, hd) plus its own.
    Returns (out, keys, values) with keys/values covering past + new."""
    x = _f64(x)
    positions = np.asarray(positions)
    h = _norm(model, x, lw.attn_norm, lw.attn_norm_bias)
    q = _heads(_linear(h, lw.wq, lw.bq), model.n_heads)
    k = _heads(_linear(h, lw.wk, lw.bk), model.n_kv_heads)
    v = _heads(_linear(h, lw.wv, lw.bv), model.n_kv_heads)
    if model.family == "llama":
        q = rope(q, positions, model.rope_theta)
        k = rope(k, positions, model.rope_theta)
    if past_keys is not None:
        k = np.concatenate([_f64(past_keys), k], axis=1)
        v = np.concatenate([_f64(past_values), v], axis=1)
    a = attention(q, k, v, causal=True)                       # (H, seq, hd)
    a = a.transpose(1, 0, 2).reshape(x.shape[0], -1)           # (seq, H*hd)
    x = x + _linear(a, lw.wo, lw.bo)
    h = _norm(model, x, lw.mlp_norm, lw.mlp_norm_bias)
    if model.gated:
        act = silu(matmul(h, lw.w_gate)) * matmul(h, lw.w_up)
    else:
        act = gelu(_linear(h, lw.w_up, lw.b_up))
    out = x + _linear(act, lw.w_down, lw.b_down)
    return out, k, v


def layer(model: ModelConfig, layer_weights: LayerWeights, x, positions) -> np.ndarray:
    """One decoder layer, causal self-attention over x (seq, d_model) alone."""
    return layer_with_kv(model, layer_weights, x, positions)[0]


class PrefillResult(NamedTuple):
    hidden: np.ndarray
    """(seq, d_model) hidden states after the last layer."""
    cache: KVCache


def _check_input(model: ModelConfig, weights: ModelWeights, x, start: int) -> np.ndarray:
    x = _f64(x)
    if x.ndim != 2 or x.shape[1] != model.d_model:
        raise ConfigError(f"expected hidden states (seq, {model.d_model}), got {x.shape}")
    if start + x.shape[0] > model.max_seq_len:
        raise ConfigError(f"{model.name}: positions up to {start + x.shape[0]} exceed "
                          f"max_seq_len {model.max_seq_len}")
    if weights.n_layers < 1:
        raise ConfigError("the weights hold no layers")
    return x


def prefill(model: ModelConfig, weights: ModelWeights, x) -> PrefillResult:
    """Run every layer of `weights` over x (seq, d_model), positions 0..seq-1.
    GPT-2 adds its learned position embeddings to x first.
    Returns (hidden, cache)."""
    x = _check_input(model, weights, x, 0)
    positions = np.arange(x.shape[0])
    if model.family == "gpt2":
        x = x + _f64(weights.position_embedding[positions])
    keys, values = [], []
    for lw in weights.layers:
        x, k, v = layer_with_kv(model, lw, x, positions)
        keys.append(k)
        values.append(v)
    return PrefillResult(x, KVCache(tuple(keys), tuple(values), x[-1].copy()))


def decode_step(model: ModelConfig, weights: ModelWeights, state: KVCache, x=None):
    """Process one new position with the KV cache. x: (d_model,) input hidden
    state (default: state.last_hidden). Returns (out (d_model,), new state)."""
    if state.n_layers != weights.n_layers:
        raise ConfigError(f"the cache has {state.n_layers} layers, the weights {weights.n_layers}")
    x = state.last_hidden if x is None else x
    pos = state.length
    h = _check_input(model, weights, np.reshape(x, (1, -1)), pos)
    if model.family == "gpt2":
        h = h + _f64(weights.position_embedding[pos])
    keys, values = [], []
    for lw, past_k, past_v in zip(weights.layers, state.keys, state.values):
        h, k, v = layer_with_kv(model, lw, h, np.array([pos]), past_k, past_v)
        keys.append(k)
        values.append(v)
    return h[0], KVCache(tuple(keys), tuple(values), h[0].copy())
