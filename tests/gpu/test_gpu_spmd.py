"""SpmdRun: every collective moves the data, counts it, and prices it."""
import math

import numpy as np
import pytest

from wse import gpu
from wse.errors import ConfigError

H100x8 = gpu.Cluster(gpu.H100, n_gpus=8)


def _shards(n, shape, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(shape).astype(np.float32) for _ in range(n)]


def test_allgather_reduce_scatter_broadcast_and_send_through_a_run():
    run = gpu.SpmdRun(H100x8, 4, bytes_per_element=2)
    xs = _shards(4, (3, 5))
    gathered = run.allgather(xs, axis=0)
    np.testing.assert_array_equal(gathered[3], np.concatenate(xs))
    scattered = run.reduce_scatter(gathered, axis=0)       # 12 rows -> 3 per rank, x4 summed
    np.testing.assert_allclose(scattered[1], 4 * xs[1], rtol=1e-6)
    copies = run.broadcast(xs, root=2)
    np.testing.assert_array_equal(copies[0], xs[2])
    moved = run.send(xs[0], src=0, dst=3)
    np.testing.assert_array_equal(moved, xs[0])
    report = run.report()
    assert [c.op for c in report.collectives] == [
        "allgather", "reduce_scatter", "broadcast", "send"]
    s = 12 * 5 * 2                                          # the gathered buffer in bf16 bytes
    assert [c.bytes_sent for c in report.collectives] == [
        4 * 3 * s // 4, 4 * 3 * s // 4, 3 * (3 * 5 * 2), 3 * 5 * 2]
    assert report.bytes_sent_total == sum(c.bytes_sent for c in report.collectives)
    for c in report.collectives:
        assert c.seconds == H100x8.collective_seconds(c.op, c.nbytes, n_ranks=c.n_ranks)
    assert math.isclose(report.comm_seconds, sum(c.seconds for c in report.collectives))
    assert report.compute_seconds == 0.0


def test_forced_algorithm_is_used_and_tuner_otherwise():
    xs = _shards(8, (1 << 14,))
    for algorithm in ("ring", "tree", "nvls"):
        run = gpu.SpmdRun(H100x8, 8, algorithm=algorithm)
        out = run.allreduce(xs)
        np.testing.assert_allclose(out[5], np.sum(np.array(xs, np.float64), axis=0),
                                   rtol=1e-5, atol=1e-5)
        assert run.report().collectives[0].algorithm == algorithm
    run = gpu.SpmdRun(H100x8, 8)
    run.allreduce(xs)
    chosen = run.report().collectives[0]
    assert chosen.algorithm == H100x8.collective_plan("allreduce", chosen.nbytes).algorithm


def test_one_rank_runs_have_no_communication():
    run = gpu.SpmdRun(H100x8, 1)
    out = run.allreduce([np.ones(4)])
    np.testing.assert_array_equal(out[0], np.ones(4))
    assert run.report().collectives == () and run.report().bytes_sent_total == 0


def test_bad_runs_are_rejected():
    with pytest.raises(gpu.ShardingError):
        gpu.SpmdRun(H100x8, 9)
    with pytest.raises(ConfigError):
        gpu.SpmdRun(H100x8, 2, algorithm="butterfly")
    with pytest.raises(ConfigError):
        gpu.SpmdRun("H100")
    run = gpu.SpmdRun(H100x8, 2)
    with pytest.raises(gpu.ShardingError):
        run.allreduce([np.ones(2)] * 3)
