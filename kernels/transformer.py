"""Decoder layers on the mesh (prefill and decode) and on a GPU cluster.

    result, report = kernels.transformer.prefill(model, weights, x, target)
        result.hidden (seq, d_model); result.cache: the decode state
        (a WaferKVCache on a wafer, a kernels.models.KVCache on a cluster)
    out, state, report = kernels.transformer.decode_step(model, weights, state, target, x=None)
    table = kernels.transformer.compare(wafer_report, gpu_report)

target is a wse.WaferConfig (the grid is one region of the wafer) or a
wse.gpu.Cluster (dispatched to kernels.sharded, Megatron tensor parallelism).
Decode returns the new state separately, like kernels.reference.decode_step
and kernels.sharded.decode_step: (out, state, report) on both targets.

A prefill layer on the wafer is a sequence of engine runs, one Program per
phase; each phase reads its inputs in exactly the layout the previous phase
left them in, so the values are carried from one run's SRAM to the next
run's SRAM by the emulator (no transfer would happen on the wafer, and none
is charged). A decode layer is one Program (one engine run) whose
operations follow each other per PE with no barrier; its weights and KV
cache stay resident from step to step in the decode state's SRAM images.
The reports are combined with wse.RunReport.sequence (one phase per run).
The phases and their layouts live in their own modules:
  kernels.prefill_layer  prefill layout (sequence along Y, features along X)
                         and its phases (attn_norm, q/k/v_proj, rope,
                         attention, o_proj, mlp_norm, up/gate_proj, act,
                         down_proj, residual); the K and V tiles it leaves
                         are the KV cache, already in the decode layout
  kernels.decode_layer   decode layout (d_model along Y, attention and d_ff
                         along X) and the one-program layer (operations qkv,
                         kv_update, attention, o_mlp_up, down)
  kernels.kvcache        the KV cache on the mesh, the decode state (with
                         each layer's resident SRAM image) and the
                         kv_update operation
  kernels.comparison     compare (wafer against GPU) and extrapolate (whole
                         models from emulated layers, pipeline regions)
This module checks the inputs, dispatches by target, runs the layers in
turn and re-exports the public names of those modules.

Re-layout between prefill and decode: the KV cache needs none. The weights
of the X-reducing GEMVs (O and down projections) are stored transposed
block-wise relative to their block placement, which prefill keeps in
MeshGEMM's alignment; relayout_weights moves them over the fabric once
(undoing the alignment, then a block transpose, charged in its own report;
see docs/transformer.md). decode_step places the same tiles itself, once per
session (the first step; again only when the cache outgrows its reserved
slots). The decode input x comes from the host each step (the embedding of
the sampled token; here state.last_hidden), with the position's RoPE row.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

import wse
from wse.config import DTYPES
from wse.errors import ConfigError, SramOverflowError
from wse.gpu import Cluster

from . import decode_layer, prefill_layer, reference, sharded
from .comparison import Comparison, Extrapolation, compare, extrapolate, stage_handover_cycles
from .decode_layer import (DecodeLayouts, decode_layouts, decode_weight_bytes,
                           decode_x_reducing_tiles)
from .kvcache import WaferKVCache
from .layers import (block_transpose_cycles, block_transpose_hops, block_transpose_program,
                     gather_sequence, place_sequence, place_vector)
from .models import KVCache, ModelConfig, ModelWeights
from .prefill_layer import (GEMM_ALGORITHM, PrefillLayouts, check_prefill_fits,
                            prefill_layouts, prefill_weight_tiles, unalign_cycles, unalign_hops,
                            unalign_program)

__all__ = ["Comparison", "DecodeLayouts", "Extrapolation", "GEMM_ALGORITHM",
           "PrefillLayouts", "PrefillResult", "check_prefill_fits", "compare", "decode_layouts",
           "decode_step", "decode_weight_bytes", "decode_x_reducing_tiles", "extrapolate",
           "prefill", "prefill_layouts", "prefill_weight_tiles", "reference_prefill",
           "relayout_weights", "stage_handover_cycles"]


# ----------------------------------------------------------------------------
# Input checks
def _check_model(model, weights) -> None:
    if not isinstance(model, ModelConfig):
        raise ConfigError(f"expected a kernels.models.ModelConfig, got {type(model).__name__}")
    if not isinstance(weights, ModelWeights):
        raise ConfigError(f"expected kernels.models.ModelWeights, got {type(weights).__name__}")
    d, f, hd = model.d_model, model.d_ff, model.head_dim
    qw, kw = model.n_heads * hd, model.n_kv_heads * hd
    for i, lw in enumerate(weights.layers):
        expect = {"attn_norm": (d,), "wq": (d, qw), "wk": (d, kw), "wv": (d, kw), "wo": (qw, d),
                  "mlp_norm": (d,), "w_up": (d, f), "w_down": (f, d)}
        if model.gated:
            expect["w_gate"] = (d, f)
        if model.has_bias:
            expect.update({"bq": (qw,), "bk": (kw,), "bv": (kw,), "bo": (d,), "b_up": (f,),
                           "b_down": (d,), "attn_norm_bias": (d,), "mlp_norm_bias": (d,)})
        for name, shape in expect.items():
            got = getattr(lw, name)
            if got is None or np.shape(got) != shape:
                raise ConfigError(f"layer {i}: weight {name} has shape "
                                  f"{None if got is None else np.shape(got)}, but {model.name} "
                                  f"needs {shape}: the weights do not match the model")
    if model.family == "gpt2" and weights.position_embedding is None:
        raise ConfigError(f"{model.name}: GPT-2 weights need position embeddings")


def _check_dtype(dtype: str) -> None:
    if dtype not in DTYPES:
        raise ConfigError(f"dtype {dtype!r}: expected one of {DTYPES}")


# ----------------------------------------------------------------------------
# Prefill
@dataclass
class PrefillResult:
    """hidden: (seq, d_model); cache: the decode state (WaferKVCache or KVCache)."""
    hidden: np.ndarray
    cache: object


def prefill(model: ModelConfig, weights: ModelWeights, x, target, *, dtype: str = "float32",
            policy: str = "shift", tp: int | None = None, attention: str = "gemm",
            reserve_weights: bool = True):
    """All layers of `weights` over x (seq, d_model) on `target`.

    attention (wafer only): "gemm" (scores Q K^T by GEMM-T, the fully masked
    causal blocks skipped, softmax by max- and sum-allreduces along X, P V by
    kernels.gemm) or "ring" (ring attention along Y, online softmax); see
    kernels/mesh_attention.py. The projections are MeshGEMMs. With
    reserve_weights (wafer only), every phase runs beside the resident
    weights of the layers the region holds when the whole model
    (model.n_layers) is mapped onto regions of this size
    (prefill_layer.prefill_mapping, in report.extra["transformer"]["mapping"]).

    Returns (PrefillResult(hidden, cache), report): on a wafer the report is a
    wse.RunReport (phases in report.phases) and cache a WaferKVCache; on a
    cluster a wse.gpu.GpuReport and a kernels.models.KVCache."""
    _check_model(model, weights)
    x = np.asarray(x, np.float64)
    if x.ndim != 2 or x.shape[1] != model.d_model:
        raise ConfigError(f"expected hidden states (seq, {model.d_model}), got {x.shape}")
    seq = x.shape[0]
    if seq < 1 or seq > model.max_seq_len:
        raise ConfigError(f"{model.name}: {seq} positions; expected 1..{model.max_seq_len}")
    if isinstance(target, Cluster):
        out, cache, report = sharded.prefill(model, weights, x, target, tp=tp, return_cache=True)
        return PrefillResult(out, cache), report
    if not isinstance(target, wse.WaferConfig):
        raise ConfigError(f"target must be a wse.WaferConfig or a wse.gpu.Cluster, got "
                          f"{type(target).__name__}")
    _check_dtype(dtype)
    cfg = target
    if cfg.rows != cfg.cols:
        raise ConfigError(f"wafer prefill needs a square grid (the projections' outputs "
                          f"land in the activations' layout only when rows == cols), got "
                          f"{cfg.rows} x {cfg.cols}")
    lay = prefill_layouts(model, cfg)
    if attention not in ("ring", "gemm"):
        raise ConfigError(f"unknown attention algorithm {attention!r}: expected 'ring' or 'gemm'")
    check_prefill_fits(model, cfg, seq, dtype, attention)     # the attention phase alone
    mapping = (prefill_layer.prefill_mapping(model, cfg, seq, dtype, attention)
               if reserve_weights else None)
    reserve = mapping.reserved_bytes if mapping else 0
    check_prefill_fits(model, cfg, seq, dtype, attention, reserve)
    R = cfg.rows
    st = -(-seq // R)
    positions = np.arange(seq)
    if model.family == "gpt2":
        x = x + np.asarray(weights.position_embedding[:seq], np.float64)
    x_tiles = place_sequence(x, lay.d, R, st)
    reports, names, k_all, v_all = [], [], [], []
    for i, lw in enumerate(weights.layers):
        x_tiles, k, v, reps, nms = prefill_layer.run_layer(cfg, model, lw, x_tiles, st, lay,
                                                           positions, dtype, attention, reserve)
        reports += reps
        names += [f"L{i}.{n}" for n in nms]
        k_all.append(k)
        v_all.append(v)
    hidden = gather_sequence(x_tiles, lay.d, seq)
    report = wse.RunReport.sequence(reports, names)
    report.extra["transformer"] = {"mode": "prefill", "model": model.name, "seq": seq,
                                   "layers": weights.n_layers, "dtype": dtype,
                                   "positions_per_row": st, "attention": attention,
                                   "mapping": mapping.to_dict() if mapping else None}
    cache = WaferKVCache.from_tiles(model, R, cfg.cols, lay.attn, policy, dtype, k_all, v_all,
                                    seq, hidden[-1])
    return PrefillResult(hidden, cache), report


# ----------------------------------------------------------------------------
# Decode
def decode_step(model: ModelConfig, weights: ModelWeights, state, target, x=None, *,
                dtype: str | None = None, policy: str | None = None, tp: int | None = None):
    """One new position. state: a WaferKVCache (from prefill on a wafer) or a
    kernels.models.KVCache (placed on the wafer as prefill would leave it; on a
    cluster used as is). x: (d_model,) input (default: state.last_hidden).

    Returns (out (d_model,), new_state, report). On a wafer the new state is a
    WaferKVCache (the given one is updated in place and returned; it keeps
    each layer's SRAM image, weights and cache resident, for the next step:
    report.host_bytes_loaded shows what the host wrote); the report has one
    phase per layer, each one engine run."""
    _check_model(model, weights)
    if isinstance(target, Cluster):
        if isinstance(state, WaferKVCache):
            state = state.to_kvcache()
        return sharded.decode_step(model, weights, state, target, x=x, tp=tp)
    if not isinstance(target, wse.WaferConfig):
        raise ConfigError(f"target must be a wse.WaferConfig or a wse.gpu.Cluster, got "
                          f"{type(target).__name__}")
    cfg = target
    if isinstance(state, KVCache):
        state = WaferKVCache.from_kvcache(model, state, cfg.rows, cfg.cols, policy or "shift",
                                          dtype or "float32")
    if not isinstance(state, WaferKVCache):
        raise ConfigError(f"state must be a WaferKVCache or a kernels.models.KVCache, got "
                          f"{type(state).__name__}")
    if (state.rows, state.cols) != (cfg.rows, cfg.cols):
        raise ConfigError(f"the cache is placed on a {state.rows} x {state.cols} grid, the "
                          f"target is {cfg.rows} x {cfg.cols}")
    if state.n_layers != weights.n_layers:
        raise ConfigError(f"the cache has {state.n_layers} layers, the weights "
                          f"{weights.n_layers}")
    if policy is not None and policy != state.policy:
        state.policy = policy
    dtype = state.dtype if dtype is None else dtype
    _check_dtype(dtype)
    pos = state.length
    if pos + 1 > model.max_seq_len:
        raise ConfigError(f"{model.name}: position {pos} is past max_seq_len {model.max_seq_len}")
    lay = decode_layouts(model, cfg)
    x = state.last_hidden if x is None else np.asarray(x, np.float64)
    x = np.asarray(x, np.float64).reshape(-1)
    if x.shape != (model.d_model,):
        raise ConfigError(f"expected a ({model.d_model},) input, got {x.shape}")
    if model.family == "gpt2":
        x = x + np.asarray(weights.position_embedding[pos], np.float64)
    grow, moves, insert = state.plan_append()
    x_vec = np.array(place_vector(lay.d, x, cfg.rows, cfg.cols, "y"))
    reports = []
    for i, lw in enumerate(weights.layers):
        try:
            x_vec, rep = decode_layer.run_layer(cfg, model, lw, x_vec, state, i, lay, pos,
                                                dtype, moves, insert)
        except decode_layer.CacheOverflowError as err:
            counts = state.row_counts()
            raise SramOverflowError(
                f"decode of position {pos}: the KV cache no longer fits the {cfg.rows} x "
                f"{cfg.cols} grid (policy {state.policy!r}: the fullest row would hold "
                f"{int(counts.max()) + 1} positions, {state.capacity} slots per PE, next to "
                f"the layer's resident weights and activations); engine: {err}") from err
        except SramOverflowError as err:
            raise SramOverflowError(
                f"decode: one layer of {model.name} (weights and activations, before any KV "
                f"cache) does not fit the {cfg.rows} x {cfg.cols} grid; engine: {err}") from err
        reports.append(rep)
    state.commit_append(moves, insert, pos)
    state.length = pos + 1
    out = lay.d.gather(x_vec[:, 0, :].reshape(cfg.rows, lay.d.width))
    state.last_hidden = out.copy()
    state.history.append(grow)
    report = wse.RunReport.sequence(reports, [f"L{i}" for i in range(len(reports))])
    report.extra["transformer"] = {"mode": "decode", "model": model.name, "position": pos,
                                   "layers": weights.n_layers, "dtype": dtype,
                                   "policy": state.policy, "cache_slots_per_row": state.capacity,
                                   "moves": len(moves)}
    return out, state, report


# ----------------------------------------------------------------------------
# The one-time re-layout of the weights between prefill and decode
def relayout_weights(model: ModelConfig, weights: ModelWeights, cfg: wse.WaferConfig,
                     dtype: str = "float32"):
    """Move Wo and W_down of every layer from where prefill keeps them to their
    decode PEs over the fabric, once, between prefill and decode.

    Both runs use the same square region (wafer prefill needs R == C; decode
    could run elsewhere, but the re-layout emulated is the one on the region
    that prefilled). Prefill keeps each resident weight in MeshGEMM's
    alignment (prefill_weight_tiles: column x's tiles rotated pos[x] places
    on its interleaved ring). Per layer, on each PE's concatenated Wo | W_down
    tile (wa*wd + wf*wd values), two engine runs:
      unalign    every column rotates its tiles back (unalign_program, at
                 most about n/2 two-hop shifts), leaving the block placement:
                 PE (x, y) holds input part y, output part x;
      transpose  on that placement the prefill layouts of d_model (plain
                 over C) and of the attention and d_ff features equal
                 decode's, so decode's tile of PE (x, y) is exactly the block
                 tile of PE (y, x): a block transpose
                 (kernels.layers.block_transpose_program).
    Returns ([{"wo": (R, C, wa*wd), "w_down": (R, C, wf*wd)} per layer] as
    read back from the decode PEs, report with the two phases per layer and
    report.extra["relayout"] holding the per-layer cost bounds (sums of
    unalign_cycles and block_transpose_cycles) and wavelet-hops)."""
    _check_model(model, weights)
    _check_dtype(dtype)
    if not isinstance(cfg, wse.WaferConfig):
        raise ConfigError(f"cfg must be a wse.WaferConfig, got {type(cfg).__name__}")
    if cfg.rows != cfg.cols:
        raise ConfigError(f"the prefill -> decode re-layout is emulated on the square region "
                          f"prefill ran on; got a {cfg.rows} x {cfg.cols} grid")
    lay = prefill_layouts(model, cfg)
    R = cfg.rows
    n_wo = lay.attn.width * lay.d.width
    out, reports, names = [], [], []
    for i, lw in enumerate(weights.layers):
        tiles = np.concatenate([prefill_weight_tiles(lw.wo, lay.attn, lay.d),
                                prefill_weight_tiles(lw.w_down, lay.ff, lay.d)], axis=2)
        b = tiles.shape[2]
        prog, slots, ending = unalign_program(cfg, tiles, dtype)
        result = prog.run(max_cycles=10 ** 12)
        both = result.read(slots).reshape(R, R, 2, b)
        block = np.take_along_axis(both, ending[:, :, None, None], axis=2)[:, :, 0]
        reports.append(result.report)
        prog, dst = block_transpose_program(cfg, block, dtype)
        result = prog.run(max_cycles=10 ** 12)
        moved = result.read(dst).astype(np.float64)
        out.append({"wo": moved[:, :, :n_wo], "w_down": moved[:, :, n_wo:]})
        reports.append(result.report)
        names += [f"L{i}.unalign", f"L{i}.transpose"]
    report = wse.RunReport.sequence(reports, names)
    bounds = [unalign_cycles(cfg, R, b), block_transpose_cycles(cfg, R, b)]
    report.extra["relayout"] = {"wavelets_per_pe": b, "layers": len(weights.layers),
                                "model_cycles_per_layer": [sum(lo for lo, _ in bounds),
                                                           sum(up for _, up in bounds)],
                                "expected_wavelet_hops_per_layer": unalign_hops(R, b)
                                + block_transpose_hops(R, b)}
    return out, report


def reference_prefill(model, weights, x):
    """kernels.reference.prefill (re-exported for symmetry in tests)."""
    return reference.prefill(model, weights, x)
