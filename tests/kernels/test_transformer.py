"""kernels.transformer: prefill and decode on the mesh against the float64 reference
and the sharded GPU reference; KV cache policies; comparison; extrapolation; errors."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import wse
from kernels import kvcache, models, reference, sharded
from kernels import transformer as T
from wse import gpu


def _rel(a, b):
    return float(np.abs(np.asarray(a) - b).max() / np.abs(b).max())


def _setup(name="tiny", seq=6, n_layers=None, seed=0, **changes):
    model = models.preset(name)
    if changes:
        model = model.replace(**changes)
    weights = models.random_weights(model, seed=seed, n_layers=n_layers)
    x = np.random.default_rng(seed + 1).standard_normal((seq, model.d_model))
    return model, weights, x


@pytest.mark.parametrize("name, n, dtype, tol, attention", [
    ("tiny", 4, "float32", 1e-4, "ring"), ("tiny", 16, "float32", 1e-4, "ring"),
    ("tiny-gpt2", 8, "float32", 1e-4, "ring"), ("tiny", 8, "float16", 2e-2, "ring"),
    ("tiny", 8, "float32", 1e-4, "gemm"), ("tiny-gpt2", 4, "float16", 2e-2, "gemm")])
def test_prefill_then_decode_matches_references(name, n, dtype, tol, attention):
    model, weights, x = _setup(name, seq=9)
    cfg = wse.WSE2.with_grid(rows=n, cols=n)
    result, report = T.prefill(model, weights, x, cfg, dtype=dtype, attention=attention)
    ref = reference.prefill(model, weights, x)
    assert _rel(result.hidden, ref.hidden) < tol
    gpu_out, _ = sharded.prefill(model, weights, x, gpu.Cluster(gpu.H100, n_gpus=2), tp=2)
    assert _rel(result.hidden, gpu_out) < tol
    cache = result.cache.to_kvcache()
    for got, want in zip(cache.keys + cache.values, ref.cache.keys + ref.cache.values):
        assert _rel(got, want) < tol
    assert [p["name"] for p in report.phases][:2] == ["L0.attn_norm", "L0.q_proj"]
    state, ref_state = result.cache, ref.cache
    for _ in range(2):
        out, state, rep = T.decode_step(model, weights, state, cfg)
        ref_out, ref_state = reference.decode_step(model, weights, ref_state)
        assert _rel(out, ref_out) < tol
    gout, _, _ = sharded.decode_step(model, weights, ref_state, gpu.Cluster(gpu.H100, n_gpus=2),
                                     tp=2)
    out, state, _ = T.decode_step(model, weights, state, cfg)
    assert _rel(out, gout) < tol
    assert rep.extra["transformer"]["mode"] == "decode"


@settings(max_examples=4, deadline=None)
@given(n=st.sampled_from([4, 5, 8]), seq=st.integers(1, 12), heads=st.sampled_from([2, 4]),
       seed=st.integers(0, 5))
def test_prefill_hypothesis(n, seq, heads, seed):
    model, weights, x = _setup(seq=seq, n_layers=1, seed=seed, n_heads=heads,
                               n_kv_heads=heads // 2)
    cfg = wse.WSE2.with_grid(rows=n, cols=n)
    result, _ = T.prefill(model, weights, x, cfg)
    assert _rel(result.hidden, reference.prefill(model, weights, x).hidden) < 1e-4


@settings(max_examples=3, deadline=None)
@given(n=st.sampled_from([4, 6, 8]), seq=st.integers(1, 12), heads=st.sampled_from([2, 4]),
       seed=st.integers(0, 5))
def test_prefill_with_gemm_attention_hypothesis(n, seq, heads, seed):
    model, weights, x = _setup(seq=seq, n_layers=1, seed=seed, n_heads=heads,
                               n_kv_heads=heads // 2)
    cfg = wse.WSE2.with_grid(rows=n, cols=n)
    result, report = T.prefill(model, weights, x, cfg, attention="gemm")
    assert _rel(result.hidden, reference.prefill(model, weights, x).hidden) < 1e-4
    assert report.extra["transformer"]["attention"] == "gemm"


@pytest.mark.parametrize("name, n", [("tiny", 4), ("tiny-gpt2", 8)])
def test_relayout_puts_wo_and_w_down_in_decode_placement_over_the_fabric(name, n):
    model, weights, _ = _setup(name, n_layers=1)
    cfg = wse.WSE2.with_grid(rows=n, cols=n)
    moved, report = T.relayout_weights(model, weights, cfg)
    lay = T.decode_layouts(model, cfg)
    lw = weights.layers[0]
    np.testing.assert_array_equal(moved[0]["wo"], T.decode_x_reducing_tiles(
        lw.wo, lay.attn, lay.d, n, n).astype(np.float32))
    np.testing.assert_array_equal(moved[0]["w_down"], T.decode_x_reducing_tiles(
        lw.w_down, lay.ff, lay.d, n, n).astype(np.float32))
    info = report.extra["relayout"]
    assert report.wavelet_hops == info["expected_wavelet_hops_per_layer"]
    lower, upper = info["model_cycles_per_layer"]
    assert lower <= report.cycles <= upper
    assert [ph["name"] for ph in report.phases] == ["L0.unalign", "L0.transpose"]
    with pytest.raises(wse.ConfigError, match="square region"):
        T.relayout_weights(model, weights, wse.WSE2.with_grid(rows=n, cols=n + 1))


@pytest.mark.parametrize("n", [1, 2, 3, 4, 7, 8])
def test_prefill_keeps_resident_weights_in_meshgemms_alignment(n):
    """prefill_weight_tiles is the block placement after MeshGEMM's own
    alignment of B (kernels.matmul.fabric_skew with skew="fabric": column x
    shifts its tiles skew_b[x] times to its ring predecessor), the labels being
    gemm_phase's (input part j is K-block pos[j])."""
    from kernels import matmul, prefill_layer as P
    from kernels.layers import FeatureLayout
    from wse import routes
    rows_layout, cols_layout = FeatureLayout.plain(3 * n, n), FeatureLayout.plain(2 * n, n)
    W = np.random.default_rng(n).standard_normal((3 * n, 2 * n))
    block = P.block_weight_tiles(W, rows_layout, cols_layout)
    cfg = wse.WSE2.with_grid(rows=n, cols=n)
    _, skew_b = matmul.fabric_skew(matmul.plan(4 * n, 3 * n, 2 * n, cfg, "meshgemm"))
    order = np.asarray(routes.interleaved_order(n))
    pos = routes.ring_position(order)
    expected = np.empty_like(block)
    for x in range(n):
        for y in range(n):        # ring place pos[y] ends with the block of place pos[y] + s
            expected[y, x] = block[order[(pos[y] + skew_b[x]) % n], x]
    np.testing.assert_array_equal(P.prefill_weight_tiles(W, rows_layout, cols_layout), expected)


