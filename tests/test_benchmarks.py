"""Benchmark suites: a tiny suite writes JSON, CSV and real PNG plots; missing and
failing topics are reported without stopping the suite."""
from __future__ import annotations

import csv
import io
import json
import math
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest

import wse
from benchmarks import child, cli, gemm, plots, scaling, suites
from kernels import matmul


def _broken(module, quick, out_dir):
    raise RuntimeError("this topic always fails")


@pytest.fixture
def tiny(monkeypatch):
    """Every built-in topic at toy size, plus a topic whose module does not exist
    and one that raises."""
    monkeypatch.setattr(suites, "ENGINE_SIZE", {True: 8, False: 8})
    monkeypatch.setattr(suites, "FABRIC_GRID", {True: 4, False: 4})
    monkeypatch.setattr(suites, "FABRIC_LENGTH", {True: 8, False: 8})
    monkeypatch.setattr(suites, "FABRIC_KERNELS", ("shift",))
    monkeypatch.setattr(scaling, "QUICK_POINTS", [(2, 2, 8)])
    topics = dict(suites.TOPICS)
    topics["ghost"] = suites.Topic("ghost", "benchmarks.no_such_topic_yet", "not written")
    topics["broken"] = suites.Topic("broken", "benchmarks.suites", "always fails", _broken)
    monkeypatch.setattr(suites, "TOPICS", topics)
    return ["engine", "scaling", "fabric", "gpu_calibration", "ghost", "broken"]


def _is_real_plot(path) -> bool:
    import matplotlib.image
    image = matplotlib.image.imread(path)
    height, width = image.shape[:2]
    # a real figure: a sensible size and more than one colour
    return height > 200 and width > 200 and float(np.std(image[..., :3])) > 0.02


def test_tiny_suite_writes_json_csv_and_plots(tmp_path, tiny):
    out = io.StringIO()
    from rich.console import Console
    results = suites.run_suite(tiny, True, tmp_path, console=Console(file=out, width=120),
                               show_progress=False)
    status = {r.name: r.status for r in results}
    assert status == {"engine": "ok", "scaling": "ok", "fabric": "ok", "gpu_calibration": "ok",
                      "ghost": "not available", "broken": "error"}
    for r in results:
        if r.status != "ok":
            continue
        record = json.loads((tmp_path / f"{r.name}.json").read_text())
        assert record["package"]["version"] == wse.__version__
        assert record["machine"]["cpu_count"] == os.cpu_count()
        assert record["machine"]["platform"]
        assert record["config"]["quick"] is True and record["config"]["topic"] == r.name
        with open(tmp_path / f"{r.name}.csv") as f:
            table = list(csv.DictReader(f))
        assert len(table) == len(record["rows"]) > 0
        assert list(table[0]) == list(record["rows"][0])
        pngs = [f for f in r.files if str(f).endswith(".png")]
        assert pngs, f"{r.name} made no plot"
        for png in pngs:
            assert _is_real_plot(png), png
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert [t["status"] for t in summary["topics"]] == [status[n] for n in tiny]
    assert "this topic always fails" in (tmp_path / "broken.error.txt").read_text()
    printed = out.getvalue()
    assert "benchmarks.no_such_topic_yet does not exist yet" in " ".join(printed.split())


def test_scaling_rows_follow_the_shift_cost_and_grow_with_work(monkeypatch):
    rows = scaling.run(points=[(4, 4, 8), (2, 2, 8)])
    assert [r["pes"] for r in rows] == [4, 16]               # smallest work first
    for r in rows:
        assert r["cycles"] == r["cycles_formula"]
        assert r["pe_cycles"] == r["pes"] * r["cycles"]
        assert r["rss_growth_mb"] >= 0 and r["engine_wall_s"] > 0
    assert rows[1]["pe_cycles"] > rows[0]["pe_cycles"]


