"""The layers import one way: wse (the machine) imports neither kernels nor
benchmarks, kernels does not import benchmarks, and no module imports itself
through others. Every import statement counts, those inside functions too.
And no function shares its module's name (a package's attribute is then
either, depending on import order)."""
from __future__ import annotations

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
LAYERS = ("wse", "kernels", "benchmarks")
"""From the bottom up: a package may import only those before it and itself."""


def _module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, pathlib.Path]:
    return {_module_name(p): p for layer in LAYERS for p in sorted((ROOT / layer).rglob("*.py"))}


def _absolute(node: ast.ImportFrom, package: str) -> str:
    """The module a `from ... import` reads from, relative dots resolved
    against `package`."""
    base = node.module or ""
    if node.level:
        anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
        base = ".".join(anchor + ([base] if base else []))
    return base


def _imported(name: str, path: pathlib.Path, modules) -> set[str]:
    """The project modules that `name` imports: `from a import b` means a.b when
    that is a module, else a (its parent packages' __init__ are not counted:
    Python runs them first for every submodule)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(node, package)
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base
                       for a in node.names]
        else:
            continue
        found.update(t for t in targets if t in modules and t != name)
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imported(name, path, modules) for name, path in modules.items()}


def test_the_walk_sees_every_package_and_the_imports_inside_functions():
    graph = _graph()
    assert {name.split(".")[0] for name in graph} == set(LAYERS)
    # benchmarks.cli imports kernels.registry inside its functions only
    assert "kernels.registry" in graph["benchmarks.cli"]


def test_no_layer_imports_a_layer_above_it():
    upward = [(name, target) for name, targets in _graph().items() for target in targets
              if LAYERS.index(target.split(".")[0]) > LAYERS.index(name.split(".")[0])]
    assert upward == []


def test_no_import_cycles():
    graph = _graph()
    state: dict[str, str] = {}
    path: list[str] = []

    def visit(name: str) -> None:
        state[name] = "open"
        path.append(name)
        for target in sorted(graph[name]):
            if state.get(target) == "open":
                pytest.fail("import cycle: " + " -> ".join(path[path.index(target):] + [target]))
            if target not in state:
                visit(target)
        path.pop()
        state[name] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name)


def _bindings(path: pathlib.Path, package: str, modules) -> dict[str, bool]:
    """The names a module binds at top level, each with whether it is a module."""
    bound = {}
    for node in ast.parse(path.read_text(), str(path)).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            bound[node.name] = False
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(node, package)
            for alias in node.names:
                bound[alias.asname or alias.name] = f"{base}.{alias.name}" in modules
        elif isinstance(node, ast.Assign):
            bound.update((t.id, False) for t in node.targets if isinstance(t, ast.Name))
    return bound


def test_no_function_shares_its_module_s_name():
    """A module is named for what it holds, a function for what it computes:
    kernels.gemm is a function in kernels.matmul, so `kernels.matmul.plan` and
    `kernels.gemm(...)` both resolve without importlib. A package binds no
    non-module name that is also one of its submodules, and no module defines
    a function or class of its own name."""
    modules = _modules()
    clashes = []
    for name, path in modules.items():
        short = name.rpartition(".")[2]
        if path.name == "__init__.py":
            bound = _bindings(path, name, modules)
            clashes += [f"{name}.{n}" for n, is_module in bound.items()
                        if not is_module and f"{name}.{n}" in modules]
        else:
            bound = _bindings(path, name.rpartition(".")[0], modules)
            if bound.get(short) is False:
                clashes += [f"{name}.{short}"]
    assert clashes == []
