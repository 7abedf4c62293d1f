"""wse: a cycle-level emulator of a wafer-scale engine.

The core import is light (NumPy only); Numba loads when a program first runs,
rich and matplotlib only when the command line or a benchmark needs them.
"""
from .config import WSE2, WSE3, WaferConfig
from .errors import (ConfigError, CycleLimitError, FabricDeadlockError, FloatingPointTrap,
                     ProgramError, RouteError, SramOverflowError, WseError)
from .program import WAVELET, Buffer, Color, Param, Program, Reg, RunResult, run_options
from .report import RunReport
from . import gpu, timing

__version__ = "0.1.0"

__all__ = [
    "WSE2", "WSE3", "WaferConfig", "WseError", "ConfigError", "SramOverflowError",
    "RouteError", "FabricDeadlockError", "CycleLimitError", "ProgramError",
    "FloatingPointTrap", "Program", "Buffer", "Color", "Param", "Reg", "RunResult",
    "RunReport", "WAVELET", "gpu", "run_options",
]
