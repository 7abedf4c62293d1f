"""What a PE pays: the cycles of instructions and of the routines `wse`
offers, in closed form, for the cost models written above the machine.

The engine never reads these: its counts come from its rules (issue cycles,
vector start-up, SIMD rate, one element a cycle on the fabric). These
functions restate the consequences of those rules for straight-line code,
and tests hold each one equal to what the engine counts
(tests/test_timing.py).

The tile product (`TaskBuilder.matmul`) is the loop a CSL kernel issues: one
FMAC vector instruction per row of the output tile or per column, whichever
nest `matmul_cycles` finds cheaper, each followed by its descriptor offset
updates and the loop branch.
"""
from __future__ import annotations

from dataclasses import dataclass

from . import isa
from .config import WaferConfig


def simd_cycles(n: int, dtype: str, cfg: WaferConfig) -> int:
    """Cycles of one pass over n elements at SIMD rate."""
    width = cfg.simd_width(dtype)
    return -(-int(n) // width)


def vector_cycles(n: int, dtype: str, cfg: WaferConfig, op: int = isa.OP_ADD) -> int:
    """Issue to completion of one synchronous memory-only vector instruction
    of n elements (a transcendental: its whole software sequence), the
    datapath being free: start-up, then the passes at SIMD rate, the
    sequence's further instructions each paying issue and start-up."""
    if n <= 0:
        return cfg.scalar_op_cycles
    passes = isa.SOFTWARE_SEQUENCE_PASSES.get(op, 1) if cfg.software_transcendentals else 1
    body = cfg.vector_startup_cycles + passes * simd_cycles(n, dtype, cfg) \
        + (passes - 1) * (cfg.scalar_op_cycles + cfg.vector_startup_cycles)
    return max(body, cfg.scalar_op_cycles)


@dataclass(frozen=True)
class Operand:
    """How one FMAC operand walks its tile: `length` elements `stride` apart
    from an offset that moves by `inner` per inner iteration and by `outer`
    per outer iteration. `tile` names the matmul argument it reads: "c",
    "a" or "b"."""
    tile: str
    length: int
    stride: int
    inner: int
    outer: int


@dataclass(frozen=True)
class MatmulLoop:
    """The loop nest `TaskBuilder.matmul` emits for C[m, n] += A[m, k] @ B[k, n].

    form "rows": for i < m, t < k: C[i, :] += A[i, t] * B[t, :]
                 (outer m, inner k, vectors of n)
    form "cols": for t < k, j < n: C[:, j] += B[t, j] * A[:, t]
                 (outer k, inner n, vectors of m)
    Before the nest: one set per operand offset (3), the outer counter's set
    and test (2). Per outer iteration: the inner counter's set and test, the
    offset updates that bring each operand from the end of the inner loop to
    the next outer step, the branch. Per inner iteration: the FMAC, one
    offset update per operand that moves, the branch.
    """
    form: str
    outer: int
    inner: int
    dst: Operand             # C, also the FMAC's addend
    vector: Operand          # the multiplied vector
    scalar: Operand          # the multiplier, one element

    @property
    def operands(self) -> tuple[Operand, Operand, Operand]:
        return self.dst, self.vector, self.scalar

    @property
    def length(self) -> int:
        return self.dst.length

    def outer_step(self, op: Operand) -> int:
        """Offset change at the end of an outer iteration."""
        return op.outer - self.inner * op.inner

    def instructions(self) -> int:
        """Instructions the nest issues."""
        per_outer = 2 + self.inner * (2 + self.inner_updates) + self.outer_updates + 1
        return 5 + self.outer * per_outer

    @property
    def inner_updates(self) -> int:
        return sum(op.inner != 0 for op in self.operands)

    @property
    def outer_updates(self) -> int:
        return sum(self.outer_step(op) != 0 for op in self.operands)


def matmul_loop(m: int, k: int, n: int, transpose_b: bool = False,
                form: str | None = None, cfg: WaferConfig | None = None,
                dtype: str = "float32") -> MatmulLoop:
    """The loop nest for an m x k x n tile product: `form` if given, else the
    cheaper of the two by `matmul_cycles` (rows when they tie)."""
    if form is None:
        if cfg is None:
            raise ValueError("matmul_loop needs cfg to choose the form")
        loops = [matmul_loop(m, k, n, transpose_b, f) for f in ("rows", "cols")]
        return min(loops, key=lambda lp: _loop_cycles(lp, dtype, cfg))
    # B[t, j] is at t*n + j, or at j*k + t when stored transposed
    b_row, b_col = (1, k) if transpose_b else (n, 1)
    if form == "rows":
        return MatmulLoop("rows", m, k,
                          dst=Operand("c", n, 1, 0, n),
                          vector=Operand("b", n, b_col, b_row, 0),
                          scalar=Operand("a", 1, 0, 1, k))
    if form == "cols":
        return MatmulLoop("cols", k, n,
                          dst=Operand("c", m, n, 1, 0),
                          vector=Operand("a", m, k, 0, 1),
                          scalar=Operand("b", 1, 0, b_col, b_row))
    raise ValueError(f"unknown matmul form {form!r}: expected 'rows' or 'cols'")


def _loop_cycles(lp: MatmulLoop, dtype: str, cfg: WaferConfig) -> int:
    issue = cfg.scalar_op_cycles
    fmac = max(cfg.vector_startup_cycles + simd_cycles(lp.length, dtype, cfg), issue)
    per_inner = fmac + (lp.inner_updates + 1) * issue
    per_outer = 2 * issue + lp.inner * per_inner + (lp.outer_updates + 1) * issue
    return 5 * issue + lp.outer * per_outer


def matmul_cycles(m: int, k: int, n: int, dtype: str, cfg: WaferConfig,
                  transpose_b: bool = False) -> int:
    """Issue of the first instruction to completion of `TaskBuilder.matmul`
    on the main thread (dtype: the multiplicands' rate, float32 if A or B is;
    the datapath free):

        5 c + outer * (2 c + inner * (f + (v + 1) c) + (u + 1) c)

    with c = scalar_op_cycles, f = max(vector_startup_cycles +
    ceil(length / SIMD), c) one FMAC, v and u the offset updates per inner
    and per outer iteration (MatmulLoop).
    With every instruction cost 0 it is m * k * ceil(n / SIMD) (rows) or
    k * n * ceil(m / SIMD) (cols): a tile at peak rate, rounded up per row."""
    lp = matmul_loop(m, k, n, transpose_b, cfg=cfg, dtype=dtype)
    return _loop_cycles(lp, dtype, cfg)


def matmul_compute_cycles(m: int, k: int, n: int, dtype: str, cfg: WaferConfig,
                          transpose_b: bool = False) -> int:
    """Cycles the datapath spends on FMAC elements in `TaskBuilder.matmul`
    (what a PE's compute counter records for it)."""
    lp = matmul_loop(m, k, n, transpose_b, cfg=cfg, dtype=dtype)
    return lp.outer * lp.inner * simd_cycles(lp.length, dtype, cfg)
