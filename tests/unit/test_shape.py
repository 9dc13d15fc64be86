"""Functions stay short: none over 60 lines (issue 24, "operations in short functions").

Counted from the `def` line to the last line of the body, decorators left out, docstring and comments included: a
function that needs more is two steps that want names. Every function counts, a method or a nested one too.

Covered: plugins/module_utils. The worker package (worker/spot_drain_worker) is to be added once its queue's
claim (70 lines today) is rewritten on its own branch."""

from __future__ import annotations

import ast
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
COVERED = [ROOT / "plugins" / "module_utils"]
MOST_LINES = 60


def function_lengths(source):
    """[(qualified name, first line, lines)] of every function in `source`, nested ones and methods included."""
    found = []

    def visit(node, prefix):
        for child in ast.iter_child_nodes(node):
            name = prefix
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                name = prefix + child.name
                if not isinstance(child, ast.ClassDef):
                    found.append((name, child.lineno, child.end_lineno - child.lineno + 1))
                name += "."
            visit(child, name)

    visit(ast.parse(source), "")
    return found


def covered_files():
    return sorted(path for folder in COVERED for path in folder.rglob("*.py"))


@pytest.mark.parametrize("path", covered_files(), ids=lambda path: str(path.relative_to(ROOT)))
def test_no_function_is_over_60_lines(path):
    long = ["%s (line %d): %d lines" % item for item in function_lengths(path.read_text(encoding="utf-8"))
            if item[2] > MOST_LINES]
    assert long == [], "split into named steps: %s" % "; ".join(long)


def test_the_reader_measures_every_function_and_sees_the_covered_tree():
    source = textwrap.dedent('''
        @decorated
        def short():
            return 1


        class Holder:
            def method(self):
                def inner():
                    pass
        ''') + "def long():\n" + "    x = 1\n" * MOST_LINES
    assert function_lengths(source) == [("short", 3, 2), ("Holder.method", 8, 3), ("Holder.method.inner", 9, 2),
                                        ("long", 11, MOST_LINES + 1)]
    names = {path.relative_to(ROOT).as_posix() for path in covered_files()}
    assert {"plugins/module_utils/_pool/operations.py", "plugins/module_utils/_pool/domain/identity.py"} <= names
    lengths = {name: lines for name, _line, lines in function_lengths((ROOT / "plugins/module_utils/_pool/operations.py")
                                                                      .read_text(encoding="utf-8"))}
    assert 30 < lengths["init_pool"] <= MOST_LINES
