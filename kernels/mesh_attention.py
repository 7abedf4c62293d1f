"""Attention on the mesh: prefill attention and its standalone kernel.

    O, report = kernels.attention(Q, K, V, cfg, causal=True, dtype="float32",
                                  algorithm="auto")   # "gemm" | "ring"

algorithm="gemm" (attention from GEMMs): per head on its g columns, S = Q K^T by
kernels.gemm (SUMMA, transpose_b), the causal and padding masks, row max by
a max-allreduce and row sum by a sum-allreduce over the g columns that hold a
score row, P = exp(S - max) / sum, and P V by kernels.gemm; see
gemm_attention and docs/transformer.md for the layout, what is used in place
(Q, P, V) and what is not: K, whose move into the scores GEMM's B placement
runs on the fabric first (phase "k_move", `move_keys`), and the SRAM the
score matrix needs (GemmAttentionPlan, longest_gemm_sequence).
algorithm="ring": described below.

Layout (the prefill layout of kernels.prefill_layer): queries and keys are
cut into R blocks along the sequence, block y on row y (sequence along Y);
the features of the H heads are spread along X with FeatureLayout.heads, each
head owning g = C // H neighbouring columns. PE (x, y) holds Q, K and V tiles
(st x w): the w features of column x for the st positions of block y.
Grouped-query attention: each query head's K and V columns are placed next
to its Q columns (the KV head is stored once per query head that reads it;
the K and V projections produce them so, see kernels.prefill_layer).

Ring algorithm (R steps; a ring over each column, in the interleaved order
0, 2, 4, ..., 5, 3, 1 so that every transfer is at most two hops):
  step t: every PE holds the K/V block of the row t places after it on the
  ring (at t = 0 its own). It
    1. starts sending that block to its ring predecessor and receiving the
       next one from its successor (asynchronous, double-buffered);
    2. computes its partial scores Q_tile K_tile^T (st x st, over its w
       features) with one matmul (transpose_b: K is used in its stored
       layout, never transposed);
    3. sums the partial scores over the g columns of the head (segmented
       allreduce along X; this is GEMM-T's reduce along X);
    4. scales by 1/sqrt(hd), adds the key-padding bias carried with the K
       block and the causal mask (t = 0: the lower triangle of the diagonal
       block; t > 0: 0 or -inf for the whole block, from a per-PE table);
    5. updates the online softmax (running row max m, row sum l; the output
       accumulator is rescaled by exp(m_old - m_new)) and accumulates
       P V_tile into the output tile;
    6. waits for the transfer.
  Finally each output row is divided by l. The output tile is left where Q
  was: the layout of the next phase (the O projection) is the same.
The softmax max and sum are reduced along the key blocks as they pass (the
online form of softmax; FlashAttention's merge), not by separate max- and
sum-allreduces over a materialised score row: that would need the scores of
a query row spread over a row of PEs, i.e. keys along X, which is the
transpose of the layout the projections produce.

Costs per step (first principles): shift 2*T_R + 2*H + 2*st*w + st (one
stream of the K, V and bias block); scores st*st*w / SIMD; segmented
allreduce (layers.allreduce_cycles); softmax ~ 6*st*st + ~10*st;
P V st*st*w / SIMD. The shift overlaps the compute.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

import wse
from wse import routes
from wse.config import DTYPES
from wse.errors import ConfigError, SramOverflowError

from . import reference
from .matmul import gemm as mesh_gemm, plan as gemm_plan
from .layers import (NEG_INF, FeatureLayout, SegmentChannel, build_roles, emit_rows,
                     gather_sequence, head_layout, matrix_to_tiles, place_sequence,
                     tiles_to_matrix)


def prefill_program(cfg: wse.WaferConfig, layout: FeatureLayout, q_tiles, kv_tiles,
                    st_q: int, st_k: int, causal: bool, scale: float, dtype: str):
    """Build the ring-attention Program.

    q_tiles (R, C, st_q*w); kv_tiles (R, C, 2*st_k*w + st_k): K tile, V tile and
    the additive key-padding bias of each key of the block. Returns (prog, out)."""
    R, C = cfg.rows, cfg.cols
    w = layout.width
    kv_len = 2 * st_k * w + st_k
    prog = wse.Program(cfg)
    q = prog.buffer("q", (st_q * w,), dtype)
    kv = prog.buffer("kv", (2 * kv_len,), dtype)           # two slots: current, incoming
    s = prog.buffer("scores", (st_q * st_k,), "float32")
    acc = prog.buffer("acc", (st_q * w,), "float32")
    stat = prog.buffer("stat", (2 * st_q + 4,), "float32")  # m, l, scratch scalars
    out = prog.buffer("out", (st_q * w,), dtype)
    block_bias = prog.buffer("block_bias", (max(R, 1),), "float32")
    tri = prog.buffer("tri", (st_q * st_k,), "float32") if causal else None
    prog.load(q, q_tiles)
    kv_init = np.zeros((R, C, 2 * kv_len))
    kv_init[:, :, :kv_len] = kv_tiles
    prog.load(kv, kv_init)
    init = np.zeros((R, C, 2 * st_q + 4))
    init[:, :, :st_q] = NEG_INF
    prog.load(stat, init)
    order = routes.interleaved_order(R)
    pos = routes.ring_position(order)
    if causal:
        # block held at step t by row y: order[(pos[y] + t) % R]; masked when later than y
        held = np.array([[order[(pos[y] + t) % R] for t in range(R)] for y in range(R)])
        bias = np.where(held > np.arange(R)[:, None], NEG_INF, 0.0)
        prog.load(block_bias, np.broadcast_to(bias[:, None, :], (R, C, R)))
        i = np.arange(st_q)[:, None]
        j = np.arange(st_k)[None, :]
        prog.load(tri, np.where(j > i, NEG_INF, 0.0).reshape(-1))
    heads = SegmentChannel(prog, "x", layout.segments, "hd")
    ring = routes.ring(prog, "y", order, step=-1, name="kv") if R > 1 else None
    if ring is not None:
        send = prog.color_param_indices("kv_send", ring.send_color)
        recv = prog.color_param_indices("kv_recv", ring.recv_color)

    def body(t, parts):
        head, free = t.reg(), t.reg()
        t.set(head, 0)
        t.set(free, 1)
        step = t.reg()
        t.set(step, 0)
        sc = stat.view(2 * st_q, 4)   # noqa: F841 - scratch scalars 0..3

        def scal(i):
            return stat.view(offset=2 * st_q + i, length=1, stride=0)

        def one_step(first: bool, last: bool):
            if not last:
                t.mov(kv.view(offset=free * kv_len, length=kv_len), prog.fabin(recv, kv_len),
                      async_=True)
                t.mov(prog.fabout(send, kv_len), kv.view(offset=head * kv_len, length=kv_len),
                      async_=True)
            kt = kv.view(offset=head * kv_len, length=st_k * w)
            vt = kv.view(offset=head * kv_len + st_k * w, length=st_k * w)
            kb = kv.view(offset=head * kv_len + 2 * st_k * w, length=st_k)
            t.fill(s.view(), 0.0)
            t.matmul(s.view(), q.view(), kt, st_q, w, st_k, transpose_b=True)
            heads.allreduce(t, parts["hd"], s.view(), st_q * st_k, "sum")
            t.scale(s.view(), s.view(), scale)
            if causal:
                if first:
                    t.add(s.view(), s.view(), tri.view())
                else:
                    t.adds(s.view(), s.view(), block_bias.view(offset=step, length=1, stride=0))

            def row(r):
                sr = s.view(offset=r * st_k, length=st_k)
                mr = stat.view(offset=r, length=1)
                lr = stat.view(offset=r + st_q, length=1)
                t.add(sr, sr, kb)
                t.rmax(stat.view(2 * st_q, 1), sr)
                t.max(stat.view(2 * st_q, 1), stat.view(2 * st_q, 1), mr)      # m_new
                t.sub(stat.view(2 * st_q + 1, 1), mr, stat.view(2 * st_q, 1))
                t.exp(stat.view(2 * st_q + 1, 1), stat.view(2 * st_q + 1, 1))  # correction
                t.mov(mr, stat.view(2 * st_q, 1))
                t.subs(sr, sr, scal(0))
                t.exp(sr, sr)
                t.sum(stat.view(2 * st_q + 2, 1), sr)
                t.fmac(lr, stat.view(2 * st_q + 2, 1), lr, scal(1))
                t.scale(acc.view(offset=r * w, length=w), acc.view(offset=r * w, length=w),
                        scal(1))

            emit_rows(t, st_q, row)
            t.matmul(acc.view(), s.view(), vt, st_q, st_k, w)
            if not last:
                t.wait()
                for r in (head, free):
                    t.addi(r, 1)
                    t.mod(r, 2)
            t.addi(step, 1)

        one_step(first=True, last=R == 1)
        if R > 1:
            with t.loop(R - 2):
                one_step(first=False, last=False)
            one_step(first=False, last=True)
        t.recip(stat.view(st_q, st_q), stat.view(st_q, st_q))

        def finish(r):
            t.scale(out.view(offset=r * w, length=w), acc.view(offset=r * w, length=w),
                    stat.view(offset=r + st_q, length=1, stride=0))

        emit_rows(t, st_q, finish)

    build_roles(prog, {"hd": heads}, body)
    return prog, out


# ----------------------------------------------------------------------------
# Attention from GEMMs: scores by GEMM, softmax by max- and sum-allreduces, P V by GEMM
ALGORITHMS = ("auto", "gemm", "ring")


@dataclass(frozen=True)
class GemmAttentionPlan:
    """Tile sizes of algorithm="gemm" for one head on its R x g columns.

    a = R / g key blocks per PE; the scores GEMM's K dimension (the head's g*w
    features) is cut into R blocks of kt = ceil(g*w / R); a PE keeps
    nt = a * st_k score columns of st_q query rows."""
    rows: int
    group: int
    width: int
    st_q: int
    st_k: int
    dtype: str
    causal: bool

    @property
    def blocks(self) -> int:
        return self.rows // self.group

    @property
    def kt(self) -> int:
        return -(-(self.group * self.width) // self.rows)

    @property
    def nt(self) -> int:
        return self.blocks * self.st_k

    def gemm_plans(self, cfg: wse.WaferConfig):
        """(scores GemmPlan, P V GemmPlan) on the head's R x g sub-grid."""
        sub = cfg.with_grid(rows=self.rows, cols=self.group)
        R = self.rows
        return (gemm_plan(R * self.st_q, R * self.kt, R * self.st_k, sub, "summa", self.dtype,
                          transpose_b=True),
                gemm_plan(R * self.st_q, R * self.st_k, self.group * self.width, sub, "summa",
                          self.dtype))

    def softmax_bytes(self) -> int:
        """Bytes per PE of the softmax phase (4-byte aligned buffers, as the builder)."""
        item = 2 if self.dtype == "float16" else 4
        parts = [4 * self.st_q * self.nt, item * self.st_q * self.nt, 4 * self.nt,
                 4 * 2 * self.st_q] + ([4 * self.st_q * self.st_k] if self.causal else [])
        return sum((b + 3) // 4 * 4 for b in parts)

    def sram_bytes(self, cfg: wse.WaferConfig) -> int:
        """The largest of the three phases' bytes per PE."""
        scores, pv = self.gemm_plans(cfg)
        return max(scores.sram_bytes(), self.softmax_bytes(), pv.sram_bytes())


def gemm_layout_error(rows: int, layout: FeatureLayout) -> str | None:
    """Why algorithm="gemm" cannot run on this layout (None: it can)."""
    g = layout.group
    if rows % g:
        return (f"attention algorithm 'gemm' needs the {g} columns of a head to divide the "
                f"{rows} rows (SUMMA's K blocks of P V are then the rows' key blocks, so P and "
                f"V are used where they lie); use algorithm='ring' on this grid")
    return None


def longest_gemm_sequence(cfg: wse.WaferConfig, layout: FeatureLayout, dtype: str,
                          causal: bool = True) -> int:
    """The longest self-attention sequence algorithm="gemm" fits on cfg (0: none):
    R * st for the largest st positions per row whose phases fit a PE's SRAM."""
    st = 0
    while GemmAttentionPlan(cfg.rows, layout.group, layout.width, st + 1, st + 1, dtype,
                            causal).sram_bytes(cfg) <= cfg.sram_bytes:
        st += 1
    return cfg.rows * st


def _check_gemm_fits(p: GemmAttentionPlan, cfg: wse.WaferConfig, layout: FeatureLayout,
                     seq: int) -> None:
    need = p.sram_bytes(cfg)
    if need <= cfg.sram_bytes:
        return
    scores, pv = p.gemm_plans(cfg)
    longest = longest_gemm_sequence(cfg, layout, p.dtype, p.causal)
    raise SramOverflowError(
        f"gemm attention over {seq} positions on a {cfg.rows} x {cfg.cols} grid keeps "
        f"{p.st_q} x {p.nt} scores per PE and needs {need} bytes per PE (scores GEMM "
        f"{scores.sram_bytes()}, softmax {p.softmax_bytes()}, P V GEMM {pv.sram_bytes()}), more "
        f"than the {cfg.sram_bytes} of a PE; the longest sequence that fits this grid is "
        f"{longest} tokens (algorithm='ring' keeps no score matrix)")


def _feature_columns(p: GemmAttentionPlan) -> np.ndarray:
    """Column c of the scores GEMM's K dimension -> slot x*w + j of the head's tiles
    (-1: padding). SUMMA gives PE x the K blocks x, x+g, x+2g, ...: these are
    exactly the w features PE x already holds, so Q is used where it lies."""
    c = np.arange(p.rows * p.kt)
    k, o = c // p.kt, c % p.kt
    x, i = k % p.group, k // p.group
    j = i * p.kt + o
    return np.where(j < p.width, x * p.width + j, -1)


def _key_order(p: GemmAttentionPlan) -> np.ndarray:
    """Score column n (PE x keeps n in [x*nt, (x+1)*nt)) -> key index. PE x keeps the
    key blocks of rows x, x+g, x+2g, ...: the K blocks SUMMA gives PE x in P V."""
    n = np.arange(p.group * p.nt)
    x, q = n // p.nt, n % p.nt
    i, s = q // p.st_k, q % p.st_k
    return (x + p.group * i) * p.st_k + s


def k_move_hops(p: GemmAttentionPlan, sk: int) -> tuple[int, int]:
    """(elements that change PE, element-hops) of one head's K moving from the
    prefill layout (keys along Y) to the scores GEMM's B placement (keys along X),
    counting the keys < sk (sk = rows * st_k: every key slot, padding included,
    which is what `move_keys` moves)."""
    feat = _feature_columns(p)
    c = np.nonzero(feat >= 0)[0]
    keys = _key_order(p)
    n = np.nonzero(keys < sk)[0]
    src_x, dst_y = feat[c] // p.width, c // p.kt
    src_y, dst_x = keys[n] // p.st_k, n // p.nt
    hops = (np.abs(src_x[:, None] - dst_x[None, :]) + np.abs(dst_y[:, None] - src_y[None, :]))
    return int((hops > 0).sum()), int(hops.sum())


@dataclass(frozen=True)
class KMove:
    """Geometry of `move_keys` for one head (head-local column x, row y).

    The K tile of PE (x, y) (st_k keys x w features) is cut into `pieces`
    pieces of kt features (P = st_k * kt values, keys major); piece i goes to
    PE (y mod g, x + g*i): _feature_columns puts feature i*kt + o of column x
    in the scores GEMM's K block x + g*i (= the B row of PEs x + g*i), and
    _key_order puts key block y on column y mod g, as block y // g of its nt
    score columns."""
    plan: GemmAttentionPlan

    @property
    def piece(self) -> int:
        return self.plan.st_k * self.plan.kt

    @property
    def pieces(self) -> int:
        return -(-self.plan.width // self.plan.kt)

    def roots(self) -> np.ndarray:
        """(rows, g) True where a column gather ends: rows x + g*i, i < pieces."""
        p = self.plan
        y, x = np.indices((p.rows, p.group))
        return ((y - x) % p.group == 0) & (y >= x) & ((y - x) // p.group < self.pieces)


def k_move_lower_bounds(cfg: wse.WaferConfig, p: GemmAttentionPlan) -> dict:
    """First-principles lower bounds on the cycles of `move_keys`' three runs
    ({"north", "south", "row"}; see move_keys for the data flow). With
    h = S + D + 2*T_R + H (a one-hop stream of B wavelets sent by an
    instruction issued at 0 ends at h + B: start-up, datapath, two ramps, a
    hop), a vector copy of n elements at least S + ceil(n / SIMD),
    P = st_k*kt, pieces n, root i of column x on row x + g*i:
      north: PE y sends c_y = #{i : x + g*i < y} sections of (R - y)*P wavelets
             (its piece, then what the R-1-y rows below it send that root) over
             its one link north, after cutting its tile into pieces (the local
             copies, S + ceil(st_k / SIMD) cycles each), and a root copies its
             own piece: stage + max(max_y c_y (R-y) P + h, S + ceil(P / SIMD)).
      south: PE y sends s_y = #{i : x + g*i > y} sections of (y + 1)*P:
             max_y s_y (y+1) P + h.
      row:   a root sends (g-1) tiles of a*P wavelets through its ramp, one a
             cycle, then copies its own a pieces (S + ceil(P / SIMD) each):
             (g-1) a P + max(h, a (S + ceil(P / SIMD))).
    Issue cycles and task starts are left out: the bounds stay bounds.
    Measured on the small grids of tests/kernels/test_mesh_attention.py
    (test_k_move_leaves_the_b_tiles_the_scores_gemm_needs' cases, WSE-2
    instruction costs): north 1.3x .. 3.8x its bound, south 2.7x .. 4.6x,
    row 1.8x .. 2.5x; the loops' issue cycles and the stalls where a PE's
    own piece heads a section are not in the bounds. No upper bound or
    exact model is derived (open)."""
    m = KMove(p)
    R, g, P, n, a = p.rows, p.group, m.piece, m.pieces, p.blocks
    S = cfg.vector_startup_cycles
    h = S + cfg.datapath_latency + 2 * cfg.ramp_latency + cfg.hop_latency
    simd = cfg.simd_width(p.dtype)
    stage = sum(S + -(-p.st_k // simd) for i in range(n)
                for _ in range(min(p.kt, p.width - i * p.kt)))
    y = np.arange(R)[:, None]
    d = y - np.arange(g)[None, :]
    above = np.clip((d + g - 1) // g, 0, n)
    below = n - np.clip(d // g + 1, 0, n)
    north = int((above * (R - y) * P).max())
    south = int((below * (y + 1) * P).max())
    row = (g - 1) * a * P
    own = S + -(-P // simd)
    return {"north": stage + max(north + h if north else 0, own),
            "south": south + h if south else 0,
            "row": row + max(h if row else 0, a * own)}


def _head_geometry(cfg: wse.WaferConfig, layout: FeatureLayout):
    """(head-local column x (-1 outside the heads), row y) per PE of the grid."""
    x = np.full((cfg.rows, cfg.cols), -1, np.int64)
    for lo, hi in layout.segments:
        x[:, lo:hi + 1] = np.arange(hi - lo + 1)[None, :]
    return x, np.broadcast_to(np.arange(cfg.rows)[:, None], (cfg.rows, cfg.cols))


def _column_gather_program(cfg: wse.WaferConfig, layout: FeatureLayout, m: KMove, k_tiles,
                           staged, gathered, direction: str):
    """One direction ("north" or "south") of the column gathers: every PE (x, y) of
    a head sends its piece i to the root x + g*i of its column, store-and-forward
    along the column. The north run first cuts the K tile into its pieces
    (local copies); the south run starts from what the north run left in SRAM
    (staged, gathered). Returns (prog, stage, gathered)."""
    p = m.plan
    R, g, w, P, pieces = p.rows, p.group, p.width, m.piece, m.pieces
    x, y = _head_geometry(cfg, layout)
    in_head = x >= 0
    d = y - x                                              # root i sits at d = g*i
    root = in_head & (d >= 0) & (d % g == 0) & (d // g < pieces)
    north = direction == "north"
    if north:       # roots above, nearest first: i = count - 1 .. 0
        count = np.clip((d + g - 1) // g, 0, pieces)
        first = (count - 1) * P
        step = -P
        through = (R - 1 - y) * P                          # what the rows below send on
        recv_at = (y + 1) * P
    else:           # roots below, nearest first: i = pieces - count .. pieces - 1
        count = pieces - np.clip(d // g + 1, 0, pieces)
        first = (pieces - count) * P
        step = P
        through = y * P
        recv_at = np.zeros_like(y)
    count = np.where(in_head, count, 0)
    prog = wse.Program(cfg)
    src = prog.buffer("k", (p.st_k * w,), p.dtype)
    stage = prog.buffer("pieces", (pieces * P,), p.dtype)
    gather = prog.buffer("gathered", (R * P,), p.dtype)
    prog.load(src, k_tiles)
    if staged is not None:
        prog.load(stage, staged)
    prog.load(gather, gathered)
    pairs = [(i, i - 1) for i in range(1, R)] if north else [(i, i + 1) for i in range(R - 1)]
    chain = routes.transfers(prog, "y", pairs, name=direction[0] + "k")
    send = prog.color_param_indices("send", chain.send_color)
    recv = prog.color_param_indices("recv", chain.recv_color)
    p_count = prog.param("roots_beyond", count)
    p_first = prog.param("first_piece", np.maximum(first, 0))
    p_through = prog.param("through", through)
    p_has_through = prog.param("has_through", (through > 0).astype(np.int64))
    p_receives = prog.param("receives", (root & (through > 0)).astype(np.int64))
    p_recv_at = prog.param("receive_at", recv_at)
    p_root = prog.param("is_root", root.astype(np.int64))
    p_own_at = prog.param("own_at", y * P)
    p_own_piece = prog.param("own_piece", np.where(root, d // g, 0) * P)
    with prog.role("head", where=in_head).task("main", entry=True) as t:
        if north:
            # the pieces, keys major: piece i holds features i*kt .. i*kt + kt - 1
            for i in range(pieces):
                for o in range(min(p.kt, w - i * p.kt)):
                    t.mov(stage.view(offset=i * P + o, length=p.st_k, stride=p.kt),
                          src.view(offset=i * p.kt + o, length=p.st_k, stride=w))
        at, length, off = t.reg(), t.reg(), t.reg()
        t.set(length, p_through)
        with t.loop(p_receives):          # a root takes what the rows beyond send it first
            t.set(at, p_recv_at)
            t.mov(gather.view(offset=at, length=length), prog.fabin(recv, length))
        if north:
            with t.loop(p_root):          # and keeps its own piece
                t.set(at, p_own_at)
                t.set(off, p_own_piece)
                t.mov(gather.view(offset=at, length=P), stage.view(offset=off, length=P))
        t.set(off, p_first)
        with t.loop(p_count):
            if north:                     # own piece first: the root gets rows in order
                t.mov(prog.fabout(send, P), stage.view(offset=off, length=P))
            with t.loop(p_has_through):
                t.mov(prog.fabout(send, length), prog.fabin(recv, length))
            if not north:                 # own piece last: likewise
                t.mov(prog.fabout(send, P), stage.view(offset=off, length=P))
            t.addi(off, step)
    return prog, stage, gather


def _row_scatter_program(cfg: wse.WaferConfig, layout: FeatureLayout, m: KMove, gathered):
    """Every root (x, y) holds piece y // g of the K tiles of its column's rows; it
    sends column c the pieces of rows c, c + g, c + 2g, ... (its B tile, a*P values)
    along the row, store-and-forward: east for c > x, then west for c < x, nearest
    column first; each PE keeps the first a*P values it receives and passes on the
    rest. Returns (prog, B tile buffer)."""
    p = m.plan
    R, g, P = p.rows, p.group, m.piece
    a = p.blocks
    x, y = _head_geometry(cfg, layout)
    in_head = x >= 0
    has_root = in_head & (y < g * m.pieces)
    c0 = y % g                                             # the root's column
    prog = wse.Program(cfg)
    gather = prog.buffer("gathered", (R * P,), p.dtype)
    tile = prog.buffer("b_tile", (a * P,), p.dtype)
    prog.load(gather, gathered)
    pairs = {"east": [], "west": []}
    for lo, hi in layout.segments:
        pairs["east"] += [(i, i + 1) for i in range(lo, hi)]
        pairs["west"] += [(i + 1, i) for i in range(lo, hi)]
    chains = {k: routes.transfers(prog, "x", v, name=k[0] + "s") for k, v in pairs.items()}
    send = {k: prog.color_param_indices(f"{k}_send", c.send_color) for k, c in chains.items()}
    recv = {k: prog.color_param_indices(f"{k}_recv", c.recv_color) for k, c in chains.items()}
    p_root_at = prog.param("root_column", c0 * P)
    p_east = prog.param("columns_east", np.where(has_root, g - 1 - c0, 0))
    p_west = prog.param("columns_west", np.where(has_root, c0, 0))
    east = has_root & (x > c0)
    west = has_root & (x < c0)
    beyond = np.where(east, g - 1 - x, np.where(west, x, 0)) * a * P
    p_beyond = prog.param("beyond", beyond)
    p_any_beyond = prog.param("any_beyond", (beyond > 0).astype(np.int64))
    with prog.role("root", where=has_root & (x == c0)).task("main", entry=True) as t:
        col, at = t.reg(), t.reg()

        def column_tile(dst):
            """The a pieces of rows col, col + g, ... (col: offset col*P) to dst."""
            t.affine(at, col, 1, 0)
            with t.loop(a):
                t.mov(dst, gather.view(offset=at, length=P))
                t.addi(at, g * P)

        t.set(col, p_root_at)
        with t.loop(p_east):
            t.addi(col, P)
            column_tile(prog.fabout(send["east"], P))
        t.set(col, p_root_at)
        with t.loop(p_west):
            t.addi(col, -P)
            column_tile(prog.fabout(send["west"], P))
        t.set(col, p_root_at)                              # last, its own tile (local)
        t.set(at, 0)
        with t.loop(a):
            t.mov(tile.view(offset=at, length=P), gather.view(offset=col, length=P))
            t.addi(at, P)
            t.addi(col, g * P)
    for side, where in (("east", east), ("west", west)):
        with prog.role(side, where=where).task("main", entry=True) as t:
            t.mov(tile.view(), prog.fabin(recv[side], a * P))
            length = t.reg()
            t.set(length, p_beyond)
            with t.loop(p_any_beyond):
                t.mov(prog.fabout(send[side], length), prog.fabin(recv[side], length))
    return prog, tile


def b_tiles_to_matrix(tiles, p: GemmAttentionPlan) -> np.ndarray:
    """(R, g, nt*kt) B tiles of one head (PE (x, y): block (y, x), nt x kt) -> the
    scores GEMM's (g*nt, R*kt) B operand."""
    R, g = p.rows, p.group
    return np.asarray(tiles, np.float64).reshape(R, g, p.nt, p.kt).transpose(1, 2, 0, 3).reshape(
        g * p.nt, R * p.kt)


def move_keys(cfg: wse.WaferConfig, layout: FeatureLayout, p: GemmAttentionPlan, k_tiles):
    """K from the prefill layout to the scores GEMM's B placement, over the fabric.

    Piece i of PE (x, y)'s K tile belongs on PE (y mod g, x + g*i) (KMove).
    Every head at once, on its own columns, in three engine runs (each starts
    from what the previous one left in the same PEs' SRAM):
      north, south: along each column, PE (x, y) sends piece i to the root
        (x, x + g*i) (store-and-forward chains to the neighbour, one per
        direction; each PE sends, per root beyond it, nearest first, its own
        piece and passes on what the rows beyond it send that root). Root
        x + g*i then holds piece i of every row of column x, in row order.
      row: the root of row r (column r mod g) sends column c the pieces of
        rows c, c + g, c + 2g, ...: c's B tile (store-and-forward along the
        row, east then west).
    Every value travels hop by hop along a shortest path, once: the
    wavelet-hops are the element-hops of k_move_hops(p, rows * st_k) per head
    (padding keys included; fp16 values travel one per wavelet). Roots hold
    R*P values for the gather. Cost: k_move_lower_bounds.

    Returns (B tiles (R, C, nt*kt): PE (x, y) of a head holds B block (y, x) of
    its scores GEMM, row-major nt x kt; report of the three runs in sequence)."""
    m = KMove(p)
    R, C = cfg.rows, cfg.cols
    gathered = np.zeros((R, C, R * m.piece))
    staged, reports = None, []
    for direction in ("north", "south"):
        prog, stage, gather = _column_gather_program(cfg, layout, m, k_tiles, staged, gathered,
                                                     direction)
        result = prog.run(max_cycles=10 ** 12)
        staged, gathered = result.read(stage), result.read(gather)
        reports.append(result.report)
    prog, tile = _row_scatter_program(cfg, layout, m, gathered)
    result = prog.run(max_cycles=10 ** 12)
    reports.append(result.report)
    report = wse.RunReport.sequence(reports, ["north", "south", "row"])
    return result.read(tile).astype(np.float64), report


def _side_by_side(reports: list, cfg: wse.WaferConfig, offsets: list[int]) -> wse.RunReport:
    """Runs on disjoint column groups of one grid at the same time (one per head):
    the grid's time is the longest run's; traffic, work and dynamic energy add
    up; static energy is the whole grid's for that time."""
    R, C = cfg.rows, cfg.cols

    def grid(name, tail=()):
        out = np.zeros((R, C) + tail, getattr(reports[0], name).dtype)
        for r, lo in zip(reports, offsets):
            out[:, lo:lo + r.cols] = getattr(r, name)
        return out

    cycles = max(r.cycles for r in reports)
    breakdown = {k: sum(r.energy_breakdown.get(k, 0.0) for r in reports)
                 for k in reports[0].energy_breakdown}
    breakdown["static"] = cfg.system_watts * (R * C / cfg.system_pes) * cycles / cfg.clock_hz
    return wse.RunReport(
        config_name=cfg.name, rows=R, cols=C, clock_hz=cfg.clock_hz, cycles=cycles,
        wavelet_hops=sum(r.wavelet_hops for r in reports), link_wavelets=grid("link_wavelets", (4,)),
        ramp_in=grid("ramp_in"), ramp_out=grid("ramp_out"), sram_peak_bytes=grid("sram_peak_bytes"),
        busy_cycles=grid("busy_cycles"), compute_cycles=grid("compute_cycles"),
        stall_cycles=grid("stall_cycles"), flops=sum(r.flops for r in reports),
        sram_bytes_accessed=sum(r.sram_bytes_accessed for r in reports),
        energy_joules=float(sum(breakdown.values())), energy_breakdown=breakdown,
        peak_flops_per_pe_cycle=max(r.peak_flops_per_pe_cycle for r in reports),
        wall_seconds=sum(r.wall_seconds for r in reports),
        router_steps=sum(r.router_steps for r in reports),
        pe_steps=sum(r.pe_steps for r in reports))


def _softmax_program(cfg, layout: FeatureLayout, p: GemmAttentionPlan, score_tiles, sk: int,
                     scale: float):
    """softmax(scale * S + masks) of every score row, the row spread over its head's g
    columns: row max by a max-allreduce, row sum by a sum-allreduce (segmented, along X).
    Returns (prog, P buffer)."""
    R, C = cfg.rows, cfg.cols
    g, nt, st_q, st_k = p.group, p.nt, p.st_q, p.st_k
    prog = wse.Program(cfg)
    s = prog.buffer("scores", (st_q * nt,), "float32")
    pb = prog.buffer("p", (st_q * nt,), p.dtype)
    key_bias = prog.buffer("key_bias", (nt,), "float32")
    stat = prog.buffer("stat", (2 * st_q,), "float32")          # row max, row sum
    tri = prog.buffer("tri", (st_q * st_k,), "float32") if p.causal else None
    prog.load(s, score_tiles)
    # additive bias of every score column: key padding, and (causal) the key blocks
    # later than the PE's query block; the diagonal block gets the triangle
    keys = _key_order(p).reshape(g, nt)                          # (head column, n)
    y = np.arange(R)[:, None, None]
    masked = np.broadcast_to(keys[None] >= sk, (R, g, nt))
    if p.causal:
        masked = masked | (keys[None] // st_k > y)
    head_bias = np.where(masked, NEG_INF, 0.0)                   # (R, g, nt)
    xh = np.arange(g)[None, :]
    has_diag = (y[:, :, 0] >= xh) & ((y[:, :, 0] - xh) % g == 0)
    diag_off = np.where(has_diag, (y[:, :, 0] - xh) // g * st_k, 0)
    bias = np.zeros((R, C, nt))
    diag = np.zeros((R, C), np.int64)
    off = np.zeros((R, C), np.int64)
    in_head = np.zeros((R, C), bool)
    for lo, hi in layout.segments:
        bias[:, lo:hi + 1] = head_bias
        diag[:, lo:hi + 1] = has_diag
        off[:, lo:hi + 1] = diag_off
        in_head[:, lo:hi + 1] = True
    prog.load(key_bias, bias)
    if p.causal:
        i = np.arange(st_q)[:, None]
        j = np.arange(st_k)[None, :]
        prog.load(tri, np.where(j > i, NEG_INF, 0.0).reshape(-1))
    p_diag = prog.param("has_diagonal_block", diag)
    p_off = prog.param("diagonal_offset", off)
    heads = SegmentChannel(prog, "x", layout.segments, "hd")

    def body(t, parts):
        def row(r):
            return s.view(offset=r * nt, length=nt)

        t.scale(s.view(), s.view(), scale)
        emit_rows(t, st_q, lambda r: t.add(row(r), row(r), key_bias.view()))
        if p.causal:
            at = t.reg()
            with t.loop(p_diag):                   # once on a PE holding the diagonal block
                t.set(at, p_off)

                def triangle(r):
                    block = s.view(offset=at * 1, length=st_k)
                    t.add(block, block, tri.view(offset=r * st_k, length=st_k))
                    t.addi(at, nt)

                emit_rows(t, st_q, triangle)
            t.program.free_reg(at)
        emit_rows(t, st_q, lambda r: t.rmax(stat.view(offset=r, length=1), row(r)))
        heads.allreduce(t, parts["hd"], stat.view(0, st_q), st_q, "max")

        def exp_sum(r):
            t.subs(row(r), row(r), stat.view(offset=r, length=1, stride=0))
            t.exp(row(r), row(r))
            t.sum(stat.view(offset=r + st_q, length=1), row(r))

        emit_rows(t, st_q, exp_sum)
        heads.allreduce(t, parts["hd"], stat.view(st_q, st_q), st_q, "sum")
        t.recip(stat.view(st_q, st_q), stat.view(st_q, st_q))
        emit_rows(t, st_q, lambda r: t.scale(pb.view(offset=r * nt, length=nt), row(r),
                                             stat.view(offset=r + st_q, length=1, stride=0)))

    build_roles(prog, {"hd": heads}, body, where=in_head)
    return prog, pb


def gemm_attention(cfg: wse.WaferConfig, layout: FeatureLayout, q_tiles, k_tiles, v_tiles,
                   st_q: int, st_k: int, sk: int, causal: bool, scale: float, dtype: str):
    """Attention from GEMMs on the prefill layout. q/k/v_tiles: (R, C, st*w) as
    place_sequence leaves them. Returns (output tiles (R, C, st_q*w), report with
    the phases k_move (move_keys: K to the scores GEMM's B placement over the
    fabric; the scores GEMM takes B as that run left it), scores, softmax,
    pv). See the module docstring."""
    R, C = cfg.rows, cfg.cols
    g, w = layout.group, layout.width
    why = gemm_layout_error(R, layout)
    if why:
        raise ConfigError(why)
    p = GemmAttentionPlan(R, g, w, st_q, st_k, dtype, causal)
    _check_gemm_fits(p, cfg, layout, max(R * st_q, sk))
    sub = cfg.with_grid(rows=R, cols=g)
    feat = _feature_columns(p)
    valid = feat >= 0
    keys = _key_order(p)
    segments = list(layout.segments)
    offsets = [lo for lo, _ in segments]
    b_tiles, move_report = move_keys(cfg, layout, p, k_tiles)
    scores = np.zeros((R, C, st_q * p.nt))
    runs = []
    for lo, hi in segments:
        Qh = tiles_to_matrix(q_tiles[:, lo:hi + 1], w)
        A = np.zeros((R * st_q, R * p.kt))
        A[:, valid] = Qh[:, feat[valid]]
        B = b_tiles_to_matrix(b_tiles[:, lo:hi + 1], p)    # as the move left them
        S, r = mesh_gemm(A, B, sub, algorithm="summa", dtype=dtype, transpose_b=True)
        scores[:, lo:hi + 1] = matrix_to_tiles(S, R, g, p.nt)
        runs.append(r)
    score_report = _side_by_side(runs, cfg, offsets)
    prog, pb = _softmax_program(cfg, layout, p, scores, sk, scale)
    result = prog.run(max_cycles=10 ** 12)
    probs = result.read(pb).astype(np.float64)
    softmax_report = result.report
    out = np.zeros((R, C, st_q * w))
    runs = []
    for lo, hi in segments:
        P = tiles_to_matrix(probs[:, lo:hi + 1], p.nt)
        A = np.empty_like(P)
        A[:, keys] = P                                  # the same values, natural key order
        O, r = mesh_gemm(A, tiles_to_matrix(v_tiles[:, lo:hi + 1], w), sub, algorithm="summa",
                         dtype=dtype)
        out[:, lo:hi + 1] = matrix_to_tiles(O, R, g, w)
        runs.append(r)
    report = wse.RunReport.sequence(
        [move_report, score_report, softmax_report, _side_by_side(runs, cfg, offsets)],
        ["k_move", "scores", "softmax", "pv"])
    report.extra["gemm_attention"] = {
        "score_columns_per_pe": p.nt, "sram_bytes_per_pe": p.sram_bytes(cfg),
        "k_move_runs": {ph["name"]: ph["cycles"] for ph in move_report.phases}}
    return out, report


def prefill_attention(cfg: wse.WaferConfig, layout: FeatureLayout, q_tiles, k_tiles, v_tiles,
                      st_q: int, st_k: int, sk: int, causal: bool, scale: float, dtype: str,
                      algorithm: str):
    """Attention on the prefill layout by `algorithm` ("gemm" or "ring"; the
    transformer's prefill phase and the standalone kernel both come here).
    Returns (output tiles (R, C, st_q*w) where Q was, report)."""
    if algorithm == "gemm":
        return gemm_attention(cfg, layout, q_tiles, k_tiles, v_tiles, st_q, st_k, sk, causal,
                              scale, dtype)
    if algorithm != "ring":
        raise ConfigError(f"unknown attention algorithm {algorithm!r}: expected 'gemm' or "
                          f"'ring'")
    prog, out = prefill_program(cfg, layout, q_tiles,
                                kv_block(k_tiles, v_tiles, cfg.rows, st_k, sk, dtype),
                                st_q, st_k, causal, scale, dtype)
    result = prog.run(max_cycles=10 ** 12)
    return result.read(out).astype(np.float64), result.report


FP16_MASK = -6.0e4
"""The key-padding bias travels with K and V in their dtype; fp16 cannot hold
NEG_INF, and exp(-6e4 + a score) is 0 all the same."""


def kv_block(k_tiles, v_tiles, rows: int, st_k: int, sk: int, dtype: str = "float32"):
    """K tile, V tile and key-padding bias (0 for keys < sk, -inf after) per PE."""
    key = np.arange(rows * st_k).reshape(rows, st_k)
    bias = np.where(key < sk, 0.0, FP16_MASK if dtype == "float16" else NEG_INF)
    parts = k_tiles.shape[1]
    return np.concatenate([k_tiles, v_tiles,
                           np.broadcast_to(bias[:, None, :], (rows, parts, st_k))], axis=2)


def _check_dtype(dtype: str) -> None:
    if dtype not in DTYPES:
        raise ConfigError(f"dtype {dtype!r}: expected one of {DTYPES}")


def attention(Q, K, V, cfg: wse.WaferConfig, causal: bool = True, dtype: str = "float32",
              algorithm: str = "auto"):
    """softmax(Q K^T / sqrt(hd) [+ causal mask]) V on the cfg.rows x cfg.cols grid.

    Q: (sq, hd) or (heads, sq, hd); K, V: (sk, hd) or (kv_heads, sk, hd), heads a
    multiple of kv_heads. The grid needs at least `heads` columns. With causal,
    sq must equal sk (prefill; decode attention lives in transformer.decode_step).
    algorithm: "gemm" (scores by kernels.gemm, softmax by max- and sum-allreduces,
    P V by kernels.gemm), "ring" (ring attention, online softmax) or "auto"
    ("gemm" where its layout applies and its score tiles fit, "ring" otherwise).
    Returns (O like Q, report) with O in `dtype`."""
    if not isinstance(cfg, wse.WaferConfig):
        raise ConfigError(f"cfg must be a WaferConfig, got {type(cfg).__name__}")
    _check_dtype(dtype)
    if algorithm not in ALGORITHMS:
        raise ConfigError(f"unknown attention algorithm {algorithm!r}: expected one of "
                          f"{ALGORITHMS}")
    Q, K, V = (np.asarray(a, np.float64) for a in (Q, K, V))
    single = Q.ndim == 2
    if single:
        Q, K, V = Q[None], K[None], V[None]
    if Q.ndim != 3 or K.ndim != 3 or V.shape != K.shape or Q.shape[2] != K.shape[2]:
        raise ConfigError(f"attention: Q {Q.shape}, K {K.shape}, V {V.shape}: expected Q "
                          f"(heads, sq, hd) and K, V (kv_heads, sk, hd) with equal hd")
    heads, sq, hd = Q.shape
    kv_heads, sk, _ = K.shape
    if heads % kv_heads:
        raise ConfigError(f"attention: {heads} query heads is not a multiple of {kv_heads} "
                          f"KV heads")
    if causal and sq != sk:
        raise ConfigError(f"causal attention on the mesh needs as many queries as keys "
                          f"(prefill), got {sq} and {sk}")
    if hd % 2:
        raise ConfigError(f"head_dim {hd} must be even")
    for name, a in (("Q", Q), ("K", K), ("V", V)):
        if not np.isfinite(a).all():
            raise ConfigError(f"{name} holds NaN or infinity")
    layout = head_layout(heads, hd, cfg.cols)
    R = cfg.rows
    st_q, st_k = -(-sq // R), -(-sk // R)
    group = heads // kv_heads
    Kx = np.repeat(K, group, axis=0)
    Vx = np.repeat(V, group, axis=0)
    flat = lambda a: a.transpose(1, 0, 2).reshape(a.shape[1], -1)       # noqa: E731
    q_tiles = place_sequence(flat(Q), layout, R, st_q)
    k_tiles = place_sequence(flat(Kx), layout, R, st_k)
    v_tiles = place_sequence(flat(Vx), layout, R, st_k)
    if algorithm == "auto":
        fits = GemmAttentionPlan(R, layout.group, layout.width, st_q, st_k, dtype,
                                 causal).sram_bytes(cfg) <= cfg.sram_bytes
        algorithm = "gemm" if gemm_layout_error(R, layout) is None and fits else "ring"
    o_tiles, report = prefill_attention(cfg, layout, q_tiles, k_tiles, v_tiles, st_q, st_k, sk,
                                        causal, 1.0 / math.sqrt(hd), dtype, algorithm)
    O = gather_sequence(o_tiles, layout, sq).reshape(sq, heads, hd).transpose(1, 0, 2)
    O = O.astype(np.float16 if dtype == "float16" else np.float32)
    report.extra["attention"] = {"algorithm": algorithm, "heads": heads, "kv_heads": kv_heads,
                                 "sq": sq, "sk": sk,
                                 "head_dim": hd, "causal": causal, "st_q": st_q, "st_k": st_k,
                                 "columns_per_head": layout.group, "features_per_pe": layout.width,
                                 "dtype": dtype}
    return (O[0] if single else O), report


def reference_attention(Q, K, V, causal=True):
    """The float64 reference (re-exported for tests and benchmarks)."""
    return reference.attention(Q, K, V, causal=causal)
