"""Where the engine's time goes: samples of `perf` attributed to the engine's
compiled functions, or to source lines of wse/engine.py.

perf cannot name the addresses of Numba's JIT code. `record` runs a script
(anything that runs the engine) and, when it ends, writes the engine's
object code and its load address to a folder (and a perf map for `perf
report`); `report` attributes the samples of a `perf record` of that run:

    perf record -F 999 -o run.data python -m benchmarks.engine_profile record \\
        --out prof my_script.py ARGS
    python -m benchmarks.engine_profile report run.data --out prof [--lines]

Most of the engine is inlined into `run`, so the functions are few.
`--lines` names source lines instead (with `addr2line` from binutils), which
needs line tables: run `record` with `NUMBA_DEBUGINFO=1` and
`NUMBA_CACHE_DIR` pointing at a folder of its own (that build compiles for
about 10 minutes and runs about 2x slower, with other weights: non-inlined
calls cost more there than in the optimised build, so check what it points
at against the optimised build).
"""
from __future__ import annotations

import argparse
import bisect
import collections
import os
import runpy
import subprocess
import sys
from pathlib import Path

OBJECT, BASE = "engine.o", "engine.base"


def record(script: str, args: list[str], out: Path, perf_maps: Path = Path("/tmp")) -> None:
    """Run `script` with `args` as __main__, then write the object code of the
    engine's `run` (with every function it calls) and its load address to `out`,
    and this process's perf map to `perf_maps` (perf looks in /tmp)."""
    from numba.core import codegen

    from wse import engine
    if engine.run.overloads:
        raise RuntimeError("record must run before this process loads the engine: Numba "
                           "keeps no object code of a function loaded before")
    compiled = {}
    keep = codegen.CPUCodeLibrary._set_compiled_object

    def keeping(library, value):       # the object code, which Numba does not keep
        compiled[library.name] = value
        return keep(library, value)

    codegen.CPUCodeLibrary._set_compiled_object = keeping
    sys.argv = [script, *args]
    try:
        runpy.run_path(script, run_name="__main__")
    finally:
        codegen.CPUCodeLibrary._set_compiled_object = keep
    if not engine.run.overloads:
        raise SystemExit(f"{script} did not run the engine")
    result = next(iter(engine.run.overloads.values()))
    library = result.library
    name = result.fndesc.llvm_func_name
    address = library.get_pointer_to_function(name)
    obj = compiled[library.name]
    out.mkdir(parents=True, exist_ok=True)
    (out / OBJECT).write_bytes(obj)
    symbols = _symbols(out / OBJECT)
    base = address - symbols[name][0]
    (out / BASE).write_text(hex(base))
    with open(perf_maps / f"perf-{os.getpid()}.map", "w") as perf_map:
        for symbol, (offset, size) in symbols.items():
            perf_map.write(f"{base + offset:x} {size:x} {_short(symbol)}\n")


def _symbols(obj: Path) -> dict[str, tuple[int, int]]:
    """{symbol: (offset, size)} of the functions defined in object file `obj`."""
    listing = subprocess.run(["nm", "-S", "--defined-only", str(obj)], capture_output=True,
                             text=True, check=True).stdout
    found = {}
    for line in listing.splitlines():
        parts = line.split()
        if len(parts) == 4 and parts[2] in "tTW" and int(parts[1], 16) > 0:
            found[parts[3]] = (int(parts[0], 16), int(parts[1], 16))
    return found


def _short(symbol: str) -> str:
    """A mangled Numba name cut to its function's name (engine._pe_step, ...)."""
    for marker in ("engine", "numba"):
        if marker in symbol:
            rest = symbol.split(marker, 1)[1].lstrip("0123456789")
            return marker + "." + rest.split("B", 1)[0].split("$", 1)[0]
    return symbol[:40]


def report(data: Path, out: Path, lines: bool, top: int) -> list[tuple[str, float]]:
    """(where, share of all samples), most first, for a perf record `data` of
    a `record` run that wrote `out`."""
    base = int((out / BASE).read_text(), 16)
    script = subprocess.run(["perf", "script", "-i", str(data), "-F", "ip"],
                            capture_output=True, text=True, check=True).stdout
    samples = [int(word, 16) for word in script.split()]
    symbols = sorted((offset, size, name) for name, (offset, size)
                     in _symbols(out / OBJECT).items())
    starts = [offset for offset, _, _ in symbols]
    inside = collections.Counter()
    where = collections.Counter()
    for ip in samples:
        offset = ip - base
        i = bisect.bisect_right(starts, offset) - 1
        if i >= 0 and offset < symbols[i][0] + symbols[i][1]:
            inside[offset] += 1
            if not lines:
                where[_short(symbols[i][2])] += 1
        else:
            where["(outside the engine)"] += 1
    if lines:
        offsets = list(inside)
        named = subprocess.run(["addr2line", "-j", ".ltext", "-e", str(out / OBJECT), "-a"]
                               + [hex(o) for o in offsets], capture_output=True, text=True,
                               check=True).stdout.splitlines()
        # pairs of lines: the address, then file:line (?? without line tables)
        for offset, source in zip(offsets, named[1::2]):
            where[source.rsplit("/", 1)[-1].split(" ")[0]] += inside[offset]
    total = max(len(samples), 1)
    return [(name, count / total) for name, count in where.most_common(top)]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    rec = commands.add_parser("record", help="run a script, then keep the engine's code")
    rec.add_argument("--out", type=Path, default=Path("engine-profile"))
    rec.add_argument("--perf-maps", type=Path, default=Path("/tmp"),
                     help="where to write the perf map (perf reads /tmp)")
    rec.add_argument("script")
    rec.add_argument("args", nargs=argparse.REMAINDER)
    rep = commands.add_parser("report", help="attribute perf samples to the engine")
    rep.add_argument("data", type=Path, help="perf.data of the recorded run")
    rep.add_argument("--out", type=Path, default=Path("engine-profile"))
    rep.add_argument("--lines", action="store_true", help="by source line (NUMBA_DEBUGINFO=1)")
    rep.add_argument("--top", type=int, default=30)
    args = parser.parse_args(argv)
    if args.command == "record":
        record(args.script, args.args, args.out, args.perf_maps)
    else:
        for name, share in report(args.data, args.out, args.lines, args.top):
            print(f"{share:7.1%}  {name}")


if __name__ == "__main__":
    main()
