"""RunReport: what a run cost, in forms a researcher can tabulate and plot."""
from __future__ import annotations

import json
import platform
from dataclasses import dataclass, field

import numpy as np


def bulk_summary(static, state, hops: int) -> dict:
    """What the stream engine advanced in bulk (empty for the wavelet engine):
    the fraction of wavelet-hops and of cycles, how often it checked, and how
    many PE steps it took ahead of the clock (ahead_pe_steps)."""
    from . import engine
    if static.settings[engine.C_ENGINE] != engine.ENGINE_STREAM:
        return {}
    counters = state.counters
    cycles = int(counters[engine.K_FINISH])
    return _bulk_fractions({"engine": "stream", "bulk_hops": int(counters[engine.K_BULK_HOPS]),
                            "bulk_cycles": int(counters[engine.K_BULK_CYCLES]),
                            "bulk_attempts": int(counters[engine.K_BULK_ATTEMPTS]),
                            "bulk_mismatches": int(counters[engine.K_BULK_MISMATCH]),
                            "bulk_column_cycles": int(counters[engine.K_BULK_COLUMNS]),
                            "ahead_pe_steps": int(counters[engine.K_AHEAD_STEPS])},
                           hops, cycles)


def _bulk_fractions(bulk: dict, hops: int, cycles: int) -> dict:
    bulk["bulk_hop_fraction"] = bulk["bulk_hops"] / hops if hops else 0.0
    bulk["bulk_cycle_fraction"] = bulk["bulk_cycles"] / cycles if cycles else 0.0
    return bulk


