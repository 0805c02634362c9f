"""Documentation contracts: events, exit codes and links stay in step with the code."""

from __future__ import annotations

import re

from ipspool.exitcodes import ExitCode
from tests.support.daemon import REPO

_EVENT_CALL = re.compile(r'\.(?:debug|info|warning|error|critical|exception)\(\s*"([a-z_]+\.[a-z_.]+)"')


def logged_events() -> set[str]:
    names: set[str] = set()
    for path in (REPO / "daemon" / "ipspool").rglob("*.py"):
        names.update(_EVENT_CALL.findall(path.read_text()))
    return names


def test_every_logged_event_is_in_the_catalogue() -> None:
    """docs/events.md lists every event name the code logs."""
    catalogue = (REPO / "docs" / "events.md").read_text()
    documented = set(re.findall(r"^\| `([a-z_.]+)` \|", catalogue, re.MULTILINE))
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
