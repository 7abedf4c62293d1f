"""One transformer layer on the wafer and on 8-GPU tensor parallelism.

quick: the tiny model on an 8 x 8 grid (prefill of 32 tokens, one decode
       step), and the LLaMA-3-8B decode layer below, each against 8 x H100
       and 8 x A100 (about a minute, most of it the 420 x 420 decode).
full:  LLaMA-3-8B, one layer
  * decode (--part decode) with a 4096-token context on a 420 x 420 grid,
    emulated in full as one program (the cache is synthetic: a prefill of
    4096 tokens on the wafer is not emulated at this size); output checked
    against kernels.reference; each operation's window traced;
  * prefill (--part prefill) of a 4096-token prompt on a 660 x 660 grid:
    too large to emulate here, so the wafer row comes from
    benchmarks.prefill (MeshGEMM projections, GEMM-T scores with the masked
    causal blocks skipped, emulated on proxies whose every PE holds the
    660 x 660 run's tiles and extrapolated per phase; see that module and
    docs/prefill.md, which also has 480, 600 and 720);
  * the same layers on 8 x H100 and 8 x A100 (kernels.sharded, tp = 8).
relayout (--part relayout): the one-time prefill -> decode move of Wo and
W_down (kernels.transformer.relayout_weights: undo MeshGEMM's alignment,
then a block transpose) on n x n grids with the 660 x 660 tiles,
extrapolated to 660.
Extrapolation to 32 layers: kernels.transformer.extrapolate.
decode sweep (--grids, --models): one decode layer (4096-token context,
fp16) per model and region size, each emulated in full in its own child
process (wall time and peak memory per point), traced for the operations'
windows, with whole-model tokens/s by kernels.transformer.extrapolate.

Run alone: python -m benchmarks.transformer [--full] [--part decode|prefill|relayout]
           python -m benchmarks.transformer --grids 420,540,660 \
               --models llama3-8b,llama2-13b
"""
from __future__ import annotations

import pathlib
import resource
import time

import numpy as np

import wse
from wse import gpu
from benchmarks.options import command_line

LLAMA = "llama3-8b"
PREFILL_SIDE = 660
"""The prefill region of --part prefill (the full run's prefill row)."""


def _rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20


def _gpu_rows(model, weights, x_prefill, cache, tag: str, modes=("prefill", "decode")):
    from kernels import transformer as T
    rows = []
    for dev in (gpu.H100, gpu.A100):
        cluster = gpu.Cluster(dev, n_gpus=8)
        started = time.perf_counter()
        if "prefill" in modes:
            _, rep_p = T.prefill(model, weights, x_prefill, cluster)
            rows.append({"case": tag, "machine": f"{rep_p.n_gpus}x{dev.name}",
                         "mode": "prefill", "tokens": len(x_prefill), "seconds": rep_p.seconds,
                         "compute_s": rep_p.compute_seconds, "comm_s": rep_p.comm_seconds,
                         "bytes": rep_p.bytes_sent_total, "energy_j": rep_p.energy_joules,
                         "report": rep_p, "wall_s": time.perf_counter() - started})
        if "decode" not in modes:
            continue
        _, _, rep_d = T.decode_step(model, weights, cache, cluster)
        rows.append({"case": tag, "machine": f"{rep_d.n_gpus}x{dev.name}", "mode": "decode",
                     "tokens": 1, "seconds": rep_d.seconds, "compute_s": rep_d.compute_seconds,
                     "comm_s": rep_d.comm_seconds, "bytes": rep_d.bytes_sent_total,
                     "energy_j": rep_d.energy_joules, "report": rep_d})
    return rows


def _wafer_row(case, mode, cfg, report, tokens, wall, emulated, **extra) -> dict:
    row = {"case": case, "machine": f"wafer {cfg.rows}x{cfg.cols}", "mode": mode,
           "tokens": tokens, "cycles": report.cycles if report is not None else None,
           "seconds": report.seconds if report is not None else None,
           "bytes": 4 * report.wavelet_hops if report is not None else None,
           "busiest_link_bytes": 4 * report.busiest_link_wavelets if report is not None else None,
           "energy_j": report.energy_joules if report is not None else None,
           "wall_s": wall, "rss_gib": _rss_gib(), "emulated": emulated,
           "phases": report.phases if report is not None else None, "report": report}
    row.update(extra)
    return row


