"""Collectives on the mesh: broadcast, reduce, allreduce and shifts along rows,
columns or the whole grid, written only against wse's public API.

x has shape (rows, cols, B): one vector of B elements per PE. "along x" works
inside each row (line index = column), "along y" inside each column.

Timing model used in the docstrings (all from the engine's rules):
  T_R  ramp latency (PE <-> router), H  hop latency, B  wavelets per PE,
  P    PEs on the line. A stream moves one wavelet per cycle per link.
"""
from __future__ import annotations

import numpy as np

import wse
from wse import routes
from wse.errors import ConfigError

AXES = ("x", "y", "xy")


# ----------------------------------------------------------------------------
# shared input handling
def _prepare(x, cfg: wse.WaferConfig, along: str) -> np.ndarray:
    if not isinstance(cfg, wse.WaferConfig):
        raise ConfigError(f"cfg must be a WaferConfig, got {type(cfg).__name__}")
    if along not in AXES:
        raise ConfigError(f"along must be one of {AXES}, got {along!r}")
    x = np.asarray(x)
    if x.ndim != 3 or x.shape[:2] != (cfg.rows, cfg.cols):
        raise ConfigError(f"x must have shape (rows, cols, B) = ({cfg.rows}, {cfg.cols}, B), "
                          f"got {x.shape}")
    if x.shape[2] < 1:
        raise ConfigError("B must be at least 1 (x has an empty last axis)")
    if not np.issubdtype(x.dtype, np.floating) and not np.issubdtype(x.dtype, np.integer):
        raise ConfigError(f"x must hold numbers, got dtype {x.dtype}")
    return x.astype(np.float32)


def _line_length(cfg: wse.WaferConfig, along: str) -> int:
    return cfg.cols if along == "x" else cfg.rows


def _check_root(root, cfg: wse.WaferConfig, along: str) -> int | tuple[int, int]:
    if along == "xy":
        if not (isinstance(root, (tuple, list)) and len(root) == 2):
            raise ConfigError(f"for along='xy' the root is an (x, y) pair, got {root!r}")
        rx, ry = int(root[0]), int(root[1])
        if not (0 <= rx < cfg.cols and 0 <= ry < cfg.rows):
            raise ConfigError(f"root {root} lies outside the {cfg.cols} x {cfg.rows} grid")
        return rx, ry
    length = _line_length(cfg, along)
    if isinstance(root, (tuple, list)) or not 0 <= int(root) < length:
        raise ConfigError(f"root {root!r} must be an index in 0..{length - 1} along {along}")
    return int(root)


def _at(prog: wse.Program, along: str, index) -> np.ndarray:
    """Mask of the PEs at `index` (an int or slice) along the line direction."""
    return prog.pes(cols=index) if along == "x" else prog.pes(rows=index)


# ----------------------------------------------------------------------------
def broadcast(x, cfg: wse.WaferConfig, along: str = "x", root=0, algorithm: str = "flood"):
    """Copy the root's vector to every PE of its line (or of the grid, along="xy").

    flood: the root streams B wavelets; every other PE's route takes them from
    the root's side and passes them to its ramp and onwards (multicast), so
    the stream is pipelined. The farthest PE is D hops away (D = max(root,
    P-1-root); along xy, D = the Manhattan distance to the farthest corner):
        cycles = 2*T_R + D*H + B
    (B cycles of streaming; the first wavelet needs two ramps and D hops).
    Returns (y, report), y of shape (rows, cols, B).
    """
    x = _prepare(x, cfg, along)
    root = _check_root(root, cfg, along)
    if algorithm != "flood":
        raise ConfigError(f"unknown broadcast algorithm {algorithm!r}: expected 'flood'")
    B = x.shape[2]
    prog = wse.Program(cfg)
    buf = prog.buffer("x", (B,))
    prog.load(buf, x)
    if cfg.num_pes == 1 or (along != "xy" and _line_length(cfg, along) == 1):
        result = prog.run()                   # nothing to move
        return result.read(buf).astype(np.float32), result.report
    c = prog.color("bcast")
    if along == "xy":
        rx_root, ry_root = root
        routes.multicast(prog, c, "y", ry_root)                  # every column floods from row ry
        routes.multicast(prog, c, "x", rx_root, lines=[ry_root])  # the root row floods from rx
        # the root row also feeds its column: add the column ports to its routes
        rx_m, tx_m = prog.routes_of(c)
        vertical = ((1 << 0) if ry_root > 0 else 0) | ((1 << 2) if ry_root < cfg.rows - 1 else 0)
        tx_m[ry_root, :] |= vertical
        root_mask = prog.pes(rows=ry_root, cols=rx_root)
    else:
        routes.multicast(prog, c, along, root)
        root_mask = _at(prog, along, root)
    sender = prog.role("root", where=root_mask)
    with sender.task("main", entry=True) as t:
        t.mov(prog.fabout(c, B), buf.view())
    receiver = prog.role("receiver", where=~root_mask)
    with receiver.task("main", entry=True) as t:
        t.mov(buf.view(), prog.fabin(c, B))
    result = prog.run()
    return result.read(buf).astype(np.float32), result.report


