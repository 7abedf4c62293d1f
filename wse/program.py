"""The kernel-author API: colors, routes, buffers, roles, tasks, vector operations.

A Program describes one run on a grid of PEs, SPMD style:

    prog = wse.Program(cfg)
    c = prog.color("row")
    prog.route(c, rx="RAMP", tx="E", where=prog.pes(cols=0))        # sender
    prog.route(c, rx="W", tx="RAMP,E", where=prog.pes(cols=slice(1, -1)))
    prog.route(c, rx="W", tx="RAMP", where=prog.pes(cols=-1))
    x = prog.buffer("x", (16,), "float32")
    root = prog.role("root", where=prog.pes(cols=0))
    with root.task("main", entry=True) as t:
        t.mov(prog.fabout(c, 16), x.view())
    leaf = prog.role("leaf", where=prog.pes(cols=slice(1, None)))
    with leaf.task("main", entry=True) as t:
        t.mov(x.view(), prog.fabin(c, 16))
    prog.load(x, data)                 # data: (rows, cols, 16)
    result = prog.run()
    result.read(x), result.report

A later program with the same buffer layout can start from the SRAM a run
left, instead of an empty image, and load only what changed:

    again = build()                    # same buffers, new code
    again.resume(result.image())       # no host bytes for what stays
    again.load(x, new_x)               # report.host_bytes_loaded counts this

Per-PE differences come from roles (which PEs run which tasks) and from
integer parameters (`prog.param`), which a task loads into registers; a
million PEs need neither a million programs nor a Python loop over PEs.
Everything compiles to flat arrays that `wse.engine` interprets: the
tables are built in `wse.lowering`, and a failed run's status becomes a
WseError in `wse.diagnostics`.
"""
from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import time
from dataclasses import dataclass

import numpy as np

from . import diagnostics, isa, lowering
from .config import DTYPES, WaferConfig
from .diagnostics import port_names
from .errors import ConfigError, ProgramError, RouteError, SramOverflowError

IN_PLACE_BYTES = 256 << 20

RUN_DEFAULTS = dict(max_cycles=100_000_000, deadlock_window=100_000, trap_nan=False,
                    record_links=False, record_deliveries=False, trace=False,
                    event_capacity=1_000_000, engine="stream")
_RUN_OPTIONS: contextvars.ContextVar[dict] = contextvars.ContextVar("run_options", default={})


@contextlib.contextmanager
def run_options(**options):
    """Defaults for every Program.run inside the block (e.g. trace=True,
    trap_nan=True, record_links=True): reach the runs inside any kernel.

        with wse.run_options(trace=True):
            C, report = kernels.gemm(A, B, cfg)
        report.to_chrome_trace("gemm.json")
    """
    unknown = set(options) - set(RUN_DEFAULTS)
    if unknown:
        raise ConfigError(f"unknown run options {sorted(unknown)}; known: {sorted(RUN_DEFAULTS)}")
    token = _RUN_OPTIONS.set({**_RUN_OPTIONS.get(), **options})
    try:
        yield
    finally:
        _RUN_OPTIONS.reset(token)

PORT_BY_NAME = {"N": isa.NORTH, "E": isa.EAST, "S": isa.SOUTH, "W": isa.WEST,
                "RAMP": isa.RAMP}


def port_mask(ports) -> int:
    """'RAMP,E' or ['RAMP', 'E'] or '' -> bitmask of router ports."""
    if isinstance(ports, (int, np.integer)):
        return int(ports)
    if isinstance(ports, str):
        ports = [p for p in ports.replace(" ", "").split(",") if p]
    mask = 0
    for name in ports:
        key = str(name).upper()
        if key not in PORT_BY_NAME:
            raise RouteError(f"unknown router port {name!r}: expected N, E, S, W or RAMP")
        mask |= 1 << PORT_BY_NAME[key]
    return mask


# ----------------------------------------------------------------------------
# Operands
@dataclass(frozen=True)
class Color:
    """A virtual channel. `index` is its place in the program's color table."""
    name: str
    id: int          # hardware color number, 0 .. num_colors - 1
    index: int


@dataclass(frozen=True)
class Reg:
    """A PE integer register. `r * k + c` gives an address expression."""
    index: int

    def __mul__(self, k: int) -> "RegExpr":
        return RegExpr(self, int(k), 0)

    __rmul__ = __mul__

    def __add__(self, c: int) -> "RegExpr":
        return RegExpr(self, 1, int(c))


@dataclass(frozen=True)
class RegExpr:
    reg: Reg
    scale: int
    const: int

    def __add__(self, c: int) -> "RegExpr":
        return RegExpr(self.reg, self.scale, self.const + int(c))


@dataclass(frozen=True)
class Param:
    """A per-PE integer (rows, cols), loaded into a register by `task.set`."""
    name: str
    index: int


@dataclass(frozen=True)
class ColorParam:
    """A per-PE choice of color, for fabric descriptors (e.g. alternating chains)."""
    name: str
    index: int       # column in the per-PE parameter table


@dataclass(frozen=True)
class Desc:
    kind: int
    target: int          # buffer id or color index
    dtype: int
    offset: int = 0
    offset_reg: int = -1
    offset_scale: int = 0
    length: int = 1
    length_reg: int = -1
    stride: int = 1
    label: str = ""
    wrap: int = 0                # memory: element i at offset + (i mod wrap) * stride
    advance_switch: bool = False     # fabric out: the last wavelet advances the router's switch