@settings(max_examples=12, deadline=None)
@given(n=st.integers(1, 9), b=st.integers(1, 40), free=st.booleans(),
       dtype=st.sampled_from(["float32", "float16"]))
def test_unalign_turns_the_alignment_back_into_the_block_placement(n, b, free, dtype):
    """Values back where the block placement has them, wavelet-hops as
    unalign_hops, cycles within unalign_cycles, with and without
    instruction costs; bad input is refused."""
    from kernels import prefill_layer as P
    from kernels.layers import FeatureLayout
    cfg = wse.WSE2.with_grid(rows=n, cols=n)
    cfg = cfg.without_instruction_costs() if free else cfg
    layout = FeatureLayout.plain(n * b, n)
    W = np.random.default_rng(b).standard_normal((n * b, n))
    prog, slots, ending = P.unalign_program(cfg, P.prefill_weight_tiles(W, layout,
                                                                        FeatureLayout.plain(n, n)),
                                            dtype)
    result = prog.run(max_cycles=10 ** 9)
    both = result.read(slots).reshape(n, n, 2, b)
    got = np.take_along_axis(both, ending[:, :, None, None], axis=2)[:, :, 0]
    expected = P.block_weight_tiles(W, layout, FeatureLayout.plain(n, n))
    np.testing.assert_array_equal(got, expected.astype(np.float16 if dtype == "float16"
                                                       else np.float32))
    assert result.report.wavelet_hops == P.unalign_hops(n, b)
    lower, upper = P.unalign_cycles(cfg, n, b)
    assert lower <= result.report.cycles <= upper
    with pytest.raises(wse.ConfigError, match="square grid"):
        P.unalign_program(wse.WSE2.with_grid(rows=n, cols=n + 1), np.zeros((n, n + 1, b)))


