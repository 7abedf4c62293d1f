"""Prefill of one LLaMA-3-8B layer (4,096-token prompt, fp16) on square regions.

The layer runs as kernels.transformer.prefill does it: every projection a
MeshGEMM (activations skewed on the fabric, resident weights placed
aligned), Q K^T by GEMM-T with the fully masked causal blocks skipped, the
softmax by max- and sum-allreduces along X with its per-row work done by
instructions, P V by SUMMA, and every phase beside the resident weights of
the layers its region holds (kernels.prefill_layer.prefill_mapping).

A region of 480 x 480 PEs or more is beyond what the engine emulates here
in reasonable time (a MeshGEMM of the layer on 30 x 30 takes ~8 s, and the
engine's work grows as the cube of the side), so each target is
extrapolated by the method the transformer benchmark validated: proxies of
k heads on (k g) x (k g) grids (g: the target's columns per head) whose
every PE holds the target's tiles (st positions, w features of a head, w_ff
features of d_ff; d_model chunks of w, one more than the target's where w
rounds up to even), a + b n fitted per phase on the two smallest proxies
(every phase is a loop over n steps or a chain over n PEs), checked
against the largest, refitted on all and evaluated at the target side.

Run alone: python -m benchmarks.prefill --grids 480 600 720 [--proxies 1 2 3]
"""
from __future__ import annotations

import argparse
import json
import pathlib
import resource
import time

import numpy as np

import wse

SEQ = 4096
MODEL = "llama3-8b"


