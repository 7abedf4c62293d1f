"""Dense matrix multiply on the mesh: SUMMA, Cannon, MeshGEMM and GEMM-T.

    C, report = kernels.gemm(A, B, cfg, algorithm="meshgemm", dtype="float16",
                             transpose_b=False, accumulate="float32")

computes C = A @ B (or A @ B.T with transpose_b, B given as (N, K) and never
transposed: each PE keeps its tiles of B in B's own row-major layout and the
engine's matmul reads them transposed).

Layout (summa, cannon, meshgemm; rows x cols = R x C PEs, L = lcm(R, C))
  A (M x K) is cut into R x L blocks of mt x kt, B (K x N) into L x C blocks
  of kt x nt, C into R x C blocks of mt x nt, with mt = ceil(M/R),
  kt = ceil(K/L), nt = ceil(N/C); the matrices are zero-padded to
  (R*mt) x (L*kt) x (C*nt). PE (x, y) owns C block (y, x) and holds
  a = L/C blocks of A's block row y and b = L/R blocks of B's block column x.
  On a square grid L = R = C and a = b = 1: one tile of each per PE.

Cannon and MeshGEMM (tiling on the least common multiple)
  Each PE keeps its A blocks in a FIFO of a+1 slots (b+1 for B). At step t
  (t = 0 .. L-1) it multiplies the head blocks, sends the head of A to its
  predecessor on the row ring and the head of B to its predecessor on the
  column ring, and receives the new tails from its successors. With ring
  positions (px, py) the PE starts at K-block k0 = py*b + px*a (mod L) and
  its FIFOs hold blocks k0, k0+1, ...: the block it sends is needed by the
  predecessor exactly a (b) steps later, so every product A(y, k) B(k, x)
  meets once. This is Cannon's data flow; with a = b = 1 it is Cannon.
  The initial alignment (the skew) is done on the fabric (`fabric_skew`):
  the host places every PE's own blocks (those of its ring positions, the
  same for every row and column), then each row shifts A py*b times and
  each column B px*a times on the same rings, before the first product;
  its cycles and wavelet-hops are charged. Cannon shifts A and B in the
  same shifts, MeshGEMM A first, then B (`GemmPlan.skews_in_turn` says
  why). skew="host" loads the tiles already skewed and charges nothing for
  the alignment: the steps alone, which the model gives to the cycle and
  which benchmarks/gemm.py's first-steps runs emulate.
  - cannon: the ring is the line in physical order, so the wrap-around
    stream crosses the whole line (P-1 hops); each step multiplies, then
    shifts (no overlap).
  - meshgemm: the ring is wse.routes.interleaved_order(P), so every stream
    is at most two hops; the shift of the next tiles runs asynchronously
    while the current tiles are multiplied (double buffering: the FIFO's
    spare slot is the second buffer).

SUMMA
  PE (x, y) holds A blocks k = x, x+C, ... and B blocks k = y, y+R, ... .
  At step s the PEs of column s mod C multicast A block s along their rows
  and the PEs of row s mod R multicast B block s along their columns, then
  everyone multiplies the two panels. Routes are static, so one route must
  serve every root: each axis has an eastward (southward) flood color whose
  routes take from the west and from the ramp and give to the east and to
  the ramp, and a westward (northward) one. The root injects its block on
  both and, being on both routes, receives both copies back. Its ramp
  therefore carries 2 tiles out and 2 in per panel; a root of A and B
  needs 8 vector operations at once, more than the PE's async slots, so
  SUMMA here is not pipelined: broadcast A, broadcast B, then multiply.

GEMM-T (algorithm="gemmt", transpose_b=True only: C = A @ B.T, B given
as (N, K) and never transposed or moved into a GEMM alignment)
  Layout: A (M x K) in R x C blocks of mt x kt (mt = ceil(M/R), kt =
  ceil(K/C)), PE (x, y) holding A block (y, x); B (N x K) in R x C blocks
  of nt x kt (nt = ceil(N/R)), B's N along Y: PE (x, y) starts with B block
  (y, x) (B's own row-major nt x kt). This is how the prefill layout keeps
  both Q and K (sequence along Y, features along X), so Q K^T needs no
  data moved before it starts. C (M x N) is R x R blocks of mt x nt: block
  (y, n) ends on PE (n mod C, y), in slot n // C of its C buffer
  (c_slots = ceil(R/C) slots; on a square grid PE (x, y) owns block (y, x)
  like the other algorithms).
  Steps t = 0 .. R-1: row y holds B's N-block n = order[(pos[y] + t) mod R]
  (`gemmt_held`; order the interleaved ring along Y, so the shift of B to
  each column's ring predecessor is at most two hops and runs
  asynchronously, double-buffered, while the step computes). Every PE of
  row y multiplies A(y, x) B(n, x)^T (its kt features of the dot products:
  a partial mt x nt tile), and the row reduces the partials along X into
  the root, column n mod C: an eastward pipelined chain from column 0 to
  the root and a westward one from column C-1 (`gemmt_roles`), each PE
  adding its partial to the stream as it passes; the root multiplies
  straight into its C block and folds the west stream, then the east one.
  A row may skip a step's block (skip_blocks: the fully masked blocks of
  causal scores): no product, no reduce, only the shift of B.
  The steps are unrolled (each has its own per-PE roles, `Program.param`).

Costs: see `model_cycles` (first-principles formulas, checked against the
engine in tests/kernels/test_matmul.py) and `expected_wavelet_hops`; both take
steps= for a run of the first steps only (`gemm_first_steps`, for benchmarks
too long to emulate in full: it returns the report, not the partial C).

Accuracy: the engine multiplies in fp32 and rounds to the accumulator's
dtype when each FMAC instruction of a tile product's loop nest stores (kt
times per tile product). With accumulate="float32" (the default) the fp32
accumulator is rounded to `dtype` once at the end; with
accumulate="float16" every FMAC's sum is rounded to fp16. The result is
checked elementwise against the float64 product of the unrounded inputs:
    |C - C_ref| <= tol * (|A| @ |B|),
    tol = 3*u(dtype) + 2*(kt + 2)*2**-24 + (L*kt + 1)*u(accumulate)
with u = 2**-24 (float32) or 2**-11 (float16); e.g. fp16 with an fp32
accumulator and kt = 32, L = 4: about 1.5e-3 (`tolerance`).
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import numpy as np

import wse
from wse import isa, routes, timing
from wse.config import DTYPES
from wse.errors import ConfigError, SramOverflowError

ALGORITHMS = ("summa", "cannon", "meshgemm")
# C = A @ B.T with B kept in its own (N, K) layout, which the algorithm needs:
# only with transpose_b=True
TRANSPOSED_ALGORITHMS = ("gemmt",)
ALL_ALGORITHMS = ALGORITHMS + TRANSPOSED_ALGORITHMS
# cannon/meshgemm's initial alignment: "fabric" shifts the tiles into place on
# the rings and charges it (the default); "host" places them already skewed
# and charges nothing for it (the steps alone, as first-steps runs measure them)
# "weights": A on the fabric, B (a weight resident in SRAM, placed once per
# session) placed already aligned: what a layer's projections pay per call
SKEWS = ("fabric", "host", "weights")

# |cycles - model_cycles| / model_cycles with the skew on the fabric: the
# skew breaks the lockstep of the steps, and ramp turns between streams that
# start at different times are not in the model (model_cycles' docstring).
# Largest seen: 1.25% (cannon, 6 of 480 cycles, a first-steps run of 30^3
# on 3 x 5, zero instruction costs); on full runs meshgemm 0.42% (4 cycles,
# 32^3 on 4 x 4) and cannon 0.19% (256^3 on 8 x 8) with zero instruction
# costs; with the default ones meshgemm 0.07% (4 of 6,139 cycles, 48^3 on
# 6 x 6) and cannon 0.27% (369 of 136,951, 256^3 on 8 x 8). For SUMMA and
# skew="host" the model is exact, with and without instruction costs.
FABRIC_SKEW_MODEL_BOUND = 0.015
# |cycles - model_cycles| for gemmt is within GEMMT_MODEL_BOUND * model plus
# GEMMT_MODEL_LINKS chain-link latencies (gemmt_model_tolerance): the
# recurrence follows queue back-pressure and ramp sharing to first order
# only (model_cycles' docstring), and what it leaves out is a few stalls of
# about one link each. Largest seen: 3.0% (64^3 fp16 on 16 x 16, zero
# instruction costs: 4 x 4 tiles, where a stall reaches over several chain
# links); with instruction costs 0.8% (21 x 12 x 30 on 7 x 3); over 400
# random problems up to 40^3 on up to 7 x 7 at most 20 cycles off (9% of a
# 184-cycle run: 8-element tiles, zero-cost), and at most 1.1% where the
# model is over 1,000 cycles; 0 on 1-row and 1-column grids.
GEMMT_MODEL_BOUND = 0.05
GEMMT_MODEL_LINKS = 6
FP16_MAX = 65504.0


# ----------------------------------------------------------------------------
# Plan: tile sizes and SRAM budget
@dataclass(frozen=True)
class GemmPlan:
    """Tile sizes of one GEMM on one grid (see the module docstring)."""
    algorithm: str
    M: int
    K: int
    N: int
    rows: int
    cols: int
    dtype: str
    acc_dtype: str
    transpose_b: bool = False
    skew: str = "fabric"       # cannon/meshgemm's initial alignment, see SKEWS
    k_split: int = 0           # summa: K in this many blocks (0: L = lcm(rows, cols))
    a_lower: bool = False      # summa: A's block (y, s) is zero for s > y, not multiplied

    @property
    def steps(self) -> int:
        """Steps of the algorithm: L = lcm(rows, cols) (also the K-blocks) for
        summa, cannon and meshgemm; rows (B's N-blocks) for gemmt."""
        if self.algorithm == "gemmt":
            return self.rows
        if self.algorithm == "summa" and self.k_split:
            return self.k_split
        return math.lcm(self.rows, self.cols)

    @property
    def k_blocks(self) -> int:
        """Blocks K is cut into: L, or cols for gemmt."""
        return self.cols if self.algorithm == "gemmt" else self.steps

    @property
    def mt(self) -> int:
        return -(-self.M // self.rows)

    @property
    def kt(self) -> int:
        return -(-self.K // self.k_blocks)

    @property
    def nt(self) -> int:
        return -(-self.N // (self.rows if self.algorithm == "gemmt" else self.cols))

    @property
    def a_blocks(self) -> int:
        return 1 if self.algorithm == "gemmt" else -(-self.steps // self.cols)

    @property
    def b_blocks(self) -> int:
        return 1 if self.algorithm == "gemmt" else -(-self.steps // self.rows)

    @property
    def c_slots(self) -> int:
        """C blocks a PE keeps: ceil(rows / cols) for gemmt (C block (y, n) on
        column n mod cols), 1 otherwise."""
        return -(-self.rows // self.cols) if self.algorithm == "gemmt" else 1

    @property
    def tile_a(self) -> int:
        return self.mt * self.kt

    @property
    def tile_b(self) -> int:
        return self.kt * self.nt

    @property
    def tile_c(self) -> int:
        return self.mt * self.nt

    @property
    def skews_in_turn(self) -> bool:
        """Whether the fabric skew moves A first, then B (meshgemm), rather
        than both in the same shifts (cannon).

        On Cannon's rings neighbouring lines skew by amounts one shift apart,
        so a PE moving A and B in the same shifts pays the two ramp latencies
        once per shift, and the PEs stay close to lockstep; skewing in turn
        is slower for Cannon. On MeshGEMM's interleaved rings neighbouring
        lines skew by about P/2 shifts apart: shifting both at once ties
        every row's progress to every column's, and tiles of the first steps
        queue behind skew tiles at ramps still busy with the skew, which
        costs more than skewing in turn, where each axis' phase is a
        lockstep shift of every line. docs/gemm.md gives the cycles of both
        orders for both algorithms."""
        return self.algorithm == "meshgemm"

    @property
    def shifts_a(self) -> bool:
        return self.cols > 1 and self.algorithm != "gemmt"

    @property
    def shifts_b(self) -> bool:
        return self.rows > 1

    def check_steps(self, steps: int | None) -> int:
        """The number of steps to run: all L when None, else 1 <= steps <= L."""
        if steps is None:
            return self.steps
        if not isinstance(steps, (int, np.integer)) or not 1 <= steps <= self.steps:
            what = (f"rows = {self.rows}" if self.algorithm == "gemmt"
                    else f"L = lcm({self.rows}, {self.cols})")
            raise ConfigError(f"steps={steps!r}: expected an integer from 1 to {self.steps} "
                              f"(the {self.algorithm} GEMM's {what} steps)")
        return int(steps)

    def buffer_elements(self) -> dict[str, tuple[int, str]]:
        """name -> (elements, dtype) of every SRAM buffer a PE allocates."""
        bufs: dict[str, tuple[int, str]] = {}
        if self.algorithm == "gemmt":
            bufs["a"] = (self.tile_a, self.dtype)
            bufs["b_fifo"] = ((1 + self.shifts_b) * self.tile_b, self.dtype)
            # the C blocks, and a partial product for the reduce (more than one column)
            bufs["c"] = ((self.c_slots + (self.cols > 1)) * self.tile_c, self.acc_dtype)
            return bufs
        if self.algorithm == "summa":
            bufs["a_blocks"] = (self.a_blocks * self.tile_a, self.dtype)
            bufs["b_blocks"] = (self.b_blocks * self.tile_b, self.dtype)
            if self.shifts_a:
                bufs["a_panel"] = (self.tile_a, self.dtype)
            if self.shifts_b:
                bufs["b_panel"] = (self.tile_b, self.dtype)
        else:
            bufs["a_fifo"] = ((self.a_blocks + self.shifts_a) * self.tile_a, self.dtype)
            bufs["b_fifo"] = ((self.b_blocks + self.shifts_b) * self.tile_b, self.dtype)
        bufs["c"] = (self.tile_c, self.acc_dtype)
        return bufs

    def sram_bytes(self) -> int:
        """Bytes per PE, with the builder's 4-byte alignment of each buffer."""
        total = 0
        for n, dt in self.buffer_elements().values():
            total += (n * (4 if dt == "float32" else 2) + 3) // 4 * 4
        return total


def plan(M: int, K: int, N: int, cfg: wse.WaferConfig, algorithm: str = "meshgemm",
         dtype: str = "float16", accumulate: str = "float32",
         transpose_b: bool = False, skew: str = "fabric", k_split: int = 0,
         a_lower: bool = False) -> GemmPlan:
    return GemmPlan(algorithm, int(M), int(K), int(N), cfg.rows, cfg.cols, dtype,
                    accumulate, bool(transpose_b), skew, int(k_split), bool(a_lower))


def smallest_square_grid(M: int, K: int, N: int, cfg: wse.WaferConfig, algorithm: str,
                         dtype: str, accumulate: str) -> int | None:
    """Side of the smallest n x n grid on which the problem fits in SRAM (None: none <= 4096)."""
    for n in range(1, 4097):
        p = GemmPlan(algorithm, M, K, N, n, n, dtype, accumulate)
        if p.sram_bytes() <= cfg.sram_bytes:
            return n
    return None


def check_fits(p: GemmPlan, cfg: wse.WaferConfig) -> None:
    need = p.sram_bytes()
    if need <= cfg.sram_bytes:
        return
    side = smallest_square_grid(p.M, p.K, p.N, cfg, p.algorithm, p.dtype, p.acc_dtype)
    parts = ", ".join(f"{name} {n} x {dt}" for name, (n, dt) in p.buffer_elements().items())
    hint = (f"the smallest square grid that holds it is {side} x {side}" if side
            else "no grid up to 4096 x 4096 holds it")
    raise SramOverflowError(
        f"{p.algorithm} GEMM {p.M}x{p.K}x{p.N} ({p.dtype}) on a {p.rows} x {p.cols} grid needs "
        f"{need} bytes per PE ({parts}) but a PE has {cfg.sram_bytes}; {hint}")


# ----------------------------------------------------------------------------
# First-principles costs
def _ring_hops(order: list[int]) -> list[int]:
    """Hop length of each stream when every ring member sends to its predecessor."""
    n = len(order)
    return [abs(order[j] - order[j - 1]) for j in range(n)]


def ring_order(algorithm: str, p: int) -> list[int]:
    return routes.interleaved_order(p) if algorithm == "meshgemm" else list(range(p))


def fabric_skew(p: GemmPlan) -> tuple[np.ndarray, np.ndarray]:
    """Shifts of the initial alignment on the fabric (cannon and meshgemm):
    (per row y, the A shifts along it; per column x, the B shifts along it).

    A PE at ring positions (px, py) starts with the blocks of its own ring
    positions (A: px*a .. px*a+a-1 of its block row, B: py*b .. of its block
    column; the same for every row, resp. column: no skew) and must start
    the product loop at K-block k0 = py*b + px*a: its row shifts A py*b times
    and its column shifts B px*a times (mod L), on the rings the steps use.
    An axis without shifts (a line of one PE) holds all its blocks and just
    starts at k0. summa, gemmt, and skew="host" (tiles placed already
    skewed, the alignment not charged): no shifts. skew="weights": A's
    shifts only; B, a resident weight, is placed once already aligned."""
    R, C, L = p.rows, p.cols, p.steps
    if p.algorithm in ("summa", "gemmt") or p.skew == "host":
        return np.zeros(R, np.int64), np.zeros(C, np.int64)
    pos_y = routes.ring_position(ring_order(p.algorithm, R))
    pos_x = routes.ring_position(ring_order(p.algorithm, C))
    skew_a = (pos_y * p.b_blocks) % L if p.shifts_a else np.zeros(R, np.int64)
    skew_b = ((pos_x * p.a_blocks) % L if p.shifts_b and p.skew != "weights"
              else np.zeros(C, np.int64))
    return np.asarray(skew_a, np.int64), np.asarray(skew_b, np.int64)


def expected_wavelet_hops(p: GemmPlan, steps: int | None = None,
                          computes: np.ndarray | None = None) -> int:
    """Wavelets x links the algorithm must move (in its first `steps` steps;
    all L by default).

    gemmt: L-1 shifts of a B tile round each column's interleaved ring (sum
    of its stream lengths, 2(R-1)), and per C block computed (all, or those
    of `computes`, (rows, rows) booleans) a reduce that moves its partial
    tile over each of the row's C-1 links once (the east chain over the
    links west of the root, the west chain over the others).

    cannon/meshgemm: L-1 shifts, and before them the skew's (fabric_skew:
    row y shifts A skew_a[y] times, column x shifts B skew_b[x] times); per
    shift a row moves a tile of A over each of its ring's streams (sum of
    the stream lengths) and a column a tile of B. summa: per step each row floods A from its root towards
    both ends (its two streams together cross each of the row's C-1 links
    once) and each column floods B likewise."""
    R, C = p.rows, p.cols
    L = p.check_steps(steps)
    if p.algorithm == "gemmt":
        hops_b = sum(_ring_hops(routes.interleaved_order(R))) if p.shifts_b else 0
        held = gemmt_held(p)[:, :L]
        done = np.ones((R, R), bool) if computes is None else computes
        blocks = int(done[np.arange(R)[:, None], held].sum())
        return C * (L - 1) * hops_b * p.tile_b + blocks * (C - 1) * p.tile_c
    if p.algorithm == "summa":
        per_step = R * (C - 1) * p.tile_a * p.shifts_a + C * (R - 1) * p.tile_b * p.shifts_b
        return L * per_step
    hops_a = sum(_ring_hops(ring_order(p.algorithm, C))) if p.shifts_a else 0
    hops_b = sum(_ring_hops(ring_order(p.algorithm, R))) if p.shifts_b else 0
    skew_a, skew_b = fabric_skew(p)
    shifts_a = R * (L - 1) + int(skew_a.sum())           # row shifts, over all rows
    shifts_b = C * (L - 1) + int(skew_b.sum())
    return shifts_a * hops_a * p.tile_a + shifts_b * hops_b * p.tile_b


def matmul_cycles(p: GemmPlan, cfg: wse.WaferConfig) -> int:
    """One local tile product, from the issue of its first instruction to its
    completion: `wse.timing.matmul_cycles`, the loop nest of FMAC vector
    instructions `TaskBuilder.matmul` emits (each FMAC pays its issue and
    start-up, then its row at SIMD rate; descriptor offset updates and loop
    branches one issue each). With every instruction cost 0 it is
    mt*kt*ceil(nt / SIMD) (or kt*nt*ceil(mt / SIMD)): ceil(mt*kt*nt / SIMD)
    when the rows are a multiple of the SIMD width."""
    return timing.matmul_cycles(p.mt, p.kt, p.nt, p.dtype, cfg, p.transpose_b)


def matmul_compute_cycles(p: GemmPlan, cfg: wse.WaferConfig) -> int:
    """Datapath cycles of one tile product (its FMAC elements at SIMD rate,
    what a PE's compute counter records): `matmul_cycles` less the cycles
    spent issuing instructions and starting vectors."""
    return timing.matmul_compute_cycles(p.mt, p.kt, p.nt, p.dtype, cfg, p.transpose_b)


def _ramp_end(t_a, n_a, t_b, n_b):
    """Cycle after the last wavelet of two streams that share a PE's outgoing
    ramp (one wavelet a cycle, never idle while one has a wavelet ready):
    n_a wavelets ready from t_a, n_b from t_b; an empty stream is absent."""
    has_a, has_b = n_a > 0, n_b > 0
    end = np.maximum(np.where(has_a, t_a + n_a, -np.inf), np.where(has_b, t_b + n_b, -np.inf))
    first = np.minimum(t_a, t_b) + n_a + n_b
    return np.where(has_a & has_b, np.maximum(end, first), end)


def _summa_advance_issues(e: np.ndarray, phase: int, P: int):
    """SUMMA's `advance` for one axis: (instructions each PE issues, e and
    phase after it), replaying the program's register updates."""
    phase = (phase + 1) % P
    e = e - 1
    n = 3 + 5 + 2 * ((e + 1) % P == 0)          # addi, mod, addi; if_zero(e + 1)
    n = n + 5 + 4 * (phase == 0)                 # if_zero(phase): addi e, set, set, branch
    if phase == 0:
        e = e + P
    n = n + 5 + 2 * (e % P == 0)                 # if_zero(e): set, branch
    return n, e, phase


def model_cycles(p: GemmPlan, cfg: wse.WaferConfig, steps: int | None = None,
                 computes: np.ndarray | None = None) -> int:
    """First-principles cycle count: the critical path through the steps
    (the first `steps` of them, as `gemm_first_steps` runs; all L by default).

    Building blocks (T = ramp_latency, H = hop_latency, c = scalar_op_cycles,
    sigma = vector_startup_cycles, delta = datapath_latency; docs/engine.md):
    every instruction a PE issues holds its main thread c cycles (control
    instructions; an asynchronous operation's issue; `wait` once what it
    waits for is done); a loop costs c for its counter's set and c for its
    guard before the body and c for the branch after each pass. A vector
    instruction issued at t moves its first element at t + sigma. An
    element a PE sends in cycle t is ready at a PE d hops away at
    t + delta + 2T + d*H, so a stream of n wavelets whose first leaves at t
    is complete at its receiver at t + delta + 2T + d*H + n (one wavelet per
    cycle). A PE's outgoing ramp carries one wavelet per cycle, its streams
    taking turns (`_ramp_end`). A local product takes mm = `matmul_cycles`
    (the FMAC loop nest, wse.timing.matmul_cycles) on the main thread.

    cannon / meshgemm. PEs are not synchronised by any barrier: a PE starts
    step t+1 as soon as its own work and the tiles it needs have arrived.
    With n lines shifting (A on rows, B on columns: n = 2 on a 2-D grid) a
    step's body issues, from its start S[x, y]:
        cannon:   matmul (mm), n receives, n sends, wait
        meshgemm: n receives, n sends, matmul (mm), wait
    then 8 register updates (the FIFOs' heads and free slots: addi and mod
    each) and the loop branch: 10 c after the wait. So with pre = mm for
    cannon, 0 for meshgemm, a PE's line-i receive is posted at S + pre + i c
    and its sends issue at S + pre + (n + i) c; its first wavelet leaves at
    so = S + pre + n c + sigma, and its sends end at
    out = _ramp_end(so, tile_a, so + c, tile_b). With W the wait's issue
    (S + 2n c + mm):
        S'[x, y] = max( W[x, y],                                        own product
                        out[x, y],                                      own sends
                        out[succ_x, y] + delta + 2T + dA[x]*H,          A in
                        out[x, succ_y] + delta + 2T + dB[y]*H,          B in
                        S[x,y] + recv_i + sigma + tile,                 posted late
                        S[pred_x, y] + recv_a + sigma + tiles - aheadA[x],
                        S[x, pred_y] + recv_b + sigma + tiles - aheadB[y])   A and B out
                   + 10 c
    (pred/succ along the ring; dA[x] the hops of the stream into x; aheadA[x]
    the wavelets the path from x to its receiver holds, (hops + 1) *
    queue_depth + input_queue_depth, by which a sender runs ahead of a late
    receiver). The run starts with 4 sets and the step loop's set and guard
    (6 c, after the skew if any) and ends at max S + mm, the last product,
    after L-1 shifts. The recurrence shows why the
    wrap-around edge of Cannon costs its P-1 hops only once per trip round
    the ring, not once per step: the critical path crosses it at most once
    every P steps. For meshgemm every d <= 2 and the shift hides behind the
    product when mm >= delta + 2T + 2H + tiles (less the issues before it).

    The skew (fabric_skew) runs before the steps through the same
    recurrence with pre = mm = 0: at skew shift i only the rows with
    skew_a > i move A and the columns with skew_b > i move B (meshgemm:
    first every row's A shifts, then every column's B shifts, as the
    program does them; `GemmPlan.skews_in_turn`), so tiles, and the terms
    above, are per PE; a PE that moves nothing keeps its S. Its issues:
    meshgemm, per axis a loop (2 c) whose pass is receive, send, wait, 4
    register updates and the branch (receive at 0, send at c, wait at 2 c,
    6 c after the wait); cannon, a prologue per line (set, set, a 5-issue
    test, 2 c more when the line's skew is 0) and a loop (2 c) whose pass
    guards each post by a one-pass loop on the line's `moving` flag (2 c,
    and 2 c more for the post and branch when it moves), waits, then per
    line the guarded advance (2 c + 5 c when moving), a decrement and a
    5-issue test (2 c more on the line's last shift) and the branch.
    Lines shift different amounts, so the lockstep of the steps is gone, and
    one term the steps never need appears: a PE that receives A and B from
    two different senders takes both through its router's one ramp, one
    wavelet a cycle, from the first arrival on:
        S'[x, y] >= min(A's first arrival, B's first arrival) + tile_a + tile_b.
    With it the model is within FABRIC_SKEW_MODEL_BOUND of the engine
    (tests/kernels/test_matmul.py). The model does not capture ramp turns
    between streams that start at different times, which is one reason
    meshgemm skews in turn: with both axes at once such turns are frequent
    and the model comes out several percent low (docs/gemm.md).
    skew="host": no skew shifts, the recurrence alone, equal to the engine.

    summa: step s has its A root at column s mod C and its B root at row
    s mod R. Per axis a PE posts its forward and backward receives (issues
    0 and c), tests whether it is the root (5 c; the root then issues its
    forward and backward sends at 7 c and 8 c, a pointer update and the
    branch: 4 c) and waits (at 7 c, the root at 11 c). The root's two
    copies share its ramp: the forward stream starts at t0 = S[root] + 7 c
    + sigma, the backward one c later, so the forward one ends at
    t0 + n + max(n - max(c, 1), 0) and the backward one at
    max(t0 + c, t0 + n) + n; a PE d hops away has the copy delta + 2T + d*H
    later; the root takes both back through its own ramp. A flood moves a
    wavelet to all its ports at once, so a receiver that has not posted yet
    holds it back, but only once the queues between the root and that
    receiver are full: (d+1)*queue_depth + input_queue_depth wavelets. The
    receiver itself needs its post + sigma + tile. The wait ends at the
    later of its issue and the arrivals, plus c; B's broadcast follows A's,
    then the product (mm), then per axis the root bookkeeping (`advance`:
    18 to 24 issues, replayed per PE by `_summa_advance_issues`), an
    increment per axis of one PE, and the branch. Set-up: 10 issues per
    axis (2 more where the PE is the first root), 1 per axis of one PE, the
    loop's 2. The run ends when the last PE's loop does. A term for an
    axis of one PE (no shifts) is left out.

    gemmt: per step a PE posts B's receive and send (2 c, not on the last
    step), sets and tests the step's loop (2 c; a skipped row stops there),
    sets its product's destination (c), a non-root zeroes its partial (2 c
    for the loop, the fill, c), multiplies (mm), then passes six one-pass
    loops on its reduce role (2 c each, c more for the one it runs): start
    of a chain (its partial onto the chain), middle (the stream in plus its
    partial, out), root (fold the west stream, then the east one). A
    chain stream's head moves one link per delta + 2T + H; a chain PE's
    stream ends a tile after the later of its issue and the head, no
    earlier than the upstream tail, and (sharing its ramp out) no earlier
    than `_ramp_end` of its B send and the stream; it cannot run further
    ahead of its consumer than the queues of one link hold
    (2 queue_depth + input_queue_depth); the root's west fold is longer
    by the east wavelets that enter its input queue meanwhile. Then the
    wait ends when the PE's B send is out (no further ahead of its
    receiver's post than the path holds), B's next block is in (delta + 2T
    + d H after its sender's last wavelet), and the ramp into the PE has
    taken B's block and the reduce streams it folds from the first
    arrival on; 4 register updates follow. The run ends with the last
    PE's last step. What the recurrence leaves out is stalls beyond the
    first order (a stall propagated over several chain links, a B stream
    slowed by reduce wavelets on a shared ramp): within
    `gemmt_model_tolerance` of the engine (tests/kernels/test_matmul.py).

    With cfg.without_instruction_costs() (c = sigma = delta = 0) every
    formula above is the model of the zero-cost engine (the issues cost
    nothing and mm is mt*kt*ceil(nt/SIMD), which is the tile's products at
    full SIMD rate, ceil(mt*kt*nt/SIMD), whenever nt (or mt) is a multiple
    of the SIMD width)."""
    R, C = p.rows, p.cols
    L = p.check_steps(steps)
    T, H = cfg.ramp_latency, cfg.hop_latency
    c, sigma = cfg.scalar_op_cycles, cfg.vector_startup_cycles
    lat = cfg.datapath_latency + 2 * T
    mm = matmul_cycles(p, cfg)
    ta = p.tile_a if p.shifts_a else 0
    tb = p.tile_b if p.shifts_b else 0
    start = np.zeros((R, C))
    if p.algorithm in ("cannon", "meshgemm"):
        return _ring_model(p, cfg, L, mm, ta, tb)
    if p.algorithm == "gemmt":
        return _gemmt_model(p, cfg, L, mm, computes)
    xs, ys = np.arange(C)[None, :], np.arange(R)[:, None]

    def flood(S, r, tile, index, axis):
        """When each PE's wait for the panel of the root at index r ends (+c)."""
        root_s = np.take(S, [r], axis=axis)
        hops = np.abs(index - r)
        t0 = root_s + 7 * c + sigma
        f_end = t0 + tile + max(tile - max(c, 1), 0)
        b_end = np.maximum(t0 + c, t0 + tile) + tile
        # the root's sends end no earlier than a late receiver's post + tile,
        # less what the queues between them hold
        cap = (hops + 1) * cfg.queue_depth + cfg.input_queue_depth
        after = np.where(index > r, S + sigma + tile - cap, -np.inf).max(axis=axis, keepdims=True)
        before = np.where(index < r, S + c + sigma + tile - cap, -np.inf).max(axis=axis,
                                                                              keepdims=True)
        f_end, b_end = np.maximum(f_end, after), np.maximum(b_end, before)
        arrive = np.where(index > r, f_end, np.where(index < r, b_end,
                                                     np.maximum(f_end, b_end))) + lat + hops * H
        posted = np.where(index > r, S + sigma + tile, S + c + sigma + tile)
        done = np.maximum(np.maximum(posted, arrive), np.where(index == r, b_end, -np.inf))
        wait = S + np.where(index == r, 11 * c, 7 * c)
        return np.maximum(wait, done) + c

    axes = []            # (tile, line length, index, numpy axis, positions)
    if p.shifts_a:
        axes.append([ta, C, xs, 1, np.broadcast_to(xs, (R, C)).copy(), 0])
    if p.shifts_b:
        axes.append([tb, R, ys, 0, np.broadcast_to(ys, (R, C)).copy(), 0])
    own = 2 - len(axes)                              # axes of one PE: a pointer each
    for tile, P, index, axis, e, _ in axes:
        start = start + 10 * c + 2 * c * (e % P == 0)
    start = start + own * c + 2 * c                  # the step loop's set and guard
    if p.a_lower:
        start = start + c                            # the rows' product count set
    for s in range(L):
        for ax in axes:
            tile, P, index, axis, e, phase = ax
            start = flood(start, s % P, tile, index, axis)
        if p.a_lower:
            # a one-pass loop on the products left (set, guard; the product,
            # the counter set to 1, the branch), then its decrement
            start = start + np.where(ys >= s, mm + 5 * c, 3 * c)
        else:
            start = start + mm
        for ax in axes:
            tile, P, index, axis, e, phase = ax
            n, ax[4], ax[5] = _summa_advance_issues(e, phase, P)
            start = start + n * c
        start = start + own * c + c                  # pointer increments, loop branch
    return int(round(start.max()))


def _ring_model(p: GemmPlan, cfg: wse.WaferConfig, L: int, mm: int, ta: int, tb: int) -> int:
    """cannon and meshgemm: model_cycles' recurrence (its docstring)."""
    R, C = p.rows, p.cols
    T, H = cfg.ramp_latency, cfg.hop_latency
    c, sigma = cfg.scalar_op_cycles, cfg.vector_startup_cycles
    lat = cfg.datapath_latency + 2 * T
    order_x, order_y = ring_order(p.algorithm, C), ring_order(p.algorithm, R)
    pos_x, pos_y = routes.ring_position(order_x), routes.ring_position(order_y)
    succ_x = np.asarray(order_x)[(pos_x + 1) % C]
    pred_x = np.asarray(order_x)[(pos_x - 1) % C]
    succ_y = np.asarray(order_y)[(pos_y + 1) % R]
    pred_y = np.asarray(order_y)[(pos_y - 1) % R]
    hops_x = np.abs(succ_x - np.arange(C))[None, :] * H
    hops_y = np.abs(succ_y - np.arange(R))[:, None] * H
    # A sender runs ahead of its receiver by as many wavelets as the queues
    # on its path hold: one queue per router passed and the receiver's input
    # queue; a path that holds the whole tile (the long wrap-around one)
    # never makes the sender wait for its receiver
    ahead_x = (np.abs(pred_x - np.arange(C)) + 1)[None, :] * cfg.queue_depth \
        + cfg.input_queue_depth
    ahead_y = (np.abs(pred_y - np.arange(R)) + 1)[:, None] * cfg.queue_depth \
        + cfg.input_queue_depth
    shape = (R, C)

    def shift(s, ta, tb, recv_a, recv_b, send_a, send_b, wait, after):
        """When each PE starts its next operation after one shift of ta
        wavelets along the rows and tb along the columns (per PE; 0: none),
        its receives posted recv_* and its sends issued send_* after its
        start, its wait issued at `wait`, `after` cycles from the wait's end
        to the next start (all per PE)."""
        ta, tb = np.broadcast_to(ta, shape), np.broadcast_to(tb, shape)
        recv_a, recv_b, send_a, send_b = (np.broadcast_to(v, shape)
                                          for v in (recv_a, recv_b, send_a, send_b))
        tiles = ta + tb
        first_a = s + send_a + sigma                  # first wavelet may leave
        first_b = s + send_b + sigma
        out = _ramp_end(first_a, ta, first_b, tb)
        nxt = np.maximum(s + wait, out)
        in_a = np.maximum.reduce([out[:, succ_x] + lat + hops_x, s + recv_a + sigma + ta,
                                  np.where(tiles > ahead_x, s[:, pred_x] + recv_a[:, pred_x]
                                           + sigma + tiles[:, pred_x] - ahead_x, 0)])
        in_b = np.maximum.reduce([out[succ_y, :] + lat + hops_y, s + recv_b + sigma + tb,
                                  np.where(tiles > ahead_y, s[pred_y, :] + recv_b[pred_y, :]
                                           + sigma + tiles[pred_y, :] - ahead_y, 0)])
        nxt = np.where(ta > 0, np.maximum(nxt, in_a), nxt)
        nxt = np.where(tb > 0, np.maximum(nxt, in_b), nxt)
        # the router's ramp into the PE takes one wavelet a cycle, A's and
        # B's together, from the first to arrive (B leaves a sender that
        # moves both after A: a cycle later when they are ready together)
        b_leaves = np.where((ta > 0) & (first_b <= first_a), first_a + 1, first_b)
        a0 = first_a[:, succ_x] + lat + hops_x
        b0 = b_leaves[succ_y, :] + lat + hops_y
        both = (ta > 0) & (tb > 0)
        nxt = np.where(both, np.maximum(nxt, np.minimum(a0, b0) + tiles), nxt)
        return nxt + after

    lines = (["a"] if ta else []) + (["b"] if tb else [])
    n = len(lines)
    start = np.full(shape, 4.0 * c)                   # head and free registers set
    skew_a, skew_b = fabric_skew(p)
    skew = {"a": np.broadcast_to(skew_a[:, None], shape), "b": np.broadcast_to(skew_b[None, :],
                                                                               shape)}
    tile = {"a": ta, "b": tb}
    if skew_a.any() or skew_b.any():
        if p.skews_in_turn:
            # per line a loop: receive, send, wait, advance one FIFO (4), branch
            for line in lines:
                start = start + 2 * c
                for i in range(int(skew[line].max())):
                    moving = skew[line] > i
                    t = np.where(moving, tile[line], 0)
                    z = np.zeros(shape)
                    t_a, t_b = (t, z) if line == "a" else (z, t)
                    moved = shift(start, t_a, t_b, 0, 0, c, c, 2 * c, 6 * c)
                    start = np.where(moving, moved, start)
        else:
            # prologue per line: set left, set moving, a 5-issue test (+2 when 0)
            for line in lines:
                start = start + 7 * c + 2 * c * (skew[line] == 0)
            steps = np.maximum(skew["a"] if ta else 0, skew["b"] if tb else 0)
            start = start + 2 * c
            for i in range(int(steps.max(initial=0))):
                moving = {ln: skew[ln] > i for ln in lines}
                t = 0.0
                recv, send = {}, {}
                for post in (recv, send):
                    for ln in lines:
                        t = t + 2 * c
                        post[ln] = t
                        t = t + 2 * c * moving[ln]
                wait = t
                after = c + c
                for ln in lines:
                    after = after + 2 * c + 5 * c * moving[ln] + c + 5 * c \
                        + 2 * c * (skew[ln] == i + 1)
                t_a = np.where(moving["a"], ta, 0) if ta else 0
                t_b = np.where(moving["b"], tb, 0) if tb else 0
                moved = shift(start, t_a, t_b, recv.get("a", 0), recv.get("b", 0),
                              send.get("a", 0), send.get("b", 0), wait, after)
                start = np.where(steps > i, moved, start)
    start = start + 2 * c                            # the step loop's set and guard
    pre = mm if p.algorithm == "cannon" else 0
    recv = {ln: pre + i * c for i, ln in enumerate(lines)}
    send = {ln: pre + (n + i) * c for i, ln in enumerate(lines)}
    for _ in range(L - 1):
        start = shift(start, ta, tb, recv.get("a", 0), recv.get("b", 0), send.get("a", 0),
                      send.get("b", 0), 2 * n * c + mm, 10 * c)
    return int(round(start.max() + mm))


def gemmt_model_tolerance(model: int, cfg: wse.WaferConfig) -> float:
    """How far gemmt's engine cycles may be from `model` (GEMMT_MODEL_BOUND's
    comment): a share of it plus GEMMT_MODEL_LINKS chain-link latencies."""
    link = cfg.datapath_latency + 2 * cfg.ramp_latency + cfg.hop_latency
    return GEMMT_MODEL_BOUND * model + GEMMT_MODEL_LINKS * link


def _gemmt_model(p: GemmPlan, cfg: wse.WaferConfig, L: int, mm: int,
                 computes: np.ndarray | None = None) -> int:
    """gemmt: model_cycles' recurrence for GEMM-T (its docstring)."""
    R, C = p.rows, p.cols
    T, H = cfg.ramp_latency, cfg.hop_latency
    c, sigma = cfg.scalar_op_cycles, cfg.vector_startup_cycles
    lat = cfg.datapath_latency + 2 * T
    hop = lat + H                            # one link of a reduce chain
    tb, tc = p.tile_b if p.shifts_b else 0, p.tile_c
    fill = timing.vector_cycles(tc, p.acc_dtype, cfg, isa.OP_FILL)
    computes = np.ones((R, R), bool) if computes is None else computes
    held = gemmt_held(p)
    order_y = routes.interleaved_order(R)
    pos_y = routes.ring_position(order_y)
    succ_y = np.asarray(order_y)[(pos_y + 1) % R]
    hops_y = (np.abs(succ_y - np.arange(R)) * H)[:, None]
    pred_y = np.asarray(order_y)[(pos_y - 1) % R]
    ahead_y = ((np.abs(pred_y - np.arange(R)) + 1) * cfg.queue_depth
               + cfg.input_queue_depth)[:, None]
    start = np.full((R, C), 2.0 * c if p.shifts_b else 0.0)   # head and free set
    for s in range(L):
        last = s == L - 1
        shifting = p.shifts_b and not last
        t = start + (2 * c if shifting else 0)                  # receive, send posted
        b_first = start + c + sigma                             # B's first wavelet leaves
        roles = gemmt_roles(p, held[:, s], computes[np.arange(R), held[:, s]])
        do = roles["do"]
        t = t + 2 * c                                           # loop(do): set, guard
        body = t + c                                            # set dst
        if C > 1:
            body = body + 2 * c + np.where(roles["partial"], fill + c, 0)
        body = body + mm
        done = body.copy()
        if C > 1:
            names = ("start_e", "start_w", "mid_e", "mid_w", "root_w", "root_e")
            issue = {}
            at = body.copy()
            for name in names:
                at = at + 2 * c
                issue[name] = at.copy()
                at = at + np.where(roles[name], c, 0)           # the loop's branch ...
            # ... and the operation between: streams along the chains
            # the head of the eastward stream at PE x: sent by the chain's PEs
            # x' < x when they issue, one chain link per hop
            send_e = np.where(roles["start_e"], issue["start_e"],
                              np.where(roles["mid_e"], issue["mid_e"], -np.inf)) + sigma
            send_w = np.where(roles["start_w"], issue["start_w"],
                              np.where(roles["mid_w"], issue["mid_w"], -np.inf)) + sigma
            head_e = np.full((R, C), -np.inf)
            head_w = np.full((R, C), -np.inf)
            for x in range(1, C):
                head_e[:, x] = np.maximum(head_e[:, x - 1], send_e[:, x - 1]) + hop
            for x in range(C - 2, -1, -1):
                head_w[:, x] = np.maximum(head_w[:, x + 1], send_w[:, x + 1]) + hop
            # a chain PE's stream ends a tile after its head, no earlier than
            # the upstream's tail arrives, and shares the ramp out with the
            # B block it sends (from b_first, when shifting)
            end_e = np.maximum(send_e, head_e) + tc
            end_w = np.maximum(send_w, head_w) + tc
            if shifting:
                end_e = np.maximum(end_e, _ramp_end(b_first, tb, send_e, tc))
                end_w = np.maximum(end_w, _ramp_end(b_first, tb, send_w, tc))
            tail_e = np.full((R, C), -np.inf)
            tail_w = np.full((R, C), -np.inf)
            for x in range(1, C):
                end_e[:, x] = np.maximum(end_e[:, x], tail_e[:, x])
                tail_e[:, x] = np.where(np.isfinite(send_e[:, x - 1]), end_e[:, x - 1] + hop - 1,
                                        -np.inf)
                end_e[:, x] = np.where(np.isfinite(send_e[:, x]),
                                       np.maximum(end_e[:, x], tail_e[:, x]), end_e[:, x])
            for x in range(C - 2, -1, -1):
                tail_w[:, x] = np.where(np.isfinite(send_w[:, x + 1]), end_w[:, x + 1] + hop - 1,
                                        -np.inf)
                end_w[:, x] = np.where(np.isfinite(send_w[:, x]),
                                       np.maximum(end_w[:, x], tail_w[:, x]), end_w[:, x])
            end = np.where(roles["start_e"] | roles["mid_e"], end_e,
                           np.where(roles["start_w"] | roles["mid_w"], end_w, body))
            # the root folds the west stream, then the east one
            w_end = np.maximum(np.maximum(issue["root_w"] + sigma, head_e) + tc, tail_e + 1)
            # the east stream, arriving meanwhile, fills the PE's input queue
            # through the same ramp: that many cycles more for the west one
            early = roles["root_w"] & roles["root_e"] & (head_w < w_end)
            w_end = w_end + np.where(early, np.minimum(min(cfg.input_queue_depth, tc),
                                                       w_end - head_w), 0)
            e_issue = np.where(roles["root_w"], w_end + c + 2 * c, issue["root_e"])
            e_end = np.maximum(np.maximum(e_issue + sigma, head_w) + tc, tail_w + 1)
            # a chain PE cannot run further ahead of its consumer than the
            # queues between them hold (one link: 2 queues and the input one)
            cap = 2 * cfg.queue_depth + cfg.input_queue_depth
            for x in range(C - 2, -1, -1):
                consumer = np.where(roles["mid_e"][:, x + 1], end_e[:, x + 1],
                                    np.where(roles["root_w"][:, x + 1], w_end[:, x + 1], -np.inf))
                end_e[:, x] = np.where(np.isfinite(send_e[:, x]),
                                       np.maximum(end_e[:, x], consumer - cap), end_e[:, x])
            for x in range(1, C):
                consumer = np.where(roles["mid_w"][:, x - 1], end_w[:, x - 1],
                                    np.where(roles["root_e"][:, x - 1], e_end[:, x - 1], -np.inf))
                end_w[:, x] = np.where(np.isfinite(send_w[:, x]),
                                       np.maximum(end_w[:, x], consumer - cap), end_w[:, x])
            end = np.where(roles["start_e"] | roles["mid_e"], end_e,
                           np.where(roles["start_w"] | roles["mid_w"], end_w, body))
            root_end = np.where(roles["root_e"], e_end + c,
                                np.where(roles["root_w"], w_end + c + 2 * c, body + 12 * c))
            later = {"start_e": 5, "start_w": 4, "mid_e": 3, "mid_w": 2}
            done = np.where(roles["root"], root_end, body + 12 * c)
            for name, n_after in later.items():
                done = np.where(roles[name], end + c + 2 * c * n_after, done)
        t = np.where(do, done + c, t)                           # the loop's branch
        if shifting:
            # the send runs ahead of a late receiver by what the path holds
            out = np.maximum(b_first + tb, start[pred_y, :] + sigma + tb - ahead_y)
            arrive = out[succ_y, :] + lat + hops_y
            t = np.maximum.reduce([t + c, out, arrive])
            if C > 1:
                # the ramp into the PE takes B's block and the reduce streams
                # it folds, one wavelet a cycle, from the first to arrive on
                b0 = b_first[succ_y, :] + lat + hops_y
                first_in = np.minimum(b0, np.minimum(np.where(roles["mid_e"] | roles["root_w"],
                                                              head_e, np.inf),
                                                     np.where(roles["mid_w"] | roles["root_e"],
                                                              head_w, np.inf)))
                n_in = tc * (roles["mid_e"] | roles["mid_w"]) \
                    + tc * (roles["root_w"].astype(int) + roles["root_e"])
                t = np.maximum(t, first_in + tb + n_in + c)
            t = t + 4 * c                                       # wait, FIFO registers
        start = t
    return int(round(start.max()))


def tolerance(dtype: str, accumulate: str, K: int, steps: int) -> float:
    """Elementwise bound on |C - C_ref| / (|A| @ |B|) against the float64
    product of the unrounded inputs. With u(dt) the unit roundoff of a
    dtype (2**-24 for float32, 2**-11 for float16):
        2*u(dtype)            A and B rounded to their storage dtype
      + 2*(kt + 2)*2**-24     the fp32 dot products inside a tile product
      + (steps*kt + 1)*u(acc) the accumulator rounded after every FMAC
      + u(dtype)              C rounded to the output dtype.
    The accumulator term counts a rounding per FMAC instruction: a tile
    product is a loop nest of FMACs, and each stores (rounds to the
    accumulator's dtype), kt times per tile product. One rounding per tile
    product, (steps + 1)*u(acc), would be too tight (an fp16 accumulator:
    1.1e-3 relative error at K = 26 on 1 x 1, against such a bound of
    9.8e-4)."""
    def unit(dt):
        return 2.0 ** -11 if dt == "float16" else 2.0 ** -24
    kt = -(-K // steps)
    return 3 * unit(dtype) + 2 * (kt + 2) * 2.0 ** -24 + (steps * kt + 1) * unit(accumulate)


# ----------------------------------------------------------------------------
# Input checks
def _matrix(name: str, X) -> np.ndarray:
    try:
        X = np.asarray(X)
    except Exception as exc:                       # ragged lists and the like
        raise ConfigError(f"{name} must be a 2-D array of numbers: {exc}") from None
    if X.ndim != 2:
        raise ConfigError(f"{name} must be a 2-D matrix, got shape {X.shape}")
    if X.size == 0:
        raise ConfigError(f"{name} is empty (shape {X.shape}): every dimension must be >= 1")
    if not (np.issubdtype(X.dtype, np.floating) or np.issubdtype(X.dtype, np.integer)):
        raise ConfigError(f"{name} must hold real numbers, got dtype {X.dtype}")
    X = X.astype(np.float64)
    bad = ~np.isfinite(X)
    if bad.any():
        i, j = np.argwhere(bad)[0]
        raise ConfigError(f"{name} holds {X[i, j]} at [{i}, {j}]: NaN and infinity are rejected "
                          f"(the kernels compute on finite values only)")
    return X


def check_common(cfg, dtype: str, accumulate: str | None = None) -> None:
    if not isinstance(cfg, wse.WaferConfig):
        raise ConfigError(f"cfg must be a WaferConfig, got {type(cfg).__name__}")
    if dtype not in DTYPES:
        raise ConfigError(f"dtype {dtype!r}: expected one of {DTYPES}")
    if accumulate is not None and accumulate not in DTYPES:
        raise ConfigError(f"accumulate {accumulate!r}: expected one of {DTYPES}")


def _check_range(name: str, X: np.ndarray, dtype: str) -> None:
    if dtype == "float16" and np.abs(X).max() > FP16_MAX:
        raise ConfigError(f"{name} has values up to {np.abs(X).max():.4g}, beyond float16's "
                          f"{FP16_MAX}: use dtype='float32' or scale the inputs")


# ----------------------------------------------------------------------------
# Public entry point
def gemm(A, B, cfg: wse.WaferConfig, algorithm: str = "meshgemm", dtype: str = "float16",
         transpose_b: bool = False, accumulate: str = "float32", max_cycles: int = 10 ** 12,
         skew: str = "fabric", skip_blocks=None, k_split: int = 0, a_lower: bool = False):
    """C = A @ B (A @ B.T with transpose_b) on the cfg.rows x cfg.cols grid.

    A: (M, K); B: (K, N), or (N, K) with transpose_b. dtype: storage of A
    and B tiles ("float32" or "float16"); accumulate: dtype of the C
    accumulator. skew (cannon, meshgemm): "fabric" (default) shifts the
    tiles into their initial alignment on the rings, charged in the cycles;
    "host" loads them already skewed and does not charge the alignment
    (the steps alone, as benchmarks/gemm.py's first-steps runs measure
    them); "weights" shifts A on the fabric and loads B already aligned
    (B a resident weight, placed once). gemmt (transpose_b=True only) needs
    no alignment; its skip_blocks, (rows, rows) booleans, leaves C block
    (y, n) (rows y*mt.., columns n*nt..) at 0 without computing it where
    True (the fully masked blocks of causal attention scores). summa's
    k_split cuts K into that many blocks instead of lcm(rows, cols) (block k
    on column k mod cols and row k mod rows, so operands already cut that
    way are used where they lie); with a_lower, summa takes A's block (y, s)
    (rows y*mt.., K-block s) to be zero for s > y and skips those products
    (the probabilities of the fully masked causal blocks). Returns (C, report):
    C of shape (M, N) in `dtype`; the
    report carries compute efficiency and report.extra["gemm"] (plan,
    model cycles, compute/stall split)."""
    p, prog, c_buf = _build(A, B, cfg, algorithm, dtype, transpose_b, accumulate, None, skew,
                            skip_blocks, k_split, a_lower)
    result = prog.run(max_cycles=max_cycles)
    c_tiles = result.read(c_buf).astype(np.float32)       # (R, C, slots*mt*nt)
    C = _assemble(p, c_tiles)[:p.M, :p.N].astype(np.float16 if dtype == "float16"
                                                  else np.float32)
    report = result.report
    _annotate(report, p, cfg, p.steps, None if skip_blocks is None else ~np.asarray(skip_blocks))
    return C, report


def gemm_t(A, B, cfg: wse.WaferConfig, dtype: str = "float16", accumulate: str = "float32",
           skip_blocks=None, max_cycles: int = 10 ** 12):
    """C = A @ B.T by GEMM-T: `gemm(A, B, cfg, algorithm="gemmt",
    transpose_b=True, ...)`, B given as (N, K) and used where it lies (the
    module docstring). Returns (C, report)."""
    return gemm(A, B, cfg, algorithm="gemmt", dtype=dtype, transpose_b=True,
                accumulate=accumulate, max_cycles=max_cycles, skip_blocks=skip_blocks)


def gemm_first_steps(A, B, cfg: wse.WaferConfig, steps: int, algorithm: str = "meshgemm",
                     dtype: str = "float16", transpose_b: bool = False,
                     accumulate: str = "float32", max_cycles: int = 10 ** 12,
                     skew: str = "fabric") -> wse.RunReport:
    """Benchmark only: emulate the first `steps` of the algorithm's L steps
    on the full grid with the full-size tiles, and return only the report.

    The programs are loops over identical steps; this runs the same program
    with its loop cut short (cannon/meshgemm: the whole skew, then `steps`
    products and steps-1 shifts; summa: `steps` broadcasts and products),
    so its C holds only part of the sum and is not returned. The skew is a
    one-off before the steps, in every partial run alike, so the difference
    between two runs is steps only. benchmarks/gemm.py uses it where a
    full run is too long to emulate: it measures two step counts and
    extrapolates the per-step cycles linearly to L, and says so.
    report.extra["gemm"] describes the partial run ("steps_run", and the
    model's cycles and wavelet-hops for those steps)."""
    p, prog, _ = _build(A, B, cfg, algorithm, dtype, transpose_b, accumulate, steps, skew)
    report = prog.run(max_cycles=max_cycles).report
    _annotate(report, p, cfg, p.check_steps(steps))
    return report


def _assemble(p: GemmPlan, c_tiles: np.ndarray) -> np.ndarray:
    """The padded C from the PEs' C buffers (R, C, slots*mt*nt): block (y, x) on
    PE (x, y); gemmt: block (y, n) on PE (n mod C, y), slot n // C."""
    R, Cn = p.rows, p.cols
    if p.algorithm != "gemmt":
        return c_tiles.reshape(R, Cn, p.mt, p.nt).transpose(0, 2, 1, 3).reshape(
            R * p.mt, Cn * p.nt)
    n = np.arange(R)
    blocks = c_tiles[:, n % Cn].reshape(R, R, -1, p.tile_c)[:, n, n // Cn]   # (y, n, tile)
    return blocks.reshape(R, R, p.mt, p.nt).transpose(0, 2, 1, 3).reshape(R * p.mt, R * p.nt)


def _build(A, B, cfg, algorithm: str, dtype: str, transpose_b: bool, accumulate: str,
           steps: int | None, skew: str, skip_blocks=None, k_split: int = 0,
           a_lower: bool = False):
    """Check the inputs, plan, and build the program of the first `steps` steps."""
    check_common(cfg, dtype, accumulate)
    if algorithm not in ALL_ALGORITHMS:
        raise ConfigError(f"unknown GEMM algorithm {algorithm!r}: expected one of "
                          f"{ALL_ALGORITHMS}")
    if algorithm in TRANSPOSED_ALGORITHMS and not transpose_b:
        raise ConfigError(f"{algorithm} computes A @ B.T with B in its own (N, K) layout: "
                          f"pass B as (N, K) with transpose_b=True")
    if skip_blocks is not None and algorithm != "gemmt":
        raise ConfigError(f"skip_blocks applies to gemmt only, not {algorithm!r}")
    if k_split and (algorithm != "summa" or not isinstance(k_split, (int, np.integer))
                    or k_split < 1):
        raise ConfigError(f"k_split={k_split!r}: a positive integer, for summa only "
                          f"(algorithm {algorithm!r})")
    if a_lower and algorithm != "summa":
        raise ConfigError(f"a_lower applies to summa only, not {algorithm!r}")
    if skew not in SKEWS:
        raise ConfigError(f"unknown skew {skew!r}: expected one of {SKEWS}")
    A = _matrix("A", A)
    B = _matrix("B", B)
    if transpose_b:
        if A.shape[1] != B.shape[1]:
            raise ConfigError(f"A @ B.T: A is {A.shape} and B is {B.shape}; their second "
                              f"dimensions (K) must match")
        N = B.shape[0]
    else:
        if A.shape[1] != B.shape[0]:
            raise ConfigError(f"A @ B: A is {A.shape} and B is {B.shape}; A's columns must "
                              f"equal B's rows")
        N = B.shape[1]
    _check_range("A", A, dtype)
    _check_range("B", B, dtype)
    M, K = A.shape
    p = plan(M, K, N, cfg, algorithm, dtype, accumulate, transpose_b, skew, k_split, a_lower)
    steps = p.check_steps(steps)
    check_fits(p, cfg)
    a_blocks, b_blocks = _blocks(p, A, B)
    del A, B                # the float64 copies: the program needs only the blocks
    if algorithm == "gemmt":
        computes = np.ones((p.rows, p.rows), bool)
        if skip_blocks is not None:
            skip = np.asarray(skip_blocks)
            if skip.shape != (p.rows, p.rows) or skip.dtype != bool:
                raise ConfigError(f"skip_blocks: expected ({p.rows}, {p.rows}) booleans (C "
                                  f"blocks of {p.mt} x {p.nt}), got {skip.shape} {skip.dtype}")
            computes = ~skip
        prog, c_buf = _gemmt_program(p, cfg, a_blocks, b_blocks, steps, computes)
        return p, prog, c_buf
    build = _summa_program if algorithm == "summa" else _cannon_program
    prog, c_buf = build(p, cfg, a_blocks, b_blocks, steps)
    return p, prog, c_buf


def _annotate(report: wse.RunReport, p: GemmPlan, cfg: wse.WaferConfig, steps: int,
              computes: np.ndarray | None = None) -> None:
    """Describe a run of the first `steps` steps (all p.steps for gemm());
    computes: gemmt's C blocks computed (None: all)."""
    compute = report.compute_cycles
    stall = report.stall_cycles
    useful = 2 * p.M * p.K * p.N * steps / p.steps
    report.extra["gemm"] = {
        "algorithm": p.algorithm, "M": p.M, "K": p.K, "N": p.N,
        "grid": f"{p.rows}x{p.cols}", "steps": p.steps, "steps_run": steps,
        "tile": [p.mt, p.kt, p.nt], "dtype": p.dtype, "accumulate": p.acc_dtype,
        "transpose_b": p.transpose_b, "skew": p.skew, "sram_bytes_per_pe": p.sram_bytes(),
        "model_cycles": model_cycles(p, cfg, steps, computes),
        "expected_wavelet_hops": expected_wavelet_hops(p, steps, computes),
        "compute_efficiency": report.compute_efficiency,
        # FLOPs of the unpadded problem (its share done in the steps run)
        # over the peak of the whole grid
        "useful_efficiency": useful / max(report.cycles * report.pes
                                          * report.peak_flops_per_pe_cycle, 1),
        "matmul_cycles_per_pe": steps * matmul_cycles(p, cfg),
        # of which the datapath computes (the rest: the loop nest's issues and start-ups)
        "matmul_compute_cycles_per_pe": steps * matmul_compute_cycles(p, cfg),
        "compute_cycles_mean": float(compute.mean()),
        "stall_cycles_mean": float(stall.mean()),
        "stall_cycles_max": int(stall.max()),
        "communication_share": 1.0 - steps * matmul_cycles(p, cfg) / max(report.cycles, 1),
    }


# ----------------------------------------------------------------------------
# Host-side tiling
def _blocks(p: GemmPlan, A: np.ndarray, B: np.ndarray):
    """A as (R, L, mt, kt) blocks and B as (L, C, kt, nt) blocks, or, with
    transpose_b, B's own (C, L, nt, kt) blocks (L = p.k_blocks; gemmt: B's
    own (R, C, nt, kt) blocks, N-block first)."""
    R, L = p.rows, p.k_blocks
    n_blocks = R if p.algorithm == "gemmt" else p.cols
    Ap = np.zeros((R * p.mt, L * p.kt))
    Ap[:A.shape[0], :A.shape[1]] = A
    a_blocks = Ap.reshape(R, p.mt, L, p.kt).transpose(0, 2, 1, 3)
    if p.transpose_b:
        Bp = np.zeros((n_blocks * p.nt, L * p.kt))
        Bp[:B.shape[0], :B.shape[1]] = B
        b_blocks = Bp.reshape(n_blocks, p.nt, L, p.kt).transpose(0, 2, 1, 3)
    else:
        Bp = np.zeros((L * p.kt, n_blocks * p.nt))
        Bp[:B.shape[0], :B.shape[1]] = B
        b_blocks = Bp.reshape(L, p.kt, n_blocks, p.nt).transpose(0, 2, 1, 3)
    return a_blocks, b_blocks


def _b_block(p: GemmPlan, b_blocks: np.ndarray, k: np.ndarray, x: np.ndarray) -> np.ndarray:
    """B block (k, x) as stored on a PE (row-major kt x nt, or nt x kt when transposed)."""
    return b_blocks[x, k] if p.transpose_b else b_blocks[k, x]


# ----------------------------------------------------------------------------
@contextlib.contextmanager
def _if_zero(t, tmp, value, modulus: int, offset: int = 0):
    """Run the body once when value + offset == 0 (|value + offset| < modulus);
    tmp is a scratch register."""
    t.affine(tmp, value, 1, offset)
    t.mod(tmp, modulus)
    t.affine(tmp, tmp, -1, 1)          # 1 when zero, <= 0 otherwise
    with t.loop(tmp):
        yield


# ----------------------------------------------------------------------------
# Cannon and MeshGEMM
def _cannon_program(p: GemmPlan, cfg: wse.WaferConfig, a_blocks, b_blocks, steps: int):
    R, C, L = p.rows, p.cols, p.steps
    a, b = p.a_blocks, p.b_blocks
    slots_a, slots_b = a + p.shifts_a, b + p.shifts_b
    prog = wse.Program(cfg)
    a_fifo = prog.buffer("a_fifo", (slots_a * p.tile_a,), p.dtype)
    b_fifo = prog.buffer("b_fifo", (slots_b * p.tile_b,), p.dtype)
    c_buf = prog.buffer("c", (p.tile_c,), p.acc_dtype)

    # ring positions and the FIFO contents: aligned at K-block k0, less the
    # shifts the fabric will do (the skew; none with skew="host")
    order_x, order_y = ring_order(p.algorithm, C), ring_order(p.algorithm, R)
    pos_x, pos_y = routes.ring_position(order_x), routes.ring_position(order_y)
    k0 = (pos_y[:, None] * b + pos_x[None, :] * a) % L                # (R, C)
    skew_a, skew_b = fabric_skew(p)
    ys = np.arange(R)[:, None, None]
    xs = np.arange(C)[None, :, None]
    ka = (k0[:, :, None] - skew_a[:, None, None] + np.arange(a)[None, None, :]) % L  # (R, C, a)
    kb = (k0[:, :, None] - skew_b[None, :, None] + np.arange(b)[None, None, :]) % L
    a_init = np.zeros((R, C, slots_a, p.tile_a))
    a_init[:, :, :a] = a_blocks[np.broadcast_to(ys, ka.shape), ka].reshape(R, C, a, -1)
    b_init = np.zeros((R, C, slots_b, p.tile_b))
    b_init[:, :, :b] = _b_block(p, b_blocks, kb, np.broadcast_to(xs, kb.shape)).reshape(
        R, C, b, -1)
    prog.load(a_fifo, a_init.reshape(R, C, -1))
    prog.load(b_fifo, b_init.reshape(R, C, -1))
    del a_init, b_init

    comm = []            # (fifo buffer, tile, slots, send color, recv color)
    if p.shifts_a:
        plan_x = routes.ring(prog, "x", order_x, step=-1, name="a_ring")
        comm.append((a_fifo, p.tile_a, slots_a,
                     prog.color_param_indices("a_send", plan_x.send_color),
                     prog.color_param_indices("a_recv", plan_x.recv_color)))
    if p.shifts_b:
        plan_y = routes.ring(prog, "y", order_y, step=-1, name="b_ring")
        comm.append((b_fifo, p.tile_b, slots_b,
                     prog.color_param_indices("b_send", plan_y.send_color),
                     prog.color_param_indices("b_recv", plan_y.recv_color)))

    role = prog.role("pe")
    with role.task("main", entry=True) as t:
        head_a, head_b = t.reg(), t.reg()
        free = {id(a_fifo): t.reg(), id(b_fifo): t.reg()}
        head = {id(a_fifo): head_a, id(b_fifo): head_b}
        t.set(head_a, 0)
        t.set(head_b, 0)
        t.set(free[id(a_fifo)], slots_a - 1)
        t.set(free[id(b_fifo)], slots_b - 1)

        def multiply():
            t.matmul(c_buf.view(), a_fifo.view(offset=head_a * p.tile_a, length=p.tile_a),
                     b_fifo.view(offset=head_b * p.tile_b, length=p.tile_b),
                     p.mt, p.kt, p.nt, transpose_b=p.transpose_b)

        def post_receive(fifo, tile, slots, send, recv):
            t.mov(fifo.view(offset=free[id(fifo)] * tile, length=tile),
                  prog.fabin(recv, tile), async_=True)

        def post_send(fifo, tile, slots, send, recv):
            t.mov(prog.fabout(send, tile),
                  fifo.view(offset=head[id(fifo)] * tile, length=tile), async_=True)

        def shift():
            # receives first: every PE has posted its receives before any send
            # can fill a queue, whatever the number of async slots
            for line in comm:
                post_receive(*line)
            for line in comm:
                post_send(*line)

        def advance(fifos=((a_fifo, slots_a), (b_fifo, slots_b))):
            for fifo, slots in fifos:
                for r in (head[id(fifo)], free[id(fifo)]):
                    t.addi(r, 1)
                    t.mod(r, slots)

        def skew_in_turn(skew_a, skew_b):
            """The initial alignment (fabric_skew), one axis after the other:
            skew_a shifts of A (its row's count), then skew_b of B."""
            for line in comm:
                with t.loop(skew_a if line[0] is a_fifo else skew_b):
                    post_receive(*line)
                    post_send(*line)
                    t.wait()
                    advance([(line[0], line[2])])

        def skew(skew_a, skew_b, skew_steps):
            """The initial alignment (fabric_skew): at shift i a PE moves A if
            i < skew_a (its row's count) and B if i < skew_b (its column's),
            so the lines shift at the same time."""
            tmp = t.reg()
            lines = []          # (comm entry, shifts left, moving: 1 or 0)
            for line in comm:
                left, moving = t.reg(), t.reg()
                t.set(left, skew_a if line[0] is a_fifo else skew_b)
                t.set(moving, 1)
                with _if_zero(t, tmp, left, L):
                    t.set(moving, 0)
                lines.append((line, left, moving))
            with t.loop(skew_steps):
                for post in (post_receive, post_send):
                    for line, _, moving in lines:
                        with t.loop(moving):
                            post(*line)
                t.wait()
                for line, left, moving in lines:
                    with t.loop(moving):
                        advance([(line[0], line[2])])
                    t.addi(left, -1)
                    with _if_zero(t, tmp, left, L):
                        t.set(moving, 0)

        if skew_a.any() or skew_b.any():
            rows_a, cols_b = skew_a[:, None], skew_b[None, :]        # per PE
            a_shifts, b_shifts = prog.param("skew_a", rows_a), prog.param("skew_b", cols_b)
            if p.skews_in_turn:
                skew_in_turn(a_shifts, b_shifts)
            else:
                skew(a_shifts, b_shifts, prog.param("skew_steps", np.maximum(rows_a, cols_b)))

        with t.loop(steps - 1):
            if p.algorithm == "meshgemm":
                shift()           # next tiles stream in while the current ones multiply
                multiply()
            else:
                multiply()
                shift()
            t.wait()
            advance()
        multiply()
    return prog, c_buf


# ----------------------------------------------------------------------------
# GEMM-T
def gemmt_held(p: GemmPlan) -> np.ndarray:
    """(rows, steps): the N-block of B row y holds at step t (and so the C block
    (y, n) it computes): order[(pos[y] + t) mod R] on the interleaved ring."""
    R = p.rows
    order = np.asarray(routes.interleaved_order(R))
    pos = routes.ring_position(order.tolist())
    return order[(pos[:, None] + np.arange(p.steps)[None, :]) % R]


def gemmt_roles(p: GemmPlan, held_n: np.ndarray, computes: np.ndarray) -> dict[str, np.ndarray]:
    """What each PE does in the reduce of one step, as (rows, cols) 0/1 arrays.

    held_n (rows,): the N-block of each row; computes (rows,): whether the row
    computes it. The row's partials go to the root, column n mod cols: the
    PEs west of it form an eastward chain (column 0 starts it, the others
    add their partial to what arrives from the west and pass it on), those
    east of it a westward chain; the root adds both into its C block."""
    C = p.cols
    xs = np.arange(C)[None, :]
    r = (held_n % C)[:, None]
    do = computes.astype(bool)[:, None]
    root = do & (xs == r)
    return {"do": np.broadcast_to(do, (p.rows, C)), "root": root, "partial": do & ~root,
            "start_e": do & (xs == 0) & (r > 0), "start_w": do & (xs == C - 1) & (r < C - 1),
            "mid_e": do & (xs > 0) & (xs < r), "mid_w": do & (xs < C - 1) & (xs > r),
            "root_w": root & (r > 0), "root_e": root & (r < C - 1)}


def _gemmt_program(p: GemmPlan, cfg: wse.WaferConfig, a_blocks, b_blocks, steps: int,
                   computes: np.ndarray):
    """C = A B^T by GEMM-T (module docstring). a_blocks (R, C, mt, kt): A block
    (y, x) on PE (x, y); b_blocks (R, C, nt, kt): B's own block (n, x), at
    first on PE (x, n); computes (R, R): which C blocks (y, n) are computed."""
    R, C = p.rows, p.cols
    prog = wse.Program(cfg)
    a_buf = prog.buffer("a", (p.tile_a,), p.dtype)
    slots_b = 1 + p.shifts_b
    b_fifo = prog.buffer("b_fifo", (slots_b * p.tile_b,), p.dtype)
    c_buf = prog.buffer("c", ((p.c_slots + (C > 1)) * p.tile_c,), p.acc_dtype)
    partial = p.c_slots * p.tile_c                 # offset of the partial product
    prog.load(a_buf, a_blocks.reshape(R, C, -1))
    b_init = np.zeros((R, C, slots_b * p.tile_b))
    b_init[:, :, :p.tile_b] = b_blocks.reshape(R, C, -1)
    prog.load(b_fifo, b_init)
    del b_init
    held = gemmt_held(p)
    if p.shifts_b:
        plan_y = routes.ring(prog, "y", routes.interleaved_order(R), step=-1, name="b_ring")
        b_send = prog.color_param_indices("b_send", plan_y.send_color)
        b_recv = prog.color_param_indices("b_recv", plan_y.recv_color)
    if C > 1:
        east = routes.transfers(prog, "x", [(i, i + 1) for i in range(C - 1)], name="red_e")
        west = routes.transfers(prog, "x", [(i + 1, i) for i in range(C - 1)], name="red_w")
        e_send = prog.color_param_indices("red_e_send", east.send_color)
        e_recv = prog.color_param_indices("red_e_recv", east.recv_color)
        w_send = prog.color_param_indices("red_w_send", west.send_color)
        w_recv = prog.color_param_indices("red_w_recv", west.recv_color)

    role = prog.role("pe")
    with role.task("main", entry=True) as t:
        head, free, dst = t.reg(), t.reg(), t.reg()
        if p.shifts_b:
            t.set(head, 0)
            t.set(free, 1)
        tile = p.tile_c
        scratch = c_buf.view(offset=partial, length=tile) if C > 1 else None
        for s in range(steps):
            last = s == steps - 1
            if p.shifts_b and not last:
                # the next B block streams in while this one is used
                t.mov(b_fifo.view(offset=free * p.tile_b, length=p.tile_b),
                      prog.fabin(b_recv, p.tile_b), async_=True)
                t.mov(prog.fabout(b_send, p.tile_b),
                      b_fifo.view(offset=head * p.tile_b, length=p.tile_b), async_=True)
            roles = gemmt_roles(p, held[:, s], computes[np.arange(R), held[:, s]])
            params = {k: prog.param(f"s{s}_{k}", v.astype(np.int64)) for k, v in roles.items()}
            slot = (held[:, s] // C * tile)[:, None]
            dst_off = np.where(roles["root"], slot, partial)
            with t.loop(params["do"]):
                t.set(dst, prog.param(f"s{s}_dst", dst_off.astype(np.int64)))
                if C > 1:
                    with t.loop(params["partial"]):
                        t.fill(scratch, 0.0)
                t.matmul(c_buf.view(offset=dst, length=tile), a_buf.view(),
                         b_fifo.view(offset=head * p.tile_b, length=p.tile_b),
                         p.mt, p.kt, p.nt, transpose_b=True)
                if C > 1:
                    c_blk = c_buf.view(offset=dst, length=tile)
                    with t.loop(params["start_e"]):
                        t.mov(prog.fabout(e_send, tile), scratch)
                    with t.loop(params["start_w"]):
                        t.mov(prog.fabout(w_send, tile), scratch)
                    with t.loop(params["mid_e"]):
                        t.add(prog.fabout(e_send, tile), prog.fabin(e_recv, tile), scratch)
                    with t.loop(params["mid_w"]):
                        t.add(prog.fabout(w_send, tile), prog.fabin(w_recv, tile), scratch)
                    with t.loop(params["root_w"]):
                        t.add(c_blk, c_blk, prog.fabin(e_recv, tile))
                    with t.loop(params["root_e"]):
                        t.add(c_blk, c_blk, prog.fabin(w_recv, tile))
            if p.shifts_b and not last:
                t.wait()
                for r in (head, free):
                    t.addi(r, 1)
                    t.mod(r, 2)
    return prog, c_buf


# ----------------------------------------------------------------------------
# SUMMA
def _summa_routes(prog: wse.Program, along: str, name: str):
    """Two flood colors on every line: forward (E or S) and backward (W or N).

    Every router of the forward color takes wavelets from the backward side
    and from its ramp and gives them to its ramp and onwards, so a block
    injected at any root reaches the root and every PE beyond it."""
    length = prog.cols if along == "x" else prog.rows
    fwd, back = ("E", "W") if along == "x" else ("S", "N")
    colors = []
    for name_, out_port, in_port in ((f"{name}_fwd", fwd, back), (f"{name}_back", back, fwd)):
        color = prog.color(name_)
        rx = np.full(length, routes.BIT[in_port] | routes.BIT["RAMP"], np.uint8)
        tx = np.full(length, routes.BIT[out_port] | routes.BIT["RAMP"], np.uint8)
        end = length - 1 if out_port in ("E", "S") else 0
        tx[end] = routes.BIT["RAMP"]
        routes.set_line_routes(prog, color, along, rx, tx)
        colors.append(color)
    return colors


def _summa_program(p: GemmPlan, cfg: wse.WaferConfig, a_blocks, b_blocks, steps: int):
    R, C, L = p.rows, p.cols, p.steps
    a, b = p.a_blocks, p.b_blocks
    prog = wse.Program(cfg)
    a_store = prog.buffer("a_blocks", (a * p.tile_a,), p.dtype)
    b_store = prog.buffer("b_blocks", (b * p.tile_b,), p.dtype)
    a_panel = prog.buffer("a_panel", (p.tile_a,), p.dtype) if p.shifts_a else None
    b_panel = prog.buffer("b_panel", (p.tile_b,), p.dtype) if p.shifts_b else None
    c_buf = prog.buffer("c", (p.tile_c,), p.acc_dtype)

    # PE (x, y) holds A blocks x, x+C, ... of row y and B blocks y, y+R, ... of column x
    # (with k_split, not a multiple of the line: zero blocks past the last)
    a_blocks = np.concatenate([a_blocks, np.zeros_like(a_blocks[:, :1])], axis=1)
    zero_b = (np.zeros_like(b_blocks[:, :1]) if p.transpose_b
              else np.zeros_like(b_blocks[:1]))
    b_blocks = np.concatenate([b_blocks, zero_b], axis=1 if p.transpose_b else 0)
    ys = np.arange(R)[:, None, None]
    xs = np.arange(C)[None, :, None]
    ka = np.minimum(xs + C * np.arange(a)[None, None, :], L)       # (1, C, a)
    kb = np.minimum(ys + R * np.arange(b)[None, None, :], L)       # (R, 1, b)
    shape_a = (R, C, a)
    prog.load(a_store, a_blocks[np.broadcast_to(ys, shape_a),
                                np.broadcast_to(ka, shape_a)].reshape(R, C, -1))
    shape_b = (R, C, b)
    prog.load(b_store, _b_block(p, b_blocks, np.broadcast_to(kb, shape_b),
                                np.broadcast_to(xs, shape_b)).reshape(R, C, -1))
    x_param = prog.param("x", np.broadcast_to(np.arange(C)[None, :], (R, C)))
    y_param = prog.param("y", np.broadcast_to(np.arange(R)[:, None], (R, C)))

    axes = []            # (store, panel, tile, line length, position param, fwd, back)
    if p.shifts_a:
        axes.append((a_store, a_panel, p.tile_a, C, x_param, *_summa_routes(prog, "x", "a")))
    if p.shifts_b:
        axes.append((b_store, b_panel, p.tile_b, R, y_param, *_summa_routes(prog, "y", "b")))

    role = prog.role("pe")
    with role.task("main", entry=True) as t:
        tmp = t.reg()

        def if_zero(value, modulus, offset=0):
            return _if_zero(t, tmp, value, modulus, offset)

        # per axis: phase (s mod P), e = pos - root, receive lengths, next block to send
        state = []
        for store, panel, tile, P, pos, fwd, back in axes:
            phase, e, len_f, len_b, src = (t.reg() for _ in range(5))
            t.set(phase, 0)
            t.set(e, pos)
            t.set(len_f, tile)                 # pos >= root 0 always
            t.set(len_b, 0)
            with if_zero(e, P):
                t.set(len_b, tile)
            t.set(src, 0)
            state.append((phase, e, len_f, len_b, src))

        # on an axis of one PE the operand comes straight from the store
        own_a = t.reg() if not p.shifts_a else None
        own_b = t.reg() if not p.shifts_b else None
        for r in (own_a, own_b):
            if r is not None:
                t.set(r, 0)

        def broadcast(axis, st):
            store, panel, tile, P, pos, fwd, back = axis
            phase, e, len_f, len_b, src = st
            # a PE beyond the root gets the forward flood, one before it the
            # backward one, the root both (its own two copies)
            t.mov(panel.view(0, length=len_f), prog.fabin(fwd, len_f), async_=True, slot=1)
            t.mov(panel.view(0, length=len_b), prog.fabin(back, len_b), async_=True, slot=2)
            with if_zero(e, P):
                t.mov(prog.fabout(fwd, tile), store.view(offset=src * 1, length=tile),
                      async_=True, slot=3)
                t.mov(prog.fabout(back, tile), store.view(offset=src * 1, length=tile),
                      async_=True, slot=4)
                t.addi(src, tile)
            t.wait()

        def advance(axis, st):
            store, panel, tile, P, pos, fwd, back = axis
            phase, e, len_f, len_b, src = st
            t.addi(phase, 1)
            t.mod(phase, P)
            t.addi(e, -1)
            with if_zero(e, P, offset=1):      # the root moved past this PE
                t.set(len_f, 0)
            with if_zero(phase, P):            # a new round: the root is back at 0
                t.addi(e, P)
                t.set(len_f, tile)
                t.set(len_b, 0)
            with if_zero(e, P):                # the root reached this PE
                t.set(len_b, tile)

        if p.a_lower:
            products = t.reg()                 # row y multiplies K-blocks 0 .. y
            t.set(products, prog.param("products", np.broadcast_to(np.arange(1, R + 1)[:, None],
                                                                   (R, C))))
        with t.loop(steps):
            for axis, st in zip(axes, state):
                broadcast(axis, st)
            a_op = a_panel.view() if p.shifts_a else a_store.view(offset=own_a * 1,
                                                                   length=p.tile_a)
            b_op = b_panel.view() if p.shifts_b else b_store.view(offset=own_b * 1,
                                                                   length=p.tile_b)
            if p.a_lower:
                with t.loop(products) as once:
                    t.matmul(c_buf.view(), a_op, b_op, p.mt, p.kt, p.nt,
                             transpose_b=p.transpose_b)
                    t.set(once, 1)
                t.addi(products, -1)
            else:
                t.matmul(c_buf.view(), a_op, b_op, p.mt, p.kt, p.nt, transpose_b=p.transpose_b)
            for axis, st in zip(axes, state):
                advance(axis, st)
            if own_a is not None:
                t.addi(own_a, p.tile_a)
            if own_b is not None:
                t.addi(own_b, p.tile_b)
    return prog, c_buf
