"""The validation table: every row has a source, a configuration and a
computable error; nothing in it is fitted (each constant names the
micro-level source it was set from, or says ASSUMPTION, and a row whose
source also set a constant says so)."""
import json
import math

import pytest

import wse
from wse import gpu
from benchmarks import validation as V


def test_every_row_has_a_readable_source_a_configuration_and_an_emulator():
    keys = [m.key for m in V.MEASUREMENTS]
    assert len(keys) == len(set(keys)), "row keys must be unique"
    for m in V.MEASUREMENTS:
        assert m.source in V.SOURCES, f"{m.key}: source {m.source!r} is not in SOURCES"
        assert m.source in V.CITED_AS, f"{m.key}: source {m.source!r} has no CITED_AS name"
        assert m.configuration and m.quantity and m.unit, m.key
        assert m.emulate in V.EMULATORS, f"{m.key}: no emulator {m.emulate!r}"
        assert m.published > 0 and math.isfinite(m.published), m.key
        if not m.counted or not m.independent:
            assert m.note, f"{m.key}: a row left out of the count or not independent says why"
    assert {m.side for m in V.MEASUREMENTS} == {"wafer", "GPU"}


def test_the_quick_subset_computes_every_error_fast():
    rows = V.evaluate(quick=True)
    assert {r.m.key for r in rows} == {m.key for m in V.MEASUREMENTS if m.quick}
    assert any(r.m.side == "wafer" for r in rows) and any(r.m.side == "GPU" for r in rows)
    for r in rows:
        assert r.emulated is not None and math.isfinite(r.emulated), r.m.key
        assert r.error == pytest.approx((r.emulated - r.m.published) / r.m.published)
        assert r.provenance.split(":")[0].split(",")[0] in ("engine", "model", "wse.gpu", "file")


def test_hpdc_rows_differ_from_the_published_model_by_the_start_up_and_datapath_only():
    """docs/collectives.md: flood and chain end sigma cycles after the HPDC 2024
    formulas (the sender's vector start-up, which the model lacks), the star
    sigma + delta + H - 1 cycles after (its term counts the hop, not the
    datapath cycle)."""
    cfg = wse.WSE2
    sigma, delta, hop = cfg.vector_startup_cycles, cfg.datapath_latency, cfg.hop_latency
    rows = [r for r in V.evaluate(quick=True) if r.m.key.startswith("hpdc-")]
    assert len(rows) == 3
    for r in rows:
        expected = sigma + delta + hop - 1 if "star" in r.m.key else sigma
        assert r.emulated - r.m.published == expected, r.m.key
        assert not r.m.independent


def test_gpu_gemm_row_is_the_wave_quantized_roofline():
    """1024^3 on an H100: 8 x 4 = 32 output tiles of 128 x 256 on 132 SMs, one
    wave, so matmul_efficiency x 32/132 of the bf16 peak (compute-bound)."""
    (row,) = [r for r in V.evaluate(quick=True) if r.m.key == "h100-bf16-gemm-1024"]
    expected = gpu.H100.bf16_flops * gpu.H100.matmul_efficiency * 32 / 132 / 1e12
    assert row.emulated == pytest.approx(expected, rel=1e-12)


def test_no_constant_is_fitted():
    """Each timing constant names a source (a bracketed citation) or says
    ASSUMPTION; and where a constant's source is also the source of a
    row, that row is marked not independent or its note names the constant,
    so a reader sees the dependence."""
    constants = V.constant_rows()
    assert len(constants) >= 20
    for c in constants:
        assert c["basis"] in ("cited", "assumption", "cited + assumption"), \
            f"{c['constant']}: cites no source and does not say it is assumed: {c['source']}"
    for m in V.MEASUREMENTS:
        cited = V.CITED_AS[m.source]
        setting = [c for c in constants if cited in c["source"]]
        if not setting or not m.independent:
            continue
        for c in setting:
            assert c["constant"] in m.note, (
                f"{m.key}: its source {cited} also set {c['constant']}, which its note "
                "does not name")


def test_decode_rows_read_the_benchmark_file_or_say_how_to_make_it(tmp_path, monkeypatch):
    monkeypatch.setattr(V, "DECODE_JSON", tmp_path / "transformer_decode.json")
    value, provenance = V._wafer_decode_tokens_per_s("llama3-8b", 420)
    assert value is None and "--part decode" in provenance
    wafer = {"case": "llama3-8b layer", "mode": "decode", "context": 4096}
    (tmp_path / "transformer_decode.json").write_text(json.dumps([
        {"case": "llama3-8b layer", "machine": "8xH100-SXM5-80GB", "mode": "decode"},
        dict(wafer, case="llama2-13b layer", machine="wafer 420x420", cycles=1,
             extrapolation={"tokens_per_second": 1.0}),
        dict(wafer, machine="wafer 540x540", cycles=2, extrapolation={"tokens_per_second": 2.0}),
        dict(wafer, machine="wafer 420x420", cycles=28783,
             extrapolation={"tokens_per_second": 1193.1, "n_layers": 32, "regions": 3})]))
    value, provenance = V._wafer_decode_tokens_per_s("llama3-8b", 420)
    assert value == 1193.1
    assert provenance.startswith("file:") and "28,783 cycles per layer" in provenance
    assert V._wafer_decode_tokens_per_s("llama3-8b", 660)[0] is None


def test_markdown_has_a_line_per_row_with_its_error():
    rows = V.evaluate(quick=True)
    text = V.markdown(rows)
    body = text.splitlines()[2:]
    assert len(body) == len(rows)
    for line, r in zip(body, rows):
        assert f"{100 * r.error:+.1f}%" in line and r.m.source in line


def test_write_replaces_only_the_generated_part(tmp_path):
    page = tmp_path / "validation.md"
    page.write_text(f"prose before\n{V.BEGIN_MARK}\nold table\n{V.END_MARK}\nprose after\n")
    V.write_into(page, "new table")
    text = page.read_text()
    assert "old table" not in text and "new table" in text
    assert text.startswith("prose before\n") and text.endswith("prose after\n")
    V.write_into(page, "newer table")
    assert page.read_text().count(V.BEGIN_MARK) == 1 and "new table\n" not in page.read_text()
    (tmp_path / "bare.md").write_text("no markers")
    with pytest.raises(SystemExit, match="markers"):
        V.write_into(tmp_path / "bare.md", "x")
