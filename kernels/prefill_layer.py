"""One decoder layer of a prefill on the mesh, one engine run per phase.

Layout (square grid, R = C): sequence along Y (row y holds positions
y*st .. y*st + st - 1, st = ceil(seq / R)), features along X (d_model and
d_ff in plain chunks, attention features by head groups,
kernels.layers.FeatureLayout; `prefill_layouts`). Phases (`run_layer`):
  attn_norm  norm of each row: sums reduced along X (segmented allreduce
             over the whole row)                          (norm_phase)
  q, k, v    kernels.gemm MeshGEMM (X @ W, W resident, placed once in
             MeshGEMM's alignment; the activations are skewed along the
             rows on the fabric, charged; the products land in the same
             layout)                                      (gemm_phase)
  rope       RoPE (llama) or the Q/K/V biases (gpt2), elementwise
                                                    (elementwise_phase)
  attention  kernels.mesh_attention.prefill_attention: attention="gemm"
             (scores Q K^T by GEMM-T with the fully masked causal blocks
             skipped, softmax by max- and sum-allreduces along X, P V by
             kernels.gemm) or "ring" (ring attention along Y, partial scores
             reduced along X per head, online softmax)
  o_proj     kernels.gemm MeshGEMM
  mlp_norm   residual add (+ bias) and norm
  up, gate   kernels.gemm MeshGEMM
  act        GELU or SwiGLU (+ bias)
  down       kernels.gemm MeshGEMM
  residual   residual add (+ bias)
The K and V tiles the attention phase read are the KV cache: they stay on
the PEs, already in the decode cache layout (positions along Y, features
along X).

SRAM: every phase runs with the resident weights of the layers its region
holds reserved (`PrefillMapping`: the region holds ceil(n_layers / regions)
layers; a GEMM phase's own weight tile is its B buffer, the rest of the
reserve is the other weights), so a phase fails with SramOverflowError where
the real PE would overflow.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

import wse
from wse import routes
from wse.config import PRESETS
from wse.errors import ConfigError, SramOverflowError

from .decode_layer import decode_weight_bytes
from .matmul import gemm as mesh_gemm, plan as gemm_plan
from .mesh_attention import GemmAttentionPlan, longest_gemm_sequence, prefill_attention
from .layers import (FeatureLayout, SegmentChannel, build_roles, emit_gelu, emit_norm,
                     emit_rope, emit_swiglu, expand_kv_heads, matrix_to_tiles, norm_kind,
                     place_matrix, place_vector, rope_tables, run_phase, tiles_to_matrix)
from .models import ModelConfig

GEMM_ALGORITHM = "meshgemm"


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
    """W as the (parts_in*w_in, parts_out*w_out) matrix in layout order: block
    (i, j) is the tile of input part i and output part j."""
    blocks = place_matrix(W, rows_layout, cols_layout)   # (Pi, Po, wi, wo)
    Pi, Po, wi, wo = blocks.shape
    return blocks.transpose(0, 2, 1, 3).reshape(Pi * wi, Po * wo)


def block_weight_tiles(W, rows_layout: FeatureLayout, cols_layout: FeatureLayout) -> np.ndarray:
    """The block placement of W on the prefill layout: PE (x, y) holds W[part y
    of the input, part x of the output] (block (y, x) of placed_weight), as
    (parts_in, parts_out, w_in*w_out)."""
    blocks = place_matrix(W, rows_layout, cols_layout)
    return blocks.reshape(blocks.shape[0], blocks.shape[1], -1)


def prefill_weight_tiles(W, rows_layout: FeatureLayout, cols_layout: FeatureLayout) -> np.ndarray:
    """Where prefill keeps the resident weight W: MeshGEMM's alignment of it on
    the square grid (gemm_phase, skew="weights"), C = parts on either side.
    gemm_phase labels input part j (the activations column j holds) K-block
    pos[j] (pos: place on the interleaved ring, routes.interleaved_order(C)),
    and MeshGEMM starts PE (x, y) at K-block pos[x] + pos[y] (mod C)
    (kernels.matmul.fabric_skew), so PE (x, y) holds W[input part
    order[(pos[x] + pos[y]) % C], output part x]: the block placement with
    column x rotated pos[x] places backwards on its ring."""
    blocks = place_matrix(W, rows_layout, cols_layout)
    C = blocks.shape[1]
    if blocks.shape[0] != C:
        raise ConfigError(f"MeshGEMM's alignment needs a square grid: the weight has "
                          f"{blocks.shape[0]} input and {C} output parts")
    order = np.asarray(routes.interleaved_order(C))
    pos = routes.ring_position(order)
    part_in = order[(pos[:, None] + pos[None, :]) % C]                # (y, x)
    return blocks[part_in, np.arange(C)[None, :]].reshape(C, C, -1)


def unalign_shifts(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Per column x of an n x n grid: (places its tiles move on the column's
    interleaved ring to undo MeshGEMM's alignment, +1: forward, to the next
    place, pos[x] times; -1: backward n - pos[x] times, where that is fewer)."""
    pos = routes.ring_position(routes.interleaved_order(n))
    back = (n - pos) % n
    forward = pos <= back
    return np.where(forward, pos, back).astype(np.int64), np.where(forward, 1, -1)


