"""Benchmark points run each in a process of its own, so that its wall time,
peak memory and time limit are its own, and a crash or a run past the limit
costs that point alone.

The processes are forked from a server (multiprocessing's "forkserver") that
has imported wse and the kernels and loaded the compiled engine once, so a
point starts in a fraction of a second rather than the two seconds a fresh
interpreter takes (imports 0.5 s, loading the engine from Numba's cache 1 s,
measured on this project's 2-core machine). A point's peak resident memory
(ru_maxrss) therefore includes the server's pages it inherits, about what a
fresh interpreter's imports would have taken. As with any multiprocessing
start method but fork, each process imports the calling script again, so a
script that runs these benchmarks keeps its own work under
`if __name__ == "__main__":`.
"""
from __future__ import annotations

import multiprocessing
import traceback
from typing import Callable

# imported by the server before it forks any point: it calls warm_up()
SERVER_PRELOAD = ["benchmarks._child_server"]


def warm_up() -> None:
    """Load the engine's compiled code into this process: a one-PE program."""
    import wse
    import kernels  # noqa: F401  (what the points import, loaded once)
    prog = wse.Program(wse.WSE2.with_grid(rows=1, cols=1))
    x = prog.buffer("x", (1,), "float32")
    with prog.role("pe").task("main", entry=True) as t:
        t.mov(x.view(), x.view())
    prog.run()


def _serve(connection, function: Callable, args: tuple) -> None:
    try:
        result = ("ok", function(*args))
    except BaseException as exc:         # the parent reports it; the point is lost
        result = ("error", f"{type(exc).__name__}: {exc}\n{traceback.format_exc()[-1500:]}")
    connection.send(result)
    connection.close()


def run_point(function: Callable, args: tuple, timeout: float | None) -> tuple[str, object]:
    """("ok", function(*args)) computed in a process of its own;
    ("timeout", seconds) if it ran past `timeout` seconds (it is killed);
    ("error", text) if it raised or died. `function` must be importable by
    name (a module-level function) and its result picklable."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(SERVER_PRELOAD)
    receiver, sender = context.Pipe(duplex=False)
    process = context.Process(target=_serve, args=(sender, function, args), daemon=True)
    process.start()
    sender.close()
    try:
        if not receiver.poll(timeout):
            process.kill()
            return "timeout", timeout
        return receiver.recv()
    except EOFError:
        process.join()                  # for its exit code
        return "error", f"the process died (exit code {process.exitcode})"
    finally:
        receiver.close()
        process.join()


def point_row(measure: Callable, args: tuple, timeout: float | None) -> dict:
    """The row `measure(algorithm, size, grid, ...)` returns, measured in a
    process of its own, with "status": "ok"; or the point's identity and
    why there is no row (not finished within the time limit, or failed)."""
    algorithm, size, grid = args[:3]
    outcome, value = run_point(measure, args, timeout)
    if outcome == "ok":
        return {**value, "status": "ok"}
    row = {"algorithm": algorithm, "size": size, "grid": f"{grid}x{grid}", "pes": grid * grid}
    row["status"] = f"not finished within {timeout:.0f} s" if outcome == "timeout" else \
        "failed: " + value.strip()[-300:]
    return row
