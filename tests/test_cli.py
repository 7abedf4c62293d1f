"""The `wse` command (benchmarks.cli): exit codes, one-line errors, --help, info, run,
compare, trace, and tables that fit the terminal."""
from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest

import kernels
import wse
from benchmarks import cli
from kernels import registry


def run_cli(capsys, *argv):
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _subcommands():
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return parser, sub.choices


# ----------------------------------------------------------------------- light import
@pytest.mark.nojit
def test_import_wse_and_the_cli_parser_load_no_heavy_package():
    code = ("import sys, wse; assert 'kernels' not in sys.modules; import benchmarks.cli; "
            "benchmarks.cli.build_parser(); "
            "print(sorted(m for m in ('rich', 'matplotlib', 'numba', 'hypothesis') "
            "if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True)
    assert done.stdout.strip() == "[]"


# ----------------------------------------------------------------------- help
@pytest.mark.nojit
def test_help_documents_every_option_of_every_command(capsys):
    parser, commands = _subcommands()
    code, out, _ = run_cli(capsys, "--help")
    assert code == 0
    for name in commands:
        assert name in out
    for name, sub in commands.items():
        code, out, _ = run_cli(capsys, name, "--help")
        assert code == 0
        for action in sub._actions:
            for option in action.option_strings:
                assert option in out, f"wse {name} --help does not mention {option}"
            if action.option_strings and action.help != argparse.SUPPRESS:
                assert action.help, f"wse {name} {action.option_strings} has no help text"


@pytest.mark.nojit
def test_console_script_exit_codes():
    ok = subprocess.run(["wse", "--help"], capture_output=True, text=True)
    assert ok.returncode == 0 and "compare" in ok.stdout
    bad = subprocess.run(["wse", "run", "gemm", "--grid", "16"], capture_output=True, text=True)
    assert bad.returncode == 2
    assert bad.stderr.strip().count("\n") == 0 and "ROWSxCOLS" in bad.stderr


# ----------------------------------------------------------------------- bad arguments
BAD = [
    (("run",), "KERNEL"),
    (("run", "fft"), "invalid choice"),
    (("run", "allreduce", "--grid", "2by4"), "ROWSxCOLS"),
    (("run", "allreduce", "--grid", "0x4"), "at least one row"),
    (("run", "allreduce", "--grid", "2000x2000"), "does not fit"),
    (("run", "allreduce", "--preset", "WSE9"), "unknown preset"),
    (("run", "allreduce", "--size", "0"), "positive integer"),
    (("run", "allreduce", "--dtype", "int8"), "invalid choice"),
    (("run", "shift", "--along", "xy"), "x or y"),
    (("run", "gemm", "--size", "5"), "--size does not apply to gemm"),
    (("run", "allreduce", "--m", "8"), "--m does not apply to allreduce"),
    (("run", "gemv", "--along", "y"), "--along does not apply to gemv"),
    (("run", "attention", "--model", "tiny"), "--model does not apply to attention"),
    (("compare", "--gpus", "8xQ100"), "unknown GPU"),
    (("compare", "--gpus", "H100"), "8xH100"),
    (("compare", "--model", "gpt5"), "unknown model preset"),
    (("compare", "--phase", "train"), "invalid choice"),
    (("compare", "--model", "tiny", "--gpus", "2xH100", "--tp", "4"), "exceeds"),
    (("compare", "--model", "tiny", "--seq", "100000"), "max_seq_len"),
    (("compare", "--model", "llama3-70b", "--gpus", "1xH100", "--seq", "8"), "GpuMemoryError"),
    (("bench", "--suite", "nonsense"), "unknown suite or topic"),
    (("bench", "--suite", "quick", "full"), "not both"),
    (("bench", "--jobs", "0", "gpu_calibration"), "--jobs must be at least 1"),
    (("info", "WSE9"), "unknown preset"),
    (("frobnicate",), "invalid choice"),
]


@pytest.mark.nojit
@pytest.mark.parametrize("argv,expected", BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_arguments_print_one_line_and_exit_2(capsys, argv, expected):
    code, out, err = run_cli(capsys, *argv)
    assert code == 2
    assert out == ""
    assert err.strip() and err.strip().count("\n") == 0, err
    assert expected in err


# ----------------------------------------------------------------------- info
@pytest.mark.nojit
@pytest.mark.parametrize("preset", ["WSE2", "wse-3"])
def test_info_lists_every_parameter_with_its_value_and_source(capsys, preset):
    code, out, _ = run_cli(capsys, "info", preset)
    assert code == 0
    cfg = wse.WSE2 if preset == "WSE2" else wse.WSE3
    flat = " ".join(out.split())
    for name, value, _doc in cfg.fields_with_docs():
        assert name in out
        shown = f"{value:.4g}" if isinstance(value, float) else str(value)
        assert shown in flat, (name, shown)
    sram_line = next(line for line in out.splitlines() if "sram_bytes" in line)
    assert "49152" in sram_line and "HC34" in sram_line
    queue_line = next(line for line in out.splitlines() if " queue_depth" in line)
    assert "ASSUMPTION" in queue_line
    assert f"{cfg.num_pes:,}" in out                      # the derived PE count


# ----------------------------------------------------------------------- run
def _printed(out: str, figure: str) -> str:
    line = next(line for line in out.splitlines() if figure in line)
    return line.split("│")[-2].strip()


def test_run_allreduce_prints_the_same_report_as_the_api(capsys):
    code, out, err = run_cli(capsys, "run", "allreduce", "--grid", "2x4", "--size", "8")
    assert code == 0, err
    cfg = wse.WSE2.with_grid(rows=2, cols=4)
    x = np.random.default_rng(0).standard_normal((2, 4, 8))
    _, report = kernels.allreduce(x, cfg, along="x")
    assert _printed(out, "cycles") == f"{report.cycles:,}"
    assert _printed(out, "wavelet-hops") == f"{report.wavelet_hops:,}"
    assert float(_printed(out, "max |error| vs float64")) < 1e-5


def test_run_json_and_heatmaps(capsys, tmp_path):
    code, out, err = run_cli(capsys, "run", "shift", "--grid", "3x4", "--size", "4",
                             "--json", str(tmp_path / "r.json"), "--plot", str(tmp_path))
    assert code == 0, err
    saved = json.loads((tmp_path / "r.json").read_text())
    assert saved["grid"] == "3x4"
    assert f"{saved['cycles']:,}" == _printed(out, "cycles")
    assert np.array(saved["link_wavelets"]).shape == (3, 4, 4)
    for png in ("shift_links.png", "shift_busy.png"):
        assert (tmp_path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _replace_kernel(monkeypatch, name: str, function):
    """The registry's record of `name`, running `function` instead."""
    record = dataclasses.replace(registry.get(name), function=function)
    monkeypatch.setitem(registry.KERNELS, name, record)


def test_run_rejects_options_the_kernel_does_not_take(capsys, monkeypatch):
    def plain(x, cfg, along="x"):
        raise AssertionError("must not run")
    _replace_kernel(monkeypatch, "shift", plain)
    for argv, expected in ((("--dtype", "float16"), "no dtype parameter"),
                           (("--algorithm", "ring"), "no algorithm parameter")):
        code, out, err = run_cli(capsys, "run", "shift", "--grid", "2x2", *argv)
        assert code == 2 and expected in err and err.count("\n") == 1


@pytest.mark.nojit
def test_wse_run_gemm_size_names_the_option_in_one_line():
    done = subprocess.run(["wse", "run", "gemm", "--size", "5"], capture_output=True, text=True)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.count("\n") == 1 and "--size" in done.stderr


def _doubling_kernel(x, cfg, along="x"):
    """Every PE doubles its vector (one task per PE); it knows nothing of tracing."""
    prog = wse.Program(cfg)
    buf = prog.buffer("x", (x.shape[2],))
    prog.load(buf, np.asarray(x, np.float32))
    everyone = prog.role("all")
    with everyone.task("main", entry=True) as t:
        t.scale(buf.view(), buf.view(), 2.0)
    result = prog.run()
    return result.read(buf), result.report


def test_trace_writes_one_slice_per_task_run(capsys, monkeypatch, tmp_path):
    _replace_kernel(monkeypatch, "shift", _doubling_kernel)
    path = tmp_path / "trace.json"
    # shift's float64 reference is a roll, not a doubling: the error row shows it, the
    # trace is what this test is about
    code, out, err = run_cli(capsys, "run", "shift", "--grid", "2x3", "--size", "4",
                             "--trace", str(path))
    assert code == 0, err
    trace = json.loads(path.read_text())
    slices = [e for e in trace["traceEvents"] if e["ph"] == "X"]
    assert len(slices) == 6                                   # one task on each of 6 PEs
    assert {e["tid"] for e in slices} == set(range(6))
    assert re.search(rf"wrote {len(slices)} task slices", out)


# ----------------------------------------------------------------------- compare
COMPARE_TINY = ("compare", "--model", "tiny", "--phase", "prefill", "--seq", "8",
                "--gpus", "2xH100", "--grid", "4x4")


def _sharded_layer_seconds(tp: int) -> float:
    model = kernels.models.preset("tiny")
    weights = kernels.models.random_weights(model, seed=0, n_layers=1)
    x = np.random.default_rng(0).standard_normal((8, model.d_model)).astype(np.float32)
    cluster = wse.gpu.Cluster(wse.gpu.H100, n_gpus=2)
    return kernels.sharded.prefill(model, weights, x, cluster, tp=tp)[1].seconds


def test_compare_gpu_side_is_the_sharded_layer_times_the_layer_count(capsys, tmp_path,
                                                                       monkeypatch):
    monkeypatch.setattr(cli, "_optional_module", lambda name: None)   # no wafer side yet
    out_json = tmp_path / "cmp.json"
    code, out, err = run_cli(capsys, *COMPARE_TINY, "--json", str(out_json),
                             "--plot", str(tmp_path))
    assert code == 0, err
    saved = json.loads(out_json.read_text())
    layers = kernels.models.preset("tiny").n_layers
    time_row = next(r for r in saved["rows"] if r["metric"] == "time")
    assert saved["tp"] == 2 and saved["layers"] == layers
    assert time_row["gpu"] == pytest.approx(_sharded_layer_seconds(2) * layers * 1e3)
    assert time_row["wafer"] is None and saved["wafer_layer_report"] is None
    assert "wafer side: not available yet" in " ".join(out.split())
    png = tmp_path / "compare_tiny_prefill.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


class _FakeTransformer:
    """Stands in for kernels.transformer: a wafer layer that takes 1100 cycles."""

    def __init__(self, report):
        self.report, self.calls = report, []

    def prefill(self, model, weights, x, target):
        self.calls.append((weights.n_layers, x.shape, target))
        return None, self.report

    def compare(self, wafer, gpu, tokens=1):
        return [{"metric": "latency", "wafer": wafer.seconds, "gpu": gpu.seconds}]


def test_compare_wafer_side_goes_through_kernels_transformer(capsys, tmp_path, monkeypatch):
    cfg = wse.WSE2.with_grid(rows=4, cols=4)
    zeros = np.zeros((4, 4), np.int64)
    report = wse.RunReport(cfg.name, 4, 4, cfg.clock_hz, 1100, 10, np.zeros((4, 4, 4)), zeros,
                           zeros, zeros, zeros, zeros, zeros, 0, 0, 2e-6, {})
    fake = _FakeTransformer(report)
    monkeypatch.setattr(cli, "_optional_module", lambda name: fake)
    out_json = tmp_path / "cmp.json"
    code, out, err = run_cli(capsys, *COMPARE_TINY, "--json", str(out_json))
    assert code == 0, err
    layers = kernels.models.preset("tiny").n_layers
    assert fake.calls == [(1, (8, 64), cfg)]                 # one layer, on the 4x4 region
    saved = json.loads(out_json.read_text())
    time_row = next(r for r in saved["rows"] if r["metric"] == "time")
    assert time_row["wafer"] == pytest.approx(1100 / cfg.clock_hz * layers * 1e3)
    energy_row = next(r for r in saved["rows"] if r["metric"] == "energy")
    assert energy_row["wafer"] == pytest.approx(2e-6 * layers)
    latency = next(line for line in out.splitlines() if "latency" in line)
    assert f"{1100 / cfg.clock_hz:.4g}" in latency          # compare() got the layer's report


# ----------------------------------------------------------------------- bench
@pytest.mark.nojit
def test_bench_list_names_every_topic(capsys):
    from benchmarks import suites
    code, out, _ = run_cli(capsys, "bench", "--list")
    assert code == 0
    for name in suites.TOPICS:
        assert name in out


def test_trace_of_a_real_multi_run_kernel(capsys, tmp_path):
    path = tmp_path / "allreduce.json"
    code, out, err = run_cli(capsys, "run", "allreduce", "--grid", "2x4", "--size", "8",
                             "--trace", str(path))
    assert code == 0, err
    slices = [e for e in json.loads(path.read_text())["traceEvents"] if e["ph"] == "X"]
    assert len(slices) >= 8


def test_bench_table_fits_an_80_column_terminal(capsys, monkeypatch, tmp_path):
    """COLUMNS=80 wse bench gemm: whole headers on one line, the key columns
    first; every column still in the CSV."""
    from benchmarks import gemm
    path = pathlib.Path(__file__).resolve().parent.parent / "benchmarks/results/gemm.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    monkeypatch.setattr(gemm, "run", lambda quick=True: rows)
    monkeypatch.setattr(gemm, "plot", lambda rows, out_dir: [])
    monkeypatch.setenv("COLUMNS", "80")
    code, out, err = run_cli(capsys, "bench", "gemm", "--out", str(tmp_path), "--no-progress")
    assert code == 0, err
    lines = out.splitlines()
    assert max(map(len, lines)) <= 80
    top = next(i for i, line in enumerate(lines) if line.startswith("┏"))
    assert lines[top + 2].startswith("┡")                  # the header is one line
    headers = [cell.strip() for cell in lines[top + 1].strip("┃").split("┃")]
    assert headers[:3] == ["algorithm", "size", "grid"]
    assert {"cycles", "model_cycles"} <= set(headers) and set(headers) <= set(rows[0])
    assert len(headers) >= 5
    with open(tmp_path / "gemm.csv") as f:
        assert set(next(csv.reader(f))) == {k for r in rows for k in r}
