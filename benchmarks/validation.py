"""Validation: published measurements of real hardware beside the emulator.

Every row of `MEASUREMENTS` is one published figure (a measurement of a
Cerebras CS-2 or of NVIDIA GPUs, or a published model its authors validated
on the hardware) with its source, and the name of the function that computes
the emulator's figure for the same configuration. Nothing here is fitted:
the emulator's constants come from the micro-level sources tabulated by
`constant_rows()` (wafer: `wse.WaferConfig` field documentation; GPU:
`wse.gpu` device and cluster fields), and a row whose figure one of those
constants was set from is marked not independent. A miss is printed as a
miss, with its likely cause in the row's note.

    python -m benchmarks.validation                # rich table in the terminal
    python -m benchmarks.validation --markdown     # docs/validation.md's tables
    python -m benchmarks.validation --quick        # the small subset the tests run
    python -m benchmarks.validation --write docs/validation.md
                                                   # refresh the generated part of the page
    python -m benchmarks.validation --full         # also re-runs the decode layer
                                                   # (python -m benchmarks.transformer
                                                   #  --full --part decode) first

Where the emulator's figure comes from is printed in each row: an engine run
(`engine`), a cost model that tests prove equal to the engine (`model`), the
GPU cost model (`wse.gpu`), or a JSON file a long benchmark wrote (`file`).
"""
from __future__ import annotations

import argparse
import json
import pathlib
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field

import wse
from wse import gpu

DECODE_JSON = pathlib.Path("bench-out/transformer_decode.json")
"""Written by `python -m benchmarks.transformer --full --part decode`."""

# Sources, cited once each and referred to by key below. Each text starts
# with the name it is cited by elsewhere (CITED_AS), so that a constant set
# from the same source can be found.
SOURCES = {
    "HPDC24": "Luczynski et al., \"Near-Optimal Wafer-Scale Reduce\", HPDC 2024 "
              "(arXiv:2404.15888): performance model of flood broadcast, chain and star "
              "reduce on a WSE-2 row; the abstract: the model predicts CS-2 runs \"with "
              "less than 4% error\"",
    "JIP26": "Miyajima, Matsuzaki, Mukunoki, \"Single-precision Matrix Multiplication "
             "Performance on Cerebras CS-2\", J. Information Processing 34:132-139 (2026), "
             "abstract (https://doi.org/10.2197/ipsjjip.34.132; SC24 workshop version): "
             "349.0 TFlop/s, 33,000 x 33,000, 750 x 750 PEs",
    "WAFERLLM": "He et al., \"WaferLLM\", arXiv:2502.04563v2 abstract (OSDI 2025): "
                "\"2700 toks/sec/req decode speed on Llama3-8B\", 16-bit, Cerebras WSE-2",
    "NCCLT212": "NVIDIA/nccl-tests#212 (S. Jeaugey, NVIDIA, 2024): 8 x H100, ring busbw "
                "370 GB/s (NCCL_ALGO=RING); NVLS \"peak busBw of ~480GB/s\" on 8 GPUs",
    "NCCL1455": "NVIDIA/nccl#1455 (2024): 8 x H100 SXM, all_reduce_perf 2-4 GiB; ring "
                "365-370 GB/s for 2-8 GPUs; NVLS 370 for 2-4 GPUs, 420/440/460/480 for 5-8",
    "NCCL1374": "NVIDIA/nccl#1374 (2024): 8 x H800 (NVLink 200 GB/s per direction), "
                "NVLS all-reduce busbw 215 GB/s",
    "NCCLT272": "NVIDIA/nccl-tests#272 (2024): 8 x H200, all_reduce_perf 64 KiB-4 GiB, "
                "peak busbw 475 GB/s",
    "NCCLT149": "NVIDIA/nccl-tests#149 (2023): 8 x A100-SXM4-80GB (HPE Apollo 6500), "
                "all_reduce_perf up to 1 GiB, busbw ~200 GB/s",
    "NCCL583": "NVIDIA/nccl#583 (2021): 2 x A100-SXM4-40GB, all_reduce_perf, 32 B in 10.14 us",
    "TORCHPERF79": "zzc0721/torch-performance-test-data#79 (2025): NVIDIA H100 80GB HBM3, "
                   "PyTorch 2.7 + cu128, square BF16 matmul: 1024 176.62, 2048 676.59, "
                   "4096 788.72, 8192 797.51 TFLOPS",
    "SGLANGGIST": "gist jerryzh168/caa3f3a87f403091b238f85f7b22c20e (2024): "
                  "sglang.bench_latency, Meta-Llama-3-8B bf16, batch 1, input 128, output 8, "
                  "no TP, CUDA graphs: decode median 9.00-9.10 ms (109.85-111 token/s); an "
                  "80 GB GPU whose model the readable text does not name",
}

