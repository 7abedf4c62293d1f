"""Calibration of the GPU cost model against published nccl-tests figures.

The model (wse.gpu.Cluster) is built from link rates, one NVLink efficiency
and NCCL's own tuner latencies; nothing below is fitted to these points.
`run()` returns one row per (cluster, message size); `python -m
benchmarks.gpu_calibration` (or running this file) prints the table that
docs/gpu-calibration.md reproduces.
"""
from __future__ import annotations

from wse import gpu

SIZES = [1 << e for e in range(10, 34, 2)] + [8 << 30]   # 1 KiB ... 8 GiB

# Published all-reduce figures: (cluster key, nbytes) -> (kind, value, source)
PUBLISHED = {
    ("8xH100", 1 << 10): [
        ("time_us", 25.0, "cloud-vendor nccl-tests results, no CUDA graphs"),
        ("time_us", 16.4, "deepseek-ai/DeepEP#303: 8xH20 (same NVLink 4/NVSwitch fabric), 1 KiB"),
    ],
    ("8xH100", 8 << 30): [
        ("busbw_GBps", 480.0, "NVIDIA/nccl-tests#212 (S. Jeaugey), NVIDIA/nccl#1455: NVLS, 8 GPUs"),
    ],
    ("8xH100 ring", 8 << 30): [
        ("busbw_GBps", 370.0, "NVIDIA/nccl-tests#212; NVIDIA/nccl#1455 measured 365-370 "
                       "(NCCL_ALGO=Ring)"),
    ],
    ("8xA100", 8 << 30): [
        ("busbw_GBps", 230.0, "published 8xA100 SXM nccl-tests results"),
    ],
    ("8xA100", 1 << 30): [
        ("busbw_GBps", 200.0, "NVIDIA/nccl-tests#149: 8xA100-SXM4-80GB (HPE Apollo 6500), "
                       "~200 GB/s up to 1 GiB"),
    ],
    ("2xA100", 32): [
        ("time_us", 10.14, "NVIDIA/nccl#583: 2xA100-SXM4-40GB, 32 B"),
    ],
    ("8xH800", 8 << 30): [
        ("busbw_GBps", 215.0, "NVIDIA/nccl#1374: 8xH800 (NVLink 200 GB/s per direction), NVLS"),
    ],
}

# NVIDIA/nccl#1455 (8xH100 SXM, 2-4 GiB, NCCL_ALGO=NVLS): busbw by GPU count.
# With 2-4 GPUs it matched the ring (~370 GB/s); 5, 6, 7, 8 GPUs: 420, 440, 460, 480.
NVLS_BY_GPU_COUNT = {2: 370.0, 3: 370.0, 4: 370.0, 5: 420.0, 6: 440.0, 7: 460.0, 8: 480.0}

# H800: an H100 with its NVLink cut to 8 links, 200 GB/s per direction (export variant).
H800 = gpu.H100.replace(name="H800-SXM5-80GB", nvlink_bytes_per_s=200e9)


def _clusters():
    return [
        ("8xH100", gpu.Cluster(gpu.H100, n_gpus=8), None),
        ("8xH100 ring", gpu.Cluster(gpu.H100, n_gpus=8), "ring"),
        ("8xA100", gpu.Cluster(gpu.A100, n_gpus=8), None),
    ]


def _row(key: str, cluster: gpu.Cluster, algorithm, nbytes: int, n_ranks=None) -> list[dict]:
    plan = cluster.collective_plan("allreduce", nbytes, n_ranks=n_ranks, algorithm=algorithm)
    base = {
        "cluster": key, "nbytes": nbytes, "algorithm": plan.algorithm,
        "protocol": plan.protocol, "time_us": plan.seconds * 1e6,
        "busbw_GBps": plan.busbw / 1e9,
        "published": None, "metric": None, "error_pct": None, "source": "",
    }
    points = PUBLISHED.get((key, nbytes))
    if not points:
        return [base]
    rows = []
    for metric, value, source in points:
        model = base[metric]
        rows.append(dict(base, published=value, metric=metric,
                         error_pct=100.0 * (model - value) / value, source=source))
    return rows


def run() -> list[dict]:
    """One row per cluster and size (more where several published figures exist)."""
    rows: list[dict] = []
    for key, cluster, algorithm in _clusters():
        for nbytes in SIZES:
            rows.extend(_row(key, cluster, algorithm, nbytes))
    rows.extend(_row("2xA100", gpu.Cluster(gpu.A100, n_gpus=2), None, 32))
    rows.extend(_row("8xH800", gpu.Cluster(H800, n_gpus=8), None, 8 << 30))
    return rows