def quick_case() -> list[dict]:
    from kernels import models, reference
    from kernels import transformer as T
    model = models.preset("tiny")
    weights = models.random_weights(model, seed=0)
    x = np.random.default_rng(0).standard_normal((32, model.d_model))
    cfg = wse.WSE2.with_grid(rows=8, cols=8)
    started = time.perf_counter()
    res, rep_p = T.prefill(model, weights, x, cfg)
    wall_p = time.perf_counter() - started
    ref = reference.prefill(model, weights, x)
    started = time.perf_counter()
    out, _, rep_d = T.decode_step(model, weights, res.cache, cfg)
    wall_d = time.perf_counter() - started
    ref_out, _ = reference.decode_step(model, weights, ref.cache)
    rows = [
        _wafer_row("tiny", "prefill", cfg, rep_p, 32, wall_p, True,
                   rel_err=float(np.abs(res.hidden - ref.hidden).max()
                                 / np.abs(ref.hidden).max())),
        _wafer_row("tiny", "decode", cfg, rep_d, 1, wall_d, True,
                   rel_err=float(np.abs(out - ref_out).max() / np.abs(ref_out).max())),
    ]
    return rows + _gpu_rows(model, weights, x, ref.cache, "tiny")


def decode_case(grid: int = 420, context: int = 4096, dtype: str = "float16",
                base: wse.WaferConfig = wse.WSE2, model_name: str = LLAMA) -> dict:
    """One layer of `model_name`, one decode step at `context` on a grid x grid
    region of the wafer `base`, traced: besides the cycles, each operation's
    window (first PE to start it, last PE to finish it) and its span on
    one PE (median task duration)."""
    from kernels import decode_layer, models, reference
    from kernels import transformer as T
    from kernels.kvcache import cache_bytes_per_pe
    from kernels.models import KVCache
    model = models.preset(model_name)
    weights = models.random_weights(model, seed=0, n_layers=1)
    rng = np.random.default_rng(1)
    cache = KVCache.random(model, context, rng)
    cfg = base.with_grid(rows=grid, cols=grid)
    started = time.perf_counter()
    with wse.run_options(trace=True, event_capacity=(len(decode_layer.PHASES) + 1) * grid * grid):
        out, state, report = T.decode_step(model, weights, cache, cfg, dtype=dtype)
    wall = time.perf_counter() - started
    ref_out, _ = reference.decode_step(model, weights, cache)
    err = float(np.abs(out - ref_out).max() / np.abs(ref_out).max())
    lay = T.decode_layouts(model, cfg)
    per_layer = T.decode_weight_bytes(model, lay, dtype) + \
        cache_bytes_per_pe(model, cfg.cols, state.capacity, dtype)
    ext = T.extrapolate(report, model, 1, cfg, per_layer, tokens=1,
                        handover_wavelets=lay.d.width)
    operations = []
    for name, sl in decode_layer.operation_slices(report).items():
        if len(sl):
            operations.append({"name": name, "pes": len(sl), "first_start": int(sl[:, 1].min()),
                               "last_end": int(sl[:, 2].max()),
                               "median_pe_cycles": float(np.median(sl[:, 2] - sl[:, 1]))})
    report.task_events = None
    allreduces = [line_allreduce_cycles(grid, n, base) for n in (1, 3 * lay.attn.width)]
    return _wafer_row(f"{model_name} layer", "decode", cfg, report, 1, wall, True, rel_err=err,
                      model=model_name, grid=grid, context=context, dtype=dtype,
                      engine_wall_s=report.wall_seconds,
                      host_bytes_loaded=report.host_bytes_loaded,
                      extrapolation=ext.to_dict(), operations=operations,
                      line_allreduces=allreduces,
                      sram_bytes_per_pe_max=int(report.sram_peak_bytes.max()),
                      weights=weights, cache=cache)