CITED_AS = {
    "HPDC24": "HPDC 2024", "JIP26": "Miyajima", "WAFERLLM": "WaferLLM",
    "NCCLT212": "nccl-tests#212", "NCCL1455": "nccl#1455", "NCCL1374": "nccl#1374",
    "NCCLT272": "nccl-tests#272", "NCCLT149": "nccl-tests#149", "NCCL583": "nccl#583",
    "TORCHPERF79": "torch-performance-test-data#79", "SGLANGGIST": "jerryzh168",
}
"""The name each source goes by in the code's constant documentation."""

SHARED_MACHINE = ("figures computed on a 2-core machine shared with other agents; "
                  "wall times are inflated, cycle counts are not")


@dataclass(frozen=True)
class Measurement:
    """One published figure of real hardware and how the emulator computes it."""
    key: str
    side: str                 # "wafer" or "GPU"
    quantity: str             # what was measured
    configuration: str        # the configuration measured (and emulated)
    unit: str
    published: float
    source: str               # key of SOURCES
    emulate: str              # name of a function in EMULATORS
    args: tuple = ()
    kind: str = "measured"    # or a published model validated on the hardware
    independent: bool = True  # False: an emulator constant was set from this figure
    counted: bool = True      # False: configuration or text not established
    quick: bool = False       # part of the fast subset (tests, --quick)
    note: str = ""            # likely cause of a miss; why not counted or independent


@dataclass
class Row:
    """A Measurement with the emulator's figure and the error."""
    m: Measurement
    emulated: float | None
    provenance: str
    error: float | None = field(default=None)   # (emulated - published) / published

    def __post_init__(self) -> None:
        if self.emulated is not None:
            self.error = (self.emulated - self.m.published) / self.m.published


# ----------------------------------------------------------------------------
# The emulator's figures. Each returns (figure, provenance).
def _hpdc_collective(name: str, P: int, B: int) -> tuple[float, str]:
    from benchmarks.collectives import published_point
    row = published_point(name, P, B)
    return float(row["cycles"]), f"engine: 1 x {P} row (benchmarks.collectives.published_point)"


def _hpdc_model(name: str, P: int, B: int) -> float:
    from benchmarks.collectives import PUBLISHED
    return float(PUBLISHED[name](P, B))


def _wafer_gemm_tflops(algorithm: str, n: int, side: int, dtype: str) -> tuple[float, str]:
    from kernels import matmul
    cfg = wse.WSE2.with_grid(side, side)
    plan = matmul.plan(n, n, n, cfg, algorithm=algorithm, dtype=dtype,
                       accumulate="float32")
    matmul.check_fits(plan, cfg)
    cycles = matmul.model_cycles(plan, cfg)
    seconds = cycles / cfg.clock_hz
    exact = ("equal to" if algorithm == "summa"
             else f"within {100 * matmul.FABRIC_SKEW_MODEL_BOUND:g}% of")
    return (2.0 * n ** 3 / seconds / 1e12,
            f"model: kernels.matmul.model_cycles = {cycles:,} cycles at "
            f"{cfg.clock_hz / 1e9:g} GHz ({exact} the engine: "
            f"tests/kernels/test_matmul.py::test_cycles_equal_the_model_and_hops_exact)")


