"""kernels.strategies: the kernel problems draw what they promise and their
references agree with kernels.reference. (Reading the registry: see
tests/kernels/test_registry.py.)"""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings

from kernels import collectives, reference, strategies
from wse import testing
from wse.errors import ConfigError

FAST = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
NP = {"float32": np.float32, "float16": np.float16}


@FAST
@given(strategies.collective_problems())
def test_collective_problems_fit_their_grid_and_match_the_reference(p):
    rows, cols, B = p.x.shape
    assert (rows, cols) == (p.cfg.rows, p.cfg.cols) and 1 <= B <= 8
    if p.along == "xy":
        assert 0 <= p.root[0] < cols and 0 <= p.root[1] < rows
    else:
        assert 0 <= p.root < (cols if p.along == "x" else rows)
    np.testing.assert_array_equal(p.reference("reduce"), reference.reduce(p.x, p.along, p.op))
    np.testing.assert_array_equal(p.reference("allreduce"),
                                  reference.allreduce(p.x, p.along, p.op))
    np.testing.assert_array_equal(p.reference("broadcast"),
                                  reference.broadcast(p.x, p.along, p.root))


@FAST
@given(strategies.gemm_problems(transpose_b=(False, True)))
def test_gemm_problems_tile_evenly_fit_sram_and_match_the_reference(p):
    assert p.A.shape == (p.M, p.K) and p.A.dtype == NP[p.dtype]
    assert p.B.shape == ((p.N, p.K) if p.transpose_b else (p.K, p.N))
    assert p.cfg.rows == p.cfg.cols
    assert p.M % p.cfg.rows == 0 and p.K % p.cfg.rows == 0 and p.N % p.cfg.cols == 0
    assert strategies.gemm_sram_bytes(p.M, p.K, p.N, p.cfg.rows, p.cfg.cols, p.dtype) \
        <= p.cfg.sram_bytes // 2
    # two float64 sums in different orders: each within K ulps of |A| @ |B|
    # (a relative tolerance alone fails where terms cancel to 0 in one order
    # and leave a rounding residue in the other)
    rounding = 2 * p.K * np.finfo(np.float64).eps * p.magnitude()
    assert (np.abs(p.reference() - reference.matmul(p.A, p.B, p.transpose_b)) <= rounding).all()
    assert (p.magnitude() >= np.abs(p.reference()) - 1e-12).all()


@FAST
@given(strategies.gemv_problems(max_batch=3))
def test_gemv_problems_match_the_reference(p):
    assert p.W.shape[0] % p.cfg.rows == 0 and p.W.shape[1] % p.cfg.cols == 0
    assert p.x.shape[0] == p.K and p.x.ndim in (1, 2)
    np.testing.assert_allclose(p.reference(), reference.gemv(p.W, p.x))


@FAST
@given(strategies.attention_problems(heads=(None, 2, 4), groups=(1, 2)))
def test_attention_problems_match_the_reference(p):
    sq, d = p.Q.shape[-2:]
    sk = p.K.shape[-2]
    assert p.V.shape == p.K.shape and p.K.shape[-1] == d and (sq <= sk or not p.causal)
    if p.Q.ndim == 3:
        assert p.Q.shape[0] % p.K.shape[0] == 0
    assert sq % p.cfg.rows == 0 and sk % p.cfg.rows == 0 and d % p.cfg.cols == 0
    np.testing.assert_allclose(p.reference(), reference.attention(p.Q, p.K, p.V, p.causal),
                               rtol=1e-12, atol=1e-12)


# ----------------------------------------------------------------------------
# A kernel on its problems, checked with wse.testing
@settings(max_examples=15, deadline=None)
@given(strategies.collective_problems(ops=("sum",), vary_timing=True))
def test_flood_broadcast_with_the_toolkit(p):
    """The flood broadcast copies exactly, on any latencies and queue depths."""
    y, report = collectives.broadcast(p.x, p.cfg, along=p.along, root=p.root)
    testing.assert_close(y, p.reference("broadcast"), "float32", rtol=0.0)
    testing.check_report(report, cfg=p.cfg)


def test_problems_of_a_kernel_without_a_generator_is_a_config_error():
    with pytest.raises(ConfigError, match="no problem generator"):
        strategies.problems("layer")