def gpu_count_sweep() -> list[dict]:
    """8xH100 node, 4 GiB all-reduce on n GPUs: the tuner's choice and NVLS,
    beside NVIDIA/nccl#1455's measurements."""
    cluster = gpu.Cluster(gpu.H100, n_gpus=8)
    rows = []
    for n, published in NVLS_BY_GPU_COUNT.items():
        best = cluster.collective_plan("allreduce", 4 << 30, n_ranks=n)
        nvls = cluster.collective_plan("allreduce", 4 << 30, n_ranks=n, algorithm="nvls")
        rows.append({"n_gpus": n, "tuner": f"{best.algorithm}/{best.protocol}",
                     "tuner_busbw_GBps": best.busbw / 1e9, "nvls_busbw_GBps": nvls.busbw / 1e9,
                     "published_GBps": published,
                     "error_pct": 100.0 * (best.busbw / 1e9 - published) / published})
    return rows


def _size(nbytes: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if nbytes >= scale:
            return f"{nbytes / scale:g} {unit}"
    return f"{nbytes} B"


def format_table(rows: list[dict]) -> str:
    """Markdown table of the rows."""
    lines = ["| cluster | size | algo/proto | model time (us) | model busbw (GB/s) "
             "| published | error | source |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        published = error = ""
        if r["published"] is not None:
            unit = "us" if r["metric"] == "time_us" else "GB/s"
            published = f"{r['published']:g} {unit}"
            error = f"{r['error_pct']:+.0f}%"
        lines.append(f"| {r['cluster']} | {_size(r['nbytes'])} | {r['algorithm']}/{r['protocol']} "
                     f"| {r['time_us']:.1f} | {r['busbw_GBps']:.1f} | {published} | {error} "
                     f"| {r['source']} |")
    return "\n".join(lines)


def format_sweep(rows: list[dict]) -> str:
    lines = ["| GPUs | tuner's choice | model busbw (GB/s) | model NVLS busbw (GB/s) "
             "| published (GB/s) | error |", "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['n_gpus']} | {r['tuner']} | {r['tuner_busbw_GBps']:.0f} "
                     f"| {r['nvls_busbw_GBps']:.0f} | {r['published_GBps']:.0f} "
                     f"| {r['error_pct']:+.0f}% |")
    return "\n".join(lines)


LLAMA_MACHINES = (("1xH100", gpu.H100, 1), ("8xH100", gpu.H100, 8),
                  ("16xH100 (2 nodes)", gpu.H100, 16), ("8xA100", gpu.A100, 8))


def llama_layer_rows(context: int = 4096, prompt: int = 4096, machines=LLAMA_MACHINES,
                     prefill: bool = True) -> list[dict]:
    """LLaMA-3-8B: one layer's decode step (a `context`-token KV cache, one CUDA
    graph) and prefill (`prompt` tokens, per-kernel launches), and whole-model
    decode tokens/s = 1 / (32 layers + LM head and greedy sampling + one graph
    launch), on each machine (tensor parallelism over all its GPUs)."""
    import numpy as np
    from kernels import models, sharded
    from kernels.models import KVCache

    model = models.preset("llama3-8b")
    weights = models.random_weights(model, seed=0, n_layers=1)
    rng = np.random.default_rng(0)
    cache = KVCache.random(model, context, rng)
    x = rng.standard_normal((prompt, model.d_model)).astype(np.float32) if prefill else None
    rows = []
    for key, dev, n in machines:
        cluster = gpu.Cluster(dev, n_gpus=n)
        _, _, layer = sharded.decode_step(model, weights, cache, cluster, tp=n)
        _, _, whole = sharded.decode_step(model, weights, cache, cluster, tp=n, lm_head=True)
        _, _, eager = sharded.decode_step(model, weights, cache, cluster, tp=n, cuda_graph=False)
        token_s = sharded.model_decode_seconds(model, layer, whole)
        row = {"machine": key, "decode_layer_us": (layer.seconds - layer.launch_seconds) * 1e6,
               "decode_layer_eager_us": eager.seconds * 1e6,
               "lm_head_sampling_us": (whole.seconds - layer.seconds) * 1e6,
               "token_ms": token_s * 1e3, "tokens_per_s": 1.0 / token_s,
               "allreduce_us": [round(c.seconds * 1e6, 1) for c in layer.collectives],
               "allreduce_algo": [f"{c.algorithm}/{c.protocol}" for c in layer.collectives]}
        if prefill:
            _, rep = sharded.prefill(model, weights, x, cluster, tp=n)
            row["prefill_layer_ms"] = rep.seconds * 1e3
            row["prefill_model_s"] = rep.seconds * model.n_layers
            row["prefill_tokens_per_s"] = prompt / (rep.seconds * model.n_layers)
        rows.append(row)
    return rows


if __name__ == "__main__":
    import sys
    if "--llama" in sys.argv:
        for row in llama_layer_rows(prefill="--no-prefill" not in sys.argv):
            print(row)
        raise SystemExit
    print(format_table(run()))
    print()
    print(format_sweep(gpu_count_sweep()))
