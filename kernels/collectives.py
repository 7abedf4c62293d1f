"""Collectives on the mesh: broadcast, reduce, allreduce and shifts along rows,
columns or the whole grid, written only against wse's public API.

x has shape (rows, cols, B): one vector of B elements per PE. "along x" works
inside each row (line index = column), "along y" inside each column, "xy"
over the whole grid (x first, then y).

Two layers:

* builders (`reduce_fragment`, `broadcast_fragment`, `allreduce_fragment`,
  `shift_fragment`) set the routes of a collective on a Program you own and
  return a `Fragment`: the per-PE code, not yet emitted. A kernel fuses its
  own compute with the collective by emitting the fragment into its own
  tasks (`Fragment.install(before=..., after=...)` or `Fragment.emit`), so
  that one run does both. Fragments compose in sequence (`a.then(b)`).
* the public calls (`reduce`, `allreduce`, `broadcast`, `shift`) are thin
  wrappers: build a Program, load x, install one fragment, run, read back.

Every algorithm has a cost function (`cost(...)`), derived below from the
engine's rules, and `algorithm="auto"` picks the cheapest one by it.

Timing rules used in the docstrings (wse/engine.py, wse/timing.py):
  T_R  ramp latency (PE <-> router), H hop latency, B wavelets per PE,
  P    PEs on the line, SIMD  memory-op elements per cycle of the dtype,
  c    issue cycles of every instruction (scalar_op_cycles),
  sigma vector start-up (vector_startup_cycles), delta datapath latency
       (datapath_latency), alpha task start (task_start_cycles).
  * An instruction issued at t holds the main thread c cycles (an async
    operation too); a vector instruction moves its first element at
    t + sigma at the earliest; a synchronous one completes after its last
    element (fabric: that element's cycle + 1), and the next instruction
    issues then. `t.loop(n)` costs 2c + n*(body + c).
  * An element a PE puts on its ramp in cycle t is at its router at
    t + delta + T_R and is processed by a PE d hops away no earlier than
    t + delta + 2*T_R + d*H. A stream's first element therefore reaches a
    waiting receiver sigma + delta + 2*T_R + d*H after its send issues.
  * A fabric operation handles at most one element per cycle; a stream of B
    elements whose first element can be handled at a finishes at a + B when
    nothing stalls.
  * With cfg.without_instruction_costs() (c = sigma = delta = alpha = 0)
    every formula below is the one of the engine without instruction costs.
  * The RAMP port moves one wavelet per cycle into the PE, whatever the
    color: k streams ending at one PE cost k*B cycles of its ramp.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Callable

import numpy as np

import wse
from wse import routes
from wse.errors import ConfigError

AXES = ("x", "y", "xy")
OPS = ("sum", "max")
REDUCE_ALGORITHMS = ("star", "chain", "tree", "two_phase", "ktree")
ALLREDUCE_ALGORITHMS = REDUCE_ALGORITHMS + ("ring", "ring_interleaved")
BROADCAST_ALGORITHMS = ("flood",)
RINGS = ("plain", "interleaved")


# ----------------------------------------------------------------------------
# shared input handling
def _check_cfg(cfg) -> None:
    if not isinstance(cfg, wse.WaferConfig):
        raise ConfigError(f"cfg must be a WaferConfig, got {type(cfg).__name__}")


def _check_along(along: str, allowed=AXES) -> None:
    if along not in allowed:
        raise ConfigError(f"along must be one of {allowed}, got {along!r}")


def _prepare(x, cfg: wse.WaferConfig, along: str, allowed=AXES) -> np.ndarray:
    """Validate x; returns it as float32, or float16 when it came as float16."""
    _check_cfg(cfg)
    _check_along(along, allowed)
    x = np.asarray(x)
    if x.ndim != 3 or x.shape[:2] != (cfg.rows, cfg.cols):
        raise ConfigError(f"x must have shape (rows, cols, B) = ({cfg.rows}, {cfg.cols}, B), "
                          f"got {x.shape}")
    if x.shape[2] < 1:
        raise ConfigError("B must be at least 1 (x has an empty last axis)")
    if not np.issubdtype(x.dtype, np.floating) and not np.issubdtype(x.dtype, np.integer):
        raise ConfigError(f"x must hold numbers, got dtype {x.dtype}")
    return x if x.dtype == np.float16 else x.astype(np.float32)


def _dtype_name(x: np.ndarray) -> str:
    return "float16" if x.dtype == np.float16 else "float32"


def _line_length(cfg, along: str) -> int:
    return cfg.cols if along == "x" else cfg.rows


def _check_root(root, cfg, along: str):
    if along == "xy":
        if not (isinstance(root, (tuple, list)) and len(root) == 2):
            raise ConfigError(f"for along='xy' the root is an (x, y) pair, got {root!r}")
        rx, ry = int(root[0]), int(root[1])
        if not (0 <= rx < cfg.cols and 0 <= ry < cfg.rows):
            raise ConfigError(f"root {tuple(root)} lies outside the {cfg.cols} x {cfg.rows} grid")
        return rx, ry
    length = _line_length(cfg, along)
    if isinstance(root, (tuple, list)) or isinstance(root, bool) or not 0 <= int(root) < length:
        raise ConfigError(f"root {root!r} must be an index in 0..{length - 1} along {along}")
    return int(root)


def _check_op(op: str) -> str:
    if op not in OPS:
        raise ConfigError(f"unknown reduce op {op!r}: expected one of {OPS}")
    return op


def _check_algorithm(algorithm: str, known, what: str) -> str:
    if algorithm != "auto" and algorithm not in known:
        raise ConfigError(f"unknown {what} algorithm {algorithm!r}: expected one of "
                          f"{known + ('auto',)}")
    return algorithm


def _check_buffer(prog: wse.Program, data: wse.Buffer, length: int) -> int:
    if not isinstance(data, wse.Buffer) or data.program is not prog:
        raise ConfigError("data must be a Buffer of the same Program")
    length = data.size if length is None else int(length)
    if not 1 <= length <= data.size:
        raise ConfigError(f"length {length} must be in 1..{data.size} (the size of "
                          f"buffer {data.name!r})")
    return length


# ----------------------------------------------------------------------------
# Fragments: per-PE code of a collective, to be emitted into a kernel's tasks
Emitter = Callable[["wse.program.TaskBuilder"], None]


class Fragment:
    """The per-PE code of a collective whose routes are already set on `prog`.

    `labels` (rows, cols) says which emitter each PE runs (-1: none); an
    emitter appends instructions to a task. Emit a fragment exactly once per
    PE, in a task that runs after the data it needs is in place.

        frag = reduce_fragment(prog, buf, along="x", algorithm="chain")
        frag.install("reduce", before=compute_partials)   # roles + entry tasks
        # or, inside roles you create yourself (each within one part):
        for mask, _ in frag.parts(): ...; frag.emit(task, where=mask)
    """

    def __init__(self, prog: wse.Program, labels: np.ndarray, emitters: list[Emitter]):
        self.prog = prog
        self.labels = np.asarray(labels, np.int64)
        self.emitters = list(emitters)

    @classmethod
    def empty(cls, prog: wse.Program) -> "Fragment":
        return cls(prog, np.full((prog.rows, prog.cols), -1, np.int64), [])

    @classmethod
    def uniform(cls, prog: wse.Program, where: np.ndarray, emitter: Emitter) -> "Fragment":
        labels = np.where(np.asarray(where, bool), 0, -1)
        return cls(prog, labels, [emitter])

    @property
    def participants(self) -> np.ndarray:
        return self.labels >= 0

    def parts(self) -> list[tuple[np.ndarray, Emitter]]:
        """(mask, emitter) for each group of PEs that runs the same code."""
        return [(self.labels == i, e) for i, e in enumerate(self.emitters)
                if (self.labels == i).any()]

    def then(self, other: "Fragment") -> "Fragment":
        """This fragment's code followed by `other`'s, on every PE."""
        if other.prog is not self.prog:
            raise ConfigError("fragments of different Programs cannot be combined")
        key = (self.labels + 1) * (len(other.emitters) + 1) + (other.labels + 1)
        values, inverse = np.unique(key, return_inverse=True)
        labels = inverse.reshape(key.shape).astype(np.int64)
        emitters = []
        for v in values:
            a = self.emitters[v // (len(other.emitters) + 1) - 1] \
                if v // (len(other.emitters) + 1) > 0 else None
            b = other.emitters[v % (len(other.emitters) + 1) - 1] \
                if v % (len(other.emitters) + 1) > 0 else None
            emitters.append(_sequence(a, b))
        if values[0] == 0:               # PEs in neither fragment keep label -1
            labels -= 1
            emitters = emitters[1:]
        return Fragment(self.prog, labels, emitters)

    def emit(self, task, where) -> None:
        """Append the code of the PEs in `where` to `task`; they must share one part."""
        where = np.asarray(where, bool)
        found = np.unique(self.labels[where])
        if found.size != 1:
            raise ConfigError(f"the selected PEs run {found.size} different parts of this "
                              f"collective; emit into one role per part (see Fragment.parts)")
        if found[0] >= 0:
            self.emitters[found[0]](task)

    def install(self, name: str = "coll", before=None, after=None, where=None) -> list:
        """Create one role per part, each with an entry task running
        before(task, mask), the collective's code, then after(task, mask).

        `where` (default: the participants) selects the PEs that get a role;
        the PEs in it that take no part in the collective run only the hooks.
        Call once per Program: a PE belongs to the last role that selects it."""
        where = self.participants if where is None else np.asarray(where, bool)
        labels = np.where(where, self.labels, -2)
        made = []
        for value in np.unique(labels):
            if value == -2:
                continue
            mask = labels == value
            role = self.prog.role(f"{name}{len(made)}", where=mask)
            with role.task("main", entry=True) as t:
                if before is not None:
                    before(t, mask)
                if value >= 0:
                    self.emitters[value](t)
                if after is not None:
                    after(t, mask)
            made.append(role)
        return made


def _sequence(a: Emitter | None, b: Emitter | None) -> Emitter:
    def both(t):
        if a is not None:
            a(t)
        if b is not None:
            b(t)
    return both


# ----------------------------------------------------------------------------
# Line programs: every PE of a line runs a short list of steps; PEs with equal
# step lists share one part. A step is one of
#   ("send", c)              mov  fabout(c) <- data
#   ("store", c)             mov  data <- fabin(c)
#   ("fold", c)              data <- data (+|max) fabin(c)
#   ("send_switch", c)       mov  fabout(c) <- data, then the router's switch
#                            takes its second position (star's sources)
#   ("fold_all", c, k, async) data[i mod B] <- data[i mod B] (+|max) fabin(c),
#                            k vectors of B in one instruction (star's root;
#                            asynchronous when both arms fold at once)
#   ("wait",)                wait for the asynchronous operations
#   ("fold_send", cin, cout) fabout(cout) <- fabin(cin) (+|max) data
# where c is a wse.Color. Chains and trees are built from these.
@dataclass
class _Line:
    prog: wse.Program
    along: str
    lines: np.ndarray | None        # which rows (along x) / columns (along y); None: all
    length: int                     # P

    def mask_of(self, index: int) -> np.ndarray:
        mask = self.prog.pes(cols=index) if self.along == "x" else self.prog.pes(rows=index)
        if self.lines is not None:
            sel = np.zeros_like(mask)
            if self.along == "x":
                sel[self.lines, :] = True
            else:
                sel[:, self.lines] = True
            mask &= sel
        return mask


def _line_fragment(line: _Line, steps: list[list[tuple]], data: wse.Buffer, length: int,
                   op: str) -> Fragment:
    prog = line.prog
    labels = np.full((prog.rows, prog.cols), -1, np.int64)
    kinds: dict[tuple, int] = {}
    for index, program in enumerate(steps):
        if not program:
            continue
        key = tuple(program)
        if key not in kinds:
            kinds[key] = len(kinds)
        labels[line.mask_of(index)] = kinds[key]
    emitters = [_steps_emitter(list(key), data, length, op) for key in kinds]
    return Fragment(prog, labels, emitters)


def _steps_emitter(program: list[tuple], data: wse.Buffer, n: int, op: str) -> Emitter:
    def emit(t):
        prog = t.program
        combine = t.add if op == "sum" else t.max
        mine = data.view(0, n)
        for step in program:
            kind = step[0]
            if kind == "send":
                t.mov(prog.fabout(step[1], n), mine)
            elif kind == "store":
                t.mov(mine, prog.fabin(step[1], n))
            elif kind == "fold":
                combine(mine, prog.fabin(step[1], n), mine)
            elif kind == "send_switch":
                t.mov(prog.fabout(step[1], n, advance_switch=True), mine)
            elif kind == "fold_all":
                _, c, k, async_ = step
                every = data.view(0, n * k, wrap=n)
                combine(every, prog.fabin(c, n * k), every, async_=async_)
            elif kind == "wait":
                t.wait()
            elif kind == "fold_send":
                combine(prog.fabout(step[2], n), prog.fabin(step[1], n), mine)
            else:                                   # pragma: no cover - internal
                raise AssertionError(kind)
    return emit


def _add_chains(line: _Line, steps, chains: list[list[int]], name: str) -> None:
    """Route and program pipelined chains. Each chain is a list of line indices
    from its far end to its target; every PE on it receives from the previous
    one, combines its own element and forwards (the first only sends, the
    target folds the stream into its data). Chains with one element do nothing.
    Each call is one phase: its steps are appended after the earlier phases'."""
    pairs = [(c[j], c[j + 1]) for c in chains for j in range(len(c) - 1)]
    if not pairs:
        return
    plan = routes.transfers(line.prog, line.along, pairs, lines=line.lines, name=name)
    color = {pair: plan.colors[plan.color_of_pair[k]] for k, pair in enumerate(plan.pairs)}
    for c in chains:
        for j in range(len(c) - 1):
            out = color[(c[j], c[j + 1])]
            if j == 0:
                steps[c[j]].append(("send", out))
            else:
                steps[c[j]].append(("fold_send", color[(c[j - 1], c[j])], out))
        if len(c) > 1:
            steps[c[-1]].append(("fold", color[(c[-2], c[-1])]))