@dataclass
class RunReport:
    """Cycles, traffic, SRAM, compute and energy of one run (or of phases in sequence).

    Per-PE and per-link arrays have shape (rows, cols[, 4]); ports are N, E, S, W
    (wavelets sent out of that side of the PE's router). Per PE:
      busy_cycles     from a task starting on an idle PE until it is idle again
      compute_cycles  datapath cycles of memory-only vector operations and
                      matmuls, plus one per element of an arithmetic operation
                      on a stream (plain sends and receives are not compute);
                      concurrent operations add up
      stall_cycles    cycles in which a fabric operation waited (input not
                      ready, output full) and none of the PE's fabric
                      operations moved, whatever its main thread did
      ramp_in/out     wavelets delivered to / injected by the PE
    host_bytes_loaded: SRAM bytes the host wrote before the run (Program.load);
    a program resumed from a previous run's image (Program.resume) pays only
    for what it loads on top. router_steps / pe_steps: the emulator's work
    (routers and PEs stepped, bulk periods counted as stepped); the stream
    engine may take fewer PE steps than the wavelet engine."""

    config_name: str
    rows: int
    cols: int
    clock_hz: float
    cycles: int
    wavelet_hops: int
    link_wavelets: np.ndarray
    ramp_in: np.ndarray
    ramp_out: np.ndarray
    sram_peak_bytes: np.ndarray
    busy_cycles: np.ndarray
    compute_cycles: np.ndarray
    stall_cycles: np.ndarray
    flops: int
    sram_bytes_accessed: int
    energy_joules: float
    energy_breakdown: dict
    peak_flops_per_pe_cycle: int = 8
    wall_seconds: float = 0.0
    host_bytes_loaded: int = 0
    router_steps: int = 0
    pe_steps: int = 0
    phases: list = field(default_factory=list)
    task_events: np.ndarray | None = None
    task_names: list | None = None
    link_events: np.ndarray | None = None
    delivery_events: np.ndarray | None = None
    extra: dict = field(default_factory=dict)

    @property
    def seconds(self) -> float:
        return self.cycles / self.clock_hz

    @property
    def pes(self) -> int:
        return self.rows * self.cols

    @property
    def compute_efficiency(self) -> float:
        """FLOPs / (cycles x PEs x peak FLOPs per PE per cycle)."""
        denom = self.cycles * self.pes * self.peak_flops_per_pe_cycle
        return self.flops / denom if denom else 0.0

    @property
    def busiest_link_wavelets(self) -> int:
        return int(self.link_wavelets.max()) if self.link_wavelets.size else 0

    @classmethod
    def from_state(cls, program, static, state, wall_seconds: float) -> "RunReport":
        from . import engine
        cfg = program.cfg
        rows, cols = program.rows, program.cols
        counters = state.counters
        cycles = int(counters[engine.K_FINISH])
        links = state.link_wavelets.reshape(rows, cols, 4).copy()
        hops = int(links.sum())
        flops = int(state.pe[:, engine.P_FLOPS].sum())
        sram_acc = int(state.pe[:, engine.P_SRAM_BYTES].sum())

        def column(c):
            return state.pe[:, c].reshape(rows, cols).copy()

        seconds = cycles / cfg.clock_hz
        dynamic_hops = hops * cfg.pj_per_wavelet_hop * 1e-12
        dynamic_flops = flops * cfg.pj_per_flop * 1e-12
        dynamic_sram = sram_acc * cfg.pj_per_sram_byte * 1e-12
        static_j = cfg.system_watts * (rows * cols / cfg.system_pes) * seconds
        energy = {"fabric": dynamic_hops, "compute": dynamic_flops, "sram": dynamic_sram,
                  "static": static_j}
        dtypes = {b.dtype for b in program.buffers} or {"float32"}
        peak = cfg.peak_flops_per_pe_cycle("float16" if "float16" in dtypes else "float32")
        record = static.settings[engine.C_RECORD]

        def events(arr, n_key, flag):
            if not record & flag:
                return None
            n = min(int(counters[n_key]), arr.shape[0])
            return arr[:n].copy()

        return cls(
            config_name=cfg.name, rows=rows, cols=cols, clock_hz=cfg.clock_hz, cycles=cycles,
            wavelet_hops=hops, link_wavelets=links,
            ramp_in=column(engine.P_RAMP_IN), ramp_out=column(engine.P_RAMP_OUT),
            sram_peak_bytes=program.sram_used,
            busy_cycles=column(engine.P_BUSY), compute_cycles=column(engine.P_COMPUTE),
            stall_cycles=column(engine.P_STALL),
            flops=flops, sram_bytes_accessed=sram_acc,
            energy_joules=float(sum(energy.values())), energy_breakdown=energy,
            peak_flops_per_pe_cycle=peak, wall_seconds=wall_seconds,
            host_bytes_loaded=int(program.host_bytes_loaded),
            router_steps=int(counters[engine.K_STEPS_ROUTER]),
            pe_steps=int(counters[engine.K_STEPS_PE]),
            task_events=events(state.task_events, engine.K_TASK_EVENTS, engine.RECORD_TASKS),
            task_names=[f"{r}.{t}" for r, t, _ in program._task_names],
            link_events=events(state.link_events, engine.K_LINK_EVENTS, engine.RECORD_LINKS),
            delivery_events=events(state.delivery_events, engine.K_DELIVERY_EVENTS,
                                   engine.RECORD_DELIVERIES),
            extra=bulk_summary(static, state, hops),
        )

    @classmethod
    def sequence(cls, reports: list["RunReport"], names: list[str] | None = None) -> "RunReport":
        """Phases run one after another on the same grid: cycles and traffic add up,
        SRAM peaks take the maximum."""
        if not reports:
            raise ValueError("no reports to combine")
        first = reports[0]
        for r in reports:
            if (r.rows, r.cols) != (first.rows, first.cols):
                raise ValueError("reports on different grids cannot be put in sequence")
        names = names or [f"phase{i}" for i in range(len(reports))]
        # traced phases: task slices shifted to the phase's start, names prefixed
        events, task_names = None, None
        if all(r.task_events is not None for r in reports):
            chunks, task_names, start = [], [], 0
            for name, r in zip(names, reports):
                e = r.task_events.copy()
                e[:, 1] += len(task_names)
                e[:, 2:4] += start
                chunks.append(e)
                task_names += [f"{name}/{t}" for t in (r.task_names or [])]
                start += r.cycles
            events = np.concatenate(chunks) if chunks else None
        breakdown = {k: sum(r.energy_breakdown.get(k, 0.0) for r in reports)
                     for k in first.energy_breakdown}
        return cls(
            config_name=first.config_name, rows=first.rows, cols=first.cols,
            clock_hz=first.clock_hz, cycles=sum(r.cycles for r in reports),
            wavelet_hops=sum(r.wavelet_hops for r in reports),
            link_wavelets=sum(r.link_wavelets for r in reports),
            ramp_in=sum(r.ramp_in for r in reports), ramp_out=sum(r.ramp_out for r in reports),
            sram_peak_bytes=np.maximum.reduce([r.sram_peak_bytes for r in reports]),
            busy_cycles=sum(r.busy_cycles for r in reports),
            compute_cycles=sum(r.compute_cycles for r in reports),
            stall_cycles=sum(r.stall_cycles for r in reports),
            flops=sum(r.flops for r in reports),
            sram_bytes_accessed=sum(r.sram_bytes_accessed for r in reports),
            energy_joules=sum(r.energy_joules for r in reports), energy_breakdown=breakdown,
            peak_flops_per_pe_cycle=max(r.peak_flops_per_pe_cycle for r in reports),
            wall_seconds=sum(r.wall_seconds for r in reports),
            host_bytes_loaded=sum(r.host_bytes_loaded for r in reports),
            router_steps=sum(r.router_steps for r in reports),
            pe_steps=sum(r.pe_steps for r in reports),
            phases=[{"name": n, "cycles": r.cycles, "wavelet_hops": r.wavelet_hops,
                     "flops": r.flops} for n, r in zip(names, reports)],
            task_events=events, task_names=task_names,
            extra=_bulk_in_sequence(reports),
        )

    def summary(self) -> dict:
        """Scalar figures only (what a table row needs)."""
        busy = self.busy_cycles
        return {
            "config": self.config_name, "grid": f"{self.rows}x{self.cols}",
            "cycles": self.cycles, "seconds": self.seconds,
            "wavelet_hops": self.wavelet_hops, "busiest_link_wavelets": self.busiest_link_wavelets,
            "flops": self.flops, "compute_efficiency": self.compute_efficiency,
            "compute_cycles_mean": float(self.compute_cycles.mean()),
            "stall_cycles_mean": float(self.stall_cycles.mean()),
            "busy_cycles_max": int(busy.max()) if busy.size else 0,
            "sram_peak_bytes_max": int(self.sram_peak_bytes.max()),
            "energy_joules": self.energy_joules,
            "wall_seconds": self.wall_seconds,
            "host_bytes_loaded": self.host_bytes_loaded,
        }

    def to_dict(self, arrays: bool = True) -> dict:
        """JSON-ready: scalars, energy breakdown, phases and (optionally) per-PE arrays."""
        d = self.summary()
        d.update({"rows": self.rows, "cols": self.cols, "clock_hz": self.clock_hz,
                  "energy_breakdown": dict(self.energy_breakdown), "phases": list(self.phases),
                  "router_steps": self.router_steps, "pe_steps": self.pe_steps,
                  "sram_bytes_accessed": self.sram_bytes_accessed,
                  "python": platform.python_version(), "extra": dict(self.extra)})
        if arrays:
            d.update({"link_wavelets": self.link_wavelets.tolist(),
                      "sram_peak_bytes": self.sram_peak_bytes.tolist(),
                      "busy_cycles": self.busy_cycles.tolist(),
                      "compute_cycles": self.compute_cycles.tolist(),
                      "stall_cycles": self.stall_cycles.tolist()})
        return d

    def to_json(self, path, arrays: bool = True) -> None:
        with open(path, "w") as f:
            json.dump(self.to_dict(arrays), f, indent=1)

    def to_chrome_trace(self, path) -> int:
        """Write Chrome trace-event JSON (opens in Perfetto): one track per PE, one
        slice per task run, 1 cycle = 1 us on the time axis. Needs run(trace=True).
        Returns the number of slices written."""
        if self.task_events is None:
            raise ValueError("this run was not traced: run it with trace=True")
        names = self.task_names or []
        events = []
        for pe, task, start, end in self.task_events.tolist():
            events.append({"name": names[task] if 0 <= task < len(names) else f"task{task}",
                           "ph": "X", "ts": start, "dur": max(end - start, 0),
                           "pid": 0, "tid": pe,
                           "args": {"x": pe % self.cols, "y": pe // self.cols}})
        meta = [{"name": "thread_name", "ph": "M", "pid": 0, "tid": p,
                 "args": {"name": f"PE ({p % self.cols}, {p // self.cols})"}}
                for p in sorted({e["tid"] for e in events})]
        with open(path, "w") as f:
            json.dump({"traceEvents": meta + events, "displayTimeUnit": "ns",
                       "otherData": {"config": self.config_name, "cycles": self.cycles}}, f)
        return len(events)


def _bulk_in_sequence(reports) -> dict:
    """The stream engine's bulk figures of phases in sequence (empty unless every
    phase ran on it)."""
    if not reports or not all(r.extra.get("engine") == "stream" for r in reports):
        return {}
    bulk = {"engine": "stream"}
    for key in ("bulk_hops", "bulk_cycles", "bulk_attempts", "bulk_mismatches",
                "bulk_column_cycles", "ahead_pe_steps"):
        bulk[key] = sum(r.extra[key] for r in reports)
    return _bulk_fractions(bulk, sum(r.wavelet_hops for r in reports),
                           sum(r.cycles for r in reports))
