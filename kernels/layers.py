"""Transformer building blocks on the mesh: feature layouts, segmented
allreduces, norms, RoPE, activations, residuals and online softmax.

These are *emitters*: functions that append instructions to a task of a
Program someone else builds (kernels.mesh_attention, kernels.prefill_layer,
kernels.decode_layer, kernels.kvcache), so that one engine run can fuse a
norm, a GEMV and its allreduce. Beside them: the host-side placements those
modules share (a sequence over rows, GEMM tiles, replicated vectors) and
`run_phase`, which runs one phase's Program and reads its outputs back.

Feature layouts
  A vector of n features spread over the P PEs of a line (a row or a column)
  is described by a FeatureLayout: `index[p, j]` is the feature PE p holds in
  its slot j (-1: padding, held as 0). Two kinds:
  * plain(n, P): P chunks of w = ceil(n / P) consecutive features.
  * heads(H, hd, P) (needs P >= H): each head gets g = P // H consecutive PEs
    and each of them ceil(hd / g) features, rounded up to an even count; the
    last P - H*g PEs hold padding only. Inside a head the features are
    stored in the order 0, hd/2, 1, hd/2 + 1, ... so that the two elements
    RoPE rotates together (i and i + hd/2, "rotate half") sit side by side on
    one PE. Q and K are permuted the same way, so every dot product q.k is
    unchanged; the weights are placed in that order once, when they are
    loaded.
  The head groups are the *segments* of the line: a per-head reduction (the
  partial scores q.k of a head spread over g PEs) is an allreduce inside
  each segment only.

Segmented allreduce (SegmentChannel)
  Inside each segment [lo, hi] of a line: WaferLLM's two-tree allreduce
  (kernels.collectives' ktree), rooted where it costs least for the vector
  lengths the channel is laid out for (the middle of the segment for short
  vectors): both halves reduce into the root at once, then the root floods
  the result back both ways. A whole line is one segment. Cycles:
  `allreduce_cycles` (collectives.cost of that layout). A channel's routes
  are static and used by every allreduce a program does on that axis, with
  any vector length; successive uses are ordered on every path (FIFO per
  color), so they need no extra colors.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

import wse
from wse import routes
from wse.errors import ConfigError

from . import collectives

NEG_INF = -1.0e30
"""Additive mask value: exp(NEG_INF - max) underflows to exactly 0 in fp32."""


# ----------------------------------------------------------------------------
# Feature layouts
@dataclass(frozen=True)
class FeatureLayout:
    n: int                       # true number of features
    parts: int                   # PEs on the line
    index: np.ndarray            # (parts, width) feature id or -1
    segments: tuple              # ((lo, hi), ...): reduction groups (heads)
    head_dim: int = 0            # 0: plain layout

    @property
    def width(self) -> int:
        return int(self.index.shape[1])

    @classmethod
    def plain(cls, n: int, parts: int) -> "FeatureLayout":
        w = -(-n // parts)
        idx = np.arange(parts * w).reshape(parts, w)
        idx[idx >= n] = -1
        return cls(n, parts, idx, tuple((p, p) for p in range(parts)))

    @classmethod
    def heads(cls, n_heads: int, head_dim: int, parts: int) -> "FeatureLayout":
        if parts < n_heads:
            raise ConfigError(f"{n_heads} heads need at least {n_heads} PEs along the head "
                              f"axis (each head owns >= 1 PE), the grid has {parts}")
        if head_dim % 2:
            raise ConfigError(f"head_dim {head_dim} must be even (RoPE pairs)")
        g = parts // n_heads
        w = -(-head_dim // g)
        w += w % 2
        half = head_dim // 2
        order = np.empty(head_dim, np.int64)          # 0, hd/2, 1, hd/2+1, ...
        order[0::2] = np.arange(half)
        order[1::2] = np.arange(half) + half
        padded = np.full(g * w, -1, np.int64)
        padded[:head_dim] = order
        idx = np.full((parts, w), -1, np.int64)
        for h in range(n_heads):
            idx[h * g:(h + 1) * g] = np.where(padded >= 0, padded + h * head_dim, -1).reshape(g, w)
        segs = tuple((h * g, h * g + g - 1) for h in range(n_heads))
        return cls(n_heads * head_dim, parts, idx, segs, head_dim)

    @property
    def group(self) -> int:
        """PEs per segment (head)."""
        lo, hi = self.segments[0]
        return hi - lo + 1

    def scatter(self, M) -> np.ndarray:
        """(..., n) -> (..., parts, width), padding as 0."""
        M = np.asarray(M)
        out = np.take(M, np.maximum(self.index, 0), axis=-1)
        out[..., self.index < 0] = 0
        return out

    def gather(self, T) -> np.ndarray:
        """(..., parts, width) -> (..., n)."""
        T = np.asarray(T)
        out = np.zeros(T.shape[:-2] + (self.n,), T.dtype)
        valid = self.index >= 0
        out[..., self.index[valid]] = T[..., valid]
        return out

    def through(self, source: np.ndarray, n: int) -> "FeatureLayout":
        """This layout over n source features, slot feature f holding source
        feature source[f]: placing M through it equals placing M[..., source]
        through this layout, without building M[..., source]."""
        index = np.where(self.index >= 0, np.asarray(source)[np.maximum(self.index, 0)], -1)
        return FeatureLayout(n, self.parts, index, self.segments, self.head_dim)

    def pair_frequency_index(self) -> np.ndarray:
        """(parts, width // 2): RoPE frequency index i of each adjacent pair (-1: padding)."""
        first = self.index[:, 0::2]
        return np.where(first >= 0, first % max(self.head_dim, 1), -1)


def place_matrix(W, rows_layout: FeatureLayout, cols_layout: FeatureLayout,
                 dtype=np.float64) -> np.ndarray:
    """W (n_in, n_out) -> (rows_layout.parts, cols_layout.parts, w_in, w_out) blocks:
    block [a, b] = W[features of part a, features of part b] (0 for padding).
    dtype: of the blocks; W is converted to it once, before it is copied
    about (a float16 buffer's blocks take a quarter of float64's traffic)."""
    W = np.asarray(W, dtype)
    if W.shape != (rows_layout.n, cols_layout.n):
        raise ConfigError(f"a {W.shape} weight does not match layouts of {rows_layout.n} x "
                          f"{cols_layout.n} features")
    ri, ci = rows_layout.index, cols_layout.index
    blocks = np.take(np.take(W, np.maximum(ri, 0), axis=0), np.maximum(ci, 0), axis=-1)
    blocks[ri < 0] = 0                                  # (parts_in, w_in, parts_out, w_out)
    blocks[:, :, ci < 0] = 0
    return blocks.transpose(0, 2, 1, 3)


def rope_tables(layout: FeatureLayout, positions, theta: float):
    """cos and sin per (position, part, pair): shape (len(positions), parts, width // 2);
    padding pairs get cos 1, sin 0."""
    freq = layout.pair_frequency_index()
    hd = layout.head_dim
    inv = np.where(freq >= 0, theta ** (-2.0 * np.maximum(freq, 0) / hd), 0.0)
    angle = np.asarray(positions, np.float64)[:, None, None] * inv[None]
    return np.cos(angle), np.sin(angle)


# ----------------------------------------------------------------------------
# Segmented allreduce channels
SHORT_VECTORS = (1, 8, 32)
"""Vector lengths a SegmentChannel is laid out for unless told otherwise:
decode's reductions (norm and softmax statistics of one or two elements,
GEMV partial sums and per-head scores of a few to a few dozen)."""


def allreduce_cycles(cfg: wse.WaferConfig, g: int, n: int, lengths=SHORT_VECTORS) -> int:
    """First-principles cycles of one SegmentChannel allreduce of n elements
    over a segment of g PEs laid out for `lengths`: the mid-rooted two-tree
    (kernels.collectives: ktree reduce of both arms into the root, the
    later arm's stream folded first, then a flood back both ways) with the
    root and group sizes of collectives.ktree_allreduce_plan:
        collectives.cost("allreduce", "ktree", g, n, cfg, root, group sizes),
    whose docstrings derive it."""
    if g <= 1:
        return 0
    root, sizes = collectives.ktree_allreduce_plan(g, cfg, lengths)
    return collectives.cost("allreduce", "ktree", g, n, cfg, root=root, group_size=sizes)


@dataclass(frozen=True)
class _SegmentRoot:
    """What a segment root needs to order its two folds for a vector length:
    each arm's PE count, group size and the color of its last stream."""
    arms: tuple          # ((n PEs, group size, Color) of the low arm, of the high arm)

    def fold_order(self, cfg, n: int) -> list[int]:
        """Arm indices in the order the root folds them: the stream that
        arrives later first (collectives._join_cost); on a tie the one with
        the lower color id, which the router serves first."""
        live = [k for k, (count, _, _) in enumerate(self.arms) if count > 1]
        first = {k: collectives._arm_cost("ktree", self.arms[k][0], n, cfg, self.arms[k][1]) - n
                 for k in live}
        return sorted(live, key=lambda k: (-first[k], self.arms[k][2].id))


class SegmentChannel:
    """Routes for allreduces inside the segments of every line along one axis.

    Each segment [lo, hi] of g >= 2 PEs allreduces by WaferLLM's two-tree
    (the ktree of kernels.collectives), laid out for the vector lengths in
    `lengths` (collectives.ktree_allreduce_plan: for short vectors the root
    sits in the middle of the segment): both arms of the root reduce at once
    (in each group of an arm two chains meet at the group root, far chain
    first; the group roots reduce along a chain routed past the other PEs
    into the segment root), the root folds the arm whose stream arrives
    later first, then floods the result back both ways. Any length n works
    on the same routes (streams on a color stay in order, so successive
    allreduces on one channel need no extra colors); the cycles of one are
    `cycles(n)` (= allreduce_cycles for the longest segment).

    Colors (at most five, shared by all segments and both arms): chain hops
    between indices i and i+1 alternate between two colors by the parity of
    i, so that a PE receives and sends on different colors; the chains over
    the group roots alternate between two more, the two arms' last streams
    into the root on different ones; one color floods. A PE's colors come
    from per-PE parameters, so PEs that run the same steps share a part.

    label (rows, cols): the part each PE runs (-1: not in a segment of two
    or more PEs; its allreduce is a no-op). Parts 0..5 are (folds, then a
    send or a fold-and-send) shapes, see PARTS; parts from ROOT on are
    segment roots, one per arm layout."""

    PARTS = ((0, "send"), (0, "fold_send"), (1, "send"), (1, "fold_send"),
             (2, "send"), (2, "fold_send"))
    ROOT = len(PARTS)

    def __init__(self, prog: wse.Program, along: str, segments, name: str,
                 lengths=SHORT_VECTORS):
        self.prog, self.along, self.name = prog, along, name
        self.lengths = tuple(lengths)
        length = prog.cols if along == "x" else prog.rows
        segments = [(int(lo), int(hi)) for lo, hi in segments if hi > lo]
        for lo, hi in segments:
            if not 0 <= lo < hi < length:
                raise ConfigError(f"segment ({lo}, {hi}) of channel {name!r} lies outside the "
                                  f"{length} PEs along {along}")
        self.segments = segments
        self.active = bool(segments)
        self._fwd, self._back = ("E", "W") if along == "x" else ("S", "N")
        self._colors: dict[str, wse.Color] = {}
        self._routes: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        label = np.full(length, -1, np.int64)
        params = {k: np.full(length, -1, np.int64) for k in ("a", "b", "in", "out")}
        self._roots: list[_SegmentRoot] = []
        self._plans = []
        for lo, hi in segments:
            self._add_segment(lo, hi, length, label, params)
        for key, color in self._colors.items():
            routes.set_line_routes(prog, color, along, *self._routes[key])
        grid = (lambda line: np.broadcast_to(line[None, :], (prog.rows, prog.cols))) \
            if along == "x" else (lambda line: np.broadcast_to(line[:, None],
                                                                (prog.rows, prog.cols)))
        self.label = grid(label).copy()
        self._params = {k: prog.color_param_indices(f"{name}_{k}", grid(v))
                        for k, v in params.items() if (v >= 0).any()}

    # -- layout
    def _color(self, key: str) -> wse.Color:
        if key not in self._colors:
            self._colors[key] = self.prog.color(f"{self.name}_{key}")
            length = self.prog.cols if self.along == "x" else self.prog.rows
            self._routes[key] = (np.zeros(length, np.uint8), np.zeros(length, np.uint8))
        return self._colors[key]

    def _route_stream(self, key: str, src: int, dst: int) -> wse.Color:
        """Route a stream src -> dst on color `key`: the routers in between pass it on."""
        color = self._color(key)
        rx, tx = self._routes[key]
        out, inn = (self._fwd, self._back) if dst > src else (self._back, self._fwd)
        step = 1 if dst > src else -1
        want = [(src, routes.BIT["RAMP"], routes.BIT[out])]
        want += [(i, routes.BIT[inn], routes.BIT[out]) for i in range(src + step, dst, step)]
        want += [(dst, routes.BIT[inn], routes.BIT["RAMP"])]
        for i, r, t in want:
            if tx[i] and (rx[i], tx[i]) != (r, t):      # pragma: no cover - layout invariant
                raise AssertionError(f"channel {self.name!r}: color {key} routed twice at {i}")
            rx[i], tx[i] = r, t
        return color

    def _add_segment(self, lo: int, hi: int, length: int, label, params) -> None:
        cfg = self.prog.cfg
        g = hi - lo + 1
        r, sizes = collectives.ktree_allreduce_plan(g, cfg, self.lengths)
        root = lo + r
        self._plans.append((g, r, sizes))
        folds: dict[int, list] = {}
        tails: dict[int, tuple] = {}
        finals = []
        for arm, (sign, n, s) in enumerate(zip((-1, +1), (r + 1, g - r), sizes)):
            plan = collectives._arm_plan("ktree", n, s)
            index = lambda v: root + sign * v                  # noqa: E731
            if not plan:
                finals.append((n, s, None))
                continue
            *chains, (level2,) = plan
            for phase in chains:
                for chain in phase:
                    self._add_chain([index(v) for v in chain], folds, tails,
                                    lambda a, b: f"c{min(a, b) % 2}")
            hops = len(level2) - 1
            # hop j (counted from the root) on l[(j + arm) % 2]: the two arms'
            # last streams into the root arrive on different colors
            self._add_chain([index(v) for v in level2], folds, tails,
                            lambda a, b, j=iter(range(hops, 0, -1)): f"l{(next(j) + arm) % 2}")
            finals.append((n, s, folds.pop(root)[0]))
        layout = _SegmentRoot(tuple(finals))
        if layout not in self._roots:          # segments laid out alike share a part
            self._roots.append(layout)
        flood = self._color("fl")
        routes.multicast(self.prog, flood, self.along, root=root, span=(lo, hi))
        self.flood = flood
        for i in range(lo, hi + 1):
            if i == root:
                continue
            f = folds.get(i, [])
            kind, *colors = tails[i]
            label[i] = self.PARTS.index((len(f), kind))
            for key, c in zip(("a", "b"), f):
                params[key][i] = c.index
            if kind == "send":
                params["out"][i] = colors[0].index
            else:
                params["in"][i], params["out"][i] = colors[0].index, colors[1].index
        for key, (_, _, c) in zip(("a", "b"), finals):
            if c is not None:
                params[key][root] = c.index
        label[root] = self.ROOT + self._roots.index(layout)

    def _add_chain(self, chain: list[int], folds, tails, key_of) -> None:
        """A pipelined chain over line indices chain[0] -> ... -> chain[-1]:
        the first sends, the middle ones fold and send on, the last folds."""
        if len(chain) < 2:
            return
        colors = [self._route_stream(key_of(a, b), a, b) for a, b in zip(chain, chain[1:])]
        tails[chain[0]] = ("send", colors[0])
        for j in range(1, len(chain) - 1):
            tails[chain[j]] = ("fold_send", colors[j - 1], colors[j])
        folds.setdefault(chain[-1], []).append(colors[-1])

    # -- use
    def cycles(self, n: int) -> int:
        """Cycles of one allreduce of n elements on this channel, its entry
        code starting at the same cycle on every PE (collectives.cost)."""
        return max((collectives.cost("allreduce", "ktree", g, n, self.prog.cfg, root=r,
                                     group_size=sizes) for g, r, sizes in self._plans), default=0)

    def allreduce(self, t, part: int, view, n: int, op: str = "sum") -> None:
        """Emit this PE's code: afterwards `view` (n elements) holds the segment's
        sum (or max) on every PE of the segment."""
        if not self.active or part < 0:
            return
        if op not in collectives.OPS:
            raise ConfigError(f"unknown reduce op {op!r}: expected one of {collectives.OPS}")
        prog = self.prog
        combine = t.add if op == "sum" else t.max
        p = self._params
        if part >= self.ROOT:
            root = self._roots[part - self.ROOT]
            for arm in root.fold_order(prog.cfg, n):
                combine(view, prog.fabin(p["ab"[arm]], n), view)
            t.mov(prog.fabout(self.flood, n), view)
            return
        folds, tail = self.PARTS[part]
        for key in "ab"[:folds]:
            combine(view, prog.fabin(p[key], n), view)
        if tail == "send":
            t.mov(prog.fabout(p["out"], n), view)
        else:
            combine(prog.fabout(p["out"], n), prog.fabin(p["in"], n), view)
        t.mov(view, prog.fabin(self.flood, n))


def build_roles(prog: wse.Program, channels: dict, body, where=None) -> int:
    """One role per combination of channel parts; body(t, parts) emits the task,
    parts[name] being this PE's label in channel `name`. Returns the role count."""
    names = list(channels)
    where = np.ones((prog.rows, prog.cols), bool) if where is None else where
    if names:
        labels = np.stack([channels[n].label.reshape(-1) for n in names]).astype(np.int64)
        # one integer per PE, its labels as digits (labels >= -1): the same
        # lexicographic order as unique rows, at the cost of a 1-D unique
        radix = int(labels.max()) + 2
        if labels.min() < -1 or radix ** len(names) >= 2 ** 62:
            raise ConfigError(f"build_roles: channel labels from {labels.min()} to {radix - 2} "
                              f"over {names} do not fit one 64-bit key per PE (labels >= -1)")
        key = np.zeros(labels.shape[1], np.int64)
        for digits in labels:
            key = key * radix + digits + 1
        codes, inverse = np.unique(key, return_inverse=True)
        combos = np.stack([codes // radix ** k % radix - 1
                           for k in range(len(names) - 1, -1, -1)], axis=-1)
        inverse = inverse.reshape(prog.rows, prog.cols)
    else:
        combos, inverse = np.zeros((1, 0), np.int64), np.zeros((prog.rows, prog.cols), np.int64)
    made = 0
    for i, combo in enumerate(combos):
        mask = (inverse == i) & where
        if not mask.any():
            continue
        role = prog.role(f"r{made}", where=mask)
        with role.task("main", entry=True) as t:
            body(t, {n: int(v) for n, v in zip(names, combo)})
        made += 1
    return made


# ----------------------------------------------------------------------------
# Emitters of per-PE vector work
def emit_rows(t, rows: int, body):
    """Run body(r) for each of `rows` rows with r a register (loop, not unrolled)."""
    r = t.reg()
    t.set(r, 0)
    with t.loop(rows):
        body(r)
        t.addi(r, 1)
    t.program.free_reg(r)


def emit_norm(t, parts, channel: SegmentChannel, part: int, x, out, stats, rows: int,
              width: int, n: int, kind: str, eps: float, weight, bias=None):
    """out[r, :] = norm(x[r, :]) * weight (+ bias) for `rows` rows of `width`
    features each, the feature sums reduced over the channel (n true features).

    kind "rms": x / sqrt(mean(x^2) + eps); "layer": (x - mean) / sqrt(var + eps),
    with var = mean(x^2) - mean^2. stats: fp32 buffer of >= 3*rows + width."""
    sq = stats.view(0, rows)
    sm = stats.view(rows, rows)
    msq = stats.view(2 * rows, rows)
    tmp = stats.view(3 * rows, width)

    def partial(r):
        row = x.view(offset=r * width, length=width)
        t.mul(tmp, row, row)
        t.sum(stats.view(offset=r, length=1), tmp)
        if kind == "layer":
            t.sum(stats.view(offset=r + rows, length=1), row)

    emit_rows(t, rows, partial)
    nstat = 2 * rows if kind == "layer" else rows
    channel.allreduce(t, part, stats.view(0, nstat), nstat, "sum")
    t.scale(stats.view(0, nstat), stats.view(0, nstat), 1.0 / n)       # mean(x^2), mean
    if kind == "layer":
        t.mul(msq, sm, sm)                                             # mean^2
        t.sub(sq, sq, msq)                                             # var
    t.rsqrt(sq, sq, eps=eps)

    def finish(r):
        row_out = out.view(offset=r * width, length=width)
        row_in = x.view(offset=r * width, length=width)
        if kind == "layer":
            t.subs(row_out, row_in, stats.view(offset=r + rows, length=1, stride=0))
            t.scale(row_out, row_out, stats.view(offset=r, length=1, stride=0))
        else:
            t.scale(row_out, row_in, stats.view(offset=r, length=1, stride=0))
        t.mul(row_out, row_out, weight.view(0, width))
        if bias is not None:
            t.add(row_out, row_out, bias.view(0, width))

    emit_rows(t, rows, finish)


def emit_rotate(t, re, im, cos, sin, a, b):
    """(re, im) <- (re cos - im sin, re sin + im cos), elementwise over equal-length
    views: four multiplies, a subtract, an add and a move; a, b: scratch views
    of the same length (the new re waits in a while the old one is still
    needed for im)."""
    t.mul(a, re, cos)
    t.mul(b, im, sin)
    t.sub(a, a, b)                       # new re = re cos - im sin
    t.mul(b, re, sin)
    t.mul(im, im, cos)
    t.add(im, im, b)                     # new im = re sin + im cos
    t.mov(re, a)


def emit_rope(t, x, cos, sin, tmp, n: int):
    """Rotate adjacent pairs (x[2j], x[2j+1]) of x's first n elements by the
    angles whose cos/sin are in cos/sin (n/2 each); tmp holds n elements."""
    half = n // 2
    emit_rotate(t, x.view(0, half, stride=2), x.view(1, half, stride=2), cos.view(0, half),
                sin.view(0, half), tmp.view(0, half), tmp.view(half, half))


def rope_drift_bound(k: int) -> float:
    """Bound on |on-wafer - exact| of each RoPE table value after k advances
    (`emit_rope_advance`, whose docstring derives it)."""
    return (5 * k + 1) * math.sqrt(2.0) * 2.0 ** -25


def emit_rope_advance(t, table, step, tmp, n: int):
    """Advance a position's RoPE table on the PE to the next position: table
    holds cos(p theta_i) | sin(p theta_i) and step cos(theta_i) | sin(theta_i)
    (n/2 each); by angle addition table becomes cos((p+1) theta_i) |
    sin((p+1) theta_i). tmp holds n elements.

    Rounding drift: in fp32 each advance adds at most sqrt(2) (2^-23 + 2^-25)
    to the error (Euclidean) of a (cos, sin) pair: per component three
    roundings (two products and their sum), together at most
    2^-24 (|c cos_t| + |s sin_t|) + 2^-24 <= 2^-23, as |c cos_t| + |s sin_t|
    <= 1 (Cauchy-Schwarz); plus the rounding of cos(theta_i), sin(theta_i)
    (2^-25 each), which recurs every step; the rotation itself, an
    isometry, carries earlier errors on unchanged. From a table rounded once
    (sqrt(2) 2^-25), after k advances each value is within
    rope_drift_bound(k) = (5k + 1) sqrt(2) 2^-25 (to first order) of the
    exact one: linear in k, ~k 2^-22 (2e-5 after 100 steps, 3.5e-3
    after 16,384; below fp16's rounding, 2^-11, up to k ~ 2,300).
    """
    half = n // 2
    emit_rotate(t, table.view(0, half), table.view(half, half), step.view(0, half),
                step.view(half, half), tmp.view(0, half), tmp.view(half, half))


def emit_gelu(t, x, tmp, n: int):
    """x = 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))) in place; tmp: n elements."""
    u = tmp.view(0, n)
    v = x.view(0, n)
    t.mul(u, v, v)
    t.mul(u, u, v)                        # x^3
    t.fmac(u, v, u, 0.044715)             # x + 0.044715 x^3
    t.scale(u, u, float(np.sqrt(2.0 / np.pi)))
    t.tanh(u, u)
    t.adds(u, u, 1.0)
    t.mul(v, v, u)
    t.scale(v, v, 0.5)


def emit_swiglu(t, gate, up, out, n: int):
    """out = silu(gate) * up = gate * sigmoid(gate) * up (gate is overwritten)."""
    g = gate.view(0, n)
    o = out.view(0, n)
    t.sigmoid(o, g)
    t.mul(o, o, g)
    t.mul(o, o, up.view(0, n))


# ----------------------------------------------------------------------------
# Block transpose across a square grid
def block_transpose_cycles(cfg: wse.WaferConfig, n: int, b: int) -> tuple[int, int]:
    """First-principles (lower, upper) bounds on the cycles of
    `block_transpose_program` on an n x n grid with tiles of b wavelets.

    Tile (x, y) goes to PE (y, x) through the diagonal PE (y, y): along row y
    to column y, then along column y to row x, stored and forwarded by every
    PE on the way (each PE sends its own tile, then passes on what its
    upstream neighbour sends; the diagonal turns the stream; each PE of the
    column keeps the first tile that reaches it and passes on the rest). A
    store-and-forward hop costs a ramp out, a hop, a ramp in and the
    datapath: h = 2*T_R + H + delta.
      lower: the far tile of row 0 crosses 2(n-1) such hops and its b
             wavelets follow one a cycle: 2(n-1)h + b, after its sender's
             start-up sigma and before its receiver's activated task
             (alpha, then set and the loop's set and test: 3c) ends;
             and the n-1 tiles of
             row 0 enter its diagonal PE one wavelet a cycle and then cross
             column 0: (n-1)*b + (n-1)h (the first arrives after h, the last
             leaves the row after (n-1)*b and needs n-1 more hops, less the
             first hop's overlap).
      upper: a PE off the diagonal passes on a row stream and a column
             stream through its one outgoing ramp, which serves them in turn,
             so each chain moves at least one wavelet every two cycles:
             2(n-1)*b + 2(n-1)h + b, plus, per PE on the path and for
             the last, the set-up of its forwarding task
             (alpha + 4c + sigma), which may hold up a stream.
    With every instruction cost 0 the lower bound is exact for n = 2 and
    for b = 1; with them it is not (a forwarding PE's set-up delays the
    stream by amounts that depend on sigma, alpha and c together:
    measured +12 cycles over it at n = 8, b = 1).
    The emulation lies between (tests/kernels/test_layers.py); where exactly
    depends on how the row and column streams of the middle PEs interleave
    at their ramps. Any transpose: the n(n-1)/2 tiles above the diagonal all
    cross it, over its 2(n-1) links each way: at least n*b/4 cycles.
    n = 1: the local copy, sigma + ceil(b / SIMD) + c with the wait
    (returned for both)."""
    if n < 2:
        copy = -(-b // cfg.simd_width("float32"))
        if cfg.vector_startup_cycles or cfg.scalar_op_cycles:
            # a synchronous copy (start-up, then the passes) and the wait
            copy = cfg.vector_startup_cycles + copy + cfg.scalar_op_cycles
        return copy, copy
    c, su = cfg.scalar_op_cycles, cfg.vector_startup_cycles
    alpha = cfg.task_start_cycles
    h = 2 * cfg.ramp_latency + cfg.hop_latency + cfg.datapath_latency
    # set-up of a PE's forwarding: the task its first transfer activates
    # starts alpha later and issues set, the loop's set and test, the move
    setup = alpha + 4 * c + su
    lower = max(su + 2 * (n - 1) * h + b + alpha + 3 * c, (n - 1) * b + (n - 1) * h)
    upper = 2 * (n - 1) * b + 2 * (n - 1) * (h + setup) + b + setup
    return lower, upper


def block_transpose_hops(n: int, b: int) -> int:
    """Wavelet-hops of the transpose: tile (x, y) crosses 2|x - y| links."""
    i = np.arange(n)
    return int(2 * b * np.abs(i[:, None] - i[None, :]).sum())


def block_transpose_program(cfg: wse.WaferConfig, tiles, dtype: str = "float32"):
    """Move tile (PE (x, y)) to PE (y, x) on a square grid, over the fabric.

    tiles: (n, n, b) per PE (row y, column x). Returns (prog, destination
    buffer); after the run the destination of PE (x, y) holds what PE (y, x)
    held (the diagonal keeps its own tile). Cost: block_transpose_cycles (bounds)."""
    tiles = np.asarray(tiles)
    n = cfg.rows
    if cfg.cols != n or tiles.shape[:2] != (n, n):
        raise ConfigError(f"a block transpose needs a square grid and one tile per PE, got a "
                          f"{cfg.rows} x {cfg.cols} grid and tiles of shape {tiles.shape}")
    b = int(tiles.shape[2])
    prog = wse.Program(cfg)
    src = prog.buffer("tile", (b,), dtype)
    dst = prog.buffer("transposed", (b,), dtype)
    prog.load(src, tiles)
    y, x = np.indices((n, n))
    diagonal = x == y
    if n > 1:
        # store-and-forward chains between neighbours, one per direction
        flows = {name: routes.transfers(prog, along, [(i, i + step) for i in range(n)
                                                      if 0 <= i + step < n], name=name)
                 for name, along, step in (("tw", "x", -1), ("te", "x", 1),
                                           ("ts", "y", 1), ("tn", "y", -1))}
        east_of = x > y                  # row part flows west into the diagonal, else east
        south_of = y > x                 # column part flows south from the diagonal, else north
        row = {k: np.where(east_of, getattr(flows["tw"], k), getattr(flows["te"], k))
               for k in ("send_color", "recv_color")}
        col = {k: np.where(south_of, getattr(flows["ts"], k), getattr(flows["tn"], k))
               for k in ("send_color", "recv_color")}
        row_send = prog.color_param_indices("row_send", row["send_color"])
        row_recv = prog.color_param_indices("row_recv", row["recv_color"])
        col_send = prog.color_param_indices("col_send", col["send_color"])
        col_recv = prog.color_param_indices("col_recv", col["recv_color"])
        # tiles each PE passes on: along the row, those of the PEs beyond it;
        # along the column, those for the PEs beyond it
        def wavelets(name, tiles_passed):
            """(wavelets to pass on, 1 if any) as per-PE parameters."""
            return (prog.param(name, b * tiles_passed),
                    prog.param(f"{name}_any", (tiles_passed > 0).astype(np.int64)))

        row_pass = wavelets("row_pass", np.where(east_of, n - 1 - x, x))
        col_pass = wavelets("col_pass", np.where(south_of, n - 1 - y, y))
        from_east = wavelets("from_east", n - 1 - y)
        from_west = wavelets("from_west", y)
        in_w = prog.color_param_indices("diag_in_w", flows["tw"].recv_color)
        out_s = prog.color_param_indices("diag_out_s", flows["ts"].send_color)
        in_e = prog.color_param_indices("diag_in_e", flows["te"].recv_color)
        out_n = prog.color_param_indices("diag_out_n", flows["tn"].send_color)
        def pass_on(t, count, param, send, recv, slot):
            """Forward param[0] wavelets from recv to send, if any (a PE at the end
            of a chain has none, and no color to name). `count` keeps its value
            until the operation ends: the engine reads the length as it runs."""
            length, anything = param
            t.set(count, length)
            with t.loop(anything):
                t.mov(prog.fabout(send, count), prog.fabin(recv, count), async_=True, slot=slot)

        # the row and the column go on independently: each continues in a task
        # that the end of its first transfer activates
        role = prog.role("off_diagonal", where=~diagonal)
        rows_left, cols_left = prog.reg(), prog.reg()
        with role.task("column_on") as t:
            pass_on(t, cols_left, col_pass, col_send, col_recv, 1)
        with role.task("row_on") as t:
            pass_on(t, rows_left, row_pass, row_send, row_recv, 2)
        with role.task("main", entry=True) as t:
            t.mov(dst.view(), prog.fabin(col_recv, b), async_=True, slot=1, on_done="column_on")
            t.mov(prog.fabout(row_send, b), src.view(), async_=True, slot=2, on_done="row_on")
    with prog.role("diagonal", where=diagonal).task("main", entry=True) as t:
        if n > 1:
            east, west = t.reg(), t.reg()
            pass_on(t, east, from_east, out_s, in_w, 1)
            pass_on(t, west, from_west, out_n, in_e, 2)
        t.mov(dst.view(), src.view())            # its own tile stays, while the streams run
        t.wait()
    return prog, dst


# ----------------------------------------------------------------------------
# Host-side placements: sequences, GEMM tiles, replicated vectors
def head_layout(n_heads: int, head_dim: int, cols: int) -> FeatureLayout:
    """FeatureLayout.heads: the attention features of n_heads heads over cols PEs."""
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


def tiles_to_matrix(tiles, w: int) -> np.ndarray:
    """(R, C, st*w) tiles (PE (x, y): st rows of block y, w columns of part x) ->
    the (R*st, C*w) matrix they tile."""
    R, C, n = np.shape(tiles)
    st = n // w
    return np.asarray(tiles, np.float64).reshape(R, C, st, w).transpose(0, 2, 1, 3).reshape(
        R * st, C * w)


def matrix_to_tiles(M, R: int, C: int, w: int) -> np.ndarray:
    """Inverse of tiles_to_matrix."""
    st = np.shape(M)[0] // R
    return np.asarray(M, np.float64).reshape(R, st, C, w).transpose(0, 2, 1, 3).reshape(
        R, C, st * w)


def place_vector(layout: FeatureLayout, v, rows: int, cols: int, along: str) -> np.ndarray:
    """A per-feature vector placed along `along` ("x": part x on column x; "y":
    part y on row y) and replicated across the other axis: (rows, cols, w), a
    read-only broadcast view."""
    placed = layout.scatter(np.asarray(v, np.float64))          # (parts, w)
    if along == "x":
        return np.broadcast_to(placed[None], (rows,) + placed.shape)
    return np.broadcast_to(placed[:, None], (rows, cols, placed.shape[1]))


def expand_kv_heads(model, W):
    """K/V weight (or bias) columns repeated so that query head h sees its KV
    head (grouped-query attention stores each KV head once per query head that
    reads it); None stays None. model: anything with n_heads, n_kv_heads and
    head_dim (a kernels.models.ModelConfig)."""
    if W is None:
        return None
    return np.asarray(W, np.float64)[..., kv_head_columns(model)]


def kv_head_columns(model) -> np.ndarray:
    """(n_heads * head_dim,) the K/V feature each query-head feature reads:
    feature i of query head h reads feature i of KV head h // group."""
    group = model.n_heads // model.n_kv_heads
    kv_head = np.arange(model.n_heads) // group
    return (kv_head[:, None] * model.head_dim + np.arange(model.head_dim)).reshape(-1)


def kv_head_layout(model, layout: FeatureLayout) -> FeatureLayout:
    """`layout` (of the query heads' features) over the K/V features: placing
    a K/V weight, bias or cache through it equals placing expand_kv_heads of it
    through `layout`, without the expanded copy."""
    return layout.through(kv_head_columns(model), model.n_kv_heads * model.head_dim)


def norm_kind(model) -> str:
    """The emit_norm kind of a model family: LayerNorm for GPT-2, RMSNorm otherwise."""
    return "layer" if model.family == "gpt2" else "rms"


# ----------------------------------------------------------------------------
# Running one phase
class SubBuffer:
    """A buffer seen from an element offset, so that emitters (emit_rope,
    emit_swiglu, ...) can work on a part of it."""

    def __init__(self, buf, offset: int):
        self.buf, self.offset = buf, offset

    def view(self, offset=0, length=None, stride: int = 1):
        if length is None:
            length = self.buf.size - self.offset
        return self.buf.view(offset=offset + self.offset, length=length, stride=stride)


def emit_gemv(t, out_partial, x_view, W, k: int, n: int):
    """out_partial[:n] = x (1 x k) @ W (k x n): this PE's partial product."""
    t.fill(out_partial.view(0, n), 0.0)
    t.matmul(out_partial.view(0, n), x_view, W.view(), 1, k, n)


def run_phase(prog: wse.Program, reads: dict):
    """Run one phase's Program; returns ({key: buffer contents as float64}, report)."""
    result = prog.run(max_cycles=10 ** 12)
    return {k: result.read(b).astype(np.float64) for k, b in reads.items()}, result.report
