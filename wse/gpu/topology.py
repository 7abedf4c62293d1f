"""Shapes of the communication patterns: the ring and the double binary tree.

Both the data-moving collectives (collectives.py) and the cost model
(cluster.py) read the tree from here, so that the cost model's traffic and
depth describe the tree that actually moves the data.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Tree:
    """A rooted tree over ranks 0..n-1: parent[r] (-1 for the root) and children[r]."""

    parent: tuple[int, ...]
    children: tuple[tuple[int, ...], ...]

    @property
    def root(self) -> int:
        return self.parent.index(-1)

    @property
    def depth(self) -> int:
        """Edges on the longest root-to-leaf path."""
        deepest = 0
        for rank in range(len(self.parent)):
            hops, node = 0, rank
            while self.parent[node] != -1:
                node = self.parent[node]
                hops += 1
            deepest = max(deepest, hops)
        return deepest

    def bottom_up(self) -> list[int]:
        """Ranks ordered so that every child comes before its parent."""
        return list(reversed(self.top_down()))

    def top_down(self) -> list[int]:
        """Ranks in breadth-first order from the root."""
        order, frontier = [], [self.root]
        while frontier:
            order.extend(frontier)
            frontier = [c for node in frontier for c in self.children[node]]
        return order


def heap_tree(n: int, label=lambda position: position) -> Tree:
    """Binary tree in heap order: position p's children are 2p+1 and 2p+2.
    `label` maps a heap position to the rank that sits there."""
    parent = [-1] * n
    children: list[list[int]] = [[] for _ in range(n)]
    for position in range(1, n):
        child, up = label(position), label((position - 1) // 2)
        parent[child] = up
        children[up].append(child)
    return Tree(tuple(parent), tuple(tuple(c) for c in children))


def double_binary_tree(n: int) -> tuple[Tree, Tree]:
    """Two binary trees whose interior ranks are disjoint (Sanders, Speck and
    Traeff 2009; NCCL's "double binary tree", 2.4). The second tree is the
    first with ranks mirrored (r -> n-1-r): heap interior positions are all
    below (n-1)/2, so their mirrors are all above it. Each tree carries half
    the data, so no rank forwards to two children in both trees at once."""
    return heap_tree(n), heap_tree(n, label=lambda position: n - 1 - position)


def double_tree_port_units(n: int) -> tuple[int, int]:
    """Most half-buffers any one rank sends, and most it receives, in a double
    binary tree all-reduce (reduce up both trees, then broadcast down).
    Multiply by nbytes/2 for bytes."""
    sent = [0] * n
    received = [0] * n
    for tree in double_binary_tree(n):
        for rank in range(n):
            has_parent = tree.parent[rank] != -1
            kids = len(tree.children[rank])
            # Reduce: send partial up, receive one from each child.
            # Broadcast: receive result from parent, send it to each child.
            sent[rank] += has_parent + kids
            received[rank] += kids + has_parent
    return max(sent), max(received)


def ring_order(n: int) -> list[int]:
    """Ranks in ring order: r sends to (r+1) % n. Ranks are numbered node by
    node, so a multi-node ring crosses each node boundary once."""
    return list(range(n))
