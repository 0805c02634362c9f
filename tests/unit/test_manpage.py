"""ipspool(8) and the bash completion cover every command, option and exit code of the parser."""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ipspool.cli import build_parser
from ipspool.exitcodes import ExitCode
from ipspool.tools.completion import bash_script
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


@pytest.fixture(scope="module")
def script() -> str:
    return bash_script(build_parser())


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


def test_modules_print_the_page_and_the_script() -> None:
    """`python -m ipspool.tools.manpage` and `ipspool.tools.completion bash` are what the package build runs."""
    env = {**os.environ, "SOURCE_DATE_EPOCH": str(int(WHEN))}
    man = subprocess.run([sys.executable, "-m", "ipspool.tools.manpage"], capture_output=True, text=True, env=env,
                         check=True)
    assert man.stdout == render(build_parser(), when=WHEN)
    bash = subprocess.run([sys.executable, "-m", "ipspool.tools.completion", "bash"], capture_output=True, text=True,
                          check=True)
    assert bash.stdout == bash_script(build_parser())
    wrong = subprocess.run([sys.executable, "-m", "ipspool.tools.completion", "fish"], capture_output=True, text=True,
                           check=False)
    assert wrong.returncode == 2


def _complete(script: str, words: list[str], cwd: Path) -> list[str]:
    """COMPREPLY for the command line ``words`` (the last one is being completed)."""
    quoted = " ".join("'" + w.replace("'", "'\\''") + "'" for w in words)
    call = f"COMP_WORDS=({quoted}); COMP_CWORD={len(words) - 1}; _ipspool"
    driver = f"{script}\n{call}; printf '%s\\n' \"${{COMPREPLY[@]}}\"\n"
    result = subprocess.run(["bash", "--norc", "--noprofile", "-c", driver], capture_output=True, text=True,
                            cwd=cwd, check=True)
    return [line for line in result.stdout.splitlines() if line]


def test_completion_is_valid_bash(script: str) -> None:
    """bash -n parses the generated script."""
    subprocess.run(["bash", "-n"], input=script, text=True, check=True)


def test_completion_offers_every_subcommand_and_option(script: str, tmp_path: Path) -> None:
    """`ipspool <TAB>` lists the subcommands; `ipspool CMD -<TAB>` lists all of CMD's options."""
    subs = _subparsers(build_parser())
    assert set(subs) <= set(_complete(script, ["ipspool", ""], tmp_path))
    assert "--version" in _complete(script, ["ipspool", "--"], tmp_path)
    for name, sub in subs.items():
        offered = _complete(script, ["ipspool", name, "-"], tmp_path)
        assert set(_options(sub)) == set(offered), name


def test_completion_completes_files_and_directories_by_metavar(script: str, tmp_path: Path) -> None:
    """FILE values and arguments complete file names, DIR values directory names, others nothing."""
    (tmp_path / "ips.txt").write_text("192.0.2.1\n")
    (tmp_path / "ipspool.toml").write_text("")
    (tmp_path / "spooldir").mkdir()
    assert _complete(script, ["ipspool", "submit", "ip"], tmp_path) == ["ips.txt", "ipspool.toml"]
    assert _complete(script, ["ipspool", "run", "--config", "ipspool."], tmp_path) == ["ipspool.toml"]
    assert _complete(script, ["ipspool", "status", "-c", "ipspool."], tmp_path) == ["ipspool.toml"]
    assert _complete(script, ["ipspool", "run", "--spool", "s"], tmp_path) == ["spooldir"]
    assert _complete(script, ["ipspool", "submit", "--timeout", ""], tmp_path) == []
    assert _complete(script, ["ipspool", "submit", "--wait", "ip"], tmp_path) == ["ips.txt", "ipspool.toml"]
