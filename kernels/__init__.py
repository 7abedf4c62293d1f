"""Algorithms written against wse's public API, as a user would write them.

    y, report = kernels.reduce(x, cfg, along="x", algorithm="chain")
    C, report = kernels.gemm(A, B, cfg, algorithm="meshgemm")
    y, report = kernels.gemv(W, x, cfg, algorithm="meshgemv")
    O, report = kernels.attention(Q, K, V, cfg, causal=True)

A module is named for what it holds, a function for what it computes, and no
function shares its module's name, so both stay reachable as attributes:
kernels.gemm is the function and kernels.matmul its module (SUMMA, Cannon,
MeshGEMM, plans, cost models); likewise kernels.gemv in kernels.matvec and
kernels.attention in kernels.mesh_attention. The collectives (reduce,
broadcast, allreduce, shift) live in kernels.collectives.
"""
from . import collectives, matmul, matvec, mesh_attention, models, reference, sharded
from .collectives import allreduce, broadcast, reduce, shift
from .matmul import gemm
from .matvec import gemv
from .mesh_attention import attention
from . import transformer

__all__ = ["allreduce", "attention", "broadcast", "collectives", "gemm", "gemv", "matmul",
           "matvec", "mesh_attention", "models", "reduce", "reference", "sharded", "shift",
           "transformer"]
