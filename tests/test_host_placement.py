"""Host-side placement and loading: the vectorised paths give the values the
element-by-element definitions give.

Program.load converts each value once from the caller's dtype to the buffer's
(float64 -> float16 rounds once, never through float32) and writes it at the
buffer's per-PE address, whether the buffer sits at one offset on every PE (a
strided view of the SRAM image) or at different ones (indexed writes); reads
return NaN where a buffer is absent. Placing a K/V weight through
kv_head_layout equals placing its expanded copy (expand_kv_heads), and
place_matrix in a given dtype equals the float64 blocks converted once;
build_roles keys PEs by their label tuples as np.unique over rows would."""
from types import SimpleNamespace

import numpy as np
import pytest

import wse
from kernels.layers import (FeatureLayout, build_roles, expand_kv_heads, kv_head_layout,
                            place_matrix, place_sequence)
from wse.program import _pe_words


def _program_with_ragged_layout(cfg):
    """Buffer 'edge' only on column 0 shifts 'late' to another offset there."""
    prog = wse.Program(cfg)
    edge = prog.buffer("edge", (3,), where=prog.pes(cols=0))
    late = prog.buffer("late", (5,), "float16")
    full = prog.buffer("full", (2, 3))
    prog.role("idle_too")
    return prog, edge, late, full


@pytest.mark.parametrize("where_rows", [slice(None), slice(1, 3)])
def test_loads_land_at_each_pes_address_converted_once(where_rows):
    cfg = wse.WSE2.with_grid(rows=3, cols=4)
    prog, edge, late, full = _program_with_ragged_layout(cfg)
    rng = np.random.default_rng(0)
    late_data = rng.standard_normal((3, 4, 5)) * 1e3           # float64: rounds once
    full_data = rng.standard_normal((3, 4, 2, 3))
    edge_data = rng.standard_normal((3, 4, 3))
    mask = prog.pes(rows=where_rows)
    prog.load(late, late_data, where=mask)
    prog.load(full, full_data, where=mask)
    prog.load(edge, edge_data, where=mask)
    result = prog.run()
    expect_late = np.where(mask[..., None], late_data.astype(np.float16), 0)
    np.testing.assert_array_equal(result.read(late), expect_late)
    np.testing.assert_array_equal(
        result.read(full), np.where(mask[..., None, None], full_data.astype(np.float32), 0))
    edge_read = result.read(edge)
    assert np.isnan(edge_read[:, 1:]).all()                     # absent off column 0
    np.testing.assert_array_equal(
        edge_read[:, 0], np.where(mask[:, 0, None], edge_data[:, 0].astype(np.float32), 0))
    assert result.report.host_bytes_loaded == int(mask.sum()) * (5 * 2 + 6 * 4) \
        + int(mask[:, 0].sum()) * 3 * 4


def test_strided_view_only_where_addresses_step_evenly():
    """_pe_words views a buffer as (PEs, size) only when its addresses step
    evenly; a ragged layout falls back to indexed writes (None)."""
    cfg = wse.WSE2.with_grid(rows=2, cols=3)
    prog, edge, late, full = _program_with_ragged_layout(cfg)
    arena = prog._ensure_arena()
    assert _pe_words(arena, prog._buffer_addresses(late), 5, "float16") is None
    even = wse.Program(cfg)
    a, b = even.buffer("a", (3,)), even.buffer("b", (4,), "float16")
    arena = even._ensure_arena()
    words = _pe_words(arena, even._buffer_addresses(b), 4, "float16")
    assert words.shape == (6, 4) and words.strides == (12 + 8, 2)
    assert np.shares_memory(words, arena)


def test_placement_in_a_dtype_and_through_kv_heads_equals_the_expanded_copy():
    small = SimpleNamespace(n_heads=8, n_kv_heads=2, head_dim=6, d_model=48)  # GQA group 4
    rng = np.random.default_rng(1)
    rows_layout = FeatureLayout.plain(small.d_model, 5)
    heads = FeatureLayout.heads(small.n_heads, small.head_dim, 19)
    kv = kv_head_layout(small, heads)
    W = rng.standard_normal((small.d_model, small.n_kv_heads * small.head_dim))
    np.testing.assert_array_equal(place_matrix(W, rows_layout, kv),
                                  place_matrix(expand_kv_heads(small, W), rows_layout, heads))
    np.testing.assert_array_equal(
        place_matrix(W, rows_layout, kv, np.float16),
        place_matrix(expand_kv_heads(small, W), rows_layout, heads).astype(np.float16))
    seq = rng.standard_normal((7, small.n_kv_heads * small.head_dim))
    np.testing.assert_array_equal(place_sequence(seq, kv, 3, 3),
                                  place_sequence(expand_kv_heads(small, seq), heads, 3, 3))


def test_build_roles_gives_one_role_per_label_combination_in_row_order():
    """PEs with the same labels in every channel share a role; roles are made
    in the lexicographic order of the label tuples; a label below -1 is refused."""
    cfg = wse.WSE2.with_grid(rows=3, cols=4)
    rng = np.random.default_rng(2)
    channels = {"a": SimpleNamespace(label=rng.integers(-1, 3, (3, 4))),
                "b": SimpleNamespace(label=rng.integers(-1, 12, (3, 4)))}
    prog = wse.Program(cfg)
    seen = []
    made = build_roles(prog, channels, lambda t, parts: seen.append((parts["a"], parts["b"])))
    combos = np.unique(np.stack([channels["a"].label, channels["b"].label], -1).reshape(-1, 2),
                       axis=0)
    assert made == len(combos) and seen == [tuple(c) for c in combos.tolist()]
    for role in prog.roles[1:]:
        a, b = seen[int(role.name[1:])]
        np.testing.assert_array_equal(prog.pe_role == role.index,
                                      (channels["a"].label == a) & (channels["b"].label == b))
    channels["a"].label[0, 0] = -2
    with pytest.raises(wse.ConfigError, match="labels >= -1"):
        build_roles(wse.Program(cfg), channels, lambda t, parts: None)