def _wafer_decode_tokens_per_s(model_case: str, grid: int) -> tuple[float | None, str]:
    """Whole-model tokens/s of the decode row for model_case on a grid x grid
    region in DECODE_JSON (the file may hold several models and grids)."""
    machine = f"wafer {grid}x{grid}"
    if not DECODE_JSON.exists():
        return None, (f"file: {DECODE_JSON} missing; run python -m benchmarks.transformer "
                      "--full --part decode (or this script with --full)")
    rows = json.loads(DECODE_JSON.read_text())
    for r in rows:
        if r.get("mode") == "decode" and r.get("machine") == machine \
                and str(r.get("case", "")).startswith(model_case):
            ext = r.get("extrapolation") or {}
            tps = ext.get("tokens_per_second")
            if tps is None:
                break
            stamp = time.strftime("%Y-%m-%d %H:%M UTC",
                                  time.gmtime(DECODE_JSON.stat().st_mtime))
            return float(tps), (
                f"file: {DECODE_JSON} ({stamp}): {r['machine']}, context "
                f"{r.get('context')}, {r.get('cycles'):,} cycles per layer emulated in full, "
                f"x {ext.get('n_layers')} layers + {ext.get('regions', 1) - 1} hand-overs "
                "(no embedding, no LM head)")
    return None, f"file: {DECODE_JSON} has no {machine} decode row for {model_case}"


def _cluster(device: str, n_gpus: int) -> gpu.Cluster:
    if device == "H800":
        from benchmarks.gpu_calibration import H800
        return gpu.Cluster(H800, n_gpus=n_gpus)
    return gpu.Cluster(gpu.device(device), n_gpus=n_gpus)


def _allreduce(device: str, n_gpus: int, nbytes: int, metric: str,
               algorithm: str | None = None, n_ranks: int | None = None) -> tuple[float, str]:
    plan = _cluster(device, n_gpus).collective_plan("allreduce", nbytes, n_ranks=n_ranks,
                                                    algorithm=algorithm)
    value = plan.busbw / 1e9 if metric == "busbw" else plan.seconds * 1e6
    chosen = "forced" if algorithm else "tuner's choice"
    return value, f"wse.gpu: Cluster.collective_plan ({plan.algorithm}/{plan.protocol}, {chosen})"


def _gpu_gemm_tflops(device: str, n: int) -> tuple[float, str]:
    dev = gpu.device(device)
    flops = 2.0 * n ** 3
    seconds = dev.compute_seconds(flops, 2.0 * 3 * n * n, launch=False,
                                  efficiency=dev.gemm_efficiency(n, n, n))
    return (flops / seconds / 1e12,
            f"wse.gpu: GpuDevice.compute_seconds with gemm_efficiency(n, n) = "
            f"{dev.gemm_efficiency(n, n, n):.3f} (launch hidden by the benchmark's queue)")


def _gpu_decode_tokens_per_s(device: str, n_gpus: int, context: int) -> tuple[float, str]:
    from benchmarks.gpu_calibration import llama_layer_rows
    row = llama_layer_rows(context=context, machines=((f"{n_gpus}x{device}",
                                                       gpu.device(device), n_gpus),),
                           prefill=False)[0]
    return row["tokens_per_s"], (f"wse.gpu: kernels.sharded.decode_step, tp {n_gpus}, "
                                 f"context {context}, one CUDA graph + LM head + sampling")


EMULATORS = {
    "hpdc_collective": _hpdc_collective,
    "wafer_gemm_tflops": _wafer_gemm_tflops,
    "wafer_decode_tokens_per_s": _wafer_decode_tokens_per_s,
    "allreduce": _allreduce,
    "gpu_gemm_tflops": _gpu_gemm_tflops,
    "gpu_decode_tokens_per_s": _gpu_decode_tokens_per_s,
}


# ----------------------------------------------------------------------------
# The published figures.
_HPDC_NOTE = ("not independent: the ramp latency T_R = 2 and the datapath cycle delta = 1 "
              "were set from this model's hop costs, so agreement checks the engine's rules "
              "against the model the constants came from; the extra cycles are the "
              "sender's vector start-up sigma = 2 (ASSUMPTION) the model does not have")