def line_allreduce_cycles(line: int, n: int, base: wse.WaferConfig = wse.WSE2) -> dict:
    """One allreduce of n fp32 elements over a whole line of `line` PEs, as a
    decode layer's SegmentChannel does it, run alone on a line x 1 grid:
    the engine's cycles beside kernels.layers.allreduce_cycles."""
    from kernels.layers import SegmentChannel, allreduce_cycles, build_roles
    cfg = base.with_grid(rows=line, cols=1)
    prog = wse.Program(cfg)
    v = prog.buffer("v", (n,), "float32")
    col = SegmentChannel(prog, "y", [(0, line - 1)], "col")
    build_roles(prog, {"col": col}, lambda t, parts: col.allreduce(t, parts["col"], v.view(), n))
    prog.load(v, np.ones((line, 1, n), np.float32))
    result = prog.run(max_cycles=10 ** 9)
    if not (result.read(v) == line).all():
        raise RuntimeError(f"line allreduce over {line} PEs gave a wrong sum")
    return {"line": line, "n": n, "cycles": result.report.cycles,
            "model_cycles": allreduce_cycles(cfg, line, n)}


def decode_sweep(grids=(420, 540, 660), model_names=(LLAMA, "llama2-13b"), context: int = 4096,
                 dtype: str = "float16", log=None) -> list[dict]:
    """decode_case for every model and grid, one at a time, each in a child
    process (so that rss_gib is that run's own peak and its memory is given
    back before the next starts). A model whose max_seq_len is `context`
    decodes its last position instead (context - 1 cached, `context`
    attended). A point that fails gives a row with its error and the sweep
    goes on; each row is also appended to `log` (JSON lines) when given."""
    import json
    import subprocess
    import sys
    from kernels import models
    rows = []
    for name in model_names:
        cached = min(context, models.preset(name).max_seq_len - 1)
        for grid in grids:
            started = time.perf_counter()
            done = subprocess.run([sys.executable, "-m", "benchmarks.transformer",
                                   "--decode-point", name, str(grid), str(cached), dtype],
                                  capture_output=True, text=True)
            if done.returncode != 0:
                row = {"model": name, "grid": grid, "context": cached, "mode": "decode",
                       "error": done.stderr.strip().splitlines()[-1:]}
            else:
                row = json.loads(done.stdout.strip().splitlines()[-1])
            row["process_wall_s"] = time.perf_counter() - started
            rows.append(row)
            if log is not None:
                with open(log, "a") as f:
                    f.write(json.dumps(row, default=str) + "\n")
    return rows


def decode_part() -> list[dict]:
    from kernels import models
    rows = [decode_case()]
    weights, cache = rows[0].pop("weights"), rows[0].pop("cache")
    model = models.preset(LLAMA)
    return rows + _gpu_rows(model, weights, None, cache, "llama3-8b layer", ("decode",))


def prefill_part(side: int = PREFILL_SIDE) -> list[dict]:
    """One LLaMA-3-8B layer's prefill of a 4,096-token prompt: the wafer row by
    benchmarks.prefill (target_row: same-tile proxies emulated in full, a + b n
    per phase, evaluated at side x side; not emulated at that size), beside
    8 x H100 and 8 x A100."""
    from benchmarks import prefill
    from kernels import models
    started = time.perf_counter()
    wafer = prefill.target_row(side)
    wafer.update(case="llama3-8b layer", mode="prefill", seconds=wafer["ms"] / 1e3,
                 wall_s=time.perf_counter() - started, rss_gib=_rss_gib())
    model = models.preset(LLAMA)
    weights = models.random_weights(model, seed=0, n_layers=1)
    x = np.random.default_rng(3).standard_normal((prefill.SEQ, model.d_model)).astype(np.float32)
    return [wafer] + _gpu_rows(model, weights, x, None, "llama3-8b layer", ("prefill",))


