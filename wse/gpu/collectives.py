"""Collectives that actually move chunks between virtual GPUs.

Every byte that leaves a rank goes through `Fabric.send` (GPU to GPU) or
`Fabric.to_switch` / `Fabric.from_switch` (the NVSwitch's in-network
reduction and multicast), which copy the data and count it on the ports it
crosses. Nothing here computes a byte count from a formula: the counts are
sums over the transfers that happened. The cost model's formulas
(Cluster.traffic) are checked against these counts in the tests.

Each function takes a list of per-rank NumPy arrays and returns a new list.
Reductions are sums, done in the arrays' dtype in the order the algorithm
visits the ranks (so results agree with a float64 sum to rounding).
Bytes are charged at `fabric.bytes_per_element` per element (the dtype the
modelled GPUs would send, bf16 by default) whatever dtype the emulation
carries the values in.
"""
from __future__ import annotations

import numpy as np

from .errors import ShardingError
from .topology import double_binary_tree

PORTS = ("nvlink", "net")


class Fabric:
    """The wires between `n_ranks` GPUs of a cluster; counts bytes per port."""

    def __init__(self, cluster, n_ranks: int, bytes_per_element: int = 2):
        self.cluster = cluster
        self.n_ranks = n_ranks
        self.bytes_per_element = bytes_per_element
        self.sent = np.zeros((n_ranks, len(PORTS)), dtype=np.int64)
        """Bytes each rank sent, per port (columns: nvlink, net)."""
        self.received = np.zeros((n_ranks, len(PORTS)), dtype=np.int64)

    def _nbytes(self, array: np.ndarray) -> int:
        return int(array.size) * self.bytes_per_element

    def send(self, src: int, dst: int, array: np.ndarray) -> np.ndarray:
        """Copy `array` from rank src to rank dst; returns dst's copy."""
        if src == dst:
            raise ShardingError(f"rank {src} cannot send to itself")
        port = PORTS.index(self.cluster.link(src, dst))
        nbytes = self._nbytes(array)
        self.sent[src, port] += nbytes
        self.received[dst, port] += nbytes
        return np.array(array, copy=True)

    def to_switch(self, src: int, array: np.ndarray) -> np.ndarray:
        """Rank src's contribution enters the NVSwitch."""
        self.sent[src, 0] += self._nbytes(array)
        return np.array(array, copy=True)

    def from_switch(self, dst: int, array: np.ndarray) -> np.ndarray:
        """The NVSwitch delivers `array` to rank dst."""
        self.received[dst, 0] += self._nbytes(array)
        return np.array(array, copy=True)

    def snapshot(self) -> tuple[np.ndarray, np.ndarray]:
        return self.sent.copy(), self.received.copy()


def _check_same_shape(xs: list[np.ndarray], what: str) -> None:
    shapes = {np.shape(x) for x in xs}
    if len(shapes) != 1:
        raise ShardingError(f"{what}: ranks hold differently shaped arrays {sorted(shapes)}")


def _chunks(array: np.ndarray, n: int, axis: int = 0) -> list[np.ndarray]:
    return [np.array(c, copy=True) for c in np.array_split(array, n, axis=axis)]


def ring_reduce_scatter(fabric: Fabric, xs: list[np.ndarray], axis: int = 0) -> list[np.ndarray]:
    """Rank r ends with slice r (np.array_split along `axis`) of the sum.

    n-1 steps; at step s rank r sends its running sum of chunk (r-1-s) mod n
    to rank r+1, which adds its own piece. Chunk c starts at rank c+1 and
    arrives complete at rank c.
    """
    n = len(xs)
    _check_same_shape(xs, "reduce_scatter")
    pieces = [_chunks(x, n, axis) for x in xs]
    for step in range(n - 1):
        outgoing = [(r, (r - 1 - step) % n) for r in range(n)]
        # all ranks send at once: take the payloads before anyone adds
        payloads = [fabric.send(r, (r + 1) % n, pieces[r][c]) for r, c in outgoing]
        for (r, c), payload in zip(outgoing, payloads):
            dst = (r + 1) % n
            pieces[dst][c] = pieces[dst][c] + payload
    return [pieces[r][r] for r in range(n)]


