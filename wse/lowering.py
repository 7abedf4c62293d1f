"""Lowering: a Program to the engine's flat tables, its run settings and its initial state.

This is the only code that packs the engine's tables: the routes, the
instruction and descriptor tables (columns named in `wse.isa`), the task and
role tables, the per-PE parameters and buffer addresses (`engine.Static`),
the settings vector (`engine.C_*`) and a fresh `engine.State`. The author
API (`wse.program`) describes a run in its own terms; `wse.engine` reads
only what is built here.
"""
from __future__ import annotations

import numpy as np

from . import isa
from .config import WaferConfig

_JUMPS = (isa.OP_LOOP, isa.OP_JUMP, isa.OP_BLT)     # I_IMM is a task-relative target
_END_ROW = [isa.OP_END] + [-1] * (isa.INSTR_FIELDS - 1)


def _desc_row(d) -> list[int]:
    """A Desc as its row of the descriptor table."""
    row = [0] * isa.DESC_FIELDS
    row[isa.D_KIND] = d.kind
    row[isa.D_BUF_OR_COLOR] = d.target
    row[isa.D_DTYPE] = d.dtype
    row[isa.D_OFFSET] = d.offset
    row[isa.D_OFFSET_REG] = d.offset_reg
    row[isa.D_OFFSET_SCALE] = d.offset_scale
    row[isa.D_LENGTH] = d.length
    row[isa.D_LENGTH_REG] = d.length_reg
    row[isa.D_STRIDE] = d.stride
    row[isa.D_WRAP] = d.wrap
    row[isa.D_ADVANCE] = int(d.advance_switch)
    return row


def _instr_row(ins, base: int, desc_id) -> list[int]:
    """An Instr of a task starting at `base` as its row of the instruction table;
    `desc_id` gives a Desc its row of the descriptor table."""
    row = [-1] * isa.INSTR_FIELDS
    row[isa.I_OP] = ins.op
    for field, d in ((isa.I_DST, ins.dst), (isa.I_A, ins.a), (isa.I_B, ins.b)):
        if d is not None:
            row[field] = desc_id(d)
    if ins.scalar is not None:
        row[isa.I_S] = desc_id(ins.scalar)
    else:
        row[isa.I_S] = isa.SCALAR_WAVELET if ins.wavelet else isa.SCALAR_IMMEDIATE
    row[isa.I_SLOT] = ins.slot
    row[isa.I_ON_DONE] = ins.on_done
    row[isa.I_R] = ins.r
    row[isa.I_IMM] = ins.imm + (base if ins.op in _JUMPS else 0)
    row[isa.I_IMM2] = ins.imm2
    row[isa.I_IMM3] = ins.imm3
    return row


def lower(program):
    """The engine's tables for `program`: (static, ncolors, task_names).

    static.settings is left empty (`settings` fills it per run); task_names
    holds (role name, task name, first instruction) for each task, which
    diagnostics and reports use to name instructions."""
    from .engine import POSITION_FIELDS, SWITCH_POSITIONS, Static
    cfg = program.cfg
    n_pe = program.rows * program.cols
    ncolors = max(len(program.colors), 1)
    # per (color, PE), the engine's queue order: rx, tx of switch position 0,
    # then of position 1
    columns = SWITCH_POSITIONS * POSITION_FIELDS
    route = np.zeros((ncolors, n_pe, columns), np.uint8)
    for color in program.colors:
        masks = program.routes_of(color) + program.routes_of(color, position=1)
        for k, mask in enumerate(masks):
            route[color.index, :, k] = mask.reshape(-1)
    code, imm, descs = [], [], []
    desc_index: dict = {}

    def desc_id(d) -> int:
        if d not in desc_index:
            desc_index[d] = len(descs)
            descs.append(_desc_row(d))
        return desc_index[d]

    task_pc, task_kind, task_color = [], [], []
    role_tasks, role_start, role_entry = [], [0], []
    task_names = []
    for role in program.roles:
        entry = 0
        for t in role.tasks:
            base = len(code)
            task_pc.append(base)
            task_kind.append(t.kind)
            task_color.append(t.color)
            role_tasks.append(len(task_pc) - 1)
            task_names.append((role.name, t.name, base))
            if t.entry:
                entry |= 1 << t.local_index
            for ins in t.code:
                code.append(_instr_row(ins, base, desc_id))
                imm.append(ins.value)
            code.append(list(_END_ROW))
            imm.append(0.0)
        role_start.append(len(role_tasks))
        role_entry.append(entry)
    if not code:
        code.append(list(_END_ROW))
        imm.append(0.0)
    params = np.zeros((n_pe, max(len(program.params), 1)), np.int64)
    for i, p in enumerate(program.params):
        params[:, i] = p.reshape(-1)
    buf_addr = np.full((n_pe, max(len(program.buffers), 1)), -1, np.int64)
    for b in program.buffers:
        buf_addr[:, b.id] = program._buffer_addresses(b)
    flops = np.zeros(64, np.int64)
    for op, f in isa.FLOPS_PER_ELEMENT.items():
        flops[op] = f
    passes = np.ones(64, np.int64)
    if cfg.software_transcendentals:
        for op, n in isa.SOFTWARE_SEQUENCE_PASSES.items():
            passes[op] = n
    roles = np.zeros((len(program.roles) + 1, 3), np.int64)
    roles[:, 0] = role_start
    roles[:-1, 1] = role_entry
    for role in program.roles:
        for t in role.tasks:
            if t.kind == isa.TASK_DATA:
                roles[role.index, 2] |= 1 << t.color
    static = Static(
        settings=np.zeros(0, np.int64),
        route=route.reshape(-1, columns),
        instr=np.array(code, np.int64), instr_imm=np.array(imm, np.float32),
        desc=np.array(descs, np.int64).reshape(-1, isa.DESC_FIELDS),
        task=np.array(list(zip(task_pc, task_kind, task_color)) or [(0, 0, 0)],
                      np.int64),
        role=roles,
        role_tasks=np.array(role_tasks or [0], np.int64),
        pe_role=program.pe_role.reshape(-1).astype(np.int64),
        pe_params=params,
        buf_len=np.array([b.size for b in program.buffers] or [0], np.int64),
        buf_addr=buf_addr,
        half_to_float=np.arange(65536, dtype=np.uint16).view(np.float16).astype(np.float32),
        flops_of_op=flops,
        passes_of_op=passes,
    )
    # Numba compiles the engine once for each tuple of argument types, and an
    # array's memory layout is part of its type: every table is C-ordered
    assert all(a.flags.c_contiguous for a in static), "a table of the engine is not C-ordered"
    return static, ncolors, task_names