def _hpdc_rows() -> list[Measurement]:
    rows = []
    for name, label in (("flood broadcast", "broadcast"), ("chain reduce", "chain"),
                        ("star reduce", "star")):
        for P, B, quick in ((32, 64, True), (512, 1, False), (512, 1024, False)):
            rows.append(Measurement(
                key=f"hpdc-{label}-{P}x{B}", side="wafer",
                quantity=f"{name} cycles", configuration=f"WSE-2 row of P = {P} PEs, "
                f"B = {B} wavelets, root at an end", unit="cycles",
                published=_hpdc_model(name, P, B), source="HPDC24",
                emulate="hpdc_collective", args=(name, P, B),
                kind="published model validated on CS-2 (<4%)", independent=False,
                quick=quick, note=_HPDC_NOTE))
    return rows


_GEMM_NOTE = ("miss: the emulator predicts about 3x the measured rate. Likely causes, "
              "largest first: the fp32 FMAC rate (1 per cycle per PE, from WaferLLM "
              "section 7; the measured 349 TFlop/s is 28% of 562,500 PEs x 2 flops x "
              "1.1 GHz), the clock (some SDK examples use 850 MHz: -23%), and the "
              "instruction costs of the authors' kernel (their algorithm is not named in "
              "the readable abstract). Nothing was changed to close it")

