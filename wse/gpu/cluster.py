"""A GPU cluster and its NCCL-style cost model.

Topology: nodes of `gpus_per_node` GPUs. Inside a node every GPU has one
NVLink port into the node's NVSwitch fabric (so any GPU reaches any other at
the full per-direction NVLink bandwidth); between nodes every GPU has its own
InfiniBand NDR NIC at 400 Gb/s = 50 GB/s per direction (the DGX/HGX H100
reference design: one ConnectX-7 per GPU).

Cost of a collective (the NCCL tuner's form, our own parameters):

    seconds = launch + base_latency[algo][proto]
              + sum over the pipeline's steps of step_latency[link][algo][proto]
              + max over GPU ports of  bytes_through_port / port_bandwidth

    port_bandwidth = line rate x link efficiency x protocol payload fraction
                     (x NVLS efficiency for the in-switch all-reduce)

The bytes through each port come from `traffic()`, which states what each
algorithm sends; wse.gpu.collectives moves real chunks through a counting
fabric, and the tests check the two agree. The algorithm and protocol are
chosen as NCCL's tuner does: the minimum predicted time.

Parameters and sources
  [NCCL-T] NCCL src/graph/tuning.cc (2.18-2.21): base latencies (us) Ring
           {LL 6.6, LL128 14.0, Simple 8.4}, Tree {6.8, 14.0, 8.4}, NVLS 0;
           per-step NVLink latencies Ring {0.6, 1.9, 3.4}, Tree {0.6, 1.25,
           4.0}, NVLS 25 (once); per-step network latencies Ring {2.7, 4.0,
           14.0}, Tree {5.0, 8.5, 14.0}. LL moves 8-byte lines carrying 4 bytes
           of data (payload 1/2); LL128 128-byte lines carrying 120 bytes.
  [NCCL-I] NVIDIA/nccl-tests#212 (S. Jeaugey, 2024): NVLink protocol overhead
           is ~20%, so NCCL's ring reaches ~370 GB/s of H100's 450 GB/s.
           -> nvlink_efficiency = 0.80 (one figure for every device).
  [NCCL-IB] NVIDIA/nccl-tests#290 (AddyLaddy, NVIDIA, 2025): "For NDR @
           400Gbps you should see 46-48GB/s per NIC" -> inter_node_efficiency
           = 0.92 (46 of 50 GB/s, the low end).
  [HIER]   Across nodes (n > gpus_per_node) the all-reduce is also priced as
           the two-level (hierarchical) algorithm: reduce-scatter over NVLink
           inside each node, ring all-reduce of 1/g of the buffer between
           nodes over each GPU's own NIC, all-gather over NVLink (Jia et al.
           2018, arXiv:1807.11205; Horovod's hierarchical all-reduce). It is
           what makes a rail-optimised cluster (one NIC per GPU) usable: the
           NICs carry 1/g of the flat ring's bytes. Its steps are 2(g-1)
           NVLink hops plus 2(N-1) network hops (N nodes). The flat ring and
           tree stay candidates; the tuner takes the cheapest. A flat ring
           over 2 nodes crosses the network on 2 x nNodes of its 2(n-1) steps,
           NCCL's own count (tuning.cc, nInterSteps = 2 * nNodes).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from .devices import GpuDevice, device as _lookup_device
from .errors import ShardingError
from .topology import double_binary_tree, double_tree_port_units
from ..errors import ConfigError

OPS = ("allreduce", "allgather", "reduce_scatter", "broadcast", "send")
ALGORITHMS = ("ring", "tree", "nvls", "hier")
PROTOCOLS = ("LL", "LL128", "Simple")

PROTOCOL_PAYLOAD = {"LL": 0.5, "LL128": 120 / 128, "Simple": 1.0}
"""Fraction of each wire line that is data, per protocol [NCCL-T]."""

BASE_LATENCY_S = {
    ("ring", "LL"): 6.6e-6, ("ring", "LL128"): 14.0e-6, ("ring", "Simple"): 8.4e-6,
    ("tree", "LL"): 6.8e-6, ("tree", "LL128"): 14.0e-6, ("tree", "Simple"): 8.4e-6,
    ("nvls", "Simple"): 0.0,
}
"""Fixed cost of one collective kernel per algorithm and protocol [NCCL-T]."""

STEP_LATENCY_S = {
    "nvlink": {
        ("ring", "LL"): 0.6e-6, ("ring", "LL128"): 1.9e-6, ("ring", "Simple"): 3.4e-6,
        ("tree", "LL"): 0.6e-6, ("tree", "LL128"): 1.25e-6, ("tree", "Simple"): 4.0e-6,
        ("nvls", "Simple"): 25e-6,
    },
    "net": {
        ("ring", "LL"): 2.7e-6, ("ring", "LL128"): 4.0e-6, ("ring", "Simple"): 14.0e-6,
        ("tree", "LL"): 5.0e-6, ("tree", "LL128"): 8.5e-6, ("tree", "Simple"): 14.0e-6,
    },
}
"""Latency each pipeline step adds, by link type [NCCL-T]."""

BUSBW_FACTOR = {
    "allreduce": lambda n: 2 * (n - 1) / n,
    "allgather": lambda n: (n - 1) / n,
    "reduce_scatter": lambda n: (n - 1) / n,
    "broadcast": lambda n: 1.0,
    "send": lambda n: 1.0,
}
"""nccl-tests' bus-bandwidth factors (doc/PERFORMANCE.md)."""


