"""Host side of a decode step: how much of `decode_step`'s wall is not the engine.

One LLaMA-3-8B decode layer (random weights, a 4,096-position random KV
cache, float16) on a square grid, two steps: the first places the weights and
the cache (building the layer's Program and SRAM image from the host), the
second resumes from the SRAM image the first left (only code, routes,
parameters and the new token come from the host). Per step: the wall of
`decode_step`, the engine's part of it (RunReport.wall_seconds), the rest
(host: building the program, placing and loading, reading results) and its
share, with the cycles, wavelet-hops and host bytes loaded, and a checksum of
the output so that runs before and after a host-side change can be compared
value for value. `--profile N` prints the N costliest host functions per step
(cProfile, by cumulative time). One run holds about 4 GiB at 420 x 420.
Wall times depend on what else runs on the machine: say whether it was shared.

    python -m benchmarks.host_side --grid 420 --shared
"""
from __future__ import annotations

import cProfile
import hashlib
import io
import pstats
import time

import numpy as np

import wse
from kernels import models
from kernels import transformer
from kernels.kvcache import KVCache


def decode_steps(grid: int, context: int = 4096, steps: int = 2, profile: int = 0):
    """Run `steps` decode steps of one LLaMA-3-8B layer on grid x grid; yields
    one dict per step (wall, engine and host seconds, cycles, hops, ...)."""
    model = models.preset("llama3-8b")
    weights = models.random_weights(model, seed=0, n_layers=1)
    state = KVCache.random(model, context, np.random.default_rng(1))
    cfg = wse.WSE2.with_grid(rows=grid, cols=grid)
    for step in range(1, steps + 1):
        profiler = cProfile.Profile() if profile else None
        started = time.perf_counter()
        if profiler:
            profiler.enable()
        out, state, report = transformer.decode_step(model, weights, state, cfg,
                                                     dtype="float16")
        if profiler:
            profiler.disable()
        wall = time.perf_counter() - started
        row = {"step": step, "wall_s": wall, "engine_s": report.wall_seconds,
               "host_s": wall - report.wall_seconds,
               "host_share": (wall - report.wall_seconds) / wall,
               "cycles": report.cycles, "wavelet_hops": report.wavelet_hops,
               "host_bytes_loaded": report.host_bytes_loaded,
               "out_sha1": hashlib.sha1(np.ascontiguousarray(out, np.float64)).hexdigest()[:12]}
        if profiler:
            text = io.StringIO()
            pstats.Stats(profiler, stream=text).sort_stats("cumtime").print_stats(profile)
            row["profile"] = text.getvalue()
        yield row


def main(argv=None) -> None:
    import argparse
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--grid", type=int, default=420, help="rows = cols of the grid")
    parser.add_argument("--context", type=int, default=4096, help="cached positions")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--profile", type=int, default=0, metavar="N",
                        help="print the N costliest functions per step (cProfile)")
    parser.add_argument("--engine", choices=("stream", "wavelet"), default="stream",
                        help="the engine that runs the steps (default: stream)")
    parser.add_argument("--shared", action="store_true",
                        help="say the machine was shared with other work")
    args = parser.parse_args(argv)
    print(f"LLaMA-3-8B decode layer, {args.context} cached positions, float16, "
          f"{args.grid} x {args.grid}, {args.engine} engine; machine: "
          f"{'shared with other work' if args.shared else 'quiet'}", flush=True)
    with wse.run_options(engine=args.engine):
        rows = list(decode_steps(args.grid, args.context, args.steps, args.profile))
    for row in rows:
        print(f"step {row['step']}: wall {row['wall_s']:.2f} s, engine {row['engine_s']:.2f} s, "
              f"host {row['host_s']:.2f} s ({100 * row['host_share']:.1f}%); "
              f"{row['cycles']:,} cycles, {row['wavelet_hops']:,} wavelet-hops, "
              f"{row['host_bytes_loaded']:,} host bytes; output {row['out_sha1']}", flush=True)
        if "profile" in row:
            print(row["profile"], flush=True)


if __name__ == "__main__":
    main()
