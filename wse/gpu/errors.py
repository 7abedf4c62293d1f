"""Errors raised by the GPU reference machine.

All of them are `wse.errors.ConfigError` subclasses (and so `ValueError`s):
each one means that the arguments describe something that cannot run.
"""
from __future__ import annotations

from ..errors import ConfigError


class UnknownDeviceError(ConfigError):
    """A GPU name that is not one of the modelled devices (A100, H100, H200, B200)."""


class ShardingError(ConfigError):
    """A tensor-parallel degree that does not divide the model (heads, KV heads,
    MLP width, sequence for sequence parallelism), or that exceeds the cluster,
    or per-rank shards that do not fit together."""


class GpuMemoryError(ConfigError):
    """A model's weights plus KV cache (plus activations) exceed one GPU's HBM."""