# the engines a run may use, by name, in the order of engine.ENGINE_* codes:
# "wavelet" steps every wavelet (the reference); "stream" also advances
# repeating cycles in bulk and gives the same results to the bit
ENGINES = ("wavelet", "stream")


def settings(cfg: WaferConfig, ncolors: int, options: dict) -> np.ndarray:
    """The engine's settings vector for one run of a program with `ncolors` colors
    on `cfg`; `options` are the run's (see `wse.program.RUN_DEFAULTS`)."""
    from . import engine
    s = np.zeros(engine.SETTINGS_FIELDS, np.int64)
    s[engine.C_ROWS] = cfg.rows
    s[engine.C_COLS] = cfg.cols
    s[engine.C_RAMP] = cfg.ramp_latency
    s[engine.C_HOP] = cfg.hop_latency
    s[engine.C_QDEPTH] = cfg.queue_depth
    s[engine.C_IQDEPTH] = cfg.input_queue_depth
    s[engine.C_SLOTS] = cfg.async_slots
    s[engine.C_SCALAR_CYCLES] = cfg.scalar_op_cycles
    s[engine.C_VECTOR_STARTUP] = cfg.vector_startup_cycles
    s[engine.C_DATAPATH] = cfg.datapath_latency
    s[engine.C_TASK_START] = cfg.task_start_cycles
    s[engine.C_IPC] = cfg.instructions_per_cycle
    s[engine.C_SIMD32] = cfg.fmacs_per_cycle_fp32
    s[engine.C_SIMD16] = cfg.fmacs_per_cycle_fp16
    s[engine.C_NCOLORS] = ncolors
    s[engine.C_MAX_CYCLES] = int(options["max_cycles"])
    s[engine.C_DEADLOCK_WINDOW] = int(options["deadlock_window"])
    s[engine.C_TRAP_NAN] = int(bool(options["trap_nan"]))
    s[engine.C_RECORD] = (engine.RECORD_LINKS * options["record_links"]
                          + engine.RECORD_DELIVERIES * options["record_deliveries"]
                          + engine.RECORD_TASKS * options["trace"])
    s[engine.C_ENGINE] = ENGINES.index(options["engine"])
    return s


def column_values(n_pe: int, moves: int) -> int:
    """Room for the values of the column-wise pass's streams (20 bytes each).
    The pass takes its groups of moves a batch at a time (engine.
    COLUMN_BATCH_VALUES), so only a group larger than a batch uses more: such
    a group (a broadcast along a line of the full wafer, say) is taken as many
    periods at a time as fit, and one that does not fit a single period is
    replayed period by period instead."""
    return min(64 * moves, max(1 << 21, 5 * (10 * n_pe + 64)))


