"""The worker package's shape, read from the source (ast). Its import graph: every import, relative or absolute, at the
top or inside a function, counts. No module may reach itself again, and the two queue backends know nothing of
each other (the factory picks one; the runner, the drain and the HTTP layer see only the interface). No
function is over 60 lines."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = "spot_drain_worker"
PACKAGE_DIR = Path(__file__).resolve().parents[1] / PACKAGE
BACKENDS = ("jobqueue", "sqsqueue")


def imported_modules(module: str, source: str) -> set[str]:
    """The package's modules that `module` imports (names inside the package, without the package prefix)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = ".".join([PACKAGE] + module.split(".")[:-1][:max(0, len(module.split(".")) - node.level)])
                prefix = f"{base}.{node.module}" if node.module else base
            else:
                prefix = node.module or ""
            # `from . import x` and `from .pkg import x` may name modules as well as attributes.
            names = [prefix] + [f"{prefix}.{alias.name}" for alias in node.names]
        else:
            continue
        for name in names:
            if name.startswith(PACKAGE + "."):
                found.add(name[len(PACKAGE) + 1:])
    return found


def import_graph(package_dir: Path = PACKAGE_DIR) -> dict[str, set[str]]:
    modules = {path.stem: path for path in package_dir.glob("*.py") if path.stem != "__init__"}
    return {name: {dep for dep in imported_modules(name, path.read_text()) if dep in modules and dep != name}
            for name, path in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every module that can reach itself, with one path that shows how."""
    found = []
    for start in sorted(graph):
        paths = [[start]]
        seen: set[str] = set()
        while paths:
            path = paths.pop()
            for dep in sorted(graph[path[-1]]):
                if dep == start:
                    found.append(path + [start])
                    paths = []
                    break
                if dep not in seen:
                    seen.add(dep)
                    paths.append(path + [dep])
    return found


def test_the_reader_sees_relative_absolute_and_function_level_imports():
    source = ("from .a import x\nimport spot_drain_worker.b\nfrom spot_drain_worker import c\n"
              "def f():\n    from .d import y\n    from . import e\n")
    assert imported_modules("m", source) >= {"a", "b", "c", "d", "e"}
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [
        ["a", "b", "c", "a"], ["b", "c", "a", "b"], ["c", "a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_the_worker_package_has_no_import_circle():
    graph = import_graph()
    assert {"queues", "runner", "drain", *BACKENDS} <= set(graph)
    assert cycles(graph) == []


def test_the_backends_do_not_import_each_other_and_only_the_factory_names_them():
    graph = import_graph()
    for backend in BACKENDS:
        others = set(BACKENDS) - {backend}
        assert not graph[backend] & others, backend
    naming = sorted(name for name, deps in graph.items() if deps & set(BACKENDS))
    assert naming == ["factory"]


MAX_FUNCTION_LINES = 60


def long_functions(package_dir: Path = PACKAGE_DIR) -> list[str]:
    found = []
    for path in sorted(package_dir.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    found.append(f"{path.name}:{node.lineno} {node.name} ({length} lines)")
    return found


def test_no_function_in_the_worker_package_is_over_60_lines():
    assert long_functions() == []
