"""CUDA graphs, the LM head and sampling, two-node tensor parallelism and the
shape-dependent GEMM efficiency of the GPU reference machine."""
import math

import numpy as np
import pytest

from kernels import models, sharded
from kernels.models import KVCache
from wse import gpu
from wse.gpu import collectives as coll


def _decode(cluster, tp=None, **kw):
    model = models.preset("tiny")
    weights = models.random_weights(model, seed=0, n_layers=1)
    x = np.random.default_rng(1).standard_normal((5, model.d_model)).astype(np.float32)
    _, cache, _ = sharded.prefill(model, weights, x, cluster, tp=tp, return_cache=True)
    return model, sharded.decode_step(model, weights, cache, cluster, tp=tp, **kw)


def test_graph_replaces_per_kernel_launches_by_one():
    cluster = gpu.Cluster(gpu.H100, n_gpus=2)
    _, (out_g, _, graph) = _decode(cluster, tp=2, cuda_graph=True)
    _, (out_e, _, eager) = _decode(cluster, tp=2, cuda_graph=False)
    np.testing.assert_array_equal(out_g, out_e)
    assert graph.kernels == eager.kernels > 1
    assert graph.launch_seconds == gpu.H100.graph_launch_s and eager.launch_seconds == 0
    saved = eager.seconds - graph.seconds
    assert math.isclose(saved, eager.kernels * gpu.H100.kernel_launch_s - gpu.H100.graph_launch_s,
                        rel_tol=1e-9)


def test_lm_head_cost_scales_with_vocab_over_tp():
    def head_seconds(vocab, n):
        model = models.preset("llama3-8b").replace(vocab_size=vocab)
        run = gpu.SpmdRun(gpu.Cluster(gpu.H100, n_gpus=n), n, cuda_graph=True)
        sharded.lm_head_and_sample(run, model)
        rec = {c.name: c.seconds for c in run.report().computes}
        return rec["lm_head"]
    big = head_seconds(128256, 1)
    assert math.isclose(head_seconds(64128, 1), big / 2, rel_tol=1e-3)
    assert math.isclose(head_seconds(128256, 8), big / 8, rel_tol=1e-3)
    # memory-bound: the weight read dominates
    assert math.isclose(big, 4096 * 128256 * 2 / (3.35e12 * 0.90), rel_tol=1e-3)


def test_lm_head_samples_the_global_argmax_across_ranks():
    model = models.preset("tiny")
    rng = np.random.default_rng(4)
    w = rng.standard_normal((model.d_model, model.vocab_size))
    h = rng.standard_normal(model.d_model)
    run = gpu.SpmdRun(gpu.Cluster(gpu.H100, n_gpus=4), 4)
    token = sharded.lm_head_and_sample(run, model, h, w, top_k=3)
    assert token == int(np.argmax(h @ w))
    gathers = [c for c in run.report().collectives if c.op == "allgather"]
    assert len(gathers) == 1 and gathers[0].nbytes == 4 * 3 * 8


def test_decode_with_lm_head_costs_more_and_model_seconds_adds_it_once():
    cluster = gpu.Cluster(gpu.H100, n_gpus=2)
    model, (_, _, layer) = _decode(cluster, tp=2)
    _, (_, _, whole) = _decode(cluster, tp=2, lm_head=True)
    assert whole.seconds > layer.seconds
    per_token = sharded.model_decode_seconds(model, layer, whole)
    head = whole.seconds - layer.seconds
    expected = model.n_layers * (layer.seconds - layer.launch_seconds) + head + layer.launch_seconds
    assert math.isclose(per_token, expected)