def ring_allgather(fabric: Fabric, xs: list[np.ndarray], axis: int = 0) -> list[np.ndarray]:
    """Every rank ends with the ranks' arrays concatenated along `axis` in rank order.

    n-1 steps; at step s rank r forwards piece (r - s) mod n to rank r+1.
    """
    n = len(xs)
    shapes = {tuple(np.delete(np.shape(x), axis)) for x in xs}
    if len(shapes) != 1:
        raise ShardingError("allgather: ranks' arrays differ outside the gather axis")
    have: list[dict[int, np.ndarray]] = [{r: np.array(xs[r], copy=True)} for r in range(n)]
    for step in range(n - 1):
        outgoing = [(r, (r - step) % n) for r in range(n)]
        payloads = [fabric.send(r, (r + 1) % n, have[r][c]) for r, c in outgoing]
        for (r, c), payload in zip(outgoing, payloads):
            have[(r + 1) % n][c] = payload
    return [np.concatenate([have[r][c] for c in range(n)], axis=axis) for r in range(n)]


def ring_allreduce(fabric: Fabric, xs: list[np.ndarray]) -> list[np.ndarray]:
    """Reduce-scatter then all-gather over the flattened buffer: 2(n-1) steps of 1/n."""
    n = len(xs)
    _check_same_shape(xs, "allreduce")
    if n == 1:
        return [np.array(xs[0], copy=True)]
    shape = np.shape(xs[0])
    flat = [np.ravel(x) for x in xs]
    mine = ring_reduce_scatter(fabric, flat, axis=0)
    full = ring_allgather(fabric, mine, axis=0)
    return [f.reshape(shape) for f in full]


def tree_allreduce(fabric: Fabric, xs: list[np.ndarray]) -> list[np.ndarray]:
    """Double binary tree: half the buffer reduced up (and broadcast down) each tree."""
    n = len(xs)
    _check_same_shape(xs, "allreduce")
    if n == 1:
        return [np.array(xs[0], copy=True)]
    shape = np.shape(xs[0])
    halves = [np.array_split(np.ravel(x), 2) for x in xs]
    results: list[list[np.ndarray]] = [[None, None] for _ in range(n)]  # type: ignore[list-item]
    for half, tree in enumerate(double_binary_tree(n)):
        partial = [np.array(h[half], copy=True) for h in halves]
        for rank in tree.bottom_up():
            parent = tree.parent[rank]
            if parent != -1:
                partial[parent] = partial[parent] + fabric.send(rank, parent, partial[rank])
        total = {tree.root: partial[tree.root]}
        for rank in tree.top_down():
            for child in tree.children[rank]:
                total[child] = fabric.send(rank, child, total[rank])
        for rank in range(n):
            results[rank][half] = total[rank]
    return [np.concatenate(results[r]).reshape(shape) for r in range(n)]


def nvls_allreduce(fabric: Fabric, xs: list[np.ndarray]) -> list[np.ndarray]:
    """NVLink SHARP: the switch reduces and multicasts.

    Rank r owns slice r. For each slice every rank's piece enters the switch,
    the switch sums them and returns the sum to the owner (multimem.ld_reduce);
    the owner stores it to the multicast address and the switch delivers it to
    every rank (multimem.st).
    """
    n = len(xs)
    _check_same_shape(xs, "allreduce")
    if n == 1:
        return [np.array(xs[0], copy=True)]
    if any(fabric.cluster.link(0, r) != "nvlink" for r in range(n)):
        raise ShardingError("NVLS all-reduce needs every rank on one NVSwitch node")
    shape = np.shape(xs[0])
    pieces = [np.array_split(np.ravel(x), n) for x in xs]
    out: list[list[np.ndarray]] = [[None] * n for _ in range(n)]  # type: ignore[list-item]
    for owner in range(n):
        in_switch = [fabric.to_switch(r, pieces[r][owner]) for r in range(n)]
        reduced = in_switch[0]
        for contribution in in_switch[1:]:
            reduced = reduced + contribution
        at_owner = fabric.from_switch(owner, reduced)
        multicast = fabric.to_switch(owner, at_owner)
        for r in range(n):
            out[r][owner] = fabric.from_switch(r, multicast)
    return [np.concatenate(out[r]).reshape(shape) for r in range(n)]


