"""The hardware description: one flat, documented parameter record.

Every field says where its value comes from. Values the vendor has not
published are marked ASSUMPTION; they are fields precisely so that a
researcher can vary them and see what depends on them.

Sources (docs/engine.md tabulates the WSE-2 values with them; `wse info`
prints every field):
  [SDK]   Cerebras SDK documentation (fabric sizes, colors, ports, link width)
  [HC34]  Hot Chips 34 presentation on WSE-2 (48 KiB SRAM per PE)
  [LLM]   WaferLLM, OSDI 2025 (1.1 GHz, fp32 FMAC rate)
  [SC24]  Luczynski et al., spatial collectives, HPDC 2024 (ramp latency 2)
  [PR]    vendor launch material and press (core counts, power)
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from .errors import ConfigError

DTYPES = ("float32", "float16")

SOURCES = {
    "SDK": "Cerebras SDK documentation",
    "HC34": "Hot Chips 34 presentation on WSE-2",
    "LLM": "WaferLLM, OSDI 2025",
    "SC24": "Luczynski et al., spatial collectives, HPDC 2024",
    "PR": "vendor launch material and press",
}


def _check_int(name: str, value, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ConfigError(
            f"WaferConfig.{name} = {value!r}: must be an integer in [{low}, {high}]")


def _check_float(name: str, value, low: float, high: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise ConfigError(
            f"WaferConfig.{name} = {value!r}: must be a number in [{low}, {high}]")


@dataclass(frozen=True)
class WaferConfig:
    """A wafer: its PE grid and the per-PE, per-router and fabric parameters."""

    name: str = "WSE-2"
    rows: int = 996
    """PE rows (y, grows South). WSE-2 fabric is 757 cols x 996 rows [SDK]; the
    kernel-usable rectangle is 750 x 994 [SDK csl-examples]."""
    cols: int = 757
    """PE columns (x, grows East)."""
    sram_bytes: int = 48 * 1024
    """Private SRAM per PE: 48 KiB [HC34]."""
    clock_hz: float = 1.1e9
    """Clock: 1.1 GHz, as WaferLLM converts cycles [LLM]. Some SDK examples use 850 MHz."""
    fmacs_per_cycle_fp32: int = 1
    """fp32 fused multiply-adds per cycle per PE [LLM section 7]. Also the SIMD
    width of every other fp32 vector operation (ASSUMPTION for non-FMA ops)."""
    fmacs_per_cycle_fp16: int = 4
    """fp16 SIMD width: 4 FMACs per cycle on WSE-2 [PR]. Also the width of
    other fp16 vector operations (ASSUMPTION for non-FMA ops)."""
    ramp_latency: int = 2
    """Cycles between a PE and its own router, each way (T_R) [SC24]."""
    hop_latency: int = 1
    """Cycles for one router-to-router hop [SDK]. Uncertain: one simulator log
    shows 2 cycles between successive PEs of a multicast."""
    link_bits: int = 32
    """Payload bits of one wavelet; one wavelet per link per cycle per direction [SDK]."""
    num_colors: int = 24
    """Routable colors (virtual channels), 0..23 [SDK]."""
    queue_depth: int = 4
    """Wavelets buffered per color in each router (ASSUMPTION: not published;
    a host stream stalls after ~14 queued wavelets [SDK pipeline tutorial]).
    Flow control is credit based, so a link sustains one wavelet per cycle only
    when queue_depth >= hop_latency + 1 (the credit round trip)."""
    input_queue_depth: int = 4
    """Wavelets buffered per color between a router and its PE (ASSUMPTION).
    A PE receives a stream at full rate when this is >= ramp_latency + 1."""
    async_slots: int = 4
    """Asynchronous vector operations a PE may have in flight besides its main
    thread (ASSUMPTION: the hardware has a small number of microthreads)."""
    scalar_op_cycles: int = 1
    """Issue cycles of every instruction (control instructions: register
    arithmetic, loop counter and branch, activate, wait, descriptor offset
    updates; a vector instruction's issue; an asynchronous operation takes
    them from the main thread too). 1: the floor of an in-order core that
    issues at most one instruction per cycle; no per-instruction figure is
    published, so a real PE may pay more (see the sensitivity table in
    docs/engine.md). 0 makes control instructions free, at most
    `instructions_per_cycle` of them per cycle."""
    vector_startup_cycles: int = 2
    """Cycles from a vector instruction's issue to its first element
    (descriptor fetch, first operand read), asynchronous ones too.
    ASSUMPTION: not published; a start-up of a few cycles."""
    datapath_latency: int = 1
    """Cycles an element spends in the datapath between its operands'
    arrival and its result leaving on the ramp: an element received,
    combined and sent on leaves one cycle after it arrived. From the WSE-2
    fabric model validated on CS-2 [SC24]: a chain reduce hop costs
    2*T_R + 2 (two ramps, one link, one datapath cycle)."""
    task_start_cycles: int = 2
    """Cycles from the wavelet or activation that fires a task to its first
    instruction (task selection, context set-up). Entry tasks are running
    when the run starts. ASSUMPTION: not published."""
    software_transcendentals: bool = True
    """exp, recip, rsqrt, sigmoid and tanh cost the vector-instruction
    sequence a PE runs for them (wse/isa.py SOFTWARE_SEQUENCE_PASSES: a PE
    has no transcendental unit). False charges one pass, as a hardware unit
    would (the idealised PE)."""
    instructions_per_cycle: int = 64
    """Emulation guard when scalar_op_cycles = 0: instructions a PE may
    retire in one cycle, so that no loop is ever free."""
    pj_per_wavelet_hop: float = 2.0
    """Energy of moving one 32-bit wavelet across one link (ASSUMPTION:
    ~0.06 pJ/bit over a sub-mm on-wafer wire; no published figure)."""
    pj_per_flop: float = 0.5
    """Energy per floating-point operation, fp16 (ASSUMPTION, order of
    published 7 nm FMAC figures)."""
    pj_per_sram_byte: float = 0.1
    """Energy per byte read or written in SRAM by a vector operation (ASSUMPTION)."""
    system_watts: float = 15000.0
    """Wall power of the whole system, 15-20 kW [PR]; a run is charged the
    share of its grid's PEs for its duration, as static energy (ASSUMPTION
    that static power dominates an idle wafer)."""
    system_pes: int = 850_000
    """Marketing core count the system power is spread over [PR]."""

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ConfigError(f"WaferConfig.name = {self.name!r}: must be a non-empty string")
        _check_int("rows", self.rows, 1, 4096)
        _check_int("cols", self.cols, 1, 4096)
        _check_int("sram_bytes", self.sram_bytes, 64, 1 << 24)
        _check_float("clock_hz", self.clock_hz, 1e6, 1e11)
        _check_int("fmacs_per_cycle_fp32", self.fmacs_per_cycle_fp32, 1, 64)
        _check_int("fmacs_per_cycle_fp16", self.fmacs_per_cycle_fp16, 1, 64)
        _check_int("ramp_latency", self.ramp_latency, 1, 64)
        _check_int("hop_latency", self.hop_latency, 1, 64)
        if self.link_bits != 32:
            raise ConfigError(
                f"WaferConfig.link_bits = {self.link_bits!r}: only 32-bit wavelets are modelled")
        _check_int("num_colors", self.num_colors, 1, 64)
        _check_int("queue_depth", self.queue_depth, 1, 256)
        _check_int("input_queue_depth", self.input_queue_depth, 1, 256)
        _check_int("async_slots", self.async_slots, 0, 16)
        _check_int("scalar_op_cycles", self.scalar_op_cycles, 0, 1000)
        _check_int("vector_startup_cycles", self.vector_startup_cycles, 0, 1000)
        _check_int("datapath_latency", self.datapath_latency, 0, 1000)
        _check_int("task_start_cycles", self.task_start_cycles, 0, 1000)
        if not isinstance(self.software_transcendentals, bool):
            raise ConfigError(f"WaferConfig.software_transcendentals = "
                              f"{self.software_transcendentals!r}: must be True or False")
        _check_int("instructions_per_cycle", self.instructions_per_cycle, 1, 1 << 20)
        _check_float("pj_per_wavelet_hop", self.pj_per_wavelet_hop, 0.0, 1e6)
        _check_float("pj_per_flop", self.pj_per_flop, 0.0, 1e6)
        _check_float("pj_per_sram_byte", self.pj_per_sram_byte, 0.0, 1e6)
        _check_float("system_watts", self.system_watts, 0.0, 1e9)
        _check_int("system_pes", self.system_pes, 1, 1 << 40)

    @property
    def num_pes(self) -> int:
        return self.rows * self.cols

    def without_instruction_costs(self) -> "WaferConfig":
        """The idealised PE: free control instructions, no vector start-up, no
        datapath or task-start latency, one pass per transcendental (the
        zero-cost special case)."""
        return dataclasses.replace(self, scalar_op_cycles=0, vector_startup_cycles=0,
                                   datapath_latency=0, task_start_cycles=0,
                                   software_transcendentals=False)

    def with_grid(self, rows: int, cols: int) -> "WaferConfig":
        """The same wafer parameters on a rows x cols grid (a region of the wafer)."""
        return dataclasses.replace(self, rows=rows, cols=cols)

    def replace(self, **changes) -> "WaferConfig":
        """A copy with some fields changed (validated like any config)."""
        unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise ConfigError(f"WaferConfig has no field(s) {sorted(unknown)}")
        return dataclasses.replace(self, **changes)

    def simd_width(self, dtype: str) -> int:
        """Elements a memory-only vector operation processes per cycle."""
        if dtype == "float32":
            return self.fmacs_per_cycle_fp32
        if dtype == "float16":
            return self.fmacs_per_cycle_fp16
        raise ConfigError(f"dtype {dtype!r}: expected one of {DTYPES}")

    def peak_flops_per_pe_cycle(self, dtype: str) -> int:
        """Two FLOPs per FMAC."""
        return 2 * self.simd_width(dtype)

    def fields_with_docs(self) -> list[tuple[str, object, str]]:
        """(name, value, documentation) for every field, for `wse info`."""
        import inspect
        import ast
        source = inspect.getsource(type(self))
        docs: dict[str, str] = {}
        tree = ast.parse(source).body[0]
        body = tree.body
        for node, following in zip(body, body[1:] + [None]):
            if isinstance(node, ast.AnnAssign) and isinstance(following, ast.Expr) \
                    and isinstance(getattr(following, "value", None), ast.Constant):
                text = " ".join(str(following.value.value).split())
                for tag, source in SOURCES.items():
                    text = text.replace(f"[{tag}", f"[{source}")
                docs[node.target.id] = text
        return [(f.name, getattr(self, f.name), docs.get(f.name, ""))
                for f in dataclasses.fields(self)]


WSE2 = WaferConfig()
"""Cerebras WSE-2 (CS-2): 757 x 996 fabric, 48 KiB per PE, 1.1 GHz."""

WSE3 = WaferConfig(
    name="WSE-3", rows=1176, cols=762,
    fmacs_per_cycle_fp16=8,   # [PR] WSE-3 launch coverage: 8 fp16 FMACs per cycle
    fmacs_per_cycle_fp32=2,   # ASSUMPTION: twice WSE-2, as for fp16
    system_watts=20000.0, system_pes=900_000,
)
"""Cerebras WSE-3 (CS-3): 762 x 1176 fabric; undisclosed values assumed as WSE-2."""

PRESETS = {"WSE2": WSE2, "WSE3": WSE3}