@dataclass(eq=False)
class Instr:
    """One instruction of a task, as the builder records it (`wse.lowering` turns
    it into a row of the instruction table). r, imm, imm2 and imm3 mean what
    `wse.isa` says for the op; a jump's imm is an instruction of the same task."""
    op: int
    dst: Desc | None = None
    a: Desc | None = None
    b: Desc | None = None
    scalar: Desc | None = None       # a scalar operand in memory
    wavelet: bool = False            # the scalar operand is the task's wavelet
    value: float = 0.0               # the scalar operand when neither: an immediate
    slot: int = 0
    on_done: int = -1
    r: int = -1
    imm: int = 0
    imm2: int = 0
    imm3: int = 0


WAVELET = "wavelet"
"""Scalar operand: the wavelet that fired the current data task."""


class Buffer:
    """A named array in SRAM, at its own offset on each PE that holds it."""

    def __init__(self, program: "Program", id: int, name: str, shape: tuple[int, ...],
                 dtype: str, where: np.ndarray):
        self.program = program
        self.id = id
        self.name = name
        self.shape = shape
        self.dtype = dtype
        self.where = where
        self.size = int(np.prod(shape)) if shape else 1
        self.itemsize = 4 if dtype == "float32" else 2

    def __repr__(self) -> str:
        return f"Buffer({self.name!r}, shape={self.shape}, dtype={self.dtype})"

    def view(self, offset=0, length=None, stride: int = 1, wrap: int = 0) -> Desc:
        """Memory descriptor: `length` elements from `offset`, `stride` apart.

        offset may be an int, a Reg or `reg * k + c`; length an int or a Reg.
        wrap > 0 walks the first `wrap` elements again and again (element i
        is at offset + (i mod wrap) * stride), as a 2-D descriptor with a
        zero outer stride does: adding a stream of k vectors into one."""
        if int(wrap) < 0:
            raise ProgramError(f"buffer {self.name!r}: wrap must be >= 0, got {wrap}")
        off, off_reg, off_scale = 0, -1, 0
        if isinstance(offset, Reg):
            offset = RegExpr(offset, 1, 0)
        if isinstance(offset, RegExpr):
            off, off_reg, off_scale = offset.const, offset.reg.index, offset.scale
        else:
            off = int(offset)
        length_reg = -1
        if isinstance(length, Reg):
            length_reg, length = length.index, 0
        elif length is None:
            if stride == 0:
                length = 1
            else:
                length = (self.size - off + stride - 1) // stride if off_reg < 0 else self.size
        if off_reg < 0 and length_reg < 0 and length > 0:
            walked = min(int(length), int(wrap)) if wrap else int(length)
            last = off + (walked - 1) * stride
            if off < 0 or last >= self.size or last < 0:
                raise ProgramError(
                    f"buffer {self.name!r} has {self.size} elements: a view of {length} from "
                    f"offset {off} with stride {stride} reaches element {last}")
        return Desc(isa.MEM, self.id, isa.DTYPE_CODES[self.dtype], off, off_reg, off_scale,
                    int(length), length_reg, int(stride), label=self.name, wrap=int(wrap))

    def scalar(self, index=0) -> Desc:
        """One element, repeated (stride 0): a scalar operand or a broadcast source."""
        return self.view(offset=index, length=1, stride=0)