MEASUREMENTS: list[Measurement] = _hpdc_rows() + [
    Measurement(
        key="cs2-sgemm-33000-summa", side="wafer", quantity="fp32 GEMM throughput",
        configuration="33,000^3 fp32 on 750 x 750 PEs (44 x 44 tiles); emulated as SUMMA",
        unit="TFLOP/s", published=349.0, source="JIP26",
        emulate="wafer_gemm_tflops", args=("summa", 33000, 750, "float32"), note=_GEMM_NOTE),
    Measurement(
        key="cs2-sgemm-33000-meshgemm", side="wafer", quantity="fp32 GEMM throughput",
        configuration="33,000^3 fp32 on 750 x 750 PEs; emulated as MeshGEMM",
        unit="TFLOP/s", published=349.0, source="JIP26",
        emulate="wafer_gemm_tflops", args=("meshgemm", 33000, 750, "float32"),
        counted=False,
        note="the same measurement as the SUMMA row (counted once); " + _GEMM_NOTE),
    Measurement(
        key="waferllm-llama3-8b-decode", side="wafer", quantity="decode tokens/s, one request",
        configuration="LLaMA-3-8B, 16-bit, whole model on one WSE-2; emulated: one layer on "
                      "a 420 x 420 region, 4,096-token context, x 32 layers",
        unit="tokens/s", published=2700.0, source="WAFERLLM",
        emulate="wafer_decode_tokens_per_s", args=("llama3-8b", 420), counted=False,
        note="not counted: the grid, context length and batch behind the 2,700 are not "
             "in the readable text. Above it, so the emulated wafer may be optimistic; "
             "its idealisations: no embedding, LM head or sampling on the wafer (the LM "
             "head alone holds about 2.4 layers' weights), the hand-over between the "
             "layers' regions charged by formula (kernels.comparison."
             "stage_handover_cycles), not emulated, no host input/output per token, and "
             "per-instruction costs (issue, vector start-up, task start) that are "
             "assumptions. Nothing was tuned to close it. From WaferLLM too: "
             "clock_hz = 1.1 GHz (its cycle-to-second conversion) and "
             "fmacs_per_cycle_fp32, per-PE constants, not this figure"),
    Measurement(
        key="nccl-8xh100-nvls-8g", side="GPU", quantity="all-reduce bus bandwidth",
        configuration="8 x H100 SXM, NVLS, large message (8 GiB)", unit="GB/s",
        published=480.0, source="NCCLT212", emulate="allreduce",
        args=("H100", 8, 8 << 30, "busbw"), quick=True,
        note="the NVLS efficiency 0.85 is NCCL's tuner figure, not this measurement; "
             "nvlink_efficiency = 0.80 comes from the same thread's ring statement"),
    Measurement(
        key="nccl-8xh100-ring-8g", side="GPU", quantity="all-reduce bus bandwidth",
        configuration="8 x H100 SXM, NCCL_ALGO=RING, 8 GiB", unit="GB/s",
        published=370.0, source="NCCLT212", emulate="allreduce",
        args=("H100", 8, 8 << 30, "busbw", "ring"), independent=False,
        note="not independent: nvlink_efficiency = 0.80 was set from this statement's "
             "\"protocol overhead (~20%)\""),
    *[Measurement(
        key=f"nccl-h100-nvls-{n}gpu", side="GPU", quantity="all-reduce bus bandwidth",
        configuration=f"{n} of 8 H100 SXM, NCCL_ALGO=NVLS, 4 GiB", unit="GB/s",
        published=value, source="NCCL1455", emulate="allreduce",
        args=("H100", 8, 4 << 30, "busbw", "nvls", n),
        note="miss: with 2-3 GPUs NVLS measured as fast as the ring (370); the model charges "
             "NVLS its (1 + 1/n) S per-GPU traffic at every n (1.5 S at n = 2), so it falls "
             "far below; NCCL's NVLS at small n evidently does not move that traffic (the "
             "model's tuner would pick the ring there, 359 GB/s)" if n <= 3 else "")
      for n, value in ((2, 370.0), (3, 370.0), (4, 370.0), (5, 420.0), (6, 440.0),
                       (7, 460.0), (8, 480.0))],
    Measurement(
        key="nccl-8xh800-nvls-8g", side="GPU", quantity="all-reduce bus bandwidth",
        configuration="8 x H800 (NVLink 200 GB/s per direction), NVLS", unit="GB/s",
        published=215.0, source="NCCL1374", emulate="allreduce",
        args=("H800", 8, 8 << 30, "busbw"),
        note="message size not in the readable text; emulated at 8 GiB (the peak)"),
    Measurement(
        key="nccl-8xh200-4g", side="GPU", quantity="all-reduce bus bandwidth",
        configuration="8 x H200, default algorithm, 4 GiB", unit="GB/s",
        published=475.0, source="NCCLT272", emulate="allreduce",
        args=("H200", 8, 4 << 30, "busbw")),
    Measurement(
        key="nccl-8xa100-1g", side="GPU", quantity="all-reduce bus bandwidth",
        configuration="8 x A100-SXM4-80GB, 1 GiB", unit="GB/s",
        published=200.0, source="NCCLT149", emulate="allreduce",
        args=("A100", 8, 1 << 30, "busbw"),
        note="over: one system (HPE Apollo 6500, NCCL 2.17-2.18); the model's ring runs at "
             "the 0.80 NVLink efficiency taken from H100, which this A100 system does not "
             "reach"),
    Measurement(
        key="nccl-2xa100-32b", side="GPU", quantity="all-reduce latency",
        configuration="2 x A100-SXM4-40GB, 32 B, no CUDA graphs", unit="us",
        published=10.14, source="NCCL583", emulate="allreduce",
        args=("A100", 2, 32, "time"), quick=True,
        note="over: the model's fixed cost (4 us launch ASSUMPTION + NCCL's LL base "
             "latency) is slightly high for two GPUs"),
    *[Measurement(
        key=f"h100-bf16-gemm-{n}", side="GPU", quantity="BF16 GEMM throughput",
        configuration=f"H100 80GB HBM3, square {n} x {n} x {n}, torch.matmul", unit="TFLOP/s",
        published=value, source="TORCHPERF79", emulate="gpu_gemm_tflops", args=("H100", n),
        quick=(n == 1024),
        note=note)
      for n, value, note in (
          (1024, 176.62, "32 output tiles on 132 SMs: wave quantization predicts the drop"),
          (2048, 676.59, ""),
          (4096, 788.72, "under: matmul_efficiency 0.70 (ASSUMPTION) is below the 0.80 this "
                         "H100 reaches on large GEMMs"),
          (8192, 797.51, "under: matmul_efficiency 0.70 (ASSUMPTION) is below the 0.81 "
                         "measured here"))],
    *[Measurement(
        key=f"sglang-llama3-8b-decode-{device.lower()}", side="GPU",
        quantity="decode tokens/s, batch 1",
        configuration=f"LLaMA-3-8B bf16, 1 GPU, ~132-token context, CUDA graphs; "
                      f"emulated as 1 x {device}", unit="tokens/s",
        published=110.93, source="SGLANGGIST", emulate="gpu_decode_tokens_per_s",
        args=(device, 1, 132), counted=False,
        note="not counted: the GPU's model is not in the readable text (an 80 GB card); "
             "the row is shown for both candidates rather than picking the one that agrees")
      for device in ("H100", "A100")],
]


