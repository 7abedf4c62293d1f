"""Wafer against GPU, and whole models from emulated layers.

    table = kernels.comparison.compare(wafer_report, gpu_report, tokens=1)
    ext = kernels.comparison.extrapolate(report, model, layers_emulated, cfg,
                                         bytes_per_layer_per_pe)

`compare` puts a wafer run (wse.RunReport) and a GPU cluster's figures for
the same work (wse.gpu.GpuReport) side by side. `extrapolate` turns one (or
a few) emulated layers into a whole model: the per-layer cycles times the
layer count; layers whose weights and cache do not fit one region are placed
on consecutive regions as pipeline stages (a decode token or a prefill
micro-batch passes every stage in turn; the hand-over between stages is one
d_model vector (decode) or activation tile set (prefill) crossing a region
boundary, charged by `stage_handover_cycles`). kernels.transformer
re-exports all of these.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

import wse
from wse.errors import ConfigError, SramOverflowError
from wse.gpu import GpuReport

from . import collectives
from .models import ModelConfig


# ----------------------------------------------------------------------------
# Comparison
@dataclass
class Comparison:
    """Side by side: wafer and GPU figures for the same work."""

    rows: list = field(default_factory=list)     # (metric, wafer, gpu, unit)
    tokens: int = 1

    def to_dict(self) -> dict:
        return {m: {"wafer": w, "gpu": g, "unit": u} for m, w, g, u in self.rows}

    def __str__(self) -> str:
        def fmt(v):
            if isinstance(v, str):
                return v
            if v is None:
                return "-"
            return f"{v:.4g}"
        width = max(len(m) for m, *_ in self.rows)
        lines = [f"{'metric'.ljust(width)}  {'wafer':>12}  {'gpu':>12}  unit"]
        for m, w, g, u in self.rows:
            lines.append(f"{m.ljust(width)}  {fmt(w):>12}  {fmt(g):>12}  {u}")
        return "\n".join(lines)


def compare(wafer_report: wse.RunReport, gpu_report: GpuReport, tokens: int = 1) -> Comparison:
    """Latency, tokens/s, compute and communication time, bytes moved and energy.

    tokens: tokens the reports' work produces (1 for a decode step, seq for a
    prefill). Wafer compute time is the mean over PEs of the cycles they spent
    in vector work; communication time is the rest of the run (the wafer
    overlaps the two, so they need not add up to the latency). Wafer bytes:
    wavelet-hops x 4 B (every link crossing of a 32-bit wavelet) and the
    busiest link's wavelets x 4 B; GPU bytes: bytes sent over NVLink and the
    network, counted from the collectives' transfers."""
    if not isinstance(wafer_report, wse.RunReport):
        raise ConfigError(f"wafer_report must be a wse.RunReport, got "
                          f"{type(wafer_report).__name__}")
    if not isinstance(gpu_report, GpuReport):
        raise ConfigError(f"gpu_report must be a wse.gpu.GpuReport, got "
                          f"{type(gpu_report).__name__}")
    w, g = wafer_report, gpu_report
    compute_w = float(w.compute_cycles.mean()) / w.clock_hz
    rows = [
        ("machine", f"{w.rows}x{w.cols} PEs", f"{g.n_gpus}x {g.device}", ""),
        ("latency", w.seconds, g.seconds, "s"),
        ("tokens per second", tokens / w.seconds if w.seconds else None,
         tokens / g.seconds if g.seconds else None, "tok/s"),
        ("compute time", compute_w, g.compute_seconds, "s"),
        ("communication time", max(w.seconds - compute_w, 0.0), g.comm_seconds, "s"),
        ("bytes moved", 4.0 * w.wavelet_hops, float(g.bytes_sent_total), "B"),
        ("busiest link / per-GPU max", 4.0 * w.busiest_link_wavelets,
         float(np.max(g.bytes_sent_per_gpu)) if len(g.bytes_sent_per_gpu) else 0.0, "B"),
        ("FLOPs", float(w.flops), float(g.flops), "FLOP"),
        ("energy", w.energy_joules, g.energy_joules, "J"),
    ]
    return Comparison(rows, tokens)


# ----------------------------------------------------------------------------
# Whole models: extrapolation from emulated layers
@dataclass
class Extrapolation:
    layers_emulated: int
    cycles_per_layer: float
    n_layers: int
    layers_per_region: int
    regions: int
    handover_cycles: int
    clock_hz: float
    tokens: int = 1

    @property
    def cycles(self) -> float:
        return self.cycles_per_layer * self.n_layers + self.handover_cycles * (self.regions - 1)

    @property
    def seconds(self) -> float:
        return self.cycles / self.clock_hz

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds

    def to_dict(self) -> dict:
        return {"layers_emulated": self.layers_emulated,
                "cycles_per_layer": self.cycles_per_layer, "n_layers": self.n_layers,
                "layers_per_region": self.layers_per_region, "regions": self.regions,
                "handover_cycles": self.handover_cycles, "cycles": self.cycles,
                "seconds": self.seconds, "tokens_per_second": self.tokens_per_second}


def stage_handover_cycles(cfg: wse.WaferConfig, wavelets_per_pe: int, distance: int) -> int:
    """A region passes its output to the next region: every PE of its boundary
    streams wavelets_per_pe values `distance` hops, a send and a receive each
    issued at 0 (collectives.stream_cycles)."""
    return collectives.stream_cycles(distance, wavelets_per_pe, cfg)


def extrapolate(report: wse.RunReport, model: ModelConfig, layers_emulated: int,
                cfg: wse.WaferConfig, bytes_per_layer_per_pe: int, tokens: int = 1,
                handover_wavelets: int = 1) -> Extrapolation:
    """Whole-model time from `layers_emulated` emulated layers: cycles per layer
    times n_layers, plus a hand-over between consecutive pipeline regions.
    bytes_per_layer_per_pe: SRAM one layer needs per PE (weights + cache);
    layers_per_region = floor(sram / that)."""
    if layers_emulated < 1:
        raise ConfigError("layers_emulated must be >= 1")
    per_region = max(int(cfg.sram_bytes // max(bytes_per_layer_per_pe, 1)), 0)
    if per_region < 1:
        raise SramOverflowError(f"one layer of {model.name} needs {bytes_per_layer_per_pe} bytes "
                                f"per PE on a {cfg.rows} x {cfg.cols} region; a PE has "
                                f"{cfg.sram_bytes}")
    regions = -(-model.n_layers // per_region)
    hand = stage_handover_cycles(cfg, handover_wavelets, max(cfg.rows, cfg.cols))
    return Extrapolation(layers_emulated, report.cycles / layers_emulated, model.n_layers,
                         per_region, regions, hand, cfg.clock_hz, tokens)
