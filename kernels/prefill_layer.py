"""One decoder layer of a prefill on the mesh, one engine run per phase.

Layout (square grid, R = C): sequence along Y (row y holds positions
y*st .. y*st + st - 1, st = ceil(seq / R)), features along X (d_model and
d_ff in plain chunks, attention features by head groups,
kernels.layers.FeatureLayout; `prefill_layouts`). Phases (`run_layer`):
  attn_norm  norm of each row: sums reduced along X (segmented allreduce
             over the whole row)                          (norm_phase)
  q, k, v    kernels.gemm SUMMA (X @ W, W pre-placed; SUMMA needs no
             initial skew, so the activation tiles are used where they are
             and the products land in the same layout)    (gemm_phase)
  rope       RoPE (llama) or the Q/K/V biases (gpt2), elementwise
                                                    (elementwise_phase)
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
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

import wse
from wse.errors import ConfigError, SramOverflowError

from .matmul import gemm as mesh_gemm
from .mesh_attention import (GemmAttentionPlan, gemm_layout_error, longest_gemm_sequence,
                             prefill_attention)
from .layers import (FeatureLayout, SegmentChannel, build_roles, emit_gelu, emit_norm,
                     emit_rope, emit_swiglu, expand_kv_heads, matrix_to_tiles, norm_kind,
                     place_matrix, place_vector, rope_tables, run_phase, tiles_to_matrix)
from .models import ModelConfig

GEMM_ALGORITHM = "summa"


@dataclass(frozen=True)
class PrefillLayouts:
    """The feature layouts of the prefill layout (`prefill_layouts`)."""

    d: FeatureLayout        # d_model along X
    attn: FeatureLayout     # heads along X
    ff: FeatureLayout       # d_ff along X


def prefill_layouts(model: ModelConfig, cfg: wse.WaferConfig) -> PrefillLayouts:
    return PrefillLayouts(FeatureLayout.plain(model.d_model, cfg.cols),
                          FeatureLayout.heads(model.n_heads, model.head_dim, cfg.cols),
                          FeatureLayout.plain(model.d_ff, cfg.cols))


def placed_weight(W, rows_layout: FeatureLayout, cols_layout: FeatureLayout) -> np.ndarray:
    """W as the (parts_in*w_in, parts_out*w_out) matrix in layout order (for SUMMA,
    whose PE (x, y) holds block (y, x): exactly the pre-placed tile)."""
    blocks = place_matrix(W, rows_layout, cols_layout)   # (Pi, Po, wi, wo)
    Pi, Po, wi, wo = blocks.shape
    return blocks.transpose(0, 2, 1, 3).reshape(Pi * wi, Po * wo)


def prefill_weight_tiles(W, rows_layout: FeatureLayout, cols_layout: FeatureLayout) -> np.ndarray:
    """Prefill (SUMMA) placement: PE (x, y) holds W[part y of the input, part x of
    the output] (block (y, x) of placed_weight)."""
    blocks = place_matrix(W, rows_layout, cols_layout)
    return blocks.reshape(blocks.shape[0], blocks.shape[1], -1)


def gemm_phase(tiles, w_in: int, W_placed: np.ndarray, cfg, w_out: int, dtype: str):
    """tiles @ W_placed by kernels.gemm (SUMMA) on the whole grid: activation
    tiles (R, C, st*w_in) in, product tiles (R, C, st*w_out) out, same layout.
    Returns (tiles, report)."""
    A = tiles_to_matrix(tiles, w_in)
    C, report = mesh_gemm(A, W_placed, cfg, algorithm=GEMM_ALGORITHM, dtype=dtype)
    return matrix_to_tiles(C.astype(np.float64), cfg.rows, cfg.cols, w_out), report


def norm_phase(cfg, model, x_tiles, st, lay: FeatureLayout, weight, bias, dtype,
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
    prog.load(wt, place_vector(lay, weight, R, C, "x"))
    if bt is not None:
        prog.load(bt, place_vector(lay, bias, R, C, "x"))
    if res is not None:
        prog.load(res, residual)
    if rb is not None:
        prog.load(rb, place_vector(lay, residual_bias, R, C, "x"))
    row = SegmentChannel(prog, "x", [(0, C - 1)], "row")

    def body(t, parts):
        if res is not None:
            t.add(x.view(), x.view(), res.view())
            if rb is not None:
                for r in range(st):
                    t.add(x.view(r * w, w), x.view(r * w, w), rb.view())
        emit_norm(t, parts, row, parts["row"], x, h, stats, st, w, model.d_model,
                  norm_kind(model), model.norm_eps, wt, bt)

    build_roles(prog, {"row": row}, body)
    out, report = run_phase(prog, {"x": x, "h": h})
    return out["x"], out["h"], report


def elementwise_phase(cfg, tiles: dict, st: int, dtype: str, body_fn, consts=None):
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
    return run_phase(prog, {k: bufs[k] for k in tiles})


def run_layer(cfg, model, lw, x_tiles, st, lay: PrefillLayouts, positions, dtype,
              attention_algorithm: str):
    """One layer on the prefill layout. Returns (x_tiles, k_tiles, v_tiles, reports, names)."""
    R, C = cfg.rows, cfg.cols
    reports, names = [], []

    def add(name, report):
        reports.append(report)
        names.append(name)

    x_tiles, h, r = norm_phase(cfg, model, x_tiles, st, lay.d, lw.attn_norm,
                               lw.attn_norm_bias, dtype)
    add("attn_norm", r)
    wa = lay.attn.width
    qkv = {}
    for name, W in (("q", lw.wq), ("k", expand_kv_heads(model, lw.wk)),
                    ("v", expand_kv_heads(model, lw.wv))):
        qkv[name], r = gemm_phase(h, lay.d.width, placed_weight(W, lay.d, lay.attn), cfg, wa,
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
        out, r = elementwise_phase(
            cfg, {"q": (qkv["q"], dtype), "k": (qkv["k"], dtype)}, st, dtype, rope_body,
            {"cos": (cos, "float32"), "sin": (sin, "float32"),
             "tmp": (np.zeros((R, C, n)), "float32")})
        qkv.update(out)
        add("rope", r)
    else:
        biases = {"q": lw.bq, "k": expand_kv_heads(model, lw.bk),
                  "v": expand_kv_heads(model, lw.bv)}
        consts = {f"b{k}": (np.tile(place_vector(lay.attn, v, R, C, "x"), (1, 1, st)),
                            "float32")
                  for k, v in biases.items()}

        def bias_body(t, b):
            for name in ("q", "k", "v"):
                t.add(b[name].view(), b[name].view(), b[f"b{name}"].view())
        out, r = elementwise_phase(cfg, {k: (qkv[k], dtype) for k in qkv}, st, dtype,
                                   bias_body, consts)
        qkv.update(out)
        add("qkv_bias", r)
    seq = len(positions)
    o_tiles, r = prefill_attention(cfg, lay.attn, qkv["q"], qkv["k"], qkv["v"], st, st, seq,
                                   True, 1.0 / math.sqrt(model.head_dim), dtype,
                                   attention_algorithm)
    add("attention", r)
    attn_out, r = gemm_phase(o_tiles, wa, placed_weight(lw.wo, lay.attn, lay.d), cfg,
                             lay.d.width, dtype)
    add("o_proj", r)
    x_tiles, h, r = norm_phase(cfg, model, x_tiles, st, lay.d, lw.mlp_norm,
                               lw.mlp_norm_bias, dtype, residual=attn_out,
                               residual_bias=lw.bo)
    add("mlp_norm", r)
    wf = lay.ff.width
    up, r = gemm_phase(h, lay.d.width, placed_weight(lw.w_up, lay.d, lay.ff), cfg, wf, dtype)
    add("up_proj", r)
    nf = st * wf
    if model.gated:
        gate, r = gemm_phase(h, lay.d.width, placed_weight(lw.w_gate, lay.d, lay.ff), cfg, wf,
                             dtype)
        add("gate_proj", r)

        def act_body(t, b):
            emit_swiglu(t, b["gate"], b["up"], b["a"], nf)
        out, r = elementwise_phase(
            cfg, {"a": (np.zeros((R, C, nf)), dtype)}, st, dtype, act_body,
            {"gate": (gate, "float32"), "up": (up, "float32")})
    else:
        bup = np.tile(place_vector(lay.ff, lw.b_up, R, C, "x"), (1, 1, st))

        def act_body(t, b):
            t.add(b["u"].view(), b["u"].view(), b["bup"].view())
            emit_gelu(t, b["u"], b["tmp"], nf)
            t.mov(b["a"].view(), b["u"].view())
        out, r = elementwise_phase(
            cfg, {"a": (np.zeros((R, C, nf)), dtype)}, st, dtype, act_body,
            {"u": (up, "float32"), "bup": (bup, "float32"),
             "tmp": (np.zeros((R, C, nf)), "float32")})
    add("act", r)
    down, r = gemm_phase(out["a"], wf, placed_weight(lw.w_down, lay.ff, lay.d), cfg,
                         lay.d.width, dtype)
    add("down_proj", r)
    consts = {"down": (down, dtype)}
    if lw.b_down is not None:
        consts["bd"] = (np.tile(place_vector(lay.d, lw.b_down, R, C, "x"), (1, 1, st)),
                        "float32")

    def res_body(t, b):
        t.add(b["x"].view(), b["x"].view(), b["down"].view())
        if "bd" in b:
            t.add(b["x"].view(), b["x"].view(), b["bd"].view())
    out, r = elementwise_phase(cfg, {"x": (x_tiles, "float32")}, st, dtype, res_body,
                               consts)
    add("residual", r)
    return out["x"], qkv["k"], qkv["v"], reports, names


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
