"""The encoding shared by lowering, the engine and diagnostics.

A compiled program is a few flat integer tables; these constants name their
columns and codes, and the codes a run ends with. `wse.lowering` writes the
tables, the engine reads them as compile-time constants, and
`wse.diagnostics` reads the status codes back.
"""

# Router ports. A route's rx and tx sets are bitmasks of these.
NORTH, EAST, SOUTH, WEST, RAMP = 0, 1, 2, 3, 4
PORT_NAMES = ("N", "E", "S", "W", "RAMP")
OPPOSITE = (SOUTH, WEST, NORTH, EAST, RAMP)
# (dx, dy) per fabric port: x grows East, y grows South.
PORT_DX = (0, 1, 0, -1, 0)
PORT_DY = (-1, 0, 1, 0, 0)

# Element types of SRAM buffers.
F32, F16 = 0, 1
DTYPE_CODES = {"float32": F32, "float16": F16}
DTYPE_NAMES = {F32: "float32", F16: "float16"}
DTYPE_BYTES = {F32: 4, F16: 2}

# Descriptor kinds and descriptor table columns.
MEM, FABIN, FABOUT = 0, 1, 2
# D_BUF_OR_COLOR holds the buffer id (MEM) or the dense color index (FABIN, FABOUT);
# D_DTYPE is the element type (fabric operands carry fp32 wavelets); D_WRAP
# (MEM, 0: none): element i is at offset + (i mod wrap) * stride; D_ADVANCE
# (FABOUT): the stream's last wavelet advances the sender's router switch.
D_KIND, D_BUF_OR_COLOR, D_DTYPE, D_OFFSET, D_OFFSET_REG, D_OFFSET_SCALE, D_LENGTH, \
    D_LENGTH_REG, D_STRIDE, D_WRAP, D_ADVANCE = range(11)
DESC_FIELDS = 11

# Instruction table columns.
I_OP, I_DST, I_A, I_B, I_S, I_SLOT, I_ON_DONE, I_R, I_IMM, I_IMM2, I_IMM3 = range(11)
INSTR_FIELDS = 11
# I_S: scalar operand: a descriptor id, or one of these.
SCALAR_IMMEDIATE = -1   # the instruction's float immediate
SCALAR_WAVELET = -2     # the wavelet that fired the current data task

# Control instructions (main thread only).
OP_END = 0        # end of task
OP_SET = 1        # r[R] = IMM
OP_SETP = 2       # r[R] = params[pe, IMM]
OP_AFFINE = 3     # r[R] = r[IMM2] * IMM + IMM3
OP_MODI = 4       # r[R] = r[R] mod IMM  (result in [0, IMM))
OP_LOOP = 5       # r[R] -= 1; if r[R] > 0: pc = IMM
OP_JUMP = 6       # pc = IMM
OP_ACTIVATE = 7   # activate local task IMM of this PE's role
OP_WAIT = 8       # wait until async slot IMM is idle (IMM = -1: all slots)
OP_BLT = 9        # if r[R] < IMM2: pc = IMM
# Element-wise vector operations: dst[i] = f(a[i], b[i], s).
OP_MOV = 16
OP_ADD = 17
OP_SUB = 18
OP_MUL = 19
OP_MAX = 20
OP_MIN = 21
OP_FMAC = 22      # a + b * s
OP_SCALE = 23     # a * s
OP_ADDS = 24      # a + s
OP_EXP = 25
OP_RSQRT = 26     # 1 / sqrt(a + s)
OP_RECIP = 27
OP_TANH = 28
OP_SIGMOID = 29
OP_FILL = 30      # s
OP_SUBS = 31      # a - s
# Reductions of memory vectors to dst[0].
OP_SUM = 40       # sum(a)
OP_RMAX = 41      # max(a)
OP_DOT = 42       # sum(a * b)

FIRST_VECTOR_OP = 16
ELEMENTWISE_OPS = frozenset(range(16, 32))
REDUCTION_OPS = frozenset({OP_SUM, OP_RMAX, OP_DOT})
# Floating-point operations counted per element (1 per arithmetic op, 2 per FMA).
FLOPS_PER_ELEMENT = {OP_MOV: 0, OP_FILL: 0, OP_ADD: 1, OP_SUB: 1, OP_MUL: 1, OP_MAX: 1,
                     OP_MIN: 1, OP_FMAC: 2, OP_SCALE: 1, OP_ADDS: 1, OP_SUBS: 1,
                     OP_EXP: 1, OP_RSQRT: 2, OP_RECIP: 1, OP_TANH: 1, OP_SIGMOID: 2,
                     OP_SUM: 1, OP_RMAX: 1, OP_DOT: 2}

# A PE has no transcendental unit: exp, rsqrt, reciprocal, tanh and sigmoid
# are software, a sequence of vector instructions over the operand in SRAM,
# each paying its issue and start-up and a full pass at SIMD rate. The
# engine computes the correctly rounded fp32 function (within 2 ulp of what
# the sequences below give) and charges the sequence: passes per op.
#   exp      range reduction x = n ln2 + r (scale, round to integer, fused
#            multiply-subtract: 3), degree-5 polynomial in r by Horner (5
#            FMACs), scale by 2^n through an exponent-field add (1): 9
#            (the Cephes expf scheme; ~1 ulp on fp32)
#   recip    seed by an integer subtract from the bit pattern (1), three
#            Newton steps y = y (2 - x y) (2 each): 7
#   rsqrt    eps add (1), seed by shift and integer subtract (1), three
#            Newton steps y = y (1.5 - 0.5 x y^2) (3 each): 11
#   sigmoid  1 / (1 + exp(-x)): negate (1) + exp (9) + add (1) + recip (7): 18
#   tanh     1 - 2 / (1 + exp(2x)): scale (1) + exp (9) + add (1) + recip (7)
#            + fused multiply-subtract (1): 19
SOFTWARE_SEQUENCE_PASSES = {OP_EXP: 9, OP_RECIP: 7, OP_RSQRT: 11, OP_SIGMOID: 18, OP_TANH: 19}
TRANSCENDENTAL_OPS = frozenset(SOFTWARE_SEQUENCE_PASSES)

# Task kinds.
TASK_LOCAL, TASK_DATA = 0, 1

# How a run ended: the engine's status code, then the kind of failure within
# it (the engine's ST_CODE and ST_KIND status fields); `wse.diagnostics` turns
# them into a WseError.
STATUS_OK, STATUS_ROUTE, STATUS_DEADLOCK, STATUS_CYCLE_LIMIT, STATUS_PROGRAM, STATUS_NAN = range(6)
# STATUS_ROUTE: a route sends out of the grid; a wavelet arrives on a port the
# route does not accept; a wavelet waits at a route with no tx port.
ROUTE_OFF_GRID, ROUTE_RX_MISMATCH, ROUTE_NO_TX = 1, 2, 3
# STATUS_PROGRAM: an instruction reaches outside a buffer; uses a buffer not
# allocated on its PE; names a color index the program does not have.
PROG_BOUNDS, PROG_UNALLOCATED, PROG_BAD_COLOR = 1, 2, 3
# STATUS_DEADLOCK: nothing moved for the deadlock window; the run stopped with
# a PE still holding work; with wavelets left in the fabric nobody consumes.
DEADLOCK_STALLED, DEADLOCK_UNFINISHED, DEADLOCK_LEFTOVER = 1, 2, 3

NUM_REGISTERS = 32    # emulation registers: loop counters and descriptor offsets (a tile product uses five)