@settings(max_examples=4, deadline=None)
@given(rows=st.integers(1, 7), cols=st.integers(4, 9), past=st.integers(1, 10),
       policy=st.sampled_from(kvcache.POLICIES), seed=st.integers(0, 5))
def test_decode_on_rectangular_grids(rows, cols, past, policy, seed):
    model, weights, x = _setup(seq=past, n_layers=1, seed=seed)
    ref = reference.prefill(model, weights, x)
    cfg = wse.WSE2.with_grid(rows=rows, cols=cols)
    state, ref_state = ref.cache, ref.cache
    for _ in range(2):
        out, state, _ = T.decode_step(model, weights, state, cfg, policy=policy)
        ref_out, ref_state = reference.decode_step(model, weights, ref_state)
        assert _rel(out, ref_out) < 1e-4
    assert state.length == past + 2 and state.row_counts().sum() == past + 2


def _decode_until_overflow(policy, sram, limit=40):
    model, weights, x = _setup(seq=8, n_layers=1)
    ref = reference.prefill(model, weights, x)
    cfg = wse.WSE2.with_grid(rows=4, cols=4).replace(sram_bytes=sram)
    state = kvcache.WaferKVCache.from_kvcache(model, ref.cache, 4, 4, policy)
    ref_state, steps = ref.cache, 0
    while steps < limit:
        try:
            out, state, _ = T.decode_step(model, weights, state, cfg)
        except wse.SramOverflowError as err:
            return steps, state, err
        ref_out, ref_state = reference.decode_step(model, weights, ref_state)
        assert _rel(out, ref_out) < 1e-4          # the moved entries are still right
        steps += 1
    return steps, state, None


def test_shift_cache_decodes_many_more_tokens_than_append():
    # everything else the layer keeps resident (weights, activations: 11,548 B
    # here) plus 7 cache slots of 2 x 16 x 4 + 8 B
    sram = 11548 + 7 * 136
    append_steps, append_state, err = _decode_until_overflow("append", sram)
    assert isinstance(err, wse.SramOverflowError) and "PE (" in str(err)
    assert "no longer fits" in str(err) and "'append'" in str(err)
    counts = append_state.row_counts()
    assert counts[-1] == 2 + append_steps and (counts[:-1] == 2).all()
    shift_steps, shift_state, _ = _decode_until_overflow("shift", sram, limit=4 * append_steps)
    assert append_steps >= 1 and shift_steps >= 3 * append_steps
    counts = shift_state.row_counts()
    assert counts.max() - counts.min() <= 1            # rows stay balanced


def _col_allreduce_elements(model, lay):
    """Elements a decode layer allreduces along Y: the two norms' sums of
    squares, Q|K|V, the softmax max and sum, P V, up (| gate)."""
    n_up = (2 if model.gated else 1) * lay.ff.width
    return 1 + 3 * lay.attn.width + 1 + 1 + lay.attn.width + 1 + n_up