# ----------------------------------------------------------------------------
def evaluate(rows: list[Measurement] | None = None, quick: bool = False) -> list[Row]:
    """The emulator's figure and the error for each measurement (the quick subset
    when quick)."""
    chosen = [m for m in (MEASUREMENTS if rows is None else rows) if m.quick or not quick]
    out = []
    for m in chosen:
        value, provenance = EMULATORS[m.emulate](*m.args)
        out.append(Row(m, value, provenance))
    return out


def summary(rows: list[Row]) -> dict:
    """Counts per side: every row, counted (source readable, configuration
    established), counted and independent, and how many of those are within
    10% and 25%, and the worst of them."""
    out = {}
    for side in ("wafer", "GPU"):
        mine = [r for r in rows if r.m.side == side]
        counted = [r for r in mine if r.m.counted and r.error is not None]
        independent = [r for r in counted if r.m.independent]
        worst = max(independent, key=lambda r: abs(r.error)) if independent else None
        out[side] = {"rows": len(mine), "counted": len(counted),
                     "independent": len(independent),
                     "within_10pct": sum(abs(r.error) <= 0.10 for r in independent),
                     "within_25pct": sum(abs(r.error) <= 0.25 for r in independent),
                     "worst": f"{worst.m.key} {_error(worst)}" if worst else None}
    return out


def summary_markdown(rows: list[Row]) -> str:
    lines = ["| side | rows | counted | counted and independent | within 10% | within 25% | "
             "worst |", "|---|---:|---:|---:|---:|---:|---|"]
    for side, s in summary(rows).items():
        lines.append(f"| {side} | {s['rows']} | {s['counted']} | {s['independent']} | "
                     f"{s['within_10pct']} | {s['within_25pct']} | {s['worst']} |")
    return "\n".join(lines)


def run(quick: bool = True) -> list[dict]:
    """Flat rows for the `validation` topic of `wse bench` (the quick subset when quick)."""
    return [{"key": r.m.key, "side": r.m.side, "quantity": r.m.quantity,
             "configuration": r.m.configuration, "unit": r.m.unit,
             "published": r.m.published, "emulated": r.emulated,
             "error_pct": None if r.error is None else 100 * r.error,
             "status": _status(r), "source": r.m.source, "provenance": r.provenance}
            for r in evaluate(quick=quick)]


def _docstring_tags(module) -> dict[str, str]:
    """The "[TAG] text" source entries of a module docstring (wse.gpu's
    modules cite their sources that way), continuation lines joined."""
    tags: dict[str, str] = {}
    current = None
    for line in (module.__doc__ or "").splitlines():
        match = re.match(r"\s*\[([A-Z][A-Z0-9-]*)\]\s+(.*)", line)
        if match:
            current = match.group(1)
            tags[current] = match.group(2)
        elif current and line.startswith("    ") and line.strip():
            tags[current] += " " + line.strip()
        else:
            current = None
    return tags


def _with_tag_texts(doc: str, tags: dict[str, str], device_name: str = "") -> str:
    """doc, followed by the full text of each [TAG] it cites ([DS] is the
    device's own datasheet entry, e.g. [DS-H100])."""
    cited = []
    for tag in re.findall(r"\[([A-Z][A-Z0-9-]*)\]", doc):
        key = f"{tag}-{device_name}" if f"{tag}-{device_name}" in tags else tag
        if key in tags and key not in cited:
            cited.append(key)
    return doc + "".join(f" [{key}] {tags[key]}" for key in cited)


