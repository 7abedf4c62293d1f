"""Attention on the mesh: prefill (ring attention over rows) and its standalone kernel.

    O, report = kernels.attention.attention(Q, K, V, cfg, causal=True, dtype="float32")

Layout (the prefill layout of kernels/transformer.py): queries and keys are
cut into R blocks along the sequence, block y on row y (sequence along Y);
the features of the H heads are spread along X with FeatureLayout.heads, each
head owning g = C // H neighbouring columns. PE (x, y) holds Q, K and V tiles
(st x w): the w features of column x for the st positions of block y.
Grouped-query attention: each query head's K and V columns are placed next
to its Q columns (the KV head is stored once per query head that reads it;
the K and V projections produce them so, see transformer.py).

Algorithm (R steps; a ring over each column, in the interleaved order
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

import numpy as np

import wse
from wse import routes
from wse.config import DTYPES
from wse.errors import ConfigError

from . import reference
from .layers import NEG_INF, FeatureLayout, SegmentChannel, build_roles, emit_rows


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


def head_layout(n_heads: int, head_dim: int, cols: int) -> FeatureLayout:
    return FeatureLayout.heads(n_heads, head_dim, cols)


def place_sequence(M, layout: FeatureLayout, rows: int, st: int) -> np.ndarray:
    """(seq, n) -> (rows, parts, st*w): block y of the sequence on row y."""
    M = np.asarray(M, np.float64)
    padded = np.zeros((rows * st, M.shape[1]))
    padded[:M.shape[0]] = M
    tiles = layout.scatter(padded)                       # (rows*st, parts, w)
    return tiles.reshape(rows, st, layout.parts, layout.width).transpose(0, 2, 1, 3).reshape(
        rows, layout.parts, st * layout.width)


def gather_sequence(T, layout: FeatureLayout, seq: int) -> np.ndarray:
    """Inverse of place_sequence: (rows, parts, st*w) -> (seq, n)."""
    T = np.asarray(T, np.float64)
    rows, parts, _ = T.shape
    st = T.shape[2] // layout.width
    M = T.reshape(rows, parts, st, layout.width).transpose(0, 2, 1, 3).reshape(
        rows * st, parts, layout.width)
    return layout.gather(M)[:seq]


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


def attention(Q, K, V, cfg: wse.WaferConfig, causal: bool = True, dtype: str = "float32"):
    """softmax(Q K^T / sqrt(hd) [+ causal mask]) V on the cfg.rows x cfg.cols grid.

    Q: (sq, hd) or (heads, sq, hd); K, V: (sk, hd) or (kv_heads, sk, hd), heads a
    multiple of kv_heads. The grid needs at least `heads` columns. With causal,
    sq must equal sk (prefill; decode attention lives in transformer.decode_step).
    Returns (O like Q, report) with O in `dtype`."""
    if not isinstance(cfg, wse.WaferConfig):
        raise ConfigError(f"cfg must be a WaferConfig, got {type(cfg).__name__}")
    _check_dtype(dtype)
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
    kv_tiles = kv_block(place_sequence(flat(Kx), layout, R, st_k),
                        place_sequence(flat(Vx), layout, R, st_k), R, st_k, sk, dtype)
    prog, out = prefill_program(cfg, layout, q_tiles, kv_tiles, st_q, st_k, causal,
                                1.0 / math.sqrt(hd), dtype)
    result = prog.run()
    O = gather_sequence(result.read(out), layout, sq).reshape(sq, heads, hd).transpose(1, 0, 2)
    O = O.astype(np.float16 if dtype == "float16" else np.float32)
    report = result.report
    report.extra["attention"] = {"heads": heads, "kv_heads": kv_heads, "sq": sq, "sk": sk,
                                 "head_dim": hd, "causal": causal, "st_q": st_q, "st_k": st_k,
                                 "columns_per_head": layout.group, "features_per_pe": layout.width,
                                 "dtype": dtype}
    return (O[0] if single else O), report


def reference_attention(Q, K, V, causal=True):
    """The float64 reference (re-exported for tests and benchmarks)."""
    return reference.attention(Q, K, V, causal=causal)