def test_shift_moves_only_between_neighbouring_rows():
    """Per token, each PE of the rows below the growing one sends its oldest
    K and V (16 features each here) one hop north, and nothing else moves
    north but the column allreduces (on these 4 rows each link of a column
    carries each allreduced vector once towards the root and once in the
    flood back, whichever row the root is): every PE of rows 1.. sends
    exactly `_col_allreduce_elements` wavelets north, plus 2 x 16 if its row
    moves."""
    model, weights, x = _setup(seq=8, n_layers=1)
    ref = reference.prefill(model, weights, x)
    cfg = wse.WSE2.with_grid(rows=4, cols=4)
    lay = T.decode_layouts(model, cfg)
    state = kvcache.WaferKVCache.from_kvcache(model, ref.cache, 4, 4, "shift")
    ref_state, moved = ref.cache, 0
    for _ in range(6):
        _, state, rep = T.decode_step(model, weights, state, cfg)
        moves = rep.extra["transformer"]["moves"]
        moved += moves
        north = rep.link_wavelets[:, :, wse.isa.NORTH]
        assert (north[0] == 0).all()
        for y in range(1, 4):
            mover = y >= 4 - moves
            assert (north[y] == _col_allreduce_elements(model, lay) + mover * 2 * 16).all()
        ref_out, ref_state = reference.decode_step(model, weights, ref_state)
        assert _rel(state.last_hidden, ref_out) < 1e-4
    assert moved > 0


def test_decode_layer_is_one_run_and_pes_overlap_operations():
    """One engine run per layer; in it, from the trace: every PE runs the
    layer's operations in PHASES order, one task each (kv_update only on the
    rows the cache update involves), one after another on its own timeline;
    the run ends when the last task does; and for every pair of successive
    operations some PE starts operation k+1 before another PE has finished
    operation k (no barrier between operations: a PE goes on as soon as its
    own inputs are there, e.g. row 0 once it has sent the flood of an
    allreduce along Y, while the far rows still receive it)."""
    from kernels import comparison, decode_layer, prefill_layer
    model, weights, x = _setup(seq=8, n_layers=2)
    cfg = wse.WSE2.with_grid(rows=4, cols=4)
    res, _ = T.prefill(model, weights, x, cfg)
    _, _, rep = T.decode_step(model, weights, res.cache, cfg)
    assert [p["name"] for p in rep.phases] == ["L0", "L1"]          # one run per layer
    one = models.ModelWeights(weights.layers[:1])
    state = kvcache.WaferKVCache.from_kvcache(model, reference.prefill(model, one, x).cache,
                                              4, 4)
    _, state, _ = T.decode_step(model, one, state, cfg)
    with wse.run_options(trace=True):
        _, state, rep = T.decode_step(model, one, state, cfg)
    assert rep.extra["transformer"]["moves"] > 0
    windows = decode_layer.operation_slices(rep)
    assert rep.cycles == int(rep.task_events[:, 3].max())
    for phase, w in windows.items():
        pes = w[:, 0].tolist()
        assert len(set(pes)) == len(pes)                           # one task per PE
        assert set(pes) == set(range(16)) or phase == "kv_update"
    ends = {}
    for phase in decode_layer.PHASES:
        for pe, start, end in windows[phase].tolist():
            assert start >= ends.get(pe, 0)                        # in order on each PE
            ends[pe] = end
    ran = [p for p in decode_layer.PHASES if len(windows[p])]
    assert len(ran) >= 4
    for k, nxt in zip(ran, ran[1:]):
        assert windows[nxt][:, 1].min() < windows[k][:, 2].max(), (k, nxt)
    for module, names in ((comparison, ("Comparison", "compare", "Extrapolation", "extrapolate",
                                        "stage_handover_cycles")),
                          (decode_layer, ("DecodeLayouts", "decode_layouts",
                                          "decode_weight_bytes", "decode_x_reducing_tiles")),
                          (prefill_layer, ("PrefillLayouts", "prefill_layouts",
                                           "prefill_weight_tiles", "check_prefill_fits",
                                           "GEMM_ALGORITHM"))):
        for name in names:
            assert getattr(T, name) is getattr(module, name)


def _rope_rows(attn, pos: int, theta: float):
    """(parts, wa): cos | sin of pos * theta_i per feature pair of the layout, float64."""
    from kernels.layers import rope_tables
    cos, sin = rope_tables(attn, [pos], theta)
    return np.concatenate([cos[0], sin[0]], axis=1)


