"""The calibration table: the cost model beside published nccl-tests figures."""
from benchmarks import gpu_calibration


def test_every_row_has_a_model_figure_and_published_rows_an_error():
    rows = gpu_calibration.run()
    sizes = {r["nbytes"] for r in rows if r["cluster"] == "8xH100"}
    assert min(sizes) == 1 << 10 and max(sizes) == 8 << 30
    for r in rows:
        assert r["time_us"] > 0 and r["busbw_GBps"] >= 0
    published = [r for r in rows if r["published"] is not None]
    assert published, "no row has a published figure to compare with"
    for r in published:
        assert r["source"] and r["error_pct"] is not None


def test_large_message_bus_bandwidth_errors_are_small():
    """Peak bus bandwidth (8 GiB) within 5% everywhere it is published."""
    peaks = [r for r in gpu_calibration.run()
             if r["metric"] == "busbw_GBps" and r["nbytes"] == 8 << 30]
    assert peaks, "no published 8 GiB bus bandwidth"
    for r in peaks:
        assert abs(r["error_pct"]) < 5, r


def test_nvls_gpu_count_sweep_matches_within_five_percent():
    sweep = gpu_calibration.gpu_count_sweep()
    assert len(sweep) >= 2, "the sweep needs at least two GPU counts"
    for r in sweep:
        assert abs(r["error_pct"]) < 5, r


def test_table_formats():
    text = gpu_calibration.format_table(gpu_calibration.run())
    assert "| 8xH100 | 8 GiB | nvls/Simple |" in text
