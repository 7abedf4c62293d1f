"""One decoder layer of a decode step on the mesh: one Program, one engine run.

Layout (any grid): the d_model vector along Y, replicated along X (row y
holds chunk y on every PE of the row); attention and d_ff vectors along X,
replicated along Y. Weights are pre-placed so that successive GEMVs
alternate their reduction axis: a GEMV whose input lies along Y keeps
W[chunk y, chunk x] on PE (x, y) and allreduces its partial products along
Y, leaving the result along X; one whose input lies along X keeps
W[chunk x, chunk y] (`decode_x_reducing_tiles`) and allreduces along X. No
transpose is ever needed.

The layer's operations (PHASES), one task each per PE (TASKS), run in this
order on every PE; each reads its inputs in exactly the layout the previous
one left them in, in SRAM:
  qkv        norm (allreduce along Y), Q/K/V GEMV (allreduce along Y),
             bias, RoPE, then the RoPE table advanced to the next position;
             Q converted to the cache dtype
  kv_update  the cache's neighbour moves along Y and the insert of the new
             K, V on the last row (`kvcache.KVUpdate`; PEs with no part in
             it have no such task)
  attention  q.K partials (allreduce along X per head), softmax with a
             max-allreduce and a sum-allreduce along Y, P V (allreduce
             along Y)
  o_mlp_up   O GEMV (allreduce along X) + residual, norm (along Y),
             up/gate GEMV (along Y), activation
  down       down GEMV (allreduce along X) + residual
The first runs in the role's entry task; each task activates the next as its
last instruction. Nothing synchronises the PEs between operations but their
data: a PE starts operation k+1 once its own part of k is done and waits
inside k+1 only where a stream it reads has not arrived yet (fabric inputs
block; FIFO order per color keeps successive allreduces on one channel
apart). So PEs far from a reduction's root run ahead into the next
operation while others still finish the previous one.

Everything is resident in SRAM at once: the weights, the KV cache (K, V and
the score bias of `slots` slots, RESERVE_SLOTS beyond those in use) and the
activations, and for llama the RoPE state: per attention feature pair the
cos | sin of the current position's angle and the cos | sin of the pair's
frequency theta_i, placed with the weights; each step, after using the
table, a PE advances it to the next position by angle addition
(`layers.emit_rope_advance`: a few vector instructions, and an fp32 drift
of at most `layers.rope_drift_bound(k)` after k steps, ~k 2^-22). Per step
the host writes only the input x (the embedding, or the previous layer's
output) and reads x back; the decode state
(`kvcache.WaferKVCache.images`) keeps each layer's final SRAM image, and the
next step's program resumes from it (`wse.Program.resume`), so no weight,
cache or RoPE byte is written from the host again. When the image is laid
out anew, the host places the RoPE tables for the current position with
the weights (exact again: the drift restarts).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

import wse

from .kvcache import KVUpdate, LayerImage, WaferKVCache
from .layers import (NEG_INF, FeatureLayout, SegmentChannel, SubBuffer, build_roles,
                     emit_gelu, emit_gemv, emit_norm, emit_rope, emit_rope_advance, emit_swiglu,
                     kv_head_layout, norm_kind, place_matrix, place_vector, rope_tables)
from .models import ModelConfig

PHASES = ("qkv", "kv_update", "attention", "o_mlp_up", "down")
TASKS = ("main",) + PHASES[1:]
"""The task that runs each of PHASES (the first is the role's entry task)."""

RESERVE_SLOTS = 4
"""Cache slots laid out beyond those in use when a layer's SRAM image is
built, so that the layout, and with it the resident image, survives the
next RESERVE_SLOTS widenings of the slot table (under the shift policy about
one per `rows` tokens). When the table outgrows them, the image is laid out
anew: the weights from the host, the cache from the previous image (the
host bytes of that step show it)."""


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
                            C: int, dtype=np.float64) -> np.ndarray:
    """Decode placement of an X-reducing GEMV's weight (Wo, W_down): PE (x, y)
    holds W[part x of the input features, chunk y of d_model] (in `dtype`)."""
    return place_matrix(W, rows_layout, d, dtype).transpose(1, 0, 2, 3).reshape(R, C, -1)