class TaskBuilder:
    """Instructions of one task. Every method appends one instruction."""

    def __init__(self, role: "Role", name: str, local_index: int, kind: int, color: int):
        self.role = role
        self.program = role.program
        self.name = name
        self.local_index = local_index
        self.kind = kind
        self.color = color
        self.entry = False
        self.code: list[Instr] = []
        self._next_slot = 0

    # --- plumbing
    def _emit(self, op, dst=None, a=None, b=None, s=None, slot=0, on_done=-1, r=-1,
              imm=0, imm2=0, imm3=0) -> int:
        ins = Instr(op, dst, a, b, slot=slot, on_done=on_done, r=r, imm=imm, imm2=imm2,
                    imm3=imm3)
        if isinstance(s, Desc):
            if s.kind != isa.MEM:
                raise ProgramError(f"task {self.name!r}: a scalar operand must be in memory")
            ins.scalar = s
        elif isinstance(s, str) and s == WAVELET:
            if self.kind != isa.TASK_DATA:
                raise ProgramError(f"task {self.name!r}: only a data task has a wavelet operand")
            ins.wavelet = True
        elif s is not None:
            ins.value = float(s)
        self.code.append(ins)
        return len(self.code) - 1

    def _slot(self, async_, slot) -> int:
        if slot is not None:
            if not 1 <= slot <= self.program.cfg.async_slots:
                raise ProgramError(f"async slot {slot} outside 1..{self.program.cfg.async_slots}")
            return slot
        if not async_:
            return 0
        if self.program.cfg.async_slots == 0:
            raise ProgramError("this config has async_slots = 0")
        self._next_slot = self._next_slot % self.program.cfg.async_slots + 1
        return self._next_slot

    def _vector(self, op, dst, a=None, b=None, s=None, async_=False, slot=None, on_done=None):
        for operand, what in ((dst, "destination"), (a, "first operand"), (b, "second operand")):
            if operand is not None and not isinstance(operand, Desc):
                raise ProgramError(f"task {self.name!r}: the {what} of {_OP_NAMES[op]} must be "
                                   f"a descriptor (buffer.view(), fabin(), fabout()), got {operand!r}")
        if dst.kind == isa.FABIN:
            raise ProgramError(f"task {self.name!r}: {_OP_NAMES[op]} cannot write to a fabric input")
        for operand in (a, b):
            if operand is not None and operand.kind == isa.FABOUT:
                raise ProgramError(f"task {self.name!r}: {_OP_NAMES[op]} cannot read a fabric output")
        fabric_in = [d for d in (a, b) if d is not None and d.kind == isa.FABIN]
        if len(fabric_in) == 2 and fabric_in[0].target == fabric_in[1].target \
                and fabric_in[0].offset_reg == fabric_in[1].offset_reg:
            raise ProgramError(f"task {self.name!r}: both operands read the same color")
        if op in isa.TRANSCENDENTAL_OPS and any(d.kind != isa.MEM for d in (dst, a)):
            raise ProgramError(f"task {self.name!r}: {_OP_NAMES[op]} works on memory operands "
                               f"only (on a PE it is a software sequence of passes over SRAM)")
        used_slot = self._slot(async_, slot)
        done = -1
        if on_done is not None:
            if used_slot == 0:
                raise ProgramError("on_done needs an asynchronous operation (async_=True)")
            done = self.role._task_index(on_done)
        i = self._emit(op, dst, a, b, s, slot=used_slot, on_done=done)
        return used_slot if used_slot else None

    # --- element-wise vector operations (dst[i] = f(a[i], b[i], s))
    def mov(self, dst, a, **kw):
        """dst = a. With a fabric operand: a send or a receive, one wavelet per cycle."""
        return self._vector(isa.OP_MOV, dst, a, **kw)

    def add(self, dst, a, b, **kw):
        return self._vector(isa.OP_ADD, dst, a, b, **kw)

    def sub(self, dst, a, b, **kw):
        return self._vector(isa.OP_SUB, dst, a, b, **kw)

    def mul(self, dst, a, b, **kw):
        return self._vector(isa.OP_MUL, dst, a, b, **kw)

    def max(self, dst, a, b, **kw):
        return self._vector(isa.OP_MAX, dst, a, b, **kw)

    def min(self, dst, a, b, **kw):
        return self._vector(isa.OP_MIN, dst, a, b, **kw)

    def fmac(self, dst, a, b, s, **kw):
        """dst = a + b * s (s: a float, a scalar descriptor or WAVELET)."""
        return self._vector(isa.OP_FMAC, dst, a, b, s, **kw)

    def scale(self, dst, a, s, **kw):
        return self._vector(isa.OP_SCALE, dst, a, None, s, **kw)

    def adds(self, dst, a, s, **kw):
        return self._vector(isa.OP_ADDS, dst, a, None, s, **kw)

    def subs(self, dst, a, s, **kw):
        return self._vector(isa.OP_SUBS, dst, a, None, s, **kw)

    def exp(self, dst, a, **kw):
        return self._vector(isa.OP_EXP, dst, a, **kw)

    def rsqrt(self, dst, a, eps: float = 0.0, **kw):
        """dst = 1 / sqrt(a + eps)."""
        return self._vector(isa.OP_RSQRT, dst, a, None, eps, **kw)

    def recip(self, dst, a, **kw):
        return self._vector(isa.OP_RECIP, dst, a, **kw)

    def tanh(self, dst, a, **kw):
        return self._vector(isa.OP_TANH, dst, a, **kw)

    def sigmoid(self, dst, a, **kw):
        return self._vector(isa.OP_SIGMOID, dst, a, **kw)

    def fill(self, dst, s, **kw):
        return self._vector(isa.OP_FILL, dst, None, None, s, **kw)

    # --- reductions of memory vectors into dst[0]
    def _reduction(self, op, dst, a, b=None, **kw):
        for d in (dst, a, b):
            if d is not None and d.kind != isa.MEM:
                raise ProgramError(f"task {self.name!r}: {_OP_NAMES[op]} works on memory only")
        return self._vector(op, dst, a, b, **kw)

    def sum(self, dst, a, **kw):
        return self._reduction(isa.OP_SUM, dst, a, **kw)

    def rmax(self, dst, a, **kw):
        return self._reduction(isa.OP_RMAX, dst, a, **kw)

    def dot(self, dst, a, b, **kw):
        return self._reduction(isa.OP_DOT, dst, a, b, **kw)

    def matmul(self, c: Desc, a: Desc, b: Desc, m: int, k: int, n: int,
               transpose_b: bool = False):
        """C[m, n] += A[m, k] @ B[k, n] on row-major SRAM tiles (B stored [n, k]
        when transpose_b), as a CSL kernel does it: a loop nest of FMAC vector
        instructions on the main thread, one per row of C (or per column,
        whichever is cheaper), each with its descriptor offset updates and
        loop branch, each paying issue and start-up
        (`wse.timing.matmul_loop` gives the nest, `matmul_cycles` its cost).
        The descriptors give each tile's start (an offset register is
        allowed); their lengths are not used. Uses five registers."""
        from .timing import matmul_loop
        tiles = {"c": c, "a": a, "b": b}
        for d in tiles.values():
            if not isinstance(d, Desc) or d.kind != isa.MEM:
                raise ProgramError(f"task {self.name!r}: matmul works on memory descriptors only")
        if min(m, k, n) < 1:
            raise ProgramError(f"task {self.name!r}: matmul sizes must be positive, got {m}x{k}x{n}")
        # the FMACs run at their multiplicands' rate: fp32 if either is
        rate = "float32" if isa.F32 in (a.dtype, b.dtype) else "float16"
        loop = matmul_loop(m, k, n, transpose_b, cfg=self.program.cfg, dtype=rate)
        walkers = []
        for op in loop.operands:
            tile = tiles[op.tile]
            at = self.reg()
            if tile.offset_reg >= 0:
                self.affine(at, Reg(tile.offset_reg), tile.offset_scale, tile.offset)
            else:
                self.set(at, tile.offset)
            view = dataclasses.replace(tile, offset=0, offset_reg=at.index, offset_scale=1,
                                       length=op.length, length_reg=-1, stride=op.stride)
            walkers.append((op, at, view))
        (_, _, dst), (_, _, vector), (_, _, scalar) = walkers
        with self.loop(loop.outer):
            with self.loop(loop.inner):
                self.fmac(dst, dst, vector, scalar)
                for op, at, _ in walkers:
                    if op.inner:
                        self.addi(at, op.inner)
            for op, at, _ in walkers:
                if loop.outer_step(op):
                    self.addi(at, loop.outer_step(op))
        for _, at, _ in walkers:
            self.program.free_reg(at)

    # --- control
    def reg(self) -> Reg:
        return self.role.program.reg()

    def set(self, reg: Reg, value):
        """reg = value (an int or a Param)."""
        if isinstance(value, Param):
            self._emit(isa.OP_SETP, r=reg.index, imm=value.index)
        else:
            self._emit(isa.OP_SET, r=reg.index, imm=int(value))

    def affine(self, reg: Reg, source: Reg, mul: int, add: int):
        """reg = source * mul + add."""
        self._emit(isa.OP_AFFINE, r=reg.index, imm=int(mul), imm2=source.index, imm3=int(add))

    def addi(self, reg: Reg, value: int):
        self.affine(reg, reg, 1, value)

    def mod(self, reg: Reg, modulus: int):
        """reg = reg mod modulus, in [0, modulus)."""
        if int(modulus) < 1:
            raise ProgramError(f"modulus must be >= 1, got {modulus}")
        self._emit(isa.OP_MODI, r=reg.index, imm=int(modulus))

    @contextlib.contextmanager
    def loop(self, count):
        """Repeat the body `count` times (an int, Param or Reg); zero runs it never."""
        counter = self.reg()
        if isinstance(count, Reg):
            self.affine(counter, count, 1, 0)
        else:
            self.set(counter, count)
        guard = self._emit(isa.OP_BLT, r=counter.index, imm=-1, imm2=1)
        top = len(self.code)
        yield counter
        self._emit(isa.OP_LOOP, r=counter.index, imm=top)
        self.code[guard].imm = len(self.code)
        self.role.program.free_reg(counter)

    def activate(self, task):
        self._emit(isa.OP_ACTIVATE, imm=self.role._task_index(task))

    def wait(self, slot=None):
        """Block the main thread until async slot `slot` (None: all slots) is idle."""
        self._emit(isa.OP_WAIT, imm=-1 if slot is None else int(slot))


