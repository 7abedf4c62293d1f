"""Megatron tensor parallelism on wse.gpu against the float64 reference."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from kernels import models, reference, sharded
from wse import gpu
from wse.errors import ConfigError

H100x8 = gpu.Cluster(gpu.H100, n_gpus=8)
A100x8 = gpu.Cluster(gpu.A100, n_gpus=8)


def _rel_err(actual, expected):
    """Largest deviation relative to the largest reference value."""
    deviation = np.abs(np.asarray(actual, np.float64) - expected)
    return float(np.max(deviation) / np.max(np.abs(expected)))


@st.composite
def configs(draw):
    """A small model and a tp that divides it (KV heads replicated when tp > n_kv)."""
    family = draw(st.sampled_from(["llama", "gpt2"]))
    tp = draw(st.sampled_from([1, 2, 4, 8]))
    n_heads = 8
    n_kv = draw(st.sampled_from([1, 2, 4, 8])) if family == "llama" else n_heads
    head_dim = draw(st.sampled_from([4, 8]))
    d_ff = tp * draw(st.integers(1, 6)) * 2
    n_layers = draw(st.integers(1, 2))
    model = models.ModelConfig("hyp", family, d_model=n_heads * head_dim, n_heads=n_heads,
                               n_kv_heads=n_kv, d_ff=d_ff, n_layers=n_layers, max_seq_len=64)
    return model, tp


@settings(max_examples=40, deadline=None)
@given(cfg=configs(), seq_blocks=st.integers(1, 3), sp=st.booleans(), seed=st.integers(0, 999))
def test_prefill_equals_the_float64_reference_for_every_tp(cfg, seq_blocks, sp, seed):
    model, tp = cfg
    seq = tp * seq_blocks if sp else seq_blocks * 3 + (seed % 2)
    weights = models.random_weights(model, seed=seed)
    x = np.random.default_rng(seed).standard_normal((seq, model.d_model)).astype(np.float32)
    expected, _ = reference.prefill(model, weights, x)
    out, report = sharded.prefill(model, weights, x, H100x8, tp=tp, sequence_parallel=sp)
    assert out.dtype == np.float32 and out.shape == expected.shape
    assert _rel_err(out, expected) < 1e-6
    assert report.n_gpus == tp


@settings(max_examples=25, deadline=None)
@given(cfg=configs(), prompt=st.integers(1, 6), steps=st.integers(1, 3), seed=st.integers(0, 999))
def test_decode_with_head_sharded_kv_cache_equals_the_reference(cfg, prompt, steps, seed):
    model, tp = cfg
    weights = models.random_weights(model, seed=seed)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((prompt, model.d_model)).astype(np.float32)
    _, ref_state = reference.prefill(model, weights, x)
    _, state, _ = sharded.prefill(model, weights, x, A100x8, tp=tp, return_cache=True)
    for _ in range(steps):
        token = rng.standard_normal(model.d_model).astype(np.float32)
        expected, ref_state = reference.decode_step(model, weights, ref_state, token)
        out, state, report = sharded.decode_step(model, weights, state, A100x8, token, tp=tp)
        assert out.shape == (model.d_model,)
        assert _rel_err(out, expected) < 1e-6
        assert state.length == ref_state.length
        for k, rk in zip(state.keys, ref_state.keys):
            assert _rel_err(k, rk) < 1e-6
    # decode continues from the cache's own last output by default
    expected, _ = reference.decode_step(model, weights, ref_state)
    out, _, _ = sharded.decode_step(model, weights, state, A100x8, tp=tp)
    assert _rel_err(out, expected) < 1e-6


def _layer_volume_elements(seq, d_model, tp, batch=1):
    """Megatron (Narayanan et al. 2021): 4 b s h (t-1)/t elements per device per layer."""
    return 4 * batch * seq * d_model * (tp - 1) / tp


@pytest.mark.parametrize("tp", [2, 4, 8])
@pytest.mark.parametrize("sp", [False, True])
def test_measured_layer_traffic_is_megatrons_4bsh_t_minus_1_over_t(tp, sp):
    model = models.ModelConfig("vol", "llama", d_model=64, n_heads=8, n_kv_heads=2,
                               d_ff=128, n_layers=1)
    weights = models.random_weights(model, seed=3)
    seq = 16
    x = np.random.default_rng(0).standard_normal((seq, model.d_model))
    _, report = sharded.prefill(model, weights, x, A100x8, tp=tp, sequence_parallel=sp,
                                algorithm="ring", bytes_per_element=2)
    expected = _layer_volume_elements(seq, model.d_model, tp) * 2
    # measured from the transfers, per device
    assert (report.bytes_sent_per_gpu == expected).all()
    ops = [c.op for c in report.collectives]
    if sp:
        assert ops == ["allgather", "reduce_scatter", "allgather", "reduce_scatter"]
    else:
        assert ops == ["allreduce", "allreduce"]


def test_sequence_parallel_moves_the_same_bytes_as_plain_tensor_parallel():
    model = models.preset("tiny")
    weights = models.random_weights(model, seed=0)
    x = np.random.default_rng(1).standard_normal((32, model.d_model))
    _, plain = sharded.prefill(model, weights, x, A100x8, tp=2)
    _, seqpar = sharded.prefill(model, weights, x, A100x8, tp=2, sequence_parallel=True)
    assert plain.bytes_sent_total == seqpar.bytes_sent_total == \
        model.n_layers * 2 * _layer_volume_elements(32, model.d_model, 2) * 2


def test_nvls_traffic_is_one_plus_one_over_t_of_the_buffer():
    """The in-switch all-reduce sends (1 + 1/t) S per device where the ring sends
    2(t-1)/t S, so Megatron's volume formula describes the ring only."""
    model = models.preset("tiny")
    weights = models.random_weights(model, seed=0, n_layers=1)
    x = np.random.default_rng(1).standard_normal((16, model.d_model))
    _, nvls = sharded.prefill(model, weights, x, H100x8, tp=2, algorithm="nvls")
    s = 16 * model.d_model * 2
    assert (nvls.bytes_sent_per_gpu == 2 * (s + s / 2)).all()
    assert {c.algorithm for c in nvls.collectives} == {"nvls"}