def decode_weight_bytes(model: ModelConfig, lay: DecodeLayouts, dtype: str) -> int:
    """Bytes per PE of one layer's decode weights (GEMV tiles; norms and biases aside)."""
    item = 2 if dtype == "float16" else 4
    wd, wa, wf = lay.d.width, lay.attn.width, lay.ff.width
    n_up = 2 * wf if model.gated else wf
    return item * (wd * 3 * wa + wa * wd + wd * n_up + wf * wd)



class CacheOverflowError(wse.SramOverflowError):
    """The layer's weights and activations fit, its KV cache slots do not."""


@dataclass
class LayerProgram:
    """A decode layer's Program, its buffers by name and its cache slots."""

    prog: wse.Program
    buffers: dict
    slots: int


def _cache_slots_that_fit(free: int, wa: int, item: int) -> int:
    """Most slots whose K, V (rounded to 4 bytes), bias and score fit `free` bytes."""
    slot = 2 * wa * item + 8
    n = max(free // slot, 0)
    while n > 0 and 2 * ((n * wa * item + 3) // 4 * 4) + 8 * n > free:
        n -= 1
    return n


def layer_program(cfg: wse.WaferConfig, model: ModelConfig, lay: DecodeLayouts, dtype: str,
                  capacity: int, moves, insert, slots: int | None = None) -> LayerProgram:
    """The Program of one decode layer, nothing loaded. capacity: the slot
    table's width (the slots attention reads); moves, insert: this step's
    `WaferKVCache.plan_append`; slots: the cache slots to lay out (default:
    capacity + RESERVE_SLOTS, or fewer if SRAM has no room for them; an
    SramOverflowError names the first buffer that does not fit)."""
    R, C = cfg.rows, cfg.cols
    wd, wa, wf = lay.d.width, lay.attn.width, lay.ff.width
    n_up = 2 * wf if model.gated else wf
    llama = model.family == "llama"
    bias = model.has_bias
    prog = wse.Program(cfg)
    b = {}

    def buf(name, n, dt="float32", when=True):
        if when:
            b[name] = prog.buffer(name, (n,), dt)
        return b.get(name)

    # resident weights
    buf("attn_norm_w", wd)
    buf("attn_norm_b", wd, when=bias)
    buf("w_qkv", wd * 3 * wa, dtype)
    buf("b_qkv", 3 * wa, when=not llama)
    buf("w_o", wa * wd, dtype)
    buf("b_o", wd, when=bias)
    buf("mlp_norm_w", wd)
    buf("mlp_norm_b", wd, when=bias)
    buf("w_up", wd * n_up, dtype)
    buf("b_up", wf, when=bias)
    buf("w_down", wf * wd, dtype)
    buf("b_down", wd, when=bias)
    buf("rope_step", wa, when=llama)               # cos | sin of theta_i
    buf("rope", wa, when=llama)                    # cos | sin of position * theta_i
    # written by the host every step
    buf("x", wd)
    # activations
    buf("h", wd, dtype)
    buf("stats", 3 + wd)
    buf("qkv", 3 * wa)
    buf("tmp", max(wa, 0 if model.gated else wf))
    buf("q", wa, dtype)
    buf("o_acc", wa)
    buf("scalars", 4)
    buf("o", wa, dtype)
    buf("partial", wd)
    buf("up", n_up)
    buf("act", wf, dtype)
    # the KV cache, last, so that it takes what is left
    if slots is None:
        free = cfg.sram_bytes - int(prog.sram_used.max())
        fit = _cache_slots_that_fit(free, wa, 2 if dtype == "float16" else 4)
        slots = max(capacity, min(capacity + RESERVE_SLOTS, fit))
    if slots < capacity:
        raise wse.ConfigError(f"layer_program: {slots} cache slots cannot hold a slot table "
                              f"of {capacity}")
    try:
        buf("k_cache", slots * wa, dtype)
        buf("v_cache", slots * wa, dtype)
        buf("bias", slots)
        buf("scores", slots)
    except wse.SramOverflowError as err:
        raise CacheOverflowError(str(err)) from None

    col = SegmentChannel(prog, "y", [(0, R - 1)], "col")
    heads = SegmentChannel(prog, "x", lay.attn.segments, "hd")
    row = SegmentChannel(prog, "x", [(0, C - 1)], "row")
    kv = KVUpdate(prog, moves, insert, wa, b["k_cache"], b["v_cache"], b["bias"],
                  SubBuffer(b["qkv"], wa), SubBuffer(b["qkv"], 2 * wa))
    kind = norm_kind(model)
    cap = capacity
    scale = 1.0 / math.sqrt(model.head_dim)

    def qkv_op(t, parts):
        emit_norm(t, parts, col, parts["col"], b["x"], b["h"], b["stats"], 1, wd,
                  model.d_model, kind, model.norm_eps, b["attn_norm_w"], b.get("attn_norm_b"))
        emit_gemv(t, b["qkv"], b["h"].view(), b["w_qkv"], wd, 3 * wa)
        col.allreduce(t, parts["col"], b["qkv"].view(), 3 * wa)
        if llama:
            half = wa // 2
            for off in (0, wa):
                emit_rope(t, SubBuffer(b["qkv"], off), SubBuffer(b["rope"], 0),
                          SubBuffer(b["rope"], half), b["tmp"], wa)
            emit_rope_advance(t, b["rope"], b["rope_step"], b["tmp"], wa)
        else:
            t.add(b["qkv"].view(), b["qkv"].view(), b["b_qkv"].view())
        t.mov(b["q"].view(), b["qkv"].view(0, wa))

    def attention_op(t, parts):
        s, sc, o = b["scores"].view(0, cap), b["scalars"], b["o_acc"]
        t.fill(s, 0.0)
        t.matmul(s, b["q"].view(), b["k_cache"].view(), 1, wa, cap, transpose_b=True)
        heads.allreduce(t, parts["hd"], s, cap)
        t.scale(s, s, scale)
        t.add(s, s, b["bias"].view(0, cap))
        t.rmax(sc.view(0, 1), s)
        col.allreduce(t, parts["col"], sc.view(0, 1), 1, "max")
        t.subs(s, s, sc.scalar(0))
        t.exp(s, s)
        t.sum(sc.view(1, 1), s)
        col.allreduce(t, parts["col"], sc.view(1, 1), 1, "sum")
        t.fill(o.view(), 0.0)
        t.matmul(o.view(), s, b["v_cache"].view(), 1, cap, wa)
        col.allreduce(t, parts["col"], o.view(), wa)
        t.recip(sc.view(1, 1), sc.view(1, 1))
        t.scale(b["o"].view(), o.view(), sc.scalar(1))

    def project_into_residual(t, parts, vector, weight, k, bias_name):
        """x += vector (along X) @ weight, reduced along X (+ the bias)."""
        x, part = b["x"], b["partial"]
        emit_gemv(t, part, b[vector].view(), b[weight], k, wd)
        row.allreduce(t, parts["row"], part.view(), wd)
        t.add(x.view(), x.view(), part.view())
        if bias:
            t.add(x.view(), x.view(), b[bias_name].view())

    def o_mlp_up_op(t, parts):
        x = b["x"]
        project_into_residual(t, parts, "o", "w_o", wa, "b_o")
        emit_norm(t, parts, col, parts["col"], x, b["h"], b["stats"], 1, wd, model.d_model,
                  kind, model.norm_eps, b["mlp_norm_w"], b.get("mlp_norm_b"))
        up = b["up"]
        emit_gemv(t, up, b["h"].view(), b["w_up"], wd, n_up)
        col.allreduce(t, parts["col"], up.view(), n_up)
        if model.gated:
            emit_swiglu(t, SubBuffer(up, 0), SubBuffer(up, wf), b["act"], wf)
        else:
            t.add(up.view(), up.view(), b["b_up"].view())
            emit_gelu(t, up, b["tmp"], wf)
            t.mov(b["act"].view(), up.view())

    def down_op(t, parts):
        project_into_residual(t, parts, "act", "w_down", wf, "b_down")

    ops = {"qkv": qkv_op, "kv_update": lambda t, parts: kv.emit(t, parts["kv"]),
           "attention": attention_op, "o_mlp_up": o_mlp_up_op, "down": down_op}

    def body(main, parts):
        phases = [p for p in PHASES if p != "kv_update" or kv.has_work(parts["kv"])]
        tasks = [main] + [main.role.task(TASKS[PHASES.index(p)]) for p in phases[1:]]
        for i, (phase, t) in enumerate(zip(phases, tasks)):
            ops[phase](t, parts)
            if i + 1 < len(tasks):
                t.activate(tasks[i + 1])

    build_roles(prog, {"col": col, "hd": heads, "row": row, "kv": kv}, body)
    return LayerProgram(prog, b, slots)


def place_resident(lp: LayerProgram, model: ModelConfig, lw, lay: DecodeLayouts, K, V,
                   slot_bias) -> None:
    """Load the layer's weights and its KV cache (K, V: (R, C, n, wa) for the
    first n slots; slot_bias: (R, n)) into a fresh LayerProgram."""
    prog, b = lp.prog, lp.buffers
    R, C = prog.rows, prog.cols
    wa = lay.attn.width

    def load(name, data):           # written at once, so one placed array lives at a time
        prog.load(b[name], data)

    def blocks(W, rows_layout, cols_layout, name):     # in the buffer's dtype: one conversion
        return place_matrix(W, rows_layout, cols_layout, b[name].dtype)

    kv_attn = kv_head_layout(model, lay.attn)
    load("attn_norm_w", place_vector(lay.d, lw.attn_norm, R, C, "y"))
    qkv = [blocks(lw.wq, lay.d, lay.attn, "w_qkv"), blocks(lw.wk, lay.d, kv_attn, "w_qkv"),
           blocks(lw.wv, lay.d, kv_attn, "w_qkv")]
    load("w_qkv", np.concatenate(qkv, axis=3).reshape(R, C, -1))
    del qkv
    load("w_o", decode_x_reducing_tiles(lw.wo, lay.attn, lay.d, R, C, b["w_o"].dtype))
    load("mlp_norm_w", place_vector(lay.d, lw.mlp_norm, R, C, "y"))
    ups = [lw.w_gate, lw.w_up] if model.gated else [lw.w_up]
    load("w_up", np.concatenate([blocks(W, lay.d, lay.ff, "w_up") for W in ups],
                                axis=3).reshape(R, C, -1))
    load("w_down", decode_x_reducing_tiles(lw.w_down, lay.ff, lay.d, R, C, b["w_down"].dtype))
    if model.has_bias:
        load("attn_norm_b", place_vector(lay.d, lw.attn_norm_bias, R, C, "y"))
        load("mlp_norm_b", place_vector(lay.d, lw.mlp_norm_bias, R, C, "y"))
        load("b_o", place_vector(lay.d, lw.bo, R, C, "y"))
        load("b_up", place_vector(lay.ff, lw.b_up, R, C, "x"))
        load("b_down", place_vector(lay.d, lw.b_down, R, C, "y"))
    if model.family != "llama":
        bqkv = np.concatenate([lay.attn.scatter(np.asarray(lw.bq, np.float64)),
                               kv_attn.scatter(np.asarray(lw.bk, np.float64)),
                               kv_attn.scatter(np.asarray(lw.bv, np.float64))], axis=1)
        load("b_qkv", np.broadcast_to(bqkv[None], (R, C, 3 * wa)))
    n = min(K.shape[2], lp.slots)
    for name, M in (("k_cache", K), ("v_cache", V)):
        full = np.zeros((R, C, lp.slots, wa), b[name].dtype)
        full[:, :, :n] = M[:, :, :n]
        load(name, full.reshape(R, C, -1))
    sb = np.full((R, lp.slots), NEG_INF)
    sb[:, :n] = slot_bias[:, :n]
    load("bias", np.broadcast_to(sb[:, None, :], (R, C, lp.slots)))


def place_rope(lp: LayerProgram, lay: DecodeLayouts, pos: int, theta: float,
               step_too: bool = True) -> None:
    """Load the RoPE table of position `pos` (cos | sin of pos * theta_i per
    attention feature pair, the same on every row) and, with step_too, the
    per-pair cos | sin of theta_i that advances it (`emit_rope_advance`)."""
    R, C = lp.prog.rows, lp.prog.cols

    def row(p):
        cos, sin = rope_tables(lay.attn, [p], theta)                    # (1, C, wa/2)
        return np.broadcast_to(np.concatenate([cos[0], sin[0]], axis=1)[None],
                               (R, C, lay.attn.width))

    lp.prog.load(lp.buffers["rope"], row(pos))
    if step_too:
        lp.prog.load(lp.buffers["rope_step"], row(1))


def run_layer(cfg, model: ModelConfig, lw, x_vec, cache: WaferKVCache, layer: int,
              lay: DecodeLayouts, pos: int, dtype: str, moves, insert):
    """One decode layer as one engine run. x_vec: (R, C, wd) the d_model vector
    along Y; moves, insert: this step's cache.plan_append. Resumes from the
    layer's SRAM image in `cache.images` when its cache slots still hold the
    slot table, otherwise places the weights (and the cache, from the image
    or the host copy) first, with the RoPE tables of position `pos` (also
    placed when the image's table holds another position). Returns (x_vec,
    report); keeps the run's final image, its RoPE table advanced to pos + 1,
    in cache.images[layer]."""
    image = cache.images[layer]
    reuse = image is not None and image.slots >= cache.capacity and image.dtype == dtype
    lp = layer_program(cfg, model, lay, dtype, cache.capacity, moves, insert,
                       image.slots if reuse else None)
    if reuse:
        lp.prog.resume(image.sram)
    else:
        K, V = cache.layer_kv(layer)
        place_resident(lp, model, lw, lay, K, V, cache.bias())
        del K, V
    llama = model.family == "llama"
    if llama and not (reuse and image.rope_position == pos):
        place_rope(lp, lay, pos, model.rope_theta, step_too=not reuse)
    cache.images[layer] = None
    cache.keys[layer] = cache.values[layer] = None
    lp.prog.load(lp.buffers["x"], x_vec)
    result = lp.prog.run(max_cycles=10 ** 12)
    x_out = result.read(lp.buffers["x"]).astype(np.float64)
    cache.images[layer] = LayerImage(result.image(), lp.slots, dtype,
                                     pos + 1 if llama else None)
    return x_out, result.report


def operation_slices(report: wse.RunReport) -> dict:
    """Per operation of PHASES, the task slices of a traced decode run
    (`wse.run_options(trace=True)`): an (n, 3) array of (pe, start, end)
    rows, start and end in cycles of the run (of the whole sequence for a
    multi-layer report, whose layers follow each other)."""
    if report.task_events is None:
        raise wse.ConfigError("operation_slices needs a traced run (wse.run_options(trace=True))")
    names = [n.rsplit(".", 1)[-1] for n in report.task_names]
    ev = report.task_events
    task = np.array([names[t] for t in ev[:, 1]], dtype=object)
    return {phase: ev[task == name][:, [0, 2, 3]] for phase, name in zip(PHASES, TASKS)}
