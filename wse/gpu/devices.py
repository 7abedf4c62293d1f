"""The GPUs we compare against: one flat, documented record per device.

Datasheet figures are marked [DS]; figures that are our assumptions about what
software achieves on the hardware are marked ASSUMPTION, with the reasoning.

Sources
  [DS-A100] NVIDIA A100 Tensor Core GPU datasheet (SXM4 80GB): 312 TFLOP/s
            dense BF16, 80 GB HBM2e at 2,039 GB/s, NVLink 3 at 600 GB/s
            (bidirectional), 400 W.
  [DS-H100] NVIDIA H100 datasheet (SXM5): 989 TFLOP/s dense BF16 (1,979 with
            sparsity), 80 GB HBM3 at 3.35 TB/s, NVLink 4 at 900 GB/s
            (bidirectional), up to 700 W.
  [DS-H200] NVIDIA H200 datasheet (SXM): same compute as H100, 141 GB HBM3e at
            4.8 TB/s, NVLink 900 GB/s, up to 700 W.
  [DS-B200] NVIDIA HGX/DGX B200 material: ~2.25 PFLOP/s dense BF16 per GPU
            (4.5 with sparsity), 180 GB usable HBM3e (192 GB physical) at
            ~8 TB/s, NVLink 5 at 1.8 TB/s (bidirectional), 1,000 W.
  [NCCL]    NCCL's tuner (src/graph/tuning.cc, src/tuning/nvls.cc): NVLS
            (NVLink SHARP) efficiency 0.85 on Hopper, 0.74 on Blackwell, and
            none on Ampere (its NVSwitch has no in-network reduction).
  [MEAS]    Commonly reported measured HBM bandwidth (stream-like copy
            kernels): ~1.7 TB/s on A100 80GB, ~3.0 TB/s on H100 SXM,
            ~4.3 TB/s on H200 (see docs/gpu-calibration.md).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from .errors import UnknownDeviceError
from ..errors import ConfigError

GIB = 1 << 30


@dataclass(frozen=True)
class GpuDevice:
    """One GPU: its peak rates, the fraction of them software reaches, and power."""

    name: str
    bf16_flops: float
    """Dense BF16 tensor-core peak, FLOP/s [DS]."""
    hbm_bytes: int
    """HBM capacity in bytes [DS]."""
    hbm_bytes_per_s: float
    """HBM peak bandwidth, bytes/s [DS]."""
    nvlink_bytes_per_s: float
    """NVLink bandwidth per direction, bytes/s: half the bidirectional datasheet figure [DS]."""
    matmul_efficiency: float
    """Fraction of bf16_flops a large cuBLAS GEMM sustains. ASSUMPTION from
    commonly reported large-GEMM throughput (A100 ~250 of 312 TFLOP/s; H100
    ~650-750 of 989)."""
    hbm_efficiency: float
    """Fraction of hbm_bytes_per_s a streaming kernel sustains [MEAS]."""
    kernel_launch_s: float
    """Host-side cost of launching one kernel without CUDA graphs (ASSUMPTION:
    cudaLaunchKernel plus the time until the kernel starts, typically 3-5 us).
    Charged once per compute op and once per collective."""
    tdp_watts: float
    """Board power limit [DS]."""
    supports_nvls: bool
    """Whether the NVSwitch can reduce in the network (NVLink SHARP): third-
    generation NVSwitch (H100/H200) and later [NCCL]."""
    nvls_efficiency: float = 0.0
    """Fraction of the NVLink bandwidth an NVLS all-reduce reaches beyond the
    protocol overhead, NCCL's own tuner figure [NCCL]."""
    active_power_fraction: float = 0.85
    """Board power while running dense kernels, as a fraction of TDP
    (ASSUMPTION: LLM prefill/decode typically draws 75-95% of TDP)."""
    comm_power_fraction: float = 0.5
    """Board power while waiting on NVLink collectives, as a fraction of TDP
    (ASSUMPTION: SMs mostly idle, links and HBM busy)."""

    def __post_init__(self) -> None:
        for field in ("bf16_flops", "hbm_bytes_per_s", "nvlink_bytes_per_s",
                      "kernel_launch_s", "tdp_watts"):
            value = getattr(self, field)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
                raise ConfigError(f"GpuDevice.{field} = {value!r}: must be a positive number")
        if not isinstance(self.hbm_bytes, int) or self.hbm_bytes <= 0:
            raise ConfigError(
                f"GpuDevice.hbm_bytes = {self.hbm_bytes!r}: must be a positive integer")
        for field in ("matmul_efficiency", "hbm_efficiency", "active_power_fraction",
                      "comm_power_fraction"):
            value = getattr(self, field)
            if not 0 < value <= 1:
                raise ConfigError(f"GpuDevice.{field} = {value!r}: must be in (0, 1]")
        if self.supports_nvls and not 0 < self.nvls_efficiency <= 1:
            raise ConfigError(
                f"GpuDevice.nvls_efficiency = {self.nvls_efficiency!r}: a device that "
                "supports NVLS needs an efficiency in (0, 1]")

    def replace(self, **changes) -> "GpuDevice":
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def compute_seconds(self, flops: float, nbytes: float) -> float:
        """Roofline time of one kernel: max(compute, memory) plus its launch."""
        return (max(flops / (self.bf16_flops * self.matmul_efficiency),
                    nbytes / (self.hbm_bytes_per_s * self.hbm_efficiency))
                + self.kernel_launch_s)


