"""wse.testing: its machine-level strategies draw what they promise,
assert_close holds to its documented tolerances, check_report catches each
broken invariant, and the example in the docs runs. (The kernel problem
strategies are tested in tests/kernels/test_strategies.py.)"""
from __future__ import annotations

import dataclasses
import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import wse
from wse import testing

ROOT = pathlib.Path(__file__).resolve().parent.parent
README_PATH = ROOT / "README.md"
"""The file whose "Testing your own kernel" section holds the example."""
FAST = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
NP = {"float32": np.float32, "float16": np.float16}


# ----------------------------------------------------------------------------
# The example in the docs
def example_code(path=README_PATH) -> str:
    """The first python code block under the heading "Testing your own kernel"."""
    text = path.read_text()
    section = text.split("## Testing your own kernel", 1)
    assert len(section) == 2, f"{path} has no 'Testing your own kernel' section"
    block = re.search(r"```python\n(.*?)```", section[1], re.S)
    assert block, f"{path}: no python code block in 'Testing your own kernel'"
    return block.group(1)


def test_readme_example():
    """Run the example as a script would be run: its test and its final print."""
    namespace = {"__name__": "__main__"}
    exec(compile(example_code(), f"{README_PATH}:example", "exec"), namespace)
    assert "add_west_neighbour" in namespace and "test_add_west_neighbour" in namespace


def test_readme_example_is_caught_when_wrong():
    """The example's test is a real check: a kernel that drops the neighbour's
    vector on the last column fails it."""
    namespace = {"__name__": "example"}
    exec(compile(example_code(), "example", "exec"), namespace)
    kernel = namespace["add_west_neighbour"]

    def broken(x, cfg):
        y, report = kernel(x, cfg)
        y = y.copy()
        if cfg.cols > 1:
            y[:, -1] = np.asarray(x, np.float32)[:, -1] + 1
        return y, report
    namespace["add_west_neighbour"] = broken
    with pytest.raises(AssertionError):
        namespace["test_add_west_neighbour"]()


def test_importing_wse_does_not_import_hypothesis():
    code = "import sys, wse; assert 'hypothesis' not in sys.modules; assert 'wse.testing' " \
           "not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


# ----------------------------------------------------------------------------
# Values
@pytest.mark.nojit
@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_awkward_values_are_exact_in_their_dtype(dtype):
    values = np.array(testing.AWKWARD_VALUES[dtype])
    assert np.array_equal(values.astype(NP[dtype]).astype(np.float64), values)
    assert np.signbit(values[values == 0]).any()                 # -0.0 is there
    tiny = np.finfo(NP[dtype]).smallest_subnormal
    assert (np.abs(values) == tiny).any()                        # so is the smallest subnormal


@FAST
@given(st.data(), st.sampled_from(["float32", "float16"]), st.sampled_from([None, 1.0, 1e3]))
def test_elements_are_exact_and_bounded(data, dtype, bound):
    v = data.draw(testing.elements(dtype, max_magnitude=bound))
    assert float(NP[dtype](v)) == v or (np.isnan(v) and bound is None)
    if bound is not None:
        assert abs(v) <= bound


def test_elements_reach_fp16_subnormals_and_negative_zero():
    from hypothesis import find
    sub = find(testing.elements("float16"), lambda v: 0 < abs(v) < 2.0 ** -14)
    assert 0 < abs(sub) < 2.0 ** -14
    neg = find(testing.elements("float16"), lambda v: v == 0 and np.signbit(v))
    assert np.signbit(neg)


@FAST
@given(testing.wafer_configs(max_rows=5, max_cols=3, vary_timing=True))
def test_wafer_configs_respect_the_bounds(cfg):
    assert 1 <= cfg.rows <= 5 and 1 <= cfg.cols <= 3
    assert 1 <= cfg.ramp_latency <= 3 and 1 <= cfg.hop_latency <= 2


@FAST
@given(st.data())
def test_routes_never_leave_the_grid_unless_asked(data):
    rows, cols = data.draw(testing.grids())
    for spec in data.draw(testing.routes(rows, cols)):
        prog = wse.Program(wse.WSE2.with_grid(rows=rows, cols=cols))
        prog.route_masks(prog.color(), spec.rx, spec.tx)      # raises if a route leaves


# ----------------------------------------------------------------------------
# assert_close
@pytest.mark.nojit
def test_tolerance_is_the_documented_formula():
    assert testing.tolerance("float32", 1) == (4 * 2.0 ** -24 * 2, 2 * 2.0 ** -149)
    rtol, atol = testing.tolerance("float16", 63)
    assert rtol == 4 * 2.0 ** -11 * 64 and atol == 64 * 2.0 ** -24


@pytest.mark.nojit
def test_assert_close_passes_inside_and_fails_outside_its_tolerance():
    ref = np.array([1.0, -2.0, 1e-3])
    rtol, _ = testing.tolerance("float32", 1)
    magnitude = np.abs(ref) + 2.0
    testing.assert_close(ref + 0.99 * rtol * magnitude, ref, "float32")
    with pytest.raises(AssertionError, match="1 of 3 entries"):
        testing.assert_close(ref + np.array([0, 0, 1.01]) * rtol * magnitude, ref, "float32")


@pytest.mark.nojit
def test_assert_close_judges_cancellation_against_the_whole_result():
    """An entry that cancels to ~0 may carry the error of the large terms."""
    ref = np.array([1000.0, 1e-6])
    actual = ref + [0.0, 1e-4]                      # 100x off in relative terms
    testing.assert_close(actual, ref, "float32", terms=16)
    with pytest.raises(AssertionError):             # but not elementwise
        testing.assert_close(actual, ref, "float32", terms=16, scale=np.abs(ref))


