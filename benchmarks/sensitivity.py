"""Sensitivity: how three figures move when a constant of the PE is halved or doubled.

For each WaferConfig constant that sets cycles and has no micro-level source
(marked ASSUMPTION in wse/config.py), and for the two instruction costs that
have one (for comparison), the cycles at 0.5x and 2x of its value (integers:
halved rounding down, never below the field's minimum) of
  * a chain reduce of B = 4 on a row of P = 300 PEs (emulated),
  * MeshGEMM 2048^3 fp16 on 128 x 128, by its model (kernels.matmul.model_cycles),
  * with --full, the LLaMA-3-8B decode layer (4,096-token context, fp16) on
    420 x 420 (emulated, one program; about a minute and 3-6 GiB a run,
    15 distinct configurations, so about 15-20 minutes in all).

    python -m benchmarks.sensitivity [--full] [--markdown]
"""
from __future__ import annotations

import dataclasses
import time

import numpy as np

import wse
from benchmarks.options import command_line

# (field, has a micro-level source); the rest of the cycle-setting fields are
# grid shape, latencies and rates taken from the vendor and the HPDC 2024 model
CONSTANTS = (
    ("vector_startup_cycles", False),
    ("task_start_cycles", False),
    ("queue_depth", False),
    ("input_queue_depth", False),
    ("async_slots", False),
    ("scalar_op_cycles", True),
    ("datapath_latency", True),
)
FACTORS = (0.5, 1.0, 2.0)
MINIMUM = {"queue_depth": 1, "input_queue_depth": 1, "async_slots": 1}


def scaled(cfg: wse.WaferConfig, field: str, factor: float) -> int:
    value = getattr(cfg, field)
    return max(MINIMUM.get(field, 0), int(value * factor))


def chain_cycles(cfg: wse.WaferConfig, P: int = 300, B: int = 4) -> int:
    from kernels import collectives as C
    x = np.ones((1, P, B), np.float32)
    return C.reduce(x, cfg.with_grid(1, P), algorithm="chain")[1].cycles


def meshgemm_model_cycles(cfg: wse.WaferConfig, size: int = 2048, grid: int = 128) -> int:
    from kernels import matmul as G
    grid_cfg = cfg.with_grid(grid, grid)
    return G.model_cycles(G.plan(size, size, size, grid_cfg, "meshgemm"), grid_cfg)


def decode_cycles(cfg: wse.WaferConfig) -> int:
    from benchmarks.transformer import decode_case
    return decode_case(base=cfg)["cycles"]


def run(full: bool = False, base: wse.WaferConfig = wse.WSE2) -> list[dict]:
    """One row per (constant, factor): the three figures; factor 1.0 is the preset."""
    cache: dict[tuple, dict] = {}
    rows = []
    for field, sourced in CONSTANTS:
        for factor in FACTORS:
            value = scaled(base, field, factor)
            cfg = dataclasses.replace(base, **{field: value})
            key = dataclasses.astuple(cfg)
            if key not in cache:
                started = time.perf_counter()
                figures = {"chain_300x4": chain_cycles(cfg),
                           "meshgemm_2048_128_model": meshgemm_model_cycles(cfg)}
                if full:
                    figures["decode_llama3_8b_420"] = decode_cycles(cfg)
                figures["wall_seconds"] = round(time.perf_counter() - started, 1)
                cache[key] = figures
            rows.append({"constant": field, "sourced": sourced, "factor": factor,
                         "value": value, **cache[key]})
    return rows


def markdown(rows: list[dict]) -> str:
    figures = [k for k in rows[0] if k not in ("constant", "sourced", "factor", "value",
                                               "wall_seconds")]
    head = "| constant | value (0.5x / 1x / 2x) | " + " | ".join(
        f"{f} (0.5x / 1x / 2x)" for f in figures) + " |"
    lines = [head, "|" + "---|" * (2 + len(figures))]
    for field, sourced in CONSTANTS:
        group = [r for r in rows if r["constant"] == field]
        label = field if sourced else f"{field} (ASSUMPTION)"
        values = " / ".join(str(r["value"]) for r in group)
        cells = []
        for f in figures:
            base = next(r[f] for r in group if r["factor"] == 1.0)
            cells.append(" / ".join(f"{r[f]:,}" if r["factor"] == 1.0 else
                                    f"{r[f]:,} ({100 * (r[f] - base) / base:+.1f}%)"
                                    for r in group))
        lines.append(f"| {label} | {values} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = command_line("sensitivity", __doc__,
                          "also emulate the LLaMA-3-8B decode layer on 420 x 420 per case")
    parser.add_argument("--markdown", action="store_true", help="print a markdown table")
    args = parser.parse_args(argv)
    rows = run(full=args.full)
    for r in rows:
        print(r)
    if args.markdown:
        print(markdown(rows))


if __name__ == "__main__":
    main()