def constant_rows() -> list[dict]:
    """Every constant of the emulator that sets a timing, with its value and
    the source it was set from (or ASSUMPTION), read from the code's own
    field documentation so that this table cannot drift from it."""
    rows = []
    timing_fields = ("sram_bytes", "clock_hz", "fmacs_per_cycle_fp32", "fmacs_per_cycle_fp16",
                     "ramp_latency", "hop_latency", "link_bits", "num_colors", "queue_depth",
                     "input_queue_depth", "async_slots", "scalar_op_cycles",
                     "vector_startup_cycles", "datapath_latency", "task_start_cycles")
    docs = {name: (value, doc) for name, value, doc in wse.WSE2.fields_with_docs()}
    for name in timing_fields:
        value, doc = docs[name]
        rows.append({"side": "wafer (WSE-2)", "constant": name, "value": value,
                     "source": doc})
    # GpuDevice and Cluster fields carry the same kind of documentation;
    # WaferConfig.fields_with_docs reads any dataclass's field docstrings.
    from wse.gpu import cluster as cluster_module, devices as devices_module
    read_docs = wse.WaferConfig.fields_with_docs
    device_tags = _docstring_tags(devices_module)
    cluster_tags = _docstring_tags(cluster_module)
    h100 = {name: (value, _with_tag_texts(doc, device_tags, "H100"))
            for name, value, doc in read_docs(gpu.H100)}
    for name in ("bf16_flops", "hbm_bytes_per_s", "nvlink_bytes_per_s", "matmul_efficiency",
                 "hbm_efficiency", "kernel_launch_s", "graph_launch_s", "n_sms",
                 "nvls_efficiency"):
        value, doc = h100[name]
        rows.append({"side": "GPU (H100)", "constant": name, "value": value, "source": doc})
    cluster = {name: (value, _with_tag_texts(doc, cluster_tags)) for name, value, doc
               in read_docs(gpu.Cluster(gpu.H100, n_gpus=8))}
    for name in ("nvlink_efficiency", "inter_node_efficiency"):
        if name in cluster:
            value, doc = cluster[name]
            rows.append({"side": "GPU (cluster)", "constant": name, "value": value,
                         "source": doc})
    rows.append({"side": "GPU (cluster)", "constant": "base and per-step latencies",
                 "value": "tables", "source": "[NCCL-T] " + cluster_tags["NCCL-T"]})
    for r in rows:
        r["basis"] = _basis(r["source"])
    return rows


UNPUBLISHED = re.compile(r"ASSUMPTION|not published|\bno\b[^.]*\bis published")


def _basis(source: str) -> str:
    """"cited" where the documentation cites a source, "assumption" where it
    says the value is assumed or not published, "cited + assumption" where it
    does both (a cited bound or a cited part, the rest assumed: read the
    text), "" where it does neither (a defect the tests catch)."""
    cited = bool(re.search(r"\[[^\]]+\]", source))
    assumed = bool(UNPUBLISHED.search(source))
    return {(True, False): "cited", (False, True): "assumption",
            (True, True): "cited + assumption", (False, False): ""}[(cited, assumed)]


# ----------------------------------------------------------------------------
def _fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit == "cycles":
        return f"{value:,.0f}"
    return f"{value:,.1f}" if value >= 100 else f"{value:.3g}"


def _error(r: Row) -> str:
    return "-" if r.error is None else f"{100 * r.error:+.1f}%"


def _status(r: Row) -> str:
    status = ("not counted" if not r.m.counted
              else "counted" if r.m.independent else "counted, not independent")
    return status if r.m.kind == "measured" else f"{status}; {r.m.kind}"


def _source_text(key: str) -> str:
    return SOURCES.get(key, key)


def markdown(rows: list[Row]) -> str:
    lines = ["| side | quantity | configuration | published | emulated | error | "
             "status | source | emulator figure from |",
             "|---|---|---|---:|---:|---:|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r.m.side} | {r.m.quantity} ({r.m.unit}) | {r.m.configuration} | "
            f"{_fmt(r.m.published, r.m.unit)} | {_fmt(r.emulated, r.m.unit)} | {_error(r)} | "
            f"{_status(r)} | {r.m.source} | {r.provenance} |")
    return "\n".join(lines)


