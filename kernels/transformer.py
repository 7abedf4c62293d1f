"""Decoder layers on the mesh (prefill and decode), on a GPU cluster, and the comparison.

    result, report = kernels.transformer.prefill(model, weights, x, target)
        result.hidden (seq, d_model); result.cache: the decode state
        (a WaferKVCache on a wafer, a kernels.models.KVCache on a cluster)
    out, state, report = kernels.transformer.decode_step(model, weights, state, target, x=None)
    table = kernels.transformer.compare(wafer_report, gpu_report)

target is a wse.WaferConfig (the grid is one region of the wafer) or a
wse.gpu.Cluster (dispatched to kernels.sharded, Megatron tensor parallelism).
Decode returns the new state separately, like kernels.reference.decode_step
and kernels.sharded.decode_step: (out, state, report) on both targets.

A layer on the wafer is a sequence of engine runs, one Program per phase;
each phase reads its inputs in exactly the layout the previous phase left
them in, so the values are carried from one run's SRAM to the next run's
SRAM by the emulator (no transfer would happen on the wafer, and none is
charged). The phase reports are combined with wse.RunReport.sequence.

Prefill layout (square grid, R = C): sequence along Y (row y holds
positions y*st .. y*st + st - 1, st = ceil(seq / R)), features along X
(d_model and d_ff in plain chunks, attention features by head groups,
kernels.layers.FeatureLayout). Phases per layer:
  attn_norm  norm of each row: sums reduced along X (segmented allreduce
             over the whole row)
  q, k, v    kernels.gemm SUMMA (X @ W, W pre-placed; SUMMA needs no
             initial skew, so the activation tiles are used where they are
             and the products land in the same layout)
  rope       RoPE (llama) or the Q/K/V biases (gpt2), elementwise
  attention  kernels.mesh_attention.prefill_attention: attention="ring" (ring
             attention along Y, partial scores reduced along X per head,
             online softmax) or "gemm" (scores by kernels.gemm with
             transpose_b, softmax by max- and sum-allreduces along X, P V by
             kernels.gemm)
  o_proj     kernels.gemm SUMMA
  mlp_norm   residual add (+ bias) and norm
  up, gate   kernels.gemm SUMMA
  act        GELU or SwiGLU (+ bias)
  down       kernels.gemm SUMMA
  residual   residual add (+ bias)
The K and V tiles the attention phase read are the KV cache: they stay on
the PEs, already in the decode cache layout (positions along Y, features
along X).

Decode layout (any grid): the d_model vector along Y, replicated along X
(row y holds chunk y on every PE of the row); attention and d_ff vectors
along X, replicated along Y. Weights are pre-placed so that successive
GEMVs alternate their reduction axis: a GEMV whose input lies along Y keeps
W[chunk y, chunk x] on PE (x, y) and allreduces its partial products along
Y, leaving the result along X; one whose input lies along X keeps
W[chunk x, chunk y] and allreduces along X. No transpose is ever needed.
Phases per layer:
  qkv        norm (allreduce along Y), Q/K/V GEMV (allreduce along Y),
             bias, RoPE
  kv_update  the new K, V into the cache (kernels.kvcache: shift or append)
  attention  q.K partials (allreduce along X per head), softmax with a
             max-allreduce and a sum-allreduce along Y, P V (allreduce
             along Y)
  o_mlp_up   O GEMV (allreduce along X) + residual, norm (along Y),
             up/gate GEMV (along Y), activation
  down       down GEMV (allreduce along X) + residual
Re-layout between prefill and decode: the KV cache needs none (see above).
The weights of the X-reducing GEMVs (O and down projections) are stored
transposed block-wise relative to their prefill placement; relayout_weights
moves them over the fabric once (a block transpose, charged in its own
report; see docs/transformer.md). decode_step places the same tiles itself. The decode input x comes from the host each step (the
embedding of the sampled token; here state.last_hidden).

Whole models (`extrapolate`): one (or a few) layers are emulated and the
per-layer cycles multiplied by the layer count; layers whose weights and
cache do not fit one region are placed on consecutive regions as pipeline
stages (a decode token or a prefill micro-batch passes every stage in
turn; the hand-over between stages is one d_model vector (decode) or
activation tile set (prefill) crossing a region boundary, charged by
`stage_handover_cycles`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

import wse
from wse.config import DTYPES
from wse.errors import ConfigError, SramOverflowError
from wse.gpu import Cluster, GpuReport

from .matmul import gemm as mesh_gemm
from . import collectives, reference, sharded
from .mesh_attention import (GemmAttentionPlan, gather_sequence, gemm_layout_error,
                             longest_gemm_sequence, matrix_to_tiles, place_sequence,
                             prefill_attention, tiles_to_matrix)
from .kvcache import WaferKVCache
from .layers import (NEG_INF, FeatureLayout, SegmentChannel, block_transpose_cycles,
                     block_transpose_hops, block_transpose_program, build_roles, emit_gelu,
                     emit_norm, emit_rope, emit_swiglu, place_matrix, rope_tables)
from .models import KVCache, ModelConfig, ModelWeights

GEMM_ALGORITHM = "summa"


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
# Layouts and placements
@dataclass(frozen=True)
class PrefillLayouts:
    d: FeatureLayout        # d_model along X
    attn: FeatureLayout     # heads along X
    ff: FeatureLayout       # d_ff along X


@dataclass(frozen=True)
class DecodeLayouts:
    d: FeatureLayout        # d_model along Y
    attn: FeatureLayout     # heads along X
    ff: FeatureLayout       # d_ff along X


def prefill_layouts(model: ModelConfig, cfg: wse.WaferConfig) -> PrefillLayouts:
    return PrefillLayouts(FeatureLayout.plain(model.d_model, cfg.cols),
                          FeatureLayout.heads(model.n_heads, model.head_dim, cfg.cols),
                          FeatureLayout.plain(model.d_ff, cfg.cols))


def decode_layouts(model: ModelConfig, cfg: wse.WaferConfig) -> DecodeLayouts:
    return DecodeLayouts(FeatureLayout.plain(model.d_model, cfg.rows),
                         FeatureLayout.heads(model.n_heads, model.head_dim, cfg.cols),
                         FeatureLayout.plain(model.d_ff, cfg.cols))


def _expand_kv(model: ModelConfig, W):
    """K/V weight (or bias) columns repeated so query head h sees its KV head."""
    if W is None:
        return None
    W = np.asarray(W, np.float64)
    group = model.n_heads // model.n_kv_heads
    hd = model.head_dim
    cols = np.array([(h // group) * hd + i for h in range(model.n_heads) for i in range(hd)])
    return W[..., cols]


def _vec(layout: FeatureLayout, v, rows: int, cols: int, along: str) -> np.ndarray:
    """A per-feature vector placed along `along` and replicated across the other axis."""
    placed = layout.scatter(np.asarray(v, np.float64))          # (parts, w)
    if along == "x":
        return np.broadcast_to(placed[None], (rows,) + placed.shape)
    return np.broadcast_to(placed[:, None], (rows, cols, placed.shape[1]))


def _placed_weight(W, rows_layout: FeatureLayout, cols_layout: FeatureLayout) -> np.ndarray:
    """W as the (parts_in*w_in, parts_out*w_out) matrix in layout order (for SUMMA,
    whose PE (x, y) holds block (y, x): exactly the pre-placed tile)."""
    blocks = place_matrix(W, rows_layout, cols_layout)   # (Pi, Po, wi, wo)
    Pi, Po, wi, wo = blocks.shape
    return blocks.transpose(0, 2, 1, 3).reshape(Pi * wi, Po * wo)


# ----------------------------------------------------------------------------
# Engine phases
class _Program(wse.Program):
    """A Program whose loads wait until run(), so phases can allocate and load in
    whatever order reads best (the builder wants every buffer before any load)."""

    def __init__(self, cfg):
        super().__init__(cfg)
        self._pending = []

    def load(self, buffer, data, where=None):
        self._pending.append((buffer, data, where))

    def run(self, *args, **kwargs):
        for buffer, data, where in self._pending:
            super().load(buffer, data, where)
        self._pending = []
        return super().run(*args, **kwargs)


def _run(prog: wse.Program, reads: dict):
    result = prog.run(max_cycles=10 ** 12)
    return {k: result.read(b).astype(np.float64) for k, b in reads.items()}, result.report


def _gemm_phase(tiles, w_in: int, W_placed: np.ndarray, cfg, w_out: int, dtype: str):
    A = tiles_to_matrix(tiles, w_in)
    C, report = mesh_gemm(A, W_placed, cfg, algorithm=GEMM_ALGORITHM, dtype=dtype)
    return matrix_to_tiles(C.astype(np.float64), cfg.rows, cfg.cols, w_out), report


def _norm_kind(model: ModelConfig) -> str:
    return "layer" if model.family == "gpt2" else "rms"


def _prefill_norm_phase(cfg, model, x_tiles, st, lay: FeatureLayout, weight, bias, dtype,
                        residual=None, residual_bias=None):
    """(optional residual add: x = x + residual + residual_bias), then h = norm(x).
    Returns (x, h, report)."""
    R, C = cfg.rows, cfg.cols
    w = lay.width
    prog = wse.Program(cfg)
    x = prog.buffer("x", (st * w,), "float32")
    h = prog.buffer("h", (st * w,), dtype)
    stats = prog.buffer("stats", (3 * st + w,), "float32")
    wt = prog.buffer("norm_w", (w,), "float32")
    bt = prog.buffer("norm_b", (w,), "float32") if bias is not None else None
    res = prog.buffer("res", (st * w,), dtype) if residual is not None else None
    rb = (prog.buffer("res_b", (w,), "float32")
          if residual is not None and residual_bias is not None else None)
    prog.load(x, x_tiles)
    prog.load(wt, _vec(lay, weight, R, C, "x"))
    if bt is not None:
        prog.load(bt, _vec(lay, bias, R, C, "x"))
    if res is not None:
        prog.load(res, residual)
    if rb is not None:
        prog.load(rb, _vec(lay, residual_bias, R, C, "x"))
    row = SegmentChannel(prog, "x", [(0, C - 1)], "row")

    def body(t, parts):
        if res is not None:
            t.add(x.view(), x.view(), res.view())
            if rb is not None:
                for r in range(st):
                    t.add(x.view(r * w, w), x.view(r * w, w), rb.view())
        emit_norm(t, parts, row, parts["row"], x, h, stats, st, w, model.d_model,
                  _norm_kind(model), model.norm_eps, wt, bt)

    build_roles(prog, {"row": row}, body)
    out, report = _run(prog, {"x": x, "h": h})
    return out["x"], out["h"], report


def _prefill_elementwise_phase(cfg, tiles: dict, st: int, dtype: str, body_fn, consts=None):
    """A phase without communication over named tile sets (all of width*st per PE).
    tiles: name -> (array (R, C, n), dtype). consts: name -> (array, dtype)."""
    prog = wse.Program(cfg)
    bufs = {}
    arrays = {**tiles, **(consts or {})}
    for name, (arr, dt) in arrays.items():
        bufs[name] = prog.buffer(name, (arr.shape[-1],), dt)
    for name, (arr, dt) in arrays.items():
        prog.load(bufs[name], arr)
    role = prog.role("pe")
    with role.task("main", entry=True) as t:
        body_fn(t, bufs)
    return _run(prog, {k: bufs[k] for k in tiles})


def _layer_prefill(cfg, model, lw, x_tiles, st, lay: PrefillLayouts, positions, dtype,
                   attention_algorithm: str):
    """One layer on the prefill layout. Returns (x_tiles, k_tiles, v_tiles, reports, names)."""
    R, C = cfg.rows, cfg.cols
    reports, names = [], []

    def add(name, report):
        reports.append(report)
        names.append(name)

    x_tiles, h, r = _prefill_norm_phase(cfg, model, x_tiles, st, lay.d, lw.attn_norm,
                                        lw.attn_norm_bias, dtype)
    add("attn_norm", r)
    wa = lay.attn.width
    qkv = {}
    for name, W in (("q", lw.wq), ("k", _expand_kv(model, lw.wk)), ("v", _expand_kv(model, lw.wv))):
        qkv[name], r = _gemm_phase(h, lay.d.width, _placed_weight(W, lay.d, lay.attn), cfg, wa,
                                   dtype)
        add(f"{name}_proj", r)
    n = st * wa
    if model.family == "llama":
        cos, sin = rope_tables(lay.attn, np.arange(R * st), model.rope_theta)  # (R*st, C, wa/2)
        cos = cos.reshape(R, st, C, wa // 2).transpose(0, 2, 1, 3).reshape(R, C, n // 2)
        sin = sin.reshape(R, st, C, wa // 2).transpose(0, 2, 1, 3).reshape(R, C, n // 2)

        def rope_body(t, b):
            for name in ("q", "k"):
                emit_rope(t, b[name], b["cos"], b["sin"], b["tmp"], n)
        out, r = _prefill_elementwise_phase(
            cfg, {"q": (qkv["q"], dtype), "k": (qkv["k"], dtype)}, st, dtype, rope_body,
            {"cos": (cos, "float32"), "sin": (sin, "float32"),
             "tmp": (np.zeros((R, C, n)), "float32")})
        qkv.update(out)
        add("rope", r)
    else:
        biases = {"q": lw.bq, "k": _expand_kv(model, lw.bk), "v": _expand_kv(model, lw.bv)}
        consts = {f"b{k}": (np.tile(_vec(lay.attn, v, R, C, "x"), (1, 1, st)), "float32")
                  for k, v in biases.items()}

        def bias_body(t, b):
            for name in ("q", "k", "v"):
                t.add(b[name].view(), b[name].view(), b[f"b{name}"].view())
        out, r = _prefill_elementwise_phase(cfg, {k: (qkv[k], dtype) for k in qkv}, st, dtype,
                                            bias_body, consts)
        qkv.update(out)
        add("qkv_bias", r)
    seq = len(positions)
    o_tiles, r = prefill_attention(cfg, lay.attn, qkv["q"], qkv["k"], qkv["v"], st, st, seq,
                                   True, 1.0 / math.sqrt(model.head_dim), dtype,
                                   attention_algorithm)
    add("attention", r)
    attn_out, r = _gemm_phase(o_tiles, wa, _placed_weight(lw.wo, lay.attn, lay.d), cfg,
                              lay.d.width, dtype)
    add("o_proj", r)
    x_tiles, h, r = _prefill_norm_phase(cfg, model, x_tiles, st, lay.d, lw.mlp_norm,
                                        lw.mlp_norm_bias, dtype, residual=attn_out,
                                        residual_bias=lw.bo)
    add("mlp_norm", r)
    wf = lay.ff.width
    up, r = _gemm_phase(h, lay.d.width, _placed_weight(lw.w_up, lay.d, lay.ff), cfg, wf, dtype)
    add("up_proj", r)
    nf = st * wf
    if model.gated:
        gate, r = _gemm_phase(h, lay.d.width, _placed_weight(lw.w_gate, lay.d, lay.ff), cfg, wf,
                              dtype)
        add("gate_proj", r)

        def act_body(t, b):
            emit_swiglu(t, b["gate"], b["up"], b["a"], nf)
        out, r = _prefill_elementwise_phase(
            cfg, {"a": (np.zeros((R, C, nf)), dtype)}, st, dtype, act_body,
            {"gate": (gate, "float32"), "up": (up, "float32")})
    else:
        bup = np.tile(_vec(lay.ff, lw.b_up, R, C, "x"), (1, 1, st))

        def act_body(t, b):
            t.add(b["u"].view(), b["u"].view(), b["bup"].view())
            emit_gelu(t, b["u"], b["tmp"], nf)
            t.mov(b["a"].view(), b["u"].view())
        out, r = _prefill_elementwise_phase(
            cfg, {"a": (np.zeros((R, C, nf)), dtype)}, st, dtype, act_body,
            {"u": (up, "float32"), "bup": (bup, "float32"),
             "tmp": (np.zeros((R, C, nf)), "float32")})
    add("act", r)
    down, r = _gemm_phase(out["a"], wf, _placed_weight(lw.w_down, lay.ff, lay.d), cfg,
                          lay.d.width, dtype)
    add("down_proj", r)
    consts = {"down": (down, dtype)}
    if lw.b_down is not None:
        consts["bd"] = (np.tile(_vec(lay.d, lw.b_down, R, C, "x"), (1, 1, st)), "float32")

    def res_body(t, b):
        t.add(b["x"].view(), b["x"].view(), b["down"].view())
        if "bd" in b:
            t.add(b["x"].view(), b["x"].view(), b["bd"].view())
    out, r = _prefill_elementwise_phase(cfg, {"x": (x_tiles, "float32")}, st, dtype, res_body,
                                        consts)
    add("residual", r)
    return out["x"], qkv["k"], qkv["v"], reports, names


# ----------------------------------------------------------------------------
# Prefill
@dataclass
class PrefillResult:
    """hidden: (seq, d_model); cache: the decode state (WaferKVCache or KVCache)."""
    hidden: np.ndarray
    cache: object


def check_prefill_fits(model: ModelConfig, cfg: wse.WaferConfig, seq: int, dtype: str,
                       attention: str = "ring") -> None:
    """One clear error when the sequence's KV cache (and the attention phase's
    buffers) cannot fit the grid's SRAM, or attention="gemm" cannot run here."""
    lay = FeatureLayout.heads(model.n_heads, model.head_dim, cfg.cols)
    st = -(-seq // cfg.rows)
    if attention == "gemm":
        why = gemm_layout_error(cfg.rows, lay)
        if why:
            raise ConfigError(why)
        plan = GemmAttentionPlan(cfg.rows, lay.group, lay.width, st, st, dtype, True)
        need = plan.sram_bytes(cfg)
        if need > cfg.sram_bytes:
            raise SramOverflowError(
                f"a {seq}-token prefill of {model.name} on a {cfg.rows} x {cfg.cols} grid with "
                f"gemm attention keeps {st} x {plan.nt} scores per PE and needs {need} bytes per "
                f"PE, more than the {cfg.sram_bytes} of a PE; the longest sequence that fits "
                f"this grid is {longest_gemm_sequence(cfg, lay, dtype)} tokens")
    item = 2 if dtype == "float16" else 4
    w = lay.width
    kv = 2 * (2 * st * w + st) * item        # two ring slots of K, V, bias
    need = kv + st * w * (2 * item + 4) + st * st * 4 + (cfg.rows + 2 * st + 4) * 4 + st * st * 4
    if need > cfg.sram_bytes:
        longest = 0
        for s in range(1, seq):
            stt = -(-s // cfg.rows)
            n2 = (2 * (2 * stt * w + stt) * item + stt * w * (2 * item + 4) + 2 * stt * stt * 4
                  + (cfg.rows + 2 * stt + 4) * 4)
            if n2 > cfg.sram_bytes:
                break
            longest = s
        raise SramOverflowError(
            f"a {seq}-token prefill of {model.name} on a {cfg.rows} x {cfg.cols} grid puts "
            f"{st} positions of the KV cache ({w} features each) on every PE and needs "
            f"{need} bytes per PE in the attention phase, more than the {cfg.sram_bytes} of a PE; "
            f"the longest sequence that fits this grid is {longest} tokens")


def prefill(model: ModelConfig, weights: ModelWeights, x, target, *, dtype: str = "float32",
            policy: str = "shift", tp: int | None = None, attention: str = "ring"):
    """All layers of `weights` over x (seq, d_model) on `target`.

    attention (wafer only): "ring" (ring attention along Y, online softmax) or
    "gemm" (scores by kernels.gemm, softmax by max- and sum-allreduces along X,
    P V by kernels.gemm; see kernels/mesh_attention.py).

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
        raise ConfigError(f"wafer prefill needs a square grid (SUMMA keeps the activations "
                          f"in place only when rows == cols), got {cfg.rows} x {cfg.cols}")
    lay = prefill_layouts(model, cfg)
    if attention not in ("ring", "gemm"):
        raise ConfigError(f"unknown attention algorithm {attention!r}: expected 'ring' or 'gemm'")
    check_prefill_fits(model, cfg, seq, dtype, attention)
    R = cfg.rows
    st = -(-seq // R)
    positions = np.arange(seq)
    if model.family == "gpt2":
        x = x + np.asarray(weights.position_embedding[:seq], np.float64)
    x_tiles = place_sequence(x, lay.d, R, st)
    reports, names, k_all, v_all = [], [], [], []
    for i, lw in enumerate(weights.layers):
        x_tiles, k, v, reps, nms = _layer_prefill(cfg, model, lw, x_tiles, st, lay, positions,
                                                  dtype, attention)
        reports += reps
        names += [f"L{i}.{n}" for n in nms]
        k_all.append(k)
        v_all.append(v)
    hidden = gather_sequence(x_tiles, lay.d, seq)
    report = wse.RunReport.sequence(reports, names)
    report.extra["transformer"] = {"mode": "prefill", "model": model.name, "seq": seq,
                                   "layers": weights.n_layers, "dtype": dtype,
                                   "positions_per_row": st, "attention": attention}
    cache = WaferKVCache.from_tiles(model, R, cfg.cols, lay.attn, policy, dtype, k_all, v_all,
                                    seq, hidden[-1])
    return PrefillResult(hidden, cache), report


# ----------------------------------------------------------------------------
# Decode
def _decode_gemv(t, out_partial, x_view, W, k: int, n: int):
    t.fill(out_partial.view(0, n), 0.0)
    t.matmul(out_partial.view(0, n), x_view, W.view(), 1, k, n)


def _layer_decode(cfg, model, lw, x_vec, cache: WaferKVCache, layer: int, lay: DecodeLayouts,
                  pos: int, dtype: str, moves, insert, grow):
    """One decode layer. x_vec: (R, C, wd) the d_model vector along Y.
    Returns (x_vec, reports, names); updates cache.keys/values[layer]."""
    R, C = cfg.rows, cfg.cols
    wd, wa, wf = lay.d.width, lay.attn.width, lay.ff.width
    kind = _norm_kind(model)
    reports, names = [], []

    # ---- phase 1: norm, QKV GEMV, bias, RoPE
    prog = _Program(cfg)
    x = prog.buffer("x", (wd,), "float32")
    h = prog.buffer("h", (wd,), dtype)
    stats = prog.buffer("stats", (3 + wd,), "float32")
    nw = prog.buffer("norm_w", (wd,), "float32")
    wqkv = prog.buffer("w_qkv", (wd * 3 * wa,), dtype)
    qkv = prog.buffer("qkv", (3 * wa,), "float32")
    prog.load(x, x_vec)
    prog.load(nw, _vec(lay.d, lw.attn_norm, R, C, "y"))
    blocks = [place_matrix(W, lay.d, lay.attn) for W in
              (lw.wq, _expand_kv(model, lw.wk), _expand_kv(model, lw.wv))]   # (R, C, wd, wa)
    prog.load(wqkv, np.concatenate(blocks, axis=3).reshape(R, C, -1))
    nb = None
    if lw.attn_norm_bias is not None:
        nb = prog.buffer("norm_b", (wd,), "float32")
        prog.load(nb, _vec(lay.d, lw.attn_norm_bias, R, C, "y"))
    extra = None
    if model.family == "llama":
        cos, sin = rope_tables(lay.attn, [pos], model.rope_theta)        # (1, C, wa/2)
        extra = prog.buffer("rope", (2 * wa,), "float32")                # cos, sin, tmp
        tab = np.concatenate([cos[0], sin[0], np.zeros((C, wa))], axis=1)
        prog.load(extra, np.broadcast_to(tab[None], (R, C, 2 * wa)))
    else:
        extra = prog.buffer("bqkv", (3 * wa,), "float32")
        b = np.concatenate([lay.attn.scatter(lw.bq), lay.attn.scatter(_expand_kv(model, lw.bk)),
                            lay.attn.scatter(_expand_kv(model, lw.bv))], axis=1)
        prog.load(extra, np.broadcast_to(b[None], (R, C, 3 * wa)))
    col = SegmentChannel(prog, "y", [(0, R - 1)], "col")

    def qkv_body(t, parts):
        emit_norm(t, parts, col, parts["col"], x, h, stats, 1, wd, model.d_model, kind,
                  model.norm_eps, nw, nb)
        _decode_gemv(t, qkv, h.view(), wqkv, wd, 3 * wa)
        col.allreduce(t, parts["col"], qkv.view(), 3 * wa)
        if model.family == "llama":
            half = wa // 2
            cosb = _Sub(extra, 0)
            sinb = _Sub(extra, half)
            tmp = _Sub(extra, wa)
            for off in (0, wa):
                emit_rope(t, _Sub(qkv, off), cosb, sinb, tmp, wa)
        else:
            t.add(qkv.view(), qkv.view(), extra.view())

    build_roles(prog, {"col": col}, qkv_body)
    out, r = _run(prog, {"qkv": qkv})
    reports.append(r)
    names.append("qkv")
    qkv_vec = out["qkv"]                                     # (R, C, 3*wa), equal down columns

    # ---- phase 2: KV cache update (moves between rows + insert on the last row)
    cap = cache.capacity
    K = cache.keys[layer].reshape(R, C, cap * wa)
    V = cache.values[layer].reshape(R, C, cap * wa)
    bias = cache.bias()
    prog = _Program(cfg)
    kb = prog.buffer("k_cache", (cap * wa,), dtype)
    vb = prog.buffer("v_cache", (cap * wa,), dtype)
    bb = prog.buffer("bias", (cap,), "float32")
    newkv = prog.buffer("new_kv", (2 * wa,), dtype)
    prog.load(kb, K)
    prog.load(vb, V)
    prog.load(bb, np.broadcast_to(bias[:, None, :], (R, C, cap)))
    prog.load(newkv, qkv_vec[:, :, wa:])
    send_slot = np.full((R, C), 0, np.int64)
    recv_slot = np.full((R, C), 0, np.int64)
    sender = np.zeros((R, C), bool)
    receiver = np.zeros((R, C), bool)
    for row, src, dst in moves:
        send_slot[row] = src
        recv_slot[row - 1] = dst
        sender[row] = True
        receiver[row - 1] = True
    inserter = np.zeros((R, C), bool)
    inserter[insert[0]] = True
    ins_slot = insert[1]
    p_send = prog.param("send_slot", send_slot)
    p_recv = prog.param("recv_slot", recv_slot)
    plan = None
    if moves:
        from wse import routes
        plan = routes.transfers(prog, "y", [(row, row - 1) for row, _, _ in moves], name="kvmv")
        s_color = prog.color_param_indices("mv_send", plan.send_color)
        r_color = prog.color_param_indices("mv_recv", plan.recv_color)
    key = sender * 1 + receiver * 2 + inserter * 4
    for value in np.unique(key):
        if value == 0:
            continue
        role = prog.role(f"kv{value}", where=key == value)
        with role.task("main", entry=True) as t:
            rs, rr = t.reg(), t.reg()
            t.set(rs, p_send)
            t.set(rr, p_recv)
            if value & 2:
                t.mov(kb.view(offset=rr * wa, length=wa), prog.fabin(r_color, wa), async_=True)
            if value & 1:
                t.mov(prog.fabout(s_color, wa), kb.view(offset=rs * wa, length=wa))
                t.mov(prog.fabout(s_color, wa), vb.view(offset=rs * wa, length=wa))
                t.fill(bb.view(offset=rs, length=1), NEG_INF)
            if value & 2:
                t.wait()
                t.mov(vb.view(offset=rr * wa, length=wa), prog.fabin(r_color, wa))
                t.fill(bb.view(offset=rr, length=1), 0.0)
            if value & 4:
                t.mov(kb.view(ins_slot * wa, wa), newkv.view(0, wa))
                t.mov(vb.view(ins_slot * wa, wa), newkv.view(wa, wa))
                t.fill(bb.view(ins_slot, 1), 0.0)
    out, r = _run(prog, {"k": kb, "v": vb, "bias": bb})
    reports.append(r)
    names.append("kv_update")
    K, V, dev_bias = out["k"], out["v"], out["bias"]
    cache.keys[layer] = K.reshape(R, C, cap, wa)
    cache.values[layer] = V.reshape(R, C, cap, wa)

    # ---- phase 3: attention over the cache
    prog = _Program(cfg)
    # the layer's weights stay resident while the cache grows: reserve them first,
    # so that an overflow names the cache buffer
    resident = _resident_bytes(model, lay, dtype)
    if resident > 0:
        prog.buffer("resident_weights", (resident // 4,), "float32")
    q = prog.buffer("q", (wa,), dtype)
    kb = prog.buffer("k_cache", (cap * wa,), dtype)
    vb = prog.buffer("v_cache", (cap * wa,), dtype)
    bb = prog.buffer("bias", (cap,), "float32")
    s = prog.buffer("scores", (cap,), "float32")
    o = prog.buffer("o_acc", (wa,), "float32")
    sc = prog.buffer("scalars", (4,), "float32")
    ob = prog.buffer("o", (wa,), dtype)
    prog.load(q, qkv_vec[:, :, :wa])
    prog.load(kb, K)
    prog.load(vb, V)
    prog.load(bb, dev_bias)
    heads = SegmentChannel(prog, "x", lay.attn.segments, "hd")
    col = SegmentChannel(prog, "y", [(0, R - 1)], "col")
    scale = 1.0 / math.sqrt(model.head_dim)

    def attn_body(t, parts):
        t.fill(s.view(), 0.0)
        t.matmul(s.view(), q.view(), kb.view(), 1, wa, cap, transpose_b=True)
        heads.allreduce(t, parts["hd"], s.view(), cap)
        t.scale(s.view(), s.view(), scale)
        t.add(s.view(), s.view(), bb.view())
        t.rmax(sc.view(0, 1), s.view())
        col.allreduce(t, parts["col"], sc.view(0, 1), 1, "max")
        t.subs(s.view(), s.view(), sc.scalar(0))
        t.exp(s.view(), s.view())
        t.sum(sc.view(1, 1), s.view())
        col.allreduce(t, parts["col"], sc.view(1, 1), 1, "sum")
        t.fill(o.view(), 0.0)
        t.matmul(o.view(), s.view(), vb.view(), 1, cap, wa)
        col.allreduce(t, parts["col"], o.view(), wa)
        t.recip(sc.view(1, 1), sc.view(1, 1))
        t.scale(ob.view(), o.view(), sc.scalar(1))

    build_roles(prog, {"hd": heads, "col": col}, attn_body)
    out, r = _run(prog, {"o": ob})
    reports.append(r)
    names.append("attention")
    o_vec = out["o"]                                          # (R, C, wa) along X

    # ---- phase 4: O GEMV + residual, norm, up/gate GEMV, activation
    prog = _Program(cfg)
    ov = prog.buffer("o", (wa,), dtype)
    wo = prog.buffer("w_o", (wa * wd,), dtype)
    part = prog.buffer("partial", (wd,), "float32")
    x = prog.buffer("x", (wd,), "float32")
    h = prog.buffer("h", (wd,), dtype)
    stats = prog.buffer("stats", (3 + wd,), "float32")
    nw = prog.buffer("norm_w", (wd,), "float32")
    n_up = 2 * wf if model.gated else wf
    wup = prog.buffer("w_up", (wd * n_up,), dtype)
    up = prog.buffer("up", (n_up,), "float32")
    act = prog.buffer("act", (wf,), dtype)
    prog.load(ov, o_vec)
    prog.load(wo, decode_x_reducing_tiles(lw.wo, lay.attn, lay.d, R, C))
    prog.load(x, x_vec)
    prog.load(nw, _vec(lay.d, lw.mlp_norm, R, C, "y"))
    ups = [lw.w_gate, lw.w_up] if model.gated else [lw.w_up]
    prog.load(wup, np.concatenate([place_matrix(W, lay.d, lay.ff) for W in ups],
                                  axis=3).reshape(R, C, -1))
    nb = bo = bup = tmp = None
    if model.has_bias:
        nb = prog.buffer("norm_b", (wd,), "float32")
        prog.load(nb, _vec(lay.d, lw.mlp_norm_bias, R, C, "y"))
        bo = prog.buffer("b_o", (wd,), "float32")
        prog.load(bo, _vec(lay.d, lw.bo, R, C, "y"))
        bup = prog.buffer("b_up", (wf,), "float32")
        prog.load(bup, _vec(lay.ff, lw.b_up, R, C, "x"))
        tmp = prog.buffer("tmp", (wf,), "float32")
    row = SegmentChannel(prog, "x", [(0, C - 1)], "row")
    col = SegmentChannel(prog, "y", [(0, R - 1)], "col")

    def mlp_body(t, parts):
        _decode_gemv(t, part, ov.view(), wo, wa, wd)
        row.allreduce(t, parts["row"], part.view(), wd)
        t.add(x.view(), x.view(), part.view())
        if bo is not None:
            t.add(x.view(), x.view(), bo.view())
        emit_norm(t, parts, col, parts["col"], x, h, stats, 1, wd, model.d_model, kind,
                  model.norm_eps, nw, nb)
        _decode_gemv(t, up, h.view(), wup, wd, n_up)
        col.allreduce(t, parts["col"], up.view(), n_up)
        if model.gated:
            emit_swiglu(t, _Sub(up, 0), _Sub(up, wf), act, wf)
        else:
            t.add(up.view(), up.view(), bup.view())
            emit_gelu(t, up, tmp, wf)
            t.mov(act.view(), up.view())

    build_roles(prog, {"row": row, "col": col}, mlp_body)
    out, r = _run(prog, {"x": x, "act": act})
    reports.append(r)
    names.append("o_mlp_up")
    x_vec, a_vec = out["x"], out["act"]

    # ---- phase 5: down GEMV + residual
    prog = _Program(cfg)
    av = prog.buffer("act", (wf,), dtype)
    wdn = prog.buffer("w_down", (wf * wd,), dtype)
    part = prog.buffer("partial", (wd,), "float32")
    x = prog.buffer("x", (wd,), "float32")
    prog.load(av, a_vec)
    prog.load(wdn, decode_x_reducing_tiles(lw.w_down, lay.ff, lay.d, R, C))
    prog.load(x, x_vec)
    bd = None
    if lw.b_down is not None:
        bd = prog.buffer("b_down", (wd,), "float32")
        prog.load(bd, _vec(lay.d, lw.b_down, R, C, "y"))
    row = SegmentChannel(prog, "x", [(0, C - 1)], "row")

    def down_body(t, parts):
        _decode_gemv(t, part, av.view(), wdn, wf, wd)
        row.allreduce(t, parts["row"], part.view(), wd)
        t.add(x.view(), x.view(), part.view())
        if bd is not None:
            t.add(x.view(), x.view(), bd.view())

    build_roles(prog, {"row": row}, down_body)
    out, r = _run(prog, {"x": x})
    reports.append(r)
    names.append("down")
    return out["x"], reports, names


class _Sub:
    """A buffer seen from an element offset (so emitters can work on a part of it)."""

    def __init__(self, buf, offset: int):
        self.buf, self.offset = buf, offset

    def view(self, offset=0, length=None, stride: int = 1):
        if length is None:
            length = self.buf.size - self.offset
        return self.buf.view(offset=offset + self.offset, length=length, stride=stride)


def decode_weight_bytes(model: ModelConfig, lay: DecodeLayouts, dtype: str) -> int:
    """Bytes per PE of one layer's decode weights (GEMV tiles; norms and biases aside)."""
    item = 2 if dtype == "float16" else 4
    wd, wa, wf = lay.d.width, lay.attn.width, lay.ff.width
    n_up = 2 * wf if model.gated else wf
    return item * (wd * 3 * wa + wa * wd + wd * n_up + wf * wd)


def _resident_bytes(model, lay, dtype) -> int:
    """SRAM the attention phase must leave to the layer's weights, which stay resident."""
    return decode_weight_bytes(model, lay, dtype) // 4 * 4


def decode_step(model: ModelConfig, weights: ModelWeights, state, target, x=None, *,
                dtype: str | None = None, policy: str | None = None, tp: int | None = None):
    """One new position. state: a WaferKVCache (from prefill on a wafer) or a
    kernels.models.KVCache (placed on the wafer as prefill would leave it; on a
    cluster used as is). x: (d_model,) input (default: state.last_hidden).

    Returns (out (d_model,), new_state, report). On a wafer the new state is a
    WaferKVCache (the given one is updated in place and returned)."""
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
    x_vec = np.array(_vec(lay.d, x, cfg.rows, cfg.cols, "y"))
    reports, names = [], []
    for i, lw in enumerate(weights.layers):
        try:
            x_vec, reps, nms = _layer_decode(cfg, model, lw, x_vec, state, i, lay, pos, dtype,
                                             moves, insert, grow)
        except SramOverflowError as err:
            counts = state.row_counts()
            raise SramOverflowError(
                f"decode of position {pos}: the KV cache no longer fits the {cfg.rows} x "
                f"{cfg.cols} grid (policy {state.policy!r}: the fullest row would hold "
                f"{int(counts.max()) + 1} positions, {state.capacity} slots per PE, next to "
                f"the layer's resident weights); engine: {err}") from err
        reports += reps
        names += [f"L{i}.{n}" for n in nms]
    state.commit_append(moves, insert, pos)
    state.length = pos + 1
    out = lay.d.gather(x_vec[:, 0, :].reshape(cfg.rows, lay.d.width))
    state.last_hidden = out.copy()
    state.history.append(grow)
    report = wse.RunReport.sequence(reports, names)
    report.extra["transformer"] = {"mode": "decode", "model": model.name, "position": pos,
                                   "layers": weights.n_layers, "dtype": dtype,
                                   "policy": state.policy, "cache_slots_per_row": state.capacity,
                                   "moves": len(moves)}
    return out, state, report


# ----------------------------------------------------------------------------
# The one-time re-layout of the weights between prefill and decode
def decode_x_reducing_tiles(W, rows_layout: FeatureLayout, d: FeatureLayout, R: int,
                            C: int) -> np.ndarray:
    """Decode placement of an X-reducing GEMV's weight (Wo, W_down): PE (x, y)
    holds W[part x of the input features, chunk y of d_model]."""
    return place_matrix(W, rows_layout, d).transpose(1, 0, 2, 3).reshape(R, C, -1)


def prefill_weight_tiles(W, rows_layout: FeatureLayout, cols_layout: FeatureLayout) -> np.ndarray:
    """Prefill (SUMMA) placement: PE (x, y) holds W[part y of the input, part x of
    the output] (block (y, x) of _placed_weight)."""
    blocks = place_matrix(W, rows_layout, cols_layout)
    return blocks.reshape(blocks.shape[0], blocks.shape[1], -1)


def relayout_weights(model: ModelConfig, weights: ModelWeights, cfg: wse.WaferConfig,
                     dtype: str = "float32"):
    """Move Wo and W_down of every layer from their prefill PEs to their decode
    PEs over the fabric, once, between prefill and decode.

    Both runs use the same square region (wafer prefill needs R == C; decode
    could run elsewhere, but the re-layout emulated is the one on the region
    that prefilled). On it the prefill layouts of d_model (plain over C) and of
    the attention and d_ff features equal decode's, so decode's tile of PE
    (x, y) is exactly prefill's tile of PE (y, x): a block transpose
    (kernels.layers.block_transpose_program) of each PE's concatenated
    Wo | W_down tile (wa*wd + wf*wd values). Returns ([{"wo": (R, C, wa*wd),
    "w_down": (R, C, wf*wd)} per layer] as read back from the decode PEs,
    report with one phase per layer and report.extra["relayout"] holding the
    cost bounds of block_transpose_cycles)."""
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
        prog, dst = block_transpose_program(cfg, tiles, dtype)
        result = prog.run(max_cycles=10 ** 12)
        moved = result.read(dst).astype(np.float64)
        out.append({"wo": moved[:, :, :n_wo], "w_down": moved[:, :, n_wo:]})
        reports.append(result.report)
        names.append(f"L{i}.relayout")
    report = wse.RunReport.sequence(reports, names)
    b = tiles.shape[2]
    lower, upper = block_transpose_cycles(cfg, R, b)
    report.extra["relayout"] = {"wavelets_per_pe": b, "layers": len(reports),
                                "model_cycles_per_layer": [lower, upper],
                                "expected_wavelet_hops_per_layer": block_transpose_hops(R, b)}
    return out, report


# ----------------------------------------------------------------------------
# Comparison
@dataclass
class Comparison:
    """Side by side: wafer and GPU figures for the same work."""

    rows: list = field(default_factory=list)     # (metric, wafer, gpu, unit)
    tokens: int = 1

    def to_dict(self) -> dict:
        return {m: {"wafer": w, "gpu": g, "unit": u} for m, w, g, u in self.rows}

    def __str__(self) -> str:
        def fmt(v):
            if isinstance(v, str):
                return v
            if v is None:
                return "-"
            return f"{v:.4g}"
        width = max(len(m) for m, *_ in self.rows)
        lines = [f"{'metric'.ljust(width)}  {'wafer':>12}  {'gpu':>12}  unit"]
        for m, w, g, u in self.rows:
            lines.append(f"{m.ljust(width)}  {fmt(w):>12}  {fmt(g):>12}  {u}")
        return "\n".join(lines)


def compare(wafer_report: wse.RunReport, gpu_report: GpuReport, tokens: int = 1) -> Comparison:
    """Latency, tokens/s, compute and communication time, bytes moved and energy.

    tokens: tokens the reports' work produces (1 for a decode step, seq for a
    prefill). Wafer compute time is the mean over PEs of the cycles they spent
    in vector work; communication time is the rest of the run (the wafer
    overlaps the two, so they need not add up to the latency). Wafer bytes:
    wavelet-hops x 4 B (every link crossing of a 32-bit wavelet) and the
    busiest link's wavelets x 4 B; GPU bytes: bytes sent over NVLink and the
    network, counted from the collectives' transfers."""
    if not isinstance(wafer_report, wse.RunReport):
        raise ConfigError(f"wafer_report must be a wse.RunReport, got "
                          f"{type(wafer_report).__name__}")
    if not isinstance(gpu_report, GpuReport):
        raise ConfigError(f"gpu_report must be a wse.gpu.GpuReport, got "
                          f"{type(gpu_report).__name__}")
    w, g = wafer_report, gpu_report
    compute_w = float(w.compute_cycles.mean()) / w.clock_hz
    rows = [
        ("machine", f"{w.rows}x{w.cols} PEs", f"{g.n_gpus}x {g.device}", ""),
        ("latency", w.seconds, g.seconds, "s"),
        ("tokens per second", tokens / w.seconds if w.seconds else None,
         tokens / g.seconds if g.seconds else None, "tok/s"),
        ("compute time", compute_w, g.compute_seconds, "s"),
        ("communication time", max(w.seconds - compute_w, 0.0), g.comm_seconds, "s"),
        ("bytes moved", 4.0 * w.wavelet_hops, float(g.bytes_sent_total), "B"),
        ("busiest link / per-GPU max", 4.0 * w.busiest_link_wavelets,
         float(np.max(g.bytes_sent_per_gpu)) if len(g.bytes_sent_per_gpu) else 0.0, "B"),
        ("FLOPs", float(w.flops), float(g.flops), "FLOP"),
        ("energy", w.energy_joules, g.energy_joules, "J"),
    ]
    return Comparison(rows, tokens)


# ----------------------------------------------------------------------------
# Whole models: extrapolation from emulated layers
@dataclass
class Extrapolation:
    layers_emulated: int
    cycles_per_layer: float
    n_layers: int
    layers_per_region: int
    regions: int
    handover_cycles: int
    clock_hz: float
    tokens: int = 1

    @property
    def cycles(self) -> float:
        return self.cycles_per_layer * self.n_layers + self.handover_cycles * (self.regions - 1)

    @property
    def seconds(self) -> float:
        return self.cycles / self.clock_hz

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds

    def to_dict(self) -> dict:
        return {"layers_emulated": self.layers_emulated,
                "cycles_per_layer": self.cycles_per_layer, "n_layers": self.n_layers,
                "layers_per_region": self.layers_per_region, "regions": self.regions,
                "handover_cycles": self.handover_cycles, "cycles": self.cycles,
                "seconds": self.seconds, "tokens_per_second": self.tokens_per_second}


def stage_handover_cycles(cfg: wse.WaferConfig, wavelets_per_pe: int, distance: int) -> int:
    """A region passes its output to the next region: every PE of its boundary
    streams wavelets_per_pe values `distance` hops, a send and a receive each
    issued at 0 (collectives.stream_cycles)."""
    return collectives.stream_cycles(distance, wavelets_per_pe, cfg)


def extrapolate(report: wse.RunReport, model: ModelConfig, layers_emulated: int,
                cfg: wse.WaferConfig, bytes_per_layer_per_pe: int, tokens: int = 1,
                handover_wavelets: int = 1) -> Extrapolation:
    """Whole-model time from `layers_emulated` emulated layers: cycles per layer
    times n_layers, plus a hand-over between consecutive pipeline regions.
    bytes_per_layer_per_pe: SRAM one layer needs per PE (weights + cache);
    layers_per_region = floor(sram / that)."""
    if layers_emulated < 1:
        raise ConfigError("layers_emulated must be >= 1")
    per_region = max(int(cfg.sram_bytes // max(bytes_per_layer_per_pe, 1)), 0)
    if per_region < 1:
        raise SramOverflowError(f"one layer of {model.name} needs {bytes_per_layer_per_pe} bytes "
                                f"per PE on a {cfg.rows} x {cfg.cols} region; a PE has "
                                f"{cfg.sram_bytes}")
    regions = -(-model.n_layers // per_region)
    hand = stage_handover_cycles(cfg, handover_wavelets, max(cfg.rows, cfg.cols))
    return Extrapolation(layers_emulated, report.cycles / layers_emulated, model.n_layers,
                         per_region, regions, hand, cfg.clock_hz, tokens)


def reference_prefill(model, weights, x):
    """kernels.reference.prefill (re-exported for symmetry in tests)."""
    return reference.prefill(model, weights, x)