def test_report_lists_each_collective_with_its_price():
    model = models.preset("tiny")
    weights = models.random_weights(model, seed=0)
    x = np.random.default_rng(1).standard_normal((8, model.d_model))
    _, report = sharded.prefill(model, weights, x, H100x8, tp=4)
    assert len(report.collectives) == 2 * model.n_layers
    for c in report.collectives:
        assert c.op == "allreduce" and c.nbytes == 8 * model.d_model * 2
        assert c.algorithm in ("ring", "tree", "nvls") and c.protocol in ("LL", "LL128", "Simple")
        assert c.seconds == H100x8.collective_seconds("allreduce", c.nbytes, n_ranks=4)
    assert np.isclose(report.comm_seconds, sum(c.seconds for c in report.collectives))
    assert np.isclose(report.seconds, report.compute_seconds + report.comm_seconds)
    assert report.energy_joules > 0 and report.flops > 0
    d = report.to_dict()
    assert d["bytes_sent_total"] == report.bytes_sent_total
    assert d["collectives"][0]["algorithm"] == report.collectives[0].algorithm


def test_flops_count_the_model_not_the_shards():
    """Summed over ranks, the GEMM FLOPs equal 2 x params x tokens, whatever tp."""
    model = models.preset("tiny")
    weights = models.random_weights(model, seed=0, n_layers=1)
    x = np.random.default_rng(1).standard_normal((8, model.d_model))
    gemm = {"qkv", "attn_out", "mlp_up", "mlp_down"}
    totals = []
    for tp in (1, 2):
        _, report = sharded.prefill(model, weights, x, H100x8, tp=tp)
        totals.append(tp * sum(c.flops for c in report.computes if c.name in gemm))
    d, hd = model.d_model, model.head_dim
    params = d * (model.n_heads + 2 * model.n_kv_heads) * hd + model.n_heads * hd * d \
        + 3 * d * model.d_ff
    assert totals[0] == totals[1] == 2 * params * 8


# ------------------------------------------------------------------------ errors
def test_tp_that_does_not_divide_the_heads_is_rejected():
    model = models.preset("tiny")                    # 4 heads
    weights = models.random_weights(model, n_layers=1)
    x = np.zeros((4, model.d_model))
    with pytest.raises(gpu.ShardingError, match="4 attention heads"):
        sharded.prefill(model, weights, x, H100x8, tp=3)


