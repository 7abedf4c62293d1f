"""Diagnostics: the WseError a failed run raises, and its message.

The engine ends a run with a status (`isa.STATUS_*`, the failure's kind and
what it involves, in separate fields of its counters; see `wse.engine`).
`raise_on_status` turns it into the matching WseError subclass, naming
things as the kernel author wrote them: PEs as (x, y), colors by name,
instructions by role, task and position, buffers by name, and, for a
deadlock or a cycle limit, which PEs still wait and on what.
"""
from __future__ import annotations

import numpy as np

from . import isa
from .errors import (CycleLimitError, FabricDeadlockError, FloatingPointTrap, ProgramError,
                     RouteError, WseError)


def port_names(mask: int) -> str:
    """Bitmask of router ports -> 'RAMP,E' style text ('-' for none)."""
    return ",".join(n for i, n in enumerate(isa.PORT_NAMES) if mask >> i & 1) or "-"


def pe_name(program, p: int) -> str:
    """The flat PE index `p` as the author sees it: PE (x, y)."""
    return f"PE ({p % program.cols}, {p // program.cols})"


def color_name(program, c: int) -> str:
    """The dense color index `c` as 'color <id> (<name>)'."""
    if 0 <= c < len(program.colors):
        col = program.colors[c]
        return f"color {col.id} ({col.name})"
    return f"color index {c}"


def instr_name(program, ins: int) -> str:
    """The compiled instruction `ins` as its role, task and place in the task."""
    owner = "?"
    for role, task, base in program._task_names:
        if base <= ins:
            owner = f"role {role!r} task {task!r} instruction {ins - base}"
    return owner


def raise_on_status(program, static, state) -> None:
    """Raise the WseError that the run's status describes; return if the run succeeded."""
    from . import engine
    (code, kind, pe, color, port, cycle, ins, buf, element, count) = (
        int(v) for v in state.counters[engine.ST_CODE:engine.ST_COUNT + 1])
    if code == isa.STATUS_OK:
        return
    if code == isa.STATUS_ROUTE:
        where = pe_name(program, pe)
        if kind == isa.ROUTE_RX_MISMATCH:
            route = static.route[color * program.rows * program.cols + pe] if program.colors \
                else [0] * (engine.SWITCH_POSITIONS * engine.POSITION_FIELDS)
            accepts = f"rx={{{port_names(int(route[engine.RX]))}}}"
            other = engine.POSITION_FIELDS            # the second switch position's pair
            if route[other + engine.RX] or route[other + engine.TX]:
                accepts += f" (rx={{{port_names(int(route[other + engine.RX]))}}} in its " \
                           f"switch's other position)"
            raise RouteError(f"{where}, {color_name(program, color)}: a wavelet arrives from "
                             f"port {isa.PORT_NAMES[port]} at cycle {cycle}, but the route "
                             f"accepts only {accepts}")
        if kind == isa.ROUTE_OFF_GRID:
            raise RouteError(f"{where}, {color_name(program, color)}: the route sends out of "
                             f"the grid through port {isa.PORT_NAMES[port]} at cycle {cycle}")
        raise RouteError(f"{where}, {color_name(program, color)}: a wavelet is waiting at cycle "
                         f"{cycle} but the route has no tx port")
    if code == isa.STATUS_CYCLE_LIMIT:
        limit = int(static.settings[engine.C_MAX_CYCLES])
        raise CycleLimitError(f"the run reached max_cycles = {limit} before finishing "
                              f"(stopped at cycle {cycle}); "
                              f"{describe_waiting(program, static, state, limit=5)}")
    if code == isa.STATUS_DEADLOCK:
        if kind == isa.DEADLOCK_LEFTOVER:
            raise FabricDeadlockError(
                f"{pe_name(program, pe)}, {color_name(program, color)}: {count} wavelet(s) are "
                f"left in the fabric at cycle {cycle} with nobody to consume them")
        reason = ("nothing moved for the deadlock window" if kind == isa.DEADLOCK_STALLED
                  else "nothing can move any more")
        raise FabricDeadlockError(f"deadlock at cycle {cycle}: {reason}; "
                                  f"{describe_waiting(program, static, state)}")
    if code == isa.STATUS_PROGRAM:
        if kind == isa.PROG_BAD_COLOR:
            raise ProgramError(f"{pe_name(program, pe)}: {instr_name(program, ins)} uses "
                               f"color index {color}, which is not a color of this program")
        name = program.buffers[buf].name if buf < len(program.buffers) else "?"
        if kind == isa.PROG_UNALLOCATED:
            raise ProgramError(f"{pe_name(program, pe)}: {instr_name(program, ins)} uses buffer "
                               f"{name!r}, which is not allocated on this PE")
        raise ProgramError(f"{pe_name(program, pe)}: {instr_name(program, ins)} reaches outside "
                           f"buffer {name!r} ({program.buffers[buf].size} elements; offset "
                           f"{element}) at cycle {cycle}")
    if code == isa.STATUS_NAN:
        raise FloatingPointTrap(f"{pe_name(program, pe)}: {instr_name(program, ins)} produced "
                                f"NaN at element {element}, cycle {cycle}")
    raise WseError(f"engine status {code}")


def describe_waiting(program, static, state, limit: int = 10) -> str:
    """Which PEs still have work, and on which colors they wait."""
    from . import engine
    pe, slot = state.pe, state.slot
    unfinished = np.nonzero((pe[:, engine.P_TASK] >= 0) | (pe[:, engine.P_PENDING] != 0)
                            | (slot[:, :, engine.S_INSTR] >= 0).any(axis=1))[0]
    parts = []
    for p in unfinished[:limit]:
        waits = []
        for s in range(slot.shape[1]):
            ins = slot[p, s, engine.S_INSTR]
            if ins < 0:
                continue
            for field, verb in ((isa.I_A, "receive"), (isa.I_B, "receive"),
                                (isa.I_DST, "send")):
                d = static.instr[ins, field]
                if d >= 0 and static.desc[d, isa.D_KIND] != isa.MEM:
                    param = static.desc[d, isa.D_OFFSET_REG]
                    c = (static.pe_params[p, param] if param >= 0
                         else static.desc[d, isa.D_BUF_OR_COLOR])
                    waits.append(f"{verb} on {color_name(program, int(c))} "
                                 f"({slot[p, s, engine.S_PROGRESS]}/{slot[p, s, engine.S_LEN]}"
                                 f" done)")
        where = (instr_name(program, int(pe[p, engine.P_PC])) if pe[p, engine.P_TASK] >= 0
                 else "between tasks")
        parts.append(f"{pe_name(program, int(p))} [{where}] "
                     + ("waits to " + ", ".join(waits) if waits else "waits"))
    more = len(unfinished) - limit
    text = "; ".join(parts) if parts else "no PE has work left"
    return f"{len(unfinished)} PE(s) waiting: {text}" + (f"; and {more} more" if more > 0 else "")
