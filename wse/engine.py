"""The engine: one cycle-level loop over routers and PEs (Numba).

Everything here interprets the flat tables that `wse.program` compiles; it
knows nothing about any algorithm. The rules it applies (machine.md):

Fabric
  * One router per PE with ports N, E, S, W, RAMP and, per color, one FIFO of
    `queue_depth` wavelets. Its static route gives an rx set and a tx set.
  * Each cycle a router offers the head wavelet of each non-empty color, in
    round-robin order starting after the last color it granted. A head moves
    when it is ready, every tx port's output link is still free this cycle,
    and every destination queue has a free slot; a multicast moves to all its
    ports in the same cycle or not at all. So a link carries at most one
    wavelet per cycle and nothing is ever dropped.
  * Flow control is credit based: a slot is reserved when a wavelet is sent,
    and the slot a queue frees by sending in cycle t is seen by upstream
    senders from cycle t+1 on. A wavelet sent in cycle t is ready at the next
    router at t + hop_latency; router<->PE transfers take ramp_latency.
  * A wavelet arriving on a port outside the route's rx set is a RouteError.

PEs
  * A PE runs one task at a time on its main thread (slot 0) and up to
    `async_slots` asynchronous vector operations (slots 1..).
  * A memory-only vector operation is computed in one emulation step and
    occupies the PE's datapath for ceil(elements / SIMD width) cycles;
    such operations from different slots are serialised on that datapath.
  * An operation with a fabric operand moves at most one element per cycle,
    stalling while an input queue's head is not ready or the output queue is
    full; a PE injects at most one wavelet per cycle into its ramp.
  * An element processed in cycle t completes at t+1; the run's time is the
    first cycle at which every PE is idle and the fabric is empty.

Time
  * Only routers with queued wavelets and PEs with work are visited; a PE that
    waits on a long computation or on the fabric sleeps until a timer or a
    fabric event wakes it, and when nobody is active the clock jumps to the
    next timer.
"""
from __future__ import annotations

import math
from collections import namedtuple

import numpy as np
from numba import njit

from . import isa
from .isa import (
    D_BUF_OR_COLOR, D_DTYPE, D_KIND, D_LENGTH, D_LENGTH_REG, D_OFFSET,
    D_OFFSET_REG, D_OFFSET_SCALE, D_STRIDE, F32, FABIN, FABOUT, I_A, I_B,
    I_DST, I_IMM, I_IMM2, I_IMM3, I_ON_DONE, I_OP, I_R, I_S, I_SLOT, MEM,
    OP_ACTIVATE, OP_ADD, OP_ADDS, OP_AFFINE, OP_BLT, OP_DOT, OP_END, OP_EXP,
    OP_FILL, OP_FMAC, OP_JUMP, OP_LOOP, OP_MATMUL, OP_MAX, OP_MIN, OP_MODI,
    OP_MOV, OP_MUL, OP_RECIP, OP_RMAX, OP_RSQRT, OP_SCALE, OP_SET, OP_SETP,
    OP_SIGMOID, OP_SUB, OP_SUBS, OP_SUM, OP_TANH, OP_WAIT, PROG_BAD_COLOR, PROG_BOUNDS,
    PROG_UNALLOCATED, RAMP, ROUTE_NO_TX, ROUTE_OFF_GRID, ROUTE_RX_MISMATCH,
    SCALAR_IMMEDIATE, SCALAR_WAVELET, STATUS_CYCLE_LIMIT, STATUS_DEADLOCK,
    STATUS_NAN, STATUS_OK, STATUS_PROGRAM, STATUS_ROUTE, TASK_DATA,
)

INF = np.int64(1) << 62

# Columns of the engine's integer settings vector.
(C_RAMP, C_HOP, C_QDEPTH, C_IQDEPTH, C_SLOTS, C_SCALAR_CYCLES, C_IPC, C_SIMD32,
 C_SIMD16, C_NCOLORS, C_MAX_CYCLES, C_DEADLOCK_WINDOW, C_TRAP_NAN, C_RECORD) = range(14)
SETTINGS_FIELDS = 14
RECORD_LINKS, RECORD_DELIVERIES, RECORD_TASKS = 1, 2, 4

# Status vector: code, pe, color index, port, cycle, detail, detail2.
ST_CODE, ST_PE, ST_COLOR, ST_PORT, ST_CYCLE, ST_DETAIL, ST_DETAIL2 = range(7)

# Counters vector.
(K_NEXT_WAVELET_ID, K_LINK_EVENTS, K_DELIVERY_EVENTS, K_TASK_EVENTS, K_FINISH,
 K_LAST_PROGRESS, K_STEPS_ROUTER, K_STEPS_PE, K_HEAP_SIZE, K_NOW,
 K_ROUTER_LIST_LEN, K_PE_LIST_LEN) = (0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 12)
# the two list lengths (one per cycle parity) sit at K_*_LIST_LEN + (cycle & 1)
COUNTERS = 14

# Everything a compiled program fixes before the run.
Static = namedtuple("Static", [
    "rows", "cols", "settings",
    "route_tx", "route_rx",           # (pes * colors) uint8 port masks
    "instr", "instr_imm",              # (n_instr, INSTR_FIELDS) int64; (n_instr,) float32
    "desc",                            # (n_desc, DESC_FIELDS) int64
    "task_pc", "task_kind", "task_color",   # per task
    "role_task_start", "role_tasks", "role_entry_mask",   # CSR: role -> task ids
    "pe_role", "pe_params",            # (pes,), (pes, n_params)
    "buf_len", "buf_addr",             # (n_buf,) elements; (pes, n_buf) arena byte address or -1
    "half_to_float", "flops_of_op",
])

