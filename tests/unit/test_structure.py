"""The code keeps the shape the architecture promises: small classes, short functions."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "daemon" / "ipspool"
MAX_CLASS_LINES = 400
MAX_FUNCTION_LINES = 60
# The per-line hot loop stays one function: splitting it costs a call per address.
HOT_LOOP = {"pipeline.py:process_lines"}


def _definitions() -> list[tuple[str, ast.AST, int]]:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
                assert node.end_lineno is not None
                where = f"{path.relative_to(PACKAGE)}:{node.name}"
                found.append((where, node, node.end_lineno - node.lineno + 1))
    return found


def test_no_class_over_400_lines() -> None:
    """Each part of the daemon stays small enough to hold in one's head."""
    big = [(where, n) for where, node, n in _definitions() if isinstance(node, ast.ClassDef) and n > MAX_CLASS_LINES]
    assert big == []


def test_no_function_over_60_lines_but_the_hot_loop() -> None:
    """No god functions; the per-address loop is the one documented exception."""
    long = [
        (where, n) for where, node, n in _definitions()
        if not isinstance(node, ast.ClassDef) and n > MAX_FUNCTION_LINES and where not in HOT_LOOP
    ]
    assert long == []
