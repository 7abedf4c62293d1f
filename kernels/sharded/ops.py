"""Vectorised per-rank math in the run's dtype (float32 by default).

Written independently of kernels.reference (which loops in float64), so that
comparing the two tests both.
"""
from __future__ import annotations

import numpy as np


def rmsnorm(x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
    inv = 1.0 / np.sqrt(np.mean(np.square(x), axis=-1, keepdims=True) + eps)
    return (x * inv * weight).astype(x.dtype, copy=False)


def layernorm(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, eps: float) -> np.ndarray:
    centred = x - x.mean(axis=-1, keepdims=True)
    inv = 1.0 / np.sqrt(np.mean(np.square(centred), axis=-1, keepdims=True) + eps)
    return (centred * inv * weight + bias).astype(x.dtype, copy=False)


def rope(x: np.ndarray, positions: np.ndarray, theta: float) -> np.ndarray:
    """x: (heads, seq, hd); rotate halves (i, i + hd/2) by position * theta^(-2i/hd)."""
    half = x.shape[-1] // 2
    freq = theta ** (-np.arange(half, dtype=np.float64) * 2.0 / x.shape[-1])
    angle = np.asarray(positions, dtype=np.float64)[:, None] * freq[None, :]
    cos, sin = np.cos(angle).astype(x.dtype), np.sin(angle).astype(x.dtype)
    first, second = x[..., :half], x[..., half:]
    return np.concatenate([first * cos - second * sin, first * sin + second * cos], axis=-1)


def gelu_tanh(x: np.ndarray) -> np.ndarray:
    c = np.asarray(np.sqrt(2.0 / np.pi), dtype=x.dtype)
    return 0.5 * x * (1.0 + np.tanh(c * (x + np.asarray(0.044715, x.dtype) * x * x * x)))


def silu(x: np.ndarray) -> np.ndarray:
    return x / (1.0 + np.exp(-x))


def causal_attention(q: np.ndarray, k: np.ndarray, v: np.ndarray) -> np.ndarray:
    """q: (h, sq, hd); k, v: (kvh, sk, hd), h a multiple of kvh; queries are
    the last sq of the sk positions."""
    heads, sq, hd = q.shape
    group = heads // k.shape[0]
    k = np.repeat(k, group, axis=0)
    v = np.repeat(v, group, axis=0)
    sk = k.shape[1]
    scores = np.einsum("hqd,hkd->hqk", q, k) / np.asarray(np.sqrt(hd), q.dtype)
    visible = np.arange(sk)[None, :] <= (np.arange(sq)[:, None] + (sk - sq))
    scores = np.where(visible[None], scores, -np.inf)
    scores = scores - scores.max(axis=-1, keepdims=True)
    weights = np.exp(scores)
    weights /= weights.sum(axis=-1, keepdims=True)
    return np.einsum("hqk,hkd->hqd", weights, v)