def notes_markdown(rows: list[Row]) -> str:
    """One bullet per distinct note, naming the rows (and errors) it explains."""
    by_note: dict[str, list[Row]] = {}
    for r in rows:
        if r.m.note:
            by_note.setdefault(r.m.note, []).append(r)
    return "\n".join(
        "- " + ", ".join(f"**{r.m.key}** ({_error(r)})" for r in group) + f": {note}."
        for note, group in by_note.items())


def sources_markdown() -> str:
    return "\n".join(f"- **{key}**: {text}." for key, text in SOURCES.items())


def constants_markdown(rows: list[dict]) -> str:
    lines = ["| side | constant | value | basis | set from |", "|---|---|---|---|---|"]
    for r in rows:
        value = f"{r['value']:g}" if isinstance(r["value"], float) else r["value"]
        lines.append(f"| {r['side']} | `{r['constant']}` | {value} | {r['basis']} | "
                     f"{r['source'].replace('|', '/')} |")
    return "\n".join(lines)


def _print_rich(rows: list[Row]) -> None:
    from rich.console import Console
    from rich.table import Table
    table = Table(title="Published hardware figures beside the emulator", show_lines=False)
    for name in ("key", "published", "emulated", "error", "status", "source", "from"):
        table.add_column(name, overflow="fold")
    for r in rows:
        style = None if r.error is None or abs(r.error) <= 0.25 else "red"
        table.add_row(r.m.key, f"{_fmt(r.m.published, r.m.unit)} {r.m.unit}",
                      _fmt(r.emulated, r.m.unit), _error(r), _status(r), r.m.source,
                      r.provenance.split(":")[0], style=style)
    console = Console()
    console.print(table)
    for side, counts in summary(rows).items():
        console.print(f"{side}: {counts}")


BEGIN_MARK = "<!-- generated by python -m benchmarks.validation --write: begin -->"
END_MARK = "<!-- generated by python -m benchmarks.validation --write: end -->"


def generated_markdown(rows: list[Row], wall: float) -> str:
    """Everything the page shows from this module: the per-side summary, the
    table, the notes on misses and dependences, the sources and the
    constants with theirs."""
    return "\n\n".join([
        "### Summary\n\n" + summary_markdown(rows),
        "### Every row\n\n" + markdown(rows),
        "### Notes on the rows\n\n" + notes_markdown(rows),
        "### Sources\n\n" + sources_markdown(),
        "### Constants and where they come from\n\n" + constants_markdown(constant_rows()),
        f"Generated in {wall:.0f} s ({SHARED_MACHINE}).",
    ])


def write_into(path: pathlib.Path, text: str) -> None:
    """Replace what lies between BEGIN_MARK and END_MARK in the file at path."""
    page = path.read_text()
    if BEGIN_MARK not in page or END_MARK not in page:
        raise SystemExit(f"{path}: the markers {BEGIN_MARK!r} and {END_MARK!r} are missing")
    head, rest = page.split(BEGIN_MARK, 1)
    _, tail = rest.split(END_MARK, 1)
    path.write_text(f"{head}{BEGIN_MARK}\n\n{text}\n\n{END_MARK}{tail}")


def _run_decode_benchmark() -> None:
    subprocess.run([sys.executable, "-m", "benchmarks.transformer", "--full", "--part",
                    "decode"], check=True, stdout=subprocess.DEVNULL)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.validation",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--markdown", action="store_true", help="print markdown tables")
    parser.add_argument("--quick", action="store_true", help="only the fast subset")
    parser.add_argument("--write", metavar="PAGE", type=pathlib.Path,
                        help="replace the generated part of PAGE (docs/validation.md)")
    parser.add_argument("--full", action="store_true",
                        help="first re-run the decode layer benchmark (minutes, ~5 GiB)")
    args = parser.parse_args(argv)
    if args.full:
        _run_decode_benchmark()
    started = time.perf_counter()
    rows = evaluate(quick=args.quick)
    wall = time.perf_counter() - started
    if args.write:
        write_into(args.write, generated_markdown(rows, wall))
    if args.markdown:
        print(generated_markdown(rows, wall))
    elif not args.write:
        _print_rich(rows)


if __name__ == "__main__":
    main()
