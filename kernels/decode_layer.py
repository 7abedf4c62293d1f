"""One decoder layer of a decode step on the mesh, one engine run per phase.

Layout (any grid): the d_model vector along Y, replicated along X (row y
holds chunk y on every PE of the row); attention and d_ff vectors along X,
replicated along Y. Weights are pre-placed so that successive GEMVs
alternate their reduction axis: a GEMV whose input lies along Y keeps
W[chunk y, chunk x] on PE (x, y) and allreduces its partial products along
Y, leaving the result along X; one whose input lies along X keeps
W[chunk x, chunk y] (`decode_x_reducing_tiles`) and allreduces along X. No
transpose is ever needed.

The phases (PHASES), each built and run by its own function; each reads its
inputs in exactly the layout the previous one left them in:
  qkv        norm (allreduce along Y), Q/K/V GEMV (allreduce along Y),
             bias, RoPE                                    (qkv_phase)
  kv_update  the new K, V into the cache          (kvcache.kv_update_phase)
  attention  q.K partials (allreduce along X per head), softmax with a
             max-allreduce and a sum-allreduce along Y, P V (allreduce
             along Y)                                (attention_phase)
  o_mlp_up   O GEMV (allreduce along X) + residual, norm (along Y),
             up/gate GEMV (along Y), activation        (o_mlp_up_phase)
  down       down GEMV (allreduce along X) + residual      (down_phase)
`run_layer` runs the five in turn.

The phase builders allocate each buffer next to its load, which
wse.Program allows with load(..., deferred=True): the loads are written once
every buffer is allocated.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

import wse

from .kvcache import WaferKVCache, kv_update_phase
from .layers import (FeatureLayout, SegmentChannel, SubBuffer, build_roles, emit_gelu,
                     emit_gemv, emit_norm, emit_rope, emit_swiglu, expand_kv_heads, norm_kind,
                     place_matrix, place_vector, rope_tables, run_phase)
from .models import ModelConfig

PHASES = ("qkv", "kv_update", "attention", "o_mlp_up", "down")


@dataclass(frozen=True)
class DecodeLayouts:
    """The feature layouts of the decode layout (`decode_layouts`)."""

    d: FeatureLayout        # d_model along Y
    attn: FeatureLayout     # heads along X
    ff: FeatureLayout       # d_ff along X


def decode_layouts(model: ModelConfig, cfg: wse.WaferConfig) -> DecodeLayouts:
    return DecodeLayouts(FeatureLayout.plain(model.d_model, cfg.rows),
                         FeatureLayout.heads(model.n_heads, model.head_dim, cfg.cols),
                         FeatureLayout.plain(model.d_ff, cfg.cols))


def decode_x_reducing_tiles(W, rows_layout: FeatureLayout, d: FeatureLayout, R: int,
                            C: int) -> np.ndarray:
    """Decode placement of an X-reducing GEMV's weight (Wo, W_down): PE (x, y)
    holds W[part x of the input features, chunk y of d_model]."""
    return place_matrix(W, rows_layout, d).transpose(1, 0, 2, 3).reshape(R, C, -1)


def decode_weight_bytes(model: ModelConfig, lay: DecodeLayouts, dtype: str) -> int:
    """Bytes per PE of one layer's decode weights (GEMV tiles; norms and biases aside)."""
    item = 2 if dtype == "float16" else 4
    wd, wa, wf = lay.d.width, lay.attn.width, lay.ff.width
    n_up = 2 * wf if model.gated else wf
    return item * (wd * 3 * wa + wa * wd + wd * n_up + wf * wd)


def resident_bytes(model: ModelConfig, lay: DecodeLayouts, dtype: str) -> int:
    """SRAM the attention phase must leave to the layer's weights, which stay resident."""
    return decode_weight_bytes(model, lay, dtype) // 4 * 4