@pytest.mark.parametrize("name, dtype", [("tiny", "float32"), ("tiny-gpt2", "float16")])
def test_second_decode_step_writes_only_the_input(name, dtype):
    """The first step places every layer's weights and cache (host bytes more
    than the GEMV weights of every PE) and, for llama, the RoPE tables; the
    next ones resume from each layer's SRAM image and the host writes only x
    (wd fp32 per PE) per layer, until the slot table outgrows the reserved
    slots and the image is laid out anew. The PEs advance their RoPE table
    themselves: after each step the image holds the next position's cos |
    sin within layers.rope_drift_bound(k) of float64's, k the advances since
    the tables were placed. Values stay those of the float64 reference over
    the steps (cache growth, moves, re-layouts)."""
    from kernels import decode_layer
    from kernels.layers import rope_drift_bound
    model, weights, x = _setup(name, seq=8, n_layers=2)
    ref = reference.prefill(model, weights, x)
    cfg = wse.WSE2.with_grid(rows=4, cols=4)
    lay = T.decode_layouts(model, cfg)
    state = kvcache.WaferKVCache.from_kvcache(model, ref.cache, 4, 4, "shift", dtype)
    ref_state = ref.cache
    tol = 1e-4 if dtype == "float32" else 2e-2
    per_step = 16 * 4 * lay.d.width * 2
    weight_bytes = 16 * T.decode_weight_bytes(model, lay, dtype) * 2
    llama = model.family == "llama"
    relayouts = placed_at = 0
    for step in range(4 * decode_layer.RESERVE_SLOTS + 2):
        slots = [im.slots if im is not None else 0 for im in state.images]
        pos = state.length
        out, state, rep = T.decode_step(model, weights, state, cfg, dtype=dtype)
        ref_out, ref_state = reference.decode_step(model, weights, ref_state)
        assert _rel(out, ref_out) < tol
        if step == 0 or slots[0] < state.capacity:
            assert rep.host_bytes_loaded > weight_bytes
            relayouts += step > 0
            placed_at = pos
        else:
            assert rep.host_bytes_loaded == per_step
        for image in state.images:
            if not llama:
                assert image.rope_position is None
                continue
            assert image.rope_position == pos + 1
            table = image.sram.read("rope").astype(np.float64)
            err = np.abs(table - _rope_rows(lay.attn, pos + 1, model.rope_theta)[None]).max()
            assert err <= rope_drift_bound(pos + 1 - placed_at), (step, err)
    assert relayouts >= 1
    if llama:       # an image whose table holds another position gets the row from the host
        for image in state.images:
            image.rope_position = -1
        slots = state.images[0].slots
        out, state, rep = T.decode_step(model, weights, state, cfg, dtype=dtype)
        ref_out, ref_state = reference.decode_step(model, weights, ref_state)
        assert _rel(out, ref_out) < tol
        assert slots >= state.capacity           # a resumed step
        assert rep.host_bytes_loaded == per_step + 16 * 4 * lay.attn.width * 2
    got = state.to_kvcache()
    for a, b in zip(got.keys + got.values, ref_state.keys + ref_state.values):
        assert _rel(a, b) < tol


def test_rope_advance_drifts_within_its_bound():
    """emit_rope_advance repeated on a row of 3 PEs holding one head of
    LLaMA-3-8B's frequencies (head_dim 128, theta 5e5; the last PE has padding
    pairs) from position 0, in runs of `block` advances, each resuming the
    last one's SRAM: after k advances the fp32 table is within
    rope_drift_bound(k) of float64's cos | sin of k theta_i, and padding pairs
    stay exactly (1, 0). The drift is real (nonzero) and grows with k."""
    from kernels.layers import FeatureLayout, emit_rope_advance, rope_drift_bound
    attn = FeatureLayout.heads(1, 128, 3)
    wa, theta, block = attn.width, 5e5, 256
    pad = np.concatenate([attn.pair_frequency_index() < 0] * 2, axis=1)      # (3, wa)
    assert pad.any()
    cfg = wse.WSE2.with_grid(rows=1, cols=3)
    image, errs = None, []
    for k in range(block, 8 * block + 1, block):
        prog = wse.Program(cfg)
        table, step, tmp = (prog.buffer(n, (wa,), "float32") for n in ("rope", "step", "tmp"))
        if image is None:
            prog.load(table, _rope_rows(attn, 0, theta)[None])
            prog.load(step, _rope_rows(attn, 1, theta)[None])
        else:
            prog.resume(image)
        with prog.role("pe").task("main", entry=True) as t:
            for _ in range(block):
                emit_rope_advance(t, table, step, tmp, wa)
        result = prog.run()
        got = result.read(table)[0].astype(np.float64)
        exact = _rope_rows(attn, k, theta)
        errs.append(np.abs(got - exact).max())
        assert errs[-1] <= rope_drift_bound(k), (k, errs[-1])
        np.testing.assert_array_equal(got[pad], exact[pad])
        image = result.image()
    assert errs[0] > 0 and errs[-1] > errs[0], errs


