"""Start-up errors keep to the exit-code contract; the runtime directory is private however it is made."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ipspool.exitcodes import ExitCode
from ipspool.spool import SpoolError
from tests.support.daemon import python_path, wait_for, write_toml


def run_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": python_path()}
    return subprocess.run([sys.executable, "-m", "ipspool", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


def test_ensure_runtime_dir_creates_it_private(tmp_path: Path) -> None:
    """Missing (with its parents): created 0750 whatever the umask lets through."""
    from ipspool.spool import ensure_runtime_dir

    path = tmp_path / "a" / "run"
    old = os.umask(0o022)
    try:
        ensure_runtime_dir(path)
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o750
    ensure_runtime_dir(path)  # there already: fine


@pytest.mark.parametrize("where", ["under_a_file", "a_file", "a_symlink"])
def test_ensure_runtime_dir_says_what_is_wrong(tmp_path: Path, where: str) -> None:
    """Under a regular file, a file itself, a symlink: SpoolError naming spool.runtime_dir and the path."""
    from ipspool.spool import ensure_runtime_dir

    (tmp_path / "file").write_text("")
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    path = {"under_a_file": tmp_path / "file" / "run", "a_file": tmp_path / "file", "a_symlink": tmp_path / "link"}
    with pytest.raises(SpoolError, match=f"^spool.runtime_dir: {path[where]} "):
        ensure_runtime_dir(path[where])


def test_run_with_a_runtime_dir_that_cannot_be_created_is_a_spool_error(tmp_path: Path) -> None:
    """`ipspool run`: daemon.spool_error and SPOOL_ERROR, no traceback."""
    (tmp_path / "file").write_text("")
    config = write_toml(tmp_path / "c.toml", {
        "spool": {"dir": str(tmp_path / "spool"), "runtime_dir": str(tmp_path / "file" / "run")},
        "log": {"format": "json", "file": str(tmp_path / "log")},
    })
    run = run_cli("run", "--config", str(config))
    assert run.returncode == ExitCode.SPOOL_ERROR, run.stderr
    assert "Traceback" not in run.stderr + run.stdout
    events = [json.loads(line) for line in (tmp_path / "log").read_text().splitlines()]
    assert any(e["event"] == "daemon.spool_error" and "spool.runtime_dir" in e["error"] for e in events)


def daemonize_config(tmp_path: Path, **spool: str) -> Path:
    return write_toml(tmp_path / "c.toml", {
        "spool": {"dir": str(tmp_path / "spool"), "rescan_interval": 1.0, **spool},
        "workers": {"processes": 1, "threads": 2, "graceful_timeout": 20.0},
        "log": {"level": "debug", "format": "json"},  # no log.file: the log goes to the runtime directory
    })


def test_daemonize_creates_the_runtime_directory_private(tmp_path: Path) -> None:
    """`run --daemonize` with the default log in the runtime directory: 0750, not 0755."""
    pidfile = tmp_path / "pid"
    config = daemonize_config(tmp_path)
    runtime = tmp_path / "spool" / ".ipspool"
    started = run_cli("run", "--daemonize", "--pidfile", str(pidfile), "--config", str(config), timeout=30)
    assert started.returncode == 0, started.stderr
    pid = 0
    try:
        wait_for(lambda: pidfile.exists() and pidfile.read_text().strip(), timeout=30, what="the pidfile")
        pid = int(pidfile.read_text())
        log = runtime / "ipspool.log"
        wait_for(lambda: log.exists() and b'"daemon.ready"' in log.read_bytes(), timeout=30, what="daemon.ready")
        assert stat.S_IMODE(runtime.stat().st_mode) & 0o027 == 0, oct(runtime.stat().st_mode)
    finally:
        if pid:
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 30
            while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
                time.sleep(0.05)


def test_daemonize_with_a_runtime_dir_that_cannot_be_created_is_a_spool_error(tmp_path: Path) -> None:
    """`run --daemonize`: the reason on the terminal and SPOOL_ERROR, before detaching; no traceback."""
    (tmp_path / "file").write_text("")
    config = daemonize_config(tmp_path, runtime_dir=str(tmp_path / "file" / "run"))
    run = run_cli("run", "--daemonize", "--config", str(config), timeout=30)
    assert run.returncode == ExitCode.SPOOL_ERROR, run.stderr
    assert "spool.runtime_dir" in run.stderr and "Traceback" not in run.stderr
