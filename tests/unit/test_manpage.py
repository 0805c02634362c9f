"""ipspool(8) covers every command, option and exit code of the parser (completion: test_completion.py)."""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys

import pytest

from ipspool.cli import build_parser
from ipspool.exitcodes import ExitCode
from ipspool.tools.manpage import render

WHEN = 1_700_000_000.0


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """The parser's subcommands, found independently of ipspool.tools.manpage.describe."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    raise AssertionError("the parser has no subcommands")


def _options(parser: argparse.ArgumentParser) -> list[str]:
    return [s for a in parser._actions if not isinstance(a, argparse._HelpAction) for s in a.option_strings]


def _roff(text: str) -> str:
    return text.replace("-", "\\-")


@pytest.fixture(scope="module")
def page() -> str:
    return render(build_parser(), when=WHEN)


def test_manpage_has_a_section_per_subcommand_with_every_option(page: str) -> None:
    """Each subcommand has its .SS section listing all of its options and arguments."""
    sections = page.split("\n.SS ")
    for name, sub in _subparsers(build_parser()).items():
        section = next((s for s in sections if s.startswith(_roff(name) + "\n")), None)
        assert section is not None, f"no section for {name}"
        section = section.split("\n.SH ", 1)[0]
        for option in _options(sub):
            assert f"\\fB{_roff(option)}\\fR" in section, f"{name} {option} missing from its section"
        for action in sub._actions:
            if not action.option_strings:
                assert f"\\fI{action.metavar}\\fR" in section, f"{name}'s argument {action.metavar} missing"


def test_manpage_synopsis_and_global_options(page: str) -> None:
    """The synopsis names every subcommand; --version and -h are described."""
    synopsis = page.split(".SH SYNOPSIS", 1)[1].split(".SH ", 1)[0]
    for name in _subparsers(build_parser()):
        assert f".B {_roff(name)}\n" in synopsis
    options = page.split(".SH OPTIONS", 1)[1].split(".SH ", 1)[0]
    for option in ("--version", "-h", "--help"):
        assert f"\\fB{_roff(option)}\\fR" in options


def test_manpage_lists_every_exit_code(page: str) -> None:
    """EXIT STATUS has every ExitCode, with its number and name."""
    section = page.split(".SH EXIT STATUS", 1)[1].split(".SH ", 1)[0]
    for code in ExitCode:
        assert f"\\fB{int(code)}\\fR ({code.name})" in section


def test_manpage_has_the_sections_an_operator_expects(page: str) -> None:
    """NAME, SYNOPSIS, DESCRIPTION, COMMANDS, OPTIONS, EXIT STATUS, SIGNALS, FILES, SEE ALSO, in order."""
    headings = [line[4:] for line in page.splitlines() if line.startswith(".SH ")]
    assert headings == ["NAME", "SYNOPSIS", "DESCRIPTION", "COMMANDS", "OPTIONS", "EXIT STATUS", "SIGNALS",
                        "FILES", "SEE ALSO"]
    assert page.startswith('.TH IPSPOOL 8 "2023-11-14" ')
    for signal in ("SIGTERM", "SIGHUP", "SIGUSR1"):
        assert signal in page
    assert "/etc/ipspool/ipspool.toml" in page


@pytest.mark.skipif(shutil.which("groff") is None, reason="groff is not installed (apt-get install groff-base)")
def test_manpage_renders_without_roff_warnings(page: str) -> None:
    """groff -ww (all warnings) accepts the page silently."""
    result = subprocess.run(["groff", "-man", "-Tutf8", "-ww", "-z"], input=page, capture_output=True, text=True,
                            check=False)
    assert result.returncode == 0
    assert result.stderr == ""


def test_module_prints_the_page() -> None:
    """`python -m ipspool.tools.manpage` is what the package build runs."""
    env = {**os.environ, "SOURCE_DATE_EPOCH": str(int(WHEN))}
    man = subprocess.run([sys.executable, "-m", "ipspool.tools.manpage"], capture_output=True, text=True, env=env,
                         check=True)
    assert man.stdout == render(build_parser(), when=WHEN)