# Everything the run changes. Python allocates it, so it can be inspected afterwards.
State = namedtuple("State", [
    "sram_f32", "sram_u16",            # two views of one byte arena
    # router queues, index q = pe * colors + color; entries q * depth + k
    "rq_val", "rq_ready", "rq_id", "rq_head", "rq_count", "rq_last_pop",
    "r_nonempty", "r_rr", "r_listed",
    # PE input queues (router -> PE), same indexing
    "pq_val", "pq_ready", "pq_id", "pq_head", "pq_count", "pq_last_pop",
    # PE
    "cur_task", "pc", "pending", "regs", "wavelet", "task_start",
    "slot_instr", "slot_progress", "slot_len", "slot_busy_until", "slot_base",
    "datapath_free", "pe_listed", "pe_sleep", "pe_wake", "stall_since", "busy_since",
    # scheduling
    "r_list_a", "r_list_b", "p_list_a", "p_list_b", "heap_time", "heap_pe",
    # statistics
    "link_wavelets", "ramp_in", "ramp_out", "compute_cycles", "stall_cycles",
    "busy_cycles", "flops", "sram_bytes_accessed",
    # optional event records
    "link_events", "delivery_events", "task_events",
    "counters", "status",
])

SLEEP_INPUT, SLEEP_OUTPUT = 1, 2


# ----------------------------------------------------------------------------
# fp16 storage: values are held as IEEE binary16 bit patterns (uint16).
@njit(cache=True)
def float_to_half_bits(value):
    """Round a float32 value to binary16, nearest-even; returns the bit pattern."""
    v = np.float64(value)
    if v != v:
        return np.uint16(0x7E00)
    sign = 0
    if v < 0.0 or (v == 0.0 and math.copysign(1.0, v) < 0.0):
        sign = 0x8000
    a = abs(v)
    if a == np.inf:
        return np.uint16(sign | 0x7C00)
    if a == 0.0:
        return np.uint16(sign)
    mant, exp = math.frexp(a)        # a = mant * 2**exp, mant in [0.5, 1)
    if exp >= -13:                   # normal binary16 (exponent exp-1 >= -14)
        r = int(np.rint(a * 2.0 ** (11 - exp)))   # 11 significant bits
        if r == 2048:
            r = 1024
            exp += 1
        field = exp - 1 + 15
        if field >= 31:
            return np.uint16(sign | 0x7C00)
        return np.uint16(sign | (field << 10) | (r - 1024))
    r = int(np.rint(a * 2.0 ** 24))  # subnormal: units of 2**-24; 1024 is the smallest normal
    return np.uint16(sign | r)


# ----------------------------------------------------------------------------
# Small helpers (inlined by LLVM).
@njit(cache=True)
def _fail(st, code, pe, color, port, now, detail, detail2):
    if st.status[ST_CODE] == STATUS_OK:
        st.status[ST_CODE] = code
        st.status[ST_PE] = pe
        st.status[ST_COLOR] = color
        st.status[ST_PORT] = port
        st.status[ST_CYCLE] = now
        st.status[ST_DETAIL] = detail
        st.status[ST_DETAIL2] = detail2


@njit(cache=True)
def _list_router(st, r, cycle):
    """Visit router r in `cycle` (now or now + 1)."""
    if st.r_listed[r] == cycle:
        return
    st.r_listed[r] = cycle
    lst = st.r_list_a if (cycle & 1) == 0 else st.r_list_b
    idx = K_ROUTER_LIST_LEN + (cycle & 1)
    lst[st.counters[idx]] = r
    st.counters[idx] += 1


@njit(cache=True)
def _list_pe(st, p, cycle):
    if st.pe_listed[p] == cycle:
        return
    st.pe_listed[p] = cycle
    lst = st.p_list_a if (cycle & 1) == 0 else st.p_list_b
    idx = K_PE_LIST_LEN + (cycle & 1)
    lst[st.counters[idx]] = p
    st.counters[idx] += 1


@njit(cache=True)
def _heap_push(st, t, p):
    n = st.counters[K_HEAP_SIZE]
    if n >= st.heap_time.shape[0]:
        # Drop stale entries; at most one live entry per PE remains, so this fits.
        m = 0
        for i in range(n):
            q = st.heap_pe[i]
            if st.pe_wake[q] == st.heap_time[i]:
                st.heap_time[m] = st.heap_time[i]
                st.heap_pe[m] = q
                m += 1
        n = 0
        for i in range(m):                 # re-heapify by sifting each entry up
            _heap_sift_up(st, i, st.heap_time[i], st.heap_pe[i])
            n += 1
    _heap_sift_up(st, n, t, p)
    st.counters[K_HEAP_SIZE] = n + 1


@njit(cache=True)
def _heap_sift_up(st, i, t, p):
    while i > 0:
        parent = (i - 1) >> 1
        if st.heap_time[parent] <= t:
            break
        st.heap_time[i] = st.heap_time[parent]
        st.heap_pe[i] = st.heap_pe[parent]
        i = parent
    st.heap_time[i] = t
    st.heap_pe[i] = p


