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
  [GRAPH]   NVIDIA Technical Blog, "Constant Time Launch for Straight-Line
            CUDA Graphs and Other Performance Enhancements" (2024,
            https://developer.nvidia.com/blog/constant-time-launch-for-straight-line-graphs-and-other-performance-enhancements/):
            with CUDA 12.6 the CPU launch of a straight-line graph is constant
            in its node count. ASSUMPTION: graph_launch_s = 2.5e-6, the order
            of that post's figure as recalled; the page itself could not be
            read here, so the value is unverified (a decode layer's graph
            time moves by the same microseconds; see docs/gpu-calibration.md).
  [MMGUIDE] NVIDIA, "Matrix Multiplication Background User's Guide"
            (https://docs.nvidia.com/deeplearning/performance/dl-performance-matrix-multiplication/):
            cuBLAS tiles the output (largest typical tile 256 x 128); a GEMM
            whose tiles do not fill whole waves of SMs loses the idle part of
            the last wave ("wave quantization"), and its measured A100 figures
            show throughput falling accordingly for small output sizes.
            -> gemm_efficiency(). SM counts [DS]: A100 108, H100/H200 132,
            B200 148.
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

GEMM_TILE = (128, 256)
"""cuBLAS's largest typical output tile, rows x columns [MMGUIDE] (the guide
lists 256x128, 128x256, 128x128, ...; the large tile is the one large GEMMs
use, and so the one the wave count of a big GEMM sees)."""


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
    n_sms: int = 132
    """Streaming multiprocessors [DS]: the number of output tiles one wave of
    a GEMM runs at once (one tile per SM) [MMGUIDE]."""
    graph_launch_s: float = 2.5e-6
    """CPU cost of launching one CUDA graph (straight-line, any node count)
    [GRAPH]. A decode step replayed as a graph pays this once instead of
    kernel_launch_s per kernel."""
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
                      "kernel_launch_s", "graph_launch_s", "tdp_watts"):
            value = getattr(self, field)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
                raise ConfigError(f"GpuDevice.{field} = {value!r}: must be a positive number")
        if not isinstance(self.hbm_bytes, int) or self.hbm_bytes <= 0:
            raise ConfigError(
                f"GpuDevice.hbm_bytes = {self.hbm_bytes!r}: must be a positive integer")
        if isinstance(self.n_sms, bool) or not isinstance(self.n_sms, int) or self.n_sms < 1:
            raise ConfigError(f"GpuDevice.n_sms = {self.n_sms!r}: must be a positive integer")
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

    def gemm_efficiency(self, m: int, n: int, k: int | None = None) -> float:
        """Fraction of bf16_flops a cuBLAS GEMM with an (m, n) output sustains.

        matmul_efficiency (the large-GEMM figure) times the wave efficiency
        [MMGUIDE]: the output is cut into GEMM_TILE tiles, one per SM at a
        time; a GEMM with fewer tiles than SMs leaves SMs idle, and a partial
        last wave costs a whole wave. k does not enter (the k-loop runs inside
        each tile). Bounded by matmul_efficiency, which it reaches exactly
        when the tiles fill whole waves; tensor parallelism's narrow per-GPU
        GEMMs (n / tp columns) fall below it."""
        for name, value in (("m", m), ("n", n)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"gemm_efficiency: {name} = {value!r} must be a positive integer")
        tiles = -(-m // GEMM_TILE[0]) * -(-n // GEMM_TILE[1])
        waves = -(-tiles // self.n_sms)
        return self.matmul_efficiency * tiles / (waves * self.n_sms)

    def compute_seconds(self, flops: float, nbytes: float, *, launch: bool = True,
                        efficiency: float | None = None) -> float:
        """Roofline time of one kernel: max(compute, memory), plus its launch
        unless launch=False (the kernel is replayed inside a CUDA graph).
        efficiency: the fraction of peak FLOP/s (default matmul_efficiency;
        see gemm_efficiency for a GEMM's shape)."""
        efficiency = self.matmul_efficiency if efficiency is None else efficiency
        return (max(flops / (self.bf16_flops * efficiency),
                    nbytes / (self.hbm_bytes_per_s * self.hbm_efficiency))
                + (self.kernel_launch_s if launch else 0.0))


A100 = GpuDevice(
    name="A100-SXM4-80GB",
    bf16_flops=312e12, hbm_bytes=80 * GIB, hbm_bytes_per_s=2.039e12,
    nvlink_bytes_per_s=300e9,
    matmul_efficiency=0.80, hbm_efficiency=0.83,   # ~1.7 of 2.04 TB/s [MEAS]
    kernel_launch_s=4e-6, tdp_watts=400.0, n_sms=108,
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
    kernel_launch_s=4e-6, tdp_watts=1000.0, n_sms=148,
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
