"""The layers import one way: wse (the machine) imports neither kernels nor
benchmarks, kernels does not import benchmarks, and no module imports itself
through others. Every import statement counts, those inside functions too."""
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
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
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
