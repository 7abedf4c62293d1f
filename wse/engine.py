"""The engine: one cycle-level loop over routers and PEs (Numba).

Everything here interprets the flat tables that `wse.lowering` builds; it
knows nothing about any algorithm. The rules it applies (docs/engine.md
numbers them and names the test of each):

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
  * A wavelet arriving on a port outside the route's rx set is a RouteError;
    one that only the route's other switch position accepts waits upstream.
    A router takes its other position once its PE's stream sent with
    advance_switch has put its last wavelet in.

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
  * A PE pays for what it issues: every instruction holds the main thread
    for C_SCALAR_CYCLES; a vector instruction moves its first element
    C_VECTOR_STARTUP cycles after its issue; an element put on the ramp
    leaves the datapath C_DATAPATH cycles later; a task fired by a wavelet
    or activated starts C_TASK_START cycles after it is picked; a
    transcendental charges the passes of its software sequence.

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
from numba import config as numba_config

from . import _numba_inline

_numba_inline.install()     # before anything here compiles (see that module)

if numba_config.DISABLE_JIT:
    def trailing_zeros(bits):
        """The index of the lowest set bit (the JIT's intrinsic has no Python form)."""
        bits = int(bits)
        return (bits & -bits).bit_length() - 1

    def float32_bits(value):
        """The bit pattern of a float32 value, as an unsigned 32-bit integer."""
        return np.uint32(np.float32(value).view(np.uint32))

    def prefetch(array, index):
        """A cache hint: nothing to do without the JIT."""
else:
    from llvmlite import ir as llvm_ir
    from numba.core import cgutils
    from numba.core import types as numba_types
    from numba.cpython.unsafe.numbers import trailing_zeros
    from numba.extending import intrinsic

    @intrinsic
    def float32_bits(typingctx, value):
        """The bit pattern of a float32 value, as an unsigned 32-bit integer
        (a register bitcast: no array, no allocation)."""
        def codegen(context, builder, signature, args):
            return builder.bitcast(args[0], llvm_ir.IntType(32))
        return numba_types.uint32(numba_types.float32), codegen

    @intrinsic
    def prefetch(typingctx, array, index):
        """Hint that the cache line holding flat element `index` of the
        C-contiguous `array` will be read soon (llvm.prefetch; no effect on
        any value, and no fault whatever the index)."""
        def codegen(context, builder, signature, args):
            data = context.make_array(signature.args[0])(context, builder, args[0]).data
            address = builder.bitcast(builder.gep(data, [args[1]]), cgutils.voidptr_t)
            i32 = llvm_ir.IntType(32)
            hint = cgutils.get_or_insert_function(
                builder.module, llvm_ir.FunctionType(llvm_ir.VoidType(),
                                                     [cgutils.voidptr_t] + [i32] * 3),
                "llvm.prefetch.p0")
            # read, keep in every cache level, data
            builder.call(hint, [address, llvm_ir.Constant(i32, 0), llvm_ir.Constant(i32, 3),
                                llvm_ir.Constant(i32, 1)])
            return context.get_dummy_value()
        return numba_types.void(array, numba_types.int64), codegen

from .isa import (
    D_ADVANCE, D_BUF_OR_COLOR, D_DTYPE, D_KIND, D_LENGTH, D_LENGTH_REG, D_OFFSET,
    D_OFFSET_REG, D_OFFSET_SCALE, D_STRIDE, D_WRAP, F16, F32, FABIN, FABOUT, FIRST_VECTOR_OP, I_A,
    I_B, I_DST, I_IMM, I_IMM2, I_IMM3, I_ON_DONE, I_OP, I_R, I_S, I_SLOT, MEM,
    OP_ACTIVATE, OP_ADD, OP_ADDS, OP_AFFINE, OP_BLT, OP_DOT, OP_END, OP_EXP,
    OP_FILL, OP_FMAC, OP_JUMP, OP_LOOP, OP_MAX, OP_MIN, OP_MODI,
    OP_MOV, OP_MUL, OP_RECIP, OP_RMAX, OP_RSQRT, OP_SCALE, OP_SET, OP_SETP,
    OP_SIGMOID, OP_SUB, OP_SUBS, OP_SUM, OP_TANH, OP_WAIT, DEADLOCK_LEFTOVER, DEADLOCK_STALLED,
    DEADLOCK_UNFINISHED, PROG_BAD_COLOR, PROG_BOUNDS, PROG_UNALLOCATED, RAMP, ROUTE_NO_TX, ROUTE_OFF_GRID, ROUTE_RX_MISMATCH,
    SCALAR_IMMEDIATE, SCALAR_WAVELET, STATUS_CYCLE_LIMIT, STATUS_DEADLOCK,
    STATUS_NAN, STATUS_OK, STATUS_PROGRAM, STATUS_ROUTE, TASK_DATA,
)

INF = np.int64(1) << 62

# The state lives in a few flat arrays (few arguments keep Numba's compile time
# low); these name their columns.

# settings: the run's integer parameters
(C_ROWS, C_COLS, C_RAMP, C_HOP, C_QDEPTH, C_IQDEPTH, C_SLOTS, C_SCALAR_CYCLES, C_IPC,
 C_SIMD32, C_SIMD16, C_NCOLORS, C_MAX_CYCLES, C_DEADLOCK_WINDOW, C_TRAP_NAN,
 C_RECORD, C_VECTOR_STARTUP, C_DATAPATH, C_TASK_START, C_ENGINE) = range(20)
SETTINGS_FIELDS = 20
ENGINE_WAVELET, ENGINE_STREAM = 0, 1      # C_ENGINE: step every wavelet, or also advance in bulk
RECORD_LINKS, RECORD_DELIVERIES, RECORD_TASKS = 1, 2, 4

# counters: run-wide numbers, then the status of the run
(K_NEXT_WAVELET_ID, K_LINK_EVENTS, K_DELIVERY_EVENTS, K_TASK_EVENTS, K_FINISH,
 K_LAST_PROGRESS, K_STEPS_ROUTER, K_STEPS_PE, K_HEAP_SIZE, K_NOW) = range(10)
K_ROUTER_LIST_LEN, K_PE_LIST_LEN = 10, 12     # two each: one per cycle parity
# The status: ST_CODE is an isa.STATUS_* code and ST_KIND the kind of failure
# within it (isa.ROUTE_*, PROG_*, DEADLOCK_*); the other fields hold what the
# failure involves, -1 (ST_COUNT: 0) where it involves none: the PE, the
# color index, the router port, the cycle, the instruction, the buffer id, an
# element index (out of a buffer's bounds, or the one that became NaN) and a
# count (wavelets left in the fabric).
(ST_CODE, ST_KIND, ST_PE, ST_COLOR, ST_PORT, ST_CYCLE, ST_INSTR, ST_BUF, ST_ELEMENT,
 ST_COUNT) = range(14, 24)
K_RUN_START = 24      # the cycle the run began: tasks picked then are already running
# Bulk advance (the stream engine): instructions issued and tasks picked, timers
# set, whether the cycle's moves are being recorded and how many were, and what
# bulk advance did (cycles, wavelet-hops, attempts, and replayed moves that found
# their operands not as recorded: always 0 unless the periodicity check is wrong)
# (K_BULK_COLUMNS: bulk cycles advanced column-wise)
(K_ISSUES, K_HEAP_PUSHES, K_RECORDING, K_ACTIONS, K_BULK_CYCLES, K_BULK_HOPS,
 K_BULK_ATTEMPTS, K_BULK_MISMATCH, K_TIMERS_FIRED, K_BULK_COLUMNS) = range(25, 35)
# Running ahead (the stream engine): the latest progress a PE made ahead of the
# clock, and how many of its steps were taken ahead
K_PROGRESS_AHEAD, K_AHEAD_STEPS = 35, 36
COUNTERS = 37

# pe: one row per PE (and its router); the fields every step touches come first
(P_TASK, P_PC, P_PENDING, P_SLOTS_BUSY, P_SLEEP, P_R_NONEMPTY, P_R_RR, P_SLOT_RR,
 P_WAKE, P_STALL_SINCE, P_BUSY_SINCE, P_DATAPATH_FREE, P_TASK_START, P_COMPUTE, P_FLOPS,
 P_SRAM_BYTES, P_RAMP_IN, P_RAMP_OUT, P_STALL, P_BUSY, P_X, P_Y) = range(22)
# P_MAIN_AT (the stream engine): 0, or the cycle of the main thread's next
# step while it has run ahead beside the PE's fabric operations (its state is
# then that cycle's; the PE's steps before it move the slots only)
P_MAIN_AT = 22
# P_IN_NONEMPTY: bitmask of the colors whose input queue (router to PE) holds a
# wavelet, so a PE going to sleep looks at those alone (_wake_for_queued_input);
# every push and pop keeps it, replays included, and a column-wise advance
# leaves the counts as they were
P_IN_NONEMPTY = 23
PE_FIELDS = 24     # three cache lines
# P_SLOTS_BUSY: bitmask of slots holding an operation; P_SLOT_RR: whose turn at the ramp

# slot: per PE and slot (0 = main thread, 1.. = asynchronous operations)
(S_INSTR, S_PROGRESS, S_LEN, S_BUSY_UNTIL, S_BASE_DST, S_BASE_A, S_BASE_B,
 S_BASE_S, S_START) = range(9)
SLOT_FIELDS = 9
# an instruction's operands (dst, a, b, scalar) and a slot's bases for them
# are walked as I_DST + f and S_BASE_DST + f
assert (I_A, I_B, I_S) == (I_DST + 1, I_DST + 2, I_DST + 3)
assert (S_BASE_A, S_BASE_B, S_BASE_S) == (S_BASE_DST + 1, S_BASE_DST + 2, S_BASE_DST + 3)
# S_START: the first cycle a fabric operation may move an element (issue + start-up)

# queues (router queues and PE input queues), index q = color * pes + pe
# (_queue): the routers a cycle steps are listed in index order and a stream
# runs along a line of them on one color, so consecutive steps read adjacent
# queue rows, entries and values.
# Q_HEAD_READY repeats the head entry's ready time (INF when empty) so that
# the question every step asks, "is a wavelet ready?", reads one row.
Q_HEAD, Q_COUNT, Q_LAST_POP, Q_HEAD_READY = range(4)
Q_FIELDS = 4
E_READY, E_ID = range(2)

Static = namedtuple("Static", [
    "settings",
    "route",                 # (colors * pes, 4) uint8: rx, tx port masks of switch
                             # position 0, then of position 1 (0, 0: no second position)
    "instr", "instr_imm",    # (n_instr, INSTR_FIELDS) int64; (n_instr,) float32
    "desc",                  # (n_desc, DESC_FIELDS) int64
    "task",                  # (n_tasks, 3): first pc, kind, color
    "role",                  # (n_roles + 1, 3): first index into role_tasks, entry-task mask,
                             # mask of the colors its data tasks listen to
    "role_tasks",            # task ids, role by role
    "pe_role", "pe_params",  # (pes,), (pes, n_params)
    "buf_len", "buf_addr",   # (n_buf,) elements; (pes, n_buf) arena byte address or -1
    "half_to_float", "flops_of_op",
    "passes_of_op",          # vector instructions in an op's software sequence (exp: several)
])
T_PC, T_KIND, T_COLOR = range(3)
R_FIRST, R_ENTRY, R_DATA_COLORS = range(3)
RX, TX = range(2)      # columns of a switch position's (rx, tx) pair in `route`
POSITION_FIELDS, SWITCH_POSITIONS = 2, 2   # `route` holds 2 x 2 columns per (PE, color)

State = namedtuple("State", [
    "sram_f32", "sram_u16",            # two views of one byte arena
    "rq_val", "rq_entry", "rq",        # router queues: values, (ready, id), (head, count, last pop)
    "pq_val", "pq_entry", "pq",        # PE input queues, same layout
    "pe", "regs", "wavelet", "slot",
    "switch",                          # (colors * pes,) the switch position of each route
    "active",                          # (4, pes / 64) bitmaps: routers (even, odd cycle), PEs (even, odd)
    "heap",                            # (2, capacity): wake time, PE
    "link_wavelets",                   # (pes, 4): wavelets sent out N, E, S, W
    "link_events", "delivery_events", "task_events",
    "counters",
    # the stream engine's scratch (length 1 for the wavelet engine):
    "actions",                         # (capacity, 3): the moves of the recorded cycle
    "signature",                       # (capacity,) the periodic state of the recorded cycle
    "bulk_rows",                       # (4, pes / 64) bitmaps: routers and PEs listed when
                                       # recording began; the watched set; those listed since
    "bulk_sleep",                      # (pes, 4) their sleep flags, non-empty colors and
                                       # round-robin pointers then
    "bulk_stall",                      # (pes,) their stall cycles when recording began
    "bulk_moves",                      # (pes, slots + 1) elements a slot moves per period
    # column-wise advance: queue index -> local queue (router queues, then PE
    # queues), the local queues, the moves, their order, consumers by queue,
    # and the streams' values, wavelet ids and ready times
    "col_queue_of", "col_queues", "col_actions", "col_order", "col_consumers",
    "col_val", "col_id", "col_ready",
    "col_group_moves", "col_group_queues",  # the moves and queues, group by group
    "beside",                          # (4 * slots, 3): SRAM bytes (first, last, written)
                                       # the fabric operations of a PE whose main thread
                                       # runs ahead beside them have still to touch
])

# What starting a vector operation reads and writes (_start_op). A call that is
# not inlined receives every array of its tuples field by field (data pointer,
# shape, strides: about 400 words for Static and State), which cost more
# than the work of a short vector instruction; the start is the hottest such
# call, so it gets only these.
OpStatic = namedtuple("OpStatic", [
    "settings", "instr", "instr_imm", "desc", "pe_params", "buf_len", "buf_addr",
    "half_to_float", "flops_of_op", "passes_of_op"])
OpState = namedtuple("OpState", [
    "sram_f32", "sram_u16", "pe", "regs", "wavelet", "slot", "counters"])

SLEEP_INPUT, SLEEP_OUTPUT = 1, 2
# what a recorded cycle did: a router's queue or a PE's fabric slot moved an
# element, a PE set a timer (so many cycles ahead), the cycle ended
ACTION_ROUTER, ACTION_FABRIC, ACTION_TIMER, ACTION_CYCLE_END = 0, 1, 2, 3

# what one step of a fabric operation did (MOVED and above: it moved an element)
WAIT_INPUT, WAIT_OUTPUT, MOVED, MOVED_ON_RAMP = 0, 1, 2, 3


# ----------------------------------------------------------------------------
# fp16 storage: values are held as IEEE binary16 bit patterns (uint16).
@njit(cache=True, _nrt=False, inline='always')
def float_to_half_bits(value):
    """Round a float32 value to binary16, nearest-even; returns the bit pattern
    (any NaN as 0x7E00). Integer work on the float32's bits: the engine
    converts every fp16 element it writes, so no libm calls."""
    bits = np.int64(float32_bits(np.float32(value)))
    sign = (bits >> 16) & 0x8000
    field = (bits >> 23) & 0xFF
    if field == 0xFF:
        return np.uint16(0x7E00) if bits & 0x7FFFFF else np.uint16(sign | 0x7C00)
    e = field - 127                          # value = 1.m * 2**e (zero and float32
    if e < -25:                              # subnormals lie far below 2**-25)
        return np.uint16(sign)
    if e > 15:
        return np.uint16(sign | 0x7C00)
    significand = (bits & 0x7FFFFF) | 0x800000          # 24 bits
    # keep 11 significant bits of a normal binary16; a subnormal keeps those
    # above 2**-24
    shift = 13 if e >= -14 else -1 - e
    # nearest-even without a branch (a data-dependent branch is mispredicted
    # half the time): adding half - 1, and 1 more when the kept part is odd,
    # carries into the kept bits exactly when the rest is above half or a tie
    # to round to even
    half = np.int64(1) << (shift - 1)
    kept = (significand + half - 1 + ((significand >> shift) & 1)) >> shift
    if e < -14:
        return np.uint16(sign | kept)       # 1024 (carried) is the smallest normal
    # a carry out of the significand (kept = 2048) steps the exponent field
    magnitude = ((e + 15) << 10) + kept - 1024
    return np.uint16(sign | min(magnitude, 0x7C00))


# ----------------------------------------------------------------------------
# Bookkeeping helpers: they take only the arrays they touch.
#
# Compile time: Numba compiles a function that is not inlined once for each
# tuple of argument types it is called with, and a constant argument (a
# literal, or a module constant) is a type of its own. So calls to such
# functions pass int64 values (np.int64(0), not 0), and the small helpers
# called with constants are inlined.
@njit(cache=True, _nrt=False, inline='always')
def _fail(counters, code, kind, pe, color, port, now, instr=-1, buf=-1, element=-1, count=0):
    """Record the run's first failure in the status fields (ST_*); later ones are ignored."""
    if counters[ST_CODE] == STATUS_OK:
        counters[ST_CODE] = code
        counters[ST_KIND] = kind
        counters[ST_PE] = pe
        counters[ST_COLOR] = color
        counters[ST_PORT] = port
        counters[ST_CYCLE] = now
        counters[ST_INSTR] = instr
        counters[ST_BUF] = buf
        counters[ST_ELEMENT] = element
        counters[ST_COUNT] = count


@njit(cache=True, _nrt=False, inline='always')
def _enlist(active, counters, first_row, length_at, who, cycle):
    """Visit `who` (a router or a PE, by the rows given) in `cycle`."""
    row = first_row + (cycle & 1)
    word = who >> 6
    bit = np.int64(1) << (who & 63)
    if active[row, word] & bit == 0:
        active[row, word] |= bit
        counters[length_at + (cycle & 1)] += 1


@njit(cache=True, _nrt=False)
def _list_router(active, counters, r, cycle):
    _enlist(active, counters, 0, K_ROUTER_LIST_LEN, r, cycle)


@njit(cache=True, _nrt=False)
def _list_pe(active, counters, p, cycle):
    _enlist(active, counters, 2, K_PE_LIST_LEN, p, cycle)


@njit(cache=True, _nrt=False, inline='always')
def _heap_sift_up(heap, i, t, p):
    while i > 0:
        parent = (i - 1) >> 1
        if heap[0, parent] <= t:
            break
        heap[0, i] = heap[0, parent]
        heap[1, i] = heap[1, parent]
        i = parent
    heap[0, i] = t
    heap[1, i] = p


@njit(cache=True, _nrt=False)
def _heap_push(heap, counters, pe, t, p):
    n = counters[K_HEAP_SIZE]
    if n >= heap.shape[1]:
        # Drop stale entries; at most one live entry per PE remains, so this fits.
        m = 0
        for i in range(n):
            q = heap[1, i]
            if pe[q, P_WAKE] == heap[0, i]:
                _heap_sift_up(heap, m, heap[0, i], q)
                m += 1
        n = m
    _heap_sift_up(heap, n, t, p)
    counters[K_HEAP_SIZE] = n + 1
    counters[K_HEAP_PUSHES] += 1


@njit(cache=True, _nrt=False)
def _heap_pop(heap, counters):
    n = counters[K_HEAP_SIZE] - 1
    counters[K_HEAP_SIZE] = n
    t = heap[0, n]
    p = heap[1, n]
    i = 0
    while True:
        child = 2 * i + 1
        if child >= n:
            break
        if child + 1 < n and heap[0, child + 1] < heap[0, child]:
            child += 1
        if heap[0, child] >= t:
            break
        heap[0, i] = heap[0, child]
        heap[1, i] = heap[1, child]
        i = child
    if n > 0:
        heap[0, i] = t
        heap[1, i] = p


@njit(cache=True, _nrt=False)
def _wake_at(active, heap, counters, pe, p, t, now):
    """Make sure PE p is visited at cycle t (> now)."""
    if t == now + 1:
        _list_pe(active, counters, p, t)
    elif t < pe[p, P_WAKE]:
        pe[p, P_WAKE] = t
        _heap_push(heap, counters, pe, t, p)


@njit(cache=True, _nrt=False)
def _wake(st, p, t, now):
    """_wake_at for a PE's own step; a timer it sets is recorded when recording."""
    pushes = st.counters[K_HEAP_PUSHES]
    _wake_at(st.active, st.heap, st.counters, st.pe, p, t, now)
    if st.counters[K_RECORDING] and st.counters[K_HEAP_PUSHES] != pushes:
        _record(st.actions, st.counters, ACTION_TIMER, p, t - now)


@njit(cache=True, _nrt=False)
def _progress(counters, now, done_at):
    """Something moved or computed in cycle `now`; it completes at `done_at`."""
    counters[K_LAST_PROGRESS] = now
    if done_at > counters[K_FINISH]:
        counters[K_FINISH] = done_at


@njit(cache=True, _nrt=False, inline='always')
def _last_progress(counters, now):
    """The last cycle up to `now` in which something progressed, counting the
    progress of PEs that ran ahead (see _run_ahead) at the cycles it was made."""
    return max(counters[K_LAST_PROGRESS], min(counters[K_PROGRESS_AHEAD], now))


@njit(cache=True, _nrt=False, inline='always')
def _record(actions, counters, kind, who, which):
    """Note a move of the cycle being recorded (a router's color, a PE's slot)."""
    n = counters[K_ACTIONS]
    if n < actions.shape[0]:
        actions[n, 0] = kind
        actions[n, 1] = who
        actions[n, 2] = which
    counters[K_ACTIONS] = n + 1


@njit(cache=True, _nrt=False, inline='always')
def _ring(i, depth):
    """i mod depth for 0 <= i < 2 depth (a queue position; avoids a division)."""
    return i - depth if i >= depth else i


@njit(cache=True, _nrt=False, inline='always')
def _next_slot(i, depth):
    """The index after i on a ring of `depth` (a queue's slots, a wrapping
    operand's elements); with depth 0 it never wraps."""
    return 0 if i + 1 == depth else i + 1


@njit(cache=True, _nrt=False, inline='always')
def _queue(cfg, pe, color):
    """The index of PE `pe`'s queue of `color` (router, PE input, route, switch)."""
    return color * (cfg[C_ROWS] * cfg[C_COLS]) + pe


@njit(cache=True, _nrt=False, inline='always')
def _refresh_head_ready(queues, entries, q, depth):
    """Set queue q's Q_HEAD_READY from its head entry (INF when empty)."""
    queues[q, Q_HEAD_READY] = entries[q * depth + queues[q, Q_HEAD], E_READY] \
        if queues[q, Q_COUNT] > 0 else INF


@njit(cache=True, _nrt=False)
def _pop_input(pq_val, pq_entry, pq, pe, p, c, q, depth, now):
    """Take the head wavelet of PE p's input queue q, of color c (the caller
    checked it is ready)."""
    value = pq_val[q * depth + pq[q, Q_HEAD]]
    pq[q, Q_HEAD] = _next_slot(pq[q, Q_HEAD], depth)
    pq[q, Q_COUNT] -= 1
    if pq[q, Q_COUNT] == 0:
        pe[p, P_IN_NONEMPTY] &= ~(np.int64(1) << c)
    pq[q, Q_LAST_POP] = now
    _refresh_head_ready(pq, pq_entry, q, depth)
    return value


@njit(cache=True, _nrt=False, inline='always')
def _read(f32, u16, half_to_float, dtype, index):
    if dtype == F32:
        return f32[index]
    return half_to_float[u16[index]]


@njit(cache=True, _nrt=False, inline='always')
def _write(f32, u16, dtype, index, value):
    if dtype == F32:
        f32[index] = value
    else:
        u16[index] = float_to_half_bits(value)


@njit(cache=True, _nrt=False, inline='always')
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
        # NaN fails every comparison, so it reaches math.exp and stays NaN; the
        # guard only keeps pure Python (NUMBA_DISABLE_JIT) from an OverflowError:
        # exp(89) already exceeds float32 and rounds to inf in the cast
        return np.float32(np.inf) if a >= 89.0 else np.float32(math.exp(a))
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
@njit(cache=True, _nrt=False, inline='always')
def _router_step(S, st, r, now):
    cfg = S.settings
    rows, cols = cfg[C_ROWS], cfg[C_COLS]
    depth, idepth, hop = cfg[C_QDEPTH], cfg[C_IQDEPTH], cfg[C_HOP]
    pe = st.pe
    x = pe[r, P_X]
    y = pe[r, P_Y]
    used = 0
    # the non-empty colors in round-robin order: from the pointer up, then the
    # ones below it (a move here only empties the color it moves)
    bits, below = _from_pointer(pe[r, P_R_NONEMPTY], pe[r, P_R_RR])
    while bits != 0 or below != 0:
        if bits == 0:
            bits, below = below, np.int64(0)
        c = trailing_zeros(bits)
        bits &= ~(np.int64(1) << c)
        q = _queue(cfg, r, c)
        if st.rq[q, Q_HEAD_READY] > now:
            continue
        head = q * depth + st.rq[q, Q_HEAD]
        tx = np.int64(S.route[q, POSITION_FIELDS * st.switch[q] + TX])
        if tx == 0:
            _fail(st.counters, STATUS_ROUTE, ROUTE_NO_TX, r, c, -1, now)
            return
        if tx & used:
            continue
        ok = True
        for port in range(5):
            if (tx >> port) & 1 == 0:
                continue
            if port == RAMP:
                if st.pq[q, Q_COUNT] + (st.pq[q, Q_LAST_POP] == now) >= idepth:
                    ok = False
                    break
                continue
            nx = x + (1 if port == 1 else (-1 if port == 3 else 0))
            ny = y + (1 if port == 2 else (-1 if port == 0 else 0))
            if nx < 0 or ny < 0 or nx >= cols or ny >= rows:
                _fail(st.counters, STATUS_ROUTE, ROUTE_OFF_GRID, r, c, port, now)
                return
            dq = _queue(cfg, ny * cols + nx, c)
            into = (port + 2) & 3           # the port it arrives on at the neighbour
            admits = _admits(S, st, dq, into)
            if admits < 0:
                _fail(st.counters, STATUS_ROUTE, ROUTE_RX_MISMATCH, ny * cols + nx, c, into,
                      now + hop)
                return
            if admits == 0:              # its switch accepts this port only later
                ok = False
                break
            if st.rq[dq, Q_COUNT] + (st.rq[dq, Q_LAST_POP] == now) >= depth:
                ok = False
                break
        if not ok:
            continue
        _router_move(S, st, r, c, q, head, tx, now, True)
        used |= tx
        if st.counters[K_RECORDING]:
            _record(st.actions, st.counters, ACTION_ROUTER, r, c)
    if pe[r, P_R_NONEMPTY] != 0:
        _list_router(st.active, st.counters, r, now + 1)


@njit(cache=True, _nrt=False, inline='always')
def _router_move(S, st, r, c, q, head, tx, now, full):
    """Move the head wavelet of router queue q (color c of router r) to every
    port of `tx`; the caller checked that the links are free, the destinations
    have room and their routes admit it. Not `full` (a lean replay, with no
    links or deliveries recorded): values, queue slots, ready times, ids and
    counts only; listings, wake-ups, non-empty bits and the round-robin
    pointer are the period's, set after the replay."""
    cfg = S.settings
    cols, colors = cfg[C_COLS], cfg[C_NCOLORS]
    depth, idepth, hop, ramp = cfg[C_QDEPTH], cfg[C_IQDEPTH], cfg[C_HOP], cfg[C_RAMP]
    record = cfg[C_RECORD]
    pe = st.pe
    x = pe[r, P_X]
    y = pe[r, P_Y]
    value = st.rq_val[head]
    wid = st.rq_entry[head, E_ID]
    for port in range(5):
        if (tx >> port) & 1 == 0:
            continue
        if port == RAMP:
            tail = q * idepth + _ring(st.pq[q, Q_HEAD] + st.pq[q, Q_COUNT], idepth)
            st.pq_val[tail] = value
            st.pq_entry[tail, E_READY] = now + ramp
            st.pq_entry[tail, E_ID] = wid
            if st.pq[q, Q_COUNT] == 0:
                st.pq[q, Q_HEAD_READY] = now + ramp
                pe[r, P_IN_NONEMPTY] |= np.int64(1) << c
            st.pq[q, Q_COUNT] += 1
            pe[r, P_RAMP_IN] += 1
            if not full:
                continue
            if pe[r, P_SLEEP] & SLEEP_INPUT:
                pe[r, P_SLEEP] = 0
                _list_pe(st.active, st.counters, r, now + 1)
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
        n = ny * cols + nx
        dq = _queue(cfg, n, c)
        tail = dq * depth + _ring(st.rq[dq, Q_HEAD] + st.rq[dq, Q_COUNT], depth)
        st.rq_val[tail] = value
        st.rq_entry[tail, E_READY] = now + hop
        st.rq_entry[tail, E_ID] = wid
        if st.rq[dq, Q_COUNT] == 0:
            st.rq[dq, Q_HEAD_READY] = now + hop
        st.rq[dq, Q_COUNT] += 1
        st.link_wavelets[r, port] += 1
        if not full:
            continue
        pe[n, P_R_NONEMPTY] |= np.int64(1) << c
        _list_router(st.active, st.counters, n, now + 1)
        if record & RECORD_LINKS:
            n_ev = st.counters[K_LINK_EVENTS]
            if n_ev < st.link_events.shape[0]:
                st.link_events[n_ev, 0] = now
                st.link_events[n_ev, 1] = r
                st.link_events[n_ev, 2] = port
                st.link_events[n_ev, 3] = c
                st.link_events[n_ev, 4] = wid
            st.counters[K_LINK_EVENTS] = n_ev + 1
    st.rq[q, Q_HEAD] = _next_slot(st.rq[q, Q_HEAD], depth)
    st.rq[q, Q_COUNT] -= 1
    st.rq[q, Q_LAST_POP] = now
    _refresh_head_ready(st.rq, st.rq_entry, q, depth)
    _progress(st.counters, now, now + 1)
    if not full:
        return
    if st.rq[q, Q_COUNT] == 0:
        pe[r, P_R_NONEMPTY] &= ~(np.int64(1) << c)
    pe[r, P_R_RR] = c + 1 if c + 1 < colors else 0
    if pe[r, P_SLEEP] & SLEEP_OUTPUT:     # our own PE may be waiting for this slot
        pe[r, P_SLEEP] = 0
        _list_pe(st.active, st.counters, r, now + 1)


# ----------------------------------------------------------------------------
# PEs: operands and vector operations
@njit(cache=True, _nrt=False, inline='always')
def _admits(S, st, q, port):
    """Whether the route of queue q takes a wavelet arriving from `port`: 1 in
    its present switch position, 0 only in its other position (the sender
    waits), -1 in none (a route error)."""
    pos = st.switch[q]
    if (S.route[q, POSITION_FIELDS * pos + RX] >> port) & 1:
        return 1
    if (S.route[q, POSITION_FIELDS * (1 - pos) + RX] >> port) & 1:
        return 0
    return -1


@njit(cache=True, _nrt=False, inline='always')
def _element(S, d, i):
    """Offset of element i of memory descriptor d from its base (a wrapping
    descriptor restarts every D_WRAP elements)."""
    wrap = S.desc[d, D_WRAP]
    return (i % wrap if wrap > 0 else i) * S.desc[d, D_STRIDE]


OPERAND_BAD_COLOR, OPERAND_UNALLOCATED, OPERAND_OUT_OF_BOUNDS = -1, -2, -3


@njit(cache=True, _nrt=False, inline='always')
def _fabric_color(S, p, d):
    """The color of fabric operand d on PE p: fixed, or a per-PE parameter
    (D_OFFSET_REG)."""
    param = S.desc[d, D_OFFSET_REG]
    return S.pe_params[p, param] if param >= 0 else S.desc[d, D_BUF_OR_COLOR]


@njit(cache=True, _nrt=False, inline='always')
def _operand(S, st, p, d, count):
    """Element index (memory) or queue index (fabric) of descriptor d over
    `count` elements on PE p, or an OPERAND_* code (< 0) saying why it has none."""
    if S.desc[d, D_KIND] != MEM:
        c = _fabric_color(S, p, d)
        if c < 0 or c >= S.settings[C_NCOLORS]:
            return OPERAND_BAD_COLOR
        return _queue(S.settings, p, c)
    buf = S.desc[d, D_BUF_OR_COLOR]
    addr = S.buf_addr[p, buf]
    if addr < 0:
        return OPERAND_UNALLOCATED
    offset = S.desc[d, D_OFFSET]
    reg = S.desc[d, D_OFFSET_REG]
    if reg >= 0:
        offset += st.regs[p, reg] * S.desc[d, D_OFFSET_SCALE]
    wrap = S.desc[d, D_WRAP]
    if wrap > 0 and count > wrap:
        count = wrap
    last = offset + (count - 1) * S.desc[d, D_STRIDE] if count > 0 else offset
    if offset < 0 or last < 0 or offset >= S.buf_len[buf] or last >= S.buf_len[buf]:
        return OPERAND_OUT_OF_BOUNDS
    return addr // (4 if S.desc[d, D_DTYPE] == F32 else 2) + offset


@njit(cache=True, _nrt=False)
def _resolve(S, st, p, d, count, now, ins):
    """_operand, recording the program error if it has none (then -1)."""
    index = _operand(S, st, p, d, count)
    if index >= 0:
        return index
    if index == OPERAND_BAD_COLOR:
        c = _fabric_color(S, p, d)
        _fail(st.counters, STATUS_PROGRAM, PROG_BAD_COLOR, p, c, -1, now, ins)
    elif index == OPERAND_UNALLOCATED:
        _fail(st.counters, STATUS_PROGRAM, PROG_UNALLOCATED, p, -1, -1, now, ins,
              S.desc[d, D_BUF_OR_COLOR])
    else:
        offset = S.desc[d, D_OFFSET]
        reg = S.desc[d, D_OFFSET_REG]
        if reg >= 0:
            offset += st.regs[p, reg] * S.desc[d, D_OFFSET_SCALE]
        _fail(st.counters, STATUS_PROGRAM, PROG_BOUNDS, p, -1, -1, now, ins,
              S.desc[d, D_BUF_OR_COLOR], offset)
    return -1


@njit(cache=True, _nrt=False, inline='always')
def _scalar(S, st, p, s, ins):
    sd = S.instr[ins, I_S]
    if sd == SCALAR_IMMEDIATE:
        return S.instr_imm[ins]
    if sd == SCALAR_WAVELET:
        return st.wavelet[p]
    return _read(st.sram_f32, st.sram_u16, S.half_to_float, S.desc[sd, D_DTYPE],
                 st.slot[p, s, S_BASE_S])


@njit(cache=True, _nrt=False, inline='always')
def _memory_op(S, st, p, s, ins, n, now):
    """Compute a memory-only operation at once; returns its cost in cycles."""
    f32, u16, lut = st.sram_f32, st.sram_u16, S.half_to_float
    op = S.instr[ins, I_OP]
    dst = S.instr[ins, I_DST]
    a = S.instr[ins, I_A]
    b = S.instr[ins, I_B]
    bd = st.slot[p, s, S_BASE_DST]
    ba = st.slot[p, s, S_BASE_A]
    bb = st.slot[p, s, S_BASE_B]
    trap = S.settings[C_TRAP_NAN]
    dd = S.desc[dst, D_DTYPE]
    da = S.desc[a, D_DTYPE] if a >= 0 else dd
    size_d = 4 if dd == F32 else 2
    size_a = 4 if da == F32 else 2
    db = S.desc[b, D_DTYPE] if b >= 0 else F32
    # the SIMD width is the dtype's the datapath works in: the reduced
    # operand's; for an FMAC its multiplicands' (fp16 products accumulated in
    # fp32 run at the fp16 rate, an fp32 multiplicand at the fp32 rate);
    # else the destination's
    rate_dtype = da if op >= OP_SUM else dd
    if op == OP_FMAC and b >= 0:
        rate_dtype = db
        sd = S.instr[ins, I_S]
        if sd >= 0 and S.desc[sd, D_DTYPE] == F32:
            rate_dtype = F32
    width = S.settings[C_SIMD32] if rate_dtype == F32 else S.settings[C_SIMD16]
    # element i of an operand lies (i mod wrap, or i) * stride from its base:
    # kept as a running index (ia, ib, id) rather than a division per element
    stride_a, wrap_a = (S.desc[a, D_STRIDE], S.desc[a, D_WRAP]) if a >= 0 else (0, 0)
    stride_b, wrap_b = (S.desc[b, D_STRIDE], S.desc[b, D_WRAP]) if b >= 0 else (0, 0)
    stride_d, wrap_d = S.desc[dst, D_STRIDE], S.desc[dst, D_WRAP]
    ia, ib, id_ = 0, 0, 0
    if op >= OP_SUM:        # reductions into dst[0]
        acc = np.float32(-np.inf) if op == OP_RMAX else np.float32(0.0)
        for i in range(n):
            va = _read(f32, u16, lut, da, ba + ia * stride_a)
            if op == OP_SUM:
                acc += va
            elif op == OP_RMAX:
                if va > acc or va != va:
                    acc = va
            else:
                acc += va * _read(f32, u16, lut, db, bb + ib * stride_b)
            ia = _next_slot(ia, wrap_a)
            ib = _next_slot(ib, wrap_b)
        if trap and acc != acc:
            _fail(st.counters, STATUS_NAN, 0, p, -1, -1, now, ins, -1, 0)
        _write(f32, u16, dd, bd, acc)
        st.pe[p, P_FLOPS] += n * S.flops_of_op[op]
        st.pe[p, P_SRAM_BYTES] += n * size_a * (2 if op == OP_DOT else 1) + size_d
        return (n + width - 1) // width
    s_val = _scalar(S, st, p, s, ins)
    if op == OP_FMAC and a >= 0 and b >= 0 and not trap and da == dd \
            and (dd == F32 or db == F16) and wrap_a == 0 and wrap_b == 0 and wrap_d == 0:
        # the tile product's step (rule 22: all fp32, all fp16, or fp16
        # multiplicands into an fp32 accumulator), in loops of their own: in
        # the general loop below the reads that test their dtype per element
        # cost several times the element's work (measured in a bare loop: 5.8
        # against 44 ns an fp16 element). Same arithmetic, same order.
        if dd == F32 and db == F32:
            for i in range(n):
                f32[bd + i * stride_d] = f32[ba + i * stride_a] \
                    + f32[bb + i * stride_b] * s_val
        elif dd == F32:
            for i in range(n):
                f32[bd + i * stride_d] = f32[ba + i * stride_a] \
                    + lut[u16[bb + i * stride_b]] * s_val
        else:
            for i in range(n):
                u16[bd + i * stride_d] = float_to_half_bits(
                    lut[u16[ba + i * stride_a]] + lut[u16[bb + i * stride_b]] * s_val)
        st.pe[p, P_FLOPS] += n * S.flops_of_op[op]
        st.pe[p, P_SRAM_BYTES] += n * 3 * size_d
        return (n + width - 1) // width
    for i in range(n):
        va = _read(f32, u16, lut, da, ba + ia * stride_a) if a >= 0 else np.float32(0.0)
        vb = _read(f32, u16, lut, db, bb + ib * stride_b) if b >= 0 else np.float32(0.0)
        v = _apply(op, va, vb, s_val)
        if trap and v != v:
            _fail(st.counters, STATUS_NAN, 0, p, -1, -1, now, ins, -1, i)
        _write(f32, u16, dd, bd + id_ * stride_d, v)
        ia = _next_slot(ia, wrap_a)
        ib = _next_slot(ib, wrap_b)
        id_ = _next_slot(id_, wrap_d)
    st.pe[p, P_FLOPS] += n * S.flops_of_op[op]
    operands = 1 + (a >= 0) + (b >= 0)
    st.pe[p, P_SRAM_BYTES] += n * operands * size_d
    return (n + width - 1) // width


@njit(cache=True, _nrt=False, inline='always')
def _input_ready(st, queue, now):
    """Whether input queue `queue` holds an element that has arrived by `now`."""
    return st.pq[queue, Q_HEAD_READY] <= now


@njit(cache=True, _nrt=False, inline='always')
def _fabric_step(S, st, p, s, now, ramp_used, turn):
    """Move one element of the fabric operation in slot s, if its operands allow.

    Returns WAIT_INPUT, WAIT_OUTPUT, MOVED, or MOVED_ON_RAMP (it injected a
    wavelet: the PE's ramp is taken for this cycle and, with `turn`, the next
    turn at it goes to the following slot; see _fabric_move)."""
    ins = st.slot[p, s, S_INSTR]
    dst = S.instr[ins, I_DST]
    a = S.instr[ins, I_A]
    b = S.instr[ins, I_B]
    depth = S.settings[C_QDEPTH]
    ka = S.desc[a, D_KIND] if a >= 0 else -1
    kb = S.desc[b, D_KIND] if b >= 0 else -1
    ba = st.slot[p, s, S_BASE_A]
    bb = st.slot[p, s, S_BASE_B]
    bd = st.slot[p, s, S_BASE_DST]
    if ka == FABIN and not _input_ready(st, ba, now):
        return WAIT_INPUT
    if kb == FABIN and not _input_ready(st, bb, now):
        return WAIT_INPUT
    out_fabric = S.desc[dst, D_KIND] == FABOUT
    if out_fabric:
        if ramp_used:
            return WAIT_OUTPUT
        admits = _admits(S, st, bd, RAMP)
        if admits < 0:
            _fail(st.counters, STATUS_ROUTE, ROUTE_RX_MISMATCH, p,
                  _fabric_color(S, p, dst),
                  RAMP, now + S.settings[C_DATAPATH] + S.settings[C_RAMP])
            return WAIT_OUTPUT
        if admits == 0:
            return WAIT_OUTPUT           # only this PE's own stream advances that switch
        if st.rq[bd, Q_COUNT] + (st.rq[bd, Q_LAST_POP] == now) >= depth:
            if st.rq[bd, Q_LAST_POP] == now:
                # the router freed a slot earlier in this cycle, so its wake-up
                # call came before we slept: look again next cycle, when the
                # credit arrives
                _list_pe(st.active, st.counters, p, now + 1)
            return WAIT_OUTPUT
    _fabric_move(S, st, p, s, now, turn)
    return MOVED_ON_RAMP if out_fabric else MOVED


@njit(cache=True, _nrt=False, inline='always')
def _fabric_move(S, st, p, s, now, turn):
    """Move one element of the fabric operation in slot s (its operands are
    ready and its output has room: the caller checked, or replays a period in
    which they were). `turn`: pass the PE's ramp to the next slot after a send
    (a lean replay sets the round-robin pointer afterwards)."""
    f32, u16, lut = st.sram_f32, st.sram_u16, S.half_to_float
    ins = st.slot[p, s, S_INSTR]
    op = S.instr[ins, I_OP]
    dst = S.instr[ins, I_DST]
    a = S.instr[ins, I_A]
    b = S.instr[ins, I_B]
    idepth = S.settings[C_IQDEPTH]
    depth = S.settings[C_QDEPTH]
    i = st.slot[p, s, S_PROGRESS]
    ka = S.desc[a, D_KIND] if a >= 0 else -1
    kb = S.desc[b, D_KIND] if b >= 0 else -1
    ba = st.slot[p, s, S_BASE_A]
    bb = st.slot[p, s, S_BASE_B]
    bd = st.slot[p, s, S_BASE_DST]
    pq = st.pq
    out_fabric = S.desc[dst, D_KIND] == FABOUT
    if ka == FABIN:
        va = _pop_input(st.pq_val, st.pq_entry, pq, st.pe, p, _fabric_color(S, p, a), ba,
                        idepth, now)
    elif a >= 0:
        va = _read(f32, u16, lut, S.desc[a, D_DTYPE], ba + _element(S, a, i))
    else:
        va = np.float32(0.0)
    if kb == FABIN:
        vb = _pop_input(st.pq_val, st.pq_entry, pq, st.pe, p, _fabric_color(S, p, b), bb,
                        idepth, now)
    elif b >= 0:
        vb = _read(f32, u16, lut, S.desc[b, D_DTYPE], bb + _element(S, b, i))
    else:
        vb = np.float32(0.0)
    v = _apply(op, va, vb, _scalar(S, st, p, s, ins))
    if S.settings[C_TRAP_NAN] and v != v:
        _fail(st.counters, STATUS_NAN, 0, p, -1, -1, now, ins, -1, i)
    if out_fabric:
        # the result leaves the datapath C_DATAPATH cycles after its operands
        # entered it, then crosses the ramp
        ready = now + S.settings[C_DATAPATH] + S.settings[C_RAMP]
        tail = bd * depth + _ring(st.rq[bd, Q_HEAD] + st.rq[bd, Q_COUNT], depth)
        st.rq_val[tail] = v
        st.rq_entry[tail, E_READY] = ready
        st.rq_entry[tail, E_ID] = st.counters[K_NEXT_WAVELET_ID]
        st.counters[K_NEXT_WAVELET_ID] += 1
        if st.rq[bd, Q_COUNT] == 0:
            st.rq[bd, Q_HEAD_READY] = ready
        st.rq[bd, Q_COUNT] += 1
        st.pe[p, P_R_NONEMPTY] |= np.int64(1) << _fabric_color(S, p, dst)
        st.pe[p, P_RAMP_OUT] += 1
        if turn:
            _list_router(st.active, st.counters, p, now + 1)
            st.pe[p, P_SLOT_RR] = s + 1 if s < S.settings[C_SLOTS] else 0
        if i + 1 == st.slot[p, s, S_LEN] and S.desc[dst, D_ADVANCE]:
            # the stream's last wavelet is in: the router takes its next
            # switch position (what its queue holds already goes on as routed)
            st.switch[bd] = 1 - st.switch[bd]
    else:
        dd = S.desc[dst, D_DTYPE]
        _write(f32, u16, dd, bd + _element(S, dst, i), v)
        st.pe[p, P_SRAM_BYTES] += 4 if dd == F32 else 2
    st.pe[p, P_FLOPS] += S.flops_of_op[op]
    if op != OP_MOV:                  # arithmetic on a stream; a plain send or receive is not
        st.pe[p, P_COMPUTE] += 1
    st.slot[p, s, S_PROGRESS] = i + 1
    if i + 1 == st.slot[p, s, S_LEN]:
        # done after its last element, and never before its issue cycles are over
        issued = st.slot[p, s, S_START] - S.settings[C_VECTOR_STARTUP]
        st.slot[p, s, S_BUSY_UNTIL] = max(now + 1, issued + S.settings[C_SCALAR_CYCLES])
    if turn and st.counters[K_RECORDING]:
        _record(st.actions, st.counters, ACTION_FABRIC, p, s)
    _progress(st.counters, now, now + 1)


@njit(cache=True, _nrt=False, inline='always')
def _vector_length(S, st, p, ins):
    """Elements vector instruction `ins` covers on PE p: its reduced operand's
    (a reduction), else its destination's; fixed or from a register."""
    lead = S.instr[ins, I_A] if S.instr[ins, I_OP] >= OP_SUM else S.instr[ins, I_DST]
    reg = S.desc[lead, D_LENGTH_REG]
    return st.regs[p, reg] if reg >= 0 else S.desc[lead, D_LENGTH]


@njit(cache=True, _nrt=False, inline='always')
def _cannot_end(S, count, now):
    """Whether a memory operation of `count` elements issued at `now` could not
    end by max_cycles even at the widest SIMD (then the run stops rather than
    compute it: a stride-0 view with a huge register length would loop for hours)."""
    return count > (S.settings[C_MAX_CYCLES] - now) * max(S.settings[C_SIMD32],
                                                          S.settings[C_SIMD16])


@njit(cache=True, _nrt=False, inline='always')
def _from_pointer(mask, start):
    """`mask` split for a round-robin walk from bit `start`: (its bits at or
    above start, those below), walked in that order, each by trailing zeros."""
    below = mask & ((np.int64(1) << start) - 1)
    return mask ^ below, below


@njit(cache=True, _nrt=False)
def _start_op(S, st, p, s, ins, now):
    """Begin vector instruction `ins` in slot s. Returns False on a program error."""
    op = S.instr[ins, I_OP]
    dst = S.instr[ins, I_DST]
    a = S.instr[ins, I_A]
    b = S.instr[ins, I_B]
    slot = st.slot
    fabric = False
    for d in (dst, a, b):
        if d >= 0 and S.desc[d, D_KIND] != MEM:
            fabric = True
    count = _vector_length(S, st, p, ins)
    slot[p, s, S_BASE_DST] = _resolve(S, st, p, dst, 1 if op >= OP_SUM else count, now, ins)
    if a >= 0:
        slot[p, s, S_BASE_A] = _resolve(S, st, p, a, count, now, ins)
    if b >= 0:
        slot[p, s, S_BASE_B] = _resolve(S, st, p, b, count, now, ins)
    sd = S.instr[ins, I_S]
    if sd >= 0:
        slot[p, s, S_BASE_S] = _resolve(S, st, p, sd, np.int64(1), now, ins)
    if st.counters[ST_CODE] != STATUS_OK:
        return False
    return _begin_op(S, st, p, s, ins, count, fabric, now)


@njit(cache=True, _nrt=False, inline='always')
def _begin_op(S, st, p, s, ins, count, fabric, now):
    """The rest of _start_op, its operands resolved into slot s: the slot
    takes the operation, and a memory-only one is computed at once."""
    slot = st.slot
    op = S.instr[ins, I_OP]
    slot[p, s, S_INSTR] = ins
    st.pe[p, P_SLOTS_BUSY] |= 1 << s
    slot[p, s, S_PROGRESS] = 0
    slot[p, s, S_LEN] = count
    issue = S.settings[C_SCALAR_CYCLES]
    startup = S.settings[C_VECTOR_STARTUP]
    slot[p, s, S_START] = now + startup
    if count <= 0:
        slot[p, s, S_BUSY_UNTIL] = now + issue
    elif fabric:
        slot[p, s, S_BUSY_UNTIL] = INF
    else:
        if _cannot_end(S, count, now):
            _fail(st.counters, STATUS_CYCLE_LIMIT, 0, p, -1, -1, now)
            return False
        cost = _memory_op(S, st, p, s, ins, count, now)
        # a software sequence (exp, rsqrt, ...) issues its further instructions
        # back to back, each paying its issue and start-up
        passes = S.passes_of_op[op]
        begin = max(now + startup, st.pe[p, P_DATAPATH_FREE])
        end = begin + passes * cost + (passes - 1) * (issue + startup)
        slot[p, s, S_BUSY_UNTIL] = max(end, now + issue)
        st.pe[p, P_DATAPATH_FREE] = end
        st.pe[p, P_COMPUTE] += passes * cost
        _progress(st.counters, now, max(end, now + issue))
    return True


@njit(cache=True, _nrt=False, inline='always')
def _start(S, st, p, s, ins, now):
    """_start_op with only the arrays it uses."""
    return _start_op(OpStatic(S.settings, S.instr, S.instr_imm, S.desc, S.pe_params,
                              S.buf_len, S.buf_addr, S.half_to_float, S.flops_of_op,
                              S.passes_of_op),
                     OpState(st.sram_f32, st.sram_u16, st.pe, st.regs, st.wavelet,
                             st.slot, st.counters), p, s, ins, now)


@njit(cache=True, _nrt=False)
def _pick_task(S, st, p, now):
    """Local task with the lowest index first, then data tasks whose wavelet is ready."""
    role = S.pe_role[p]
    first = S.role[role, R_FIRST]
    count = S.role[role + 1, R_FIRST] - first
    pend = st.pe[p, P_PENDING]
    if pend != 0:
        for j in range(count):
            if (pend >> j) & 1:
                st.pe[p, P_PENDING] = pend & ~(np.int64(1) << j)
                return S.role_tasks[first + j]
    idepth = S.settings[C_IQDEPTH]
    for j in range(count):
        t = S.role_tasks[first + j]
        if S.task[t, T_KIND] == TASK_DATA:
            c = S.task[t, T_COLOR]
            q = _queue(S.settings, p, c)
            if st.pq[q, Q_HEAD_READY] <= now:
                st.wavelet[p] = _pop_input(st.pq_val, st.pq_entry, st.pq, st.pe, p, c, q,
                                           idepth, now)
                # taking the wavelet off the fabric is work done in this cycle,
                # even when the task itself costs nothing
                _progress(st.counters, now, now + 1)
                return t
    return -1


@njit(cache=True, _nrt=False, inline='always')
def _hold_main(st, p, ins, until, now):
    """The main thread issues nothing before `until`: an instruction's issue
    cycles, or a task's start. Slot 0 holds `ins` meanwhile."""
    st.slot[p, 0, S_INSTR] = ins
    st.pe[p, P_SLOTS_BUSY] |= 1
    st.slot[p, 0, S_BUSY_UNTIL] = until
    _progress(st.counters, now, until)


@njit(cache=True, _nrt=False)
def _control(S, st, p, ins, op):
    """Execute a control instruction; returns the next pc, or -1 to stay (blocked)."""
    pc = st.pe[p, P_PC]
    r = S.instr[ins, I_R]
    imm = S.instr[ins, I_IMM]
    regs = st.regs
    if op == OP_SET:
        regs[p, r] = imm
    elif op == OP_SETP:
        regs[p, r] = S.pe_params[p, imm]
    elif op == OP_AFFINE:
        regs[p, r] = regs[p, S.instr[ins, I_IMM2]] * imm + S.instr[ins, I_IMM3]
    elif op == OP_MODI:
        regs[p, r] = regs[p, r] % imm
    elif op == OP_LOOP:
        regs[p, r] -= 1
        if regs[p, r] > 0:
            return imm
    elif op == OP_JUMP:
        return imm
    elif op == OP_BLT:
        if regs[p, r] < S.instr[ins, I_IMM2]:
            return imm
    elif op == OP_ACTIVATE:
        st.pe[p, P_PENDING] |= np.int64(1) << imm
    elif op == OP_WAIT:
        busy = st.pe[p, P_SLOTS_BUSY]
        if (imm >= 0 and (busy >> imm) & 1) or (imm < 0 and busy & ~np.int64(1)):
            return -1
    return pc + 1


@njit(cache=True, _nrt=False, inline='always')
def _pe_step(S, st, p, now, defer):
    """Step PE p in cycle `now`. It schedules its own next visit (listed for
    now + 1, or a timer), except with `defer` when it ends on its own (a task
    running, no fabric operation, not waiting, no timer pending): then it
    returns the cycle it wants to be visited (now + 1: listed; later: a
    timer; INF: none) and the caller schedules it. Returns -1 otherwise."""
    slots = S.settings[C_SLOTS]
    pe, slot = st.pe, st.slot
    progressed = False
    fabric_moved = False
    waiting_in = False
    waiting_out = False
    ramp_used = False
    # the main thread ran ahead (stream engine): until then this step is the slots'
    main_at = pe[p, P_MAIN_AT]
    main_ahead = main_at > now
    if main_at != 0 and not main_ahead:
        pe[p, P_MAIN_AT] = 0
    not_main = ~np.int64(1) if main_ahead else ~np.int64(0)
    # 1. Retire what is due; move each fabric operation by one element. The
    #    slots take turns (round robin) at the PE's single outgoing ramp.
    # (busy slots in round-robin order from the pointer; a slot's step only
    # frees that slot)
    bits, below = _from_pointer(pe[p, P_SLOTS_BUSY] & not_main, pe[p, P_SLOT_RR])
    while bits != 0 or below != 0:
        if bits == 0:
            bits, below = below, np.int64(0)
        s = trailing_zeros(bits)
        bits &= ~(np.int64(1) << s)
        if slot[p, s, S_BUSY_UNTIL] == INF:
            if now < slot[p, s, S_START]:
                continue                 # still starting up; step 3 sets the timer
            result = _fabric_step(S, st, p, s, now, ramp_used, True)
            if result >= MOVED:
                progressed = True
                fabric_moved = True
                ramp_used = ramp_used or result == MOVED_ON_RAMP
            elif result == WAIT_INPUT:
                waiting_in = True
            else:
                waiting_out = True
        elif slot[p, s, S_BUSY_UNTIL] <= now:
            # an operation completes: progress at its due cycle
            done = slot[p, s, S_BUSY_UNTIL]
            if done > st.counters[K_LAST_PROGRESS]:
                st.counters[K_LAST_PROGRESS] = done
            on_done = S.instr[slot[p, s, S_INSTR], I_ON_DONE]
            slot[p, s, S_INSTR] = -1
            pe[p, P_SLOTS_BUSY] &= ~(np.int64(1) << s)
            if s > 0 and on_done >= 0:
                pe[p, P_PENDING] |= np.int64(1) << on_done
    # 2. Run the main thread while it is free.
    budget = S.settings[C_IPC]
    while budget > 0 and not main_ahead and pe[p, P_SLOTS_BUSY] & 1 == 0 \
            and st.counters[ST_CODE] == STATUS_OK:
        if pe[p, P_TASK] < 0:
            t = _pick_task(S, st, p, now)
            if t < 0:
                break
            st.counters[K_ISSUES] += 1
            pe[p, P_TASK] = t
            pe[p, P_PC] = S.task[t, T_PC]
            pe[p, P_TASK_START] = now
            if pe[p, P_BUSY_SINCE] < 0:
                pe[p, P_BUSY_SINCE] = now
            progressed = True
            # a task fired by a wavelet or activated by another starts after the
            # activation latency; entry tasks are running when the clock starts
            latency = S.settings[C_TASK_START]
            if latency > 0 and now > st.counters[K_RUN_START]:
                _hold_main(st, p, pe[p, P_PC], now + latency, now)
                break
        ins = pe[p, P_PC]
        op = S.instr[ins, I_OP]
        budget -= 1
        if op == OP_END:
            st.counters[K_ISSUES] += 1
            if S.settings[C_RECORD] & RECORD_TASKS:
                n_ev = st.counters[K_TASK_EVENTS]
                if n_ev < st.task_events.shape[0]:
                    st.task_events[n_ev, 0] = p
                    st.task_events[n_ev, 1] = pe[p, P_TASK]
                    st.task_events[n_ev, 2] = pe[p, P_TASK_START]
                    st.task_events[n_ev, 3] = now
                st.counters[K_TASK_EVENTS] = n_ev + 1
            pe[p, P_TASK] = -1
            continue
        if op < FIRST_VECTOR_OP:
            nxt = _control(S, st, p, ins, op)
            if nxt < 0:
                break
            pe[p, P_PC] = nxt
            st.counters[K_ISSUES] += 1
            progressed = True
            cost = S.settings[C_SCALAR_CYCLES]
            if cost > 0:
                _hold_main(st, p, ins, now + cost, now)
            continue
        s = S.instr[ins, I_SLOT]
        if (pe[p, P_SLOTS_BUSY] >> s) & 1:
            break                        # that slot's own progress wakes us
        st.counters[K_ISSUES] += 1
        if not _start(S, st, p, s, ins, now):
            return -1
        pe[p, P_PC] = ins + 1
        progressed = True
        if s > 0 and S.settings[C_SCALAR_CYCLES] > 0:
            # an asynchronous operation still takes its issue cycles of the main thread
            _hold_main(st, p, ins, now + S.settings[C_SCALAR_CYCLES], now)
        if slot[p, s, S_BUSY_UNTIL] == INF:
            if now < slot[p, s, S_START]:
                continue
            result = _fabric_step(S, st, p, s, now, ramp_used, True)
            if result >= MOVED:
                fabric_moved = True
                ramp_used = ramp_used or result == MOVED_ON_RAMP
            elif result == WAIT_INPUT:
                waiting_in = True
            else:
                waiting_out = True
        elif slot[p, s, S_BUSY_UNTIL] <= now:
            slot[p, s, S_INSTR] = -1         # empty operation
            pe[p, P_SLOTS_BUSY] &= ~(np.int64(1) << s)
    if progressed:
        st.counters[K_LAST_PROGRESS] = now
    # 3. Decide when to look at this PE again.
    wake = main_at if main_ahead else INF
    busy_slots = pe[p, P_SLOTS_BUSY] & not_main
    busy = pe[p, P_TASK] >= 0 or pe[p, P_PENDING] != 0 or busy_slots != 0
    on_its_own = pe[p, P_TASK] >= 0 and not waiting_in and not waiting_out \
        and pe[p, P_WAKE] == INF and pe[p, P_STALL_SINCE] < 0 and not main_ahead
    for s in range(slots + 1):
        if (busy_slots >> s) & 1 == 0:
            continue
        due = slot[p, s, S_BUSY_UNTIL]
        if due == INF:
            on_its_own = False
            if slot[p, s, S_START] > now:
                due = slot[p, s, S_START]       # a fabric operation still starting up
        if due < wake:
            wake = due
    if defer and on_its_own:
        pe[p, P_SLEEP] = 0
        if progressed or budget == 0:
            return now + 1
        return max(wake, now + 1) if wake < INF else INF
    if progressed or budget == 0:
        _list_pe(st.active, st.counters, p, now + 1)
    elif wake < INF:
        _wake(st, p, max(wake, now + 1), now)
    # a stall: a fabric operation waits and none moves (whatever the main
    # thread does meanwhile)
    if not fabric_moved and (waiting_in or waiting_out):
        if pe[p, P_STALL_SINCE] < 0:
            pe[p, P_STALL_SINCE] = now
    elif pe[p, P_STALL_SINCE] >= 0:
        pe[p, P_STALL] += now - pe[p, P_STALL_SINCE]
        pe[p, P_STALL_SINCE] = -1
    sleep = 0
    if waiting_in or not busy:
        sleep |= SLEEP_INPUT
        _wake_for_queued_input(S, st, p, now, not waiting_in)
    if waiting_out:
        sleep |= SLEEP_OUTPUT
    pe[p, P_SLEEP] = sleep
    if not busy and pe[p, P_BUSY_SINCE] >= 0:
        pe[p, P_BUSY] += now - pe[p, P_BUSY_SINCE]
        pe[p, P_BUSY_SINCE] = -1
    return -1


# ----------------------------------------------------------------------------
# Running ahead (the stream engine). A PE whose task runs on its own (no fabric
# operation in any slot, not waiting, no timer pending) decides its next steps
# from its own state alone: memory-only operations read and write its own SRAM,
# control instructions its registers, and no other router or PE lists it (it
# sleeps on nothing). So its following steps are taken at once, at the cycles
# stepping would take them, until one would issue what is not its own (an
# operation with a fabric operand, the end of its task, an operation that would
# fail) or an asynchronous operation (or one is in flight: the loop's step
# takes those), or would come later than the deadlock window after its last
# progress, or at the cycle limit. The clock does not move: the PE's progress is kept as
# progress ahead (_last_progress counts it at the cycles it was made), and its
# next visit is scheduled as stepping would have it.
#
# A main thread runs ahead beside the PE's fabric operations the same way
# (_run_ahead, beside) while what it issues touches no SRAM those operations
# have still to write, writes none they have still to read, and neither
# waits for them nor issues into a slot: the main thread and the slots then
# decide nothing for each other. (A stall is a fabric operation waiting while
# none moves, and progress is a move, an issue or an operation completing,
# whoever steps: neither depends on which steps the PE is visited in.) Its
# state is that of its next step (P_MAIN_AT), the cycles before it step the
# slots only, and a timer brings the PE back then.
@njit(cache=True, _nrt=False, inline='always')
def _span(S, d, base, first, last):
    """(first, last) SRAM element memory operand d (at `base`) touches over
    its elements first..last (a wrapping view: all of its wrap)."""
    if S.desc[d, D_WRAP] > 0:
        lo, hi = base, base + (S.desc[d, D_WRAP] - 1) * S.desc[d, D_STRIDE]
    else:
        lo, hi = base + _element(S, d, first), base + _element(S, d, last)
    return min(lo, hi), max(lo, hi)


@njit(cache=True, _nrt=False)
def _operand_span(S, st, p, s, d, base):
    """(first, last) SRAM element a memory operand of slot s touches from its
    next element to its last (_span)."""
    return _span(S, d, base, st.slot[p, s, S_PROGRESS], st.slot[p, s, S_LEN] - 1)


@njit(cache=True, _nrt=False)
def _fabric_spans(S, st, p):
    """Note in st.beside the SRAM bytes PE p's fabric operations in flight
    have still to read or write; returns how many spans."""
    n = 0
    busy = st.pe[p, P_SLOTS_BUSY] & ~np.int64(1)
    while busy != 0:
        s = trailing_zeros(busy)
        busy &= busy - 1
        first, last = st.slot[p, s, S_PROGRESS], st.slot[p, s, S_LEN] - 1
        if st.slot[p, s, S_BUSY_UNTIL] != INF or first > last:
            continue                  # a memory-only operation is done at its issue
        theirs = st.slot[p, s, S_INSTR]
        for g in range(4):
            e = S.instr[theirs, I_DST + g]
            if e < 0 or S.desc[e, D_KIND] != MEM:
                continue
            base = st.slot[p, s, S_BASE_DST + g]
            size = 4 if S.desc[e, D_DTYPE] == F32 else 2
            lo, hi = (base, base) if g == 3 else _operand_span(S, st, p, s, e, base)
            st.beside[n, 0] = lo * size
            st.beside[n, 1] = hi * size + size - 1
            st.beside[n, 2] = 1 if g == 0 else 0
            n += 1
    return n


@njit(cache=True, _nrt=False, inline='always')
def _operand_apart(S, spans_of, spans, d, base, n, written):
    """Whether memory operand d (n elements from `base`; `written`: the
    destination) writes none of the `spans` bytes in spans_of and reads none
    of those written."""
    size = 4 if S.desc[d, D_DTYPE] == F32 else 2
    lo, hi = _span(S, d, base, 0, n - 1)
    lo, hi = lo * size, hi * size + size - 1
    for k in range(spans):
        if (written or spans_of[k, 2]) and spans_of[k, 0] <= hi and lo <= spans_of[k, 1]:
            return False
    return True


@njit(cache=True, _nrt=False)
def _own_steps(S, st, spans_of, p, visit, last_event, beside, spans, listed, limit, window):
    """PE p's steps from cycle `visit` on while it runs ahead (_run_ahead):
    its main thread's alone, with no asynchronous operation in flight (or,
    `beside`, only fabric operations, which these steps leave alone: their
    SRAM is `spans` of spans_of). Each step waits for the instruction in
    hand, or retires it and issues the next one, a control instruction or a
    memory-only operation on the main thread: what _pe_step (deferring) does
    then, without its walks over the slots (the sleep flags stay clear, as
    the step that began running ahead left them). It stops, changing
    nothing, before a step that is not its own: the task's end, an
    operation in another slot or with a fabric operand, one with an operand
    outside its buffer or that could not end by the cycle limit (stepping
    reports those), and beside fabric operations a wait or an operation that
    writes SRAM they have still to read or write or reads SRAM they have
    still to write (_operand_apart); and where the run ahead ends (an error,
    the cycle limit, the deadlock window after the last progress, `listed`:
    someone else listed the PE). S, st: OpStatic, OpState. Returns
    (visit, last_event, steps taken)."""
    settings, instr, desc = S.settings, S.instr, S.desc
    pe, slot, counters = st.pe, st.slot, st.counters
    issue = settings[C_SCALAR_CYCLES]
    steps = 0
    if pe[p, P_SLOTS_BUSY] > 1 and not beside:
        return visit, last_event, steps
    while (beside or listed == 0) and counters[ST_CODE] == STATUS_OK and visit < limit \
            and visit - last_event <= window:
        busy = pe[p, P_SLOTS_BUSY]
        if busy & 1 and slot[p, 0, S_BUSY_UNTIL] > visit:
            visit = slot[p, 0, S_BUSY_UNTIL]         # the instruction in hand is not done
            steps += 1
            continue
        ins = pe[p, P_PC]
        op = instr[ins, I_OP]
        if op < FIRST_VECTOR_OP:
            if op == OP_END or (beside and op == OP_WAIT):
                break
        elif instr[ins, I_SLOT] != 0:
            break
        else:
            count = _vector_length(S, st, p, ins)
            if _cannot_end(S, count, visit):
                break
            dst, a, b, sd = instr[ins, I_DST], instr[ins, I_A], instr[ins, I_B], instr[ins, I_S]
            n_dst = 1 if op >= OP_SUM else count
            base_dst = _operand(S, st, p, dst, n_dst) if desc[dst, D_KIND] == MEM else -1
            base_a = np.int64(0)
            base_b = np.int64(0)
            base_s = np.int64(0)
            if a >= 0:
                base_a = _operand(S, st, p, a, count) if desc[a, D_KIND] == MEM else -1
            if b >= 0:
                base_b = _operand(S, st, p, b, count) if desc[b, D_KIND] == MEM else -1
            if sd >= 0:
                base_s = _operand(S, st, p, sd, np.int64(1)) if desc[sd, D_KIND] == MEM else -1
            if base_dst < 0 or base_a < 0 or base_b < 0 or base_s < 0:
                break
            if beside and not (
                    _operand_apart(S, spans_of, spans, dst, base_dst, n_dst, True)
                    and (a < 0 or _operand_apart(S, spans_of, spans, a, base_a, count, False))
                    and (b < 0 or _operand_apart(S, spans_of, spans, b, base_b, count, False))
                    and (sd < 0 or _operand_apart(S, spans_of, spans, sd, base_s, 1, False))):
                break
        if busy & 1:
            slot[p, 0, S_INSTR] = -1
            pe[p, P_SLOTS_BUSY] = busy & ~np.int64(1)
        counters[K_ISSUES] += 1
        if op < FIRST_VECTOR_OP:
            # a wait passes with no asynchronous operation in flight (beside
            # fabric operations it was turned away above): control never blocks here
            pe[p, P_PC] = _control(S, st, p, ins, op)
            _hold_main(st, p, ins, visit + issue, visit)
        else:
            # _start_op with the operands resolved above, which cannot fail:
            # they lie in their buffers and the operation ends before the limit
            slot[p, 0, S_BASE_DST] = base_dst
            if a >= 0:
                slot[p, 0, S_BASE_A] = base_a
            if b >= 0:
                slot[p, 0, S_BASE_B] = base_b
            if sd >= 0:
                slot[p, 0, S_BASE_S] = base_s
            _begin_op(S, st, p, np.int64(0), ins, count, False, visit)
            pe[p, P_PC] = ins + 1
        steps += 1
        last_event = visit
        visit += 1
    return visit, last_event, steps


@njit(cache=True, _nrt=False)
def _run_ahead(S, st, p, now, visit, beside):
    """Take PE p's following steps now (see above) and schedule it: after its
    step in cycle `now` ended on its own, from its next visit `visit`; or,
    `beside`, its main thread's beside fabric operations in flight
    (_may_run_beside), bringing the PE back for the first step not taken
    (P_MAIN_AT)."""
    pe, slot, counters = st.pe, st.slot, st.counters
    window = S.settings[C_DEADLOCK_WINDOW]
    limit = S.settings[C_MAX_CYCLES]
    spans = 0
    if beside:
        spans = _fabric_spans(S, st, p)      # the slots stay as they are meanwhile
        visit = now + 1
        if pe[p, P_SLOTS_BUSY] & 1 and slot[p, 0, S_BUSY_UNTIL] > now:
            visit = slot[p, 0, S_BUSY_UNTIL]
    real_progress = counters[K_LAST_PROGRESS]
    last_event = _last_progress(counters, now)
    # a PE someone else listed for the next cycle is not on its own (beside
    # fabric operations, the PE listed itself: only its slots step then)
    listed = (st.active[2 + ((now + 1) & 1), p >> 6] >> (p & 63)) & 1
    visit, last_event, steps = _own_steps(
        OpStatic(S.settings, S.instr, S.instr_imm, S.desc, S.pe_params, S.buf_len,
                 S.buf_addr, S.half_to_float, S.flops_of_op, S.passes_of_op),
        OpState(st.sram_f32, st.sram_u16, st.pe, st.regs, st.wavelet, st.slot, st.counters),
        st.beside, p, visit, last_event, beside, spans, listed, limit, window)
    counters[K_LAST_PROGRESS] = real_progress
    counters[K_STEPS_PE] += steps
    counters[K_AHEAD_STEPS] += steps
    if last_event > counters[K_PROGRESS_AHEAD]:
        counters[K_PROGRESS_AHEAD] = last_event
    if visit == INF or (beside and steps == 0):
        return
    if beside:
        pe[p, P_MAIN_AT] = visit
    _wake_at(st.active, st.heap, counters, pe, p, visit, now)


@njit(cache=True, _nrt=False, inline='always')
def _may_run_beside(S, st, p):
    """Whether PE p's main thread, after its step, might run
    ahead beside fabric operations in flight: a cheap first look, so that
    the loop calls _run_ahead (a call that passes every array) only
    then. Its task runs, it is not ahead already, it holds no fabric
    operation itself, another slot does, and what it issues next (if it is
    free) is neither a wait, nor its task's end, nor an operation for
    another slot."""
    pe, slot = st.pe, st.slot
    busy = pe[p, P_SLOTS_BUSY]
    if pe[p, P_TASK] < 0 or pe[p, P_MAIN_AT] != 0 or busy <= 1:
        return False
    if busy & 1:
        if slot[p, 0, S_BUSY_UNTIL] == INF:
            return False                # the main thread's own fabric operation
    else:
        op = S.instr[pe[p, P_PC], I_OP]
        if op == OP_WAIT or op == OP_END or (
                op >= FIRST_VECTOR_OP and S.instr[pe[p, P_PC], I_SLOT] != 0):
            return False
    for s in range(1, S.settings[C_SLOTS] + 1):
        if (busy >> s) & 1 and slot[p, s, S_BUSY_UNTIL] == INF:
            return True
    return False


@njit(cache=True, _nrt=False, inline='always')
def _wake_for_queued_input(S, st, p, now, data_tasks_only):
    """Set a timer for the earliest queued input wavelet (of the role's data-task
    colors only, for an idle PE): a wavelet already delivered wakes nobody."""
    queued = st.pe[p, P_IN_NONEMPTY]
    if data_tasks_only:
        queued &= S.role[S.pe_role[p], R_DATA_COLORS]
    soonest = INF
    while queued != 0:
        c = trailing_zeros(queued)
        queued &= queued - 1
        soonest = min(soonest, st.pq[_queue(S.settings, p, c), Q_HEAD_READY])
    if soonest < INF:
        _wake(st, p, max(soonest, now + 1), now)


# ----------------------------------------------------------------------------
# Bulk advance (the stream engine). Stepping is deterministic: what a cycle
# does follows from the state at its start. If the part of that state that
# decides anything (queue counts and each entry's ready time relative to the
# clock, flags, round-robin pointers, registers, busy slots, relative timers;
# not the values carried nor how far a stream has got) is the same at the start
# of cycles t and t + k, and every router or PE listed in between was listed at
# t, then the cycles from t + k on repeat those from t until a boundary: a
# stream's last element, a timer, a due time, the cycle limit. (Every router
# or PE listed in the period belongs to a watched set, whose state, listed or
# not, is what is compared: an attempt that finds one outside it retries with
# the set widened.) The stream
# engine records the moves of such a period, checks that the state repeats and
# replays the moves for as many whole periods as fit before the boundary,
# without deciding anything: values, queue slots, counters and events come out
# of the same move functions stepping uses, in the same order. What only the
# PEs' own steps change (stall cycles, sleep flags, listings) is advanced by
# the period's recorded change.
BULK_MIN_CYCLES = 4       # shorter repeats are stepped
BULK_PERIOD_MAX = 12      # longest period looked for, in cycles
BULK_BACKOFF_MIN, BULK_BACKOFF_MAX = 16, 64     # cycles between attempts after misses


@njit(cache=True, _nrt=False)
def _fire_timers(st, now):
    """Pop the timers due at `now`; a live one lists its PE."""
    counters, pe = st.counters, st.pe
    while counters[K_HEAP_SIZE] > 0 and st.heap[0, 0] <= now:
        t = st.heap[0, 0]
        p = st.heap[1, 0]
        _heap_pop(st.heap, counters)
        if pe[p, P_WAKE] == t:
            pe[p, P_WAKE] = INF
            _list_pe(st.active, counters, p, now)
            counters[K_TIMERS_FIRED] += 1


@njit(cache=True, _nrt=False, inline='always')
def _note(sig, k, value, compare):
    """Write `value` at sig[k]; when comparing (`compare` = the recorded
    length), whether sig[k] lies within it and holds `value`."""
    if compare >= 0:
        return k < compare and sig[k] == value
    sig[k] = value
    return True


@njit(cache=True, _nrt=False)
def _signature(S, st, now, compare):
    """The state that decides cycle `now`: the cycles since the last progress,
    then per router or PE of the watched set (st.bulk_rows[2]) its index and
    whether it is listed for `now`, control fields, registers, busy slots
    (times relative to `now`) and non-empty queues (each entry's ready time
    relative to `now`, clamped at 0). With `compare` = -1 it is written into
    st.signature and its length returned, or -1 if it does not fit; with
    `compare` = a recorded length, it is compared in place with
    st.signature[:compare] (no second copy: a full wafer's signature runs to
    tens of millions of entries), returning `compare` if equal, else -1."""
    cfg = S.settings
    colors, depth, idepth, slots = cfg[C_NCOLORS], cfg[C_QDEPTH], cfg[C_IQDEPTH], cfg[C_SLOTS]
    sig = st.signature
    cap = sig.shape[0]
    writing = compare < 0
    active, pe, slot = st.active, st.pe, st.slot
    parity = now & 1
    per_entity = 16 + st.regs.shape[1] + 9 * (slots + 1) + colors * (3 + depth + idepth)
    if writing and cap < 1:
        return -1
    same = _note(sig, 0, min(now - _last_progress(st.counters, now), cfg[C_DEADLOCK_WINDOW] + 2),
                 compare)
    k = 1
    for w in range(active.shape[1]):
        routers = active[parity, w]
        pes = active[2 + parity, w]
        bits = st.bulk_rows[2, w]
        while bits != 0:
            b = trailing_zeros(bits)
            e = w * 64 + b
            if writing and k + per_entity > cap:
                return -1
            since = pe[e, P_STALL_SINCE]
            # a main thread that ran ahead decides nothing before its next
            # step (_bulk_periods keeps the replay short of it)
            ahead = pe[e, P_MAIN_AT] > now + 1
            wake = pe[e, P_WAKE]
            same = same and _note(sig, k, e, compare) \
                and _note(sig, k + 1, ((routers >> b) & 1) * 2 + ((pes >> b) & 1)
                          + (4 if ahead else 0), compare) \
                and _note(sig, k + 2, pe[e, P_TASK], compare) \
                and _note(sig, k + 3, pe[e, P_PC], compare) \
                and _note(sig, k + 4, pe[e, P_PENDING], compare) \
                and _note(sig, k + 5, pe[e, P_SLOTS_BUSY], compare) \
                and _note(sig, k + 6, pe[e, P_SLEEP], compare) \
                and _note(sig, k + 7, pe[e, P_R_NONEMPTY], compare) \
                and _note(sig, k + 8, pe[e, P_R_RR], compare) \
                and _note(sig, k + 9, pe[e, P_SLOT_RR], compare) \
                and _note(sig, k + 10, -1 if wake == INF else (
                    -2 if ahead and wake == pe[e, P_MAIN_AT] else wake - now), compare) \
                and _note(sig, k + 11, now - since if since >= 0 else -1, compare) \
                and _note(sig, k + 12, pe[e, P_BUSY_SINCE], compare)
            k += 13
            for r in range(st.regs.shape[1]):
                same = same and _note(sig, k, st.regs[e, r], compare)
                k += 1
            busy = pe[e, P_SLOTS_BUSY]
            for s in range(1 if ahead else 0, slots + 1):
                if (busy >> s) & 1 == 0:
                    continue
                until = slot[e, s, S_BUSY_UNTIL]
                # a due time two or more cycles ahead decides nothing yet
                # (_bulk_periods keeps the replay short of it)
                same = same and _note(sig, k, s, compare) \
                    and _note(sig, k + 1, slot[e, s, S_INSTR], compare) \
                    and _note(sig, k + 2, slot[e, s, S_LEN], compare) \
                    and _note(sig, k + 3, -1 if until == INF else min(max(until - now, 0), 2),
                              compare) \
                    and _note(sig, k + 4, max(slot[e, s, S_START] - now, 0), compare) \
                    and _note(sig, k + 5, slot[e, s, S_BASE_DST], compare) \
                    and _note(sig, k + 6, slot[e, s, S_BASE_A], compare) \
                    and _note(sig, k + 7, slot[e, s, S_BASE_B], compare) \
                    and _note(sig, k + 8, slot[e, s, S_BASE_S], compare)
                k += 9
            queued = pe[e, P_R_NONEMPTY] | pe[e, P_IN_NONEMPTY]
            while queued != 0:
                c = trailing_zeros(queued)
                queued &= queued - 1
                q = _queue(cfg, e, c)
                n_r = st.rq[q, Q_COUNT]
                n_p = st.pq[q, Q_COUNT]
                same = same and _note(sig, k, c, compare) \
                    and _note(sig, k + 1, n_r, compare) and _note(sig, k + 2, n_p, compare)
                k += 3
                for i in range(n_r):
                    at_i = q * depth + _ring(st.rq[q, Q_HEAD] + i, depth)
                    same = same and _note(sig, k, max(st.rq_entry[at_i, E_READY] - now, 0),
                                          compare)
                    k += 1
                for i in range(n_p):
                    at_i = q * idepth + _ring(st.pq[q, Q_HEAD] + i, idepth)
                    same = same and _note(sig, k, max(st.pq_entry[at_i, E_READY] - now, 0),
                                          compare)
                    k += 1
            if not same:
                return -1
            bits &= ~(np.int64(1) << b)
    return k if same and (writing or k == compare) else -1


@njit(cache=True, _nrt=False)
def _repeats(S, st, now, length):
    """Whether the state at `now` has the signature recorded (st.signature[:length])."""
    return _signature(S, st, now, length) == length


@njit(cache=True, _nrt=False)
def _within_recorded(st, parity):
    """Whether every router and PE listed in this cycle is in the watched set
    (those listed are noted in st.bulk_rows[3] either way)."""
    rows = st.bulk_rows
    inside = True
    for w in range(st.active.shape[1]):
        listed = st.active[parity, w] | st.active[2 + parity, w]
        rows[3, w] |= listed
        if listed & ~rows[2, w]:
            inside = False
    return inside


@njit(cache=True, _nrt=False)
def _bulk_periods(S, st, now, period):
    """How many whole periods from `now` on repeat the recorded one: every
    replayed cycle stays below the cycle limit and the next timer, no stream
    reaches its last element, and no busy slot nor main thread that ran
    ahead comes within two cycles of its due time (its signature class would
    change). Timers of the watched PEs
    are part of the period (replayed); any other live timer bounds it."""
    cfg = S.settings
    slots = cfg[C_SLOTS]
    cycles = cfg[C_MAX_CYCLES] - now
    # a live timer of a PE outside the watched set would list it
    for i in range(st.counters[K_HEAP_SIZE]):
        t = st.heap[0, i]
        p = st.heap[1, i]
        if st.pe[p, P_WAKE] == t and (st.bulk_rows[2, p >> 6] >> (p & 63)) & 1 == 0:
            cycles = min(cycles, t - now)
    n = cycles // period
    actions = st.actions
    n_act = st.counters[K_ACTIONS]
    moves = st.bulk_moves
    for a in range(n_act):
        if actions[a, 0] == ACTION_FABRIC:
            moves[actions[a, 1], actions[a, 2]] += 1
    for a in range(n_act):
        if actions[a, 0] == ACTION_FABRIC:
            p = actions[a, 1]
            s = actions[a, 2]
            m = moves[p, s]
            if m > 0:
                n = min(n, (st.slot[p, s, S_LEN] - 1 - st.slot[p, s, S_PROGRESS]) // m)
                moves[p, s] = 0
    for w in range(st.active.shape[1]):
        bits = st.bulk_rows[2, w]
        while bits != 0:
            b = trailing_zeros(bits)
            e = w * 64 + b
            busy = st.pe[e, P_SLOTS_BUSY]
            for s in range(slots + 1):
                if (busy >> s) & 1:
                    until = st.slot[e, s, S_BUSY_UNTIL]
                    if until != INF and until > now:
                        n = min(n, (until - now - 2) // period)
            if st.pe[e, P_MAIN_AT] > now:
                n = min(n, (st.pe[e, P_MAIN_AT] - now - 2) // period)
            bits &= ~(np.int64(1) << b)
    return max(n, 0)


@njit(cache=True, _nrt=False)
def _replay(S, st, now, periods, lean):
    """Repeat the recorded moves and timers, cycle by cycle in their recorded
    order (timers due first, as stepping pops them), for `periods` periods
    from `now`, counting the steps stepping would have taken. Returns the
    cycle reached, or the cycle of a failure. `lean`: no links or deliveries
    are recorded, so the moves skip what the caller sets after the replay."""
    cfg = S.settings
    depth = cfg[C_QDEPTH]
    actions = st.actions
    counters = st.counters
    n_act = counters[K_ACTIONS]
    t = now
    for _ in range(periods):
        _fire_timers(st, t)
        for a in range(n_act):
            kind = actions[a, 0]
            who = actions[a, 1]
            which = actions[a, 2]
            if kind == ACTION_CYCLE_END:
                counters[K_STEPS_ROUTER] += who
                counters[K_STEPS_PE] += which
                t += 1
                if a + 1 < n_act:
                    _fire_timers(st, t)
                continue
            if kind == ACTION_TIMER:
                _wake_at(st.active, st.heap, counters, st.pe, who, t + which, t)
                continue
            if kind == ACTION_ROUTER:
                q = _queue(cfg, who, which)
                head = q * depth + st.rq[q, Q_HEAD]
                if st.rq[q, Q_COUNT] == 0 or st.rq_entry[head, E_READY] > t:
                    counters[K_BULK_MISMATCH] += 1
                tx = np.int64(S.route[q, POSITION_FIELDS * st.switch[q] + TX])
                _router_move(S, st, who, which, q, head, tx, t, not lean)
            elif _fabric_step(S, st, who, which, t, False, not lean) < MOVED:
                counters[K_BULK_MISMATCH] += 1
            if counters[ST_CODE] != STATUS_OK:
                for rest in range(a + 1, n_act):      # the failing cycle's steps
                    if actions[rest, 0] == ACTION_CYCLE_END:
                        counters[K_STEPS_ROUTER] += actions[rest, 1]
                        counters[K_STEPS_PE] += actions[rest, 2]
                        break
                return t
    return t


# Column-wise advance: each recorded move taken for all periods at once, in an
# order where every queue's producers come before its consumers. Each queue the
# period touches becomes a stream of values (its contents, then what is pushed
# into it, in push order); a move reads its input streams at its pop ranks and
# writes its output streams at its push ranks. A slot that moves m times a
# period takes elements j, j + m, j + 2m, ... in its j-th move's column, so its
# elements are not taken in order: its memory written must then be none it
# reads. Exact where the moves form no cycle through queues, no slot's memory
# written is another's on the same PE, no timer is set, and neither NaN traps
# nor links or deliveries are recorded (per-move state a column pass does not
# keep); otherwise the period-by-period replay runs.
(CA_KIND, CA_WHO, CA_WHICH, CA_OFFSET, CA_NSRC, CA_SRC, CA_NDST, CA_DST, CA_ID_RANK,
 CA_WAITING, CA_SUB, CA_EVERY) = (0, 1, 2, 3, 4, 5, 9, 10, 20, 21, 22, 23)
# sources: (queue, rank) x 2 from CA_SRC; outputs: x 5 from CA_DST; a slot's
# move j (CA_SUB) of its CA_EVERY a period
COL_ACTION_FIELDS = 24
(CQ_GLOBAL, CQ_COUNT, CQ_PUSHES, CQ_POPS, CQ_AT, CQ_LAST_POP, CQ_PRODUCERS,
 CQ_FIRST_CONSUMER, CQ_CONSUMERS, CQ_GROUP, CQ_GROUP_MOVES, CQ_GROUP_QUEUES, CQ_GROUP_HELD,
 CQ_GROUP_PUSHES) = range(14)
COL_QUEUE_FIELDS = 14
# The moves of a period fall into groups that share no queue (a neighbour
# shift: one per sender; a broadcast: one per line), and whose memory is apart
# (_memory_apart): each group is taken for all periods before the next, its
# streams laid out from the start of st.col_val, so a stream is read back while
# it is still in cache. Groups are batched up to this many values (20 bytes
# each: about the L2 cache of this machine); a group that needs more than the
# room for values is taken a few periods at a time.
COLUMN_BATCH_VALUES = 1 << 16


@njit(cache=True, _nrt=False)
def _column_queue(st, g, n_queues):
    """Local index of queue g (router queue q, or PE queue n_rq + q), adding it."""
    local = st.col_queue_of[g]
    if local >= 0:
        return local, n_queues
    if n_queues >= st.col_queues.shape[0]:
        return -1, n_queues
    st.col_queue_of[g] = n_queues
    row = st.col_queues[n_queues]
    for f in range(COL_QUEUE_FIELDS):
        row[f] = 0
    row[CQ_GLOBAL] = g
    return n_queues, n_queues + 1


@njit(cache=True, _nrt=False)
def _column_plan(S, st, period):
    """Fill st.col_actions / col_queues for the recorded period; returns
    (moves, queues), or moves = -1 where a column pass would not be exact."""
    cfg = S.settings
    cols = cfg[C_COLS]
    n_rq = st.rq.shape[0]
    actions = st.actions
    plan = st.col_actions
    n_moves = np.int64(0)
    n_queues = np.int64(0)
    offset = 0
    pushes_of_ids = 0
    ok = True
    for a in range(st.counters[K_ACTIONS]):
        kind = actions[a, 0]
        if kind == ACTION_CYCLE_END:
            offset += 1
            continue
        if kind == ACTION_TIMER or n_moves >= plan.shape[0]:
            ok = False
            break
        who = actions[a, 1]
        which = actions[a, 2]
        row = plan[n_moves]
        row[CA_KIND] = kind
        row[CA_WHO] = who
        row[CA_WHICH] = which
        row[CA_OFFSET] = offset
        row[CA_NSRC] = 0
        row[CA_NDST] = 0
        row[CA_ID_RANK] = -1
        if kind == ACTION_ROUTER:
            q = _queue(cfg, who, which)
            local, n_queues = _column_queue(st, q, n_queues)
            if local < 0:
                ok = False
                break
            row[CA_SRC] = local
            row[CA_SRC + 1] = st.col_queues[local, CQ_POPS]
            st.col_queues[local, CQ_POPS] += 1
            st.col_queues[local, CQ_LAST_POP] = offset
            row[CA_NSRC] = 1
            tx = np.int64(S.route[q, POSITION_FIELDS * st.switch[q] + TX])
            for port in range(5):
                if (tx >> port) & 1 == 0:
                    continue
                if port == RAMP:
                    g = n_rq + q
                else:
                    n = who + (1 if port == 1 else (-1 if port == 3 else 0)) + \
                        (cols if port == 2 else (-cols if port == 0 else 0))
                    g = _queue(cfg, n, which)
                local, n_queues = _column_queue(st, g, n_queues)
                if local < 0:
                    ok = False
                    break
                k = CA_DST + 2 * row[CA_NDST]
                row[k] = local
                row[k + 1] = st.col_queues[local, CQ_PUSHES] * 8 + port     # rank, port
                st.col_queues[local, CQ_PUSHES] += 1
                row[CA_NDST] += 1
            if not ok:
                break
        else:
            p, s = who, which
            row[CA_SUB] = st.bulk_moves[p, s]
            st.bulk_moves[p, s] += 1
            ins = st.slot[p, s, S_INSTR]
            for operand in range(2):
                d = S.instr[ins, I_A + operand]
                if d >= 0 and S.desc[d, D_KIND] == FABIN:
                    base = st.slot[p, s, S_BASE_A if operand == 0 else S_BASE_B]
                    local, n_queues = _column_queue(st, n_rq + base, n_queues)
                    if local < 0:
                        ok = False
                        break
                    k = CA_SRC + 2 * row[CA_NSRC]
                    row[k] = local
                    row[k + 1] = st.col_queues[local, CQ_POPS]
                    st.col_queues[local, CQ_POPS] += 1
                    st.col_queues[local, CQ_LAST_POP] = offset
                    row[CA_NSRC] += 1
            if not ok:
                break
            dst = S.instr[ins, I_DST]
            if S.desc[dst, D_KIND] == FABOUT:
                local, n_queues = _column_queue(st, st.slot[p, s, S_BASE_DST], n_queues)
                if local < 0:
                    ok = False
                    break
                row[CA_DST] = local
                row[CA_DST + 1] = st.col_queues[local, CQ_PUSHES] * 8
                st.col_queues[local, CQ_PUSHES] += 1
                row[CA_NDST] = 1
                row[CA_ID_RANK] = pushes_of_ids
                pushes_of_ids += 1
        n_moves += 1
    for m in range(n_moves):
        if plan[m, CA_KIND] == ACTION_FABRIC:
            plan[m, CA_EVERY] = st.bulk_moves[plan[m, CA_WHO], plan[m, CA_WHICH]]
    for m in range(n_moves):                       # clear the slot counts
        if plan[m, CA_KIND] == ACTION_FABRIC:
            st.bulk_moves[plan[m, CA_WHO], plan[m, CA_WHICH]] = 0
    if ok:
        for local in range(n_queues):
            if st.col_queues[local, CQ_PUSHES] != st.col_queues[local, CQ_POPS]:
                ok = False
    if ok:
        ok = _memory_apart(S, st, n_moves)
    if not ok:
        for local in range(n_queues):
            st.col_queue_of[st.col_queues[local, CQ_GLOBAL]] = -1
        return -1, 0
    return n_moves, n_queues


@njit(cache=True, _nrt=False)
def _memory_apart(S, st, n_moves):
    """Whether no slot writes SRAM that another slot moving in the period
    reads or writes, nor (if it moves several times a period) SRAM it reads
    itself (bytes compared, both dtypes). Each slot is looked at once, at its
    first move; the first moves of each PE are chained through st.col_order
    (from st.bulk_moves[p, 0]) for the comparison."""
    plan = st.col_actions
    chain = st.col_order
    first = st.bulk_moves
    for x in range(n_moves):
        if plan[x, CA_KIND] == ACTION_FABRIC and plan[x, CA_SUB] == 0:
            p = plan[x, CA_WHO]
            chain[x] = first[p, 0] - 1
            first[p, 0] = x + 1
    apart = True
    for x in range(n_moves):
        if not apart:
            break
        if plan[x, CA_KIND] != ACTION_FABRIC or plan[x, CA_SUB] != 0:
            continue
        p = plan[x, CA_WHO]
        sx = plan[x, CA_WHICH]
        ins = st.slot[p, sx, S_INSTR]
        dst = S.instr[ins, I_DST]
        if S.desc[dst, D_KIND] != MEM:
            continue
        size = 4 if S.desc[dst, D_DTYPE] == F32 else 2
        lo, hi = _operand_span(S, st, p, sx, dst, st.slot[p, sx, S_BASE_DST])
        w_lo, w_hi = lo * size, hi * size + size - 1
        y = first[p, 0] - 1
        while y >= 0 and apart:
            # a slot taking its elements in order may read what it writes
            itself = y == x
            if not itself or plan[x, CA_EVERY] > 1:
                sy = plan[y, CA_WHICH]
                other = st.slot[p, sy, S_INSTR]
                for f in range(1 if itself else 0, 4):
                    d = S.instr[other, I_DST + f]
                    if d < 0 or S.desc[d, D_KIND] != MEM:
                        continue
                    base = st.slot[p, sy, S_BASE_DST + f]
                    o_size = 4 if S.desc[d, D_DTYPE] == F32 else 2
                    if f == 3:
                        o_lo, o_hi = base, base
                    else:
                        o_lo, o_hi = _operand_span(S, st, p, sy, d, base)
                    if o_lo * o_size <= w_hi and w_lo <= o_hi * o_size + o_size - 1:
                        apart = False
            y = chain[y]
    for x in range(n_moves):
        if plan[x, CA_KIND] == ACTION_FABRIC:
            first[plan[x, CA_WHO], 0] = 0
    return apart


@njit(cache=True, _nrt=False)
def _column_order(st, n_moves, n_queues):
    """Topological order of the moves (producers of a queue before its
    consumers) into st.col_order; False if they form a cycle."""
    plan, queues, order, consumers = st.col_actions, st.col_queues, st.col_order, st.col_consumers
    for m in range(n_moves):
        for j in range(plan[m, CA_NDST]):
            queues[plan[m, CA_DST + 2 * j], CQ_PRODUCERS] += 1
        for j in range(plan[m, CA_NSRC]):
            queues[plan[m, CA_SRC + 2 * j], CQ_CONSUMERS] += 1
    total = 0
    for local in range(n_queues):
        queues[local, CQ_FIRST_CONSUMER] = total
        total += queues[local, CQ_CONSUMERS]
        queues[local, CQ_CONSUMERS] = 0
    if total > consumers.shape[0]:
        return False
    for m in range(n_moves):
        waiting = 0
        for j in range(plan[m, CA_NSRC]):
            local = plan[m, CA_SRC + 2 * j]
            consumers[queues[local, CQ_FIRST_CONSUMER] + queues[local, CQ_CONSUMERS]] = m
            queues[local, CQ_CONSUMERS] += 1
            waiting += queues[local, CQ_PRODUCERS]
        plan[m, CA_WAITING] = waiting
    n = 0
    for m in range(n_moves):
        if plan[m, CA_WAITING] == 0:
            order[n] = m
            n += 1
    head = 0
    while head < n:
        m = order[head]
        head += 1
        for j in range(plan[m, CA_NDST]):
            local = plan[m, CA_DST + 2 * j]
            first = queues[local, CQ_FIRST_CONSUMER]
            for c in range(first, first + queues[local, CQ_CONSUMERS]):
                consumer = consumers[c]
                plan[consumer, CA_WAITING] -= 1
                if plan[consumer, CA_WAITING] == 0:
                    order[n] = consumer
                    n += 1
    return n == n_moves


@njit(cache=True, _nrt=False, inline='always')
def _group_root(queues, local):
    """The queue that represents local queue `local`'s group (union-find)."""
    while queues[local, CQ_GROUP] != local:
        parent = queues[local, CQ_GROUP]
        queues[local, CQ_GROUP] = queues[parent, CQ_GROUP]
        local = parent
    return local


@njit(cache=True, _nrt=False)
def _column_groups(st, n_moves, n_queues):
    """Split the moves into groups that share no queue: st.col_group_moves
    holds the moves group by group, each group's in the order of st.col_order,
    st.col_group_queues its queues; a group's representative queue keeps where
    they end (CQ_GROUP_MOVES, CQ_GROUP_QUEUES) and its streams' values held
    (CQ_GROUP_HELD) and pushed a period (CQ_GROUP_PUSHES). Groups come in the
    order of their representatives. False if a move touches no queue."""
    queues, plan = st.col_queues, st.col_actions
    for local in range(n_queues):
        queues[local, CQ_GROUP] = local
        queues[local, CQ_GROUP_MOVES] = 0
        queues[local, CQ_GROUP_QUEUES] = 0
        queues[local, CQ_GROUP_HELD] = 0
        queues[local, CQ_GROUP_PUSHES] = 0
    for m in range(n_moves):
        first = -1
        for j in range(plan[m, CA_NSRC] + plan[m, CA_NDST]):
            local = plan[m, CA_SRC + 2 * j] if j < plan[m, CA_NSRC] else \
                plan[m, CA_DST + 2 * (j - plan[m, CA_NSRC])]
            root = _group_root(queues, local)
            if first < 0:
                first = root
            elif root != first:
                queues[root, CQ_GROUP] = first
        if first < 0:
            return False
    for local in range(n_queues):
        root = _group_root(queues, local)
        queues[local, CQ_GROUP] = root
        queues[root, CQ_GROUP_QUEUES] += 1
        queues[root, CQ_GROUP_HELD] += queues[local, CQ_COUNT]
        queues[root, CQ_GROUP_PUSHES] += queues[local, CQ_PUSHES]
    for m in range(n_moves):
        queues[queues[plan[m, CA_SRC if plan[m, CA_NSRC] > 0 else CA_DST], CQ_GROUP],
               CQ_GROUP_MOVES] += 1
    # counts -> where each group starts, then -> where it ends as it is filled
    moves_at, queues_at = 0, 0
    for local in range(n_queues):
        if queues[local, CQ_GROUP] == local:
            c = queues[local, CQ_GROUP_MOVES]
            queues[local, CQ_GROUP_MOVES] = moves_at
            moves_at += c
            c = queues[local, CQ_GROUP_QUEUES]
            queues[local, CQ_GROUP_QUEUES] = queues_at
            queues_at += c
    for local in range(n_queues):
        root = queues[local, CQ_GROUP]
        st.col_group_queues[queues[root, CQ_GROUP_QUEUES]] = local
        queues[root, CQ_GROUP_QUEUES] += 1
    for o in range(n_moves):
        m = st.col_order[o]
        root = queues[plan[m, CA_SRC if plan[m, CA_NSRC] > 0 else CA_DST], CQ_GROUP]
        st.col_group_moves[queues[root, CQ_GROUP_MOVES]] = m
        queues[root, CQ_GROUP_MOVES] += 1
    return True


@njit(cache=True, _nrt=False)
def _columns(S, st, now, period, periods):
    """Advance `periods` periods column-wise (see above), group by group.
    Returns the cycle reached, or -1 where a column pass would not be exact
    or its streams would not fit (nothing changed)."""
    cfg = S.settings
    if cfg[C_TRAP_NAN] or cfg[C_RECORD] & (RECORD_LINKS | RECORD_DELIVERIES):
        return -1
    n_moves, n_queues = _column_plan(S, st, period)
    if n_moves < 0:
        return -1
    queues, plan = st.col_queues, st.col_actions
    capacity = st.col_val.shape[0]
    for local in range(n_queues):
        queues[local, CQ_COUNT] = _queue_count(st, queues[local, CQ_GLOBAL])
    fits = _column_order(st, n_moves, n_queues) and _column_groups(st, n_moves, n_queues)
    for local in range(n_queues):
        if fits and queues[local, CQ_GROUP] == local:
            fits = queues[local, CQ_GROUP_HELD] + queues[local, CQ_GROUP_PUSHES] <= capacity
    if not fits:
        for local in range(n_queues):
            st.col_queue_of[queues[local, CQ_GLOBAL]] = -1
        return -1
    counters = st.counters
    id_base = counters[K_NEXT_WAVELET_ID]
    ids_per_period, last_move = 0, 0
    for m in range(n_moves):
        if plan[m, CA_ID_RANK] >= 0:
            ids_per_period += 1
        last_move = max(last_move, plan[m, CA_OFFSET])
    # batches of whole groups in the order of their representatives
    moves_lo, queues_lo = 0, 0
    local = 0
    while local < n_queues:
        held, pushes = 0, 0
        moves_hi, queues_hi = moves_lo, queues_lo
        while local < n_queues:
            if queues[local, CQ_GROUP] == local:
                more_held = held + queues[local, CQ_GROUP_HELD]
                more_pushes = pushes + queues[local, CQ_GROUP_PUSHES]
                if moves_hi > moves_lo and \
                        more_held + periods * more_pushes > min(COLUMN_BATCH_VALUES, capacity):
                    break
                held, pushes = more_held, more_pushes
                moves_hi = queues[local, CQ_GROUP_MOVES]
                queues_hi = queues[local, CQ_GROUP_QUEUES]
            local += 1
        done = 0
        while done < periods:
            n = min(periods - done, (capacity - held) // pushes)
            _column_chunk(S, st, now + done * period, period, n, id_base + done * ids_per_period,
                          ids_per_period, moves_lo, moves_hi, queues_lo, queues_hi)
            done += n
        moves_lo, queues_lo = moves_hi, queues_hi
    for local in range(n_queues):
        st.col_queue_of[queues[local, CQ_GLOBAL]] = -1
    counters[K_NEXT_WAVELET_ID] = id_base + periods * ids_per_period
    last = now + (periods - 1) * period + last_move
    counters[K_LAST_PROGRESS] = last
    if last + 1 > counters[K_FINISH]:
        counters[K_FINISH] = last + 1
    steps_r, steps_p = 0, 0
    for a in range(counters[K_ACTIONS]):
        if st.actions[a, 0] == ACTION_CYCLE_END:
            steps_r += st.actions[a, 1]
            steps_p += st.actions[a, 2]
    counters[K_STEPS_ROUTER] += periods * steps_r
    counters[K_STEPS_PE] += periods * steps_p
    return now + periods * period


@njit(cache=True, _nrt=False, inline='always')
def _queue_count(st, g):
    n_rq = st.rq.shape[0]
    return st.rq[g, Q_COUNT] if g < n_rq else st.pq[g - n_rq, Q_COUNT]


@njit(cache=True, _nrt=False)
def _column_chunk(S, st, now, period, n, id_base, ids_per_period, moves_lo, moves_hi,
                  queues_lo, queues_hi):
    """`n` periods from `now`, column-wise, of the groups whose moves are
    st.col_group_moves[moves_lo:moves_hi] and queues st.col_group_queues
    [queues_lo:queues_hi]; the first wavelet sent is numbered `id_base`."""
    cfg = S.settings
    depth, idepth = cfg[C_QDEPTH], cfg[C_IQDEPTH]
    n_rq = st.rq.shape[0]
    queues, plan = st.col_queues, st.col_actions
    group_moves, group_queues = st.col_group_moves, st.col_group_queues
    val, ident, ready = st.col_val, st.col_id, st.col_ready
    f32, u16, lut = st.sram_f32, st.sram_u16, S.half_to_float
    # each queue's stream starts with what it holds
    at = 0
    for x in range(queues_lo, queues_hi):
        local = group_queues[x]
        g = queues[local, CQ_GLOBAL]
        queues[local, CQ_AT] = at
        c = queues[local, CQ_COUNT]
        for i in range(c):
            if g < n_rq:
                e = g * depth + _ring(st.rq[g, Q_HEAD] + i, depth)
                val[at + i] = st.rq_val[e]
                ident[at + i] = st.rq_entry[e, E_ID]
                ready[at + i] = st.rq_entry[e, E_READY]
            else:
                e = (g - n_rq) * idepth + _ring(st.pq[g - n_rq, Q_HEAD] + i, idepth)
                val[at + i] = st.pq_val[e]
                ident[at + i] = st.pq_entry[e, E_ID]
                ready[at + i] = st.pq_entry[e, E_READY]
        at += c + n * queues[local, CQ_PUSHES]
    # ready times matter only for what the queues' ring slots keep at the end:
    # a ring's last pushes, which come from the last periods (ids are carried
    # along whole, an element's id being its source's)
    late = max(0, n - max(depth, idepth) - 2)
    for o in range(moves_lo, moves_hi):
        m = group_moves[o]
        kind = plan[m, CA_KIND]
        who = plan[m, CA_WHO]
        which = plan[m, CA_WHICH]
        first_cycle = now + plan[m, CA_OFFSET]
        if kind == ACTION_ROUTER:
            src = plan[m, CA_SRC]
            src_at = queues[src, CQ_AT] + plan[m, CA_SRC + 1]
            src_step = queues[src, CQ_PUSHES]
            for j in range(plan[m, CA_NDST]):
                local = plan[m, CA_DST + 2 * j]
                g = queues[local, CQ_GLOBAL]
                latency = cfg[C_RAMP] if g >= n_rq else cfg[C_HOP]
                dst_at = queues[local, CQ_AT] + queues[local, CQ_COUNT] + \
                    (plan[m, CA_DST + 2 * j + 1] >> 3)
                dst_step = queues[local, CQ_PUSHES]
                for k in range(n):
                    val[dst_at + k * dst_step] = val[src_at + k * src_step]
                for k in range(late, n):
                    ready[dst_at + k * dst_step] = first_cycle + k * period + latency
                if g >= n_rq:
                    st.pe[who, P_RAMP_IN] += n
                else:
                    st.link_wavelets[who, plan[m, CA_DST + 2 * j + 1] & 7] += n
            continue
        p, s = who, which
        ins = st.slot[p, s, S_INSTR]
        op = S.instr[ins, I_OP]
        dst = S.instr[ins, I_DST]
        a = S.instr[ins, I_A]
        b = S.instr[ins, I_B]
        i0 = st.slot[p, s, S_PROGRESS]
        ba = st.slot[p, s, S_BASE_A]
        bb = st.slot[p, s, S_BASE_B]
        bd = st.slot[p, s, S_BASE_DST]
        ka = S.desc[a, D_KIND] if a >= 0 else -1
        kb = S.desc[b, D_KIND] if b >= 0 else -1
        a_at, a_step, b_at, b_step = 0, 0, 0, 0
        source = 0
        if ka == FABIN:
            local = plan[m, CA_SRC]
            a_at = queues[local, CQ_AT] + plan[m, CA_SRC + 1]
            a_step = queues[local, CQ_PUSHES]
            source = 1
        if kb == FABIN:
            local = plan[m, CA_SRC + 2 * source]
            b_at = queues[local, CQ_AT] + plan[m, CA_SRC + 2 * source + 1]
            b_step = queues[local, CQ_PUSHES]
        out_fabric = S.desc[dst, D_KIND] == FABOUT
        d_at, d_step = 0, 0
        latency = cfg[C_DATAPATH] + cfg[C_RAMP]
        if out_fabric:
            local = plan[m, CA_DST]
            d_at = queues[local, CQ_AT] + queues[local, CQ_COUNT] + (plan[m, CA_DST + 1] >> 3)
            d_step = queues[local, CQ_PUSHES]
        dd = S.desc[dst, D_DTYPE]
        # operand kinds, dtypes and strides are fixed for the whole column
        da = S.desc[a, D_DTYPE] if a >= 0 else F32
        db = S.desc[b, D_DTYPE] if b >= 0 else F32
        wrap_a = S.desc[a, D_WRAP] if a >= 0 else 0
        wrap_b = S.desc[b, D_WRAP] if b >= 0 else 0
        wrap_d = S.desc[dst, D_WRAP]
        stride_a = S.desc[a, D_STRIDE] if a >= 0 else 0
        stride_b = S.desc[b, D_STRIDE] if b >= 0 else 0
        stride_d = S.desc[dst, D_STRIDE]
        memory_scalar = S.instr[ins, I_S] >= 0          # may change as the slot writes
        scalar = _scalar(S, st, p, s, ins)
        zero = np.float32(0.0)
        every = plan[m, CA_EVERY]
        i0 += plan[m, CA_SUB]
        # a send or a receive (a mov between memory without wrap and the
        # fabric), the shifts' and broadcasts' moves: loops of their own, the
        # general loop's dispatch per element costing more than the copy
        general = True
        if op == OP_MOV and out_fabric and ka == MEM and wrap_a == 0:
            general = False
            if da == F32:
                for k in range(n):
                    val[d_at + k * d_step] = f32[ba + (i0 + k * every) * stride_a]
            else:
                for k in range(n):
                    val[d_at + k * d_step] = lut[u16[ba + (i0 + k * every) * stride_a]]
        elif op == OP_MOV and ka == FABIN and not out_fabric and wrap_d == 0:
            general = False
            if dd == F32:
                for k in range(n):
                    f32[bd + (i0 + k * every) * stride_d] = val[a_at + k * a_step]
            else:
                for k in range(n):
                    u16[bd + (i0 + k * every) * stride_d] = float_to_half_bits(
                        val[a_at + k * a_step])
        for k in range(n if general else 0):
            i = i0 + k * every
            if ka == FABIN:
                va = val[a_at + k * a_step]
            elif a >= 0:
                at_a = ba + (i % wrap_a if wrap_a > 0 else i) * stride_a
                va = f32[at_a] if da == F32 else lut[u16[at_a]]
            else:
                va = zero
            if kb == FABIN:
                vb = val[b_at + k * b_step]
            elif b >= 0:
                at_b = bb + (i % wrap_b if wrap_b > 0 else i) * stride_b
                vb = f32[at_b] if db == F32 else lut[u16[at_b]]
            else:
                vb = zero
            if memory_scalar:
                scalar = _scalar(S, st, p, s, ins)
            v = va if op == OP_MOV else _apply(op, va, vb, scalar)
            if out_fabric:
                val[d_at + k * d_step] = v
            else:
                at_d = bd + (i % wrap_d if wrap_d > 0 else i) * stride_d
                if dd == F32:
                    f32[at_d] = v
                else:
                    u16[at_d] = float_to_half_bits(v)
        if out_fabric:
            for k in range(late, n):
                ready[d_at + k * d_step] = first_cycle + k * period + latency
        st.pe[p, P_FLOPS] += n * S.flops_of_op[op]
        if op != OP_MOV:
            st.pe[p, P_COMPUTE] += n
        if out_fabric:
            st.pe[p, P_RAMP_OUT] += n
        else:
            st.pe[p, P_SRAM_BYTES] += n * (4 if dd == F32 else 2)
    for o in range(moves_lo, moves_hi):
        m = group_moves[o]
        if plan[m, CA_KIND] == ACTION_FABRIC and plan[m, CA_SUB] == 0:
            st.slot[plan[m, CA_WHO], plan[m, CA_WHICH], S_PROGRESS] += n * plan[m, CA_EVERY]
    # wavelets sent in the chunk are numbered in the order stepping sends them,
    # and carry their numbers on through the routers that forward them
    for o in range(moves_lo, moves_hi):
        m = group_moves[o]
        if plan[m, CA_KIND] != ACTION_FABRIC or plan[m, CA_ID_RANK] < 0:
            continue
        local = plan[m, CA_DST]
        d_at = queues[local, CQ_AT] + queues[local, CQ_COUNT] + (plan[m, CA_DST + 1] >> 3)
        d_step = queues[local, CQ_PUSHES]
        for k in range(n):
            ident[d_at + k * d_step] = id_base + k * ids_per_period + plan[m, CA_ID_RANK]
    for o in range(moves_lo, moves_hi):
        m = group_moves[o]
        if plan[m, CA_KIND] != ACTION_ROUTER:
            continue
        src = plan[m, CA_SRC]
        src_at = queues[src, CQ_AT] + plan[m, CA_SRC + 1]
        src_step = queues[src, CQ_PUSHES]
        for j in range(plan[m, CA_NDST]):
            local = plan[m, CA_DST + 2 * j]
            dst_at = queues[local, CQ_AT] + queues[local, CQ_COUNT] + \
                (plan[m, CA_DST + 2 * j + 1] >> 3)
            dst_step = queues[local, CQ_PUSHES]
            for k in range(n):
                ident[dst_at + k * dst_step] = ident[src_at + k * src_step]
    # the queues as stepping leaves them: the last pushes in their ring slots
    # (those still queued, and those popped whose slots were not reused)
    for y in range(queues_lo, queues_hi):
        local = group_queues[y]
        g = queues[local, CQ_GLOBAL]
        c = queues[local, CQ_COUNT]
        pushes = n * queues[local, CQ_PUSHES]
        base = queues[local, CQ_AT] + c
        rq_side = g < n_rq
        d = depth if rq_side else idepth
        q = g if rq_side else g - n_rq
        head = st.rq[q, Q_HEAD] if rq_side else st.pq[q, Q_HEAD]
        for x in range(max(0, pushes - d), pushes):
            e = q * d + (head + c + x) % d
            if rq_side:
                st.rq_val[e] = val[base + x]
                st.rq_entry[e, E_ID] = ident[base + x]
                st.rq_entry[e, E_READY] = ready[base + x]
            else:
                st.pq_val[e] = val[base + x]
                st.pq_entry[e, E_ID] = ident[base + x]
                st.pq_entry[e, E_READY] = ready[base + x]
        last_pop = now + (n - 1) * period + queues[local, CQ_LAST_POP]
        if rq_side:
            st.rq[q, Q_HEAD] = (head + pushes) % d
            st.rq[q, Q_LAST_POP] = last_pop
            _refresh_head_ready(st.rq, st.rq_entry, q, d)
        else:
            st.pq[q, Q_HEAD] = (head + pushes) % d
            st.pq[q, Q_LAST_POP] = last_pop
            _refresh_head_ready(st.pq, st.pq_entry, q, d)


@njit(cache=True, _nrt=False)
def _advance(S, st, now, period):
    """At the start of cycle `now`, whose state repeats that of `period` cycles
    ago (the recorded period): advance by whole periods. Returns the cycle
    stepping resumes at (`now` if none was advanced), or the cycle of a failure."""
    periods = _bulk_periods(S, st, now, period)
    if periods * period < BULK_MIN_CYCLES:
        return now
    counters = st.counters
    active, pe = st.active, st.pe
    words = active.shape[1]
    # the PEs' own steps, not replayed, set sleep flags and count stalls, and a
    # lean replay leaves non-empty bits and round-robin pointers: at the end of
    # whole periods these are as now, stall counts grown by the period's
    for w in range(words):
        bits = st.bulk_rows[2, w]
        while bits != 0:
            b = trailing_zeros(bits)
            e = w * 64 + b
            st.bulk_sleep[e, 0] = pe[e, P_SLEEP]
            st.bulk_sleep[e, 1] = pe[e, P_R_NONEMPTY]
            st.bulk_sleep[e, 2] = pe[e, P_R_RR]
            st.bulk_sleep[e, 3] = pe[e, P_SLOT_RR]
            st.bulk_stall[e] = pe[e, P_STALL] - st.bulk_stall[e]
            bits &= ~(np.int64(1) << b)
    hops_per_period = 0
    for a in range(counters[K_ACTIONS]):
        if st.actions[a, 0] == ACTION_ROUTER:
            q = _queue(S.settings, st.actions[a, 1], st.actions[a, 2])
            tx = np.int64(S.route[q, POSITION_FIELDS * st.switch[q] + TX]) & 15
            while tx:
                hops_per_period += tx & 1
                tx >>= 1
    n_r = counters[K_ROUTER_LIST_LEN + (now & 1)]
    n_p = counters[K_PE_LIST_LEN + (now & 1)]
    lean = S.settings[C_RECORD] & (RECORD_LINKS | RECORD_DELIVERIES) == 0
    reached = _columns(S, st, now, period, periods) if lean else -1
    if reached < 0:
        reached = _replay(S, st, now, periods, lean)
    else:
        counters[K_BULK_COLUMNS] += reached - now
    if counters[ST_CODE] != STATUS_OK:
        counters[K_BULK_CYCLES] += reached + 1 - now
        return reached
    counters[K_BULK_CYCLES] += reached - now
    counters[K_BULK_HOPS] += periods * hops_per_period
    for w in range(words):
        for row in range(4):
            active[row, w] = 0
        active[reached & 1, w] = st.bulk_rows[0, w]
        active[2 + (reached & 1), w] = st.bulk_rows[1, w]
        bits = st.bulk_rows[2, w]
        while bits != 0:
            b = trailing_zeros(bits)
            e = w * 64 + b
            pe[e, P_SLEEP] = st.bulk_sleep[e, 0]
            pe[e, P_R_NONEMPTY] = st.bulk_sleep[e, 1]
            pe[e, P_R_RR] = st.bulk_sleep[e, 2]
            pe[e, P_SLOT_RR] = st.bulk_sleep[e, 3]
            pe[e, P_STALL] += periods * st.bulk_stall[e]
            if pe[e, P_STALL_SINCE] >= 0:
                pe[e, P_STALL_SINCE] += reached - now
            bits &= ~(np.int64(1) << b)
    counters[K_ROUTER_LIST_LEN + (reached & 1)] = n_r
    counters[K_ROUTER_LIST_LEN + 1 - (reached & 1)] = 0
    counters[K_PE_LIST_LEN + (reached & 1)] = n_p
    counters[K_PE_LIST_LEN + 1 - (reached & 1)] = 0
    return reached


@njit(cache=True, _nrt=False)
def _start_recording(S, st, now, widen):
    """Record from cycle `now` on (the stream engine), watching those listed
    now and, if `widen`, those the last attempt watched or met; returns the
    signature's length, or -1 (nothing recorded: it does not fit)."""
    parity = now & 1
    for w in range(st.active.shape[1]):
        st.bulk_rows[0, w] = st.active[parity, w]
        st.bulk_rows[1, w] = st.active[2 + parity, w]
        st.bulk_rows[2, w] = st.active[parity, w] | st.active[2 + parity, w] | (
            st.bulk_rows[2, w] | st.bulk_rows[3, w] if widen else 0)
        st.bulk_rows[3, w] = 0
    length = _signature(S, st, now, np.int64(-1))
    if length < 0:
        return -1
    for w in range(st.active.shape[1]):
        bits = st.bulk_rows[2, w]
        while bits != 0:
            b = trailing_zeros(bits)
            st.bulk_stall[w * 64 + b] = st.pe[w * 64 + b, P_STALL]
            bits &= ~(np.int64(1) << b)
    st.counters[K_BULK_ATTEMPTS] += 1
    st.counters[K_ACTIONS] = 0
    st.counters[K_RECORDING] = 1
    return length


# ----------------------------------------------------------------------------
# The loop steps the listed routers, then PEs, one after another, and each
# step begins with loads that depend on one another (a PE's row, its slots,
# their instructions; a router's non-empty colors, that queue's row, its head
# entry). On grids whose state outgrows the cache each is a miss, so while
# one is stepped the next one's first rows are requested.
@njit(cache=True, _nrt=False, inline='always')
def _prefetch_router(S, st, r):
    """Request router r's queue row, head entries and values of its lowest
    non-empty color."""
    mask = st.pe[r, P_R_NONEMPTY]
    if mask != 0:
        depth = S.settings[C_QDEPTH]
        q = _queue(S.settings, r, trailing_zeros(mask))
        prefetch(st.rq, q * Q_FIELDS)
        prefetch(st.rq_entry, q * depth * 2)
        prefetch(st.rq_val, q * depth)


@njit(cache=True, _nrt=False, inline='always')
def _prefetch_pe(st, p):
    """Request PE p's row and its slots' rows."""
    prefetch(st.pe, p * PE_FIELDS)
    per_pe = st.slot.shape[1] * SLOT_FIELDS
    for k in range(0, per_pe, 8):           # eight fields a cache line
        prefetch(st.slot, p * per_pe + k)


@njit(cache=True, _nrt=False)
def run(S, st):
    """Run until every PE is idle and the fabric is empty, or an error.

    The outcome lands in st.counters (K_FINISH and the ST_* status); the caller
    turns a status into an exception. With C_ENGINE = ENGINE_STREAM, periods
    of cycles that repeat are advanced in bulk (see _advance)."""
    cfg = S.settings
    max_cycles = cfg[C_MAX_CYCLES]
    window = cfg[C_DEADLOCK_WINDOW]
    n_pe = cfg[C_ROWS] * cfg[C_COLS]
    counters, active, pe = st.counters, st.active, st.pe
    now = counters[K_NOW]
    counters[K_RUN_START] = now
    for p in range(n_pe):           # every PE with an entry task starts now
        entry = S.role[S.pe_role[p], R_ENTRY]
        if entry != 0:
            pe[p, P_PENDING] |= entry
            _list_pe(active, counters, p, now)
    counters[K_LAST_PROGRESS] = now
    stream = cfg[C_ENGINE] == ENGINE_STREAM
    # PEs may run ahead through their own instruction sequences (_run_ahead)
    may_run_ahead = stream and cfg[C_SCALAR_CYCLES] > 0 and not cfg[C_TRAP_NAN]
    recorded_at = -1          # the cycle recording began, -1: not recording
    recorded_length = np.int64(0)     # of its signature
    recorded_n_r = 0
    recorded_n_p = 0
    unchanged = 0             # counters that must not move while recording
    retry_at = now + 1
    backoff = BULK_BACKOFF_MIN
    widen = False             # the last attempt met a router or PE outside its watched set
    widenings = 0
    quiet_too_long = 0        # a recorded cycle ended with no progress for the deadlock window
    while True:
        parity = now & 1
        _fire_timers(st, now)
        n_r = counters[K_ROUTER_LIST_LEN + parity]
        n_p = counters[K_PE_LIST_LEN + parity]
        if n_r == 0 and n_p == 0:
            if counters[K_HEAP_SIZE] == 0:
                break
            now = st.heap[0, 0]           # nobody is active: jump to the next timer
            if recorded_at >= 0:
                recorded_at = -1
                counters[K_RECORDING] = 0
            continue
        if now >= max_cycles:
            _fail(counters, STATUS_CYCLE_LIMIT, 0, -1, -1, -1, now)
            break
        if stream:
            if recorded_at >= 0:
                moved = counters[K_ISSUES] + quiet_too_long
                outside = not _within_recorded(st, parity)
                stop = moved != unchanged or counters[K_ACTIONS] > st.actions.shape[0] or outside
                if not stop and n_r == recorded_n_r and n_p == recorded_n_p \
                        and counters[K_ACTIONS] > now - recorded_at \
                        and _repeats(S, st, now, recorded_length):
                    counters[K_RECORDING] = 0
                    recorded_at_was = recorded_at
                    recorded_at = -1
                    reached = _advance(S, st, now, now - recorded_at_was)
                    if counters[ST_CODE] != STATUS_OK:
                        now = reached
                        break
                    if reached > now:
                        now = reached
                        backoff = BULK_BACKOFF_MIN
                        retry_at = now
                        widen = False
                        widenings = 0
                        continue
                    stop = True
                if stop or now - recorded_at >= BULK_PERIOD_MAX:
                    counters[K_RECORDING] = 0
                    recorded_at = -1
                    widen = outside and moved == unchanged and widenings < 3
                    if widen:          # retry at once, watching what it met
                        widenings += 1
                        retry_at = now
                    else:
                        widenings = 0
                        retry_at = now + backoff
                        backoff = min(2 * backoff, BULK_BACKOFF_MAX)
            if recorded_at < 0 and now >= retry_at:
                recorded_length = _start_recording(S, st, now, widen)
                if recorded_length >= 0:
                    recorded_at = now
                    recorded_n_r = n_r
                    recorded_n_p = n_p
                    unchanged = counters[K_ISSUES]
                    quiet_too_long = 0
                else:
                    retry_at = now + BULK_BACKOFF_MAX
        ahead = may_run_ahead and counters[K_RECORDING] == 0
        for kind in range(2):             # routers, then PEs; each in index order
            row = 2 * kind + parity
            for w in range(active.shape[1]):
                bits = active[row, w]
                if bits == 0:
                    continue
                active[row, w] = 0        # what this cycle enlists goes to the other row
                while bits != 0 and counters[ST_CODE] == STATUS_OK:
                    b = trailing_zeros(bits)
                    following = bits & (bits - 1)
                    if following != 0:
                        if kind == 0:
                            _prefetch_router(S, st, w * 64 + trailing_zeros(following))
                        else:
                            _prefetch_pe(st, w * 64 + trailing_zeros(following))
                    if kind == 0:
                        _router_step(S, st, w * 64 + b, now)
                    else:
                        p = w * 64 + b
                        visit = _pe_step(S, st, p, now, ahead)
                        # one call site, with a variable flag: one copy compiled
                        beside = visit < 0
                        if not beside or (ahead and counters[ST_CODE] == STATUS_OK
                                          and _may_run_beside(S, st, p)):
                            _run_ahead(S, st, p, now, visit, beside)
                    bits &= ~(np.int64(1) << b)
                if counters[ST_CODE] != STATUS_OK:
                    break
            if counters[ST_CODE] != STATUS_OK:
                break
        if counters[K_RECORDING]:
            _record(st.actions, counters, ACTION_CYCLE_END, n_r, n_p)
        counters[K_STEPS_ROUTER] += n_r
        counters[K_STEPS_PE] += n_p
        counters[K_ROUTER_LIST_LEN + parity] = 0
        counters[K_PE_LIST_LEN + parity] = 0
        if counters[ST_CODE] != STATUS_OK:
            break
        if now - _last_progress(counters, now) > window:
            if counters[K_HEAP_SIZE] == 0:
                _fail(counters, STATUS_DEADLOCK, DEADLOCK_STALLED, -1, -1, -1, now)
                break
            quiet_too_long = 1    # only a timer (maybe stale) kept the run going
        now += 1
    counters[K_RECORDING] = 0
    counters[K_NOW] = now
    counters[K_LAST_PROGRESS] = _last_progress(counters, now)
    if counters[ST_CODE] == STATUS_OK:
        _check_quiescent(S, st, now)


@njit(cache=True, _nrt=False)
def _check_quiescent(S, st, now):
    """After the loop ends: any unfinished PE or queued wavelet is a deadlock."""
    n_pe = S.settings[C_ROWS] * S.settings[C_COLS]
    slots = S.settings[C_SLOTS]
    colors = S.settings[C_NCOLORS]
    for p in range(n_pe):
        unfinished = st.pe[p, P_TASK] >= 0 or st.pe[p, P_PENDING] != 0
        for s in range(slots + 1):
            if st.slot[p, s, S_INSTR] >= 0:
                unfinished = True
        if unfinished:
            _fail(st.counters, STATUS_DEADLOCK, DEADLOCK_UNFINISHED, p, -1, -1, now)
            return
        for c in range(colors):
            q = _queue(S.settings, p, c)
            left = st.rq[q, Q_COUNT] + st.pq[q, Q_COUNT]
            if left > 0:
                _fail(st.counters, STATUS_DEADLOCK, DEADLOCK_LEFTOVER, p, c, -1, now, -1, -1, -1, left)
                return