_OP_NAMES = {v: k[3:].lower() for k, v in vars(isa).items() if k.startswith("OP_")}


class Role:
    """The program a group of PEs runs: its tasks."""

    def __init__(self, program: "Program", index: int, name: str):
        self.program = program
        self.index = index
        self.name = name
        self.tasks: list[TaskBuilder] = []

    def _task_index(self, task) -> int:
        name = task.name if isinstance(task, TaskBuilder) else task
        for t in self.tasks:
            if t.name == name:
                if t.kind == isa.TASK_DATA:
                    raise ProgramError(f"role {self.name!r}: data task {name!r} cannot be activated")
                return t.local_index
        raise ProgramError(f"role {self.name!r} has no task {name!r}")

    def _new_task(self, name, kind, color) -> TaskBuilder:
        if any(t.name == name for t in self.tasks):
            raise ProgramError(f"role {self.name!r} already has a task {name!r}")
        if len(self.tasks) >= 63:
            raise ProgramError(f"role {self.name!r}: at most 63 tasks per role")
        task = TaskBuilder(self, name, len(self.tasks), kind, color)
        self.tasks.append(task)
        return task

    def task(self, name: str, entry: bool = False) -> TaskBuilder:
        """A local task; entry tasks are activated when the run starts."""
        task = self._new_task(name, isa.TASK_LOCAL, -1)
        task.entry = entry
        return task

    def data_task(self, name: str, color: Color) -> TaskBuilder:
        """A task that fires on each wavelet of `color` reaching this PE (operand WAVELET)."""
        return self._new_task(name, isa.TASK_DATA, color.index)


# TaskBuilder is used as `with role.task(...) as t:`
TaskBuilder.__enter__ = lambda self: self
TaskBuilder.__exit__ = lambda self, *exc: None


