"""The errors a run or a program build can raise.

Every error names what a researcher needs to find the fault: the PE as
(x, y), the buffer, the color, the port, the cycle, what was expected.
"""


class WseError(Exception):
    """Base class of every error the emulator raises on purpose."""


class ConfigError(WseError, ValueError):
    """A configuration field, or an argument to a kernel, is out of range."""


class SramOverflowError(WseError):
    """A buffer does not fit in a PE's SRAM."""


class RouteError(WseError):
    """A route is malformed, or a wavelet arrived on a port its route does not accept."""


class FabricDeadlockError(WseError):
    """Work remains but nothing can ever move again (or nothing moved for the deadlock window)."""


class CycleLimitError(WseError):
    """The run reached max_cycles before finishing."""


class ProgramError(WseError, ValueError):
    """A PE program is malformed (unknown task, bad descriptor, register out of range)."""


class FloatingPointTrap(WseError):
    """A NaN was produced while the run was asked to trap on the first NaN."""