def unalign_program(cfg: wse.WaferConfig, tiles, dtype: str = "float32"):
    """Turn prefill_weight_tiles into block_weight_tiles over the fabric: column
    x moves its tiles unalign_shifts(n)[0][x] places round its interleaved
    ring (every stream at most two hops), one place a shift: each PE posts the
    receive of the next tile into its spare slot, sends its current one and
    waits. tiles: (n, n, b). Returns (prog, buffer of 2 slots of b, the slot
    (n, n) the result ends in: the shift count's parity). Cost:
    unalign_cycles (bounds), unalign_hops."""
    tiles = np.asarray(tiles)
    n = cfg.rows
    if cfg.cols != n or tiles.shape[:2] != (n, n):
        raise ConfigError(f"undoing MeshGEMM's alignment needs a square grid and one tile per "
                          f"PE, got a {cfg.rows} x {cfg.cols} grid and tiles of shape "
                          f"{tiles.shape}")
    b = int(tiles.shape[2])
    shifts, direction = unalign_shifts(n)
    prog = wse.Program(cfg)
    slots = prog.buffer("weight_slots", (2 * b,), dtype)
    init = np.zeros((n, n, 2 * b))
    init[:, :, :b] = tiles
    prog.load(slots, init)
    ending = np.broadcast_to(shifts[None, :] % 2, (n, n))
    if not shifts.any():
        return prog, slots, ending
    order = routes.interleaved_order(n)
    plans = {step: routes.ring(prog, "y", order, step=step, name=f"unalign{step:+d}")
             for step in (1, -1)}
    forward = np.broadcast_to(direction[None, :] == 1, (n, n))
    send = prog.color_param_indices("send", np.where(forward, plans[1].send_color,
                                                     plans[-1].send_color))
    recv = prog.color_param_indices("recv", np.where(forward, plans[1].recv_color,
                                                     plans[-1].recv_color))
    count = prog.param("shifts", np.broadcast_to(shifts[None, :], (n, n)))
    with prog.role("pe").task("main", entry=True) as t:
        head, spare = t.reg(), t.reg()
        t.set(head, 0)
        t.set(spare, 1)
        with t.loop(count):
            t.mov(slots.view(offset=spare * b, length=b), prog.fabin(recv, b), async_=True)
            t.mov(prog.fabout(send, b), slots.view(offset=head * b, length=b), async_=True)
            t.wait()
            t.affine(head, head, -1, 1)
            t.affine(spare, spare, -1, 1)
    return prog, slots, ending