@njit(cache=True)
def _heap_pop(st):
    n = st.counters[K_HEAP_SIZE] - 1
    st.counters[K_HEAP_SIZE] = n
    t = st.heap_time[n]
    p = st.heap_pe[n]
    i = 0
    while True:
        child = 2 * i + 1
        if child >= n:
            break
        if child + 1 < n and st.heap_time[child + 1] < st.heap_time[child]:
            child += 1
        if st.heap_time[child] >= t:
            break
        st.heap_time[i] = st.heap_time[child]
        st.heap_pe[i] = st.heap_pe[child]
        i = child
    if n > 0:
        st.heap_time[i] = t
        st.heap_pe[i] = p


@njit(cache=True)
def _finish_at(st, t):
    if t > st.counters[K_FINISH]:
        st.counters[K_FINISH] = t


@njit(cache=True)
def _wake_at(st, p, t, now):
    """Make sure PE p is visited at cycle t (> now)."""
    if t == now + 1:
        _list_pe(st, p, t)
    elif t < st.pe_wake[p]:
        st.pe_wake[p] = t
        _heap_push(st, t, p)


@njit(cache=True)
def _read(S, st, kind, dtype, base, i, stride):
    if dtype == F32:
        return st.sram_f32[base + i * stride]
    return S.half_to_float[st.sram_u16[base + i * stride]]


@njit(cache=True)
def _write(S, st, dtype, base, i, stride, value):
    if dtype == F32:
        st.sram_f32[base + i * stride] = value
    else:
        st.sram_u16[base + i * stride] = float_to_half_bits(value)


@njit(cache=True)
def _apply(op, a, b, s):
    if op == OP_MOV:
        return a
    if op == OP_ADD:
        return a + b
    if op == OP_SUB:
        return a - b
    if op == OP_MUL:
        return a * b
    if op == OP_MAX:
        return a if a >= b or a != a else b
    if op == OP_MIN:
        return a if a <= b or a != a else b
    if op == OP_FMAC:
        return a + b * s
    if op == OP_SCALE:
        return a * s
    if op == OP_ADDS:
        return a + s
    if op == OP_SUBS:
        return a - s
    if op == OP_EXP:
        return np.float32(math.exp(a)) if a < 88.72 else np.float32(np.inf)
    if op == OP_RSQRT:
        x = a + s
        if x > 0:
            return np.float32(1.0 / math.sqrt(x))
        return np.float32(np.inf) if x == 0 else np.float32(np.nan)
    if op == OP_RECIP:
        if a == 0:
            return np.float32(math.copysign(np.inf, a))
        return np.float32(1.0) / a
    if op == OP_TANH:
        return np.float32(math.tanh(a))
    if op == OP_SIGMOID:
        if a >= 0:
            return np.float32(1.0 / (1.0 + math.exp(-a)))
        e = math.exp(a)
        return np.float32(e / (1.0 + e))
    if op == OP_FILL:
        return s
    return np.float32(np.nan)


# ----------------------------------------------------------------------------
# Routers
@njit(cache=True)
def _router_step(S, st, r, now):
    colors = S.settings[C_NCOLORS]
    depth = S.settings[C_QDEPTH]
    idepth = S.settings[C_IQDEPTH]
    hop = S.settings[C_HOP]
    ramp = S.settings[C_RAMP]
    record = S.settings[C_RECORD]
    x = r % S.cols
    y = r // S.cols
    used = 0
    start = st.r_rr[r]
    for k in range(colors):
        c = start + k
        if c >= colors:
            c -= colors
        if (st.r_nonempty[r] >> c) & 1 == 0:
            continue
        q = r * colors + c
        slot = q * depth + st.rq_head[q]
        if st.rq_ready[slot] > now:
            continue
        tx = np.int64(S.route_tx[q])
        if tx == 0:
            _fail(st, STATUS_ROUTE, r, c, -1, now, ROUTE_NO_TX, 0)
            return
        if tx & used:
            continue
        ok = True
        for port in range(5):
            if (tx >> port) & 1 == 0:
                continue
            if port == RAMP:
                if st.pq_count[q] + (1 if st.pq_last_pop[q] == now else 0) >= idepth:
                    ok = False
                    break
                continue
            nx = x + (1 if port == 1 else (-1 if port == 3 else 0))
            ny = y + (1 if port == 2 else (-1 if port == 0 else 0))
            if nx < 0 or ny < 0 or nx >= S.cols or ny >= S.rows:
                _fail(st, STATUS_ROUTE, r, c, port, now, ROUTE_OFF_GRID, 0)
                return
            dq = (ny * S.cols + nx) * colors + c
            into = (port + 2) & 3           # the port it arrives on at the neighbour
            if (S.route_rx[dq] >> into) & 1 == 0:
                _fail(st, STATUS_ROUTE, ny * S.cols + nx, c, into, now + hop,
                      ROUTE_RX_MISMATCH, 0)
                return
            if st.rq_count[dq] + (1 if st.rq_last_pop[dq] == now else 0) >= depth:
                ok = False
                break
        if not ok:
            continue
        value = st.rq_val[slot]
        wid = st.rq_id[slot]
        for port in range(5):
            if (tx >> port) & 1 == 0:
                continue
            if port == RAMP:
                tail = q * idepth + (st.pq_head[q] + st.pq_count[q]) % idepth
                st.pq_val[tail] = value
                st.pq_ready[tail] = now + ramp
                st.pq_id[tail] = wid
                st.pq_count[q] += 1
                st.ramp_in[r] += 1
                if st.pe_sleep[r] & SLEEP_INPUT:
                    st.pe_sleep[r] = 0
                    _list_pe(st, r, now + 1)
                if record & RECORD_DELIVERIES:
                    n_ev = st.counters[K_DELIVERY_EVENTS]
                    if n_ev < st.delivery_events.shape[0]:
                        st.delivery_events[n_ev, 0] = now + ramp
                        st.delivery_events[n_ev, 1] = r
                        st.delivery_events[n_ev, 2] = c
                        st.delivery_events[n_ev, 3] = wid
                    st.counters[K_DELIVERY_EVENTS] = n_ev + 1
                continue
            nx = x + (1 if port == 1 else (-1 if port == 3 else 0))
            ny = y + (1 if port == 2 else (-1 if port == 0 else 0))
            n = ny * S.cols + nx
            dq = n * colors + c
            tail = dq * depth + (st.rq_head[dq] + st.rq_count[dq]) % depth
            st.rq_val[tail] = value
            st.rq_ready[tail] = now + hop
            st.rq_id[tail] = wid
            st.rq_count[dq] += 1
            st.r_nonempty[n] |= np.int64(1) << c
            _list_router(st, n, now + 1)
            st.link_wavelets[r, port] += 1
            if record & RECORD_LINKS:
                n_ev = st.counters[K_LINK_EVENTS]
                if n_ev < st.link_events.shape[0]:
                    st.link_events[n_ev, 0] = now
                    st.link_events[n_ev, 1] = r
                    st.link_events[n_ev, 2] = port
                    st.link_events[n_ev, 3] = c
                    st.link_events[n_ev, 4] = wid
                st.counters[K_LINK_EVENTS] = n_ev + 1
        st.rq_head[q] = (st.rq_head[q] + 1) % depth
        st.rq_count[q] -= 1
        st.rq_last_pop[q] = now
        if st.rq_count[q] == 0:
            st.r_nonempty[r] &= ~(np.int64(1) << c)
        used |= tx
        st.r_rr[r] = c + 1 if c + 1 < colors else 0
        st.counters[K_LAST_PROGRESS] = now
        _finish_at(st, now + 1)
        if st.pe_sleep[r] & SLEEP_OUTPUT:     # our own PE may be waiting for this slot
            st.pe_sleep[r] = 0
            _list_pe(st, r, now + 1)
    if st.r_nonempty[r] != 0:
        _list_router(st, r, now + 1)