def relayout_part(sizes=(8, 16, 32, 64), target: int = 660, dtype: str = "float16") -> list[dict]:
    """The prefill -> decode re-layout of one LLaMA-3-8B layer's Wo and W_down on the
    660 x 660 prefill region: every PE moves wa*wd + wf*wd = 8*7 + 22*7 = 210 values
    (kernels.transformer.relayout_weights: undo MeshGEMM's alignment, then a block
    transpose). Emulated on n x n grids with the same 210-value tiles (the cost
    depends only on n and the tile), fitted a + b*n, and evaluated at 660 beside
    the first-principles bounds there."""
    from kernels import models
    from kernels import transformer as T
    from kernels.layers import block_transpose_cycles, block_transpose_program
    from kernels.prefill_layer import unalign_cycles, unalign_program

    def bounds(cfg, n, b):
        parts = (unalign_cycles(cfg, n, b), block_transpose_cycles(cfg, n, b))
        return [sum(lo for lo, _ in parts), sum(up for _, up in parts)]

    model = models.preset(LLAMA)
    lay = T.prefill_layouts(model, wse.WSE2.with_grid(rows=target, cols=target))
    b = lay.attn.width * lay.d.width + lay.ff.width * lay.d.width
    rows = []
    for n in sizes:
        cfg = wse.WSE2.with_grid(rows=n, cols=n)
        tiles = np.random.default_rng(n).standard_normal((n, n, b))
        started = time.perf_counter()
        prog, _, _ = unalign_program(cfg, tiles, dtype)
        unalign = prog.run(max_cycles=10 ** 12).report
        prog, _ = block_transpose_program(cfg, tiles, dtype)
        transpose = prog.run(max_cycles=10 ** 12).report
        rows.append({"case": "relayout proxy", "mode": "relayout", "grid": f"{n}x{n}",
                     "wavelets_per_pe": b, "cycles": unalign.cycles + transpose.cycles,
                     "unalign_cycles": unalign.cycles, "transpose_cycles": transpose.cycles,
                     "bounds": bounds(cfg, n, b),
                     "wavelet_hops": unalign.wavelet_hops + transpose.wavelet_hops,
                     "wall_s": time.perf_counter() - started})
    ns = np.array(sizes[-2:], float)
    cs = np.array([r["cycles"] for r in rows[-2:]], float)
    slope = (cs[1] - cs[0]) / (ns[1] - ns[0])
    cfg = wse.WSE2.with_grid(rows=target, cols=target)
    rows.append({"case": "relayout llama3-8b layer (extrapolated)", "mode": "relayout",
                 "grid": f"{target}x{target}", "wavelets_per_pe": b,
                 "cycles": cs[1] + slope * (target - ns[1]),
                 "fit": f"cycles = {cs[1] - slope * ns[1]:.1f} + {slope:.3f} n from n = "
                        f"{sizes[-2]}, {sizes[-1]}",
                 "bounds": bounds(cfg, target, b)})
    return rows


def full_cases() -> list[dict]:
    return decode_part() + prefill_part()


def run(quick: bool = True, part: str | None = None, grids=None, model_names=None) -> list[dict]:
    if grids or model_names:
        out = pathlib.Path("bench-out")
        out.mkdir(exist_ok=True)
        rows = decode_sweep(grids or (420,), model_names or (LLAMA,),
                            log=out / "transformer_decode_sweep.jsonl")
    elif part is not None:
        rows = {"decode": decode_part, "prefill": prefill_part, "relayout": relayout_part}[part]()
    else:
        rows = quick_case() + decode_part() if quick else full_cases()
    # side-by-side tables for the wafer rows that have a report
    from kernels import transformer as T
    by_mode = {}
    for r in rows:
        if r.get("report") is not None and "x" in r["machine"].split()[0] and not r["machine"].startswith("wafer"):
            by_mode.setdefault((r["case"], r["mode"]), []).append(r)
    for r in rows:
        rep = r.get("report")
        if rep is not None and r["machine"].startswith("wafer"):
            for g in by_mode.get((r["case"], r["mode"]), []):
                r[f"vs_{g['machine']}"] = T.compare(rep, g["report"], r["tokens"]).to_dict()
    for r in rows:
        r.pop("report", None)
        r.pop("weights", None)
        r.pop("cache", None)
    return rows


def layer_panels(rows) -> list[tuple[str, str]]:
    """The (case, mode) pairs the layer plot draws, one panel each, in the
    rows' order: machines compared within a panel run the same work (the
    quick run has the tiny model's prefill and decode, and LLaMA-3-8B's decode)."""
    panels = []
    for r in rows:
        if r["mode"] in ("prefill", "decode") and r.get("seconds") \
                and (r["case"], r["mode"]) not in panels:
            panels.append((r["case"], r["mode"]))
    return panels


