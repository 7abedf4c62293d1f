"""Hypothesis strategies of kernel problems: a random problem sized to fit
the grid and SRAM, with its float64 reference from kernels.reference.

    from hypothesis import given
    from kernels import strategies

    @given(strategies.problems("gemm", max_side=3, dtypes=("float16",)))
    def test_my_gemm(problem):
        C, report = my_gemm(problem.A, problem.B, problem.cfg)
        testing.assert_close(C, problem.reference(), problem.dtype, terms=problem.K,
                             scale=problem.magnitude())

`problems(kernel)` reads the kernel registry (kernels.registry): a kernel
names its generator there. The machine-level strategies (configurations,
values, routes, programs) and the assertions are in wse.testing. This
module imports hypothesis: import it in test code only.
"""
from __future__ import annotations

import importlib
import math
from dataclasses import dataclass

import numpy as np
from hypothesis import strategies as st

from wse import testing
from wse.config import DTYPES, WSE2, WaferConfig
from wse.errors import ConfigError

from . import reference, registry

__all__ = [
    "problems", "CollectiveProblem", "GemmProblem", "GemvProblem", "AttentionProblem",
    "collective_problems", "gemm_problems", "gemmt_problems", "gemv_problems",
    "attention_problems",
    "gemm_sram_bytes",
]


def problems(kernel: str, **options):
    """The strategy of a registered kernel's problems; options go to its generator."""
    record = registry.get(kernel)
    if record.problems is None:
        raise ConfigError(f"kernel {kernel!r} has no problem generator in the registry")
    module, _, name = record.problems.partition(":")
    return getattr(importlib.import_module(module), name)(**options)


@dataclass(frozen=True)
class CollectiveProblem:
    """x of shape (rows, cols, B) on cfg's grid; `root` is an index along the
    line (along x or y) or an (x, y) pair (along xy)."""
    cfg: WaferConfig
    x: np.ndarray
    along: str
    root: object
    op: str

    @property
    def line_length(self) -> int:
        """PEs whose vectors one result combines."""
        return {"x": self.cfg.cols, "y": self.cfg.rows, "xy": self.cfg.num_pes}[self.along]

    def reference(self, kind: str = "allreduce") -> np.ndarray:
        """float64 result of `kind`: "reduce" -> (rows, B) along x, (cols, B) along y,
        (B,) along xy; "allreduce" and "broadcast" -> (rows, cols, B)."""
        if kind == "reduce":
            return reference.reduce(self.x, self.along, self.op)
        if kind == "allreduce":
            return reference.allreduce(self.x, self.along, self.op)
        if kind == "broadcast":
            return reference.broadcast(self.x, self.along, self.root)
        raise ConfigError(f"reference kind {kind!r}: expected reduce, allreduce or broadcast")


@st.composite
def collective_problems(draw, alongs=("x", "y", "xy"), ops=("sum", "max"), min_rows: int = 1,
                        max_rows: int = 4, min_cols: int = 1, max_cols: int = 4,
                        min_length: int = 1, max_length: int = 8, dtype: str = "float32",
                        max_magnitude: float = 1e3, awkward: bool = True,
                        vary_timing: bool = False):
    """A vector per PE, an axis, a root on it and an operation. Values are
    bounded by max_magnitude so that sums stay finite in `dtype`."""
    cfg = draw(testing.wafer_configs(min_rows, max_rows, min_cols, max_cols,
                                     vary_timing=vary_timing))
    along = draw(st.sampled_from(alongs))
    if along == "x":
        root = draw(st.integers(0, cfg.cols - 1))
    elif along == "y":
        root = draw(st.integers(0, cfg.rows - 1))
    else:
        root = (draw(st.integers(0, cfg.cols - 1)), draw(st.integers(0, cfg.rows - 1)))
    length = draw(st.integers(min_length, max_length))
    x = draw(testing.pe_vectors(cfg.rows, cfg.cols, length, dtype, awkward=awkward,
                        max_magnitude=max_magnitude))
    return CollectiveProblem(cfg, x, along, root, draw(st.sampled_from(ops)))