# ----------------------------------------------------------------------------
# PEs: operand resolution and vector operations
@njit(cache=True)
def _resolve(S, st, p, d, count, now, ins):
    """Element index (MEM) or queue index (fabric) of descriptor d for `count` elements.

    Returns -1 after recording a program error."""
    kind = S.desc[d, D_KIND]
    colors = S.settings[C_NCOLORS]
    if kind != MEM:
        # a fabric operand's color is fixed, or a per-PE parameter (D_OFFSET_REG)
        param = S.desc[d, D_OFFSET_REG]
        c = S.pe_params[p, param] if param >= 0 else S.desc[d, D_BUF_OR_COLOR]
        if c < 0 or c >= colors:
            _fail(st, STATUS_PROGRAM, p, c, -1, now, PROG_BAD_COLOR, ins)
            return -1
        return p * colors + c
    buf = S.desc[d, D_BUF_OR_COLOR]
    addr = S.buf_addr[p, buf]
    if addr < 0:
        _fail(st, STATUS_PROGRAM, p, -1, -1, now, PROG_UNALLOCATED, ins * 1000 + buf)
        return -1
    offset = S.desc[d, D_OFFSET]
    reg = S.desc[d, D_OFFSET_REG]
    if reg >= 0:
        offset += st.regs[p, reg] * S.desc[d, D_OFFSET_SCALE]
    stride = S.desc[d, D_STRIDE]
    last = offset + (count - 1) * stride if count > 0 else offset
    if offset < 0 or last < 0 or offset >= S.buf_len[buf] or last >= S.buf_len[buf]:
        _fail(st, STATUS_PROGRAM, p, -1, -1, now, PROG_BOUNDS, ins * 1000 + buf)
        st.status[ST_PORT] = offset
        return -1
    elem = 4 if S.desc[d, D_DTYPE] == F32 else 2
    return addr // elem + offset


@njit(cache=True)
def _desc_length(S, st, p, d):
    reg = S.desc[d, D_LENGTH_REG]
    if reg >= 0:
        return st.regs[p, reg]
    return S.desc[d, D_LENGTH]


@njit(cache=True)
def _elem_size(S, d):
    return 4 if S.desc[d, D_DTYPE] == F32 else 2


@njit(cache=True)
def _scalar(S, st, p, ins):
    sd = S.instr[ins, I_S]
    if sd == SCALAR_IMMEDIATE:
        return S.instr_imm[ins]
    if sd == SCALAR_WAVELET:
        return st.wavelet[p]
    base = st.slot_base[p, 0, 3]    # resolved when the op started
    return _read(S, st, MEM, S.desc[sd, D_DTYPE], base, 0, 0)


@njit(cache=True)
def _is_fabric_op(S, ins):
    for f in (I_DST, I_A, I_B):
        d = S.instr[ins, f]
        if d >= 0 and S.desc[d, D_KIND] != MEM:
            return True
    return False