def new_state(static, arena: np.ndarray, ncolors: int, cfg: WaferConfig, events: int,
              stream: bool = False):
    """Fresh engine state for `static` over the SRAM bytes in `arena` (used as is),
    with room for `events` recorded events of each kind, and with the stream
    engine's scratch (recorded moves, state signatures) when `stream`."""
    from . import engine
    n_pe = cfg.rows * cfg.cols
    nq = n_pe * ncolors
    depth, idepth = cfg.queue_depth, cfg.input_queue_depth
    i64 = np.int64

    def queues(d):
        q = np.zeros((nq, engine.Q_FIELDS), i64)
        q[:, engine.Q_LAST_POP] = -1
        q[:, engine.Q_HEAD_READY] = engine.INF
        return np.zeros(nq * d, np.float32), np.zeros((nq * d, 2), i64), q

    pe = np.zeros((n_pe, engine.PE_FIELDS), i64)
    for column in (engine.P_TASK, engine.P_STALL_SINCE, engine.P_BUSY_SINCE):
        pe[:, column] = -1
    pe[:, engine.P_WAKE] = engine.INF
    pe[:, engine.P_X] = np.arange(n_pe) % cfg.cols
    pe[:, engine.P_Y] = np.arange(n_pe) // cfg.cols
    pe[:, engine.P_SLEEP] = engine.SLEEP_INPUT      # an idle PE wakes when a wavelet arrives
    slot = np.zeros((n_pe, cfg.async_slots + 1, engine.SLOT_FIELDS), i64)
    slot[:, :, engine.S_INSTR] = -1
    rq_val, rq_entry, rq = queues(depth)
    # the stream engine's scratch. A recording holds every move of up to
    # BULK_PERIOD_MAX cycles, and one that runs out of room is abandoned: with
    # room for ten moves a PE, the shifts of a MeshGEMM step (four streams a
    # PE, about 4.6 moves a PE a cycle, a period of 12 cycles) were never
    # found to repeat. So a recording has room for 12 cycles of about five
    # moves a PE, held to 2^24 moves (24 bytes each) beyond about 280,000 PEs: the
    # full wafer keeps about 22 a PE (a neighbour shift moves 3.5 a PE a
    # cycle). The column-wise pass plans every recorded move. np.zeros maps
    # pages lazily, so only what a run records becomes resident.
    moves = min(engine.BULK_PERIOD_MAX * 5 * n_pe, max(10 * n_pe, 1 << 24)) + 64
    values = column_values(n_pe, moves)
    pq_val, pq_entry, pq = queues(idepth)
    return engine.State(
        sram_f32=arena.view(np.float32), sram_u16=arena.view(np.uint16),
        rq_val=rq_val, rq_entry=rq_entry, rq=rq, pq_val=pq_val, pq_entry=pq_entry, pq=pq,
        pe=pe, regs=np.zeros((n_pe, isa.NUM_REGISTERS), i64),
        wavelet=np.zeros(n_pe, np.float32), slot=slot, switch=np.zeros(nq, i64),
        active=np.zeros((4, (n_pe + 63) // 64), i64), heap=np.zeros((2, 2 * n_pe + 16), i64),
        link_wavelets=np.zeros((n_pe, 4), i64),
        link_events=np.zeros((events, 5), i64), delivery_events=np.zeros((events, 4), i64),
        task_events=np.zeros((events, 4), i64),
        counters=np.zeros(engine.COUNTERS, i64),
        actions=np.zeros((moves if stream else 1, 3), i64),
        # one signature, compared in place (a neighbour shift needs ~75 a PE)
        signature=np.zeros(192 * n_pe + 4096 if stream else 1, i64),
        bulk_rows=np.zeros((4, (n_pe + 63) // 64 if stream else 1), i64),
        bulk_sleep=np.zeros((n_pe, 4) if stream else (1, 4), i64),
        bulk_stall=np.zeros(n_pe if stream else 1, i64),
        bulk_moves=np.zeros((n_pe, cfg.async_slots + 1) if stream else (1, 1), i64),
        col_queue_of=np.full(2 * nq if stream else 1, -1, i64),
        col_queues=np.zeros((2 * moves if stream else 1, engine.COL_QUEUE_FIELDS), i64),
        col_actions=np.zeros((moves if stream else 1, engine.COL_ACTION_FIELDS), i64),
        col_order=np.zeros(moves if stream else 1, i64),
        col_consumers=np.zeros(2 * moves if stream else 1, i64),
        col_val=np.zeros(values if stream else 1, np.float32),
        col_id=np.zeros(values if stream else 1, i64),
        col_ready=np.zeros(values if stream else 1, i64),
        col_group_moves=np.zeros(moves if stream else 1, i64),
        col_group_queues=np.zeros(2 * moves if stream else 1, i64),
        beside=np.zeros((4 * cfg.async_slots + 4 if stream else 1, 3), i64),
    )
