"""The stream engine against the wavelet engine (the reference): the same
program on both gives the same cycles, traffic, counters, SRAM contents,
events, Chrome trace and errors, to the bit (`wse.testing.assert_engines_agree`
compares every field of the run report and the whole final engine state).

The stream engine advances a cycle in bulk only after checking that the state
deciding it repeats the previous cycle's (wse/engine.py, `_repeats`); these
tests are what shows the check is sufficient, on fuzzed programs and on every
kernel family, and that bulk advance happens where it should (the bulk
fractions asserted below), so a fallback to stepping cannot pass silently.
"""
from __future__ import annotations

import collections
import copy

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import wse
from kernels import collectives as C
from kernels import matmul, matvec, mesh_attention, models
from kernels import transformer as T
from wse import routes, testing

FUZZ_EXAMPLES = 250
STREAM_FUZZ_EXAMPLES = 500


def _fuzz_run(spec, max_cycles, window, trap_nan, record):
    def run():
        prog, _ = spec.build()
        return prog.run(max_cycles=max_cycles, deadlock_window=window, trap_nan=trap_nan,
                        record_links=record, record_deliveries=record, trace=record,
                        event_capacity=512)
    return run


def test_fuzzed_programs_agree_on_both_engines():
    """Random programs (wse.testing.programs, streams up to 48 elements, random
    latencies and queue depths, loops, async operations, data tasks, bad
    inputs): both engines give the same outcome to the bit. (Most of these
    finish in a few cycles; stream_programs below is the fuzz that streams.)"""
    tally = collections.Counter()

    @settings(max_examples=FUZZ_EXAMPLES, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(testing.programs(max_size=48, max_instructions=4), st.integers(30, 3000),
           st.integers(5, 300), st.booleans(), st.booleans())
    def one_program(spec, max_cycles, window, trap_nan, record):
        try:
            spec.build()
        except wse.WseError:
            tally["not built"] += 1
            return
        bulk = testing.assert_engines_agree(_fuzz_run(spec, max_cycles, window, trap_nan, record))
        tally["run"] += 1
        if bulk.get("bulk_cycles", 0) > 0:
            tally["bulk"] += 1
        if bulk.get("ahead_pe_steps", 0) > 0:
            tally["ahead"] += 1

    one_program()
    assert tally["run"] >= 0.5 * FUZZ_EXAMPLES, tally
    print(dict(tally))


def _arrivals(spec, senders, cfg) -> list[int]:
    """How many of the senders' streams the route delivers to each PE (a
    stream that runs into a port the next router does not take stops there)."""
    arrivals = [0] * cfg.num_pes
    steps = {wse.isa.NORTH: (0, -1), wse.isa.EAST: (1, 0), wse.isa.SOUTH: (0, 1),
             wse.isa.WEST: (-1, 0)}
    rx, tx = spec.rx.reshape(-1), spec.tx.reshape(-1)
    for sender in senders:
        frontier, seen = [sender], {sender}
        while frontier:
            p = frontier.pop()
            if tx[p] & (1 << wse.isa.RAMP):
                arrivals[p] += 1
            x, y = p % cfg.cols, p // cfg.cols
            for port, (dx, dy) in steps.items():
                nx, ny = x + dx, y + dy
                if not tx[p] & (1 << port) or not (0 <= nx < cfg.cols and 0 <= ny < cfg.rows):
                    continue
                q = ny * cfg.cols + nx
                if rx[q] & (1 << ((port + 2) % 4)) and q not in seen:
                    seen.add(q)
                    frontier.append(q)
    return arrivals


@st.composite
def stream_programs(draw):
    """(build, run options): a small grid with random latencies and queue
    depths, 1 to 3 colors on random routes (floods, point-to-point paths, random
    port masks), and on each PE a random mix of long streams: sends (a plain
    mov or arithmetic on memory operands), receives by a vector instruction
    (of a random length, so some runs deadlock or leave wavelets behind) or by
    a data task per wavelet, and forwards from one color to another; each
    synchronous or asynchronous, in random order. Streams on shared routes
    contend for links, queues and consumers."""
    cfg = draw(testing.wafer_configs(max_rows=3, max_cols=4, vary_timing=True))
    specs = draw(testing.routes(cfg.rows, cfg.cols, 1, 3))
    if draw(st.integers(0, 5)):      # mostly floods and paths, which routes carry whole
        specs = [spec for spec in specs if spec.how != "random"] or \
            draw(testing.routes(cfg.rows, cfg.cols, 1, 1).filter(
                lambda found: found[0].how != "random"))
    n = draw(st.integers(32, 128) | st.integers(1, 8))
    rng = np.random.default_rng(draw(st.integers(0, 2 ** 32 - 1)))
    palette = np.array((0.0, 1.0, -1.0, 0.5, 3.0, -0.0, 1e-3, 2.5e4, np.nan), np.float32)
    values = palette[rng.integers(0, len(palette) - (draw(st.integers(0, 3)) > 0), (
        cfg.rows, cfg.cols, 2 * n))]
    ramp = 1 << wse.isa.RAMP
    # well formed: every PE whose route takes the ramp sends, and every PE a
    # stream reaches receives all of it; otherwise anything goes (deadlocks,
    # route errors, stray wavelets)
    well_formed = draw(st.integers(0, 3)) > 0
    plans = [[] for _ in range(cfg.num_pes)]
    for c, spec in enumerate(specs):
        senders = [p for p in range(cfg.num_pes)
                   if (spec.rx.reshape(-1)[p] & ramp) and (not well_formed or rng.random() < 0.8)]
        arrivals = _arrivals(spec, senders, cfg)
        for p in range(cfg.num_pes):
            op = rng.choice(("mov", "add", "scale", "fmac"))
            if p in senders:
                plans[p].append(("send", c, op, n))
            if well_formed:
                if arrivals[p]:
                    mode = rng.choice(("vector", "vector", "task"))
                    plans[p].append(("recv", c, rng.choice(("mov", "add", "max")),
                                     n * arrivals[p]) if mode == "vector" else ("drain", c))
                continue
            mode = rng.choice(("vector", "task", "none"))
            if mode == "vector":
                plans[p].append(("recv", c, rng.choice(("mov", "add", "max")),
                                 int(rng.integers(1, 2 * n + 1))))
            elif mode == "task":
                plans[p].append(("drain", c))
            onward = (c + 1) % len(specs)
            if onward != c and rng.random() < 0.3:
                plans[p].append(("forward", c, onward, int(rng.integers(1, n + 1))))
    for p, plan in enumerate(plans):
        # receives first keep well-formed programs clear of ordering deadlocks
        plan.sort(key=lambda op: (op[0] != "recv") if well_formed else rng.random())
        async_share = 0.8 if well_formed else 0.4
        plans[p] = [(op, bool(rng.random() < async_share)) for op in plan]
    options = dict(max_cycles=draw(st.just(10 ** 6) | st.integers(20, 6000)),
                   deadlock_window=draw(st.just(10 ** 5) | st.integers(3, 300)),
                   trap_nan=draw(st.integers(0, 2)) == 0, record_links=draw(st.integers(0, 2)) == 0,
                   record_deliveries=draw(st.integers(0, 2)) == 0, trace=draw(st.booleans()),
                   event_capacity=2048)

    def build():
        prog = wse.Program(cfg)
        colors = [prog.color(f"c{i}") for i in range(len(specs))]
        for color, spec in zip(colors, specs):
            prog.route_masks(color, spec.rx, spec.tx)
        x = prog.buffer("x", (2 * n,))
        y = prog.buffer("y", (2 * n,))
        seen = prog.buffer("seen", (1,))
        prog.load(x, values)
        for p, plan in enumerate(plans):
            where = np.zeros(cfg.num_pes, bool)
            where[p] = True
            role = prog.role(f"pe{p}", where=where.reshape(cfg.rows, cfg.cols))
            with role.task("main", entry=True) as t:
                for (kind, *args), async_ in plan:
                    if kind == "send":
                        c, op, length = args
                        out = prog.fabout(colors[c], length)
                        src = x.view(0, length)
                        if op == "mov":
                            t.mov(out, src, async_=async_)
                        elif op == "add":
                            t.add(out, src, x.view(length, length), async_=async_)
                        elif op == "scale":
                            t.scale(out, src, 0.5, async_=async_)
                        else:
                            t.fmac(out, src, x.view(length, length), 2.0, async_=async_)
                    elif kind == "recv":
                        c, op, length = args
                        inp = prog.fabin(colors[c], length)
                        if op == "mov":
                            t.mov(y.view(0, length), inp, async_=async_)
                        else:
                            getattr(t, op)(y.view(0, length), inp, x.view(0, length),
                                           async_=async_)
                    elif kind == "forward":
                        c, d, length = args
                        t.add(prog.fabout(colors[d], length), prog.fabin(colors[c], length),
                              x.view(0, length), async_=async_)
                if any(async_ for _, async_ in plan):
                    t.wait()
            for (kind, *args), _ in plan:
                if kind == "drain":
                    with role.data_task(f"drain{args[0]}", colors[args[0]]) as t:
                        t.adds(seen.view(), seen.view(), wse.WAVELET)
        return prog

    return build, options


@settings(max_examples=STREAM_FUZZ_EXAMPLES, deadline=None, database=None, derandomize=True,
          suppress_health_check=list(HealthCheck))
@given(stream_programs())
def test_fuzzed_streams_agree_on_both_engines(case):
    """Random stream programs (stream_programs): both engines give the same
    outcome to the bit, whether the run completes, deadlocks, hits its cycle
    limit, traps a NaN or has a route error."""
    build, options = case
    try:
        prog = build()
    except wse.WseError:
        return
    bulk = testing.assert_engines_agree(lambda: prog.run(**options))
    STREAM_FUZZ_TALLY["run"] += 1
    STREAM_FUZZ_TALLY["bulk"] += bulk.get("bulk_cycles", 0) > 0
    STREAM_FUZZ_TALLY["columns"] += bulk.get("bulk_column_cycles", 0) > 0
    STREAM_FUZZ_TALLY["ahead"] += bulk.get("ahead_pe_steps", 0) > 0


STREAM_FUZZ_TALLY: collections.Counter = collections.Counter()


def _state_at_cycle_limit(prog, engine: str, max_cycles: int):
    """The engine state a run of `prog` leaves when it stops at `max_cycles`
    (or ends before), taken without Program.run's error handling, which
    drops the state."""
    from wse import engine as loop
    from wse import lowering
    from wse.program import RUN_DEFAULTS
    static, ncolors = prog.compile()
    options = {**RUN_DEFAULTS, "max_cycles": max_cycles, "engine": engine}
    static = static._replace(settings=lowering.settings(prog.cfg, ncolors, options))
    state = lowering.new_state(static, prog._arena.copy(), ncolors, prog.cfg, 0,
                               stream=engine == "stream")
    loop.run(static, state)
    return state, ncolors


@settings(max_examples=120, deadline=None, database=None, derandomize=True,
          suppress_health_check=list(HealthCheck))
@given(stream_programs(), st.integers(1, 400))
def test_the_non_empty_color_masks_match_the_queues_mid_run(case, max_cycles):
    """Routers and PEs keep a bitmask of their non-empty queues' colors (the
    router's own, P_R_NONEMPTY, and its PE's input queues, P_IN_NONEMPTY),
    so a step looks at those colors alone. Wherever a run stops, on either
    engine, each bit is set exactly when its queue holds a wavelet."""
    from wse import engine as loop
    build, _ = case
    try:
        prog = build()
    except wse.WseError:
        return
    for engine in ("wavelet", "stream"):
        state, ncolors = _state_at_cycle_limit(prog, engine, max_cycles)
        pes = prog.cfg.num_pes
        for field, queues in ((loop.P_R_NONEMPTY, state.rq), (loop.P_IN_NONEMPTY, state.pq)):
            counts = queues[:ncolors * pes, loop.Q_COUNT].reshape(ncolors, pes)
            expected = ((counts > 0) << np.arange(ncolors)[:, None]).sum(axis=0)
            assert np.array_equal(state.pe[:, field], expected), (engine, field, max_cycles)


def test_fuzzed_streams_went_in_bulk_often():
    """The stream fuzz above is only evidence if bulk advance happened in it:
    in some of its runs, some of them column-wise (it runs first, in file
    order; derandomized, so the counts are fixed). Most runs are short, fail
    early or drain by data tasks, whose instructions stop bulk advance."""
    if STREAM_FUZZ_TALLY["run"] == 0:
        pytest.skip("run together with test_fuzzed_streams_agree_on_both_engines")
    assert STREAM_FUZZ_TALLY["bulk"] >= 0.03 * STREAM_FUZZ_TALLY["run"], STREAM_FUZZ_TALLY
    # column-wise advance needs a long stream without records or traps: rarer
    # here, and exercised on purpose by the tests further down
    assert STREAM_FUZZ_TALLY["columns"] >= 1, STREAM_FUZZ_TALLY


@pytest.mark.parametrize("room", [80, 600])
def test_column_pass_agrees_taken_a_few_periods_and_groups_at_a_time(monkeypatch, room):
    """The column-wise pass takes its moves in groups that share no queue, a
    batch of groups at a time, and a group whose streams outgrow the room for
    values a few periods at a time. With that room shrunk to 80 values (every
    group of a shift on 3 x 4 PEs alone and in many chunks; a broadcast along
    9 PEs, one group, a period or two at a time) and to 600 (batches of
    several groups), the results are those of the wavelet engine and the
    streams still go column-wise."""
    from wse import engine as loop
    from wse import lowering
    monkeypatch.setattr(lowering, "column_values", lambda n_pe, moves: room)
    grid = wse.WSE2.with_grid(rows=3, cols=4)
    x = np.random.default_rng(1).standard_normal((3, 4, 96)).astype(np.float32)
    for k, wrap in ((1, True), (-1, False)):
        bulk = testing.assert_engines_agree(lambda: C.shift(x, grid, k=k, wrap=wrap))
        assert bulk["bulk_column_cycles"] > 0, bulk
        bulk = testing.assert_engines_agree(lambda: C.shift(x, grid, k=k, along="y", wrap=wrap))
        assert bulk["bulk_column_cycles"] > 0, bulk
    # stopped mid-stream: the queues hold wavelets (values, ids, ready times)
    # that the last chunk of a column pass pushed
    prog = wse.Program(grid)
    src, dst = prog.buffer("src", (96,), "float32"), prog.buffer("dst", (96,), "float32")
    C.shift_fragment(prog, src, dst, "x", 1).install("shift")
    prog.load(src, x)
    for max_cycles in (60, 77, 100):
        states = [_state_at_cycle_limit(prog, engine, max_cycles)[0]
                  for engine in ("wavelet", "stream")]
        for field in ("rq_val", "rq_entry", "rq", "pq_val", "pq_entry", "pq", "slot",
                      "sram_f32", "link_wavelets"):
            assert np.array_equal(getattr(states[0], field), getattr(states[1], field)), \
                (field, max_cycles)
        run_wide = [loop.K_NEXT_WAVELET_ID, loop.K_FINISH, loop.K_LAST_PROGRESS]
        assert states[1].counters[run_wide].tolist() == states[0].counters[run_wide].tolist(), \
            max_cycles
    line = wse.WSE2.with_grid(rows=1, cols=9)
    bulk = testing.assert_engines_agree(lambda: C.broadcast(_line(9, 256), line, root=3))
    assert bulk["bulk_column_cycles"] > 0, bulk
    bulk = testing.assert_engines_agree(lambda: C.reduce(_line(9, 256), line, root=0,
                                                         algorithm="chain"))
    assert bulk["bulk_column_cycles"] > 0, bulk


@settings(max_examples=80, deadline=None, database=None, derandomize=True,
          suppress_health_check=list(HealthCheck))
@given(stream_programs())
def test_fuzzed_streams_agree_with_little_room_for_column_values(case):
    """The stream fuzz above with the column-wise pass's room for values
    shrunk to 24 (lowering.column_values), so that its groups are taken in
    chunks of few periods or not at all: both engines still agree."""
    from wse import lowering
    build, options = case
    try:
        prog = build()
    except wse.WseError:
        return
    saved = lowering.column_values
    lowering.column_values = lambda n_pe, moves: 24
    try:
        testing.assert_engines_agree(lambda: prog.run(**options))
    finally:
        lowering.column_values = saved


def _line(n, B, seed=0, dtype=np.float32):
    return np.random.default_rng(seed).standard_normal((1, n, B)).astype(dtype)


@pytest.mark.parametrize("cfg", [wse.WSE2, wse.WSE2.without_instruction_costs()],
                         ids=["wse2", "free_instructions"])
def test_every_collective_agrees_and_streams_go_in_bulk(cfg):
    """Broadcast, reduce and allreduce (every algorithm) and shift on a line of
    9 PEs with 256-element vectors: identical on both engines; a flood
    broadcast, a chain reduce and a shift move most of their wavelet-hops in
    bulk (the pipeline's fill and drain are stepped)."""
    cfg = cfg.with_grid(rows=1, cols=9)
    x = _line(9, 256)
    fractions = {}
    bulk = testing.assert_engines_agree(lambda: C.broadcast(x, cfg, root=3))
    fractions["broadcast"] = bulk["bulk_hop_fraction"]
    assert bulk["bulk_column_cycles"] == bulk["bulk_cycles"], bulk     # all column-wise
    for algorithm in C.REDUCE_ALGORITHMS:
        bulk = testing.assert_engines_agree(
            lambda: C.reduce(x, cfg, root=0, algorithm=algorithm))
        fractions[f"reduce/{algorithm}"] = bulk["bulk_hop_fraction"]
    for algorithm in C.ALLREDUCE_ALGORITHMS:
        testing.assert_engines_agree(lambda: C.allreduce(x, cfg, algorithm=algorithm, op="max"))
    for k, wrap in ((1, True), (2, False), (-1, True)):
        bulk = testing.assert_engines_agree(lambda: C.shift(x, cfg, k=k, wrap=wrap))
        fractions[f"shift/{k}"] = bulk["bulk_hop_fraction"]
    assert fractions["broadcast"] > 0.7, fractions
    assert fractions["reduce/chain"] > 0.6, fractions
    assert fractions["shift/1"] > 0.7, fractions


def test_collectives_along_columns_in_fp16_agree():
    cfg = wse.WSE2.with_grid(rows=6, cols=3)
    x = np.random.default_rng(1).standard_normal((6, 3, 40)).astype(np.float16)
    testing.assert_engines_agree(lambda: C.broadcast(x, cfg, along="y", root=5))
    testing.assert_engines_agree(lambda: C.allreduce(x, cfg, along="y", algorithm="two_phase"))
    testing.assert_engines_agree(lambda: C.reduce(x, cfg, along="y", algorithm="ktree"))


@pytest.mark.parametrize("algorithm", matmul.ALGORITHMS)
def test_gemm_agrees(algorithm):
    rng = np.random.default_rng(2)
    A, B = rng.standard_normal((24, 16)), rng.standard_normal((16, 20))
    cfg = wse.WSE2.with_grid(rows=4, cols=4)
    testing.assert_engines_agree(lambda: matmul.gemm(A, B, cfg, algorithm=algorithm))
    testing.assert_engines_agree(lambda: matmul.gemm(A, B, cfg, algorithm=algorithm,
                                                     dtype="float32"))


@pytest.mark.parametrize("algorithm", matvec.ALGORITHMS)
def test_gemv_agrees(algorithm):
    rng = np.random.default_rng(3)
    W, x = rng.standard_normal((40, 36)), rng.standard_normal(36)
    cfg = wse.WSE2.with_grid(rows=4, cols=4)
    testing.assert_engines_agree(lambda: matvec.gemv(W, x, cfg, algorithm=algorithm))


@pytest.mark.parametrize("algorithm", ["ring", "gemm"])
def test_attention_agrees(algorithm):
    rng = np.random.default_rng(4)
    Q, K, V = (rng.standard_normal((2, 6, 8)) for _ in range(3))
    cfg = wse.WSE2.with_grid(rows=3, cols=3)
    testing.assert_engines_agree(lambda: mesh_attention.attention(Q, K, V, cfg, causal=True,
                                                                  algorithm=algorithm))


def test_tiny_prefill_and_decode_agree():
    model = models.preset("tiny")
    weights = models.random_weights(model, seed=0, n_layers=1)
    x = np.random.default_rng(5).standard_normal((3, model.d_model))
    cfg = wse.WSE2.with_grid(rows=4, cols=4)
    testing.assert_engines_agree(lambda: T.prefill(model, weights, x, cfg))
    result, _ = T.prefill(model, weights, x, cfg)
    # a decode step appends to the cache it is given: each engine gets its own copy
    testing.assert_engines_agree(
        lambda: T.decode_step(model, weights, copy.deepcopy(result.cache), cfg)[::2])


# ----------------------------------------------------------------------------
# Errors in the middle of a stream that goes in bulk

def _fails_alike(prog, error, **options):
    """The reference engine fails the run with `error` (a class name; None:
    any error), and the stream engine fails it the same way."""
    outcomes = testing.run_on_each_engine(lambda: prog.run(**options))
    assert outcomes["wavelet"][0] == "error", outcomes
    assert error is None or outcomes["wavelet"][1] == error, outcomes
    testing.assert_engines_agree(lambda: prog.run(**options))


def _row_going_east(cols):
    """A 1 x cols program and a color routed from PE 0's ramp east to the last
    PE's ramp."""
    prog = wse.Program(wse.WSE2.with_grid(rows=1, cols=cols))
    color = prog.color("east")
    rx = np.zeros((1, cols), np.int64)
    tx = np.zeros((1, cols), np.int64)
    rx[0, 0], tx[0, 0] = 1 << wse.isa.RAMP, 1 << wse.isa.EAST
    rx[0, 1:], tx[0, 1:-1], tx[0, -1] = 1 << wse.isa.WEST, 1 << wse.isa.EAST, 1 << wse.isa.RAMP
    prog.route_masks(color, rx, tx)
    return prog, color


def _stream(n=400, cols=6, consume=True, poison_at=None):
    """PE 0 streams n values east along a row to the last PE, which stores them
    (or, with consume=False, never reads them)."""
    prog, color = _row_going_east(cols)
    x = prog.buffer("x", (n,))
    values = np.arange(n, dtype=np.float32)
    if poison_at is not None:
        values[poison_at] = np.nan
    prog.load(x, np.broadcast_to(values, (1, cols, n)).copy())
    where = np.zeros((1, cols), bool)
    where[0, 0] = True
    with prog.role("sender", where=where).task("main", entry=True) as t:
        t.mov(prog.fabout(color, n), x.view())
    if consume:
        last = np.zeros((1, cols), bool)
        last[0, -1] = True
        with prog.role("receiver", where=last).task("main", entry=True) as t:
            t.mov(x.view(), prog.fabin(color, n))
    return prog


def test_a_long_stream_goes_almost_entirely_in_bulk_with_the_same_result():
    """Recorded links and traces: replayed period by period; unrecorded:
    column-wise. Either way the whole final engine state is the same."""
    prog = _stream()
    bulk = testing.assert_engines_agree(lambda: prog.run(record_links=True, trace=True))
    assert bulk["bulk_hop_fraction"] > 0.9 and bulk["bulk_column_cycles"] == 0, bulk
    bulk = testing.assert_engines_agree(lambda: prog.run())
    assert bulk["bulk_hop_fraction"] > 0.9 and bulk["bulk_column_cycles"] > 0, bulk


@pytest.mark.parametrize("workload", ["multicast", "shift"])
@pytest.mark.parametrize("cfg", [wse.WSE2, wse.WSE2.without_instruction_costs()],
                         ids=["wse2", "free_instructions"])
def test_engine_workloads_leave_the_same_state_column_wise(workload, cfg):
    """The throughput benchmark's workloads on 5 x 6 with 300-wavelet streams
    (a 2-D multicast tree; every PE sending and receiving at once): the final
    engine state (queues' ring slots, wavelet ids, ready times, counters) is
    the wavelet engine's, most of it advanced column-wise."""
    from benchmarks.engine_throughput import multicast_program, shift_program
    build = multicast_program if workload == "multicast" else shift_program
    cfg = cfg.with_grid(rows=5, cols=6)
    bulk = testing.assert_engines_agree(lambda: build(cfg, 300).run())
    assert bulk["bulk_column_cycles"] > 0.5 * bulk["bulk_cycles"] > 0, bulk


def test_the_tile_products_workload_runs_ahead_and_leaves_the_same_state():
    """The throughput benchmark's instruction-bound workload on 3 x 4 PEs,
    two tile products each: the final state is the wavelet engine's, and
    nearly every step is taken ahead (nothing in it needs the fabric); both
    engines take exactly
    `timing.matmul_cycles` per product (the products run back to back, so
    the two end at twice that)."""
    from benchmarks.engine_throughput import tile_products_program
    from wse import timing
    cfg = wse.WSE2.with_grid(rows=3, cols=4)
    prog = tile_products_program(cfg, products=2)
    bulk = testing.assert_engines_agree(lambda: prog.run())
    report = prog.run().report
    assert report.cycles == 2 * timing.matmul_cycles(16, 16, 16, "float16", cfg), report.cycles
    assert bulk["ahead_pe_steps"] > 0.9 * report.pe_steps, (bulk, report.pe_steps)


def _two_way_shift(rows, cols, n, running_sum=False, product=None, product_into=None):
    """Every PE sends a stream of n fp32 values east and one south at once
    (two asynchronous sends taking turns at its ramp) and receives one from
    the west and one from the north (two streams into its ramp): the shifts
    of a MeshGEMM step without its product. With `running_sum` a receive
    adds each value to the element before it (in[i + 1] = fabric + in[i]:
    it reads what it wrote one element earlier). With `product` = (m, k,
    n2) each PE's main thread computes C += A @ B on m x k and k x n2 fp32
    tiles while its streams move, then waits for them (a MeshGEMM step);
    C is buffer "c", or the buffer named `product_into`. Returns the program
    and its send and receive buffers (east, south)."""
    prog = wse.Program(wse.WSE2.with_grid(rows=rows, cols=cols))
    xs = np.broadcast_to(np.arange(cols), (rows, cols))
    ys = np.broadcast_to(np.arange(rows)[:, None], (rows, cols))
    send_colors, recv_colors = [], []
    for axis, along, size in (("east", "x", cols), ("south", "y", rows)):
        plan = routes.transfers(prog, along, [(i, i + 1) for i in range(size - 1)], name=axis)
        send_colors.append(prog.color_param_indices(f"send_{axis}", plan.send_color))
        recv_colors.append(prog.color_param_indices(f"recv_{axis}", plan.recv_color))
    outs = [prog.buffer(f"out_{axis}", (n,), "float32") for axis in ("east", "south")]
    ins = [prog.buffer(f"in_{axis}", (n + running_sum,), "float32") for axis in ("east", "south")]
    if product is not None:
        m, k, n2 = product
        tiles = {name: prog.buffer(name, shape, "float32")
                 for name, shape in (("a", (m, k)), ("b", (k, n2)), ("c", (m, n2)))}
    rng = np.random.default_rng(5)
    for buf in outs:
        prog.load(buf, rng.standard_normal((rows, cols, n)).astype(np.float32))
    if product is not None:
        for name in ("a", "b"):
            prog.load(tiles[name], rng.standard_normal((rows, cols) + tiles[name].shape)
                      .astype(np.float32))
        into = {"out_east": outs[0], "in_east": ins[0]}.get(product_into, tiles["c"])
    for east in (False, True):
        for west in (False, True):
            for south in (False, True):
                for north in (False, True):
                    where = ((xs < cols - 1) == east) & ((xs > 0) == west) \
                        & ((ys < rows - 1) == south) & ((ys > 0) == north)
                    if not where.any():
                        continue
                    name = f"e{east:d}w{west:d}s{south:d}n{north:d}"
                    with prog.role(name, where=where).task("main", entry=True) as t:
                        for k, (sends, receives) in enumerate(((east, west), (south, north))):
                            if receives and running_sum:
                                t.add(ins[k].view(1, n), prog.fabin(recv_colors[k], n),
                                      ins[k].view(0, n), async_=True)
                            elif receives:
                                t.mov(ins[k].view(), prog.fabin(recv_colors[k], n), async_=True)
                            if sends:
                                t.mov(prog.fabout(send_colors[k], n), outs[k].view(),
                                      async_=True)
                        if product is not None:
                            t.matmul(into.view(), tiles["a"].view(), tiles["b"].view(), *product)
                        t.wait()
    return prog, outs, ins


def test_four_streams_a_pe_repeat_over_twelve_cycles_and_go_in_bulk():
    """Two sends sharing each PE's ramp and two receives into it (the shifts
    of a MeshGEMM step) move about 4.6 wavelets a PE a cycle and repeat only
    every 12 cycles: the recording must hold that many moves, or no period is
    ever found (with room for ten moves a PE none was). Each send slot moves
    six times a period, so the column-wise pass must take a slot's elements
    j, j + 6, ... in its j-th move's column (it used to replay such periods
    one by one). Same final state on both engines; every value arrives at
    its neighbour; each wavelet crosses one link; each PE's ramp carries its
    2 n outgoing wavelets one a cycle; most hops go in bulk, column-wise."""
    rows, cols, n = 6, 6, 240
    prog, outs, ins = _two_way_shift(rows, cols, n)
    bulk = testing.assert_engines_agree(lambda: prog.run())
    result = prog.run()
    assert bulk["bulk_hop_fraction"] > 0.6, bulk
    assert bulk["bulk_column_cycles"] == bulk["bulk_cycles"], bulk
    assert result.report.wavelet_hops == (rows * (cols - 1) + (rows - 1) * cols) * n
    assert result.report.cycles >= 2 * n
    sent_east, sent_south = (result.read(b) for b in outs)
    got_east, got_south = (result.read(b) for b in ins)
    assert np.array_equal(got_east[:, 1:], sent_east[:, :-1])
    assert np.array_equal(got_south[1:, :], sent_south[:-1, :])


def test_a_slot_that_moves_several_times_a_period_and_reads_what_it_wrote_is_replayed_in_order():
    """The four streams of the test above, each receive now a running sum
    that reads the element it wrote one element before. Column-wise, a slot
    moving six times a period would take element i + 1 before element i was
    written, so such a period is replayed period by period: both engines end
    in the same state, the sums are those of the values sent (each PE's
    in[1:] is the cumulative sum of its neighbour's stream, in fp32 order),
    and hops still go in bulk, but none column-wise."""
    rows, cols, n = 5, 5, 240
    prog, outs, ins = _two_way_shift(rows, cols, n, running_sum=True)
    bulk = testing.assert_engines_agree(lambda: prog.run())
    result = prog.run()
    assert bulk["bulk_hop_fraction"] > 0.6, bulk
    assert bulk["bulk_column_cycles"] == 0, bulk
    sent_east, sent_south = (result.read(b) for b in outs)
    got_east, got_south = (result.read(b) for b in ins)
    for got, sent in ((got_east[:, 1:], sent_east[:, :-1]), (got_south[1:], sent_south[:-1])):
        assert np.array_equal(got[..., 1:], np.cumsum(sent, axis=-1, dtype=np.float32))


def test_a_tile_product_beside_the_four_streams_lets_them_go_in_bulk():
    """A MeshGEMM step: each PE's main thread multiplies 8 x 8 fp32 tiles
    (a loop of FMACs on buffers no stream touches) while its four streams
    move, then waits. The main thread runs ahead beside the streams, so their
    periods repeat and go in bulk (with any instruction issued beside them,
    none did). Same final state and counters on both engines; the product is
    A @ B (fp32, to rounding); the data arrive at the neighbours; and each
    PE's stall cycles are those of the same streams without the product (a
    stall is a fabric operation waiting while none moves, whatever the main
    thread does), while the product lengthens the run."""
    rows, cols, n = 5, 5, 240
    prog, outs, ins = _two_way_shift(rows, cols, n, product=(8, 8, 8))
    bulk = testing.assert_engines_agree(lambda: prog.run())
    result = prog.run()
    assert bulk["bulk_hop_fraction"] > 0.6 and bulk["ahead_pe_steps"] > 0, bulk
    tiles = {buf.name: buf for buf in prog.buffers}
    a, b, c = (result.read(tiles[name]) for name in ("a", "b", "c"))
    testing.assert_close(c, np.einsum("yxik,yxkj->yxij", a.astype(np.float64),
                                      b.astype(np.float64)), "float32", terms=8)
    sent_east, sent_south = (result.read(b) for b in outs)
    got_east, got_south = (result.read(b) for b in ins)
    assert np.array_equal(got_east[:, 1:], sent_east[:, :-1])
    assert np.array_equal(got_south[1:, :], sent_south[:-1, :])
    alone = _two_way_shift(rows, cols, n)[0].run().report
    np.testing.assert_array_equal(result.report.stall_cycles, alone.stall_cycles)
    assert result.report.cycles > alone.cycles
    program_cycles = wse.timing.matmul_cycles(8, 8, 8, "float32", prog.cfg)
    assert result.report.cycles >= program_cycles


def test_a_product_into_what_a_stream_still_sends_waits_for_its_turn():
    """The same product written into the buffer the east stream is sending:
    each FMAC writes SRAM a send has still to read, so what is sent depends
    on the order of the two, and the main thread must not run ahead beside
    that stream. Both engines agree on every value sent and every counter."""
    prog, _, _ = _two_way_shift(4, 4, 240, product=(8, 8, 8), product_into="out_east")
    testing.assert_engines_agree(lambda: prog.run())


def test_a_shift_on_a_grid_past_a_fixed_scratch_cap_still_advances_in_bulk():
    """352 x 352 PEs (123,904): a period's signature (about 75 entries per
    PE) and moves (about 3.5 per PE a cycle) outgrow any scratch of a few
    million entries; sized by the grid, the recording fits and the shift is
    advanced in bulk. Every wavelet crosses one link (rows x (cols - 1) x 64
    hops), data arrive intact, and the cycle count is that of the same shift
    on 5 x 6, where both engines are compared (a shift's time does not depend
    on the grid's size)."""
    from benchmarks.engine_throughput import shift_program
    length = 64
    big = shift_program(wse.WSE2.with_grid(rows=352, cols=352), length)
    result = big.run()
    extra = result.report.extra
    assert extra["bulk_attempts"] > 0 and extra["bulk_hop_fraction"] > 0.5, extra
    assert extra["bulk_mismatches"] == 0, extra
    assert result.report.wavelet_hops == 352 * 351 * length
    received = result.read(big.buffers[1])[:, 1:]
    assert np.array_equal(received, np.broadcast_to(np.arange(length, dtype=np.float32),
                                                    received.shape))
    small = wse.WSE2.with_grid(rows=5, cols=6)
    testing.assert_engines_agree(lambda: shift_program(small, length).run())
    assert result.report.cycles == shift_program(small, length).run().report.cycles


@pytest.mark.parametrize("limit", [37, 150, 401])
def test_a_cycle_limit_inside_a_bulk_stretch_fails_at_the_same_cycle(limit):
    _fails_alike(_stream(), "CycleLimitError", max_cycles=limit)


def test_a_nan_met_inside_a_bulk_stretch_traps_at_the_same_cycle_and_element():
    prog = _stream(poison_at=300)
    _fails_alike(prog, "FloatingPointTrap", trap_nan=True)


@pytest.mark.parametrize("window", [3, 50])
def test_a_stream_nobody_consumes_deadlocks_alike(window):
    prog = _stream(consume=False)
    _fails_alike(prog, "FabricDeadlockError", deadlock_window=window)


# ----------------------------------------------------------------------------
# Selecting the engine

def test_the_engine_is_chosen_per_run_or_by_run_options():
    prog = _stream(n=64)
    assert prog.run(engine="stream").report.extra["engine"] == "stream"
    assert "engine" not in prog.run(engine="wavelet").report.extra
    with wse.run_options(engine="stream"):
        assert prog.run().report.extra["engine"] == "stream"
        assert "engine" not in prog.run(engine="wavelet").report.extra
    with pytest.raises(wse.ConfigError, match="engine = 'fast'"):
        prog.run(engine="fast")
    with pytest.raises(wse.ConfigError, match="engine = 'fast'"):
        with wse.run_options(engine="fast"):
            prog.run()


# ----------------------------------------------------------------------------
# Running ahead: a PE whose task needs nothing from the fabric takes its steps
# at once (wse/engine.py, _run_ahead); everything must still come out as
# stepping has it, including errors and deadlocks met inside such a stretch.

def _local_work_beside_a_stream(cols=4, n=64, rounds=12, work=24, fail_at=None,
                                async_work=False, dtype="float32", receive_more=0,
                                stream_async=False):
    """PE 0 streams n values east to the last PE; every PE first runs `rounds`
    rounds of memory-only work (add, scale, exp, a reduction, register
    arithmetic) on its own buffers, the receiver again after receiving. With
    `fail_at` = k the work's window walks off its buffer in round k (a
    program error met inside a stretch run ahead). `async_work`: some
    operations go to async slots, one finishing an on_done task, then a wait.
    `receive_more`: the receiver waits for more than is sent (a deadlock).
    `stream_async`: the sender and the receiver start the stream as an
    asynchronous operation and do their work beside it, then wait (the main
    thread runs ahead beside a fabric operation)."""
    prog, color = _row_going_east(cols)
    x = prog.buffer("x", (n,))
    size = work + rounds if fail_at is None else work + fail_at - 1
    acc = prog.buffer("acc", (size,), dtype)
    out = prog.buffer("out", (2,))
    rng = np.random.default_rng(7)
    prog.load(x, rng.standard_normal((1, cols, n)).astype(np.float32))
    prog.load(acc, (0.01 * rng.standard_normal((1, cols, size))).astype(dtype))

    def local_work(t, done=None):
        step = t.reg()
        t.set(step, 0)
        with t.loop(rounds):
            # the window moves by one each round; past `limit` it leaves the buffer
            window = acc.view(offset=step, length=work)
            t.add(window, window, acc.view(0, work), async_=async_work, on_done=done)
            t.scale(window, window, 0.5)
            t.exp(window, window, async_=async_work)
            if async_work:
                t.wait()
            t.sum(out.view(0, 1), window)
            t.addi(step, 1)
            if fail_at is None:
                t.mod(step, rounds)
        t.mov(out.view(1, 1), acc.view(0, 1))

    for name, where, receive in (("sender", 0, False), ("middle", slice(1, cols - 1), False),
                                 ("receiver", cols - 1, True)):
        mask = np.zeros((1, cols), bool)
        mask[0, where] = True
        if not mask.any():
            continue
        role = prog.role(name, where=mask)
        done = role.task("noted") if async_work else None
        if done is not None:
            with done as t:
                t.mov(out.view(0, 1), out.view(1, 1))
        with role.task("main", entry=True) as t:
            if stream_async and name == "sender":
                t.mov(prog.fabout(color, n), x.view(), async_=True)
            if stream_async and receive:
                t.mov(x.view(), prog.fabin(color, n), async_=True)
            local_work(t, done)
            if stream_async and (receive or name == "sender"):
                t.wait()
            if name == "sender" and not stream_async:
                t.mov(prog.fabout(color, n), x.view())
            if receive:
                if not stream_async:
                    t.mov(x.view(), prog.fabin(color, n))
                if receive_more:
                    t.mov(x.view(0, receive_more), prog.fabin(color, receive_more))
                local_work(t, done)
    return prog


@pytest.mark.parametrize("stream_async", [False, True])
@pytest.mark.parametrize("async_work", [False, True])
@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_local_work_runs_ahead_with_the_same_outcome(async_work, dtype, stream_async):
    prog = _local_work_beside_a_stream(async_work=async_work, dtype=dtype,
                                       stream_async=stream_async)
    bulk = testing.assert_engines_agree(lambda: prog.run(trace=True, record_links=True))
    assert bulk["ahead_pe_steps"] > 0, bulk


@pytest.mark.parametrize("window", [2, 5, 40])
def test_a_deadlock_window_shorter_than_local_work_is_kept(window):
    """Exp costs many cycles at once: with a deadlock window shorter than an
    operation, stepping may find the run quiet between two PE steps; running
    ahead must neither hide nor invent that."""
    prog = _local_work_beside_a_stream(rounds=6)
    testing.assert_engines_agree(lambda: prog.run(deadlock_window=window))
    stuck = _local_work_beside_a_stream(rounds=6, receive_more=3)
    _fails_alike(stuck, "FabricDeadlockError", deadlock_window=window)


@pytest.mark.parametrize("limit", [50, 333, 1200])
def test_a_cycle_limit_inside_local_work_fails_at_the_same_cycle(limit):
    prog = _local_work_beside_a_stream()
    _fails_alike(prog, "CycleLimitError", max_cycles=limit)


@pytest.mark.parametrize("fail_at", [1, 3])
def test_a_program_error_inside_local_work_is_reported_alike(fail_at):
    prog = _local_work_beside_a_stream(fail_at=fail_at)
    _fails_alike(prog, None)


@settings(max_examples=60, deadline=None, database=None, derandomize=True,
          suppress_health_check=list(HealthCheck))
@given(st.integers(2, 5), st.integers(2, 40), st.integers(1, 8), st.integers(1, 30),
       st.sampled_from([None, None, None, 1, 4]), st.booleans(),
       st.sampled_from(["float32", "float16"]), st.sampled_from([0, 0, 0, 2]),
       st.sampled_from([10 ** 6, 10 ** 6]) | st.integers(20, 3000),
       st.integers(2, 200) | st.just(10 ** 5), st.booleans(), st.booleans())
def test_fuzzed_local_work_agrees_on_both_engines(cols, n, rounds, work, fail_at, async_work,
                                                 dtype, receive_more, max_cycles, window,
                                                 record, stream_async):
    """Local work of random length beside a stream (the stream on the main
    thread before or after it, or asynchronous, the work beside it), with
    random cycle limits, deadlock windows (some shorter than one operation),
    program errors and deadlocks: both engines agree, and PEs ran ahead in
    most completed runs."""
    prog = _local_work_beside_a_stream(cols, n, rounds, work, fail_at, async_work, dtype,
                                       receive_more, stream_async)
    bulk = testing.assert_engines_agree(lambda: prog.run(
        max_cycles=max_cycles, deadlock_window=window, trace=record, record_links=record))
    LOCAL_FUZZ_TALLY["run"] += 1
    LOCAL_FUZZ_TALLY["completed"] += bool(bulk)       # {} after an error
    LOCAL_FUZZ_TALLY["ahead"] += bulk.get("ahead_pe_steps", 0) > 0


LOCAL_FUZZ_TALLY: collections.Counter = collections.Counter()


def test_fuzzed_local_work_ran_ahead_often():
    if LOCAL_FUZZ_TALLY["run"] == 0:
        pytest.skip("run together with test_fuzzed_local_work_agrees_on_both_engines")
    assert LOCAL_FUZZ_TALLY["completed"] >= 10, LOCAL_FUZZ_TALLY
    assert LOCAL_FUZZ_TALLY["ahead"] >= 0.8 * LOCAL_FUZZ_TALLY["completed"], LOCAL_FUZZ_TALLY
