"""Route helpers for the common shapes on a line of PEs (a row or a column).

A *line* is a row (along="x": index = column, East = +1) or a column
(along="y": index = row, South = +1). Every helper sets the same pattern on
each selected line, with one vectorised write per color, so a million-PE
grid costs no Python loop over PEs.

    multicast(prog, color, "x", root=3)                 # flood from index 3
    plan = transfers(prog, "x", [(0, 1), (1, 2)])       # point-to-point streams
    plan = shift(prog, "x", k=1, wrap=True)             # i -> (i + k) mod P
    plan = ring(prog, "x", interleaved_order(P))        # logical ring

`transfers` gives each stream its own path (source: RAMP -> out; between:
through; destination: in -> RAMP) and colors the paths like intervals on a
line: two streams share a color only if their paths share no router. The
returned TransferPlan says which color each PE sends and receives on, for
`prog.color_param_indices`.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import isa
from .errors import RouteError
from .program import Color, Program

BIT = {name: 1 << getattr(isa, attr) for name, attr in
       (("N", "NORTH"), ("E", "EAST"), ("S", "SOUTH"), ("W", "WEST"), ("RAMP", "RAMP"))}


def _axis(prog: Program, along: str) -> tuple[int, int, str, str]:
    """(line length, number of lines, port towards +index, port towards -index)."""
    if along == "x":
        return prog.cols, prog.rows, "E", "W"
    if along == "y":
        return prog.rows, prog.cols, "S", "N"
    raise RouteError(f"along must be 'x' or 'y', got {along!r}")


def _lines(prog: Program, along: str, lines) -> np.ndarray:
    _, count, _, _ = _axis(prog, along)
    if lines is None:
        return np.arange(count)
    lines = np.atleast_1d(np.asarray(lines, np.int64))
    if lines.size and (lines.min() < 0 or lines.max() >= count):
        raise RouteError(f"line index outside 0..{count - 1}: {lines.tolist()}")
    return lines


def set_line_routes(prog: Program, color: Color, along: str, rx_line, tx_line, lines=None):
    """Write one line's rx/tx pattern (uint8 port masks per index) onto the chosen lines.

    Indices whose tx is 0 keep whatever route they had."""
    length, _, _, _ = _axis(prog, along)
    rx_line = np.asarray(rx_line, np.uint8)
    tx_line = np.asarray(tx_line, np.uint8)
    if rx_line.shape != (length,) or tx_line.shape != (length,):
        raise RouteError(f"line patterns must have {length} entries")
    if tx_line[-1] & BIT["E" if along == "x" else "S"] or \
            tx_line[0] & BIT["W" if along == "x" else "N"]:
        raise RouteError(f"color {color.name}: the pattern sends off the end of the line")
    sel = _lines(prog, along, lines)
    rx, tx = prog.routes_of(color)
    used = tx_line != 0
    if along == "x":
        rx[np.ix_(sel, np.nonzero(used)[0])] = rx_line[used]
        tx[np.ix_(sel, np.nonzero(used)[0])] = tx_line[used]
    else:
        rx[np.ix_(np.nonzero(used)[0], sel)] = rx_line[used][:, None]
        tx[np.ix_(np.nonzero(used)[0], sel)] = tx_line[used][:, None]


def multicast(prog: Program, color: Color, along: str, root: int, lines=None,
              root_receives: bool = False, span: tuple[int, int] | None = None):
    """Flood from `root` to every index of span (default: the whole line).

    The root takes wavelets from its ramp; every other PE passes each wavelet
    to its ramp and onwards, away from the root. With root_receives the root
    also gets its own copy back through its ramp."""
    length, _, fwd, back = _axis(prog, along)
    lo, hi = span if span is not None else (0, length - 1)
    if not 0 <= lo <= root <= hi < length:
        raise RouteError(f"multicast root {root} must lie in span {lo}..{hi} of a line of {length}")
    rx = np.zeros(length, np.uint8)
    tx = np.zeros(length, np.uint8)
    rx[root] = BIT["RAMP"]
    tx[root] = (BIT[fwd] if root < hi else 0) | (BIT[back] if root > lo else 0) \
        | (BIT["RAMP"] if root_receives else 0)
    for i in range(root + 1, hi + 1):
        rx[i] = BIT[back]
        tx[i] = BIT["RAMP"] | (BIT[fwd] if i < hi else 0)
    for i in range(lo, root):
        rx[i] = BIT[fwd]
        tx[i] = BIT["RAMP"] | (BIT[back] if i > lo else 0)
    if tx[root] == 0:               # a one-PE span: deliver to itself
        tx[root] = BIT["RAMP"]
    set_line_routes(prog, color, along, rx, tx, lines)


@dataclass
class TransferPlan:
    """Colors of a set of streams along lines.

    send_color / recv_color: (rows, cols) color indices (-1: none), for
    prog.color_param_indices. colors: the Color objects used."""
    colors: list[Color]
    send_color: np.ndarray
    recv_color: np.ndarray
    pairs: list[tuple[int, int]]
    color_of_pair: list[int]

    @property
    def senders(self) -> np.ndarray:
        return self.send_color >= 0

    @property
    def receivers(self) -> np.ndarray:
        return self.recv_color >= 0


def color_intervals(pairs: list[tuple[int, int]]) -> list[int]:
    """Smallest coloring of closed intervals [min(s, d), max(s, d)] such that
    overlapping intervals differ (greedy by left end is optimal on a line)."""
    order = sorted(range(len(pairs)), key=lambda i: min(pairs[i]))
    free_after: list[int] = []             # per color: right end of its last interval
    color = [0] * len(pairs)
    for i in order:
        lo, hi = min(pairs[i]), max(pairs[i])
        for c, end in enumerate(free_after):
            if end < lo:
                free_after[c] = hi
                color[i] = c
                break
        else:
            free_after.append(hi)
            color[i] = len(free_after) - 1
    return color


def transfers(prog: Program, along: str, pairs, lines=None, name: str = "xfer") -> TransferPlan:
    """Route streams src -> dst (indices along the line) on every selected line."""
    length, _, fwd, back = _axis(prog, along)
    pairs = [(int(s), int(d)) for s, d in pairs]
    for s, d in pairs:
        if not (0 <= s < length and 0 <= d < length):
            raise RouteError(f"transfer {s} -> {d} leaves a line of {length} PEs")
    for what, ends in (("send", [s for s, _ in pairs]), ("receive", [d for _, d in pairs])):
        if len(set(ends)) != len(ends):
            raise RouteError(f"a PE may {what} at most one stream per transfers() call")
    pair_color = color_intervals(pairs)
    n_colors = max(pair_color) + 1 if pairs else 0
    colors = [prog.color(f"{name}{i}") for i in range(n_colors)]
    send_line = np.full(length, -1, np.int64)
    recv_line = np.full(length, -1, np.int64)
    for c, color in enumerate(colors):
        rx = np.zeros(length, np.uint8)
        tx = np.zeros(length, np.uint8)
        for (s, d), pc in zip(pairs, pair_color):
            if pc != c:
                continue
            send_line[s] = color.index
            recv_line[d] = color.index
            if s == d:
                rx[s], tx[s] = BIT["RAMP"], BIT["RAMP"]
                continue
            out, inn = (fwd, back) if d > s else (back, fwd)
            step = 1 if d > s else -1
            rx[s], tx[s] = BIT["RAMP"], BIT[out]
            for i in range(s + step, d, step):
                rx[i], tx[i] = BIT[inn], BIT[out]
            rx[d], tx[d] = BIT[inn], BIT["RAMP"]
        set_line_routes(prog, color, along, rx, tx, lines)
    sel = _lines(prog, along, lines)
    send = np.full((prog.rows, prog.cols), -1, np.int64)
    recv = np.full((prog.rows, prog.cols), -1, np.int64)
    if along == "x":
        send[sel, :] = send_line
        recv[sel, :] = recv_line
    else:
        send[:, sel] = send_line[:, None]
        recv[:, sel] = recv_line[:, None]
    return TransferPlan(colors, send, recv, pairs, pair_color)


def shift(prog: Program, along: str, k: int = 1, wrap: bool = True, lines=None,
          name: str = "shift") -> TransferPlan:
    """Every index i sends to i + k (mod P with wrap; otherwise only when in range)."""
    length, _, _, _ = _axis(prog, along)
    pairs = []
    for i in range(length):
        j = i + k
        if wrap:
            pairs.append((i, j % length))
        elif 0 <= j < length:
            pairs.append((i, j))
    return transfers(prog, along, pairs, lines, name)


def interleaved_order(p: int) -> list[int]:
    """0, 2, 4, ..., (last even), ..., 5, 3, 1: a ring over a line in which
    consecutive entries (and the last and first) are at most two PEs apart."""
    evens = list(range(0, p, 2))
    odds = list(range(1, p, 2))
    return evens + odds[::-1]


def ring(prog: Program, along: str, order, lines=None, step: int = 1,
         name: str = "ring") -> TransferPlan:
    """Each PE sends to the PE `step` places after it in the cyclic `order`."""
    order = [int(i) for i in order]
    n = len(order)
    pairs = [(order[j], order[(j + step) % n]) for j in range(n)]
    return transfers(prog, along, pairs, lines, name)


def ring_position(order) -> np.ndarray:
    """position[i] = where PE index i stands in the ring order."""
    pos = np.empty(len(order), np.int64)
    pos[np.asarray(order)] = np.arange(len(order))
    return pos
