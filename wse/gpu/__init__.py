"""The multi-GPU reference machine: devices, clusters, collectives that move
real chunks, and an NCCL-style cost model. NumPy only.

    from wse import gpu
    cluster = gpu.Cluster(gpu.H100, n_gpus=8)
    cluster.collective_seconds("allreduce", 1 << 20)
"""
from .cluster import ALGORITHMS, OPS, PROTOCOLS, Cluster, CollectivePlan
from .collectives import (Fabric, chain_broadcast, nvls_allreduce, ring_allgather,
                          ring_allreduce, ring_reduce_scatter, tree_allreduce)
from .devices import A100, B200, DEVICES, H100, H200, GpuDevice, device
from .errors import GpuMemoryError, ShardingError, UnknownDeviceError
from .report import CollectiveRecord, ComputeRecord, GpuReport
from .spmd import SpmdRun

__all__ = [
    "A100", "H100", "H200", "B200", "DEVICES", "GpuDevice", "device",
    "Cluster", "CollectivePlan", "OPS", "ALGORITHMS", "PROTOCOLS",
    "Fabric", "ring_allreduce", "tree_allreduce", "nvls_allreduce", "ring_allgather",
    "ring_reduce_scatter", "chain_broadcast",
    "SpmdRun", "GpuReport", "CollectiveRecord", "ComputeRecord",
    "UnknownDeviceError", "ShardingError", "GpuMemoryError",
]
