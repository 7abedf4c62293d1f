"""What one run on the GPU reference machine cost."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class CollectiveRecord:
    """One collective of a run, as priced by the cost model and measured by the fabric."""

    op: str
    nbytes: int
    """The collective's buffer size (nccl-tests convention), bytes."""
    n_ranks: int
    algorithm: str
    protocol: str
    seconds: float
    bytes_sent: int
    """Bytes all ranks sent for this collective, counted from the transfers."""

    def to_dict(self) -> dict:
        return {"op": self.op, "nbytes": self.nbytes, "n_ranks": self.n_ranks,
                "algorithm": self.algorithm, "protocol": self.protocol,
                "seconds": self.seconds, "bytes_sent": self.bytes_sent}


@dataclass(frozen=True)
class ComputeRecord:
    """One SPMD compute step (every rank runs the same kernel on its shard)."""

    name: str
    flops: float
    """FLOPs per rank."""
    nbytes: float
    """HBM bytes per rank."""
    seconds: float


@dataclass(frozen=True)
class GpuReport:
    """Totals of one run on `n_gpus` GPUs.

    Time model: ranks run in lock step; every collective sits on the critical
    path (no compute/communication overlap, as in a Megatron tensor-parallel
    forward pass where each all-reduce feeds the next layer).
    Energy: n_gpus x TDP x (compute_seconds x active_power_fraction
    + comm_seconds x comm_power_fraction), the fractions documented on the
    device (wse.gpu.GpuDevice).
    """

    device: str
    n_gpus: int
    seconds: float
    compute_seconds: float
    comm_seconds: float
    flops: float
    """FLOPs summed over all ranks."""
    hbm_bytes: float
    """HBM bytes summed over all ranks."""
    bytes_sent_per_gpu: np.ndarray
    """Bytes each rank sent over NVLink and the network, counted from transfers."""
    collectives: tuple[CollectiveRecord, ...]
    energy_joules: float
    computes: tuple[ComputeRecord, ...] = field(default=(), repr=False)
    cuda_graph: bool = False
    """Whether the run was replayed as one CUDA graph: its kernels and
    collectives then carry no launch cost, and launch_seconds holds the one
    graph launch. Otherwise each record includes its own kernel launch."""
    launch_seconds: float = 0.0
    """The graph launch (cuda_graph=True), included in `seconds`; 0 otherwise."""
    kernels: int = 0
    """Kernels launched or replayed: compute steps plus collectives."""

    @property
    def bytes_sent_total(self) -> int:
        return int(np.sum(self.bytes_sent_per_gpu))

    def to_dict(self) -> dict:
        return {
            "device": self.device,
            "n_gpus": self.n_gpus,
            "seconds": self.seconds,
            "compute_seconds": self.compute_seconds,
            "comm_seconds": self.comm_seconds,
            "flops": self.flops,
            "hbm_bytes": self.hbm_bytes,
            "bytes_sent_per_gpu": [int(b) for b in self.bytes_sent_per_gpu],
            "bytes_sent_total": self.bytes_sent_total,
            "collectives": [c.to_dict() for c in self.collectives],
            "energy_joules": self.energy_joules,
            "cuda_graph": self.cuda_graph,
            "launch_seconds": self.launch_seconds,
            "kernels": self.kernels,
        }