def gemm_sram_bytes(M: int, K: int, N: int, rows: int, cols: int, dtype: str,
                    buffers: int = 2) -> int:
    """Bytes per PE for C = A @ B tiled over a rows x cols grid: `buffers` copies
    of the A and B tiles (2: double buffering, as MeshGEMM does) and one fp32 C
    tile. An estimate for sizing problems, not any kernel's exact layout."""
    item = np.dtype(dtype).itemsize
    mt, kt_r, kt_c, nt = -(-M // rows), -(-K // rows), -(-K // cols), -(-N // cols)
    return buffers * item * (mt * kt_c + kt_r * nt) + 4 * mt * nt


@dataclass(frozen=True)
class GemmProblem:
    """C = A @ B (A: (M, K); B: (K, N), or (N, K) when transpose_b) on cfg's grid."""
    cfg: WaferConfig
    A: np.ndarray
    B: np.ndarray
    M: int
    K: int
    N: int
    dtype: str
    transpose_b: bool = False

    def reference(self) -> np.ndarray:
        return reference.matmul(self.A, self.B, self.transpose_b)

    def magnitude(self) -> np.ndarray:
        """|A| @ |B|: the scale of each output's terms (for assert_close(scale=...))."""
        return reference.matmul(np.abs(self.A), np.abs(self.B), self.transpose_b)


@st.composite
def gemm_problems(draw, min_side: int = 1, max_side: int = 4, square_grid: bool = True,
                  dtypes=DTYPES, max_tile: int = 6, transpose_b=(False,),
                  multiple_of_grid: bool = True, max_magnitude: float = 2.0,
                  awkward: bool = True, sram_fraction: float = 0.5):
    """A GEMM on a grid of side min_side..max_side (square by default, as Cannon
    and MeshGEMM need). With multiple_of_grid, M and K are multiples of the rows
    and K and N of the cols (K of both), so every PE holds an equal tile of at most
    max_tile per side; otherwise sizes are arbitrary up to max_tile per PE. The
    problem fits in sram_fraction of a PE's SRAM by `gemm_sram_bytes`."""
    rows, cols = draw(testing.grids(min_side, max_side, min_side, max_side, square_grid))
    cfg = WSE2.with_grid(rows=rows, cols=cols)
    dtype = draw(testing.dtypes(dtypes))
    lcm = rows * cols // math.gcd(rows, cols)
    if multiple_of_grid:
        M = rows * draw(st.integers(1, max_tile))
        K = lcm * draw(st.integers(1, max(1, max_tile * min(rows, cols) // lcm)))
        N = cols * draw(st.integers(1, max_tile))
    else:
        M = draw(st.integers(1, rows * max_tile))
        K = draw(st.integers(1, min(rows, cols) * max_tile))
        N = draw(st.integers(1, cols * max_tile))
    budget = int(cfg.sram_bytes * sram_fraction)
    if gemm_sram_bytes(M, K, N, rows, cols, dtype) > budget:
        raise ConfigError(f"gemm_problems: max_tile={max_tile} does not fit {budget} bytes")
    tb = draw(st.sampled_from(tuple(transpose_b)))
    opts = dict(awkward=awkward, max_magnitude=max_magnitude)
    A = draw(testing.matrices((M, K), dtype, **opts))
    B = draw(testing.matrices((N, K) if tb else (K, N), dtype, **opts))
    return GemmProblem(cfg, A, B, M, K, N, dtype, tb)


def gemmt_problems(**options):
    """gemm_problems for C = A @ B^T by GEMM-T: B drawn as (N, K), any grid
    shape (GEMM-T needs no square grid)."""
    options.setdefault("square_grid", False)
    options.setdefault("transpose_b", (True,))
    return gemm_problems(**options)


@dataclass(frozen=True)
class GemvProblem:
    """y = W @ x (W: (M, K), x: (K,), or (K, batch) for several vectors) on cfg's grid."""
    cfg: WaferConfig
    W: np.ndarray
    x: np.ndarray
    dtype: str

    @property
    def K(self) -> int:
        return self.W.shape[1]

    def reference(self) -> np.ndarray:
        return reference.gemv(self.W, self.x)


@st.composite
def gemv_problems(draw, min_rows: int = 1, max_rows: int = 4, min_cols: int = 1,
                  max_cols: int = 4, dtypes=DTYPES, max_block: int = 8,
                  multiple_of_grid: bool = True, max_magnitude: float = 2.0,
                  awkward: bool = True, max_batch: int = 0):
    """A GEMV whose weight block per PE (W split rows x cols) is at most
    max_block x max_block; with multiple_of_grid M is a multiple of rows and K of cols.
    With max_batch > 0, x is (K, batch) for a batch of 0..max_batch (0: x is (K,))."""
    rows, cols = draw(testing.grids(min_rows, max_rows, min_cols, max_cols))
    cfg = WSE2.with_grid(rows=rows, cols=cols)
    dtype = draw(testing.dtypes(dtypes))
    if multiple_of_grid:
        M = rows * draw(st.integers(1, max_block))
        K = cols * draw(st.integers(1, max_block))
    else:
        M = draw(st.integers(1, rows * max_block))
        K = draw(st.integers(1, cols * max_block))
    opts = dict(awkward=awkward, max_magnitude=max_magnitude)
    batch = draw(st.integers(0, max_batch))
    x_shape = (K, batch) if batch else (K,)
    return GemvProblem(cfg, draw(testing.matrices((M, K), dtype, **opts)),
                       draw(testing.matrices(x_shape, dtype, **opts)), dtype)


@dataclass(frozen=True)
class AttentionProblem:
    """softmax(Q K^T / sqrt(d) [+ causal mask]) V; Q: (sq, d), K and V: (sk, d),
    or with heads Q: (heads, sq, d), K and V: (kv_heads, sk, d), query head h
    reading KV head h // (heads // kv_heads). Causal: query i sits at position
    sk - sq + i."""
    cfg: WaferConfig
    Q: np.ndarray
    K: np.ndarray
    V: np.ndarray
    causal: bool
    dtype: str

    def reference(self) -> np.ndarray:
        return reference.attention(self.Q, self.K, self.V, self.causal)


@st.composite
def attention_problems(draw, min_side: int = 1, max_side: int = 4, square_grid: bool = True,
                       dtypes=DTYPES, max_per_pe: int = 4, causal=(True, False),
                       max_magnitude: float = 2.0, awkward: bool = True,
                       heads=(None,), groups=(1,)):
    """Attention with sequence lengths and head dim that are multiples of the
    grid side (at most max_per_pe per PE); causal problems have sq <= sk.
    heads: choices of the number of query heads (None: one head, 2-D arrays);
    groups: choices of query heads per KV head (grouped-query attention)."""
    rows, cols = draw(testing.grids(min_side, max_side, min_side, max_side, square_grid))
    cfg = WSE2.with_grid(rows=rows, cols=cols)
    dtype = draw(testing.dtypes(dtypes))
    is_causal = draw(st.sampled_from(tuple(causal)))
    sk = rows * draw(st.integers(1, max_per_pe))
    sq = rows * draw(st.integers(1, sk // rows)) if is_causal else \
        rows * draw(st.integers(1, max_per_pe))
    d = cols * draw(st.integers(1, max_per_pe))
    opts = dict(awkward=awkward, max_magnitude=max_magnitude)
    n_heads = draw(st.sampled_from(tuple(heads)))
    if n_heads is None:
        q_shape, kv_shape = (sq, d), (sk, d)
    else:
        group = draw(st.sampled_from(tuple(g for g in groups if n_heads % g == 0) or (1,)))
        q_shape, kv_shape = (n_heads, sq, d), (n_heads // group, sk, d)
    return AttentionProblem(cfg, draw(testing.matrices(q_shape, dtype, **opts)),
                            draw(testing.matrices(kv_shape, dtype, **opts)),
                            draw(testing.matrices(kv_shape, dtype, **opts)), is_causal, dtype)