def unalign_cycles(cfg: wse.WaferConfig, n: int, b: int) -> tuple[int, int]:
    """First-principles (lower, upper) bounds on unalign_program's cycles, s =
    the largest shift count (about n/2).
      lower: a PE sends its next tile only after its wait, so the s tiles a
             PE receives pass its ramp one after the other, one wavelet a
             cycle, the first after the sender's start-up and one hop:
             s*b + sigma + D + 2*T_R + H.
      upper: per shift the loop's instructions (two issues, wait, two
             register updates, the loop's test and branch: 7c), the
             start-up, the longest stream's latency (D + 2*T_R + 2*H) and its
             b wavelets at no less than one every two cycles (a PE's
             injection waits for credits at most as long as it sends);
             before the loop the entry task's start and two sets.
    n = 1: nothing moves and the program has no task (0)."""
    if n < 2:
        return 0, 0
    s = int(unalign_shifts(n)[0].max())
    c, su, D = cfg.scalar_op_cycles, cfg.vector_startup_cycles, cfg.datapath_latency
    lower = s * b + su + D + 2 * cfg.ramp_latency + cfg.hop_latency
    per_shift = 7 * c + su + D + 2 * cfg.ramp_latency + 2 * cfg.hop_latency + 2 * b
    return lower, cfg.task_start_cycles + 4 * c + s * per_shift


def unalign_hops(n: int, b: int) -> int:
    """Wavelet-hops of unalign_program: every shift of column x moves each of
    its n tiles over its ring stream, sum |order[j] - order[j-1]| links."""
    order = routes.interleaved_order(n)
    ring = sum(abs(order[j] - order[j - 1]) for j in range(n))
    return int(b * ring * unalign_shifts(n)[0].sum())


def gemm_phase(tiles, w_in: int, W_placed: np.ndarray, cfg, w_out: int, dtype: str,
               reserve: int = 0):
    """tiles @ W_placed by kernels.gemm (MeshGEMM) on the whole (square) grid:
    activation tiles (R, C, st*w_in) in, product tiles (R, C, st*w_out) out,
    same layout. Returns (tiles, report).

    MeshGEMM starts PE (x, y) from the K-block of its own ring position
    pos[x] (kernels.matmul.fabric_skew): the activation chunk column x
    already holds is labelled K-block pos[x] (and the weight's row blocks
    likewise), so no activation moves before the fabric skew; the skew of
    the activations along the rows runs on the fabric and is charged
    (skew="weights"); the weight, resident, is placed once already aligned.
    reserve: bytes per PE the resident weights of the region's layers take,
    of which this GEMM's own tile (its B buffer) is allocated by the GEMM."""
    R, C = cfg.rows, cfg.cols
    order = routes.interleaved_order(C)
    A = tiles_to_matrix(tiles, w_in)
    A = A.reshape(A.shape[0], C, w_in)[:, order].reshape(A.shape[0], C * w_in)
    W = W_placed.reshape(C, w_in, -1)[order].reshape(C * w_in, -1)
    own = gemm_plan(A.shape[0], C * w_in, W.shape[1], cfg, GEMM_ALGORITHM, dtype).tile_b
    own_bytes = (own * (2 if dtype == "float16" else 4) + 3) // 4 * 4
    work = _working(cfg, max(reserve - own_bytes, 0))
    out, report = mesh_gemm(A, W, work, algorithm=GEMM_ALGORITHM, dtype=dtype, skew="weights")
    return matrix_to_tiles(out.astype(np.float64), R, C, w_out), report


def _working(cfg: wse.WaferConfig, reserve: int) -> wse.WaferConfig:
    """cfg with `reserve` bytes of each PE's SRAM taken by resident weights."""
    if reserve <= 0:
        return cfg
    if reserve >= cfg.sram_bytes:
        raise SramOverflowError(f"the resident weights take {reserve} bytes per PE, all of the "
                                f"{cfg.sram_bytes} of a PE")
    return cfg.replace(sram_bytes=cfg.sram_bytes - reserve)