@dataclass(frozen=True)
class CollectivePlan:
    """One priced way to run a collective."""

    op: str
    nbytes: int
    n_ranks: int
    algorithm: str
    protocol: str
    seconds: float
    latency_seconds: float
    """launch + base + per-step latencies: the time for a zero-byte message."""
    bandwidth_seconds: float
    """The busiest port's bytes over its effective bandwidth."""

    @property
    def algbw(self) -> float:
        """nbytes / seconds (bytes/s), as nccl-tests reports it."""
        return self.nbytes / self.seconds if self.seconds > 0 else math.inf

    @property
    def busbw(self) -> float:
        """algbw x the nccl-tests factor for the op (bytes/s)."""
        return self.algbw * BUSBW_FACTOR[self.op](self.n_ranks)


def _check_op(op: str) -> None:
    if op not in OPS:
        raise ConfigError(f"unknown collective {op!r}: expected one of {', '.join(OPS)}")


@dataclass(frozen=True)
class Cluster:
    """`n_gpus` identical GPUs in nodes of `gpus_per_node` on an NVSwitch,
    nodes joined by one InfiniBand NIC per GPU."""

    device: GpuDevice
    n_gpus: int = 8
    gpus_per_node: int = 8
    inter_node_bytes_per_s: float = 50e9
    """InfiniBand NDR 400 Gb/s per GPU, per direction."""
    nvlink_efficiency: float = 0.80
    """Fraction of NVLink line rate NCCL's Simple protocol delivers [NCCL-I]."""
    inter_node_efficiency: float = 0.92
    """Fraction of the NIC line rate NCCL delivers: 46 of 50 GB/s [NCCL-IB]."""
    name: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "device", _lookup_device(self.device))
        for attr in ("n_gpus", "gpus_per_node"):
            value = getattr(self, attr)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"Cluster.{attr} = {value!r}: must be a positive integer")
        if self.n_gpus > self.gpus_per_node and self.n_gpus % self.gpus_per_node:
            raise ConfigError(
                f"Cluster.n_gpus = {self.n_gpus} is not a whole number of "
                f"{self.gpus_per_node}-GPU nodes")
        if not self.inter_node_bytes_per_s > 0:
            raise ConfigError("Cluster.inter_node_bytes_per_s must be positive")
        for attr in ("nvlink_efficiency", "inter_node_efficiency"):
            if not 0 < getattr(self, attr) <= 1:
                raise ConfigError(f"Cluster.{attr} must be in (0, 1]")
        if not self.name:
            object.__setattr__(self, "name", f"{self.n_gpus}x{self.device.name}")

    # ---------------------------------------------------------------- topology
    @property
    def n_nodes(self) -> int:
        return -(-self.n_gpus // self.gpus_per_node)

    def node_of(self, rank: int) -> int:
        return rank // self.gpus_per_node

    def link(self, src: int, dst: int) -> str:
        """'nvlink' inside a node, 'net' between nodes."""
        return "nvlink" if self.node_of(src) == self.node_of(dst) else "net"

    def port_bytes_per_s(self, port: str) -> float:
        """Effective payload bandwidth of one GPU port, per direction, before protocol overhead."""
        if port == "nvlink":
            return self.device.nvlink_bytes_per_s * self.nvlink_efficiency
        return self.inter_node_bytes_per_s * self.inter_node_efficiency

    def _ranks(self, n_ranks: int | None) -> int:
        n = self.n_gpus if n_ranks is None else n_ranks
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= self.n_gpus:
            raise ShardingError(
                f"a group of {n!r} ranks does not fit a {self.n_gpus}-GPU cluster")
        return n

    # ------------------------------------------------------------ cost model
    def algorithms(self, op: str, n_ranks: int | None = None) -> list[str]:
        """The algorithms NCCL would consider for `op` on this group."""
        _check_op(op)
        n = self._ranks(n_ranks)
        if op == "send":
            return ["p2p"]
        if op != "allreduce":
            return ["ring"]
        names = ["ring", "tree"]
        # NVLS needs every rank on one NVSwitch fabric (no NVLS+IB SHARP here).
        if self.device.supports_nvls and n >= 2 and self.node_of(n - 1) == 0:
            names.append("nvls")
        # Hierarchical: whole nodes, more than one of them [HIER].
        if n > self.gpus_per_node and n % self.gpus_per_node == 0:
            names.append("hier")
        return names

    def traffic(self, op: str, algorithm: str, nbytes: int,
                n_ranks: int | None = None) -> dict[tuple[int, str, str], float]:
        """Bytes each (rank, port, 'out'|'in') carries for one collective.

        Conventions follow nccl-tests: for allgather `nbytes` is the gathered
        (output) buffer, for reduce_scatter the input buffer; for allreduce and
        broadcast the buffer; for send the message (rank 0 to rank 1).
        """
        _check_op(op)
        n = self._ranks(n_ranks)
        flows: dict[tuple[int, str, str], float] = {}

        def move(src: int, dst: int, amount: float) -> None:
            port = self.link(src, dst)
            flows[(src, port, "out")] = flows.get((src, port, "out"), 0.0) + amount
            flows[(dst, port, "in")] = flows.get((dst, port, "in"), 0.0) + amount

        if n == 1 and op != "send":
            return flows
        if op == "send":
            if n < 2:
                raise ShardingError("send needs at least two ranks")
            move(0, 1, nbytes)
        elif algorithm == "ring":
            per_link = {"allreduce": 2 * (n - 1) / n, "allgather": (n - 1) / n,
                        "reduce_scatter": (n - 1) / n}.get(op)
            if per_link is not None:
                for r in range(n):
                    move(r, (r + 1) % n, per_link * nbytes)
            else:  # broadcast: a pipelined chain from rank 0, all but the last forward
                for r in range(n - 1):
                    move(r, r + 1, nbytes)
        elif algorithm == "tree":
            for tree in double_binary_tree(n):
                for r in range(n):
                    parent = tree.parent[r]
                    if parent != -1:
                        move(r, parent, nbytes / 2)   # reduce: partial up
                        move(parent, r, nbytes / 2)   # broadcast: result down
        elif algorithm == "hier":
            g = self.gpus_per_node
            if n <= g or n % g:
                raise ShardingError(f"the hierarchical all-reduce needs whole nodes, more "
                                    f"than one: {n} ranks, {g} per node")
            nodes = n // g
            for r in range(n):
                node, local = divmod(r, g)
                # reduce-scatter then all-gather inside the node (rings of g)
                move(r, node * g + (local + 1) % g, 2 * (g - 1) / g * nbytes)
                # ring all-reduce of 1/g of the buffer among the same local rank
                move(r, ((node + 1) % nodes) * g + local, 2 * (nodes - 1) / nodes * nbytes / g)
        elif algorithm == "nvls":
            # Each rank owns 1/n of the buffer. multimem.ld_reduce pulls that
            # slice from every rank through the switch and returns the sum to
            # its owner; multimem.st pushes the sum back through the switch,
            # which multicasts it to every rank (the owner included).
            for r in range(n):
                flows[(r, "nvlink", "out")] = nbytes + nbytes / n
                flows[(r, "nvlink", "in")] = nbytes / n + nbytes
        else:
            raise ConfigError(f"unknown algorithm {algorithm!r} for {op}")
        return flows

    def _steps(self, op: str, algorithm: str, n: int) -> list[str]:
        """Link type of each step on the pipeline's critical path."""
        if op == "send":
            return [self.link(0, 1)]
        if algorithm == "nvls":
            return ["nvlink"]
        if algorithm == "hier":
            g, nodes = self.gpus_per_node, n // self.gpus_per_node
            return ["nvlink"] * (2 * (g - 1)) + ["net"] * (2 * (nodes - 1))
        if algorithm == "ring":
            count = {"allreduce": 2 * (n - 1)}.get(op, n - 1)
            crossings = sum(self.link(r, (r + 1) % n) == "net" for r in range(n))
            # NCCL's count (tuning.cc): an all-reduce crosses the network on
            # 2 x (ring edges between nodes) steps, the other ops on one pass.
            net = min(count, crossings * (2 if op == "allreduce" else 1))
            return ["net"] * net + ["nvlink"] * (count - net)
        # tree: up the deepest path and back down, per link type on that path
        worst: list[str] = []
        for tree in double_binary_tree(n):
            for leaf in range(n):
                path, node = [], leaf
                while tree.parent[node] != -1:
                    path.append(self.link(node, tree.parent[node]))
                    node = tree.parent[node]
                if (path.count("net"), len(path)) > (worst.count("net"), len(worst)):
                    worst = path
        return worst * 2

    def plans(self, op: str, nbytes: int, n_ranks: int | None = None, *,
              launch: bool = True) -> list[CollectivePlan]:
        """Every (algorithm, protocol) priced for this message. launch=False
        leaves out the kernel launch (the collective is replayed inside a
        CUDA graph, whose single launch the caller charges)."""
        _check_op(op)
        n = self._ranks(n_ranks)
        if isinstance(nbytes, bool) or not isinstance(nbytes, (int, float)) or nbytes < 0:
            raise ConfigError(f"nbytes = {nbytes!r}: must be a non-negative number")
        if n == 1 and op != "send":
            return [CollectivePlan(op, int(nbytes), 1, "none", "none", 0.0, 0.0, 0.0)]
        launch = self.device.kernel_launch_s if launch else 0.0
        result = []
        for algorithm in self.algorithms(op, n):
            flows = self.traffic(op, "ring" if algorithm == "p2p" else algorithm, nbytes, n)
            table = "ring" if algorithm in ("p2p", "hier") else algorithm
            steps = self._steps(op, algorithm, n)
            for protocol in PROTOCOLS:
                if (table, protocol) not in BASE_LATENCY_S:
                    continue
                latency = launch + BASE_LATENCY_S[(table, protocol)]
                latency += sum(STEP_LATENCY_S[link][(table, protocol)] for link in steps)
                scale = PROTOCOL_PAYLOAD[protocol]
                if algorithm == "nvls":
                    scale *= self.device.nvls_efficiency
                transfer = max((amount / (self.port_bytes_per_s(port) * scale)
                                for (_, port, _), amount in flows.items()), default=0.0)
                result.append(CollectivePlan(op, int(nbytes), n, algorithm, protocol,
                                             latency + transfer, latency, transfer))
        return result

    def collective_plan(self, op: str, nbytes: int, n_ranks: int | None = None,
                        algorithm: str | None = None,
                        protocol: str | None = None, *, launch: bool = True) -> CollectivePlan:
        """The plan NCCL's tuner would pick (minimum predicted time), optionally
        restricted to one algorithm and/or protocol. launch=False: inside a
        CUDA graph (no per-kernel launch)."""
        candidates = self.plans(op, nbytes, n_ranks, launch=launch)
        if candidates[0].algorithm == "none":
            return candidates[0]
        if algorithm is not None:
            candidates = [p for p in candidates if p.algorithm == algorithm]
            if not candidates:
                raise ConfigError(
                    f"algorithm {algorithm!r} is not available for {op} on "
                    f"{self._ranks(n_ranks)} x {self.device.name}: choose from "
                    f"{', '.join(self.algorithms(op, n_ranks))}")
        if protocol is not None:
            candidates = [p for p in candidates if p.protocol == protocol]
            if not candidates:
                raise ConfigError(f"protocol {protocol!r} is not available here "
                                  f"(protocols: {', '.join(PROTOCOLS)})")
        return min(candidates, key=lambda p: p.seconds)

    def collective_seconds(self, op: str, nbytes: int, n_ranks: int | None = None,
                           algorithm: str | None = None, protocol: str | None = None,
                           *, launch: bool = True) -> float:
        """Predicted seconds of one collective ("allreduce", "allgather",
        "reduce_scatter", "broadcast", "send") of `nbytes` over `n_ranks`
        GPUs (default: the whole cluster)."""
        return self.collective_plan(op, nbytes, n_ranks, algorithm, protocol,
                                    launch=launch).seconds

    def busbw(self, op: str, nbytes: int, n_ranks: int | None = None,
              algorithm: str | None = None, protocol: str | None = None) -> float:
        """Predicted nccl-tests bus bandwidth, bytes/s."""
        return self.collective_plan(op, nbytes, n_ranks, algorithm, protocol).busbw

    def compute_seconds(self, flops: float, nbytes: float, *, launch: bool = True,
                        efficiency: float | None = None) -> float:
        """Roofline time of one kernel on one GPU (see GpuDevice.compute_seconds)."""
        return self.device.compute_seconds(flops, nbytes, launch=launch, efficiency=efficiency)
