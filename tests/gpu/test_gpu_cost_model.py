"""Devices, clusters and the NCCL-style cost model against published points."""
import json
import math

import numpy as np
import pytest

from wse import gpu
from wse.errors import ConfigError

GB = 1e9
H100x8 = gpu.Cluster(gpu.H100, n_gpus=8)
A100x8 = gpu.Cluster(gpu.A100, n_gpus=8)


def test_presets_carry_the_datasheet_figures():
    assert gpu.A100.bf16_flops == 312e12 and gpu.A100.nvlink_bytes_per_s == 300e9
    assert gpu.H100.bf16_flops == 989e12 and gpu.H100.nvlink_bytes_per_s == 450e9
    assert gpu.H200.hbm_bytes == 141e9 and gpu.H200.hbm_bytes_per_s == 4.8e12
    assert gpu.B200.nvlink_bytes_per_s == 900e9
    assert not gpu.A100.supports_nvls and gpu.H100.supports_nvls and gpu.B200.supports_nvls


def test_unknown_device_is_one_clear_error():
    with pytest.raises(gpu.UnknownDeviceError, match="X100"):
        gpu.device("X100")
    with pytest.raises(ConfigError, match="A100, H100, H200, B200"):
        gpu.Cluster("X100", n_gpus=8)
    assert gpu.Cluster("h100").device is gpu.H100


@pytest.mark.parametrize("kwargs", [{"n_gpus": 0}, {"n_gpus": 12}, {"nvlink_efficiency": 1.5}])
def test_bad_cluster_fields_are_rejected(kwargs):
    with pytest.raises(ConfigError):
        gpu.Cluster(gpu.H100, **kwargs)


def test_bad_device_fields_are_rejected():
    with pytest.raises(ConfigError):
        gpu.H100.replace(matmul_efficiency=0)
    with pytest.raises(ConfigError):
        gpu.H100.replace(hbm_bytes=-1)


def test_busbw_is_algbw_times_2_n_minus_1_over_n_for_allreduce():
    for n in (2, 4, 8):
        plan = H100x8.collective_plan("allreduce", 1 << 26, n_ranks=n)
        assert math.isclose(plan.busbw, (1 << 26) / plan.seconds * 2 * (n - 1) / n)
    plan = H100x8.collective_plan("allgather", 1 << 26)
    assert math.isclose(plan.busbw, plan.algbw * 7 / 8)


def test_tuner_picks_the_fastest_predicted_plan():
    for nbytes in (1 << 10, 1 << 20, 1 << 30):
        best = H100x8.collective_plan("allreduce", nbytes)
        assert best.seconds == min(p.seconds for p in H100x8.plans("allreduce", nbytes))
        assert H100x8.collective_seconds("allreduce", nbytes) == best.seconds


def test_protocol_moves_from_low_latency_to_simple_as_messages_grow():
    assert H100x8.collective_plan("allreduce", 1 << 10).protocol == "LL"
    assert A100x8.collective_plan("allreduce", 1 << 33).protocol == "Simple"
    assert H100x8.collective_plan("allreduce", 1 << 33).algorithm == "nvls"


@pytest.mark.parametrize("cluster,algorithm,published", [
    (H100x8, None, 480 * GB),     # NVLink SHARP (nccl-tests#212, nccl#1455)
    (H100x8, "ring", 370 * GB),   # NCCL_ALGO=Ring (same sources)
    (A100x8, None, 230 * GB),     # published 8xA100 SXM nccl-tests
])
def test_large_allreduce_busbw_is_within_ten_percent_of_published(cluster, algorithm, published):
    busbw = cluster.busbw("allreduce", 8 << 30, algorithm=algorithm)
    assert abs(busbw - published) / published < 0.10


def test_small_allreduce_latency_is_in_the_published_range():
    """Published: ~25 us (8xH100, cloud-vendor nccl-tests without CUDA graphs),
    16.4 us (8xH20, DeepEP#303)."""
    seconds = H100x8.collective_seconds("allreduce", 1024)
    assert 10e-6 < seconds < 30e-6


def test_time_grows_with_size_and_busbw_saturates():
    sizes = [1 << e for e in range(10, 34, 2)]
    times = [H100x8.collective_seconds("allreduce", s) for s in sizes]
    assert all(a < b for a, b in zip(times, times[1:]))
    busbw = [H100x8.busbw("allreduce", s) for s in sizes]
    assert all(a <= b * 1.0001 for a, b in zip(busbw, busbw[1:]))
    # at 8 GB the latency is negligible: the link limit is reached
    assert busbw[-1] > 0.95 * busbw[-2]


def test_nvls_is_not_offered_without_an_nvls_switch_or_across_nodes():
    assert "nvls" not in A100x8.algorithms("allreduce")
    with pytest.raises(ConfigError, match="nvls"):
        A100x8.collective_plan("allreduce", 1 << 20, algorithm="nvls")
    assert "nvls" not in gpu.Cluster(gpu.H100, n_gpus=16).algorithms("allreduce")


def test_multi_node_ring_is_limited_by_infiniband():
    two_nodes = gpu.Cluster(gpu.H100, n_gpus=16)
    busbw = two_nodes.busbw("allreduce", 8 << 30, algorithm="ring")
    assert math.isclose(busbw, 50e9 * two_nodes.inter_node_efficiency, rel_tol=0.01)


def test_single_rank_collectives_cost_nothing():
    assert gpu.Cluster(gpu.H100, n_gpus=1).collective_seconds("allreduce", 1 << 20) == 0.0
    assert H100x8.collective_seconds("allgather", 1 << 20, n_ranks=1) == 0.0


def test_every_op_has_a_price():
    for op in ("allreduce", "allgather", "reduce_scatter", "broadcast", "send"):
        assert 0 < H100x8.collective_seconds(op, 1 << 20) < 1e-3
    with pytest.raises(ConfigError, match="unknown collective"):
        H100x8.collective_seconds("alltoall", 1 << 20)


def test_roofline_compute_time():
    dev = gpu.H100
    big_gemm = dev.compute_seconds(2 * 8192**3, 3 * 8192**2 * 2)
    assert math.isclose(big_gemm - dev.kernel_launch_s, 2 * 8192**3 / (989e12 * 0.70))
    stream = dev.compute_seconds(1e6, 1e9)
    assert math.isclose(stream - dev.kernel_launch_s, 1e9 / (3.35e12 * 0.90))


def test_spmd_report_totals_and_energy():
    run = gpu.SpmdRun(H100x8, 4, algorithm="ring")
    xs = [np.ones((16, 32), np.float32) * r for r in range(4)]
    ws = [np.eye(32, dtype=np.float32)] * 4
    ys = run.matmul(xs, ws, "proj")
    ys = run.allreduce(ys)
    np.testing.assert_array_equal(ys[2], np.full((16, 32), 6.0))
    report = run.report()
    assert math.isclose(report.seconds, report.compute_seconds + report.comm_seconds)
    assert report.collectives[0].algorithm == "ring"
    assert report.collectives[0].bytes_sent == 4 * 2 * 3 * (16 * 32 * 2) // 4
    assert report.bytes_sent_total == report.collectives[0].bytes_sent
    dev = gpu.H100
    expected = 4 * dev.tdp_watts * (report.compute_seconds * dev.active_power_fraction
                                    + report.comm_seconds * dev.comm_power_fraction)
    assert math.isclose(report.energy_joules, expected)
    json.dumps(report.to_dict())