def test_bad_inputs_get_one_clear_error():
    model, weights, x = _setup(seq=4)
    cfg = wse.WSE2.with_grid(rows=4, cols=4)
    with pytest.raises(wse.SramOverflowError, match="longest sequence that fits"):
        T.prefill(model, weights, np.zeros((200, 64)), cfg.replace(sram_bytes=8192))
    with pytest.raises(wse.ConfigError, match="at least 4 PEs"):
        T.prefill(model, weights, x, wse.WSE2.with_grid(rows=3, cols=3))
    with pytest.raises(wse.ConfigError, match="square"):
        T.prefill(model, weights, x, wse.WSE2.with_grid(rows=4, cols=5))
    other = models.random_weights(model.replace(d_ff=96), seed=0)
    with pytest.raises(wse.ConfigError, match="do not match"):
        T.prefill(model, other, x, cfg)
    with pytest.raises(wse.ConfigError, match="target"):
        T.prefill(model, weights, x, "wafer")
    ref = reference.prefill(model, weights, x)
    with pytest.raises(wse.ConfigError, match="layers"):
        T.decode_step(model, models.random_weights(model, n_layers=1), ref.cache, cfg)
    with pytest.raises(wse.SramOverflowError, match="before any KV cache.*buffer 'w_up'"):
        T.decode_step(model, weights, ref.cache, cfg.replace(sram_bytes=8192))


def test_gpu_target_dispatches_to_sharded_and_compare_table():
    model, weights, x = _setup(seq=5)
    cluster = gpu.Cluster(gpu.H100, n_gpus=8)
    result, g_rep = T.prefill(model, weights, x, cluster)
    direct, _ = sharded.prefill(model, weights, x, cluster)
    np.testing.assert_array_equal(result.hidden, direct)
    out, state, g_dec = T.decode_step(model, weights, result.cache, cluster)
    cfg = wse.WSE2.with_grid(rows=4, cols=4)
    _, _, w_dec = T.decode_step(model, weights, result.cache, cfg)
    table = T.compare(w_dec, g_dec)
    d = table.to_dict()
    assert d["latency"]["wafer"] == w_dec.seconds and d["latency"]["gpu"] == g_dec.seconds
    assert d["bytes moved"]["wafer"] == 4 * w_dec.wavelet_hops
    assert d["bytes moved"]["gpu"] == g_dec.bytes_sent_total
    assert d["tokens per second"]["wafer"] == pytest.approx(1 / w_dec.seconds)
    assert "energy" in str(table)
    with pytest.raises(wse.ConfigError):
        T.compare(g_dec, w_dec)


def test_extrapolation_from_one_layer_matches_full_emulation():
    model, weights, x = _setup(seq=6, n_layers=2)
    cfg = wse.WSE2.with_grid(rows=4, cols=4)
    _, full = T.prefill(model, weights, x, cfg)
    one = models.ModelWeights(weights.layers[:1])
    _, single = T.prefill(model, one, x, cfg)
    ext = T.extrapolate(single, model.replace(n_layers=2), 1, cfg, bytes_per_layer_per_pe=1000)
    assert ext.regions == 1
    assert abs(ext.cycles - full.cycles) / full.cycles < 0.02
    # a layer that does not fit with another one goes to its own region
    ext2 = T.extrapolate(single, model.replace(n_layers=2), 1, cfg,
                         bytes_per_layer_per_pe=cfg.sram_bytes // 2 + 1)
    assert ext2.regions == 2 and ext2.cycles > ext.cycles
