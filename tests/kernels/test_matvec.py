"""kernels.matvec (kernels.gemv): results against the float64 reference, the documented layout
(result replicated down each column), cycles against the model, errors."""
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import wse
from kernels import collectives, matmul as G, matvec as V, reference
from wse.errors import ConfigError, SramOverflowError


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(m=st.integers(1, 60), n=st.integers(1, 60), batch=st.integers(0, 3),
       rows=st.integers(1, 8), cols=st.integers(1, 8),
       algorithm=st.sampled_from(V.ALGORITHMS), dtype=st.sampled_from(("float32", "float16")),
       accumulate=st.sampled_from(("float32", "float16")))
def test_gemv_matches_float64_reference_and_replicates_down_columns(m, n, batch, rows, cols,
                                                                    algorithm, dtype,
                                                                    accumulate):
    rng = np.random.default_rng(m * 100 + n)
    W = rng.standard_normal((m, n))
    x = rng.standard_normal(n) if batch == 0 else rng.standard_normal((n, batch))
    cfg = wse.WSE2.with_grid(rows=rows, cols=cols)
    tiles, report, p = V.run_tiles(W, x, cfg, algorithm, dtype, accumulate)
    # every PE of column j holds the same block y_j
    assert (tiles == tiles[:1]).all()
    y, _ = V.gemv(W, x, cfg, algorithm, dtype, accumulate)
    assert y.shape == ((m,) if batch == 0 else (m, batch))
    ref = reference.gemv(W, x)
    scale = np.abs(W) @ np.abs(x)
    tol = G.tolerance(dtype, accumulate, n, rows)
    assert (np.abs(y - ref) <= tol * scale + 1e-30).all()


@pytest.mark.parametrize("rows,cols,m,n,batch", [
    (4, 4, 64, 64, 1), (16, 16, 256, 256, 1), (32, 8, 128, 512, 1), (12, 12, 96, 96, 3),
    (40, 4, 64, 800, 1),
])
@pytest.mark.parametrize("algorithm", V.ALGORITHMS)
@pytest.mark.parametrize("costs", ["instruction costs", "zero-cost"])
def test_cycles_match_the_model(rows, cols, m, n, batch, algorithm, costs):
    """A cost model must be within 10%; this one (the tile product's loop
    nest, then the collective's own model) equals the engine, with the
    default instruction costs and with every one of them 0."""
    cfg = wse.WSE2.with_grid(rows=rows, cols=cols)
    if costs == "zero-cost":
        cfg = cfg.without_instruction_costs()
    rng = np.random.default_rng(0)
    y, report = V.gemv(rng.standard_normal((m, n)), rng.standard_normal((n, batch)), cfg,
                       algorithm)
    p = V.plan((m, n), batch, cfg, algorithm)
    model = V.model_cycles(p, cfg)
    assert report.cycles == model
    assert report.extra["gemv"]["model_cycles"] == model


def test_meshgemv_allreduce_is_cheaper_than_the_chain_on_a_tall_column():
    cfg = wse.WSE2.with_grid(rows=64, cols=2)
    W = np.ones((8, 640))
    cycles = {a: V.gemv(W, np.ones(640), cfg, a)[1].cycles for a in V.ALGORITHMS}
    assert cycles["meshgemv"] < cycles["pipeline"]
    # and the chain's cost grows with the column: (R-1)*(2*T_R + H) per reduce
    p = V.plan((8, 640), 1, cfg, "pipeline")
    assert V.allreduce_cycles(p, cfg) == collectives.cost("allreduce", "chain", 64, p.mt, cfg)


def test_overflow_names_the_smallest_grid():
    cfg = wse.WSE2.with_grid(rows=2, cols=2)
    with pytest.raises(SramOverflowError, match=r"smallest square grid that holds it is \d+ x"):
        V.gemv(np.ones((400, 400)), np.ones(400), cfg)


CFG = wse.WSE2.with_grid(rows=2, cols=2)


@pytest.mark.parametrize("W,x,kw,match", [
    (np.ones((3, 4)), np.ones(5), {}, "needs 4 entries"),
    (np.ones((3, 0)), np.ones(0), {}, "empty"),
    (np.ones((3, 4)), np.ones((4, 2, 2)), {}, "vector"),
    (np.ones((3, 4)), np.array([1, 2, np.nan, 4]), {}, "NaN"),
    (np.ones((3, 4)), np.ones(4), {"algorithm": "ring"}, "unknown GEMV algorithm"),
    (np.ones((3, 4)), np.ones(4), {"dtype": "int8"}, "dtype"),
])
def test_bad_input_gets_one_clear_error(W, x, kw, match):
    with pytest.raises(ConfigError, match=match):
        V.gemv(W, x, CFG, **kw)
