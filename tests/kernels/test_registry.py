"""kernels.registry: a kernel registered with one record shows up in `wse run`
(with its own option), in the fabric benchmark topic and in the kernel
strategies; the registry refuses clashing records."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import wse
from benchmarks import cli, suites
from kernels import registry, strategies
from wse import testing
from wse.errors import ConfigError

FACTOR = registry.Option("factor", 2.0, "the multiplier (default 2)", float)


def scale(x, cfg, factor: float = 2.0):
    """Every PE multiplies its vector by `factor`: the toy kernel."""
    prog = wse.Program(cfg)
    buf = prog.buffer("x", (x.shape[2],))
    prog.load(buf, np.asarray(x, np.float32))
    with prog.role("all").task("main", entry=True) as t:
        t.scale(buf.view(), buf.view(), factor)
    result = prog.run()
    return result.read(buf), result.report


def scale_reference(x, factor: float):
    return np.asarray(x, np.float64) * factor


def _inputs(cfg, settings, seed) -> registry.Call:
    x = np.random.default_rng(seed).standard_normal((cfg.rows, cfg.cols, settings["size"]))
    factor = settings["factor"]
    return registry.Call((x, cfg), {"factor": factor}, (x, factor), f"scale by {factor}")


def _example(cfg, length: int) -> registry.Call:
    return _inputs(cfg, {"size": length, "factor": 3.0}, 0)


@dataclasses.dataclass(frozen=True)
class ScaleProblem:
    cfg: wse.WaferConfig
    x: np.ndarray
    factor: float

    def reference(self) -> np.ndarray:
        return scale_reference(self.x, self.factor)


@st.composite
def scale_problems(draw, max_length: int = 4):
    cfg = draw(testing.wafer_configs(max_rows=3, max_cols=3))
    length = draw(st.integers(1, max_length))
    x = draw(testing.pe_vectors(cfg.rows, cfg.cols, length, max_magnitude=1e3))
    return ScaleProblem(cfg, x, draw(st.sampled_from((0.5, 2.0, -4.0))))


TOY = registry.Kernel("scale", scale, scale_reference, _inputs, (registry.SIZE, FACTOR),
                      problems=f"{__name__}:scale_problems", example=_example,
                      summary="every PE's vector times a factor")


@pytest.fixture
def toy(monkeypatch):
    """The registry with the toy kernel added (the real one is restored after the test)."""
    monkeypatch.setattr(registry, "KERNELS", dict(registry.KERNELS))
    return registry.register(TOY)


def test_wse_run_runs_a_registered_kernel_with_its_own_option(toy, capsys):
    code = cli.main(["run", "scale", "--grid", "2x3", "--size", "4", "--factor", "3"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "scale by 3.0" in out
    error_line = next(line for line in out.splitlines() if "max |error| vs float64" in line)
    assert float(error_line.split("│")[-2]) < 1e-6        # the float32 rounding of x
    for argv, flag in ((["run", "scale", "--m", "4"], "--m"),
                       (["run", "gemm", "--factor", "2"], "--factor")):
        assert cli.main(argv) == 2
        _, err = capsys.readouterr()
        assert err.count("\n") == 1 and f"{flag} does not apply" in err


def test_the_fabric_topic_maps_a_registered_kernel(toy, monkeypatch, tmp_path):
    monkeypatch.setattr(suites, "FABRIC_GRID", {True: 3})
    monkeypatch.setattr(suites, "FABRIC_LENGTH", {True: 5})
    monkeypatch.setattr(suites, "FABRIC_PLOTS", False)
    rows, _ = suites._run_fabric_maps(None, True, tmp_path)
    toy_rows = [r for r in rows if r["kernel"] == "scale by 3.0"]
    assert len(toy_rows) == 1
    assert toy_rows[0]["cycles"] > 0 and toy_rows[0]["cycles_formula"] is None


def test_the_strategies_draw_a_registered_kernels_problems(toy):
    drawn = []

    @settings(max_examples=10, deadline=None)
    @given(strategies.problems("scale", max_length=3))
    def check(problem):
        y, report = scale(problem.x, problem.cfg, problem.factor)
        testing.assert_close(y, problem.reference(), "float32")
        testing.check_report(report, cfg=problem.cfg)
        drawn.append(problem)
    check()
    assert drawn and all(isinstance(p, ScaleProblem) for p in drawn)


def test_a_name_registers_once(toy):
    with pytest.raises(ConfigError, match="already registered"):
        registry.register(TOY)


def test_an_option_name_means_one_option(toy):
    other = registry.Option("factor", 5.0, "another factor", float)
    with pytest.raises(ConfigError, match="--factor differs"):
        registry.register(dataclasses.replace(TOY, name="scale2", options=(other,)))


def test_an_unknown_kernel_is_a_config_error():
    with pytest.raises(ConfigError, match="unknown kernel 'fft'"):
        registry.get("fft")


def test_wse_run_runs_gemmt_and_its_strategy_draws_transposed_problems(capsys):
    """GEMM-T is a kernel of its own in the registry: `wse run gemmt` checks it
    against A @ B.T and prints the model's cycles beside the engine's; its
    strategy draws B as (N, K) on any grid."""
    code = cli.main(["run", "gemmt", "--grid", "3x2", "--m", "7", "--k", "5", "--n", "9"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "gemmt C(7x9) = A(7x5) B(9x5)^T" in out
    error_line = next(line for line in out.splitlines() if "max |error| vs float64" in line)
    assert float(error_line.split("│")[-2]) < 1e-2

    @settings(max_examples=5, deadline=None)
    @given(strategies.problems("gemmt", max_side=3))
    def check(problem):
        assert problem.transpose_b and problem.B.shape == (problem.N, problem.K)
        C, report = registry.get("gemmt").function(problem.A, problem.B, problem.cfg,
                                                   dtype=problem.dtype)
        testing.assert_close(C, problem.reference(), problem.dtype, terms=problem.K,
                             scale=problem.magnitude())
    check()
