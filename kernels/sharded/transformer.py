"""Megatron-LM tensor-parallel prefill and decode on the GPU reference machine.

Per layer, forward (Shoeybi et al. 2019):
    x replicated on every rank
    h = norm(x)                                  (every rank, redundantly)
    q, k, v = h @ Wqkv[rank]                      column-parallel, by heads
    a = attention over the rank's heads           (no communication)
    x = x + allreduce(a @ Wo[rank]) + bo          row-parallel, all-reduce #1
    h = norm(x)
    x = x + allreduce(act(h @ Wup[rank]) @ Wdown[rank]) + bdown   all-reduce #2

Sequence parallelism (Korthikanti et al. 2022): between the tensor-parallel
regions x is split along the sequence; each all-reduce becomes an all-gather
of the normed input before the column-parallel layer and a reduce-scatter
of the partial sums after the row-parallel layer. Same bytes on the wire,
and the norms and residual adds run on 1/tp of the sequence.

The input is placed on the ranks (replicated, or split by sequence) and the
output read back from them by the host, as the reference does; those copies
are not GPU-to-GPU traffic and are not counted. Decode keeps the KV cache
split by heads across ranks; the state handed back to the caller is the
plain kernels.models.KVCache (all heads), re-split on the next call (an
emulation convenience, not charged: on a real system the cache stays put).
"""
from __future__ import annotations

import numpy as np

from wse.errors import ConfigError
from wse.gpu import Cluster, GpuReport, ShardingError, SpmdRun

from ..models import KVCache, ModelConfig, ModelWeights
from . import ops
from .layout import Layout, RankLayer, check_fits, default_tp, shard_weights


def _norm(model: ModelConfig, x: np.ndarray, weight, bias) -> np.ndarray:
    if model.family == "gpt2":
        return ops.layernorm(x, weight, bias, model.norm_eps)
    return ops.rmsnorm(x, weight, model.norm_eps)


