"""An exception nothing catches, in any process or thread of the daemon, is one critical event and exit 70.

The failures are injected by tests.support.crashinject where no stage can
reach (a stage's exception is an error record, not a crash): the supervisor's
loop, a supervisor thread, a worker's main thread and another of its threads,
a stats Manager thread, and a one-shot command.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ipspool.exitcodes import ExitCode
from tests.support.crashinject import ENV, MARK_ENV
from tests.support.daemon import Daemon, python_path, wait_for, write_toml


def _inject(d: Daemon, where: str) -> dict[str, str]:
    return {ENV: where, MARK_ENV: str(d.root / "injected")}


def _start(d: Daemon, where: str) -> None:
    d.start(env=_inject(d, where), module="tests.support.crashinject")


def _assert_crash_event(event: dict[str, Any], where: str, role: str) -> None:
    assert event["level"] == "critical" and event["role"] == role, event
    assert event["exc_type"].endswith("Injected") and event["exc"] == f"injected failure ({where})"
    assert event["traceback"].startswith("Traceback (most recent call last):")
    assert "crashinject.py" in event["traceback"] and event["traceback"].rstrip().endswith(
        f"Injected: injected failure ({where})")


def test_a_crash_in_the_supervisor_loop_is_one_critical_event_and_exit_70(
    make_daemon: Callable[..., Daemon],
) -> None:
    """daemon.crashed (critical, traceback), then the orderly shutdown: workers gone, exit INTERNAL_ERROR."""
    d = make_daemon()
    _start(d, "loop")
    assert d.proc is not None
    assert d.proc.wait(30) == ExitCode.INTERNAL_ERROR
    crashed = d.wait_event("daemon.crashed")
    _assert_crash_event(crashed, "loop", "supervisor")
    assert "in turn" in crashed["traceback"]  # the loop itself, then the injected tick
    assert len(d.events("daemon.crashed")) == 1
    assert d.wait_event("daemon.stopped")["exit_code"] == ExitCode.INTERNAL_ERROR
    assert "Traceback" not in (d.root / "stderr.log").read_text()
    d.proc = None


def test_a_crashed_supervisor_thread_stops_the_daemon_with_exit_70(make_daemon: Callable[..., Daemon]) -> None:
    """thread.crashed names the thread; the loop then stops the daemon in order (INTERNAL_ERROR)."""
    d = make_daemon()
    _start(d, "thread")
    assert d.proc is not None
    assert d.proc.wait(30) == ExitCode.INTERNAL_ERROR
    crashed = d.wait_event("thread.crashed")
    _assert_crash_event(crashed, "thread", "supervisor")
    assert crashed["thread"] == "injected"
    assert d.wait_event("daemon.stopped")["exit_code"] == ExitCode.INTERNAL_ERROR
    d.proc = None


def test_a_crash_in_a_worker_main_thread_is_logged_and_its_chunk_is_redone(
    make_daemon: Callable[..., Daemon],
) -> None:
    """daemon.crashed (role worker), worker.died with exit code 70, and the file still completes."""
    d = make_daemon()
    _start(d, "worker")
    d.drop("crash.txt", "192.0.2.1\n192.0.2.2\n")
    assert [r["ip"] for r in d.wait_result("crash.txt")] == ["192.0.2.1", "192.0.2.2"]
    _assert_crash_event(d.wait_event("daemon.crashed"), "worker", "worker")
    died = d.wait_event("worker.died")
    assert died["exit_code"] == ExitCode.INTERNAL_ERROR
    assert d.stop() == ExitCode.OK


def test_a_crashed_worker_thread_ends_the_worker_and_its_chunk_is_redone(make_daemon: Callable[..., Daemon]) -> None:
    """thread.crashed (role worker): that worker exits 70 and is replaced; nothing is lost."""
    d = make_daemon()
    _start(d, "worker-thread")
    d.drop("crash.txt", "192.0.2.3\n")
    crashed = d.wait_event("thread.crashed")
    _assert_crash_event(crashed, "worker-thread", "worker")
    assert d.wait_event("worker.died")["exit_code"] == ExitCode.INTERNAL_ERROR
    assert d.wait_result("crash.txt")[0]["ip"] == "192.0.2.3"
    assert d.stop() == ExitCode.OK


def test_a_crashed_stats_thread_ends_the_manager_which_is_started_again(make_daemon: Callable[..., Daemon]) -> None:
    """thread.crashed (role stats, the status writer); stats.died; status answers again from a new Manager."""
    d = make_daemon()
    _start(d, "stats")
    crashed = d.wait_event("thread.crashed")
    _assert_crash_event(crashed, "stats", "stats")
    assert crashed["thread"] == "status-writer"
    d.wait_event("stats.died")
    wait_for(lambda: d.ipspool("status", "--config", str(d.config_path)).returncode == ExitCode.OK, 30,
             what="status from the new Manager")
    assert d.stop() == ExitCode.OK


def test_a_crash_in_a_one_shot_command_is_one_json_event_on_stderr(tmp_path: Path) -> None:
    """ipspool status failing unexpectedly: exit 70, command.crashed (critical) as one JSON line."""
    config = write_toml(tmp_path / "c.toml", {"spool": {"dir": str(tmp_path / "spool")}})
    env = {**os.environ, "PYTHONPATH": python_path(), ENV: "command", MARK_ENV: str(tmp_path / "mark")}
    out = subprocess.run([sys.executable, "-m", "tests.support.crashinject", "status", "--config", str(config)],
                         capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == ExitCode.INTERNAL_ERROR, out
    lines = out.stderr.splitlines()
    assert len(lines) == 1, out.stderr
    event = json.loads(lines[0])
    assert event["event"] == "command.crashed" and event["command"] == "status"
    _assert_crash_event(event, "command", "command")


def test_a_crash_reaches_journald_at_priority_2(tmp_path: Path) -> None:
    """Under JOURNAL_STREAM the daemon.crashed line is <2> (crit): journalctl -p crit shows it."""
    config = write_toml(tmp_path / "c.toml", {
        "spool": {"dir": str(tmp_path / "spool")}, "workers": {"processes": 1, "threads": 2},
        "log": {"format": "json"},
    })
    read_end, write_end = os.pipe()
    st = os.fstat(write_end)
    env = {**os.environ, "PYTHONPATH": python_path(), ENV: "loop", MARK_ENV: str(tmp_path / "mark"),
           "JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}
    proc = subprocess.Popen([sys.executable, "-m", "tests.support.crashinject", "run", "--config", str(config)],
                            stdout=write_end, stderr=subprocess.DEVNULL, env=env, start_new_session=True)
    os.close(write_end)
    chunks: list[bytes] = []
    reader = threading.Thread(target=lambda: chunks.extend(iter(lambda: os.read(read_end, 65536), b"")))
    reader.start()
    try:
        assert proc.wait(60) == ExitCode.INTERNAL_ERROR
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        reader.join(10)
        os.close(read_end)
    crashed = [line for line in b"".join(chunks).splitlines() if b'"daemon.crashed"' in line]
    assert len(crashed) == 1
    match = re.match(rb"^<(\d)>(\{.*\})$", crashed[0])
    assert match and match.group(1) == b"2", crashed[0][:200]
    assert json.loads(match.group(2))["level"] == "critical"
