"""Imported once by benchmarks.child's fork server, before it forks any
point: every point then inherits wse, the kernels and the engine's compiled
code already loaded."""
from benchmarks.child import warm_up

warm_up()
