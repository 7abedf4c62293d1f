"""SPMD execution on N virtual GPUs.

A program holds one NumPy array per rank for each tensor ("shards") and runs
the same steps on every rank. Compute steps are executed by the caller (on
each rank's shard) and priced here with the device roofline; communication
goes through the collectives in wse.gpu.collectives, which move real chunks
and count the bytes. `report()` totals both.

    run = SpmdRun(cluster, n_ranks=4)
    ys = run.matmul(xs, ws, "qkv")          # per-rank x @ w, priced
    ys = run.allreduce(ys)                  # moved chunk by chunk, priced
    report = run.report()
"""
from __future__ import annotations

import numpy as np

from . import collectives as coll
from .cluster import Cluster
from .errors import ShardingError
from .report import CollectiveRecord, ComputeRecord, GpuReport
from ..errors import ConfigError


class SpmdRun:
    """One run on the first `n_ranks` GPUs of `cluster`.

    algorithm / protocol: force an all-reduce algorithm ("ring", "tree",
    "nvls") or protocol ("LL", "LL128", "Simple"); None lets the tuner pick
    the fastest predicted one for each message, as NCCL does.
    bytes_per_element: the dtype the modelled GPUs compute and communicate in
    (2 = bf16); the emulation carries values in the caller's dtype.
    cuda_graph: the run is one CUDA-graph replay (how serving stacks run a
    decode step): no kernel or collective pays its own launch; the report
    charges one graph launch (GpuDevice.graph_launch_s) instead.
    """

    def __init__(self, cluster: Cluster, n_ranks: int | None = None, *,
                 algorithm: str | None = None, protocol: str | None = None,
                 bytes_per_element: int = 2, cuda_graph: bool = False):
        if not isinstance(cluster, Cluster):
            raise ConfigError(f"expected a wse.gpu.Cluster, got {type(cluster).__name__}")
        n = cluster.n_gpus if n_ranks is None else n_ranks
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= cluster.n_gpus:
            raise ShardingError(
                f"{n!r} ranks do not fit the {cluster.n_gpus}-GPU cluster {cluster.name}")
        if algorithm is not None and algorithm not in ("ring", "tree", "nvls", "hier"):
            raise ConfigError(
                f"unknown all-reduce algorithm {algorithm!r}: ring, tree, nvls or hier")
        self.cluster = cluster
        self.n_ranks = n
        self.algorithm = algorithm
        self.protocol = protocol
        self.bytes_per_element = bytes_per_element
        self.cuda_graph = bool(cuda_graph)
        self.fabric = coll.Fabric(cluster, n, bytes_per_element)
        self._computes: list[ComputeRecord] = []
        self._collectives: list[CollectiveRecord] = []

    # ------------------------------------------------------------------ compute
    def compute(self, name: str, flops: float, nbytes: float, *,
                gemm: tuple[int, int] | None = None) -> None:
        """Price one SPMD kernel: `flops` and HBM `nbytes` per rank. gemm=(m, n):
        the kernel is a GEMM with an m x n output per rank, priced at the
        device's shape-dependent efficiency (GpuDevice.gemm_efficiency)."""
        efficiency = None if gemm is None else self.cluster.device.gemm_efficiency(*gemm)
        seconds = self.cluster.compute_seconds(flops, nbytes, launch=not self.cuda_graph,
                                               efficiency=efficiency)
        self._computes.append(ComputeRecord(name, float(flops), float(nbytes), seconds))

    def matmul(self, xs: list[np.ndarray], ws: list[np.ndarray], name: str = "matmul",
               bias: list[np.ndarray] | None = None) -> list[np.ndarray]:
        """Per-rank x @ w (+ bias). x: (m, k), w: (k, n)."""
        self._check_ranks(xs, name)
        self._check_ranks(ws, name)
        out = [x @ w for x, w in zip(xs, ws)]
        if bias is not None:
            out = [o + b for o, b in zip(out, bias)]
        m, k = xs[0].shape
        n = ws[0].shape[1]
        self.compute(name, 2.0 * m * k * n, (m * k + k * n + m * n) * self.bytes_per_element,
                     gemm=(m, n))
        return out

    def elementwise(self, name: str, xs: list[np.ndarray], flops_per_element: float = 1.0,
                    reads: int = 1, writes: int = 1) -> None:
        """Price a memory-bound kernel over each rank's array (norm, activation, add)."""
        size = float(np.size(xs[0]))
        self.compute(name, flops_per_element * size,
                     (reads + writes) * size * self.bytes_per_element)

    # ------------------------------------------------------------ collectives
    def _check_ranks(self, xs, what: str) -> None:
        if len(xs) != self.n_ranks:
            raise ShardingError(f"{what}: got {len(xs)} shards for {self.n_ranks} ranks")

    def _plan(self, op: str, nbytes: int, n_ranks: int, algorithm: str | None,
              protocol: str | None):
        return self.cluster.collective_plan(op, nbytes, n_ranks, algorithm, protocol,
                                            launch=not self.cuda_graph)

    def _record(self, op: str, nbytes: int, before: np.ndarray, algorithm: str | None,
                protocol: str | None = None) -> CollectiveRecord:
        plan = self._plan(op, nbytes, self.n_ranks, algorithm, protocol or self.protocol)
        sent = int(self.fabric.sent.sum() - before.sum())
        record = CollectiveRecord(op, int(nbytes), self.n_ranks, plan.algorithm,
                                  plan.protocol, plan.seconds, sent)
        self._collectives.append(record)
        return record

    def allreduce(self, xs: list[np.ndarray]) -> list[np.ndarray]:
        """Sum over ranks, result on every rank."""
        self._check_ranks(xs, "allreduce")
        if self.n_ranks == 1:
            return [np.array(xs[0], copy=True)]
        nbytes = int(np.size(xs[0])) * self.bytes_per_element
        plan = self._plan("allreduce", nbytes, self.n_ranks, self.algorithm, self.protocol)
        before = self.fabric.sent.copy()
        out = coll.ALLREDUCE[plan.algorithm](self.fabric, list(xs))
        self._record("allreduce", nbytes, before, plan.algorithm, plan.protocol)
        return out

    def allgather(self, xs: list[np.ndarray], axis: int = 0, *,
                  bytes_per_element: int | None = None) -> list[np.ndarray]:
        """Concatenate the ranks' arrays along `axis` (rank order), result on every rank.
        bytes_per_element: charge this many bytes per element for this
        collective (default: the run's), e.g. 4 for fp32 values or int32 ids."""
        self._check_ranks(xs, "allgather")
        if self.n_ranks == 1:
            return [np.array(xs[0], copy=True)]
        width = self.bytes_per_element if bytes_per_element is None else bytes_per_element
        saved, self.fabric.bytes_per_element = self.fabric.bytes_per_element, width
        try:
            before = self.fabric.sent.copy()
            out = coll.ring_allgather(self.fabric, list(xs), axis)
            self._record("allgather", int(np.size(out[0])) * width, before, "ring")
        finally:
            self.fabric.bytes_per_element = saved
        return out

    def reduce_scatter(self, xs: list[np.ndarray], axis: int = 0) -> list[np.ndarray]:
        """Sum over ranks; rank r keeps slice r along `axis` (np.array_split)."""
        self._check_ranks(xs, "reduce_scatter")
        if self.n_ranks == 1:
            return [np.array(xs[0], copy=True)]
        before = self.fabric.sent.copy()
        out = coll.ring_reduce_scatter(self.fabric, list(xs), axis)
        self._record("reduce_scatter", int(np.size(xs[0])) * self.bytes_per_element,
                     before, "ring")
        return out

    def broadcast(self, xs: list[np.ndarray], root: int = 0) -> list[np.ndarray]:
        """The root rank's array on every rank."""
        self._check_ranks(xs, "broadcast")
        if self.n_ranks == 1:
            return [np.array(xs[0], copy=True)]
        before = self.fabric.sent.copy()
        out = coll.chain_broadcast(self.fabric, list(xs), root)
        self._record("broadcast", int(np.size(xs[root])) * self.bytes_per_element, before, "ring")
        return out

    def send(self, x: np.ndarray, src: int, dst: int) -> np.ndarray:
        """Point to point: rank src's array arrives at rank dst. Bytes are counted
        on the link actually used, but the price is that of ranks 0 -> 1 (an
        NVLink hop) even when src and dst sit on different nodes: a known
        simplification, unused by the tensor-parallel kernels."""
        for rank in (src, dst):
            if not 0 <= rank < self.n_ranks:
                raise ShardingError(f"rank {rank} is not in this {self.n_ranks}-rank run")
        before = self.fabric.sent.copy()
        out = self.fabric.send(src, dst, x)
        nbytes = int(np.size(x)) * self.bytes_per_element
        plan = self._plan("send", nbytes, max(2, self.n_ranks), None, None)
        self._collectives.append(CollectiveRecord(
            "send", nbytes, 2, plan.algorithm, plan.protocol, plan.seconds,
            int(self.fabric.sent.sum() - before.sum())))
        return out

    # ----------------------------------------------------------------- report
    def report(self) -> GpuReport:
        device = self.cluster.device
        compute_s = sum(c.seconds for c in self._computes)
        comm_s = sum(c.seconds for c in self._collectives)
        launch_s = device.graph_launch_s if self.cuda_graph else 0.0
        # The graph launch is host time: the GPUs idle, drawing comm-level power.
        energy = self.n_ranks * device.tdp_watts * (
            compute_s * device.active_power_fraction
            + (comm_s + launch_s) * device.comm_power_fraction)
        return GpuReport(
            device=device.name,
            n_gpus=self.n_ranks,
            seconds=compute_s + comm_s + launch_s,
            compute_seconds=compute_s,
            comm_seconds=comm_s,
            flops=self.n_ranks * sum(c.flops for c in self._computes),
            hbm_bytes=self.n_ranks * sum(c.nbytes for c in self._computes),
            bytes_sent_per_gpu=self.fabric.sent.sum(axis=1).copy(),
            collectives=tuple(self._collectives),
            energy_joules=energy,
            computes=tuple(self._computes),
            cuda_graph=self.cuda_graph,
            launch_seconds=launch_s,
            kernels=len(self._computes) + len(self._collectives),
        )
