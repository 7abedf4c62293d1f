"""Attention on the mesh: prefill attention and its standalone kernel.

    O, report = kernels.attention(Q, K, V, cfg, causal=True, dtype="float32",
                                  algorithm="auto")   # "gemm" | "ring"

Layout (the prefill layout of kernels.prefill_layer): queries and keys are
cut into R blocks along the sequence, block y on row y (sequence along Y);
the features of the H heads are spread along X with FeatureLayout.heads, each
head owning g = C // H neighbouring columns. PE (x, y) holds Q, K and V tiles
(st x w): the w features of column x for the st positions of block y.
Grouped-query attention: each query head's K and V columns are placed next
to its Q columns (the KV head is stored once per query head that reads it;
the K and V projections produce them so, see kernels.prefill_layer).

Two algorithms. The transformer's prefill uses "gemm" unless told "ring";
the standalone kernel's "auto" takes "gemm" where its phases fit a PE's
SRAM (GemmAttentionPlan.sram_bytes) and "ring" otherwise.

algorithm="gemm" (attention from GEMMs; gemm_attention), per head on its
R x g sub-grid, in three phases (scores and pv emulated one head at a time
and reported side by side, as the heads run at once on disjoint columns):
  scores   S = Q K^T by GEMM-T (kernels.gemm's "gemmt"): Q and K are used
           where the layout holds them and no K moves into place; GEMM-T
           leaves score block (y, n) (query block y, key block n) on row y,
           column n mod g, so the scores of a query row end spread over the
           g columns of its head (keys along X). The blocks above the
           causal diagonal and those holding only padding keys are skipped.
  softmax  scale, causal and padding masks, then the row max by a
           max-allreduce and the row sum by a sum-allreduce over those g
           columns (the row is already there, so a plain segmented
           allreduce along X does it); each PE exponentiates only its live
           score blocks; P = exp(S - max) / sum.
  pv       P V by kernels.gemm (SUMMA with K cut into the R key blocks, so P
           and V are used where they lie; causal: row y multiplies key
           blocks 0 .. y only, the masked blocks cost no product).
It keeps a query block's whole score rows, st_q x a*st_k per PE (a =
ceil(R / g)), which bounds the sequence it fits (longest_gemm_sequence); in
exchange nothing is moved into a GEMM alignment first, the fully masked
blocks cost nothing in either GEMM, and each softmax statistic is one
allreduce per row. See docs/gemm.md.

algorithm="ring" (one engine run; prefill_program) keeps no score matrix,
so it fits sequences the gemm algorithm cannot. R steps on a ring over each
column, in the interleaved order 0, 2, 4, ..., 5, 3, 1 so that every
transfer is at most two hops:
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
A PE holds one key block's scores at a time, so the row max and sum are not
known until every block has passed; they are merged step by step along the
key blocks (the online form of softmax; FlashAttention's merge) instead of
reduced over a stored score row. Fully masked blocks still pass the ring
(every block must reach every row) and are computed, then masked by the
per-PE table.

Ring costs per step (first principles): shift 2*T_R + 2*H + 2*st*w + st (one
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
from .matmul import gemm as mesh_gemm, gemm_t, plan as gemm_plan
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
# Attention from GEMMs: scores by GEMM-T, softmax by max- and sum-allreduces, P V by GEMM
ALGORITHMS = ("auto", "gemm", "ring")


@dataclass(frozen=True)
class GemmAttentionPlan:
    """Tile sizes of algorithm="gemm" for one head on its R x g columns.

    Scores by GEMM-T (kernels.matmul, algorithm "gemmt"): Q and K as the
    prefill layout holds them (PE (x, y): st positions of block y, the w
    features of column x), so its K dimension is the head's g*w features in
    g blocks of w; score block (y, n) (query block y, key block n) ends on
    column n mod g, slot n // g: a = ceil(R / g) key blocks per PE, nt =
    a * st_k score columns of st_q query rows (a column with fewer blocks
    keeps its last slot masked)."""
    rows: int
    group: int
    width: int
    st_q: int
    st_k: int
    dtype: str
    causal: bool

    @property
    def blocks(self) -> int:
        return -(-self.rows // self.group)

    @property
    def nt(self) -> int:
        return self.blocks * self.st_k

    def gemm_plans(self, cfg: wse.WaferConfig):
        """(scores GEMM-T plan, P V SUMMA plan) on the head's R x g sub-grid."""
        sub = cfg.with_grid(rows=self.rows, cols=self.group)
        R = self.rows
        return (gemm_plan(R * self.st_q, self.group * self.width, R * self.st_k, sub, "gemmt",
                          self.dtype, transpose_b=True),
                gemm_plan(R * self.st_q, R * self.st_k, self.group * self.width, sub, "summa",
                          self.dtype, k_split=R, a_lower=self.causal))

    def score_blocks(self, sk: int) -> np.ndarray:
        """(R, R) booleans: score block (y, n) holds a key the query block may
        see (n < the blocks holding keys < sk; causal: n <= y). The others
        are not computed (GEMM-T's skip_blocks) and not exponentiated."""
        n = np.arange(self.rows)
        seen = np.broadcast_to(n[None, :] * self.st_k < sk, (self.rows, self.rows))
        return seen & (n[None, :] <= n[:, None]) if self.causal else seen.copy()

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


