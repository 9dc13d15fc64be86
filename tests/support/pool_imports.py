"""The import graph of plugins/module_utils/_pool, read from the source as Ansible's payload builder reads it (every
import statement, also one inside a function or under TYPE_CHECKING), with relative imports at any depth resolved.
Names are dotted below _pool: `domain.entries`, `stores` (a package's __init__.py), `operations`."""

from __future__ import annotations

import ast
from pathlib import Path

POOL = Path(__file__).resolve().parents[2] / "plugins" / "module_utils" / "_pool"


def module_name(path):
    """`domain.entries` for _pool/domain/entries.py; `stores` for _pool/stores/__init__.py."""
    parts = list(path.relative_to(POOL).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def pool_modules():
    return sorted(module_name(path) for path in POOL.rglob("*.py") if module_name(path))


def _resolve(name, is_package, node):
    """The _pool modules an ImportFrom node names, as dotted names below _pool."""
    base = name.split(".") if is_package else name.split(".")[:-1]
    if node.level:
        base = base[:len(base) - node.level + 1]
        module = base + (node.module.split(".") if node.module else [])
    elif node.module and ".module_utils._pool." in "." + node.module + ".":
        module = node.module.split("module_utils._pool", 1)[1].strip(".").split(".")
    else:
        return set()
    module = [part for part in module if part]
    found = set()
    for alias in node.names:
        candidate = ".".join(module + [alias.name])
        found.add(candidate if (POOL / (candidate.replace(".", "/") + ".py")).exists() else ".".join(module))
    return {item for item in found if item}


def imports_of(name):
    """The _pool modules that module `name` imports, anywhere in it."""
    path = POOL / (name.replace(".", "/") + ".py")
    is_package = not path.exists()
    if is_package:
        path = POOL / name.replace(".", "/") / "__init__.py"
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            found |= _resolve(name, is_package, node)
    return found - {name}


def reachable(names):
    """Every _pool module that importing `names` loads: themselves, what they import, and so on, with the packages
    (__init__.py) on the way."""
    seen, todo = set(), list(names)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        parts = name.split(".")
        todo.extend(".".join(parts[:depth]) for depth in range(1, len(parts)))
        todo.extend(imports_of(name))
    return seen


def module_imports(text):
    """The _pool modules a module's source names in `from ...module_utils._pool[.x] import y` lines."""
    found = set()
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.ImportFrom) and ".module_utils._pool" in "." + (node.module or ""):
            found |= _resolve("", False, node)
    return found
