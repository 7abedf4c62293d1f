"""Megatron tensor parallelism on the GPU reference machine (wse.gpu).

    out, report = kernels.sharded.prefill(model, weights, x, cluster, tp=4)
    out, cache, report = kernels.sharded.prefill(..., return_cache=True)
    out, cache, report = kernels.sharded.decode_step(model, weights, cache, cluster, tp=4)
"""
from .layout import (Layout, RankLayer, check_fits, default_tp, memory_per_gpu, shard_layer,
                     shard_weights)
from .transformer import decode_step, lm_head_and_sample, model_decode_seconds, prefill

__all__ = ["prefill", "decode_step", "lm_head_and_sample", "model_decode_seconds", "Layout", "RankLayer", "shard_layer", "shard_weights",
           "memory_per_gpu", "check_fits", "default_tp"]