@njit(cache=True)
def _memory_op(S, st, p, s, ins, n, now):
    """Compute a memory-only operation at once; returns its cost in cycles."""
    op = S.instr[ins, I_OP]
    dst = S.instr[ins, I_DST]
    a = S.instr[ins, I_A]
    b = S.instr[ins, I_B]
    bd = st.slot_base[p, s, 0]
    ba = st.slot_base[p, s, 1]
    bb = st.slot_base[p, s, 2]
    trap = S.settings[C_TRAP_NAN]
    simd32 = S.settings[C_SIMD32]
    simd16 = S.settings[C_SIMD16]
    if op == OP_MATMUL:
        m = S.instr[ins, I_IMM]
        kk = S.instr[ins, I_IMM2]
        nn = S.instr[ins, I_IMM3]
        da = S.desc[a, D_DTYPE]
        db = S.desc[b, D_DTYPE]
        dd = S.desc[dst, D_DTYPE]
        A = np.empty((m, kk), np.float32)
        B = np.empty((kk, nn), np.float32)
        for i in range(m):
            for j in range(kk):
                A[i, j] = _read(S, st, MEM, da, ba, i * kk + j, 1)
        transposed = S.instr[ins, I_R] == 1
        for i in range(kk):
            for j in range(nn):
                if transposed:
                    B[i, j] = _read(S, st, MEM, db, bb, j * kk + i, 1)
                else:
                    B[i, j] = _read(S, st, MEM, db, bb, i * nn + j, 1)
        C = np.zeros((m, nn), np.float32)
        for i in range(m):
            for t in range(kk):
                av = A[i, t]
                for j in range(nn):
                    C[i, j] += av * B[t, j]
        for i in range(m):
            for j in range(nn):
                v = _read(S, st, MEM, dd, bd, i * nn + j, 1) + C[i, j]
                if trap and v != v:
                    _fail(st, STATUS_NAN, p, -1, -1, now, ins, i * nn + j)
                _write(S, st, dd, bd, i * nn + j, 1, v)
        fmacs = m * kk * nn
        st.flops[p] += 2 * fmacs
        st.sram_bytes_accessed[p] += (m * kk) * _elem_size(S, a) + (kk * nn) * _elem_size(S, b) \
            + 2 * (m * nn) * _elem_size(S, dst)
        width = simd32 if da == F32 else simd16
        return (fmacs + width - 1) // width
    if op == OP_SUM or op == OP_RMAX or op == OP_DOT:
        da = S.desc[a, D_DTYPE]
        sa = S.desc[a, D_STRIDE]
        acc = np.float32(0.0) if op != OP_RMAX else np.float32(-np.inf)
        for i in range(n):
            va = _read(S, st, MEM, da, ba, i, sa)
            if op == OP_SUM:
                acc += va
            elif op == OP_RMAX:
                if va > acc or va != va:
                    acc = va
            else:
                acc += va * _read(S, st, MEM, S.desc[b, D_DTYPE], bb, i, S.desc[b, D_STRIDE])
        if trap and acc != acc:
            _fail(st, STATUS_NAN, p, -1, -1, now, ins, 0)
        _write(S, st, S.desc[dst, D_DTYPE], bd, 0, 0, acc)
        st.flops[p] += n * S.flops_of_op[op]
        st.sram_bytes_accessed[p] += n * _elem_size(S, a) * (2 if op == OP_DOT else 1)
        width = simd32 if da == F32 else simd16
        return (n + width - 1) // width
    s_val = _scalar(S, st, p, ins)
    dd = S.desc[dst, D_DTYPE]
    sd_ = S.desc[dst, D_STRIDE]
    da = S.desc[a, D_DTYPE] if a >= 0 else F32
    sa = S.desc[a, D_STRIDE] if a >= 0 else 0
    db = S.desc[b, D_DTYPE] if b >= 0 else F32
    sb = S.desc[b, D_STRIDE] if b >= 0 else 0
    for i in range(n):
        va = _read(S, st, MEM, da, ba, i, sa) if a >= 0 else np.float32(0.0)
        vb = _read(S, st, MEM, db, bb, i, sb) if b >= 0 else np.float32(0.0)
        v = _apply(op, va, vb, s_val)
        if trap and v != v:
            _fail(st, STATUS_NAN, p, -1, -1, now, ins, i)
        _write(S, st, dd, bd, i, sd_, v)
    st.flops[p] += n * S.flops_of_op[op]
    operands = 1 + (1 if a >= 0 else 0) + (1 if b >= 0 else 0)
    st.sram_bytes_accessed[p] += n * operands * _elem_size(S, dst)
    width = simd32 if dd == F32 else simd16
    return (n + width - 1) // width


