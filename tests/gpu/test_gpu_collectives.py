"""The chunk-moving collectives: exact outputs, and byte counts that match the cost model."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from wse import gpu
from wse.errors import ConfigError

H100x8 = gpu.Cluster(gpu.H100, n_gpus=8)
H100x16 = gpu.Cluster(gpu.H100, n_gpus=16)
A100x8 = gpu.Cluster(gpu.A100, n_gpus=8)

ALLREDUCES = {"ring": gpu.ring_allreduce, "tree": gpu.tree_allreduce, "nvls": gpu.nvls_allreduce}


def _inputs(n, shape, seed):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(shape) for _ in range(n)]


@settings(max_examples=40, deadline=None)
@given(algorithm=st.sampled_from(sorted(ALLREDUCES)), n=st.integers(1, 8),
       shape=st.lists(st.integers(1, 7), min_size=1, max_size=3).map(tuple),
       seed=st.integers(0, 2**16))
def test_allreduce_outputs_equal_the_float64_sum_on_every_rank(algorithm, n, shape, seed):
    xs = _inputs(n, shape, seed)
    fabric = gpu.Fabric(H100x8, n)
    out = ALLREDUCES[algorithm](fabric, xs)
    expected = np.sum(xs, axis=0)
    assert len(out) == n
    for y in out:
        assert y.shape == shape
        np.testing.assert_allclose(y, expected, rtol=1e-12, atol=1e-12)


@settings(max_examples=30, deadline=None)
@given(n=st.integers(1, 8), rows=st.lists(st.integers(0, 4), min_size=8, max_size=8),
       cols=st.integers(1, 5), seed=st.integers(0, 2**16))
def test_allgather_concatenates_exactly_in_rank_order(n, rows, cols, seed):
    rng = np.random.default_rng(seed)
    xs = [rng.standard_normal((rows[r], cols)) for r in range(n)]
    out = gpu.ring_allgather(gpu.Fabric(H100x8, n), xs, axis=0)
    for y in out:
        np.testing.assert_array_equal(y, np.concatenate(xs, axis=0))


@settings(max_examples=30, deadline=None)
@given(n=st.integers(1, 8), length=st.integers(1, 20), seed=st.integers(0, 2**16))
def test_reduce_scatter_gives_rank_r_slice_r_of_the_sum(n, length, seed):
    xs = _inputs(n, (length, 3), seed)
    out = gpu.ring_reduce_scatter(gpu.Fabric(H100x8, n), xs, axis=0)
    expected = np.array_split(np.sum(xs, axis=0), n, axis=0)
    for r in range(n):
        np.testing.assert_allclose(out[r], expected[r], rtol=1e-12, atol=1e-12)


@settings(max_examples=20, deadline=None)
@given(n=st.integers(1, 8), root=st.integers(0, 7), seed=st.integers(0, 2**16))
def test_broadcast_copies_the_root_exactly(n, root, seed):
    root %= n
    xs = _inputs(n, (5,), seed)
    for y in gpu.chain_broadcast(gpu.Fabric(H100x8, n), xs, root):
        np.testing.assert_array_equal(y, xs[root])


def _counted_flows(fabric):
    flows = {}
    for r in range(fabric.n_ranks):
        for p, port in enumerate(gpu.collectives.PORTS):
            if fabric.sent[r, p]:
                flows[(r, port, "out")] = int(fabric.sent[r, p])
            if fabric.received[r, p]:
                flows[(r, port, "in")] = int(fabric.received[r, p])
    return flows


@pytest.mark.parametrize("cluster,n,algorithm", [
    (H100x8, 2, "ring"), (H100x8, 5, "ring"), (H100x8, 8, "ring"),
    (H100x8, 3, "tree"), (H100x8, 8, "tree"), (H100x8, 8, "nvls"), (H100x8, 4, "nvls"),
    (H100x16, 16, "ring"), (H100x16, 16, "tree"),
])
def test_counted_allreduce_bytes_match_the_cost_models_traffic(cluster, n, algorithm):
    """The cost model's per-port bytes are what the data movement really sends."""
    elements = 2 * n * 6                      # equal ring chunks and tree halves
    xs = _inputs(n, (elements,), 0)
    fabric = gpu.Fabric(cluster, n, bytes_per_element=2)
    ALLREDUCES[algorithm](fabric, xs)
    predicted = cluster.traffic("allreduce", algorithm, 2 * elements, n)
    assert _counted_flows(fabric) == {k: int(v) for k, v in predicted.items()}


@pytest.mark.parametrize("n", [2, 4, 8])
def test_ring_allreduce_sends_2_n_minus_1_over_n_of_the_buffer_per_rank(n):
    elements = n * 10
    fabric = gpu.Fabric(H100x8, n, bytes_per_element=4)
    gpu.ring_allreduce(fabric, _inputs(n, (elements,), 1))
    per_rank = fabric.sent.sum(axis=1)
    assert (per_rank == 2 * (n - 1) * elements // n * 4).all()
    assert fabric.sent[:, 1].sum() == 0          # one node: nothing on the network


def test_double_binary_tree_sends_at_most_the_whole_buffer_twice():
    n, elements = 8, 64
    fabric = gpu.Fabric(H100x8, n, bytes_per_element=1)
    gpu.tree_allreduce(fabric, _inputs(n, (elements,), 2))
    assert fabric.sent.sum(axis=1).max() == 2 * elements
    assert fabric.received.sum(axis=1).max() == 2 * elements


def test_allgather_and_reduce_scatter_counts_match_traffic():
    n, per_rank = 8, 12
    fabric = gpu.Fabric(H100x8, n, bytes_per_element=2)
    gpu.ring_allgather(fabric, _inputs(n, (per_rank,), 3))
    predicted = H100x8.traffic("allgather", "ring", n * per_rank * 2, n)
    assert _counted_flows(fabric) == {k: int(v) for k, v in predicted.items()}
    fabric = gpu.Fabric(H100x8, n, bytes_per_element=2)
    gpu.ring_reduce_scatter(fabric, _inputs(n, (n * per_rank,), 4))
    predicted = H100x8.traffic("reduce_scatter", "ring", n * per_rank * 2, n)
    assert _counted_flows(fabric) == {k: int(v) for k, v in predicted.items()}


def test_multi_node_ring_puts_node_boundary_hops_on_the_network():
    n, elements = 16, 32
    fabric = gpu.Fabric(H100x16, n, bytes_per_element=1)
    gpu.ring_allreduce(fabric, _inputs(n, (elements,), 5))
    on_net = {r for r in range(n) if fabric.sent[r, 1]}
    assert on_net == {7, 15}                   # 7 -> 8 and the wrap 15 -> 0


def test_nvls_refuses_a_group_spanning_nodes():
    with pytest.raises(gpu.ShardingError):
        gpu.nvls_allreduce(gpu.Fabric(H100x16, 16), _inputs(16, (32,), 0))


def test_mismatched_shards_are_an_error():
    with pytest.raises(gpu.ShardingError):
        gpu.ring_allreduce(gpu.Fabric(H100x8, 2), [np.zeros(3), np.zeros(4)])
    with pytest.raises(ConfigError):
        gpu.chain_broadcast(gpu.Fabric(H100x8, 2), [np.zeros(3)] * 2, root=5)
