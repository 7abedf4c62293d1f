"""The compile-time fix for Numba's inlining (wse/_numba_inline.py): it is in
place with the Numba we install, its copies are whole and independent, and
inlined code still computes the same."""
import numpy as np
import pytest
from numba import njit
from numba.core import inline_closurecall, ir
from numba.core.compiler import run_frontend

from wse import _numba_inline


def _branchy(a, n):
    total = 0.0
    for i in range(n):
        if a[i] > 0:
            total += a[i]
        else:
            total -= 2 * a[i]
    return total


def test_installed_with_this_numba():
    """A Numba whose inliner no longer copies through its `copy` module would
    silently lose the fix (and the engine would compile about twice as long)."""
    assert _numba_inline.install()
    assert isinstance(inline_closurecall.copy, _numba_inline._OneMemoPerCopy)


def _copy(shim, func_ir):
    return {label: shim.deepcopy(block) for label, block in func_ir.blocks.items()}


def test_a_copy_shares_one_new_scope_and_two_copies_share_nothing():
    func_ir = run_frontend(_branchy)
    assert len(func_ir.blocks) > 3
    source_scope = next(iter(func_ir.blocks.values())).scope
    shim = _numba_inline._OneMemoPerCopy()
    first, second = _copy(shim, func_ir), _copy(shim, func_ir)
    for blocks in (first, second):
        scopes = {id(b.scope) for b in blocks.values()}
        assert len(scopes) == 1 and id(source_scope) not in scopes
        for label, block in blocks.items():
            assert block is not func_ir.blocks[label]
            assert [str(s) for s in block.body] == [str(s) for s in func_ir.blocks[label].body]
    one = next(iter(first.values())).scope
    other = next(iter(second.values())).scope
    assert one is not other
    one.redefine("only_in_the_first", loc=ir.Loc("x", 0))
    assert "only_in_the_first" not in str(other.localvars._con)
    assert "only_in_the_first" not in str(source_scope.localvars._con)
    statements = [s for b in first.values() for s in b.body]
    originals = {id(s) for b in func_ir.blocks.values() for s in b.body}
    assert not any(id(s) in originals for s in statements)


@njit(inline='always')
def _inlined(a, n):
    return _branchy_jit(a, n) + 1.0


_branchy_jit = njit(inline='always')(_branchy)


@njit
def _caller(a):
    return _inlined(a, a.size) - _inlined(a[::-1].copy(), a.size // 2)


@pytest.mark.parametrize("seed", [0, 1])
def test_inlined_code_computes_the_same(seed):
    assert _numba_inline.install()          # whatever ran before
    a = np.random.default_rng(seed).standard_normal(37)
    assert _caller(a) == pytest.approx(_branchy(a, a.size) - _branchy(a[::-1].copy(), a.size // 2))
