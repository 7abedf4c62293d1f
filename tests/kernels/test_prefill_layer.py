"""kernels.prefill_layer: MeshGEMM projections (activation skew on the fabric,
resident weights placed aligned), GEMM-T attention, values against the float64
reference, and the mapping of a whole model onto wafer regions with the
resident weights' SRAM reserved."""
import numpy as np
import pytest

import wse
from kernels import matmul as G, models, prefill_layer as P, reference
from kernels import transformer as T
from kernels.decode_layer import decode_weight_bytes


def _setup(name="tiny", seq=8, seed=0, **changes):
    model = models.preset(name)
    if changes:
        model = model.replace(**changes)
    weights = models.random_weights(model, seed=seed, n_layers=1)
    x = np.random.default_rng(seed + 1).standard_normal((seq, model.d_model))
    return model, weights, x


def _rel(a, b):
    return float(np.abs(np.asarray(a) - b).max() / np.abs(b).max())


@pytest.mark.parametrize("name,n,seq,heads,dtype,tol", [
    ("tiny", 4, 8, 4, "float32", 1e-4), ("tiny", 5, 9, 2, "float32", 1e-4),
    ("tiny", 6, 11, 4, "float16", 2e-2), ("tiny-gpt2", 4, 7, 4, "float32", 1e-4)])
def test_prefill_layer_matches_the_reference(name, n, seq, heads, dtype, tol):
    """MeshGEMM projections and GEMM-T attention give the float64 layer; on
    5 x 5 with 2 heads (g = 2 does not divide 5) and 6 x 6 with 4 heads
    (g = 1) as well."""
    changes = {} if heads == 4 else {"n_heads": heads, "n_kv_heads": 1}
    model, weights, x = _setup(name, seq, **changes)
    cfg = wse.WSE2.with_grid(rows=n, cols=n)
    result, report = T.prefill(model, weights, x, cfg, dtype=dtype)
    assert _rel(result.hidden, reference.prefill(model, weights, x).hidden) < tol
    assert report.extra["transformer"]["attention"] == "gemm"
    assert report.extra["transformer"]["mapping"]["reserved_bytes"] > 0


def test_projections_are_meshgemm_with_the_activation_skew_charged():
    """Each projection phase is one kernels.gemm MeshGEMM of the activation
    tiles by the placed weight: its cycles and wavelet-hops are those of the
    same GEMM with skew="weights" (A's skew along the rows on the fabric,
    charged; B, resident, placed aligned), which moves less than skewing
    both and more than skewing neither."""
    model, weights, x = _setup(seq=8)
    cfg = wse.WSE2.with_grid(rows=4, cols=4)
    _, report = T.prefill(model, weights, x, cfg, dtype="float16")
    lay = P.prefill_layouts(model, cfg)
    phases = {ph["name"].split(".", 1)[1]: ph for ph in report.phases}
    st = 2
    for name, w_in, w_out in (("q_proj", lay.d.width, lay.attn.width),
                              ("up_proj", lay.d.width, lay.ff.width),
                              ("down_proj", lay.ff.width, lay.d.width)):
        A, W = np.ones((4 * st, 4 * w_in)), np.ones((4 * w_in, 4 * w_out))
        _, alone = G.gemm(A, W, cfg, algorithm="meshgemm", skew="weights")
        assert phases[name]["cycles"] == alone.cycles
        p = G.plan(4 * st, 4 * w_in, 4 * w_out, cfg, "meshgemm", "float16", skew="weights")
        assert phases[name]["wavelet_hops"] == alone.wavelet_hops == G.expected_wavelet_hops(p)
        both = G.expected_wavelet_hops(G.plan(4 * st, 4 * w_in, 4 * w_out, cfg, "meshgemm"))
        host = G.expected_wavelet_hops(G.plan(4 * st, 4 * w_in, 4 * w_out, cfg, "meshgemm",
                                              skew="host"))
        assert host < phases[name]["wavelet_hops"] < both
    assert [n for n in phases if n == "attention"]


def test_llama3_8b_mapping_on_480_600_720():
    """Which region holds which layers: a region keeps at most
    floor((SRAM - working) / weights per layer) layers; the model takes
    ceil(32 / that) regions, on ceil(that / regions per wafer) wafers (WSE-2:
    996 x 757 PEs), its layers spread evenly over the regions of those
    wafers."""
    model = models.preset("llama3-8b")
    for side in (480, 600, 720):
        cfg = wse.WSE2.with_grid(rows=side, cols=side)
        m = P.prefill_mapping(model, cfg, 4096, "float16")
        lay = P.prefill_layouts(model, cfg)
        assert m.weight_bytes_per_layer == decode_weight_bytes(model, lay, "float16")
        assert m.max_layers_per_region == (cfg.sram_bytes - m.working_bytes) \
            // m.weight_bytes_per_layer
        assert m.regions_per_wafer == (996 // side) * (757 // side)
        assert m.wafers == -(-(-(-32 // m.max_layers_per_region)) // m.regions_per_wafer)
        assert m.layers_per_region <= m.max_layers_per_region
        assert m.regions <= m.wafers * m.regions_per_wafer
        assert m.regions == -(-32 // m.layers_per_region)
        assert (m.regions - 1) * m.layers_per_region < 32
        assert m.reserved_bytes + m.working_bytes <= cfg.sram_bytes
    assert P.prefill_mapping(model, wse.WSE2.with_grid(rows=480, cols=480), 4096,
                             "float16").regions_per_wafer == 2


def test_resident_weights_leave_less_sram_and_overflow_with_one_error():
    """With reserve_weights the phases run beside the region's resident
    weights: on a PE with room for the working buffers but not for them and a
    layer's weights, prefill fails with one clear error; without the
    reserve it runs."""
    model, weights, x = _setup(seq=8)
    cfg = wse.WSE2.with_grid(rows=4, cols=4)
    m = P.prefill_mapping(model, cfg, 8, "float32")
    tight = cfg.replace(sram_bytes=m.working_bytes + m.weight_bytes_per_layer - 4)
    with pytest.raises(wse.SramOverflowError, match="resident weights"):
        T.prefill(model, weights, x, tight)
    result, _ = T.prefill(model, weights, x, tight, reserve_weights=False)
    assert _rel(result.hidden, reference.prefill(model, weights, x).hidden) < 1e-4
