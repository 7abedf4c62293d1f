"""benchmarks.prefill: the proxies hold the target's tiles, the per-phase fit
is exact on linear data, and a small sweep runs end to end against the
float64 reference."""
import pytest

import wse
from benchmarks import prefill as B
from kernels import models, prefill_layer as P


@pytest.mark.parametrize("side", [480, 600, 720])
def test_proxies_hold_the_targets_tiles(side):
    """Every PE of a proxy holds the target's positions, head features and
    d_ff features; its d_model chunk is the head's w (the target's, or one
    less where w rounds up to even)."""
    model = models.preset("llama3-8b")
    target = B.target_tiles(model, side)
    assert target["positions_per_row"] == -(-4096 // side)
    for heads in (1, 2, 3):
        proxy, n = B.proxy_model(target, heads)
        assert n == heads * target["head_columns"]
        got = B.target_tiles(proxy, n, seq=target["positions_per_row"] * n)
        for key in ("positions_per_row", "head_columns", "head_features_per_pe",
                    "d_ff_per_pe"):
            assert got[key] == target[key], key
        assert 0 <= got["d_model_per_pe"] - target["d_model_per_pe"] <= 1


def test_fit_is_exact_on_linear_phases_and_checks_the_largest():
    proxies = [{"proxy_side": n, "phases": {"a": 100 + 7 * n, "b": 3 * n}} for n in (10, 20, 30)]
    fit = B.fit_phases(proxies, 480)
    assert fit["phases"]["a"] == pytest.approx(100 + 7 * 480)
    assert fit["phases"]["b"] == pytest.approx(3 * 480)
    assert fit["fit_check"]["error"] == pytest.approx(0.0, abs=1e-12)
    proxies[2]["phases"]["a"] += 31
    assert B.fit_phases(proxies, 480)["fit_check"]["error"] < 0


def test_a_small_proxy_runs_against_the_reference():
    target = {"positions_per_row": 2, "d_model_per_pe": 4, "head_columns": 2,
              "head_features_per_pe": 4, "d_ff_per_pe": 4}
    row = B.run_proxy(target, 2, reserve=0, check=True)
    assert row["proxy_side"] == 4 and row["tokens"] == 8
    assert row["rel_err"] < 2e-2                    # fp16
    assert row["cycles"] == sum(row["phases"].values())
    assert {"q_proj", "attention", "down_proj"} <= set(row["phases"])


def test_proxy_sram_includes_the_targets_reserve():
    """The proxy runs beside the target region's resident weights: a reserve
    that leaves no room fails with one error; one that fits changes the SRAM
    left, not the cycles."""
    target = {"positions_per_row": 2, "d_model_per_pe": 4, "head_columns": 2,
              "head_features_per_pe": 4, "d_ff_per_pe": 4}
    with pytest.raises(wse.SramOverflowError):
        B.run_proxy(target, 1, reserve=wse.WSE2.sram_bytes - 64, check=False)
    model, n = B.proxy_model(target, 1)
    own = P.prefill_mapping(model, wse.WSE2.with_grid(rows=n, cols=n), 2 * n,
                            "float16").weight_bytes_per_layer
    small = B.run_proxy(target, 1, reserve=own, check=False)
    large = B.run_proxy(target, 1, reserve=own + 20000, check=False)
    assert small["cycles"] == large["cycles"]
    assert large["sram_bytes_per_pe_max"] == small["sram_bytes_per_pe_max"] + 20000
