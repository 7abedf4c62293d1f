"""How Megatron tensor parallelism splits a layer over `tp` ranks, and what it costs in memory.

Column-parallel (split the output features): Q, K, V by heads; MLP up and
gate by columns. Row-parallel (split the input features): attention output
by the heads that produced its input; MLP down by rows. Each row-parallel
layer leaves a partial sum on every rank, which the all-reduce (or, with
sequence parallelism, the reduce-scatter) completes. Norm weights and the
row-parallel biases are replicated (the bias is added once, after the sum).

Grouped-query attention: with tp <= n_kv_heads each rank holds n_kv_heads/tp
KV heads (and the query heads that read them); with tp > n_kv_heads each KV
head is replicated on tp/n_kv_heads ranks (Megatron's rule), so tp must be a
multiple of n_kv_heads.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from wse.gpu import Cluster, GpuMemoryError, ShardingError

from ..models import LayerWeights, ModelConfig, ModelWeights


@dataclass(frozen=True)
class Layout:
    """Which heads and MLP columns rank r owns."""

    model: ModelConfig
    tp: int

    def __post_init__(self) -> None:
        m, tp = self.model, self.tp
        if isinstance(tp, bool) or not isinstance(tp, int) or tp < 1:
            raise ShardingError(f"tp = {tp!r}: must be a positive integer")
        if m.n_heads % tp:
            raise ShardingError(f"tp = {tp} does not divide {m.name}'s {m.n_heads} attention heads")
        if m.d_ff % tp:
            raise ShardingError(f"tp = {tp} does not divide {m.name}'s MLP width d_ff = {m.d_ff}")
        if tp <= m.n_kv_heads and m.n_kv_heads % tp:
            raise ShardingError(f"tp = {tp} does not divide {m.name}'s {m.n_kv_heads} KV heads")
        if tp > m.n_kv_heads and tp % m.n_kv_heads:
            raise ShardingError(
                f"tp = {tp} exceeds {m.name}'s {m.n_kv_heads} KV heads and is not a multiple "
                "of them, so KV heads cannot be replicated evenly")

    @property
    def heads_per_rank(self) -> int:
        return self.model.n_heads // self.tp

    @property
    def kv_heads_per_rank(self) -> int:
        return max(1, self.model.n_kv_heads // self.tp)

    @property
    def ffn_per_rank(self) -> int:
        return self.model.d_ff // self.tp

    def q_heads(self, rank: int) -> range:
        h = self.heads_per_rank
        return range(rank * h, (rank + 1) * h)

    def kv_heads(self, rank: int) -> range:
        """Global KV heads rank `rank` holds (its query heads' groups)."""
        group = self.model.n_heads // self.model.n_kv_heads
        first = self.q_heads(rank).start // group
        return range(first, first + self.kv_heads_per_rank)

    def ffn_columns(self, rank: int) -> slice:
        f = self.ffn_per_rank
        return slice(rank * f, (rank + 1) * f)


@dataclass(frozen=True)
class RankLayer:
    """One rank's shard of one layer (same field meanings as LayerWeights)."""

    attn_norm: np.ndarray
    attn_norm_bias: np.ndarray | None
    wq: np.ndarray
    wk: np.ndarray
    wv: np.ndarray
    wo: np.ndarray
    bq: np.ndarray | None
    bk: np.ndarray | None
    bv: np.ndarray | None
    bo: np.ndarray | None
    mlp_norm: np.ndarray
    mlp_norm_bias: np.ndarray | None
    w_up: np.ndarray
    w_gate: np.ndarray | None
    w_down: np.ndarray
    b_up: np.ndarray | None
    b_down: np.ndarray | None


def _head_columns(heads: range, head_dim: int) -> slice:
    return slice(heads.start * head_dim, heads.stop * head_dim)


def shard_layer(layout: Layout, lw: LayerWeights, rank: int, dtype=np.float32) -> RankLayer:
    """Rank `rank`'s copy of its column and row slices of one layer."""
    hd = layout.model.head_dim
    q = _head_columns(layout.q_heads(rank), hd)
    kv = _head_columns(layout.kv_heads(rank), hd)
    f = layout.ffn_columns(rank)

    def take(a, index=None, axis=1):
        if a is None:
            return None
        a = np.asarray(a)
        if index is not None:
            a = a[:, index] if (axis == 1 and a.ndim == 2) else a[index]
        return np.array(a, dtype=dtype, copy=True)

    return RankLayer(
        attn_norm=take(lw.attn_norm), attn_norm_bias=take(lw.attn_norm_bias),
        wq=take(lw.wq, q), wk=take(lw.wk, kv), wv=take(lw.wv, kv),
        wo=take(lw.wo, q, axis=0),
        bq=take(lw.bq, q, 0), bk=take(lw.bk, kv, 0), bv=take(lw.bv, kv, 0), bo=take(lw.bo),
        mlp_norm=take(lw.mlp_norm), mlp_norm_bias=take(lw.mlp_norm_bias),
        w_up=take(lw.w_up, f), w_gate=take(lw.w_gate, f), w_down=take(lw.w_down, f, axis=0),
        b_up=take(lw.b_up, f, 0), b_down=take(lw.b_down),
    )


def shard_weights(model: ModelConfig, weights: ModelWeights, tp: int,
                  dtype=np.float32) -> list[list[RankLayer]]:
    """shards[rank][layer]: every rank's slices of every layer."""
    layout = Layout(model, tp)
    return [[shard_layer(layout, lw, r, dtype) for lw in weights.layers] for r in range(tp)]


def default_tp(model: ModelConfig, cluster: Cluster) -> int:
    """The largest tensor-parallel degree up to the cluster's GPU count that
    divides the model (heads, KV heads, MLP width)."""
    for tp in range(cluster.n_gpus, 0, -1):
        try:
            Layout(model, tp)
        except ShardingError:
            continue
        return tp
    return 1


# ------------------------------------------------------------------ memory
def memory_per_gpu(model: ModelConfig, tp: int, seq_len: int, n_layers: int | None = None,
                   batch: int = 1, bytes_per_element: int = 2) -> dict[str, int]:
    """HBM bytes one rank needs: its weight shards, its KV-cache heads for
    `seq_len` positions, and a working set of activations (ASSUMPTION: the
    layer's largest live tensors, x, the gathered input, QKV and the MLP
    hidden, for the whole sequence)."""
    layout = Layout(model, tp)
    layers = model.n_layers if n_layers is None else n_layers
    d, hd = model.d_model, model.head_dim
    q_w = layout.heads_per_rank * hd
    kv_w = layout.kv_heads_per_rank * hd
    f = layout.ffn_per_rank
    per_layer = (d * q_w + 2 * d * kv_w + q_w * d
                 + d * f * (3 if model.gated else 2) + 2 * d * (2 if model.family == "gpt2" else 1))
    if model.has_bias:
        per_layer += q_w + 2 * kv_w + d + f + d
    weights = per_layer * layers
    if model.family == "gpt2":
        weights += model.max_seq_len * d
    kv_cache = 2 * layers * batch * seq_len * kv_w
    activations = batch * seq_len * (3 * d + q_w + 2 * kv_w + 2 * f)
    total = (weights + kv_cache + activations) * bytes_per_element
    return {"weights": weights * bytes_per_element, "kv_cache": kv_cache * bytes_per_element,
            "activations": activations * bytes_per_element, "total": total}


def check_fits(model: ModelConfig, cluster: Cluster, tp: int, seq_len: int,
               n_layers: int | None = None, batch: int = 1, bytes_per_element: int = 2) -> dict:
    """Raise GpuMemoryError unless one rank's weights + KV cache + activations
    fit the device's HBM; also ShardingError if tp exceeds the cluster."""
    if not isinstance(cluster, Cluster):
        raise ShardingError(f"expected a wse.gpu.Cluster, got {type(cluster).__name__}")
    if tp > cluster.n_gpus:
        raise ShardingError(f"tp = {tp} exceeds the {cluster.n_gpus} GPUs of {cluster.name}")
    need = memory_per_gpu(model, tp, seq_len, n_layers, batch, bytes_per_element)
    have = cluster.device.hbm_bytes
    if need["total"] > have:
        gib = 1 << 30
        raise GpuMemoryError(
            f"{model.name} with tp = {tp} needs {need['total'] / gib:.2f} GiB per GPU "
            f"(weights {need['weights'] / gib:.2f}, KV cache for {seq_len} positions "
            f"{need['kv_cache'] / gib:.2f}, activations {need['activations'] / gib:.2f}) "
            f"but a {cluster.device.name} has {have / gib:.2f} GiB; raise tp or use a larger GPU")
    return need