def target_tiles(model, n: int, seq: int = SEQ) -> dict:
    """Per-PE tiles of one layer's prefill on an n x n region (the prefill layouts)."""
    from kernels import prefill_layer
    lay = prefill_layer.prefill_layouts(model, wse.WSE2.with_grid(rows=n, cols=n))
    return {"positions_per_row": -(-seq // n), "d_model_per_pe": lay.d.width,
            "head_columns": lay.attn.group, "head_features_per_pe": lay.attn.width,
            "d_ff_per_pe": lay.ff.width}


def proxy_model(target: dict, heads: int):
    """A LLaMA-style model whose layer puts the target's tiles on every PE of a
    (heads * g) x (heads * g) grid, and that grid's side."""
    from kernels import models
    g, w = target["head_columns"], target["head_features_per_pe"]
    n = heads * g
    model = models.ModelConfig(f"llama3-8b-proxy{n}", "llama", d_model=heads * g * w,
                               n_heads=heads, n_kv_heads=max(heads // 4, 1),
                               d_ff=target["d_ff_per_pe"] * n, n_layers=1, max_seq_len=1 << 15,
                               rope_theta=500000.0)
    return model, n


def run_proxy(target: dict, heads: int, reserve: int, check: bool) -> dict:
    """One proxy layer, emulated in full; reserve: the target region's resident
    weight bytes per PE (the proxy's own layer included)."""
    from kernels import models, prefill_layer, reference
    from kernels import transformer as T
    model, n = proxy_model(target, heads)
    weights = models.random_weights(model, seed=0)
    seq = target["positions_per_row"] * n
    x = np.random.default_rng(2).standard_normal((seq, model.d_model))
    cfg = wse.WSE2.with_grid(rows=n, cols=n)
    own = prefill_layer.prefill_mapping(model, cfg, seq, "float16").weight_bytes_per_layer
    cfg = cfg.replace(sram_bytes=cfg.sram_bytes - max(reserve - own, 0))
    started = time.perf_counter()
    result, report = T.prefill(model, weights, x, cfg, dtype="float16")
    wall = time.perf_counter() - started
    row = {"proxy_side": n, "heads": heads, "tokens": seq, "cycles": report.cycles,
           "wall_seconds": wall, "phases": {ph["name"].split(".", 1)[1]: ph["cycles"]
                                             for ph in report.phases},
           "sram_bytes_per_pe_max": int(report.sram_peak_bytes.max()) + reserve - own}
    if check:
        ref = reference.prefill(model, weights, x)
        row["rel_err"] = float(np.abs(result.hidden - ref.hidden).max()
                               / np.abs(ref.hidden).max())
    return row


def fit_phases(proxies: list[dict], side: int) -> dict:
    """a + b n per phase: fitted on the two smallest proxies and checked on
    the largest; refitted on all (least squares) and evaluated at `side`."""
    ns = np.array([p["proxy_side"] for p in proxies], float)
    names = list(proxies[0]["phases"])
    per = {name: np.array([p["phases"][name] for p in proxies], float) for name in names}
    estimate, check = {}, None
    if len(proxies) > 2:
        predicted = 0.0
        for name in names:
            b = (per[name][1] - per[name][0]) / (ns[1] - ns[0])
            predicted += per[name][0] + b * (ns[-1] - ns[0])
        measured = float(sum(per[name][-1] for name in names))
        check = {"side": int(ns[-1]), "predicted": predicted, "measured": measured,
                 "error": (predicted - measured) / measured}
    for name in names:
        b, a = np.polyfit(ns, per[name], 1)
        estimate[name] = float(a + b * side)
    return {"phases": estimate, "cycles": float(sum(estimate.values())), "fit_check": check}


def target_row(side: int, heads=(1, 2, 3)) -> dict:
    from kernels import comparison, models, prefill_layer
    model = models.preset(MODEL)
    cfg = wse.WSE2.with_grid(rows=side, cols=side)
    tiles = target_tiles(model, side)
    mapping = prefill_layer.prefill_mapping(model, cfg, SEQ, "float16")
    proxies = [run_proxy(tiles, h, mapping.reserved_bytes, check=h == heads[0]) for h in heads]
    fit = fit_phases(proxies, side)
    hand = comparison.stage_handover_cycles(cfg, tiles["positions_per_row"]
                                            * tiles["d_model_per_pe"], side)
    handovers = -(-model.n_layers // mapping.layers_per_region) - 1
    whole = model.n_layers * fit["cycles"] + max(handovers, 0) * hand
    return {"case": "llama3-8b layer prefill", "machine": f"wafer {side}x{side}",
            "tokens": SEQ, "dtype": "float16", "emulated": False,
            "how": f"extrapolated: a + b*n per phase over proxies n = "
                   f"{[p['proxy_side'] for p in proxies]} (same per-PE tiles)",
            "cycles": fit["cycles"], "ms": fit["cycles"] / cfg.clock_hz * 1e3,
            "phase_cycles": fit["phases"], "fit_check": fit["fit_check"], "tiles": tiles,
            "mapping": mapping.to_dict(), "handover_cycles": hand,
            "model_prefill_ms": whole / cfg.clock_hz * 1e3,
            "model_tokens_per_s": SEQ / (whole / cfg.clock_hz), "proxies": proxies}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.prefill",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--grids", type=int, nargs="+", default=[480, 600, 720])
    parser.add_argument("--proxies", type=int, nargs="+", default=[1, 2, 3],
                        help="heads of each proxy (default 1 2 3)")
    parser.add_argument("--json", default="bench-out/prefill.json")
    args = parser.parse_args(argv)
    rows = []
    for side in args.grids:
        started = time.perf_counter()
        row = target_row(side, tuple(args.proxies))
        row["wall_seconds"] = time.perf_counter() - started
        row["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20
        rows.append(row)
        m = row["mapping"]
        check = row["fit_check"]
        print(f"{side} x {side}: {row['cycles']:,.0f} cycles = {row['ms']:.2f} ms per layer "
              f"(extrapolated; fit check at n = {check['side'] if check else '-'}: "
              f"{check['error'] * 100 if check else float('nan'):+.2f}%); "
              f"{m['layers_per_region']} layers per region, {m['regions']} regions, "
              f"{m['wafers']} wafer(s); 32 layers {row['model_prefill_ms']:.1f} ms; "
              f"wall {row['wall_seconds']:.0f} s", flush=True)
        for name, c in row["phase_cycles"].items():
            print(f"    {name:12s} {c:12,.0f}")
        path = pathlib.Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
