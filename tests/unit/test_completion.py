"""Completion scripts (shtab) complete subcommands, options, choices, files and directories in real bash and zsh."""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ipspool.cli import build_parser
from ipspool.tools.completion import script
from tests.support.daemon import REPO

ZSH_DRIVER = REPO / "tests" / "support" / "zsh_complete.zsh"


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """The parser's subcommands, read from argparse itself."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    raise AssertionError("the parser has no subcommands")


def _long_options(parser: argparse.ArgumentParser) -> set[str]:
    return {s for a in parser._actions for s in a.option_strings if s.startswith("--")}


@pytest.fixture
def cwd(tmp_path: Path) -> Path:
    """A directory with two files and a subdirectory to complete names from."""
    (tmp_path / "ips.txt").write_text("192.0.2.1\n")
    (tmp_path / "ipspool.toml").write_text("")
    (tmp_path / "spooldir").mkdir()
    return tmp_path


# -- bash ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bash_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("bash") / "ipspool"
    path.write_text(script("bash"))
    return path


def _bash(bash_file: Path, line: str, cwd: Path) -> list[str]:
    """COMPREPLY for ``line`` (completing its last word; a trailing space starts a new one), in real bash."""
    words = line.split(" ")
    quoted = " ".join("'" + w.replace("'", "'\\''") + "'" for w in words)
    driver = (f"source {bash_file}\n"
              f"COMP_WORDS=({quoted}); COMP_CWORD={len(words) - 1}; COMP_LINE='{line}'; COMP_POINT={len(line)}\n"
              'spec=$(complete -p ipspool); fn=${spec##*-F }; fn=${fn%% *}\n'
              '"$fn" ipspool "${COMP_WORDS[COMP_CWORD]}" "${COMP_WORDS[COMP_CWORD-1]}"\n'
              'printf "%s\\n" "${COMPREPLY[@]}"\n')
    out = subprocess.run(["bash", "--norc", "--noprofile", "-c", driver], capture_output=True, text=True, cwd=cwd,
                         check=True, timeout=30)
    return sorted({line for line in out.stdout.splitlines() if line})


def test_bash_script_parses_and_registers_a_completion_for_ipspool(bash_file: Path) -> None:
    """bash -n accepts it; sourcing it leaves `complete -p ipspool` set."""
    subprocess.run(["bash", "-n", str(bash_file)], check=True)
    out = subprocess.run(["bash", "--norc", "--noprofile", "-c", f"source {bash_file}; complete -p ipspool"],
                         capture_output=True, text=True, check=True)
    assert " -F " in out.stdout and out.stdout.strip().endswith(" ipspool")


def test_bash_completes_every_subcommand_and_option(bash_file: Path, cwd: Path) -> None:
    """`ipspool <TAB>` lists the subcommands; `ipspool CMD --<TAB>` all of CMD's long options."""
    subs = _subparsers(build_parser())
    assert _bash(bash_file, "ipspool ", cwd) == sorted(subs)
    for name, sub in subs.items():
        assert set(_bash(bash_file, f"ipspool {name} --", cwd)) == _long_options(sub), name
    assert _bash(bash_file, "ipspool check-config --s", cwd) == ["--schema", "--show", "--spool"]


def test_bash_completes_files_directories_and_choices(bash_file: Path, cwd: Path) -> None:
    """FILE values and arguments complete file names, DIR values directories, --log-level its levels."""
    assert _bash(bash_file, "ipspool submit ip", cwd) == ["ips.txt", "ipspool.toml"]
    assert _bash(bash_file, "ipspool run --config ipspool.", cwd) == ["ipspool.toml"]
    assert _bash(bash_file, "ipspool status -c ipspool.", cwd) == ["ipspool.toml"]
    assert _bash(bash_file, "ipspool run --spool s", cwd) == ["spooldir"]
    assert _bash(bash_file, "ipspool run --log-level ", cwd) == ["debug", "error", "info", "warning"]


# -- zsh ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def zsh_fpath(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory holding _ipspool, as /usr/share/zsh/vendor-completions does once the package is installed."""
    directory = tmp_path_factory.mktemp("zsh")
    (directory / "_ipspool").write_text(script("zsh"))
    return directory


def _zsh(fpath: Path, line: str, cwd: Path) -> list[str]:
    """What zsh's compinit offers after typing ``line`` and TAB in an interactive zsh (zsh/zpty)."""
    out = subprocess.run(["zsh", "-f", str(ZSH_DRIVER), str(fpath), line], capture_output=True, text=True, cwd=cwd,
                         check=True, timeout=60)
    return sorted(set(out.stdout.split()))


@pytest.mark.skipif(shutil.which("zsh") is None, reason="zsh is not installed (apt-get install zsh)")
def test_zsh_completes_every_subcommand_and_option(zsh_fpath: Path, cwd: Path) -> None:
    """With _ipspool in $fpath, compinit completes the subcommands and each one's long options."""
    subs = _subparsers(build_parser())
    assert _zsh(zsh_fpath, "ipspool ", cwd) == sorted(subs)
    for name, sub in subs.items():
        assert set(_zsh(zsh_fpath, f"ipspool {name} --", cwd)) == _long_options(sub), name


@pytest.mark.skipif(shutil.which("zsh") is None, reason="zsh is not installed (apt-get install zsh)")
def test_zsh_completes_files_directories_and_choices(zsh_fpath: Path, cwd: Path) -> None:
    """FILE and DIR values and submit's arguments complete names; --log-level its levels."""
    assert _zsh(zsh_fpath, "ipspool submit ip", cwd) == ["ips.txt", "ipspool.toml"]
    assert _zsh(zsh_fpath, "ipspool run --config ipspool.", cwd) == ["ipspool.toml"]
    assert _zsh(zsh_fpath, "ipspool run --spool s", cwd) == ["spooldir"]
    assert _zsh(zsh_fpath, "ipspool run --log-level w", cwd) == ["warning"]


def test_module_prints_each_script_and_refuses_other_shells() -> None:
    """`python -m ipspool.tools.completion bash|zsh` is what the package build runs; fish is a usage error."""
    for shell in ("bash", "zsh"):
        out = subprocess.run([sys.executable, "-m", "ipspool.tools.completion", shell], capture_output=True,
                             text=True, check=True)
        assert out.stdout == script(shell)
    assert script("zsh").startswith("#compdef ipspool\n")
    wrong = subprocess.run([sys.executable, "-m", "ipspool.tools.completion", "fish"], capture_output=True,
                           text=True, check=False)
    assert wrong.returncode == 2
