"""Compile time of Numba's inlining (inline='always'), made linear.

Numba inlines a function by copying its IR block by block, each block with
its own `copy.deepcopy`; a block refers to the function's scope, which holds
every variable of the function, so every block copies the whole scope again:
the work grows as blocks x variables, twice per call site (a known cost:
numba/numba issue 8989, "Spurious deep copies in inlining"). The engine's
step functions are large, since each holds what it inlined itself, so this
copying was most of the engine's compile time (figures in docs/engine.md,
"Compile time").

Here the blocks of one copy share one memo, so the scope is copied once and
every block of the copy refers to that one copy, as every block of the
source refers to one scope. The copied statements are the same; Numba gives
the inlined blocks the caller's scope right after. Where
numba.core.inline_closurecall does not use the `copy` module as expected,
install() changes nothing and says so."""
from __future__ import annotations

import copy

from numba.core import inline_closurecall, ir


class _OneMemoPerCopy:
    """Stands in for the `copy` module inside numba.core.inline_closurecall.
    Consecutive blocks with the same scope share one memo; a block already in
    it (the same IR copied again) or a block of another scope starts a new
    memo, so two copies never share an object."""

    def __init__(self):
        self._memo: dict = {}
        self._scope = None

    def deepcopy(self, x, memo=None):
        if memo is not None or not isinstance(x, ir.Block):
            return copy.deepcopy(x, memo)
        if x.scope is not self._scope or id(x) in self._memo:
            self._memo = {}
            self._scope = x.scope
        return copy.deepcopy(x, self._memo)

    def __getattr__(self, name):
        return getattr(copy, name)


def install() -> bool:
    """Put the shared-memo copy in place (once); whether it is in place."""
    current = getattr(inline_closurecall, "copy", None)
    if isinstance(current, _OneMemoPerCopy):
        return True
    if current is not copy:
        return False
    inline_closurecall.copy = _OneMemoPerCopy()
    return True