@pytest.mark.nojit
def test_assert_close_requires_the_same_nans_and_infinities():
    ref = np.array([np.nan, np.inf, -np.inf, 1.0])
    testing.assert_close(ref.copy(), ref, "float16")
    for wrong in ([0.0, np.inf, -np.inf, 1.0], [np.nan, -np.inf, -np.inf, 1.0],
                  [np.nan, np.inf, -np.inf, np.nan], [np.nan, np.inf, -np.inf, np.inf]):
        with pytest.raises(AssertionError):
            testing.assert_close(np.array(wrong), ref, "float16")
    with pytest.raises(AssertionError, match="shape"):
        testing.assert_close(np.zeros(3), np.zeros(4), "float32")


@settings(max_examples=40, deadline=None)
@given(st.data(), st.sampled_from(["float32", "float16"]), st.integers(1, 64))
def test_assert_close_accepts_a_float32_dot_product_rounded_to_dtype(data, dtype, K):
    """What a kernel does (products summed in float32, result rounded to dtype)
    is within the tolerance for terms=K, judged against |a| . |b| (the
    rigorous scale: a sum that cancels carries the rounding of its large
    partial sums, which |reference| alone does not bound)."""
    a = data.draw(testing.matrices((K,), dtype, max_magnitude=2.0))
    b = data.draw(testing.matrices((K,), dtype, max_magnitude=2.0))
    acc = np.float32(0)
    for x, y in zip(a.astype(np.float32), b.astype(np.float32)):
        acc = np.float32(acc + x * y)
    testing.assert_close(np.array([acc]).astype(NP[dtype]),
                         np.array([a.astype(np.float64) @ b.astype(np.float64)]), dtype, terms=K,
                         scale=np.array([np.abs(a.astype(np.float64)) @ np.abs(b.astype(np.float64))]))


# ----------------------------------------------------------------------------
# check_report
def one_hop_stream(B=5):
    """PE (0, 0) streams B wavelets to PE (1, 0): cycles = S + D + 2*T_R + H + B
    (start-up, datapath, two ramps, one hop, one wavelet a cycle)."""
    prog = wse.Program(wse.WSE2.with_grid(rows=1, cols=2))
    c = prog.color("east")
    prog.route(c, rx="RAMP", tx="E", where=prog.pes(cols=0))
    prog.route(c, rx="W", tx="RAMP", where=prog.pes(cols=1))
    x = prog.buffer("x", (B,))
    sender = prog.role("send", where=prog.pes(cols=0))
    with sender.task("main", entry=True) as t:
        t.mov(prog.fabout(c, B), x.view())
    receiver = prog.role("recv", where=prog.pes(cols=1))
    with receiver.task("main", entry=True) as t:
        t.mov(x.view(), prog.fabin(c, B))
    return prog


@pytest.fixture(scope="module")
def recorded():
    return one_hop_stream().run(record_links=True, record_deliveries=True)


@pytest.mark.nojit
def test_check_report_makes_every_check_on_a_recorded_run(recorded):
    assert testing.check_report(recorded) == ("counts", "sram", "rate", "bound", "links",
                                              "deliveries", "paths")
    cfg = recorded.program.cfg
    assert recorded.report.cycles == cfg.vector_startup_cycles + cfg.datapath_latency \
        + 2 * cfg.ramp_latency + cfg.hop_latency + 5


@pytest.mark.nojit
def test_check_report_checks_what_it_can_without_events():
    result = one_hop_stream().run()
    assert testing.check_report(result.report) == ("counts", "sram", "rate", "bound")


def tampered(result, **changes):
    return dataclasses.replace(result.report, **changes)


def test_check_report_bound_is_tight_for_a_one_hop_stream(recorded):
    """The stream takes exactly the bound S + D + 2*T_R + H + B: one cycle less fails."""
    report = recorded.report
    with pytest.raises(AssertionError, match=f"at least {report.cycles}"):
        testing.check_report(tampered(recorded, cycles=report.cycles - 1), cfg=recorded.program.cfg)


def test_check_report_catches_each_broken_invariant(recorded):
    cfg, program, report = recorded.program.cfg, recorded.program, recorded.report

    def fails(match, **changes):
        with pytest.raises(AssertionError, match=match):
            testing.check_report(tampered(recorded, **changes), cfg=cfg, program=program)

    links = report.link_wavelets.copy()
    links[0, 0, 1] += 1
    fails("wavelet_hops", link_wavelets=links)
    edge = report.link_wavelets.copy()
    edge[0, 1, 1] = 1                                  # East out of the East-most PE
    fails("edge", link_wavelets=edge, wavelet_hops=report.wavelet_hops + 1)
    fails("bytes, more than", sram_peak_bytes=report.sram_peak_bytes + cfg.sram_bytes)
    fails("carried .* wavelets in", cycles=4)
    events = report.link_events.copy()
    events[1, 0] = events[0, 0]                        # two wavelets on one link in one cycle
    fails("two wavelets in one cycle", link_events=events)
    deliveries = report.delivery_events.copy()
    deliveries[-1, 3] = 99                             # an id nobody injected
    fails("delivered ids", delivery_events=deliveries)
    ramp_out = report.ramp_out.copy()
    ramp_out[0, 1] += 1
    ramp_out[0, 0] -= 1
    fails("ramp_out", ramp_out=ramp_out)


def test_check_report_replays_routes_and_catches_a_wavelet_off_its_route(recorded):
    """Against a program whose route keeps the wavelets at the sender, the
    recorded run (which sent them East) fails the path check."""
    other = one_hop_stream()
    rx, tx = other.routes_of(other.colors[0])
    tx[0, 0] = 1 << 4                                   # RAMP only: back to the sender
    with pytest.raises(AssertionError, match="did not follow its route"):
        testing.check_report(recorded.report, program=other)