def _split_heads(x: np.ndarray, n: int) -> np.ndarray:
    seq, width = x.shape
    return x.reshape(seq, n, width // n).transpose(1, 0, 2)


def _sharded_layer(run: SpmdRun, layout: Layout, shards: list[RankLayer], xs: list[np.ndarray],
                   positions: np.ndarray, sequence_parallel: bool,
                   past: list[tuple[np.ndarray, np.ndarray]] | None):
    """One layer on every rank. Returns (xs, [(keys, values) per rank])."""
    model = layout.model
    tp = layout.tp
    hd = model.head_dim
    hl, kvl = layout.heads_per_rank, layout.kv_heads_per_rank

    # ---- attention block
    hs = [_norm(model, x, s.attn_norm, s.attn_norm_bias) for x, s in zip(xs, shards)]
    run.elementwise("attn_norm", hs, flops_per_element=4)
    if sequence_parallel:
        hs = run.allgather(hs, axis=0)
    seq = hs[0].shape[0]
    qkv_width = (hl + 2 * kvl) * hd
    qs, ks, vs = [], [], []
    for h, s in zip(hs, shards):
        q, k, v = h @ s.wq, h @ s.wk, h @ s.wv
        if s.bq is not None:
            q, k, v = q + s.bq, k + s.bk, v + s.bv
        qs.append(_split_heads(q, hl))
        ks.append(_split_heads(k, kvl))
        vs.append(_split_heads(v, kvl))
    # Megatron fuses Q, K and V into one column-parallel GEMM.
    run.compute("qkv", 2.0 * seq * model.d_model * qkv_width,
                (seq * model.d_model + model.d_model * qkv_width + seq * qkv_width)
                * run.bytes_per_element, gemm=(seq, qkv_width))
    if model.family == "llama":
        qs = [ops.rope(q, positions, model.rope_theta) for q in qs]
        ks = [ops.rope(k, positions, model.rope_theta) for k in ks]
        run.elementwise("rope", [np.empty(seq * (hl + kvl) * hd)], flops_per_element=6)
    if past is not None:
        ks = [np.concatenate([pk, k], axis=1) for (pk, _), k in zip(past, ks)]
        vs = [np.concatenate([pv, v], axis=1) for (_, pv), v in zip(past, vs)]
    context = ks[0].shape[1]
    attn = [ops.causal_attention(q, k, v) for q, k, v in zip(qs, ks, vs)]
    # Fused attention kernel: Q K^T and P V, reading Q, K, V once, writing O.
    run.compute("attention", 4.0 * hl * seq * context * hd,
                (2 * hl * seq * hd + 2 * kvl * context * hd) * run.bytes_per_element)
    attn = [a.transpose(1, 0, 2).reshape(seq, hl * hd) for a in attn]
    partial = run.matmul(attn, [s.wo for s in shards], "attn_out")
    if sequence_parallel:
        summed = run.reduce_scatter(partial, axis=0)
    else:
        summed = run.allreduce(partial)
    if shards[0].bo is not None:
        summed = [o + s.bo for o, s in zip(summed, shards)]
    xs = [x + o for x, o in zip(xs, summed)]
    run.elementwise("residual", xs, reads=2)

    # ---- MLP block
    hs = [_norm(model, x, s.mlp_norm, s.mlp_norm_bias) for x, s in zip(xs, shards)]
    run.elementwise("mlp_norm", hs, flops_per_element=4)
    if sequence_parallel:
        hs = run.allgather(hs, axis=0)
    f = layout.ffn_per_rank
    if model.gated:
        acts = [ops.silu(h @ s.w_gate) * (h @ s.w_up) for h, s in zip(hs, shards)]
        up_width = 2 * f
    else:
        acts = [ops.gelu_tanh(h @ s.w_up + s.b_up) for h, s in zip(hs, shards)]
        up_width = f
    run.compute("mlp_up", 2.0 * seq * model.d_model * up_width,
                (seq * model.d_model + model.d_model * up_width + seq * up_width)
                * run.bytes_per_element, gemm=(seq, up_width))
    run.elementwise("mlp_act", acts, flops_per_element=8, reads=2 if model.gated else 1)
    partial = run.matmul(acts, [s.w_down for s in shards], "mlp_down")
    if sequence_parallel:
        summed = run.reduce_scatter(partial, axis=0)
    else:
        summed = run.allreduce(partial)
    if shards[0].b_down is not None:
        summed = [o + s.b_down for o, s in zip(summed, shards)]
    xs = [x + o for x, o in zip(xs, summed)]
    run.elementwise("residual", xs, reads=2)
    return xs, list(zip(ks, vs))


def _prepare(model, weights, cluster, tp, seq_len):
    if not isinstance(model, ModelConfig):
        raise ConfigError(f"expected a kernels.models.ModelConfig, got {type(model).__name__}")
    if not isinstance(weights, ModelWeights):
        raise ConfigError(f"expected kernels.models.ModelWeights, got {type(weights).__name__}")
    if not isinstance(cluster, Cluster):
        raise ShardingError(f"expected a wse.gpu.Cluster, got {type(cluster).__name__}")
    tp = default_tp(model, cluster) if tp is None else tp
    layout = Layout(model, tp)
    check_fits(model, cluster, tp, seq_len, n_layers=weights.n_layers)
    return layout


def _gather_cache(layout: Layout, per_rank: list[list[tuple[np.ndarray, np.ndarray]]],
                  last_hidden: np.ndarray) -> KVCache:
    """All heads' caches from the ranks (host read-back; replicas read once)."""
    keys, values = [], []
    for layer in range(len(per_rank[0])):
        k_heads, v_heads = {}, {}
        for rank, caches in enumerate(per_rank):
            k, v = caches[layer]
            for local, head in enumerate(layout.kv_heads(rank)):
                k_heads.setdefault(head, k[local])
                v_heads.setdefault(head, v[local])
        order = range(layout.model.n_kv_heads)
        keys.append(np.stack([k_heads[h] for h in order]))
        values.append(np.stack([v_heads[h] for h in order]))
    return KVCache(tuple(keys), tuple(values), last_hidden)


def prefill(model: ModelConfig, weights: ModelWeights, x, cluster: Cluster, tp: int | None = None,
            sequence_parallel: bool = False, *, algorithm: str | None = None,
            protocol: str | None = None, dtype=np.float32, bytes_per_element: int = 2,
            return_cache: bool = False):
    """Tensor-parallel forward over x (seq, d_model) on the first `tp` GPUs of
    `cluster` (default: the largest degree up to the cluster's size that
    divides the model, see layout.default_tp). Returns (out, report), or
    (out, cache, report) with return_cache=True, where cache is the
    kernels.models.KVCache that decode_step continues from.

    algorithm/protocol force the all-reduce's choice (default: the tuner's).
    Values are computed in `dtype`; time and bytes are charged at
    `bytes_per_element` (2: bf16).
    """
    x = np.asarray(x)
    if x.ndim != 2 or x.shape[1] != getattr(model, "d_model", None):
        raise ConfigError(f"expected hidden states (seq, {getattr(model, 'd_model', '?')}), "
                          f"got {x.shape}")
    seq = x.shape[0]
    layout = _prepare(model, weights, cluster, tp, seq)
    tp = layout.tp
    if seq > model.max_seq_len:
        raise ConfigError(f"{model.name}: {seq} positions exceed max_seq_len {model.max_seq_len}")
    if sequence_parallel and seq % tp:
        raise ShardingError(f"sequence parallelism splits the sequence: tp = {tp} does not "
                            f"divide its {seq} positions")
    run = SpmdRun(cluster, tp, algorithm=algorithm, protocol=protocol,
                  bytes_per_element=bytes_per_element)
    shards = shard_weights(model, weights, tp, dtype)
    positions = np.arange(seq)
    x = x.astype(dtype)
    if sequence_parallel:
        xs = [np.array(part) for part in np.array_split(x, tp, axis=0)]
        pos_parts = np.array_split(positions, tp)
    else:
        xs = [x.copy() for _ in range(tp)]
        pos_parts = [positions] * tp
    if model.family == "gpt2":
        table = weights.position_embedding.astype(dtype)
        xs = [xr + table[p] for xr, p in zip(xs, pos_parts)]
        run.elementwise("position_embedding", xs, reads=2)
    caches: list[list[tuple[np.ndarray, np.ndarray]]] = [[] for _ in range(tp)]
    for layer in range(weights.n_layers):
        layer_shards = [shards[r][layer] for r in range(tp)]
        xs, kv = _sharded_layer(run, layout, layer_shards, xs, positions, sequence_parallel, None)
        for r in range(tp):
            caches[r].append(kv[r])
    out = np.concatenate(xs, axis=0) if sequence_parallel else xs[0]
    report = run.report()
    if return_cache:
        return out, _gather_cache(layout, caches, out[-1].copy()), report
    return out, report


def lm_head_and_sample(run: SpmdRun, model: ModelConfig, hidden: np.ndarray | None = None,
                       lm_head_weight: np.ndarray | None = None, top_k: int = 1):
    """The per-token tail of a decode step on `run`'s ranks, priced:
    final norm, the vocabulary-parallel LM head (each rank multiplies the
    hidden state by its vocab/tp columns of the d_model x vocab matrix, as
    Megatron's VocabParallelEmbedding / vLLM's ParallelLMHead split it), a
    local top-k over its logits, an all-gather of the tp x top_k candidates
    (fp32 value and int32 token id, 8 bytes each) and the final choice among
    them (greedy for top_k = 1). With lm_head_weight (d_model, vocab) the
    logits are computed and the chosen token returned; without it the same
    kernels and collective are priced on placeholder candidates (the
    emulation carries no vocabulary) and None is returned."""
    tp = run.n_ranks
    vocab = model.vocab_size
    if vocab < tp:
        raise ConfigError(f"{model.name}: vocab_size {vocab} cannot be split over {tp} ranks")
    if isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k:
        raise ConfigError(f"top_k = {top_k!r}: must be a positive integer")
    columns = [len(c) for c in np.array_split(np.arange(vocab), tp)]
    width = max(columns)
    k = min(top_k, min(columns))
    b = run.bytes_per_element
    run.compute("final_norm", 4.0 * model.d_model, 2 * model.d_model * b)
    run.compute("lm_head", 2.0 * model.d_model * width,
                (model.d_model + model.d_model * width + width) * b, gemm=(1, width))
    run.compute("top_k", 2.0 * width, width * b)
    if lm_head_weight is not None and hidden is not None:
        weight = np.asarray(lm_head_weight)
        if weight.shape != (model.d_model, vocab):
            raise ConfigError(f"lm_head_weight must be ({model.d_model}, {vocab}), "
                              f"got {weight.shape}")
        candidates, start = [], 0
        for n_cols in columns:
            logits = np.asarray(hidden, dtype=np.float64) @ weight[:, start:start + n_cols]
            best = np.argsort(-logits, kind="stable")[:k]
            candidates.append(np.stack([logits[best], (best + start).astype(np.float64)], 1))
            start += n_cols
    else:
        candidates = [np.zeros((k, 2)) for _ in range(tp)]
    gathered = run.allgather(candidates, axis=0, bytes_per_element=4)
    run.compute("sample", 2.0 * tp * k, tp * k * 8)
    if lm_head_weight is None or hidden is None:
        return None
    table = gathered[0]
    return int(table[int(np.argmax(table[:, 0])), 1])


def decode_step(model: ModelConfig, weights: ModelWeights, state: KVCache, cluster: Cluster,
                x=None, tp: int | None = None, *, algorithm: str | None = None,
                protocol: str | None = None, dtype=np.float32, bytes_per_element: int = 2,
                cuda_graph: bool = True, lm_head: bool = False, top_k: int = 1):
    """One new position with the KV cache split by heads over `tp` ranks.
    x: (d_model,) the new input (default: state.last_hidden).
    cuda_graph: the step is one CUDA-graph replay (as vLLM, SGLang and
    TensorRT-LLM run decode): one graph launch instead of one per kernel.
    lm_head: also charge the LM head and sampling of the token
    (lm_head_and_sample), so the report is a whole token's cost for the
    layers given; the per-layer figure is the run without it.
    Returns (out (d_model,), new state, report)."""
    if not isinstance(state, KVCache):
        raise ConfigError(f"expected a kernels.models.KVCache, got {type(state).__name__}")
    if state.n_layers != getattr(weights, "n_layers", None):
        raise ConfigError(f"the cache has {state.n_layers} layers, the weights "
                          f"{getattr(weights, 'n_layers', '?')}")
    pos = state.length
    layout = _prepare(model, weights, cluster, tp, pos + 1)
    tp = layout.tp
    if pos + 1 > model.max_seq_len:
        raise ConfigError(f"{model.name}: position {pos} is past max_seq_len {model.max_seq_len}")
    x = state.last_hidden if x is None else x
    x = np.asarray(x, dtype=dtype).reshape(1, -1)
    if x.shape[1] != model.d_model:
        raise ConfigError(f"expected a ({model.d_model},) input, got {x.shape[1]} features")
    run = SpmdRun(cluster, tp, algorithm=algorithm, protocol=protocol,
                  bytes_per_element=bytes_per_element, cuda_graph=cuda_graph)
    shards = shard_weights(model, weights, tp, dtype)
    xs = [x.copy() for _ in range(tp)]
    if model.family == "gpt2":
        xs = [xr + weights.position_embedding[pos].astype(dtype) for xr in xs]
        run.elementwise("position_embedding", xs, reads=2)
    positions = np.array([pos])
    caches: list[list[tuple[np.ndarray, np.ndarray]]] = [[] for _ in range(tp)]
    for layer in range(weights.n_layers):
        past = []
        for r in range(tp):
            heads = layout.kv_heads(r)
            past.append((np.asarray(state.keys[layer][heads.start:heads.stop], dtype=dtype),
                         np.asarray(state.values[layer][heads.start:heads.stop], dtype=dtype)))
        layer_shards = [shards[r][layer] for r in range(tp)]
        xs, kv = _sharded_layer(run, layout, layer_shards, xs, positions, False, past)
        for r in range(tp):
            caches[r].append(kv[r])
    out = xs[0][0]
    if lm_head:
        lm_head_and_sample(run, model, top_k=top_k)
    return out, _gather_cache(layout, caches, out.copy()), run.report()


def model_decode_seconds(model: ModelConfig, layer_report: GpuReport,
                         head_report: GpuReport | None = None) -> float:
    """Seconds per generated token of the whole model from a one-layer decode
    report: n_layers x the layer's kernels and collectives, plus the LM head
    and sampling (head_report: a decode of the same layer with lm_head=True;
    its excess over layer_report is the head), plus the launches: one graph
    launch per token when the step is a CUDA graph (the whole step is one
    graph), else every kernel's own launch, which the records already hold."""
    per_layer = layer_report.seconds - layer_report.launch_seconds
    head = 0.0
    if head_report is not None:
        head = (head_report.seconds - head_report.launch_seconds) - per_layer
    return model.n_layers * per_layer + head + layer_report.launch_seconds