def test_tp_that_does_not_divide_the_mlp_is_rejected():
    model = models.ModelConfig("odd-ffn", "llama", d_model=32, n_heads=4, n_kv_heads=4,
                               d_ff=90, n_layers=1)
    with pytest.raises(gpu.ShardingError, match="d_ff = 90"):
        sharded.Layout(model, 4)


def test_kv_heads_that_cannot_be_replicated_evenly_are_rejected():
    model = models.ModelConfig("gqa", "llama", d_model=96, n_heads=12, n_kv_heads=3,
                               d_ff=48, n_layers=1)
    with pytest.raises(gpu.ShardingError, match="KV heads"):
        sharded.Layout(model, 2)
    layout = sharded.Layout(models.preset("tiny"), 4)   # 2 KV heads over 4 ranks
    assert [list(layout.kv_heads(r)) for r in range(4)] == [[0], [0], [1], [1]]


def test_sequence_parallel_needs_tp_to_divide_the_sequence():
    model = models.preset("tiny")
    weights = models.random_weights(model, n_layers=1)
    with pytest.raises(gpu.ShardingError, match="sequence"):
        sharded.prefill(model, weights, np.zeros((6, 64)), H100x8, tp=4, sequence_parallel=True)


def test_a_model_that_exceeds_gpu_memory_is_rejected():
    with pytest.raises(gpu.GpuMemoryError, match="llama3-70b.*GiB"):
        sharded.check_fits(models.preset("llama3-70b"), gpu.Cluster(gpu.H100, n_gpus=1),
                           tp=1, seq_len=4096)
    need = sharded.check_fits(models.preset("llama3-70b"), H100x8, tp=8, seq_len=4096)
    assert 15e9 < need["weights"] < 20e9            # ~70.6e9 params x 2 bytes / 8 ranks
    # the check also guards every run
    model = models.preset("tiny")
    weights = models.random_weights(model, n_layers=1)
    small = gpu.Cluster(gpu.H100.replace(hbm_bytes=100_000), n_gpus=8)
    with pytest.raises(gpu.GpuMemoryError):
        sharded.prefill(model, weights, np.zeros((64, 64)), small, tp=1)
    assert issubclass(gpu.GpuMemoryError, ConfigError)


def test_tp_beyond_the_cluster_and_unknown_devices_are_rejected():
    model = models.preset("tiny")
    weights = models.random_weights(model, n_layers=1)
    with pytest.raises(gpu.ShardingError, match="exceeds"):
        sharded.prefill(model, weights, np.zeros((4, 64)), gpu.Cluster(gpu.H100, n_gpus=2), tp=4)
    with pytest.raises(gpu.UnknownDeviceError):
        sharded.prefill(model, weights, np.zeros((4, 64)), gpu.Cluster("V100"), tp=1)


def test_tensor_parallelism_across_two_nodes_uses_infiniband():
    model = models.ModelConfig("tp16", "llama", d_model=128, n_heads=16, n_kv_heads=4,
                               d_ff=64, n_layers=1)
    weights = models.random_weights(model, seed=2)
    x = np.random.default_rng(2).standard_normal((8, 128))
    expected, _ = reference.prefill(model, weights, x)
    two_nodes = gpu.Cluster(gpu.H100, n_gpus=16)
    out, report = sharded.prefill(model, weights, x, two_nodes, tp=16, algorithm="ring")
    assert _rel_err(out, expected) < 1e-6
    assert (report.bytes_sent_per_gpu == _layer_volume_elements(8, 128, 16) * 2).all()
    assert report.collectives[0].seconds > H100x8.collective_seconds(
        "allreduce", report.collectives[0].nbytes, algorithm="ring")


def test_default_tp_is_the_largest_degree_that_divides_the_model():
    assert sharded.default_tp(models.preset("tiny"), H100x8) == 4          # 4 heads
    assert sharded.default_tp(models.preset("llama3-8b"), H100x8) == 8
    assert sharded.default_tp(models.preset("gpt2-small"), H100x8) == 6    # 12 heads, 3072
