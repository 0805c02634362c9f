"""Documentation contracts: events, exit codes and links stay in step with the code."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from ipspool.exitcodes import ExitCode
from tests.support.daemon import REPO

_EVENT_CALL = re.compile(r'\.(?:debug|info|warning|error|critical|exception)\(\s*"([a-z_]+\.[a-z_.]+)"')


def logged_events() -> set[str]:
    names: set[str] = set()
    for path in (REPO / "daemon" / "ipspool").rglob("*.py"):
        names.update(_EVENT_CALL.findall(path.read_text()))
    return names


def catalogued_events() -> set[str]:
    """The event names of docs/events.md: first cells of its tables that contain a dot."""
    catalogue = (REPO / "docs" / "events.md").read_text()
    return {name for name in re.findall(r"^\| `([a-z_.]+)` \|", catalogue, re.MULTILINE) if "." in name}


# Calls whose arguments name the events a test waits for or reads to assert on.
_EVENT_QUERIES = frozenset({"wait_event", "events", "_journal_count"})


def asserted_events(path: Path) -> set[str]:
    """Event names a test file asserts: string literals inside an ``assert``, or
    among the arguments of a wait_event/events call (which a test awaits or checks)."""
    found: set[str] = set()

    def visit(node: ast.AST, counts: bool) -> None:
        if isinstance(node, ast.Assert):
            counts = True
        elif isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            counts = counts or name in _EVENT_QUERIES
        elif counts and isinstance(node, ast.Constant) and isinstance(node.value, str):
            found.add(node.value)
        for child in ast.iter_child_nodes(node):
            visit(child, counts)

    visit(ast.parse(path.read_text()), False)
    return found


def test_every_catalogued_event_is_asserted_by_a_test() -> None:
    """Each event of docs/events.md is checked by at least one test, so a test fails when it stops being logged.

    The rule: some ``tests/**/test_*.py`` holds the exact event name as a
    string literal inside an ``assert`` statement, or among the arguments
    of a call to ``wait_event``, ``events`` or ``_journal_count`` (the
    helpers that wait for or read logged events; a wait fails when the
    event never comes). A name only mentioned in a comment, a docstring
    outside an assert, a parametrize list or a fixture does not count.
    """
    asserted: set[str] = set()
    for path in (REPO / "tests").rglob("test_*.py"):
        asserted |= asserted_events(path)
    unasserted = sorted(catalogued_events() - asserted)
    assert not unasserted, f"catalogued events no test asserts: {unasserted}"


def test_every_logged_event_is_in_the_catalogue() -> None:
    """docs/events.md lists every event name the code logs."""
    documented = catalogued_events()
    names = logged_events()
    assert len(names) > 30
    assert not names - documented, f"undocumented events: {sorted(names - documented)}"


def test_exit_codes_are_documented() -> None:
    """docs/exit-codes.md names every ExitCode with its number."""
    text = (REPO / "docs" / "exit-codes.md").read_text()
    for code in ExitCode:
        assert f"| {int(code)} | `{code.name}` |" in text, code


def test_readme_links_resolve() -> None:
    """Every relative link in README.md and docs/ points at a file that exists."""
    for doc in [REPO / "README.md", *(REPO / "docs").glob("*.md")]:
        for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", doc.read_text()):
            assert (doc.parent / target).exists(), f"{doc.name}: broken link {target}"


def test_readme_starts_with_the_two_commands() -> None:
    """The README's first code block is `make demo` and `make test`."""
    text = (REPO / "README.md").read_text()
    block = text.split("```", 2)[1]
    assert [line.strip() for line in block.splitlines() if line.strip() and not line.startswith("sh")] == [
        "make demo", "make test",
    ]