def test_sixteen_gpus_pay_infiniband():
    one_node = gpu.Cluster(gpu.H100, n_gpus=8)
    two_nodes = gpu.Cluster(gpu.H100, n_gpus=16)
    assert two_nodes.link(7, 8) == "net" and two_nodes.link(0, 7) == "nvlink"
    for nbytes in (8 << 10, 64 << 20):
        p8 = one_node.collective_plan("allreduce", nbytes)
        p16 = two_nodes.collective_plan("allreduce", nbytes)
        assert p16.seconds > p8.seconds
    # small messages: at least one network hop's latency more than any 8-GPU plan
    small8 = one_node.collective_plan("allreduce", 8 << 10)
    small16 = two_nodes.collective_plan("allreduce", 8 << 10)
    assert small16.latency_seconds - small8.latency_seconds >= 2.7e-6
    # large messages: the hierarchical algorithm beats the flat ring over IB
    flat = two_nodes.collective_plan("allreduce", 1 << 30, algorithm="ring")
    hier = two_nodes.collective_plan("allreduce", 1 << 30, algorithm="hier")
    assert hier.seconds < flat.seconds
    assert "hier" not in one_node.algorithms("allreduce")


def test_hierarchical_allreduce_moves_what_the_cost_model_says():
    cluster = gpu.Cluster(gpu.H100, n_gpus=16)
    rng = np.random.default_rng(0)
    xs = [rng.standard_normal(64) for _ in range(16)]
    fabric = coll.Fabric(cluster, 16, bytes_per_element=2)
    out = coll.hierarchical_allreduce(fabric, xs)
    for o in out:
        np.testing.assert_allclose(o, np.sum(xs, axis=0), rtol=1e-12, atol=1e-12)
    flows = cluster.traffic("allreduce", "hier", 64 * 2)
    for r in range(16):
        for p, port in enumerate(coll.PORTS):
            assert fabric.sent[r, p] == pytest.approx(flows.get((r, port, "out"), 0.0))
    assert fabric.sent[:, 1].sum() > 0   # the network was used


def test_sixteen_gpu_decode_runs_and_is_slower_per_allreduce():
    model = models.preset("tiny").replace(n_heads=16, n_kv_heads=16, d_model=128, d_ff=256)
    weights = models.random_weights(model, seed=0, n_layers=1)
    x = np.random.default_rng(1).standard_normal((3, model.d_model)).astype(np.float32)
    reports = {}
    for n in (8, 16):
        cluster = gpu.Cluster(gpu.H100, n_gpus=n)
        _, cache, _ = sharded.prefill(model, weights, x, cluster, tp=n, return_cache=True)
        _, _, reports[n] = sharded.decode_step(model, weights, cache, cluster, tp=n)
    ar = {n: [c for c in r.collectives if c.op == "allreduce"] for n, r in reports.items()}
    assert all(c.seconds > ar[8][0].seconds for c in ar[16])


@pytest.mark.parametrize("dev", [gpu.A100, gpu.H100, gpu.H200, gpu.B200])
def test_gemm_efficiency_bounded_and_below_peak_for_small_gemms(dev):
    sizes = [128 * i for i in range(1, 80)]
    effs = [dev.gemm_efficiency(4096, n) for n in sizes]
    assert all(0 < e <= dev.matmul_efficiency for e in effs)
    # monotone while the output is less than one wave of tiles
    one_wave = [dev.gemm_efficiency(128, n) for n in range(256, 256 * dev.n_sms + 1, 256)]
    assert one_wave == sorted(one_wave)
    assert one_wave[-1] == dev.matmul_efficiency
    # whole waves reach the large-GEMM figure
    assert dev.gemm_efficiency(128 * dev.n_sms, 256 * 4) == dev.matmul_efficiency


def test_tensor_parallel_prefill_gemms_run_below_peak_on_h100():
    # LLaMA-3-8B, 4096-token prompt, fused QKV per rank: 6144 / tp columns
    assert gpu.H100.gemm_efficiency(4096, 6144) > gpu.H100.gemm_efficiency(4096, 6144 // 8)
    assert gpu.H100.gemm_efficiency(4096, 6144 // 8) < 0.8 * gpu.H100.matmul_efficiency