# ----------------------------------------------------------------------------
# Reduce plans on one *arm*: positions 0..n-1 outward from the root (position
# 0). An arm plan is a list of phases, each a list of chains (lists of
# positions, far end first, ending at the chain's target). Within a phase no
# PE receives two chains.
#
# Layouts are chosen so that no two streams meet on a link or a ramp at the
# same time, which keeps the costs below exact:
# * two_phase and ktree put the root alone in group 0; groups 1..G of s PEs
#   follow, the short group (if any) next to the root, so that a group root's
#   level-2 input never arrives before its own group is done.
# * two_phase chains run *away* from the root, to the far end of each group
#   (the group root), and the level-2 chain runs back towards the root: they
#   use opposite directions of every link.
# * ktree's two chains meet at a group root placed so that the far chain is
#   one or two PEs longer than the near one: the near chain's first element
#   arrives at least 2*T_R+H cycles earlier and its input queue is full before
#   the far one arrives. The group root folds the far chain first (no ramp
#   slot stolen) and then drains the near one at full rate.
def _groups(n: int, s: int) -> list[tuple[int, int]]:
    """Blocks [lo, hi] covering positions 1..n-1: the short one first, then blocks of s."""
    rest = n - 1
    if rest <= 0:
        return []
    count = -(-rest // s)
    first = rest - (count - 1) * s
    blocks = [(1, first)]
    for g in range(1, count):
        lo = first + 1 + (g - 1) * s
        blocks.append((lo, lo + s - 1))
    return blocks


def _ktree_root(lo: int, hi: int) -> int:
    """Group root: the far chain (hi -> root) is one (even size) or two (odd
    size >= 3) PEs longer than the near chain (lo -> root)."""
    size = hi - lo + 1
    if size == 1:
        return lo
    return lo + (size - 2) // 2 if size % 2 == 0 else lo + (size - 3) // 2


def _tree_streams(base: int, n: int) -> list[tuple[int, int, int]]:
    """(phase, sender, receiver) of the tree reduce of positions base..base+n-1
    into base. A power of two is a binomial tree (phase l: base+v -> base+v-2^l
    for v = 2^l mod 2^(l+1)). Otherwise the top 2^(L-1) positions form a full
    binomial tree, the rest (m = n - 2^(L-1) positions) recurses, and the top's
    root streams into base last: the rest is done before that stream arrives,
    so no two streams ever share a link or the root's ramp at the same time
    (a partial subtree at the top would start streaming early)."""
    if n <= 1:
        return []
    if n & (n - 1) == 0:
        out, level, phase = [], 1, 0
        while level < n:
            out += [(phase, base + v, base + v - level) for v in range(level, n, 2 * level)]
            level, phase = level * 2, phase + 1
        return out
    top = 1 << (n.bit_length() - 1)
    m = n - top
    rest = _tree_streams(base, m)
    upper = _tree_streams(base + m, top)
    last = max([p for p, _, _ in rest + upper], default=-1) + 1
    return rest + upper + [(last, base + m, base)]


def _arm_plan(algorithm: str, n: int, s: int | None = None) -> list[list[list[int]]]:
    if n <= 1:
        return []
    if algorithm == "chain":
        return [[list(range(n - 1, -1, -1))]]
    if algorithm == "star":
        return [[[v, 0]] for v in range(1, n)]
    if algorithm == "tree":
        phases: list[list[list[int]]] = []
        for phase, sender, receiver in _tree_streams(0, n):
            while len(phases) <= phase:
                phases.append([])
            phases[phase].append([sender, receiver])
        return phases
    groups = _groups(n, s)
    if algorithm == "two_phase":
        inner = [list(range(lo, hi + 1)) for lo, hi in groups]          # away from the root
        level2 = [hi for _, hi in groups][::-1] + [0]
        return [inner, [level2]]
    if algorithm == "ktree":
        roots = [_ktree_root(lo, hi) for lo, hi in groups]
        far = [list(range(hi, r - 1, -1)) for (_, hi), r in zip(groups, roots)]
        near = [list(range(lo, r + 1)) for (lo, _), r in zip(groups, roots)]
        return [far, near, [roots[::-1] + [0]]]
    raise AssertionError(algorithm)


def _reduce_line_steps(line: _Line, algorithm: str, root: int, B: int, group_size,
                       name: str) -> list[list[tuple]]:
    P = line.length
    steps: list[list[tuple]] = [[] for _ in range(P)]
    if algorithm == "star":
        _add_star(line, steps, root, name)
        return steps
    cfg = line.prog.cfg
    arms = []
    sizes = _arm_group_sizes(algorithm, P, B, cfg, root, group_size)
    for sign, n, s in zip((-1, +1), _arms(P, root), sizes):
        finish = _arm_cost(algorithm, n, B, cfg, s)
        arms.append((finish, sign, _arm_plan(algorithm, n, s)))
    # the root folds the arm whose stream arrives later first: the other one
    # has filled its input queue by then and is drained at full rate after
    arms = [(sign, plan) for _, sign, plan in sorted(arms, key=lambda a: -a[0])]
    if algorithm == "tree" and root not in (0, P - 1):
        # the shorter arm reduces into the root; the longer one into the root's
        # neighbour on its side, which streams into the root last (after the
        # root is done with its own arm, so nothing meets at its ramp)
        low, high = _arms(P, root)
        own_sign, far_sign = (-1, +1) if low <= high else (+1, -1)
        own_plan = _arm_plan("tree", min(low, high))
        far_root = root + far_sign
        far_plan = _arm_plan("tree", max(low, high) - 1)
        arms = [(own_sign, own_plan), (far_sign, [[[v + 1 for v in c] for c in ph]
                                                  for ph in far_plan])]
        depth = max(len(own_plan), len(far_plan))
        for phase in range(depth):
            for sign, plan in arms:
                if phase < len(plan):
                    chains = [[root + sign * v for v in c] for c in plan[phase]]
                    _add_chains(line, steps, chains, f"{name}{phase}{'lh'[sign > 0]}")
        _add_chains(line, steps, [[far_root, root]], f"{name}j")
        return steps
    depth = max(len(plan) for _, plan in arms)
    for phase in range(depth):
        for sign, plan in arms:
            if phase < len(plan):
                chains = [[root + sign * v for v in c] for c in plan[phase]]
                _add_chains(line, steps, chains, f"{name}{phase}{'lh'[sign > 0]}")
    return steps


def _add_star(line: _Line, steps, root: int, name: str) -> None:
    """Route and program the star: every PE streams its vector to the root.

    Each arm (the PEs on one side of the root) has one color. The fabric's
    switches put the arm's streams in order, nearest source first: a
    source's router first takes only its own ramp and, once its PE's stream
    is in (`advance_switch`), only the stream from farther out, which has
    waited upstream until then. So the root receives each arm as one stream
    of whole vectors and folds it with one instruction over a descriptor
    that wraps every B elements; with two arms the nearer-first fold runs
    asynchronously beside the other (the root's ramp serialises them)."""
    prog, P = line.prog, line.length
    _, _, fwd, back = routes._axis(prog, line.along)
    folds = []
    for sign, inward, outward in ((-1, fwd, back), (+1, back, fwd)):
        sources = [root + sign * v for v in range(1, P) if 0 <= root + sign * v < P]
        if not sources:
            continue
        c = prog.color(f"{name}s{'lh'[sign > 0]}")
        prog.route(c, rx=outward, tx="RAMP", where=line.mask_of(root))
        for src in sources:
            farthest = src == sources[-1]
            prog.route(c, rx="RAMP", tx=inward, where=line.mask_of(src),
                       switch=None if farthest else (outward, inward))
            steps[src].append(("send", c) if farthest else ("send_switch", c))
        folds.append((c, len(sources)))
    for k, (c, count) in enumerate(folds):
        steps[root].append(("fold_all", c, count, k < len(folds) - 1))
    if len(folds) > 1:
        steps[root].append(("wait",))


# ----------------------------------------------------------------------------
# Builders
def _axis_line(prog, along, lines=None) -> _Line:
    P = prog.cols if along == "x" else prog.rows
    return _Line(prog, along, None if lines is None else np.atleast_1d(lines), P)


def reduce_fragment(prog: wse.Program, data: wse.Buffer, along: str = "x", root=0,
                    op: str = "sum", algorithm: str = "chain", length: int | None = None,
                    group_size: int | None = None, lines=None, name: str = "red") -> Fragment:
    """Route a reduce of `data[:length]` into the root of every line (or, along
    "xy", into PE root=(x, y)); returns its code. Only the root's data holds
    the result afterwards (other PEs' data may hold partial results).

    along "xy" = along x into column root[0] on every row, then along y inside
    that column into row root[1]. See `reduce` for the algorithms and costs."""
    _check_cfg(prog.cfg)
    _check_along(along)
    _check_op(op)
    length = _check_buffer(prog, data, length)
    root = _check_root(root, prog.cfg, along)
    _check_algorithm(algorithm, REDUCE_ALGORITHMS, "reduce")
    if algorithm == "auto":
        axis = "x" if along == "xy" else along
        algorithm = choose("reduce", _line_length(prog.cfg, axis), length, prog.cfg,
                           root=root[0] if along == "xy" else root, dtype=data.dtype)
    if along == "xy":
        rx, ry = root
        first = reduce_fragment(prog, data, "x", rx, op, algorithm, length, group_size,
                                lines, name + "x")
        second = reduce_fragment(prog, data, "y", ry, op, algorithm, length, group_size,
                                 [rx], name + "y")
        return first.then(second)
    line = _axis_line(prog, along, lines)
    steps = _reduce_line_steps(line, algorithm, root, length, group_size, name)
    return _line_fragment(line, steps, data, length, op)


def broadcast_fragment(prog: wse.Program, data: wse.Buffer, along: str = "x", root=0,
                       length: int | None = None, lines=None, name: str = "bc") -> Fragment:
    """Route a flood broadcast of the root's `data[:length]` to every PE of its
    line (along "xy": along the root's row, then down every column, in one
    multicast tree); returns its code."""
    _check_cfg(prog.cfg)
    _check_along(along)
    length = _check_buffer(prog, data, length)
    root = _check_root(root, prog.cfg, along)
    cfg = prog.cfg
    if along == "xy":
        if cfg.num_pes == 1:
            return Fragment.empty(prog)
        rx, ry = root
        c = prog.color(name)
        if cfg.rows > 1:
            routes.multicast(prog, c, "y", ry)            # every column floods from row ry
        if cfg.cols > 1:
            routes.multicast(prog, c, "x", rx, lines=[ry])  # the root row floods from rx
        rx_m, tx_m = prog.routes_of(c)
        # the root row also feeds its columns: add the vertical ports to its routes
        vertical = ((1 << 0) if ry > 0 else 0) | ((1 << 2) if ry < cfg.rows - 1 else 0)
        tx_m[ry, :] |= vertical
        if cfg.cols == 1:
            rx_m[ry, rx] = routes.BIT["RAMP"]
            tx_m[ry, rx] &= ~np.uint8(routes.BIT["RAMP"])
        root_mask = prog.pes(rows=ry, cols=rx)
        everyone = np.ones((cfg.rows, cfg.cols), bool)
    else:
        line = _axis_line(prog, along, lines)
        if line.length == 1:
            return Fragment.empty(prog)
        c = prog.color(name)
        routes.multicast(prog, c, along, root, lines=line.lines)
        root_mask = line.mask_of(root)
        everyone = np.zeros((cfg.rows, cfg.cols), bool)
        for i in range(line.length):
            everyone |= line.mask_of(i)
    labels = np.where(root_mask, 0, np.where(everyone, 1, -1))
    mine = data.view(0, length)
    return Fragment(prog, labels, [
        lambda t: t.mov(prog.fabout(c, length), mine),
        lambda t: t.mov(mine, prog.fabin(c, length)),
    ])


def ring_length(B: int, P: int) -> int:
    """Elements a ring allreduce's buffer needs: B rounded up to a multiple of P
    (the ring moves P chunks of ceil(B/P); the padding is reduced too and then
    ignored)."""
    return P * -(-B // P)


def _ring_order(P: int, ring: str) -> list[int]:
    return list(range(P)) if ring == "plain" else routes.interleaved_order(P)


def ring_allreduce_fragment(prog: wse.Program, data: wse.Buffer, along: str = "x",
                            op: str = "sum", ring: str = "plain", length: int | None = None,
                            lines=None, name: str = "ring") -> Fragment:
    """Route a ring allreduce (reduce-scatter, then allgather) of data[:length]
    along every line; data must hold ring_length(length, P) elements."""
    _check_along(along, ("x", "y"))
    _check_op(op)
    if ring not in RINGS:
        raise ConfigError(f"unknown ring {ring!r}: expected one of {RINGS}")
    n = _check_buffer(prog, data, length)
    line = _axis_line(prog, along, lines)
    P = line.length
    if P == 1:
        return Fragment.empty(prog)
    need = ring_length(n, P)
    if data.size < need:
        raise ConfigError(f"a ring allreduce of {n} elements over {P} PEs needs a buffer of "
                          f"ring_length({n}, {P}) = {need} elements; {data.name!r} has {data.size}")
    chunk = need // P
    order = _ring_order(P, ring)
    plan = routes.ring(prog, along, order, lines=line.lines, name=name)
    send = prog.color_param_indices(f"{name}_send", plan.send_color)
    recv = prog.color_param_indices(f"{name}_recv", plan.recv_color)
    position_line = routes.ring_position(order)
    position = np.zeros((prog.rows, prog.cols), np.int64)
    where = np.zeros((prog.rows, prog.cols), bool)
    for i in range(P):
        m = line.mask_of(i)
        position[m] = position_line[i]
        where |= m
    pos = prog.param(f"{name}_pos", position)

    def emit(t):
        combine = t.add if op == "sum" else t.max
        k = t.reg()            # P + (position - step): the chunk this PE sends
        out = t.reg()
        inn = t.reg()
        t.set(k, pos)
        t.addi(k, P)
        for phase in ("reduce_scatter", "allgather"):
            with t.loop(P - 1):
                t.affine(out, k, 1, 0)
                t.mod(out, P)
                t.affine(inn, k, 1, P - 1)
                t.mod(inn, P)
                t.mov(prog.fabout(send, chunk), data.view(out * chunk, chunk), async_=True)
                if phase == "reduce_scatter":
                    combine(data.view(inn * chunk, chunk), prog.fabin(recv, chunk),
                            data.view(inn * chunk, chunk))
                else:
                    t.mov(data.view(inn * chunk, chunk), prog.fabin(recv, chunk))
                t.wait()
                t.affine(k, k, 1, P - 1)
                t.mod(k, P)
                t.addi(k, P)
            # now k = position + 1 (mod P): the chunk this PE owns after the
            # reduce-scatter, which is the one it sends first in the allgather
        for r in (k, out, inn):
            prog.free_reg(r)
    return Fragment.uniform(prog, where, emit)


def allreduce_fragment(prog: wse.Program, data: wse.Buffer, along: str = "x", op: str = "sum",
                       algorithm: str = "chain", length: int | None = None, root=None,
                       group_size: int | None = None, lines=None,
                       name: str = "ar") -> Fragment:
    """Route an allreduce of data[:length]; every PE's data holds the result.

    Reduce-then-broadcast algorithms reduce into `root` (default:
    default_allreduce_root, the middle of the line for ktree, index 0 for
    the others) and flood the result back from it. Ring algorithms need data to hold ring_length(length, P) elements. Along
    "xy": along x, then along y, with the same algorithm."""
    _check_cfg(prog.cfg)
    _check_along(along)
    _check_op(op)
    n = _check_buffer(prog, data, length)
    if along == "xy":
        first = allreduce_fragment(prog, data, "x", op, algorithm, n, None, group_size,
                                   lines, name + "x")
        second = allreduce_fragment(prog, data, "y", op, algorithm, n, None, group_size,
                                    None, name + "y")
        return first.then(second)
    P = _line_length(prog.cfg, along)
    _check_algorithm(algorithm, ALLREDUCE_ALGORITHMS, "allreduce")
    if algorithm == "auto":
        algorithm = choose("allreduce", P, n, prog.cfg, root=root, dtype=data.dtype)
    if algorithm in ("ring", "ring_interleaved"):
        return ring_allreduce_fragment(prog, data, along, op,
                                       "plain" if algorithm == "ring" else "interleaved",
                                       n, lines, name)
    if root is None:
        root = default_allreduce_root(algorithm, P, n, prog.cfg, group_size)
    red = reduce_fragment(prog, data, along, root, op, algorithm, n, group_size, lines,
                          name + "r")
    return red.then(broadcast_fragment(prog, data, along, root, n, lines, name + "b"))


def default_allreduce_root(algorithm: str, P: int, B: int = 1, cfg=None,
                           group_size: int | None = None) -> int:
    """The root reduce-then-broadcast uses.

    ktree (WaferLLM's two-tree): the root at which the reduce (both arms at
    once, _join_cost) plus the flood back both ways costs least (ties:
    nearest the middle, then the lower index), among the two ends and the
    PEs within 2 sqrt(P) + 2 of the middle: away from the middle an
    interior root only lengthens the longer arm and the flood, and near it
    the arms' group layouts decide. For short vectors that is
    the middle of the line, give or take a PE: each arm and the flood cross
    half the line. A root inside pays B once more (the second arm's fold
    after the first), so for long vectors on short lines it is an end.
    The others: the end of the line (index 0)."""
    if algorithm != "ktree" or P <= 2:
        return 0
    if cfg is None:
        raise ConfigError("the ktree allreduce's root depends on B and the config: pass cfg")
    return _best_root(P, B, cfg, group_size)


def ktree_allreduce_plan(P: int, cfg: wse.WaferConfig, lengths) -> tuple[int, tuple[int, int]]:
    """(root, (low arm's group size, high arm's group size)) of one ktree
    allreduce layout over P PEs that serves vectors of every length in
    `lengths` (routes are fixed when a program is built, the lengths vary
    per call): of the cheapest layouts for each length
    (default_allreduce_root and each arm's best group size), the one with
    the least total cost over all the lengths (ties: the root nearest the
    middle)."""
    lengths = tuple(sorted({int(n) for n in lengths}))
    if not lengths or lengths[0] < 1:
        raise ConfigError(f"lengths must be positive vector lengths, got {lengths}")
    return _ktree_plan(int(P), cfg, lengths)


@lru_cache(maxsize=None)
def _ktree_plan(P: int, cfg, lengths: tuple) -> tuple[int, tuple[int, int]]:
    candidates = set()
    for n in lengths:
        root = default_allreduce_root("ktree", P, n, cfg)
        candidates.add((root, _arm_group_sizes("ktree", P, n, cfg, root, None)))

    def total(plan):
        root, sizes = plan
        return sum(_reduce_cost("ktree", P, n, cfg, root, sizes) + _broadcast_cost(P, n, cfg, root)
                   for n in lengths)
    return min(candidates, key=lambda c: (total(c), abs(2 * c[0] - (P - 1)), c))


@lru_cache(maxsize=None)
def _best_root(P: int, B: int, cfg, group_size) -> int:
    def total(root):
        return _reduce_cost("ktree", P, B, cfg, root, group_size) + _broadcast_cost(P, B, cfg, root)
    reach = 2 * math.isqrt(P) + 2
    middle = (P - 1) // 2
    candidates = {0, P - 1} | set(range(max(0, middle - reach), min(P, middle + reach + 2)))
    return min(candidates, key=lambda r: (total(r), abs(2 * r - (P - 1)), r))


def shift_fragment(prog: wse.Program, src: wse.Buffer, dst: wse.Buffer, along: str = "x",
                   k: int = 1, ring: str = "plain", wrap: bool = True,
                   length: int | None = None, lines=None, name: str = "shift") -> Fragment:
    """Route a cyclic shift: the PE at ring position j receives src of the PE at
    position j-k into dst (positions along the plain ring 0..P-1 or the
    interleaved ring). Without wrap (plain ring only) the first k PEs receive
    nothing. src and dst must be different buffers."""
    _check_along(along, ("x", "y"))
    if ring not in RINGS:
        raise ConfigError(f"unknown ring {ring!r}: expected one of {RINGS}")
    n = _check_buffer(prog, src, length)
    _check_buffer(prog, dst, n)
    if src is dst:
        raise ConfigError("shift needs distinct src and dst buffers (a PE sends while it receives)")
    line = _axis_line(prog, along, lines)
    P = line.length
    if P == 1 or (wrap and k % P == 0) or (not wrap and k == 0):
        return Fragment.empty(prog)
    if ring == "plain":
        plan = routes.shift(prog, along, k=k, wrap=wrap, lines=line.lines, name=name)
    else:
        if not wrap:
            raise ConfigError("the interleaved ring is cyclic: use wrap=True")
        plan = routes.ring(prog, along, _ring_order(P, ring), lines=line.lines,
                           step=k % P, name=name)
    send = prog.color_param_indices(f"{name}_send", plan.send_color)
    recv = prog.color_param_indices(f"{name}_recv", plan.recv_color)
    both = plan.senders & plan.receivers
    labels = np.where(both, 0, np.where(plan.senders, 1, np.where(plan.receivers, 2, -1)))

    def send_recv(t):
        t.mov(prog.fabout(send, n), src.view(0, n), async_=True)
        t.mov(dst.view(0, n), prog.fabin(recv, n))
        t.wait()
    return Fragment(prog, labels, [
        send_recv,
        lambda t: t.mov(prog.fabout(send, n), src.view(0, n)),
        lambda t: t.mov(dst.view(0, n), prog.fabin(recv, n)),
    ])


# ----------------------------------------------------------------------------
# Cost functions: cycles from the engine's rules (module docstring), per arm
# (root at position 0 of n PEs) and then per collective.
def _arm_cost(algorithm: str, n: int, B: int, cfg, s: int | None = None) -> int:
    """Cycles until the root (position 0 of an arm of n PEs) holds the result.

    With T = 2*T_R + H + delta (one chain hop: datapath, ramp out, hop, ramp
    in) and Lat(d) = delta + 2*T_R + d*H (the first element of a stream over
    d hops, from the cycle its sender handles it to the cycle a waiting
    receiver does). Every PE issues its first instruction at 0, so a fold
    or fold_send waiting for a stream is past its start-up sigma long
    before the stream arrives; only a PE that sends first pays sigma on
    the critical path, and a PE's second instruction pays it again.

    chain      sigma + (n-1)*T + B: the head's send moves its first
               element at sigma; every later PE handles it T after its
               upstream neighbour did.
    star       see _star_cost: the root takes the arm's vectors in source
               order, one wavelet a cycle from the first arrival,
               sigma + delta + 2*T_R + H + (n-1)*B when H = 1.
    tree       binomial on n = 2^L: L levels, level l a stream over 2^l hops
               whose send issues when its sender is done with level l-1
               (start-up sigma, then Lat(2^l)):
                   f(2^L) = L*(sigma + delta + 2*T_R + B) + (2^L - 1)*H.
               Otherwise (see _tree_streams) the top 2^(L-1) PEs, a full tree,
               stream into the root after the rest (m = n - 2^(L-1) PEs);
               the root's fold issues when its own part is done:
                   f(n) = max(f(m) + sigma, f(2^(L-1)) + sigma + Lat(m)) + B,
               f(1) = 0.
    two_phase  groups of s PEs after the root (short group first). Inside
               group g a chain ends at its far end: A_g = sigma + (s_g - 1)*T
               + B (0 for a group of one). Then the level-2 chain over the
               group roots, each one's fold_send issued when its group is
               done (its start-up ends before its input arrives, except at
               the farthest, which sends): e_G = A_G,
               e_g = max(A_g, e_(g+1) + Lat(s_(g+1))),
               cost = e_1 + sigma + Lat(s_1) + B.
    ktree      as two_phase, but each group reduces into a PE inside it: the
               far chain (b hops) and the near chain (a = b-1 or b-2 hops)
               meet there, far first: A_g = _join_cost(sigma + a*T,
               sigma + b*T) = sigma + b*T + B + steal + (sigma + B) (the
               near chain's fold issues when the far one completes; steal = 0
               when the near chain is ahead by at least
               min(input_queue_depth, B) cycles, as on WSE-2; sigma + b*T + B
               when a = 0); the level-2 distances are those between the
               group roots.
    """
    if n <= 1:
        return 0
    T_R, H = cfg.ramp_latency, cfg.hop_latency
    su, dp = cfg.vector_startup_cycles, cfg.datapath_latency
    hop = 2 * T_R + H + dp

    def lat(d):                 # a waiting fold_send's first element, d hops on
        return dp + 2 * T_R + d * H
    if algorithm == "chain":
        return su + (n - 1) * hop + B
    if algorithm == "star":
        return _star_cost(n, 1, B, cfg)
    if algorithm == "tree":
        return _tree_cost(n, B, T_R, H, su, dp)
    groups = _groups(n, s)
    if algorithm == "two_phase":
        done = [su + (hi - lo) * hop + B if hi > lo else 0 for lo, hi in groups]
        roots = [hi for _, hi in groups]
    elif algorithm == "ktree":
        roots = [_ktree_root(lo, hi) for lo, hi in groups]
        done = []
        for (lo, hi), r in zip(groups, roots):
            near, far = r - lo, hi - r
            if not far:
                done.append(0)
            elif not near:
                done.append(su + far * hop + B)
            else:
                done.append(_join_cost(su + near * hop, su + far * hop, B, cfg))
    else:
        raise AssertionError(algorithm)
    first = done[-1]
    for g in range(len(groups) - 2, -1, -1):
        first = max(done[g], first + lat(roots[g + 1] - roots[g]))
    return first + su + lat(roots[0]) + B


def _star_cost(low: int, high: int, B: int, cfg) -> int:
    """Star on a line whose root has `low` - 1 sources on one side and
    `high` - 1 on the other (_add_star: per arm one color whose switches
    pass the sources' vectors in order, nearest first).

    Source j hops away sends from its issue at 0; its vector's first element
    can reach the root's datapath at a_j = sigma + delta + 2*T_R + j*H, and
    the next source's vector follows it without a gap (its wavelets wait
    upstream and enter the nearer router's queue the cycle after the switch
    moves, behind the last wavelet still in it). The root's ramp takes one
    wavelet a cycle from either arm, so its folds end like a single server
    given whole vectors released at the a_j, in order:
        t = max(t, a_j) + B   over the a_j of both arms, sorted,
    and, with two arms, the wait's issue c. For H = 1 nothing is ever late:
    sigma + delta + 2*T_R + H + (P-1)*B (+ c); the HPDC 2024 model of the
    WSE-2 has B*(P-1) + 2*T_R + 1."""
    T_R, H = cfg.ramp_latency, cfg.hop_latency
    first = cfg.vector_startup_cycles + cfg.datapath_latency + 2 * T_R
    arrivals = sorted([first + j * H for j in range(1, low)]
                      + [first + j * H for j in range(1, high)])
    t = 0
    for a in arrivals:
        t = max(t, a) + B
    if low > 1 and high > 1:
        t += cfg.scalar_op_cycles
    return t


@lru_cache(maxsize=None)
def _tree_cost(n: int, B: int, T_R: int, H: int, su: int, dp: int) -> int:
    if n <= 1:
        return 0
    L = (n - 1).bit_length()             # ceil(log2 n)
    if n == 1 << L:
        return L * (su + dp + 2 * T_R + B) + (n - 1) * H
    top = 1 << (L - 1)
    m = n - top
    return max(_tree_cost(m, B, T_R, H, su, dp) + su,
               _tree_cost(top, B, T_R, H, su, dp) + su + dp + 2 * T_R + m * H) + B


@lru_cache(maxsize=None)
def _best_group_size(algorithm: str, n: int, B: int, cfg) -> int:
    """Group size of two_phase / ktree (about sqrt(n)) that minimises the cost."""
    if n <= 2:
        return 1
    lo = max(1, int(math.sqrt(n) / 3))
    hi = min(n - 1, int(3 * math.sqrt(n)) + 2)
    return min(range(lo, hi + 1), key=lambda s: (_arm_cost(algorithm, n, B, cfg, s), s))


def _arms(P: int, root: int) -> tuple[int, int]:
    """PEs on the low arm (indices root..0) and on the high arm (root..P-1)."""
    return root + 1, P - root


def _arm_group_sizes(algorithm: str, P: int, B: int, cfg, root: int, group_size) -> tuple:
    """Group sizes of the low arm (root..0) and the high arm (root..P-1):
    group_size as given (one size for both arms, or a (low, high) pair), or
    each arm's cheapest (_best_group_size); None for algorithms without
    groups."""
    if algorithm not in ("two_phase", "ktree"):
        return None, None
    if isinstance(group_size, (tuple, list)):
        return tuple(int(s) for s in group_size)
    return tuple(group_size or _best_group_size(algorithm, n, B, cfg)
                 for n in _arms(P, root))


def _reduce_cost(algorithm: str, P: int, B: int, cfg, root: int, group_size) -> int:
    low, high = _arms(P, root)
    sizes = _arm_group_sizes(algorithm, P, B, cfg, root, group_size)
    if low == 1 or high == 1:
        n = max(low, high)
        return _arm_cost(algorithm, n, B, cfg, sizes[0] if low > 1 else sizes[1])
    # a root inside the line: each arm delivers its last stream; the root
    # folds the later one first (the earlier one has filled its input queue
    # meanwhile), see _join_cost.
    finish = [_arm_cost(algorithm, n, B, cfg, s) for n, s in zip((low, high), sizes)]
    if algorithm in ("chain", "two_phase", "ktree"):
        return _join_cost(finish[0] - B, finish[1] - B, B, cfg)
    if algorithm == "tree":
        # the longer arm (without the root) reduces into the root's neighbour,
        # which streams into the root one hop after the root's own arm is done
        T_R, H = cfg.ramp_latency, cfg.hop_latency
        su, dp = cfg.vector_startup_cycles, cfg.datapath_latency
        own = _tree_cost(min(low, high), B, T_R, H, su, dp)
        far = _tree_cost(max(low, high) - 1, B, T_R, H, su, dp)
        arrive = far + su + dp + 2 * T_R + H
        # equal arms: the neighbour's stream arrives while the root still folds
        # its own arm and takes ramp slots from it (one per element, up to the
        # input queue)
        steal = min(cfg.input_queue_depth, B - 1) if arrive < own else 0
        return max(own + su + steal, arrive) + B
    # star: the root folds each arm's vectors as they arrive, both arms
    # sharing its ramp (_star_cost)
    return _star_cost(low, high, B, cfg)


def _join_cost(first_low: int, first_high: int, B: int, cfg) -> int:
    """Cycles until a root inside the line has folded both arms' last
    streams, whose first elements a waiting fold would handle at first_low
    and first_high (each arm's cost less B; `_reduce_line_steps` programs
    the root to fold the later stream first, then the earlier one).

    The earlier stream (first element at e) takes one ramp slot a cycle
    into the root's input queue until m = min(input_queue_depth, B) of its
    elements are in it; nobody drains it yet, so it then stops. The later
    one arrives g = l - e cycles after it and is folded as it comes, one
    element a cycle, except for the ramp slots the earlier one still takes
    from cycle l on: the router serves the two colors round robin, so they
    alternate until the earlier one has its m slots. The later stream wins
    the first of those cycles (the earlier one was served the cycle before;
    on a tie the later one's color has the lower index, its routes being
    set first), so it loses
        steal = min(max(0, m - g), B - 1)
    cycles (B - 1, not B, when g = 0 and m = B: its last element goes in
    before the earlier stream's last). The fold of the earlier stream issues
    when the later fold completes, pays its start-up sigma, and drains the
    queue at full rate while the rest follows:
        cycles = l + B + steal + sigma + B."""
    early, late = sorted((first_low, first_high))
    m = min(cfg.input_queue_depth, B)
    steal = min(max(0, m - (late - early)), B - 1)
    return late + B + steal + cfg.vector_startup_cycles + B


def _broadcast_cost(P: int, B: int, cfg, root: int) -> int:
    if P == 1:
        return 0
    D = max(root, P - 1 - root)
    return stream_cycles(D, B, cfg)


def stream_cycles(D: int, B: int, cfg) -> int:
    """A stream of B elements over D hops, from its sender's issue to the
    completion of its receiver, which waits for it: start-up, the datapath
    and the ramp out, D hops, the ramp in, then one element a cycle:
        sigma + delta + 2*T_R + D*H + B."""
    return cfg.vector_startup_cycles + cfg.datapath_latency + 2 * cfg.ramp_latency \
        + D * cfg.hop_latency + B


def _ring_hops(P: int, ring: str) -> list[int]:
    """Hops of each ring edge, in ring order (edge j: order[j] -> order[j+1])."""
    order = _ring_order(P, ring)
    return [abs(order[j] - order[(j + 1) % P]) for j in range(P)]


def _ring_cost(P: int, B: int, cfg, ring: str) -> int:
    """Ring allreduce: 2(P-1) steps of c = ceil(B/P) elements. In step s a PE
    sends one chunk (asynchronously) and folds (later: stores) the chunk its
    ring predecessor sends, and starts step s+1 when both are done. With
    t(i, s) the cycle PE i finishes step s, and Lat_i = 2*T_R + d_i*H over the
    d_i hops of the edge into PE i:
        t(i, s) = max(t(i, s-1), t(i-1, s-1) + Lat_i) + c
    (a chunk handled one element per cycle from its first arrival). With
    instruction costs (k = scalar_op_cycles) a step is: 4 control
    instructions (the chunk indices), the async send (issue k, start-up
    sigma), the fold or store (start-up sigma), the wait (k), 3 more
    control instructions and the loop branch: a step that waits for its
    predecessor's chunk completes
        t(i-1, s-1) + 5k (wait .. branch) + 4k + sigma + delta + 2*T_R + d_i*H + c
    after the predecessor's, its own previous step being no later (the
    own-step term 10k + sigma is shorter than that edge term). Paid once:
    the set-up before the first step (the register set and add, the first
    loop's set and test: 4k, where the first step has no 5k tail of a
    previous one), the second loop's set and test (2k) and, after the last
    fold, the wait and the updates (5k): 4k - 5k + 2k + 5k = 6k. Nothing
    is synchronised step by step, so the critical path walks forward round the
    ring, one edge per step; the long edges are paid only when that walk
    crosses them:
        cycles = 2(P-1) * (c + 9k + sigma + delta + 2*T_R) + H * W + 6k
    (zero instruction costs: 2(P-1) * (c + 2*T_R) + H * W),
    W = the most hops on 2(P-1) consecutive ring edges. Plain ring: P-1 edges
    of one hop and the wrap-around edge of P-1 hops, crossed twice:
    W = 4P - 6. Interleaved ring: P-2 edges of two hops and two of one hop:
    W = 4P - 7 for P >= 4 (the walk cannot avoid a one-hop edge; W = 6 for
    P = 3). The wrap-around edge costs the plain ring almost nothing
    here: steps overlap instead of waiting for the slowest edge."""
    if P == 1:
        return 0
    hops = _ring_hops(P, ring)
    steps = 2 * (P - 1)
    cyclic = hops * (steps // P + 2)
    window = max(sum(cyclic[j:j + steps]) for j in range(P))
    c = -(-B // P)
    k = cfg.scalar_op_cycles
    step = c + 9 * k + cfg.vector_startup_cycles + cfg.datapath_latency + 2 * cfg.ramp_latency
    return steps * step + cfg.hop_latency * window + 6 * k


def cost(collective: str, algorithm: str, P: int, B: int, cfg: wse.WaferConfig,
         root: int | None = None, group_size: int | None = None, k: int = 1) -> int:
    """Predicted cycles of a collective on a line of P PEs with B elements each.

    collective: "reduce" | "allreduce" | "broadcast" | "shift" (shift:
    algorithm "plain" or "interleaved", shift by k). root: reduce and
    broadcast default to index 0, allreduce to default_allreduce_root (the
    middle for ktree). Exact for any root (tests/kernels/test_collectives.py):
    an interior root is two arms whose last streams meet at the root
    (_reduce_cost, _join_cost).

    reduce     _arm_cost (chain, star, tree, two_phase, ktree); an interior
               root folds the later arm's stream, then issues the fold of
               the other: _join_cost = late + 2B + sigma + ramp slots stolen.
    broadcast  flood: sigma + delta + 2*T_R + D*H + B, D = max(root, P-1-root)
               (stream_cycles).
    allreduce  reduce into the root, then flood from it both ways: the root
               issues its send the cycle its last fold completes, and every
               other PE is already waiting:  reduce(P, B, root) + sigma +
               delta + 2*T_R + max(root, P-1-root)*H + B.  ring /
               ring_interleaved: _ring_cost.
    shift      sigma + delta + 2*T_R + D*H + B + c with D the longest stream
               (plain: P-|k| mod P with wrap; interleaved, k=1: 2): every PE
               sends asynchronously, receives, then waits (c). Exact for
               k = +-1; for larger |k| streams share links (a lower bound).
    """
    _check_cfg(cfg)
    P, B = int(P), int(B)
    if P < 1 or B < 1:
        raise ConfigError(f"P and B must be >= 1, got P={P}, B={B}")
    if collective == "broadcast":
        return _broadcast_cost(P, B, cfg, 0 if root is None else root)
    if collective == "shift":
        if algorithm not in RINGS:
            raise ConfigError(f"unknown ring {algorithm!r}: expected one of {RINGS}")
        if P == 1 or k % P == 0:
            return 0
        order = _ring_order(P, algorithm)
        D = max(abs(order[j] - order[(j + k) % P]) for j in range(P))
        return stream_cycles(D, B, cfg) + cfg.scalar_op_cycles
    if collective == "reduce":
        _check_algorithm(algorithm, REDUCE_ALGORITHMS, "reduce")
        root = 0 if root is None else root
        if not 0 <= root < P:
            raise ConfigError(f"root {root} outside 0..{P - 1}")
        if algorithm == "auto":
            algorithm = choose("reduce", P, B, cfg, root=root)
        return _reduce_cost(algorithm, P, B, cfg, root, group_size)
    if collective == "allreduce":
        _check_algorithm(algorithm, ALLREDUCE_ALGORITHMS, "allreduce")
        if algorithm == "auto":
            algorithm = choose("allreduce", P, B, cfg, root=root)
        if algorithm in ("ring", "ring_interleaved"):
            return _ring_cost(P, B, cfg, "plain" if algorithm == "ring" else "interleaved")
        if root is None:
            root = default_allreduce_root(algorithm, P, B, cfg, group_size)
        elif not 0 <= root < P:
            raise ConfigError(f"root {root} outside 0..{P - 1}")
        return _reduce_cost(algorithm, P, B, cfg, root, group_size) \
            + _broadcast_cost(P, B, cfg, root)
    raise ConfigError(f"unknown collective {collective!r}: expected reduce, allreduce, "
                      f"broadcast or shift")


def colors_needed(collective: str, algorithm: str, P: int, root: int = 0) -> int:
    """Colors a 1-D collective allocates (star: one per arm of the root;
    allreduce adds the broadcast's)."""
    if P == 1:
        return 0
    if algorithm == "star":
        arms = (root > 0) + (root < P - 1)
        return arms + (1 if collective == "allreduce" else 0)
    return 0            # the others need few colors (at most 4 per phase)


def choose(collective: str, P: int, B: int, cfg: wse.WaferConfig, root: int | None = None,
           dtype: str = "float32") -> str:
    """The algorithm with the lowest cost() that fits the config's colors.

    root None: a reduce's root is index 0, an allreduce's each algorithm's
    default_allreduce_root (the middle for ktree)."""
    names = REDUCE_ALGORITHMS if collective == "reduce" else ALLREDUCE_ALGORITHMS

    def root_of(a):
        if root is not None:
            return root
        return default_allreduce_root(a, P, B, cfg) if collective == "allreduce" else 0
    feasible = [a for a in names
                if colors_needed(collective, a, P, root_of(a)) <= cfg.num_colors]
    return min(feasible, key=lambda a: (cost(collective, a, P, B, cfg, root=root), a))


# ----------------------------------------------------------------------------
# Public calls: thin wrappers over the builders
def _run(prog: wse.Program, buf: wse.Buffer, frag: Fragment, name: str):
    frag.install(name)
    result = prog.run()
    return result.read(buf).astype(np.float32), result.report


def broadcast(x, cfg: wse.WaferConfig, along: str = "x", root=0, algorithm: str = "flood"):
    """Copy the root's vector to every PE of its line (or of the grid, along="xy").

    flood: the root streams B wavelets; every other PE's route takes them from
    the root's side and passes them to its ramp and onwards (multicast), so
    the stream is pipelined. The farthest PE is D hops away (D = max(root,
    P-1-root); along xy, D = the Manhattan distance to the farthest corner):
        cycles = sigma + delta + 2*T_R + D*H + B
    (B cycles of streaming; the first wavelet needs the root's start-up and
    datapath, two ramps and D hops).
    Returns (y, report), y of shape (rows, cols, B).
    """
    x = _prepare(x, cfg, along)
    root = _check_root(root, cfg, along)
    if algorithm not in BROADCAST_ALGORITHMS + ("auto",):
        raise ConfigError(f"unknown broadcast algorithm {algorithm!r}: expected one of "
                          f"{BROADCAST_ALGORITHMS + ('auto',)}")
    B = x.shape[2]
    prog = wse.Program(cfg)
    buf = prog.buffer("x", (B,), _dtype_name(x))
    frag = broadcast_fragment(prog, buf, along, root)
    prog.load(buf, x)
    return _run(prog, buf, frag, "bcast")


def reduce(x, cfg: wse.WaferConfig, along: str = "x", root=0, op: str = "sum",
           algorithm: str = "chain", group_size: int | None = None):
    """Reduce the vectors of each line into its root (sum or max).

    Returns (y, report): along x y has shape (rows, B); along y (cols, B);
    along xy (B,) (x first into column root[0], then y inside it).
    fp16 input stays fp16 in SRAM: every fold computes in fp32 and rounds
    once when it stores (see docs/collectives.md for the rounding count).
    Costs: `cost("reduce", ...)`; the docstrings of `_arm_cost` and `cost`
    derive them.
    """
    x = _prepare(x, cfg, along)
    root = _check_root(root, cfg, along)
    _check_op(op)
    _check_algorithm(algorithm, REDUCE_ALGORITHMS, "reduce")
    B = x.shape[2]
    prog = wse.Program(cfg)
    buf = prog.buffer("x", (B,), _dtype_name(x))
    frag = reduce_fragment(prog, buf, along, root, op, algorithm, group_size=group_size)
    prog.load(buf, x)
    y, report = _run(prog, buf, frag, "reduce")
    if along == "x":
        return y[:, root, :], report
    if along == "y":
        return y[root, :, :], report
    return y[root[1], root[0], :], report


def allreduce(x, cfg: wse.WaferConfig, along: str = "x", op: str = "sum",
              algorithm: str = "chain", group_size: int | None = None, root=None):
    """Every PE of each line ends with the reduction of the line's vectors.

    star|chain|tree|two_phase: reduce into index 0 (or `root`), then flood
    it back. ktree (WaferLLM's two-tree): reduce both halves of the line at
    once into a root in its middle (default_allreduce_root), then flood
    back both ways.
    ring: reduce-scatter then allgather over the plain ring 0..P-1 (its
    wrap-around edge spans P-1 hops). ring_interleaved: the same over
    routes.interleaved_order (every logical neighbour at most 2 hops away).
    along xy: along x, then along y. Returns (y, report), y (rows, cols, B).
    """
    x = _prepare(x, cfg, along)
    _check_op(op)
    _check_algorithm(algorithm, ALLREDUCE_ALGORITHMS, "allreduce")
    B = x.shape[2]
    prog = wse.Program(cfg)
    size = B
    if algorithm in ("ring", "ring_interleaved", "auto"):
        size = max(ring_length(B, cfg.cols), ring_length(B, cfg.rows))
    buf = prog.buffer("x", (size,), _dtype_name(x))
    if root is not None:
        if along == "xy":
            raise ConfigError("along='xy' allreduces choose their roots per axis; pass no root")
        root = _check_root(root, cfg, along)
    frag = allreduce_fragment(prog, buf, along, op, algorithm, B, root=root,
                              group_size=group_size)
    padded = np.zeros(x.shape[:2] + (size,), x.dtype)
    padded[:, :, :B] = x
    prog.load(buf, padded)
    y, report = _run(prog, buf, frag, "allreduce")
    return y[:, :, :B], report


def shift(x, cfg: wse.WaferConfig, along: str = "x", k: int = 1, wrap: bool = True,
          ring: str = "plain"):
    """The PE at ring position j+k gets x of the PE at position j (mod P with
    wrap; without wrap the first k PEs keep their own vector). ring="plain":
    positions are indices; "interleaved": positions along
    routes.interleaved_order, so with k=1 every stream spans at most 2 hops.
    Every stream is B wavelets over its own path:
        cycles = sigma + delta + 2*T_R + D*H + B + c (the final wait),
        D = the longest path
    (plain: P-|k| with wrap, else |k|; interleaved, k=1: 2 for P >= 3).
    Returns (y, report), y of shape (rows, cols, B).
    """
    x = _prepare(x, cfg, along, ("x", "y"))
    B = x.shape[2]
    prog = wse.Program(cfg)
    src = prog.buffer("src", (B,), _dtype_name(x))
    dst = prog.buffer("dst", (B,), _dtype_name(x))
    frag = shift_fragment(prog, src, dst, along, int(k), ring, wrap)
    prog.load(src, x)
    prog.load(dst, x)
    return _run(prog, dst, frag, "shift")
