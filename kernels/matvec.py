"""Matrix-vector product on the mesh: pipeline GEMV and MeshGEMV.

    y, report = kernels.gemv(W, x, cfg, algorithm="meshgemv", dtype="float16")

computes y = W @ x for W of shape (m, n) and x of shape (n,) or (n, B) (a
batch of B vectors, y then (m, B)).

Layout (rows x cols = R x C PEs)
  The output index is split along x: column j owns y block j (mt = ceil(m/C)
  rows of W). The input index is split along y: row i owns x chunk i
  (nt = ceil(n/R) entries), replicated on every PE of row i. PE (x=j, y=i)
  holds the weight tile W[j*mt:(j+1)*mt, i*nt:(i+1)*nt] (mt x nt, row-major);
  W and x are zero-padded to C*mt x R*nt. In WaferLLM's notation the tile on
  PE (x=j, y=i) is "W[i, j]" with i indexing the input chunk and j the output
  block: decode stores its weights pre-transposed so that the reduction runs
  down each column. Each PE computes its partial product (mt x B) with the
  engine's matmul, then the partials are summed down every column by an
  allreduce, which leaves y block j replicated on every PE of column j.

Algorithms (the allreduce down each column, from kernels.collectives'
fragments, fused into the same run as the partial products):
  - pipeline:  chain allreduce: a pipelined chain reduce into row 0, then a
               flood broadcast from row 0 back down the column.
  - meshgemv:  K-tree allreduce (WaferLLM): the column is cut into groups of
               about sqrt(R) PEs; in each group two chains, one from each end,
               meet at the group root; the group roots reduce along a chain;
               the root floods the result back.

Cost (first principles; `model_cycles`):
    cycles = matmul(mt, nt, B) + allreduce(R PEs, mt*B elements)
with matmul the tile product's FMAC loop nest (wse.timing.matmul_cycles:
its instructions' issue and start-up included; ceil(mt*nt*B / SIMD) when
they cost nothing and the vectors fill the SIMD width) and allreduce from
kernels.collectives.cost (its docstring derives it).
The accumulator (the partials and the reduction) is fp32 by default
(accumulate="float32"), or fp16 with accumulate="float16".
Tolerance: elementwise |y - y_ref| <= tol * (|W| @ |x|), tol as for GEMM
(kernels.matmul.tolerance with steps = R: R*nt + 1 roundings of the accumulator
cover the nt FMACs of the partial product and the R - 1 reduction steps).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

import wse
from wse import timing
from wse.errors import ConfigError, SramOverflowError

from . import collectives
from .matmul import _check_range, _matrix, check_common

ALGORITHMS = ("pipeline", "meshgemv")
_ALLREDUCE = {"pipeline": "chain", "meshgemv": "ktree"}


@dataclass(frozen=True)
class GemvPlan:
    algorithm: str
    m: int
    n: int
    batch: int
    rows: int
    cols: int
    dtype: str
    acc_dtype: str

    @property
    def mt(self) -> int:
        return -(-self.m // self.cols)

    @property
    def nt(self) -> int:
        return -(-self.n // self.rows)

    def buffer_elements(self) -> dict[str, tuple[int, str]]:
        return {"w": (self.mt * self.nt, self.dtype), "x": (self.nt * self.batch, self.dtype),
                "y": (self.mt * self.batch, self.acc_dtype)}

    def sram_bytes(self) -> int:
        return sum((k * (4 if dt == "float32" else 2) + 3) // 4 * 4
                   for k, dt in self.buffer_elements().values())


def plan(W_shape, batch: int, cfg: wse.WaferConfig, algorithm: str = "meshgemv",
         dtype: str = "float16", accumulate: str = "float32") -> GemvPlan:
    m, n = W_shape
    return GemvPlan(algorithm, int(m), int(n), int(batch), cfg.rows, cfg.cols, dtype, accumulate)


def check_fits(p: GemvPlan, cfg: wse.WaferConfig) -> None:
    need = p.sram_bytes()
    if need <= cfg.sram_bytes:
        return
    side = next((s for s in range(1, 4097)
                 if GemvPlan(p.algorithm, p.m, p.n, p.batch, s, s, p.dtype,
                             p.acc_dtype).sram_bytes() <= cfg.sram_bytes), None)
    hint = (f"the smallest square grid that holds it is {side} x {side}" if side
            else "no grid up to 4096 x 4096 holds it")
    raise SramOverflowError(
        f"{p.algorithm} GEMV {p.m}x{p.n} (batch {p.batch}, {p.dtype}) on a {p.rows} x "
        f"{p.cols} grid needs {need} bytes per PE but a PE has {cfg.sram_bytes}; {hint}")


def matmul_cycles(p: GemvPlan, cfg: wse.WaferConfig) -> int:
    """The partial product W_tile (mt x nt) @ x_chunk (nt x B), issue of its
    first instruction to completion: `wse.timing.matmul_cycles`, the FMAC
    loop nest of `TaskBuilder.matmul` (each FMAC pays issue and start-up,
    then its vector at SIMD rate; offset updates and branches one issue
    each). With every instruction cost 0: mt*nt*ceil(B / SIMD) or
    nt*B*ceil(mt / SIMD), whichever is fewer (ceil(mt*nt*B / SIMD) when the
    vectors are a multiple of the SIMD width)."""
    return timing.matmul_cycles(p.mt, p.nt, p.batch, p.dtype, cfg)


def matmul_compute_cycles(p: GemvPlan, cfg: wse.WaferConfig) -> int:
    """Datapath cycles of the partial product (its FMAC elements at SIMD rate)."""
    return timing.matmul_compute_cycles(p.mt, p.nt, p.batch, p.dtype, cfg)


def allreduce_cycles(p: GemvPlan, cfg: wse.WaferConfig) -> int:
    if p.rows == 1:
        return 0
    return collectives.cost("allreduce", _ALLREDUCE[p.algorithm], p.rows, p.mt * p.batch, cfg)


def model_cycles(p: GemvPlan, cfg: wse.WaferConfig) -> int:
    """Partial products, then the allreduce down each column (module docstring).

    Every PE's entry task issues its partial product first (the same tile
    shape on every PE, so every PE ends it at matmul_cycles), then the
    allreduce fragment's code: the collective as `collectives.cost` models
    it for entry tasks that start together, started matmul_cycles later."""
    return matmul_cycles(p, cfg) + allreduce_cycles(p, cfg)


def gemv(W, x, cfg: wse.WaferConfig, algorithm: str = "meshgemv", dtype: str = "float16",
         accumulate: str = "float32"):
    """y = W @ x. W: (m, n); x: (n,) or (n, B). Returns (y, report), y of shape
    (m,) or (m, B) in `dtype`, read from row 0 (every row holds the same y)."""
    tiles, report, p = run_tiles(W, x, cfg, algorithm, dtype, accumulate)
    y = tiles[0].reshape(p.cols * p.mt, p.batch)[:p.m]
    y = y.astype(np.float16 if dtype == "float16" else np.float32)
    return (y[:, 0] if np.ndim(x) == 1 else y), report


def run_tiles(W, x, cfg, algorithm="meshgemv", dtype="float16", accumulate="float32"):
    """Run the kernel; returns (y tiles of every PE as (R, C, mt, B), report, plan)."""
    check_common(cfg, dtype, accumulate)
    if algorithm not in ALGORITHMS:
        raise ConfigError(f"unknown GEMV algorithm {algorithm!r}: expected one of {ALGORITHMS}")
    W = _matrix("W", W)
    xv = np.asarray(x)
    if xv.ndim not in (1, 2):
        raise ConfigError(f"x must be a vector (n,) or a batch (n, B), got shape {xv.shape}")
    x2 = _matrix("x", xv.reshape(xv.shape[0], -1) if xv.size else xv.reshape(-1, 0))
    if x2.shape[0] != W.shape[1]:
        raise ConfigError(f"W @ x: W is {W.shape} and x is {xv.shape}; x needs "
                          f"{W.shape[1]} entries (W's columns)")
    _check_range("W", W, dtype)
    _check_range("x", x2, dtype)
    p = plan(W.shape, x2.shape[1], cfg, algorithm, dtype, accumulate)
    check_fits(p, cfg)
    R, C, mt, nt, B = p.rows, p.cols, p.mt, p.nt, p.batch

    prog = wse.Program(cfg)
    w_buf = prog.buffer("w", (mt * nt,), dtype)
    x_buf = prog.buffer("x", (nt * B,), dtype)
    y_buf = prog.buffer("y", (mt * B,), accumulate)
    np_dtype = np.float16 if dtype == "float16" else np.float32
    # tile (j, i) of the padded W goes to PE (x=j, y=i): array index [i, j]
    Wp = np.zeros((C * mt, R * nt), np_dtype)
    Wp[:p.m, :p.n] = W
    del W
    prog.load(w_buf, Wp.reshape(C, mt, R, nt).transpose(2, 0, 1, 3).reshape(R, C, mt * nt))
    del Wp
    xp = np.zeros((R * nt, B), np_dtype)
    xp[:p.n] = x2
    chunks = xp.reshape(R, 1, nt * B)
    prog.load(x_buf, np.broadcast_to(chunks, (R, C, nt * B)))

    def partial(t, mask):
        t.matmul(y_buf.view(), w_buf.view(), x_buf.view(), mt, nt, B)

    if R > 1:
        frag = collectives.allreduce_fragment(prog, y_buf, along="y", op="sum",
                                              algorithm=_ALLREDUCE[algorithm], name="col")
        frag.install("gemv", before=partial, where=np.ones((R, C), bool))
    else:
        role = prog.role("gemv")
        with role.task("main", entry=True) as t:
            partial(t, None)
    result = prog.run()
    tiles = result.read(y_buf).astype(np.float32).reshape(R, C, mt, B)
    report = result.report
    report.extra["gemv"] = {
        "algorithm": algorithm, "m": p.m, "n": p.n, "batch": B, "grid": f"{R}x{C}",
        "tile": [mt, nt], "dtype": dtype, "accumulate": accumulate,
        "sram_bytes_per_pe": p.sram_bytes(), "model_cycles": model_cycles(p, cfg),
        "matmul_cycles": matmul_cycles(p, cfg), "allreduce_cycles": allreduce_cycles(p, cfg),
        "matmul_compute_cycles": matmul_compute_cycles(p, cfg),
        "compute_efficiency": report.compute_efficiency,
        "compute_cycles_mean": float(report.compute_cycles.mean()),
        "stall_cycles_mean": float(report.stall_cycles.mean()),
        "stall_cycles_max": int(report.stall_cycles.max()),
        "communication_share": 1.0 - matmul_cycles(p, cfg) / max(report.cycles, 1),
    }
    return tiles, report, p
