"""Algorithms written against wse's public API, as a user would write them.

    y, report = kernels.reduce(x, cfg, along="x", algorithm="chain")
    C, report = kernels.gemm(A, B, cfg, algorithm="meshgemm")
    y, report = kernels.gemv(W, x, cfg, algorithm="meshgemv")
    O, report = kernels.attention(Q, K, V, cfg, causal=True)
"""
from . import collectives, models, reference, sharded
from .collectives import allreduce, broadcast, reduce, shift
from .gemm import gemm
from .gemv import gemv
from .attention import attention
from . import transformer

__all__ = ["allreduce", "attention", "broadcast", "collectives", "gemm", "gemv", "models",
           "reduce", "reference", "sharded", "shift", "transformer"]