def plot(rows, out_dir) -> list[pathlib.Path]:
    from benchmarks.plots import pyplot
    plt = pyplot()
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    made = []
    panels = layer_panels(rows)
    if not panels:        # e.g. --part relayout: no layer to draw, keep an earlier plot
        return made
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4), squeeze=False)
    for ax, (case, mode) in zip(axes[0], panels):
        sel = [r for r in rows if r["case"] == case and r["mode"] == mode and r.get("seconds")]
        labels = [r["machine"].replace(" ", "\n", 1).replace("-", "\n", 1)
                  + ("" if r.get("emulated", True) else "\n(extrapolated)") for r in sel]
        tps = [r["tokens"] / r["seconds"] for r in sel]
        ax.bar(range(len(sel)), tps, color=["tab:blue" if r["machine"].startswith("wafer")
                                            else "tab:orange" for r in sel])
        ax.set_xticks(range(len(sel)), labels, fontsize=8)
        ax.set_ylabel("tokens / s (one layer)")
        ax.set_title(f"{case}: {mode}")
    fig.tight_layout()
    path = out_dir / "transformer_layer.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    made.append(path)
    traced = [r for r in rows if r["mode"] == "decode" and r.get("operations")]
    if traced:
        r = traced[0]
        ops = r["operations"]
        fig, ax = plt.subplots(figsize=(7, 3.5))
        ax.barh([o["name"] for o in ops], [o["last_end"] - o["first_start"] for o in ops],
                left=[o["first_start"] for o in ops])
        ax.invert_yaxis()
        ax.set_xlabel("cycles (first PE starts .. last PE ends)")
        ax.set_title(f"decode operations, {r['case']} on {r['machine']}")
        fig.tight_layout()
        path = out_dir / "transformer_decode_phases.png"
        fig.savefig(path, dpi=120)
        plt.close(fig)
        made.append(path)
    swept = {}
    for r in traced:
        if r.get("extrapolation"):
            swept.setdefault(r["model"], []).append(
                (r["grid"], r["extrapolation"]["tokens_per_second"]))
    if any(len(v) > 1 for v in swept.values()):
        fig, ax = plt.subplots(figsize=(5.5, 4))
        for name, pts in swept.items():
            pts.sort()
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=name)
        ax.set_xlabel("region side (PEs)")
        ax.set_ylabel("tokens / s, whole model (extrapolated)")
        ax.set_title("decode, 4096-token context, fp16")
        ax.legend()
        fig.tight_layout()
        path = out_dir / "transformer_decode_regions.png"
        fig.savefig(path, dpi=120)
        plt.close(fig)
        made.append(path)
    return made


def _main(argv: list[str] | None = None) -> None:
    import json
    parser = command_line("transformer", __doc__, "LLaMA-3-8B at full size")
    parser.add_argument("--part", choices=("decode", "prefill", "relayout"),
                        help="only this part of the full run")
    parser.add_argument("--grids", help="decode sweep: comma-separated region sizes "
                        "(e.g. 420,540,660), one child process per point")
    parser.add_argument("--models", help="decode sweep: comma-separated model presets "
                        "(e.g. llama3-8b,llama2-13b)")
    parser.add_argument("--decode-point", nargs=4, metavar=("MODEL", "GRID", "CONTEXT", "DTYPE"),
                        help="one decode_case in this process; prints its row as JSON")
    args = parser.parse_args(argv)
    if args.decode_point:
        name, grid, context, dtype = args.decode_point
        row = decode_case(int(grid), int(context), dtype, model_name=name)
        for key in ("report", "weights", "cache"):
            row.pop(key, None)
        row["rss_gib"] = _rss_gib()
        print(json.dumps(row, default=str))
        return
    grids = [int(g) for g in args.grids.split(",")] if args.grids else None
    model_names = args.models.split(",") if args.models else None
    rows = run(quick=not args.full, part=args.part, grids=grids, model_names=model_names)
    out = pathlib.Path("bench-out")
    out.mkdir(exist_ok=True)
    name = ("transformer_decode_sweep" if grids or model_names
            else f"transformer_{args.part}" if args.part
            else ("transformer_full" if args.full else "transformer"))
    (out / f"{name}.json").write_text(
        json.dumps(rows, indent=1, default=str))
    print(json.dumps(rows, indent=1, default=str))
    print(plot(rows, out))


if __name__ == "__main__":
    _main()