def test_fabric_cycles_match_the_kernels_cost_models(tmp_path, monkeypatch):
    monkeypatch.setattr(suites, "FABRIC_GRID", {True: 5})
    monkeypatch.setattr(suites, "FABRIC_LENGTH", {True: 6})
    monkeypatch.setattr(suites, "FABRIC_PLOTS", False)      # plots: see the suite test
    rows, pngs = suites._run_fabric_maps(None, True, tmp_path)
    checked = [r for r in rows if r["cycles_formula"] is not None]
    assert len(checked) >= 3
    for r in checked:
        if r["kernel"].startswith("gemm"):     # the skew on the fabric: a documented bound
            bound = matmul.FABRIC_SKEW_MODEL_BOUND
            assert abs(r["cycles"] - r["cycles_formula"]) <= bound * r["cycles_formula"]
        else:
            assert r["cycles"] == r["cycles_formula"], r["kernel"]
    assert pngs == []


def test_resolve_suites_and_topics():
    assert suites.resolve([]) == ([t for t in suites.TOPICS if t != "memory"], True)
    assert suites.resolve(["full"]) == (list(suites.TOPICS), False)
    assert suites.resolve(["scaling", "engine", "scaling"]) == (["scaling", "engine"], None)
    with pytest.raises(ValueError, match="unknown suite or topic"):
        suites.resolve(["nope"])
    with pytest.raises(ValueError, match="not both"):
        suites.resolve(["quick", "full"])


def test_wse_bench_command_writes_results(tmp_path, capsys):
    code = cli.main(["bench", "--suite", "gpu_calibration", "--out", str(tmp_path),
                     "--no-progress"])
    assert code == 0
    record = json.loads((tmp_path / "gpu_calibration.json").read_text())
    assert record["config"]["command"] == (
        f"wse bench --suite gpu_calibration --out {tmp_path} --no-progress")
    assert _is_real_plot(tmp_path / "gpu_calibration.png")


def test_several_jobs_run_the_speed_topics_alone_and_say_what_ran_beside(tmp_path, monkeypatch):
    """With jobs=2 the engine topic (marked alone) runs in this process before
    the others start; the other two run in worker processes and come back as
    their JSON holds them; every topic's JSON and the summary name what ran
    beside it, and the engine topic's list is empty."""
    from rich.console import Console
    monkeypatch.setattr(suites, "ENGINE_SIZE", {True: 8, False: 8})
    names = ["gpu_calibration", "engine", "validation"]
    results = suites.run_suite(names, True, tmp_path, console=Console(file=io.StringIO()),
                               show_progress=False, jobs=2)
    by_name = {r.name: r for r in results}
    assert [r.name for r in results] == names
    assert all(r.status == "ok" for r in results), [(r.name, r.message) for r in results]
    engine = by_name["engine"]
    assert engine.beside == []
    assert all(engine.span[1] <= by_name[n].span[0] for n in ("gpu_calibration", "validation"))
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["config"]["jobs"] == 2
    for t in summary["topics"]:
        assert t["ran_beside"] == by_name[t["topic"]].beside
        record = json.loads((tmp_path / f"{t['topic']}.json").read_text())
        assert record["ran_beside"] == t["ran_beside"]
        if t["topic"] != "engine":
            assert record["rows"] == by_name[t["topic"]].rows
    with pytest.raises(ValueError, match="at least 1"):
        suites.run_suite(names, True, tmp_path, jobs=0)


def test_workers_take_the_longest_topics_first(tmp_path):
    """By the seconds of the last summary in the output folder; topics it does
    not name first, in the order given."""
    names = ["a", "b", "c", "d"]
    assert suites._longest_first(names, tmp_path) == names
    (tmp_path / "summary.json").write_text(json.dumps({"topics": [
        {"topic": "a", "seconds": 1.0}, {"topic": "b", "seconds": 30.0},
        {"topic": "c", "seconds": 5.0}]}))
    assert suites._longest_first(names, tmp_path) == ["d", "b", "c", "a"]


def test_the_layer_plot_draws_each_case_and_mode_apart(tmp_path):
    """The quick transformer topic has two models: a panel never mixes them."""
    from benchmarks import transformer
    rows = [{"case": case, "mode": mode, "machine": machine, "tokens": 1, "seconds": 1e-5}
            for case, mode in (("tiny", "prefill"), ("tiny", "decode"),
                               ("llama3-8b layer", "decode"))
            for machine in ("wafer 8x8", "8xH100-SXM5-80GB")]
    rows.append({"case": "relayout proxy", "mode": "relayout", "machine": "wafer 8x8"})
    assert transformer.layer_panels(rows) == [("tiny", "prefill"), ("tiny", "decode"),
                                              ("llama3-8b layer", "decode")]
    made = transformer.plot(rows, tmp_path)
    assert made and all(_is_real_plot(path) for path in made)