@dataclass(frozen=True)
class PrefillMapping:
    """How a whole model's layers map onto wafer regions for prefill.

    Every layer runs on a square region of R x R PEs; a region keeps the
    weights of `layers_per_region` consecutive layers resident and runs
    them in turn, handing the activations on to the next region (pipeline).
    A wafer holds `regions_per_wafer` regions (floor(rows/R) x
    floor(cols/R) of its fabric); a region can hold at most
    floor((SRAM - working) / weights per layer) layers, working being the
    largest phase's own buffers; the model needs ceil(n_layers / that)
    regions, so ceil(that / regions_per_wafer) wafers, and spreads its
    layers evenly over the regions of those wafers: `regions` of
    `layers_per_region` layers each."""
    region: int
    weight_bytes_per_layer: int        # per PE
    working_bytes: int                 # per PE, the largest phase's own buffers
    max_layers_per_region: int
    regions_per_wafer: int
    regions: int
    wafers: int
    layers_per_region: int

    @property
    def reserved_bytes(self) -> int:
        """SRAM per PE the resident weights of a region's layers take."""
        return self.layers_per_region * self.weight_bytes_per_layer

    def to_dict(self) -> dict:
        return {**self.__dict__, "reserved_bytes": self.reserved_bytes}


def prefill_mapping(model: ModelConfig, cfg: wse.WaferConfig, seq: int, dtype: str,
                    attention: str = "gemm") -> PrefillMapping:
    """PrefillMapping of `model` on regions of cfg's (square) grid for a
    `seq`-token prompt. The wafer is cfg's preset (by name; WSE-2 otherwise)."""
    lay = prefill_layouts(model, cfg)
    R = cfg.rows
    st = -(-seq // R)
    weight = decode_weight_bytes(model, lay, dtype)
    working = _working_bytes(model, cfg, lay, st, dtype, attention)
    if working + weight > cfg.sram_bytes:
        raise SramOverflowError(
            f"one {model.name} layer on a {R} x {cfg.cols} region needs {weight} bytes per PE of "
            f"resident weights and {working} of working buffers ({seq}-token prompt), more than "
            f"the {cfg.sram_bytes} of a PE")
    most = (cfg.sram_bytes - working) // weight
    wafer = next((w for w in PRESETS.values() if w.name == cfg.name), wse.WSE2)
    per_wafer = (wafer.rows // R) * (wafer.cols // cfg.cols)
    if per_wafer < 1:
        raise ConfigError(f"a {R} x {cfg.cols} region does not fit the {wafer.rows} x "
                          f"{wafer.cols} fabric of {wafer.name}")
    wafers = -(-(-(-model.n_layers // most)) // per_wafer)
    per_region = -(-model.n_layers // min(wafers * per_wafer, model.n_layers))
    return PrefillMapping(R, weight, working, int(most), per_wafer,
                          -(-model.n_layers // per_region), wafers, per_region)


def _working_bytes(model, cfg, lay: PrefillLayouts, st: int, dtype: str,
                   attention: str) -> int:
    """The largest per-PE buffers of a prefill phase: the attention phase's
    and every projection's (MeshGEMM, whose weight tile is counted with the
    resident weights, not here); norms and elementwise phases are smaller."""
    R = cfg.rows
    need = [_attention_bytes(model, cfg, st, dtype, attention)]
    wd, wa, wf = lay.d.width, lay.attn.width, lay.ff.width
    for w_in, w_out in ((wd, wa), (wa, wd), (wd, wf), (wf, wd)):
        p = gemm_plan(R * st, cfg.cols * w_in, cfg.cols * w_out, cfg, GEMM_ALGORITHM, dtype)
        need.append(p.sram_bytes() - (p.tile_b * (2 if dtype == "float16" else 4) + 3) // 4 * 4)
    item = 2 if dtype == "float16" else 4
    need.append(st * wf * (4 + 4 + item) + 4 * st * wf)      # act: gate, up, out, tmp
    return max(need)


def _attention_bytes(model, cfg, st: int, dtype: str, attention: str) -> int:
    """Per-PE bytes of the attention phase ("gemm": GemmAttentionPlan; "ring":
    the K/V ring slots, scores, accumulator and statistics)."""
    lay = FeatureLayout.heads(model.n_heads, model.head_dim, cfg.cols)
    if attention == "gemm":
        return GemmAttentionPlan(cfg.rows, lay.group, lay.width, st, st, dtype,
                                 True).sram_bytes(cfg)
    item = 2 if dtype == "float16" else 4
    w = lay.width
    kv = 2 * (2 * st * w + st) * item        # two ring slots of K, V, bias
    return kv + st * w * (2 * item + 4) + st * st * 4 + (cfg.rows + 2 * st + 4) * 4 + st * st * 4


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
              attention_algorithm: str, reserve: int = 0):
    """One layer on the prefill layout, `reserve` bytes per PE taken by the
    region's resident weights. Returns (x_tiles, k_tiles, v_tiles, reports, names)."""
    region, cfg = cfg, _working(cfg, reserve)
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
        qkv[name], r = gemm_phase(h, lay.d.width, placed_weight(W, lay.d, lay.attn), region, wa,
                                  dtype, reserve=reserve)
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
    attn_out, r = gemm_phase(o_tiles, wa, placed_weight(lw.wo, lay.attn, lay.d), region,
                             lay.d.width, dtype, reserve=reserve)
    add("o_proj", r)
    x_tiles, h, r = norm_phase(cfg, model, x_tiles, st, lay.d, lw.mlp_norm,
                               lw.mlp_norm_bias, dtype, residual=attn_out,
                               residual_bias=lw.bo)
    add("mlp_norm", r)
    wf = lay.ff.width
    up, r = gemm_phase(h, lay.d.width, placed_weight(lw.w_up, lay.d, lay.ff), region, wf,
                       dtype, reserve=reserve)
    add("up_proj", r)
    nf = st * wf
    if model.gated:
        gate, r = gemm_phase(h, lay.d.width, placed_weight(lw.w_gate, lay.d, lay.ff), region, wf,
                             dtype, reserve=reserve)
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
    down, r = gemm_phase(out["a"], wf, placed_weight(lw.w_down, lay.ff, lay.d), region,
                         lay.d.width, dtype, reserve=reserve)
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
                       attention: str = "gemm", reserve: int = 0) -> None:
    """One clear error when the sequence's KV cache (and the attention phase's
    buffers) cannot fit the SRAM a PE has left beside `reserve` bytes of
    resident weights."""
    work = _working(cfg, reserve)
    lay = FeatureLayout.heads(model.n_heads, model.head_dim, cfg.cols)
    st = -(-seq // cfg.rows)
    need = _attention_bytes(model, cfg, st, dtype, attention)
    if need <= work.sram_bytes:
        return
    if attention == "gemm":
        plan = GemmAttentionPlan(cfg.rows, lay.group, lay.width, st, st, dtype, True)
        raise SramOverflowError(
            f"a {seq}-token prefill of {model.name} on a {cfg.rows} x {cfg.cols} grid with "
            f"gemm attention keeps {st} x {plan.nt} scores per PE and needs {need} bytes per "
            f"PE, more than the {work.sram_bytes} a PE has beside {reserve} bytes of resident "
            f"weights; the longest sequence that fits this grid is "
            f"{longest_gemm_sequence(work, lay, dtype)} tokens")
    longest = 0
    for s in range(1, seq):
        if _attention_bytes(model, cfg, -(-s // cfg.rows), dtype, "ring") > work.sram_bytes:
            break
        longest = s
    raise SramOverflowError(
        f"a {seq}-token prefill of {model.name} on a {cfg.rows} x {cfg.cols} grid puts "
        f"{st} positions of the KV cache ({lay.width} features each) on every PE and needs "
        f"{need} bytes per PE in the attention phase, more than the {work.sram_bytes} a PE has "
        f"beside {reserve} bytes of resident weights; the longest sequence that fits this "
        f"grid is {longest} tokens")