@njit(cache=True)
def _fabric_step(S, st, p, s, now, ramp_used):
    """Move one element of the fabric operation in slot s, if its operands allow.

    Returns 0 if it stalled on input, 1 if it stalled on output, 2 if it moved."""
    ins = st.slot_instr[p, s]
    op = S.instr[ins, I_OP]
    dst = S.instr[ins, I_DST]
    a = S.instr[ins, I_A]
    b = S.instr[ins, I_B]
    idepth = S.settings[C_IQDEPTH]
    depth = S.settings[C_QDEPTH]
    i = st.slot_progress[p, s]
    ka = S.desc[a, D_KIND] if a >= 0 else -1
    kb = S.desc[b, D_KIND] if b >= 0 else -1
    ba = st.slot_base[p, s, 1]
    bb = st.slot_base[p, s, 2]
    bd = st.slot_base[p, s, 0]
    if ka == FABIN:
        if st.pq_count[ba] == 0 or st.pq_ready[ba * idepth + st.pq_head[ba]] > now:
            return 0
    if kb == FABIN:
        if st.pq_count[bb] == 0 or st.pq_ready[bb * idepth + st.pq_head[bb]] > now:
            return 0
    out_fabric = S.desc[dst, D_KIND] == FABOUT
    if out_fabric:
        if ramp_used:
            return 1
        if st.rq_count[bd] + (1 if st.rq_last_pop[bd] == now else 0) >= depth:
            return 1
    if ka == FABIN:
        h = ba * idepth + st.pq_head[ba]
        va = st.pq_val[h]
        st.pq_head[ba] = (st.pq_head[ba] + 1) % idepth
        st.pq_count[ba] -= 1
        st.pq_last_pop[ba] = now
    elif a >= 0:
        va = _read(S, st, MEM, S.desc[a, D_DTYPE], ba, i, S.desc[a, D_STRIDE])
    else:
        va = np.float32(0.0)
    if kb == FABIN:
        h = bb * idepth + st.pq_head[bb]
        vb = st.pq_val[h]
        st.pq_head[bb] = (st.pq_head[bb] + 1) % idepth
        st.pq_count[bb] -= 1
        st.pq_last_pop[bb] = now
    elif b >= 0:
        vb = _read(S, st, MEM, S.desc[b, D_DTYPE], bb, i, S.desc[b, D_STRIDE])
    else:
        vb = np.float32(0.0)
    v = _apply(op, va, vb, _scalar(S, st, p, ins))
    if S.settings[C_TRAP_NAN] and v != v:
        _fail(st, STATUS_NAN, p, -1, -1, now, ins, i)
    if out_fabric:
        colors = S.settings[C_NCOLORS]
        if (S.route_rx[bd] >> RAMP) & 1 == 0:
            _fail(st, STATUS_ROUTE, p, bd - p * colors, RAMP, now + S.settings[C_RAMP],
                  ROUTE_RX_MISMATCH, 0)
            return 1
        tail = bd * depth + (st.rq_head[bd] + st.rq_count[bd]) % depth
        st.rq_val[tail] = v
        st.rq_ready[tail] = now + S.settings[C_RAMP]
        st.rq_id[tail] = st.counters[K_NEXT_WAVELET_ID]
        st.counters[K_NEXT_WAVELET_ID] += 1
        st.rq_count[bd] += 1
        st.r_nonempty[p] |= np.int64(1) << (bd - p * colors)
        _list_router(st, p, now + 1)
        st.ramp_out[p] += 1
    else:
        _write(S, st, S.desc[dst, D_DTYPE], bd, i, S.desc[dst, D_STRIDE], v)
        st.sram_bytes_accessed[p] += _elem_size(S, dst)
    st.flops[p] += S.flops_of_op[op]
    st.compute_cycles[p] += 1
    st.slot_progress[p, s] = i + 1
    if i + 1 == st.slot_len[p, s]:
        st.slot_busy_until[p, s] = now + 1
    st.counters[K_LAST_PROGRESS] = now
    _finish_at(st, now + 1)
    return 2


@njit(cache=True)
def _start_op(S, st, p, s, ins, now):
    """Begin vector instruction `ins` in slot s. Returns False on a program error."""
    op = S.instr[ins, I_OP]
    dst = S.instr[ins, I_DST]
    a = S.instr[ins, I_A]
    b = S.instr[ins, I_B]
    if op == OP_MATMUL:
        m = S.instr[ins, I_IMM]
        k = S.instr[ins, I_IMM2]
        n = S.instr[ins, I_IMM3]
        st.slot_base[p, s, 0] = _resolve(S, st, p, dst, m * n, now, ins)
        st.slot_base[p, s, 1] = _resolve(S, st, p, a, m * k, now, ins)
        st.slot_base[p, s, 2] = _resolve(S, st, p, b, k * n, now, ins)
        count = m * n
    else:
        if op == OP_SUM or op == OP_RMAX or op == OP_DOT:
            count = _desc_length(S, st, p, a)
            st.slot_base[p, s, 0] = _resolve(S, st, p, dst, 1, now, ins)
        else:
            count = _desc_length(S, st, p, dst)
            st.slot_base[p, s, 0] = _resolve(S, st, p, dst, count, now, ins)
        st.slot_base[p, s, 1] = _resolve(S, st, p, a, count, now, ins) if a >= 0 else 0
        st.slot_base[p, s, 2] = _resolve(S, st, p, b, count, now, ins) if b >= 0 else 0
    sd = S.instr[ins, I_S]
    if sd >= 0:
        st.slot_base[p, 0, 3] = _resolve(S, st, p, sd, 1, now, ins)
    if st.status[ST_CODE] != STATUS_OK:
        return False
    st.slot_instr[p, s] = ins
    st.slot_progress[p, s] = 0
    st.slot_len[p, s] = count
    if count <= 0:
        st.slot_busy_until[p, s] = now
        return True
    if _is_fabric_op(S, ins):
        st.slot_busy_until[p, s] = INF
        return True
    cost = _memory_op(S, st, p, s, ins, count, now)
    begin = max(now, st.datapath_free[p])
    st.slot_busy_until[p, s] = begin + cost
    st.datapath_free[p] = begin + cost
    st.compute_cycles[p] += cost
    st.counters[K_LAST_PROGRESS] = now
    _finish_at(st, begin + cost)
    return True


@njit(cache=True)
def _retire(S, st, p, s, now):
    ins = st.slot_instr[p, s]
    st.slot_instr[p, s] = -1
    if s > 0:
        on_done = S.instr[ins, I_ON_DONE]
        if on_done >= 0:
            st.pending[p] |= np.int64(1) << on_done