def qkv_phase(cfg, model: ModelConfig, lw, x_vec, lay: DecodeLayouts, pos: int, dtype: str):
    """Norm, Q/K/V GEMV, then RoPE at position `pos` (llama) or the Q/K/V biases
    (gpt2). x_vec: (R, C, wd) along Y. Returns (qkv (R, C, 3*wa): Q | K | V
    along X, equal down every column; report)."""
    R, C = cfg.rows, cfg.cols
    wd, wa = lay.d.width, lay.attn.width
    prog = wse.Program(cfg)
    x = prog.buffer("x", (wd,), "float32")
    h = prog.buffer("h", (wd,), dtype)
    stats = prog.buffer("stats", (3 + wd,), "float32")
    nw = prog.buffer("norm_w", (wd,), "float32")
    wqkv = prog.buffer("w_qkv", (wd * 3 * wa,), dtype)
    qkv = prog.buffer("qkv", (3 * wa,), "float32")
    prog.load(x, x_vec, deferred=True)
    prog.load(nw, place_vector(lay.d, lw.attn_norm, R, C, "y"), deferred=True)
    blocks = [place_matrix(W, lay.d, lay.attn) for W in
              (lw.wq, expand_kv_heads(model, lw.wk), expand_kv_heads(model, lw.wv))]
    prog.load(wqkv, np.concatenate(blocks, axis=3).reshape(R, C, -1), deferred=True)
    del blocks
    nb = None
    if lw.attn_norm_bias is not None:
        nb = prog.buffer("norm_b", (wd,), "float32")
        prog.load(nb, place_vector(lay.d, lw.attn_norm_bias, R, C, "y"), deferred=True)
    if model.family == "llama":
        cos, sin = rope_tables(lay.attn, [pos], model.rope_theta)        # (1, C, wa/2)
        extra = prog.buffer("rope", (2 * wa,), "float32")                # cos, sin, tmp
        tab = np.concatenate([cos[0], sin[0], np.zeros((C, wa))], axis=1)
        prog.load(extra, np.broadcast_to(tab[None], (R, C, 2 * wa)), deferred=True)
    else:
        extra = prog.buffer("bqkv", (3 * wa,), "float32")
        b = np.concatenate([lay.attn.scatter(lw.bq),
                            lay.attn.scatter(expand_kv_heads(model, lw.bk)),
                            lay.attn.scatter(expand_kv_heads(model, lw.bv))], axis=1)
        prog.load(extra, np.broadcast_to(b[None], (R, C, 3 * wa)), deferred=True)
    col = SegmentChannel(prog, "y", [(0, R - 1)], "col")
    kind = norm_kind(model)

    def body(t, parts):
        emit_norm(t, parts, col, parts["col"], x, h, stats, 1, wd, model.d_model, kind,
                  model.norm_eps, nw, nb)
        emit_gemv(t, qkv, h.view(), wqkv, wd, 3 * wa)
        col.allreduce(t, parts["col"], qkv.view(), 3 * wa)
        if model.family == "llama":
            half = wa // 2
            cosb = SubBuffer(extra, 0)
            sinb = SubBuffer(extra, half)
            tmp = SubBuffer(extra, wa)
            for off in (0, wa):
                emit_rope(t, SubBuffer(qkv, off), cosb, sinb, tmp, wa)
        else:
            t.add(qkv.view(), qkv.view(), extra.view())

    build_roles(prog, {"col": col}, body)
    out, report = run_phase(prog, {"qkv": qkv})
    return out["qkv"], report


def attention_phase(cfg, model: ModelConfig, q_vec, cache: WaferKVCache, layer: int, bias,
                    lay: DecodeLayouts, dtype: str):
    """softmax(q K^T / sqrt(hd) + bias) V over the cache of `layer`. q_vec:
    (R, C, wa) along X; bias: (R, C, cap) as the kv_update phase left it.
    The layer's weights stay resident while the cache grows, so their bytes
    (`resident_bytes`) are reserved first and an overflow names a cache
    buffer. Returns (o (R, C, wa) along X, report)."""
    R, C = cfg.rows, cfg.cols
    wa = lay.attn.width
    cap = cache.capacity
    prog = wse.Program(cfg)
    resident = resident_bytes(model, lay, dtype)
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
    prog.load(q, q_vec, deferred=True)
    prog.load(kb, cache.keys[layer].reshape(R, C, cap * wa), deferred=True)
    prog.load(vb, cache.values[layer].reshape(R, C, cap * wa), deferred=True)
    prog.load(bb, bias, deferred=True)
    heads = SegmentChannel(prog, "x", lay.attn.segments, "hd")
    col = SegmentChannel(prog, "y", [(0, R - 1)], "col")
    scale = 1.0 / math.sqrt(model.head_dim)

    def body(t, parts):
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

    build_roles(prog, {"hd": heads, "col": col}, body)
    out, report = run_phase(prog, {"o": ob})
    return out["o"], report