def reduce(x, cfg: wse.WaferConfig, along: str = "x", root=0, op: str = "sum",
           algorithm: str = "chain"):
    """Reduce the vectors of each line into its root (sum or max).

    chain: the PEs on each side of the root form a pipelined chain towards
    it: each receives an element from upstream, combines its own and sends it
    on, one element per cycle. Per PE on the chain the first element needs a
    ramp out, a hop and a ramp in (2*T_R + H). With the root at an end of
    the line (L = P-1 PEs upstream) the root adds the stream to its own vector
    as it arrives:
        cycles = L*(2*T_R + H) + B
    With the root inside the line the two chains share the root's single ramp
    (2B wavelets through it) and the root then adds its own vector (a memory
    op of ceil(B/SIMD) cycles); that case is ramp-bound, roughly
    a_late + 2B - min(B, input_queue_depth) + ceil(B/SIMD), a_late being the
    arrival of the later chain's first element.
    Returns (y, report): along x y has shape (rows, B); along y (cols, B).
    """
    x = _prepare(x, cfg, along)
    root = _check_root(root, cfg, along)
    if along == "xy":
        raise ConfigError("reduce along 'xy' is not implemented in this example kernel")
    if op not in ("sum", "max"):
        raise ConfigError(f"unknown reduce op {op!r}: expected 'sum' or 'max'")
    if algorithm != "chain":
        raise ConfigError(f"unknown reduce algorithm {algorithm!r}: expected 'chain'")
    B = x.shape[2]
    P = _line_length(cfg, along)
    prog = wse.Program(cfg)
    buf = prog.buffer("x", (B,))
    root_mask = _at(prog, along, root)
    acc = prog.buffer("acc", (B,), where=root_mask)
    prog.load(buf, x)
    combine = "add" if op == "sum" else "max"
    if P == 1:
        result = prog.run()
    else:
        # two chains flow towards the root, one from each side
        low = routes.transfers(prog, along, [(i, i + 1) for i in range(root)], name="low")
        high = routes.transfers(prog, along, [(i, i - 1) for i in range(root + 1, P)],
                                name="high")
        send = prog.color_param_indices("send", np.maximum(low.send_color, high.send_color))
        recv = prog.color_param_indices("recv", np.maximum(low.recv_color, high.recv_color))
        ends = _at(prog, along, 0) | _at(prog, along, P - 1)
        head = prog.role("head", where=ends & ~root_mask)
        with head.task("main", entry=True) as t:
            t.mov(prog.fabout(send, B), buf.view())
        middle = prog.role("middle", where=~ends & ~root_mask)
        with middle.task("main", entry=True) as t:
            getattr(t, combine)(prog.fabout(send, B), prog.fabin(recv, B), buf.view())
        top = prog.role("root", where=root_mask)
        with top.task("main", entry=True) as t:
            if low.pairs and high.pairs:
                low_in = low.colors[low.color_of_pair[-1]]      # the stream root-1 -> root
                high_in = high.colors[high.color_of_pair[0]]    # the stream root+1 -> root
                getattr(t, combine)(acc.view(), prog.fabin(low_in, B), prog.fabin(high_in, B))
                getattr(t, combine)(buf.view(), acc.view(), buf.view())
            else:
                getattr(t, combine)(buf.view(), prog.fabin(recv, B), buf.view())
        result = prog.run()
    y = result.read(buf)
    out = y[:, root, :] if along == "x" else y[root, :, :]
    return out.astype(np.float32), result.report


def shift(x, cfg: wse.WaferConfig, along: str = "x", k: int = 1, wrap: bool = True):
    """y at index i+k gets x at index i (mod P with wrap; without wrap the first
    k indices keep their own vector). Every stream is B wavelets over |k| hops
    (the wrap-around streams over P-|k| hops), each on its own path:
        cycles = 2*T_R + D*H + B,   D = the longest path (P-|k| with wrap, else |k|)
    Returns (y, report), y of shape (rows, cols, B).
    """
    x = _prepare(x, cfg, along)
    if along == "xy":
        raise ConfigError("shift works along 'x' or 'y'")
    B = x.shape[2]
    P = _line_length(cfg, along)
    prog = wse.Program(cfg)
    src = prog.buffer("src", (B,))
    dst = prog.buffer("dst", (B,))
    prog.load(src, x)
    prog.load(dst, x)
    if P > 1 and k % P != 0:
        plan = routes.shift(prog, along, k=k, wrap=wrap)
        send = prog.color_param_indices("send", plan.send_color)
        recv = prog.color_param_indices("recv", plan.recv_color)
        both = plan.senders & plan.receivers
        worker = prog.role("send_recv", where=both)
        with worker.task("main", entry=True) as t:
            t.mov(prog.fabout(send, B), src.view(), async_=True)
            t.mov(dst.view(), prog.fabin(recv, B))
            t.wait()
        only_send = prog.role("send", where=plan.senders & ~plan.receivers)
        with only_send.task("main", entry=True) as t:
            t.mov(prog.fabout(send, B), src.view())
        only_recv = prog.role("recv", where=plan.receivers & ~plan.senders)
        with only_recv.task("main", entry=True) as t:
            t.mov(dst.view(), prog.fabin(recv, B))
    result = prog.run()
    return result.read(dst).astype(np.float32), result.report