@njit(cache=True)
def _pick_task(S, st, p, now):
    """Local task with the lowest index first, then data tasks whose wavelet is ready."""
    role = S.pe_role[p]
    first = S.role_task_start[role]
    last = S.role_task_start[role + 1]
    pend = st.pending[p]
    if pend != 0:
        for j in range(last - first):
            if (pend >> j) & 1:
                st.pending[p] = pend & ~(np.int64(1) << j)
                return S.role_tasks[first + j]
    colors = S.settings[C_NCOLORS]
    idepth = S.settings[C_IQDEPTH]
    for j in range(last - first):
        t = S.role_tasks[first + j]
        if S.task_kind[t] == TASK_DATA:
            q = p * colors + S.task_color[t]
            if st.pq_count[q] > 0 and st.pq_ready[q * idepth + st.pq_head[q]] <= now:
                h = q * idepth + st.pq_head[q]
                st.wavelet[p] = st.pq_val[h]
                st.pq_head[q] = (st.pq_head[q] + 1) % idepth
                st.pq_count[q] -= 1
                st.pq_last_pop[q] = now
                return t
    return -1


@njit(cache=True)
def _record_task(S, st, p, now):
    if S.settings[C_RECORD] & RECORD_TASKS:
        n_ev = st.counters[K_TASK_EVENTS]
        if n_ev < st.task_events.shape[0]:
            st.task_events[n_ev, 0] = p
            st.task_events[n_ev, 1] = st.cur_task[p]
            st.task_events[n_ev, 2] = st.task_start[p]
            st.task_events[n_ev, 3] = now
        st.counters[K_TASK_EVENTS] = n_ev + 1


@njit(cache=True)
def _control(S, st, p, ins, op):
    """Execute a control instruction; returns the next pc, or -1 to stay (blocked)."""
    pc = st.pc[p]
    r = S.instr[ins, I_R]
    imm = S.instr[ins, I_IMM]
    if op == OP_SET:
        st.regs[p, r] = imm
    elif op == OP_SETP:
        st.regs[p, r] = S.pe_params[p, imm]
    elif op == OP_AFFINE:
        st.regs[p, r] = st.regs[p, S.instr[ins, I_IMM2]] * imm + S.instr[ins, I_IMM3]
    elif op == OP_MODI:
        st.regs[p, r] = st.regs[p, r] % imm
    elif op == OP_LOOP:
        st.regs[p, r] -= 1
        if st.regs[p, r] > 0:
            return imm
    elif op == OP_JUMP:
        return imm
    elif op == OP_BLT:
        if st.regs[p, r] < S.instr[ins, I_IMM2]:
            return imm
    elif op == OP_ACTIVATE:
        st.pending[p] |= np.int64(1) << imm
    elif op == OP_WAIT:
        slots = S.settings[C_SLOTS]
        if imm >= 0:
            if st.slot_instr[p, imm] >= 0:
                return -1
        else:
            for s in range(1, slots + 1):
                if st.slot_instr[p, s] >= 0:
                    return -1
    return pc + 1


@njit(cache=True)
def _pe_step(S, st, p, now):
    slots = S.settings[C_SLOTS]
    progressed = False
    waiting_in = False
    waiting_out = False
    ramp_used = False
    # 1. Finish what is due, move fabric operations by one element.
    for s in range(slots + 1):
        if st.slot_instr[p, s] < 0:
            continue
        if st.slot_busy_until[p, s] <= now:
            _retire(S, st, p, s, now)
            continue
        if st.slot_busy_until[p, s] == INF:
            result = _fabric_step(S, st, p, s, now, ramp_used)
            if result == 2:
                progressed = True
                if S.desc[S.instr[st.slot_instr[p, s], I_DST], D_KIND] == FABOUT:
                    ramp_used = True
                if st.slot_busy_until[p, s] <= now:     # zero-length guard
                    _retire(S, st, p, s, now)
            elif result == 0:
                waiting_in = True
            else:
                waiting_out = True
    # 2. Run the main thread while it is free.
    budget = S.settings[C_IPC]
    while budget > 0 and st.slot_instr[p, 0] < 0 and st.status[ST_CODE] == STATUS_OK:
        if st.cur_task[p] < 0:
            t = _pick_task(S, st, p, now)
            if t < 0:
                break
            st.cur_task[p] = t
            st.pc[p] = S.task_pc[t]
            st.task_start[p] = now
            if st.busy_since[p] < 0:
                st.busy_since[p] = now
            progressed = True
        ins = st.pc[p]
        op = S.instr[ins, I_OP]
        budget -= 1
        if op == OP_END:
            _record_task(S, st, p, now)
            st.cur_task[p] = -1
            continue
        if op < isa.FIRST_VECTOR_OP:
            nxt = _control(S, st, p, ins, op)
            if nxt < 0:
                break
            st.pc[p] = nxt
            progressed = True
            if S.settings[C_SCALAR_CYCLES] > 0:
                st.slot_instr[p, 0] = ins
                st.slot_busy_until[p, 0] = now + S.settings[C_SCALAR_CYCLES]
                _finish_at(st, now + S.settings[C_SCALAR_CYCLES])
            continue
        s = S.instr[ins, I_SLOT]
        if st.slot_instr[p, s] >= 0:
            break                        # that slot's own state wakes us
        if not _start_op(S, st, p, s, ins, now):
            return
        st.pc[p] = ins + 1
        progressed = True
        if st.slot_busy_until[p, s] == INF:
            result = _fabric_step(S, st, p, s, now, ramp_used)
            if result == 2:
                if S.desc[S.instr[ins, I_DST], D_KIND] == FABOUT:
                    ramp_used = True
            elif result == 0:
                waiting_in = True
            else:
                waiting_out = True
        elif st.slot_busy_until[p, s] <= now:
            _retire(S, st, p, s, now)
    if progressed:
        st.counters[K_LAST_PROGRESS] = now
    # 3. Decide when to look at this PE again.
    wake = INF
    busy = st.cur_task[p] >= 0 or st.pending[p] != 0
    for s in range(slots + 1):
        if st.slot_instr[p, s] >= 0:
            busy = True
            t = st.slot_busy_until[p, s]
            if t < wake:
                wake = t
    if progressed or budget == 0:
        _list_pe(st, p, now + 1)
    elif wake < INF:
        _wake_at(st, p, max(wake, now + 1), now)
    if not progressed and (waiting_in or waiting_out):
        if st.stall_since[p] < 0:
            st.stall_since[p] = now
    elif st.stall_since[p] >= 0:
        st.stall_cycles[p] += now - st.stall_since[p]
        st.stall_since[p] = -1
    sleep = 0
    if waiting_in or not busy:
        sleep |= SLEEP_INPUT
        if waiting_in:
            # a wavelet already on its way wakes nobody: set our own timer
            _wake_for_pending_input(S, st, p, now)
    if waiting_out:
        sleep |= SLEEP_OUTPUT
    st.pe_sleep[p] = sleep
    if not busy and st.busy_since[p] >= 0:
        st.busy_cycles[p] += now - st.busy_since[p]
        st.busy_since[p] = -1
    if not busy:
        # data tasks may still fire: check wavelets already waiting for them
        _wake_for_pending_input(S, st, p, now)