def test_python_m_benchmarks_is_the_bench_command():
    done = subprocess.run([sys.executable, "-m", "benchmarks", "--list"], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0
    assert "scaling" in done.stdout and "engine" in done.stdout
    bad = subprocess.run([sys.executable, "-m", "benchmarks", "--suite", "nope"],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1


def test_rows_table_turns_a_wide_table_on_its_side():
    from rich.console import Console
    wide = [{f"a_rather_long_column_name_{i}": 1.0 * i for i in range(12)}]
    console = Console(file=io.StringIO(), width=80, record=True)
    console.print(suites.rows_table(wide, "wide", width=80))
    text = console.export_text()
    assert all(len(line) <= 80 for line in text.splitlines())
    assert sum("a_rather_long_column_name_" in line for line in text.splitlines()) == 12


def test_link_heatmap_is_a_real_plot(tmp_path):
    from kernels import collectives
    cfg = wse.WSE2.with_grid(rows=3, cols=5)
    _, report = collectives.shift(np.ones((3, 5, 4)), cfg, along="x", k=1)
    assert _is_real_plot(plots.link_heatmap(report, tmp_path / "links.png"))
    assert _is_real_plot(plots.busy_heatmap(report, tmp_path / "busy.png"))


@pytest.mark.skipif(not shutil.which("nm"), reason="needs nm (binutils)")
def test_engine_profile_keeps_the_engines_code_and_names_its_functions(tmp_path):
    """`python -m benchmarks.engine_profile record` runs a script and keeps
    the engine's object code and load address; the engine's functions get
    their names in the perf map, so samples inside `run` (most of the
    engine, inlined) and in the functions it calls can be told apart. (A
    process of its own, as a user runs it: Numba keeps no object code of a
    function loaded before the recording starts, which `record` refuses.)"""
    from benchmarks import engine_profile
    script = tmp_path / "one_run.py"
    script.write_text("import numpy as np, wse\n"
                      "from kernels import collectives\n"
                      "cfg = wse.WSE2.with_grid(rows=2, cols=2)\n"
                      "collectives.reduce(np.ones((2, 2, 4), np.float32), cfg, along='x')\n")
    out = tmp_path / "prof"
    subprocess.run([sys.executable, "-m", "benchmarks.engine_profile", "record", "--out",
                    str(out), "--perf-maps", str(tmp_path), str(script)], check=True)
    symbols = engine_profile._symbols(out / engine_profile.OBJECT)
    names = {engine_profile._short(symbol) for symbol in symbols}
    assert {"engine.run", "engine._start_op", "engine._run_ahead"} <= names, names
    base = int((out / engine_profile.BASE).read_text(), 16)
    (perf_map,) = tmp_path.glob("perf-*.map")
    lines = perf_map.read_text().splitlines()
    run_start = min(int(line.split()[0], 16) for line in lines if line.endswith(" engine.run"))
    assert run_start >= base and len(lines) == len(symbols)


def test_points_run_in_processes_of_their_own():
    """benchmarks.child runs each GEMM and GEMV point in a process forked from
    a server that has the engine loaded: the point's result comes back; one
    that raises, dies or runs past its time limit comes back as that, and
    the next point still runs."""
    assert child.run_point(math.sqrt, (4.0,), 60) == ("ok", 2.0)
    outcome, text = child.run_point(math.sqrt, (-1.0,), 60)
    assert outcome == "error" and "ValueError: math domain error" in text, text
    outcome, text = child.run_point(os._exit, (3,), 60)
    assert outcome == "error" and "exit code 3" in text, text
    assert child.run_point(time.sleep, (60,), 0.5) == ("timeout", 0.5)
    row = child.point_row(gemm.measure_point, ("summa", 16, 2), 120)
    assert row["status"] == "ok" and row["algorithm"] == "summa" and row["cycles"] > 0, row
    row = child.point_row(gemm.measure_point, ("no_such_algorithm", 16, 2), 120)
    assert row["status"].startswith("failed: ") and row["grid"] == "2x2", row