def chain_broadcast(fabric: Fabric, xs: list[np.ndarray], root: int = 0) -> list[np.ndarray]:
    """The root's array, passed along the ring root -> root+1 -> ... (pipelined in NCCL)."""
    n = len(xs)
    if not 0 <= root < n:
        raise ShardingError(f"broadcast root {root} is not a rank of this {n}-rank group")
    out: list[np.ndarray] = [None] * n  # type: ignore[list-item]
    out[root] = np.array(xs[root], copy=True)
    for hop in range(n - 1):
        src, dst = (root + hop) % n, (root + hop + 1) % n
        out[dst] = fabric.send(src, dst, out[src])
    return out


class _Group:
    """A view of `fabric` on a subset of its ranks: local rank i is global
    rank ranks[i]. Sends go through (and are counted by) the parent fabric."""

    def __init__(self, fabric: Fabric, ranks: list[int]):
        self.fabric, self.ranks = fabric, list(ranks)
        self.cluster = fabric.cluster
        self.bytes_per_element = fabric.bytes_per_element

    def send(self, src: int, dst: int, array: np.ndarray) -> np.ndarray:
        return self.fabric.send(self.ranks[src], self.ranks[dst], array)


def hierarchical_allreduce(fabric: Fabric, xs: list[np.ndarray]) -> list[np.ndarray]:
    """Two-level all-reduce over whole nodes (2D / hierarchical all-reduce:
    Jia et al. 2018, arXiv:1807.11205; Horovod's hierarchical all-reduce):
    1. inside each node, a ring reduce-scatter over NVLink: local rank j ends
       with slice j of the node's sum;
    2. between nodes, a ring all-reduce of slice j among the ranks with the
       same local rank j, each over its own NIC (rail-aligned, as on a
       DGX/HGX H100 with one NIC per GPU);
    3. inside each node, a ring all-gather of the slices over NVLink.
    Each GPU sends 2(g-1)/g S over NVLink and 2(N-1)/N S/g over its NIC
    (g GPUs per node, N nodes): the network carries 1/g of what a flat ring
    crossing it would."""
    n = len(xs)
    _check_same_shape(xs, "allreduce")
    cluster = fabric.cluster
    g = min(cluster.gpus_per_node, n)
    if n % g:
        raise ShardingError(f"hierarchical all-reduce needs whole nodes: {n} ranks, "
                            f"{g} per node")
    nodes = n // g
    shape = np.shape(xs[0])
    flat = [np.ravel(x) for x in xs]
    pieces: list[np.ndarray] = [None] * n  # type: ignore[list-item]
    for node in range(nodes):
        ranks = list(range(node * g, (node + 1) * g))
        part = ring_reduce_scatter(_Group(fabric, ranks), [flat[r] for r in ranks]) if g > 1 \
            else [flat[ranks[0]]]
        for local, r in enumerate(ranks):
            pieces[r] = part[local]
    for local in range(g):
        ranks = [node * g + local for node in range(nodes)]
        summed = ring_allreduce(_Group(fabric, ranks), [pieces[r] for r in ranks]) \
            if nodes > 1 else [pieces[ranks[0]]]
        for r, piece in zip(ranks, summed):
            pieces[r] = piece
    out: list[np.ndarray] = [None] * n  # type: ignore[list-item]
    for node in range(nodes):
        ranks = list(range(node * g, (node + 1) * g))
        full = ring_allgather(_Group(fabric, ranks), [pieces[r] for r in ranks]) if g > 1 \
            else [pieces[ranks[0]]]
        for local, r in enumerate(ranks):
            out[r] = full[local].reshape(shape)
    return out


ALLREDUCE = {"ring": ring_allreduce, "tree": tree_allreduce, "nvls": nvls_allreduce,
             "hier": hierarchical_allreduce}
