"""The KV cache on the mesh: positions along Y (rows), features along X.

Row y holds a set of positions in *slots*; PE (x, y) holds, per slot, the K
and V features of column x (FeatureLayout.heads along X) plus an additive
bias (0 for a used slot, -inf for a free one) that the decode attention adds
to the scores, so that slot order never matters (softmax and the weighted
sum of V are permutation invariant). After prefill, row y holds the
positions of its sequence block y: the prefill K/V tiles are the cache, in
place; no re-layout.

Appending the new position of a decode step (placement policies):
  * "append": at the end, i.e. on the last row, which grows by one slot per
    token until its PEs' SRAM runs out (the cache's other rows stay as they
    were).
  * "shift": the new position also enters on the last row, but the row r that
    is due to grow (the last of the rows with the fewest positions) takes it
    by a chain of neighbour moves: every row below r passes its oldest
    position north to the row above it, so rows stay balanced to within one
    position and each move crosses one link. Per token each PE of the rows
    r+1..R-1 sends 2*w values one hop (w: its K/V features).
Which slot a position goes to is decided by the host (it is bookkeeping: a
slot index per PE and step, loaded as a program parameter); the data moves
on the fabric: `KVUpdate` emits the decode layer's "kv_update" operation.

Residency: until its first decode step a layer's cache is a host copy
(`keys`, `values`); from then on it lives only in the layer's SRAM image
(`images`, one `LayerImage` per layer), which each step's program resumes
from and leaves updated; `layer_kv` and `to_kvcache` read it back.

SRAM: the emulation allocates the cache buffers at the largest row's size on
every PE (one Program buffer has one shape), so an overflow is detected
exactly when the fullest row no longer fits.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

import wse
from wse import routes
from wse.errors import ConfigError
from wse.program import SramImage

from .layers import NEG_INF, FeatureLayout, kv_head_layout, place_sequence
from .models import KVCache, ModelConfig

POLICIES = ("shift", "append")


@dataclass
class LayerImage:
    """A layer's SRAM as its last decode run left it (weights, cache,
    activations, RoPE state), the cache slots it lays out, the dtype it was
    built for and the position whose RoPE table it holds (None: no RoPE)."""

    sram: SramImage
    slots: int
    dtype: str
    rope_position: int | None = None


@dataclass
class WaferKVCache:
    """A decode state on the wafer: per layer the K and V of every slot (a host
    copy until the layer's first decode step, then its SRAM image), per row
    the position held by each slot (-1: free), and the last hidden state."""

    model: ModelConfig
    rows: int
    cols: int
    layout: FeatureLayout                 # attention features along X
    policy: str
    dtype: str
    keys: list                            # per layer (rows, cols, cap, w)
    values: list
    slot_position: np.ndarray             # (rows, cap) position or -1
    last_hidden: np.ndarray
    length: int
    history: list = field(default_factory=list)   # per decode step: growing row
    images: list | None = None            # per layer: LayerImage once decoded

    def __post_init__(self) -> None:
        if self.policy not in POLICIES:
            raise ConfigError(f"KV cache policy {self.policy!r}: expected one of {POLICIES}")
        if self.images is None:
            self.images = [None] * len(self.keys)

    @property
    def capacity(self) -> int:
        return int(self.slot_position.shape[1])

    @property
    def n_layers(self) -> int:
        return len(self.keys)

    def row_counts(self) -> np.ndarray:
        return (self.slot_position >= 0).sum(axis=1)

    def bias(self) -> np.ndarray:
        """(rows, cap) additive score bias: 0 where a slot is used."""
        return np.where(self.slot_position >= 0, 0.0, NEG_INF)

    def layer_kv(self, layer: int):
        """(K, V) of `layer`, each (rows, cols, capacity, w), from its SRAM image
        if it has one (slots past the image's are zero), else the host copy."""
        image = self.images[layer]
        if image is None:
            return self.keys[layer], self.values[layer]
        out = []
        for name in ("k_cache", "v_cache"):
            M = image.sram.read(name).astype(np.float64).reshape(
                self.rows, self.cols, image.slots, -1)
            full = np.zeros((self.rows, self.cols, self.capacity, M.shape[3]))
            n = min(image.slots, self.capacity)
            full[:, :, :n] = M[:, :, :n]
            out.append(full)
        return tuple(out)

    # ------------------------------------------------------------- host views
    def to_kvcache(self) -> KVCache:
        """The plain kernels.models.KVCache (host read-back, for checks)."""
        m = self.model
        group = m.n_heads // m.n_kv_heads
        keys, values = [], []
        for layer in range(self.n_layers):
            K, V = self.layer_kv(layer)
            kk = np.zeros((self.length, m.n_heads * m.head_dim))
            vv = np.zeros_like(kk)
            for y in range(self.rows):
                for s, p in enumerate(self.slot_position[y]):
                    if p >= 0:
                        kk[p] = self.layout.gather(K[y, :, s, :])
                        vv[p] = self.layout.gather(V[y, :, s, :])
            heads = lambda a: a.reshape(self.length, m.n_heads, m.head_dim)[  # noqa: E731
                :, ::group].transpose(1, 0, 2)
            keys.append(heads(kk))
            values.append(heads(vv))
        return KVCache(tuple(keys), tuple(values), np.asarray(self.last_hidden, np.float64))

    @classmethod
    def from_tiles(cls, model, rows, cols, layout, policy, dtype, k_tiles, v_tiles, seq,
                   last_hidden) -> "WaferKVCache":
        """From prefill tiles (rows, cols, st*w) per layer: row y holds positions y*st.."""
        w = layout.width
        st = k_tiles[0].shape[2] // w
        pos = np.arange(rows * st).reshape(rows, st)
        slot_position = np.where(pos < seq, pos, -1)
        keys = [k.reshape(rows, cols, st, w) * (slot_position >= 0)[:, None, :, None]
                for k in k_tiles]
        values = [v.reshape(rows, cols, st, w) * (slot_position >= 0)[:, None, :, None]
                  for v in v_tiles]
        return cls(model, rows, cols, layout, policy, dtype, keys, values, slot_position,
                   np.asarray(last_hidden, np.float64), seq)

    @classmethod
    def from_kvcache(cls, model: ModelConfig, cache: KVCache, rows: int, cols: int,
                     policy: str = "shift", dtype: str = "float32") -> "WaferKVCache":
        """Place a host cache as prefill would have left it (GQA heads expanded)."""
        layout = FeatureLayout.heads(model.n_heads, model.head_dim, cols)
        seq = cache.length
        st = max(-(-seq // rows), 1)
        kv_layout = kv_head_layout(model, layout)
        flat = lambda a: np.asarray(a, np.float64).transpose(1, 0, 2).reshape(seq, -1)  # noqa
        k_tiles = [place_sequence(flat(k), kv_layout, rows, st) for k in cache.keys]
        v_tiles = [place_sequence(flat(v), kv_layout, rows, st) for v in cache.values]
        return cls.from_tiles(model, rows, cols, layout, policy, dtype, k_tiles, v_tiles, seq,
                              cache.last_hidden)

    # ---------------------------------------------------------------- appends
    def plan_append(self):
        """Where the next position goes. Returns (moves, insert) where moves is a
        list of (row, slot it sends from, slot the row above receives into) and
        insert = (row, slot) for the new position; may widen the slot table."""
        counts = self.row_counts()
        R = self.rows
        if self.policy == "append":
            grow = R - 1
        else:
            grow = int(np.flatnonzero(counts == counts.min())[-1])
        need_free = {grow}                  # the growing row gains one position
        if grow < R - 1:
            need_free.add(R - 1)            # the last row receives the new one
        for r in need_free:
            if not (self.slot_position[r] < 0).any():
                self._widen()
        moves = []
        sp = self.slot_position
        free_after = {}
        for r in range(grow + 1, R):        # r passes its oldest to r - 1
            used = np.flatnonzero(sp[r] >= 0)
            oldest = int(used[np.argmin(sp[r, used])])
            free = np.flatnonzero(sp[r - 1] < 0)
            if r - 1 in free_after:         # r-1 freed a slot by sending; may reuse it? no:
                free = free[free != free_after[r - 1]]   # it is still being read
            if free.size == 0:
                self._widen()
                sp = self.slot_position
                free = np.flatnonzero(sp[r - 1] < 0)
                if r - 1 in free_after:
                    free = free[free != free_after[r - 1]]
            moves.append((r, oldest, int(free[0])))
            free_after[r] = oldest
        last_free = np.flatnonzero(self.slot_position[R - 1] < 0)
        if R - 1 in free_after:
            last_free = last_free[last_free != free_after[R - 1]]
        if last_free.size == 0:
            self._widen()
            last_free = np.flatnonzero(self.slot_position[R - 1] < 0)
            last_free = last_free[last_free != free_after.get(R - 1, -1)]
        return grow, moves, (R - 1, int(last_free[0]))

    def _widen(self) -> None:
        self.slot_position = np.concatenate(
            [self.slot_position, np.full((self.rows, 1), -1, np.int64)], axis=1)
        pad = lambda a: np.concatenate([a, np.zeros(a.shape[:2] + (1,) + a.shape[3:])],  # noqa
                                       axis=2)
        self.keys = [None if k is None else pad(k) for k in self.keys]
        self.values = [None if v is None else pad(v) for v in self.values]

    def commit_append(self, moves, insert, position: int) -> None:
        """Update the slot table after the moves and the insert ran on the wafer."""
        sp = self.slot_position
        for r, src, dst in moves:
            sp[r - 1, dst] = sp[r, src]
            sp[r, src] = -1
        sp[insert[0], insert[1]] = position


class KVUpdate:
    """The decode layer's "kv_update" operation, on the PEs that take part: the
    moves of `WaferKVCache.plan_append` (row r sends slot src north, row r - 1
    receives it into slot dst, both rows' biases updated) and the insert of
    the new position's K and V (from the layer's qkv buffer, converted to
    the cache dtype) on the last row. Routes and slot parameters are set up
    when it is made; `label` (sender 1 + receiver 2 + inserter 4 per PE) lets
    `layers.build_roles` give each combination its own role, and `emit` the
    code for one. The slot table is updated later by commit_append, once for
    all layers."""

    def __init__(self, prog: wse.Program, moves, insert, w: int, k_cache, v_cache, bias,
                 new_k, new_v):
        R, C = prog.rows, prog.cols
        self.prog, self.w = prog, w
        self.k, self.v, self.bias, self.new_k, self.new_v = k_cache, v_cache, bias, new_k, new_v
        send_slot = np.zeros((R, C), np.int64)
        recv_slot = np.zeros((R, C), np.int64)
        sender = np.zeros((R, C), bool)
        receiver = np.zeros((R, C), bool)
        for row, src, dst in moves:
            send_slot[row] = src
            recv_slot[row - 1] = dst
            sender[row] = True
            receiver[row - 1] = True
        inserter = np.zeros((R, C), bool)
        inserter[insert[0]] = True
        self.insert_slot = int(insert[1])
        self.label = sender * 1 + receiver * 2 + inserter * 4
        self.send_slot = prog.param("send_slot", send_slot)
        self.recv_slot = prog.param("recv_slot", recv_slot)
        if moves:
            plan = routes.transfers(prog, "y", [(row, row - 1) for row, _, _ in moves],
                                    name="kvmv")
            self.send = prog.color_param_indices("mv_send", plan.send_color)
            self.recv = prog.color_param_indices("mv_recv", plan.recv_color)

    @staticmethod
    def has_work(key: int) -> bool:
        return key != 0

    def emit(self, t, key: int) -> None:
        prog, w, kb, vb, bb = self.prog, self.w, self.k, self.v, self.bias
        if key & 3:
            rs, rr = t.reg(), t.reg()
            t.set(rs, self.send_slot)
            t.set(rr, self.recv_slot)
        if key & 2:
            t.mov(kb.view(offset=rr * w, length=w), prog.fabin(self.recv, w), async_=True)
        if key & 1:
            t.mov(prog.fabout(self.send, w), kb.view(offset=rs * w, length=w))
            t.mov(prog.fabout(self.send, w), vb.view(offset=rs * w, length=w))
            t.fill(bb.view(offset=rs, length=1), NEG_INF)
        if key & 2:
            t.wait()
            t.mov(vb.view(offset=rr * w, length=w), prog.fabin(self.recv, w))
            t.fill(bb.view(offset=rr, length=1), 0.0)
        if key & 4:
            s = self.insert_slot
            t.mov(kb.view(s * w, w), self.new_k.view(0, w))
            t.mov(vb.view(s * w, w), self.new_v.view(0, w))
            t.fill(bb.view(s, 1), 0.0)
        if key & 3:
            prog.free_reg(rs)
            prog.free_reg(rr)


def cache_bytes_per_pe(model: ModelConfig, cols: int, positions_per_row: int,
                       dtype: str, n_layers: int = 1) -> int:
    """K and V of positions_per_row slots (plus their fp32 bias) per PE."""
    layout = FeatureLayout.heads(model.n_heads, model.head_dim, cols)
    item = 2 if dtype == "float16" else 4
    return n_layers * positions_per_row * (2 * layout.width * item + 4)