def o_mlp_up_phase(cfg, model: ModelConfig, lw, o_vec, x_vec, lay: DecodeLayouts, dtype: str):
    """O GEMV + residual (+ bias), norm, up (and gate) GEMV, activation.
    o_vec: (R, C, wa) along X; x_vec: (R, C, wd) along Y. Returns (x (R, C, wd)
    along Y, the residual stream after attention; act (R, C, wf) along X; report)."""
    R, C = cfg.rows, cfg.cols
    wd, wa, wf = lay.d.width, lay.attn.width, lay.ff.width
    prog = wse.Program(cfg)
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
    prog.load(ov, o_vec, deferred=True)
    prog.load(wo, decode_x_reducing_tiles(lw.wo, lay.attn, lay.d, R, C), deferred=True)
    prog.load(x, x_vec, deferred=True)
    prog.load(nw, place_vector(lay.d, lw.mlp_norm, R, C, "y"), deferred=True)
    ups = [lw.w_gate, lw.w_up] if model.gated else [lw.w_up]
    prog.load(wup, np.concatenate([place_matrix(W, lay.d, lay.ff) for W in ups],
                                  axis=3).reshape(R, C, -1), deferred=True)
    nb = bo = bup = tmp = None
    if model.has_bias:
        nb = prog.buffer("norm_b", (wd,), "float32")
        prog.load(nb, place_vector(lay.d, lw.mlp_norm_bias, R, C, "y"), deferred=True)
        bo = prog.buffer("b_o", (wd,), "float32")
        prog.load(bo, place_vector(lay.d, lw.bo, R, C, "y"), deferred=True)
        bup = prog.buffer("b_up", (wf,), "float32")
        prog.load(bup, place_vector(lay.ff, lw.b_up, R, C, "x"), deferred=True)
        tmp = prog.buffer("tmp", (wf,), "float32")
    row = SegmentChannel(prog, "x", [(0, C - 1)], "row")
    col = SegmentChannel(prog, "y", [(0, R - 1)], "col")
    kind = norm_kind(model)

    def body(t, parts):
        emit_gemv(t, part, ov.view(), wo, wa, wd)
        row.allreduce(t, parts["row"], part.view(), wd)
        t.add(x.view(), x.view(), part.view())
        if bo is not None:
            t.add(x.view(), x.view(), bo.view())
        emit_norm(t, parts, col, parts["col"], x, h, stats, 1, wd, model.d_model, kind,
                  model.norm_eps, nw, nb)
        emit_gemv(t, up, h.view(), wup, wd, n_up)
        col.allreduce(t, parts["col"], up.view(), n_up)
        if model.gated:
            emit_swiglu(t, SubBuffer(up, 0), SubBuffer(up, wf), act, wf)
        else:
            t.add(up.view(), up.view(), bup.view())
            emit_gelu(t, up, tmp, wf)
            t.mov(act.view(), up.view())

    build_roles(prog, {"row": row, "col": col}, body)
    out, report = run_phase(prog, {"x": x, "act": act})
    return out["x"], out["act"], report


def down_phase(cfg, lw, a_vec, x_vec, lay: DecodeLayouts, dtype: str):
    """Down GEMV + residual (+ bias). a_vec: (R, C, wf) along X; x_vec: (R, C, wd)
    along Y. Returns (x (R, C, wd) along Y, the layer's output; report)."""
    R, C = cfg.rows, cfg.cols
    wd, wf = lay.d.width, lay.ff.width
    prog = wse.Program(cfg)
    av = prog.buffer("act", (wf,), dtype)
    wdn = prog.buffer("w_down", (wf * wd,), dtype)
    part = prog.buffer("partial", (wd,), "float32")
    x = prog.buffer("x", (wd,), "float32")
    prog.load(av, a_vec, deferred=True)
    prog.load(wdn, decode_x_reducing_tiles(lw.w_down, lay.ff, lay.d, R, C), deferred=True)
    prog.load(x, x_vec, deferred=True)
    bd = None
    if lw.b_down is not None:
        bd = prog.buffer("b_down", (wd,), "float32")
        prog.load(bd, place_vector(lay.d, lw.b_down, R, C, "y"), deferred=True)
    row = SegmentChannel(prog, "x", [(0, C - 1)], "row")

    def body(t, parts):
        emit_gemv(t, part, av.view(), wdn, wf, wd)
        row.allreduce(t, parts["row"], part.view(), wd)
        t.add(x.view(), x.view(), part.view())
        if bd is not None:
            t.add(x.view(), x.view(), bd.view())

    build_roles(prog, {"row": row}, body)
    out, report = run_phase(prog, {"x": x})
    return out["x"], report


def run_layer(cfg, model: ModelConfig, lw, x_vec, cache: WaferKVCache, layer: int,
              lay: DecodeLayouts, pos: int, dtype: str, moves, insert):
    """One decode layer: the five PHASES in turn. x_vec: (R, C, wd) the d_model
    vector along Y. moves, insert: this step's cache.plan_append. Returns
    (x_vec, reports, names); replaces cache.keys/values[layer]."""
    wa = lay.attn.width
    qkv, r_qkv = qkv_phase(cfg, model, lw, x_vec, lay, pos, dtype)
    bias, r_kv = kv_update_phase(cfg, cache, layer, qkv[:, :, wa:], moves, insert, dtype)
    o_vec, r_attn = attention_phase(cfg, model, qkv[:, :, :wa], cache, layer, bias, lay, dtype)
    del qkv, bias
    x_vec, a_vec, r_up = o_mlp_up_phase(cfg, model, lw, o_vec, x_vec, lay, dtype)
    del o_vec
    x_vec, r_down = down_phase(cfg, lw, a_vec, x_vec, lay, dtype)
    return x_vec, [r_qkv, r_kv, r_attn, r_up, r_down], list(PHASES)