class Program:
    """One run's routes, SRAM layout, per-PE programs and inputs."""

    def __init__(self, cfg: WaferConfig):
        if not isinstance(cfg, WaferConfig):
            raise ConfigError(f"expected a WaferConfig, got {type(cfg).__name__}")
        self.cfg = cfg
        self.rows, self.cols = cfg.rows, cfg.cols
        self.colors: list[Color] = []
        self._route_rx: list[np.ndarray] = []       # per color: (rows, cols) uint8
        self._route_tx: list[np.ndarray] = []
        self._switch_rx: list[np.ndarray] = []      # per color: the second switch position
        self._switch_tx: list[np.ndarray] = []
        self.buffers: list[Buffer] = []
        self._sram_used = np.zeros((self.rows, self.cols), np.int64)
        self._buf_offsets: list[np.ndarray] = []    # per buffer: (rows, cols) byte offset or -1
        self.params: list[np.ndarray] = []
        self.param_names: list[str] = []
        self.roles: list[Role] = [Role(self, 0, "idle")]
        self.pe_role = np.zeros((self.rows, self.cols), np.int32)
        self._free_regs = list(range(isa.NUM_REGISTERS))
        self._arena = None
        self._deferred: list = []                   # loads waiting for the SRAM image
        self._ran_in_place = False
        self.host_bytes_loaded = 0                  # SRAM bytes written by load()

    # --- selection of PEs
    def pes(self, rows=slice(None), cols=slice(None)) -> np.ndarray:
        """Boolean mask of the PEs in the given rows and columns (ints or slices)."""
        mask = np.zeros((self.rows, self.cols), bool)
        mask[rows, cols] = True
        return mask

    def _mask(self, where) -> np.ndarray:
        if where is None:
            return np.ones((self.rows, self.cols), bool)
        mask = np.asarray(where, bool)
        if mask.shape != (self.rows, self.cols):
            raise ProgramError(f"PE selection has shape {mask.shape}, expected "
                               f"({self.rows}, {self.cols})")
        return mask

    # --- colors and routes
    def color(self, name: str = "", id: int | None = None) -> Color:
        used = {c.id for c in self.colors}
        if id is None:
            free = [i for i in range(self.cfg.num_colors) if i not in used]
            if not free:
                raise RouteError(f"color {name!r}: all {self.cfg.num_colors} colors of "
                                 f"{self.cfg.name} are in use ({', '.join(c.name for c in self.colors)})")
            id = free[0]
        if not 0 <= id < self.cfg.num_colors or id in used:
            raise RouteError(f"color id {id} for {name!r} is outside 0..{self.cfg.num_colors - 1} "
                             f"or already used")
        color = Color(name or f"c{id}", id, len(self.colors))
        self.colors.append(color)
        self._route_rx.append(np.zeros((self.rows, self.cols), np.uint8))
        self._route_tx.append(np.zeros((self.rows, self.cols), np.uint8))
        self._switch_rx.append(np.zeros((self.rows, self.cols), np.uint8))
        self._switch_tx.append(np.zeros((self.rows, self.cols), np.uint8))
        return color

    def route(self, color: Color, rx, tx, where=None, switch=None):
        """Set the route of `color` at the selected PEs: accept from rx, forward to tx.

        switch=(rx2, tx2) gives the router a second position, which it takes
        when its PE's stream sent with `fabout(..., advance_switch=True)` has
        put its last wavelet in (and leaves again at the next such stream).
        A wavelet from a port only the other position accepts waits upstream
        until the switch moves (the way the hardware's fabric switches order
        several senders on one color); one from a port neither accepts is a
        RouteError."""
        mask = self._mask(where)
        positions = [(rx, tx)] + ([tuple(switch)] if switch is not None else [])
        masks = []
        for rx_p, tx_p in positions:
            rx_mask, tx_mask = port_mask(rx_p), port_mask(tx_p)
            if tx_mask == 0 and mask.any():
                raise RouteError(f"color {color.name}: a route needs at least one tx port")
            ys, xs = np.nonzero(mask)
            for port, bad in ((isa.NORTH, ys == 0), (isa.SOUTH, ys == self.rows - 1),
                              (isa.WEST, xs == 0), (isa.EAST, xs == self.cols - 1)):
                if tx_mask >> port & 1 and bad.any():
                    i = int(np.argmax(bad))
                    raise RouteError(f"color {color.name}: PE ({xs[i]}, {ys[i]}) would send out "
                                     f"of the grid through port {isa.PORT_NAMES[port]}")
            masks.append((rx_mask, tx_mask))
        self._route_rx[color.index][mask] = masks[0][0]
        self._route_tx[color.index][mask] = masks[0][1]
        rx2, tx2 = masks[1] if switch is not None else (0, 0)
        self._switch_rx[color.index][mask] = rx2
        self._switch_tx[color.index][mask] = tx2

    def route_masks(self, color: Color, rx: np.ndarray, tx: np.ndarray):
        """Set the whole (rows, cols) rx and tx port masks of `color` at once."""
        rx = np.asarray(rx, np.uint8)
        tx = np.asarray(tx, np.uint8)
        for port, sl in ((isa.NORTH, np.s_[0, :]), (isa.SOUTH, np.s_[-1, :]),
                         (isa.WEST, np.s_[:, 0]), (isa.EAST, np.s_[:, -1])):
            edge = tx[sl] >> port & 1
            if edge.any():
                raise RouteError(f"color {color.name}: a route on the grid edge sends out of the "
                                 f"grid through port {isa.PORT_NAMES[port]}")
        self._route_rx[color.index] = rx.copy()
        self._route_tx[color.index] = tx.copy()

    def routes_of(self, color: Color, position: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """The (rows, cols) rx and tx port masks of `color` in switch position 0
        or 1 (zero where a PE's route has no second position)."""
        if position == 1:
            return self._switch_rx[color.index], self._switch_tx[color.index]
        return self._route_rx[color.index], self._route_tx[color.index]

    # --- fabric descriptors
    def _fabric(self, kind, color, length) -> Desc:
        length_reg = -1
        if isinstance(length, Reg):
            length_reg, length = length.index, 0
        elif int(length) < 0:
            raise ProgramError(f"fabric descriptor length must be >= 0, got {length}")
        if isinstance(color, ColorParam):
            return Desc(kind, 0, isa.F32, 0, color.index, 0, int(length), length_reg, 1,
                        label=color.name)
        if not isinstance(color, Color):
            raise ProgramError(f"expected a Color or ColorParam, got {color!r}")
        return Desc(kind, color.index, isa.F32, 0, -1, 0, int(length), length_reg, 1,
                    label=color.name)

    def fabin(self, color, length) -> Desc:
        """Receive `length` wavelets of `color` from this PE's ramp."""
        return self._fabric(isa.FABIN, color, length)

    def fabout(self, color, length, advance_switch: bool = False) -> Desc:
        """Send `length` wavelets of `color` into this PE's router. With
        advance_switch, once the last one is in, the router takes the other
        position of its switch for `color` (see `route(switch=...)`)."""
        return dataclasses.replace(self._fabric(isa.FABOUT, color, length),
                                   advance_switch=bool(advance_switch))

    # --- SRAM
    def buffer(self, name: str, shape, dtype: str = "float32", where=None) -> Buffer:
        """Allocate `shape` elements of `dtype` on the selected PEs (default: all)."""
        if self._arena is not None:
            raise ProgramError(f"buffer {name!r}: allocate every buffer before loading data "
                               f"(or load with deferred=True)")
        if dtype not in DTYPES:
            raise ConfigError(f"buffer {name!r}: dtype {dtype!r}, expected one of {DTYPES}")
        if any(b.name == name for b in self.buffers):
            raise ProgramError(f"buffer {name!r} already exists")
        shape = (int(shape),) if np.isscalar(shape) else tuple(int(s) for s in shape)
        if any(s < 1 for s in shape):
            raise ProgramError(f"buffer {name!r}: shape {shape} has an empty dimension")
        mask = self._mask(where)
        buf = Buffer(self, len(self.buffers), name, shape, dtype, mask)
        nbytes = (buf.size * buf.itemsize + 3) // 4 * 4       # keep 4-byte alignment
        after = self._sram_used + nbytes
        over = mask & (after > self.cfg.sram_bytes)
        if over.any():
            y, x = np.argwhere(over)[0]
            free = self.cfg.sram_bytes - int(self._sram_used[y, x])
            held = ", ".join(f"{b.name} ({b.size * b.itemsize} B)" for b in self.buffers
                             if b.where[y, x])
            raise SramOverflowError(
                f"PE ({x}, {y}): buffer {name!r} needs {nbytes} bytes but only {free} of "
                f"{self.cfg.sram_bytes} are free (holding: {held or 'nothing'})")
        offsets = np.where(mask, self._sram_used, -1)
        self._sram_used = np.where(mask, after, self._sram_used)
        self.buffers.append(buf)
        self._buf_offsets.append(offsets)
        return buf

    @property
    def sram_used(self) -> np.ndarray:
        """Bytes allocated per PE, (rows, cols)."""
        return self._sram_used.copy()

    # --- per-PE integers, roles, registers
    def param(self, name: str, values) -> Param:
        values = np.broadcast_to(np.asarray(values), (self.rows, self.cols))
        if not np.issubdtype(values.dtype, np.integer):
            raise ProgramError(f"param {name!r} must hold integers, got {values.dtype}")
        self.params.append(values.astype(np.int64))
        self.param_names.append(name)
        return Param(name, len(self.params) - 1)

    def color_param(self, name: str, colors) -> ColorParam:
        """Per-PE color choice: `colors` is a (rows, cols) array of Color (or None)."""
        arr = np.asarray(colors, dtype=object)
        arr = np.broadcast_to(arr, (self.rows, self.cols))
        index = np.array([[c.index if isinstance(c, Color) else -1 for c in row] for row in arr],
                         np.int64) if arr.size <= 65536 else np.vectorize(
            lambda c: c.index if isinstance(c, Color) else -1, otypes=[np.int64])(arr)
        self.params.append(index)
        self.param_names.append(name)
        return ColorParam(name, len(self.params) - 1)

    def color_param_indices(self, name: str, indices: np.ndarray) -> ColorParam:
        """Like color_param, from an int array of Color.index values (fast for big grids)."""
        indices = np.broadcast_to(np.asarray(indices, np.int64), (self.rows, self.cols))
        self.params.append(indices.copy())
        self.param_names.append(name)
        return ColorParam(name, len(self.params) - 1)

    def reg(self) -> Reg:
        if not self._free_regs:
            raise ProgramError(f"all {isa.NUM_REGISTERS} registers are in use")
        return Reg(self._free_regs.pop(0))

    def free_reg(self, reg: Reg):
        if reg.index not in self._free_regs:
            self._free_regs.insert(0, reg.index)

    def role(self, name: str, where=None) -> Role:
        """A program for the selected PEs (a PE belongs to its last role)."""
        if any(r.name == name for r in self.roles):
            raise ProgramError(f"role {name!r} already exists")
        role = Role(self, len(self.roles), name)
        self.roles.append(role)
        self.pe_role[self._mask(where)] = role.index
        return role

    # --- data
    def load(self, buffer: Buffer, data, where=None, deferred: bool = False):
        """Write `data` into `buffer` on the selected PEs.

        data: shape buffer.shape (same on every PE) or (rows, cols, *buffer.shape).

        The SRAM image is laid out when the first immediate load (or compile)
        needs it, and no buffer can be allocated after that. deferred=True
        checks the shape now and records the load instead: recorded loads are
        written, in the order they were made, when the image is laid out (at
        the next immediate load, compile or run). A builder can then allocate
        and load each buffer together, in whatever order reads best. The
        program keeps a reference to `data` (no copy) until then."""
        data = np.asarray(data)
        per_pe = (self.rows, self.cols) + buffer.shape
        if data.shape == buffer.shape or data.size == buffer.size and data.ndim <= 1 \
                and buffer.size == data.size:
            data = np.broadcast_to(data.reshape(buffer.shape), per_pe)
        if data.shape != per_pe:
            raise ProgramError(f"load into {buffer.name!r}: data has shape {data.shape}, expected "
                               f"{buffer.shape} or {per_pe}")
        mask = self._mask(where) & buffer.where
        if deferred and self._arena is None:
            self._deferred.append((buffer, data, mask))
            return
        self._write(buffer, data, mask)

    def _write(self, buffer: Buffer, data: np.ndarray, mask: np.ndarray):
        """Write the checked (rows, cols, *shape) `data` into the SRAM image,
        converting each value once, straight into its SRAM words."""
        arena = self._ensure_arena()
        addr = self._buffer_addresses(buffer)
        pes = np.nonzero(mask.reshape(-1))[0]
        self.host_bytes_loaded += len(pes) * buffer.size * buffer.itemsize
        words = _pe_words(arena, addr, buffer.size, buffer.dtype)
        if words is not None:
            target = words.reshape(self.rows, self.cols, buffer.size)
            source = data.reshape(self.rows, self.cols, buffer.size)
            if mask.all():
                target[...] = source
            else:
                target[mask] = source[mask]
            return
        flat = data.reshape(self.rows * self.cols, buffer.size)
        view = arena.view(_WORD_DTYPES[buffer.dtype])
        for chunk in _pe_chunks(pes, buffer.size):
            view[addr[chunk, None] // view.itemsize + np.arange(buffer.size)] = flat[chunk]

    def _ensure_arena(self) -> np.ndarray:
        if self._arena is None:
            used = self._sram_used.reshape(-1)
            self._pe_base = np.concatenate([[0], np.cumsum(used)[:-1]]).astype(np.int64)
            self._arena = np.zeros(max(int(used.sum()), 4), np.uint8)
            deferred, self._deferred = self._deferred, []
            while deferred:                 # drop each array once it is written
                self._write(*deferred.pop(0))
        return self._arena

    def _buffer_addresses(self, buffer: Buffer) -> np.ndarray:
        """Arena byte address of `buffer` per PE (flat), -1 where absent."""
        self._ensure_arena()
        off = self._buf_offsets[buffer.id].reshape(-1)
        return np.where(off >= 0, self._pe_base + off, -1)

    def resume(self, image: "SramImage") -> None:
        """Start from the SRAM a previous run left (`RunResult.image()`) instead
        of an empty image: the buffers keep the values that run left in them
        and cost no host bytes (`host_bytes_loaded`), as on a wafer whose
        SRAM holds a session's weights and state from one program to the next.
        Only the code, routes and parameters are new. Needs every buffer
        allocated and nothing loaded yet; the layout (names, shapes, dtypes,
        per-PE offsets) must equal the image's, else a ConfigError names the
        first buffer that differs. The image's bytes become this program's
        (no copy): the image must not be used again."""
        if self._arena is not None:
            raise ProgramError("resume: this program's SRAM image is already laid out "
                               "(resume before any immediate load)")
        mine = _layout_of(self)
        for i in range(max(len(mine.buffers), len(image.layout.buffers))):
            here = mine.buffers[i] if i < len(mine.buffers) else None
            there = image.layout.buffers[i] if i < len(image.layout.buffers) else None
            if here != there or not np.array_equal(mine.offsets[i], image.layout.offsets[i]):
                name = (here or there)[0]
                raise ConfigError(
                    f"resume: buffer {name!r} is {_describe(here)} in this program but "
                    f"{_describe(there)} in the image (the layouts must be identical)")
        if image.arena.nbytes != max(int(self._sram_used.sum()), 4):
            raise ConfigError("resume: the image's size does not match this program's SRAM")
        self._pe_base = mine.pe_base
        self._arena = image.arena
        image.arena = None
        deferred, self._deferred = self._deferred, []
        while deferred:
            self._write(*deferred.pop(0))

    # --- compile and run
    def compile(self):
        """The engine's tables for this program, (static, ncolors), built by
        `wse.lowering` (static.settings is left for run to fill)."""
        self._ensure_arena()
        static, ncolors, self._task_names = lowering.lower(self)
        return static, ncolors

    def run(self, max_cycles: int | None = None, deadlock_window: int | None = None,
            trap_nan: bool | None = None, record_links: bool | None = None,
            record_deliveries: bool | None = None, trace: bool | None = None,
            event_capacity: int | None = None, engine: str | None = None) -> "RunResult":
        """Run the program to completion; raises a WseError subclass on any fault.

        Options left as None take their value from the innermost
        `wse.run_options(...)` block, else from RUN_DEFAULTS, so a caller can
        trace or trap NaNs inside a kernel it did not write.

        `engine` is "stream" (the default: periods of cycles that repeat are
        advanced in bulk, docs/engine.md) or "wavelet" (every wavelet stepped:
        the reference); both give the same cycles, counters, values, errors
        and events to the bit. The report's extra["bulk_hop_fraction"] says how
        much of the traffic went in bulk."""
        from . import engine as engine_loop
        from .report import RunReport
        given = dict(max_cycles=max_cycles, deadlock_window=deadlock_window,
                     trap_nan=trap_nan, record_links=record_links,
                     record_deliveries=record_deliveries, trace=trace,
                     event_capacity=event_capacity, engine=engine)
        options = {**RUN_DEFAULTS, **_RUN_OPTIONS.get(),
                   **{k: v for k, v in given.items() if v is not None}}
        max_cycles, deadlock_window = options["max_cycles"], options["deadlock_window"]
        trap_nan, trace = options["trap_nan"], options["trace"]
        record_links, record_deliveries = options["record_links"], options["record_deliveries"]
        event_capacity = options["event_capacity"]
        if not 1 <= int(max_cycles) <= 1 << 60:
            raise ConfigError(f"max_cycles = {max_cycles}: must be in [1, 2**60]")
        if int(deadlock_window) < 1:
            raise ConfigError(f"deadlock_window = {deadlock_window}: must be >= 1")
        if options["engine"] not in lowering.ENGINES:
            raise ConfigError(f"engine = {options['engine']!r}: must be one of {lowering.ENGINES}")
        static, ncolors = self.compile()
        static = static._replace(settings=lowering.settings(self.cfg, ncolors, options))
        if self._ran_in_place:
            raise ProgramError("this Program already ran in place (its SRAM image was large); "
                               "build it again to run it again")
        # A run works on a copy of the loaded SRAM image so a Program can run twice;
        # images over IN_PLACE_BYTES are used in place to halve peak memory.
        in_place = self._arena.nbytes > IN_PLACE_BYTES
        self._ran_in_place = in_place
        state = lowering.new_state(
            static, self._arena if in_place else self._arena.copy(), ncolors, self.cfg,
            event_capacity if (record_links or record_deliveries or trace) else 0,
            stream=options["engine"] == "stream")
        started = time.perf_counter()
        engine_loop.run(static, state)
        wall = time.perf_counter() - started
        diagnostics.raise_on_status(self, static, state)
        report = RunReport.from_state(self, static, state, wall)
        return RunResult(self, state, report)


class RunResult:
    """What a run leaves: the report and the final SRAM contents."""

    def __init__(self, program: Program, state, report):
        self.program = program
        self.state = state
        self.report = report

    def image(self) -> "SramImage":
        """The final SRAM contents with their buffer layout, for `Program.resume`
        (shares the bytes with this result; no copy)."""
        return SramImage(_layout_of(self.program), self.state.sram_f32.view(np.uint8))

    def read(self, buffer: Buffer) -> np.ndarray:
        """(rows, cols, *shape) array of the buffer's final contents; NaN where absent."""
        prog = self.program
        out = _gather(self.state.sram_f32.view(np.uint8), prog._buffer_addresses(buffer),
                      buffer.size, buffer.dtype)
        return out.reshape((prog.rows, prog.cols) + buffer.shape)


def _pe_chunks(pes: np.ndarray, elements: int, budget: int = 1 << 24):
    """Split PE indices so that index arrays for one chunk stay under `budget`
    elements (a full-wafer load would otherwise build gigabytes of indices)."""
    step = max(1, budget // max(elements, 1))
    for start in range(0, len(pes), step):
        yield pes[start:start + step]


@dataclass(frozen=True)
class BufferLayout:
    """Where a program's buffers are: (name, shape, dtype) per buffer in
    allocation order, each one's byte offset per PE (rows, cols; -1 where
    absent), and each PE's first byte in the SRAM image."""
    buffers: tuple
    offsets: tuple
    pe_base: np.ndarray

    def addresses(self, index: int) -> np.ndarray:
        off = self.offsets[index].reshape(-1)
        return np.where(off >= 0, self.pe_base + off, -1)


@dataclass
class SramImage:
    """SRAM bytes a run left and the layout they follow (`RunResult.image`)."""
    layout: BufferLayout
    arena: np.ndarray | None

    def read(self, name: str) -> np.ndarray:
        """(rows, cols, *shape) contents of buffer `name`; NaN where absent."""
        names = [b[0] for b in self.layout.buffers]
        if name not in names:
            raise ConfigError(f"the image has no buffer {name!r} (it has {names})")
        if self.arena is None:
            raise ConfigError("this image was handed to Program.resume and is gone")
        i = names.index(name)
        _, shape, dtype = self.layout.buffers[i]
        rows, cols = self.layout.offsets[i].shape
        size = int(np.prod(shape))
        return _gather(self.arena, self.layout.addresses(i), size, dtype).reshape(
            (rows, cols) + tuple(shape))


def _layout_of(program: Program) -> BufferLayout:
    used = program._sram_used.reshape(-1)
    base = program._pe_base if program._arena is not None else \
        np.concatenate([[0], np.cumsum(used)[:-1]]).astype(np.int64)
    return BufferLayout(tuple((b.name, b.shape, b.dtype) for b in program.buffers),
                        tuple(program._buf_offsets), base)


def _describe(entry) -> str:
    if entry is None:
        return "absent"
    name, shape, dtype = entry
    return f"{dtype} {shape}"


_WORD_DTYPES = {"float32": np.float32, "float16": np.float16}


def _pe_words(arena: np.ndarray, addr: np.ndarray, size: int, dtype: str):
    """A (PEs, size) view of a buffer's words in the arena when its byte
    addresses step evenly from PE to PE (one offset on every PE that holds it,
    every PE the same SRAM size: the usual layout), else None. Rows of PEs
    without the buffer point at other bytes and must not be used."""
    pes = np.flatnonzero(addr >= 0)
    if len(pes) < 2:
        return None
    word = np.dtype(_WORD_DTYPES[dtype])
    stride, rem = divmod(int(addr[pes[-1]] - addr[pes[0]]), int(pes[-1] - pes[0]))
    first = int(addr[pes[0]]) - int(pes[0]) * stride
    end = first + (len(addr) - 1) * stride + size * word.itemsize
    if rem or stride < size * word.itemsize or first < 0 or end > arena.nbytes \
            or not np.array_equal(addr[pes], first + pes * stride):
        return None
    return np.ndarray((len(addr), size), word, buffer=arena, offset=first,
                      strides=(stride, word.itemsize))


def _gather(arena: np.ndarray, addr: np.ndarray, size: int, dtype: str) -> np.ndarray:
    """(PEs, size) values of a buffer at byte addresses `addr` (-1: absent -> NaN)."""
    present = addr >= 0
    out = np.full((addr.shape[0], size), np.nan, _WORD_DTYPES[dtype])
    words = _pe_words(arena, addr, size, dtype)
    if words is not None:
        if present.all():
            out[...] = words
        else:
            out[present] = words[present]
        return out
    view = arena.view(_WORD_DTYPES[dtype])
    for chunk in _pe_chunks(np.nonzero(present)[0], size):
        out[chunk] = view[addr[chunk, None] // view.itemsize + np.arange(size)]
    return out