A100 = GpuDevice(
    name="A100-SXM4-80GB",
    bf16_flops=312e12, hbm_bytes=80 * GIB, hbm_bytes_per_s=2.039e12,
    nvlink_bytes_per_s=300e9,
    matmul_efficiency=0.80, hbm_efficiency=0.83,   # ~1.7 of 2.04 TB/s [MEAS]
    kernel_launch_s=4e-6, tdp_watts=400.0,
    supports_nvls=False,
)

H100 = GpuDevice(
    name="H100-SXM5-80GB",
    bf16_flops=989e12, hbm_bytes=80 * GIB, hbm_bytes_per_s=3.35e12,
    nvlink_bytes_per_s=450e9,
    matmul_efficiency=0.70, hbm_efficiency=0.90,   # ~3.0 of 3.35 TB/s [MEAS]
    kernel_launch_s=4e-6, tdp_watts=700.0,
    supports_nvls=True, nvls_efficiency=0.85,
)

H200 = GpuDevice(
    name="H200-SXM-141GB",
    bf16_flops=989e12, hbm_bytes=141 * 10**9, hbm_bytes_per_s=4.8e12,
    nvlink_bytes_per_s=450e9,
    matmul_efficiency=0.72, hbm_efficiency=0.90,   # ~4.3 of 4.8 TB/s [MEAS]
    kernel_launch_s=4e-6, tdp_watts=700.0,
    supports_nvls=True, nvls_efficiency=0.85,
)

B200 = GpuDevice(
    name="B200-180GB",
    bf16_flops=2.25e15, hbm_bytes=180 * 10**9, hbm_bytes_per_s=8.0e12,
    nvlink_bytes_per_s=900e9,
    # ASSUMPTION: first-generation software stacks reach a lower fraction of
    # the new peak than on Hopper; no widely reproduced measurement yet.
    matmul_efficiency=0.65, hbm_efficiency=0.85,
    kernel_launch_s=4e-6, tdp_watts=1000.0,
    supports_nvls=True, nvls_efficiency=0.74,
)

DEVICES: dict[str, GpuDevice] = {"A100": A100, "H100": H100, "H200": H200, "B200": B200}


def device(name: "str | GpuDevice") -> GpuDevice:
    """Look a device up by its short name ("A100", "h100", ...); a GpuDevice passes through."""
    if isinstance(name, GpuDevice):
        return name
    if isinstance(name, str):
        key = name.strip().upper()
        if key in DEVICES:
            return DEVICES[key]
        for dev in DEVICES.values():
            if dev.name.upper() == key:
                return dev
    raise UnknownDeviceError(
        f"unknown GPU {name!r}: expected one of {', '.join(DEVICES)} "
        "(or a wse.gpu.GpuDevice)")