def _key_order(p: GemmAttentionPlan) -> np.ndarray:
    """Score column n (PE x keeps n in [x*nt, (x+1)*nt)) -> key index. PE x keeps the
    key blocks x, x+g, x+2g, ... (GEMM-T's C layout; keys past the last block
    are padding): the K blocks SUMMA gives PE x in P V (k_split = R)."""
    n = np.arange(p.group * p.nt)
    x, q = n // p.nt, n % p.nt
    i, s = q // p.st_k, q % p.st_k
    return (x + p.group * i) * p.st_k + s


def _live_slots(p: GemmAttentionPlan, sk: int) -> np.ndarray:
    """(R, g): how many leading score slots of PE (x, y) hold a block of
    `score_blocks` (slot i holds key block x + g*i; those blocks grow with
    i, so the live ones come first)."""
    blocks = p.score_blocks(sk)
    x = np.arange(p.group)[None, :, None]
    n = x + p.group * np.arange(p.blocks)[None, None, :]             # (1, g, a)
    live = np.where(n < p.rows, blocks[:, np.minimum(n[0], p.rows - 1)], False)
    return live.sum(axis=2)


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

    Per row, a PE works on its live slots only (`_live_slots`: u*st_k
    scores; a fully masked block is neither scaled nor exponentiated) and
    writes zeros over the rest of its row of P (one fill). A PE with no live
    slot contributes -inf and 0 to the allreduces (its stat buffer's
    initial values). Returns (prog, P buffer)."""
    R, C = cfg.rows, cfg.cols
    g, nt, st_q, st_k = p.group, p.nt, p.st_q, p.st_k
    prog = wse.Program(cfg)
    s = prog.buffer("scores", (st_q * nt,), "float32")
    pb = prog.buffer("p", (st_q * nt,), p.dtype)
    key_bias = prog.buffer("key_bias", (nt,), "float32")
    stat = prog.buffer("stat", (2 * st_q,), "float32")          # row max, row sum
    tri = prog.buffer("tri", (st_q * st_k,), "float32") if p.causal else None
    prog.load(s, score_tiles)
    # additive bias of every live score column: key padding (the last block's
    # keys >= sk); the diagonal block gets the causal triangle
    keys = _key_order(p).reshape(g, nt)                          # (head column, n)
    y = np.arange(R)[:, None, None]
    head_bias = np.where(np.broadcast_to(keys[None] >= sk, (R, g, nt)), NEG_INF, 0.0)
    xh = np.arange(g)[None, :]
    has_diag = (y[:, :, 0] >= xh) & ((y[:, :, 0] - xh) % g == 0)
    diag_off = np.where(has_diag, (y[:, :, 0] - xh) // g * st_k, 0)
    live = _live_slots(p, sk) * st_k                             # (R, g) live columns
    bias = np.zeros((R, C, nt))
    diag = np.zeros((R, C), np.int64)
    off = np.zeros((R, C), np.int64)
    width = np.zeros((R, C), np.int64)
    in_head = np.zeros((R, C), bool)
    for lo, hi in layout.segments:
        bias[:, lo:hi + 1] = head_bias
        diag[:, lo:hi + 1] = has_diag
        off[:, lo:hi + 1] = diag_off
        width[:, lo:hi + 1] = live
        in_head[:, lo:hi + 1] = True
    prog.load(key_bias, bias)
    init = np.zeros((R, C, 2 * st_q))
    init[:, :, :st_q] = NEG_INF
    prog.load(stat, init)
    if p.causal:
        i = np.arange(st_q)[:, None]
        j = np.arange(st_k)[None, :]
        prog.load(tri, np.where(j > i, NEG_INF, 0.0).reshape(-1))
    p_diag = prog.param("has_diagonal_block", diag)
    p_off = prog.param("diagonal_offset", off)
    p_live = prog.param("live_columns", width)
    p_any = prog.param("any_live", (width > 0).astype(np.int64))
    p_dead = prog.param("dead_columns", np.where(in_head, nt - width, 0))
    p_has_dead = prog.param("any_dead", ((nt - width > 0) & in_head).astype(np.int64))
    heads = SegmentChannel(prog, "x", layout.segments, "hd")

    def body(t, parts):
        n_live, n_dead, dead_at = t.reg(), t.reg(), t.reg()
        t.set(n_live, p_live)
        t.set(n_dead, p_dead)
        t.set(dead_at, p_live)

        def row(r):
            return s.view(offset=r * nt, length=n_live)

        with t.loop(p_any):                        # a PE with a live slot
            def bias_row(r):
                t.scale(row(r), row(r), scale)
                t.add(row(r), row(r), key_bias.view(0, length=n_live))
            emit_rows(t, st_q, bias_row)
            if p.causal:
                at = t.reg()
                with t.loop(p_diag):               # once on a PE holding the diagonal block
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

        with t.loop(p_any):
            emit_rows(t, st_q, exp_sum)
        heads.allreduce(t, parts["hd"], stat.view(st_q, st_q), st_q, "sum")
        t.recip(stat.view(st_q, st_q), stat.view(st_q, st_q))

        def normalise(r):
            t.scale(pb.view(offset=r * nt, length=n_live), row(r),
                    stat.view(offset=r + st_q, length=1, stride=0))
            with t.loop(p_has_dead):
                t.fill(pb.view(offset=dead_at, length=n_dead), 0.0)
                t.addi(dead_at, nt)

        emit_rows(t, st_q, normalise)

    build_roles(prog, {"hd": heads}, body, where=in_head)
    return prog, pb


def gemm_attention(cfg: wse.WaferConfig, layout: FeatureLayout, q_tiles, k_tiles, v_tiles,
                   st_q: int, st_k: int, sk: int, causal: bool, scale: float, dtype: str):
    """Attention from GEMMs on the prefill layout. q/k/v_tiles: (R, C, st*w) as
    place_sequence leaves them. Returns (output tiles (R, C, st_q*w), report with
    the phases scores (GEMM-T per head, Q and K where they lie, the blocks of
    no visible key skipped), softmax, pv (SUMMA per head with K cut into the
    R key blocks, P and V where they lie; causal: row y multiplies key
    blocks 0 .. y only)). See the module docstring."""
    R, C = cfg.rows, cfg.cols
    g, w = layout.group, layout.width
    p = GemmAttentionPlan(R, g, w, st_q, st_k, dtype, causal)
    _check_gemm_fits(p, cfg, layout, max(R * st_q, sk))
    sub = cfg.with_grid(rows=R, cols=g)
    keys = _key_order(p)
    padded = keys < R * st_k
    skip = ~p.score_blocks(sk)
    segments = list(layout.segments)
    offsets = [lo for lo, _ in segments]
    scores = np.zeros((R, C, st_q * p.nt))
    runs = []
    for lo, hi in segments:
        Qh = tiles_to_matrix(q_tiles[:, lo:hi + 1], w)
        Kh = tiles_to_matrix(k_tiles[:, lo:hi + 1], w)
        S, r = gemm_t(Qh, Kh, sub, dtype=dtype, skip_blocks=skip)
        # GEMM-T leaves block (y, n) on column n mod g, slot n // g: that is
        # the key order of the score tiles
        S_tiles = np.zeros((R * st_q, g * p.nt))
        S_tiles[:, padded] = S[:, keys[padded]]
        scores[:, lo:hi + 1] = matrix_to_tiles(S_tiles, R, g, p.nt)
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
        A = np.zeros((R * st_q, R * st_k))
        A[:, keys[padded]] = P[:, padded]          # the same values, natural key order
        O, r = mesh_gemm(A, tiles_to_matrix(v_tiles[:, lo:hi + 1], w), sub, algorithm="summa",
                         dtype=dtype, k_split=R, a_lower=causal)
        out[:, lo:hi + 1] = matrix_to_tiles(O, R, g, w)
        runs.append(r)
    report = wse.RunReport.sequence(
        [score_report, softmax_report, _side_by_side(runs, cfg, offsets)],
        ["scores", "softmax", "pv"])
    report.extra["gemm_attention"] = {
        "score_columns_per_pe": p.nt, "sram_bytes_per_pe": p.sram_bytes(cfg),
        "score_blocks_computed": int((~skip).sum()), "score_blocks": R * R}
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
    algorithm: "gemm" (scores by GEMM-T, softmax by max- and sum-allreduces,
    P V by kernels.gemm), "ring" (ring attention, online softmax) or "auto"
    ("gemm" where its score tiles fit, "ring" otherwise).
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
        algorithm = "gemm" if fits else "ring"
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