@njit(cache=True)
def _wake_for_pending_input(S, st, p, now):
    colors = S.settings[C_NCOLORS]
    idepth = S.settings[C_IQDEPTH]
    soonest = INF
    for c in range(colors):
        q = p * colors + c
        if st.pq_count[q] > 0:
            t = st.pq_ready[q * idepth + st.pq_head[q]]
            if t < soonest:
                soonest = t
    if soonest < INF:
        _wake_at(st, p, max(soonest, now + 1), now)


# ----------------------------------------------------------------------------
@njit(cache=True)
def run(S, st):
    """Run until every PE is idle and the fabric is empty, or an error.

    Results land in st.status and st.counters; the caller raises errors."""
    max_cycles = S.settings[C_MAX_CYCLES]
    window = S.settings[C_DEADLOCK_WINDOW]
    n_pe = S.rows * S.cols
    now = st.counters[K_NOW]
    # every PE with an entry task starts at cycle `now`
    for p in range(n_pe):
        entry = S.role_entry_mask[S.pe_role[p]]
        if entry != 0:
            st.pending[p] |= entry
            _list_pe(st, p, now)
    st.counters[K_LAST_PROGRESS] = now
    while True:
        cur = now & 1
        # timers due now
        while st.counters[K_HEAP_SIZE] > 0 and st.heap_time[0] <= now:
            t = st.heap_time[0]
            p = st.heap_pe[0]
            _heap_pop(st)
            if st.pe_wake[p] == t:
                st.pe_wake[p] = INF
                _list_pe(st, p, now)
        n_r = st.counters[K_ROUTER_LIST_LEN + cur]
        n_p = st.counters[K_PE_LIST_LEN + cur]
        if n_r == 0 and n_p == 0:
            if st.counters[K_HEAP_SIZE] == 0:
                break
            now = st.heap_time[0]
            continue
        if now >= max_cycles:
            _fail(st, STATUS_CYCLE_LIMIT, -1, -1, -1, now, 0, 0)
            break
        rl = st.r_list_a if cur == 0 else st.r_list_b
        pl = st.p_list_a if cur == 0 else st.p_list_b
        for i in range(n_r):
            _router_step(S, st, rl[i], now)
            if st.status[ST_CODE] != STATUS_OK:
                break
        st.counters[K_STEPS_ROUTER] += n_r
        st.counters[K_ROUTER_LIST_LEN + cur] = 0
        if st.status[ST_CODE] != STATUS_OK:
            break
        for i in range(n_p):
            p = pl[i]
            _pe_step(S, st, p, now)
            if st.status[ST_CODE] != STATUS_OK:
                break
        st.counters[K_STEPS_PE] += n_p
        st.counters[K_PE_LIST_LEN + cur] = 0
        if st.status[ST_CODE] != STATUS_OK:
            break
        if now - st.counters[K_LAST_PROGRESS] > window and st.counters[K_HEAP_SIZE] == 0:
            _fail(st, STATUS_DEADLOCK, -1, -1, -1, now, 1, 0)
            break
        now += 1
    st.counters[K_NOW] = now
    if st.status[ST_CODE] == STATUS_OK:
        _check_quiescent(S, st, now)


@njit(cache=True)
def _check_quiescent(S, st, now):
    """After the loop ends: any unfinished PE or queued wavelet is a deadlock."""
    n_pe = S.rows * S.cols
    slots = S.settings[C_SLOTS]
    colors = S.settings[C_NCOLORS]
    for p in range(n_pe):
        unfinished = st.cur_task[p] >= 0 or st.pending[p] != 0
        for s in range(slots + 1):
            if st.slot_instr[p, s] >= 0:
                unfinished = True
        if unfinished:
            _fail(st, STATUS_DEADLOCK, p, -1, -1, now, 0, 0)
            return
        for c in range(colors):
            q = p * colors + c
            if st.rq_count[q] > 0 or st.pq_count[q] > 0:
                _fail(st, STATUS_DEADLOCK, p, c, -1, now, 2, st.rq_count[q] + st.pq_count[q])
                return
