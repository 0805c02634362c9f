"""``ipspool run --daemonize --pidfile``: detached, locked, rotatable, graceful."""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.daemon import wait_for, write_toml


def _alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie waiting for its reaper counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


class Detached:
    """One daemonized ipspool on a temporary spool; not our child once it detaches."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.spool = root / "spool"
        self.log = root / "logs" / "ipspool.log"
        self.pidfile = root / "ipspool.pid"
        self.config = write_toml(root / "ipspool.toml", {
            "spool": {"dir": str(self.spool), "rescan_interval": 1.0},
            "workers": {"processes": 2, "threads": 2, "graceful_timeout": 20.0},
            "log": {"level": "debug", "format": "json", "file": str(self.log)},
        })
        self.pid = 0
        self.sid = 0

    def start(self) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "ipspool", "run", "--daemonize", "--pidfile", str(self.pidfile),
             "--config", str(self.config)],
            capture_output=True, text=True, timeout=30,
        )

    def events(self, path: Path | None = None, name: str | None = None) -> list[dict[str, Any]]:
        path = path or self.log
        if not path.exists():
            return []
        lines = path.read_bytes().splitlines()
        return [e for e in map(json.loads, lines) if name is None or e["event"] == name]

    def drop(self, name: str, content: str) -> None:
        tmp = self.spool / "tmp" / f".{name}"
        tmp.write_text(content)
        os.rename(tmp, self.spool / "incoming" / name)

    def result(self, name: str) -> list[dict[str, Any]]:
        """The records of ``name``'s result, once it is published."""
        path = self.spool / "results" / f"{name}.jsonl"
        wait_for(path.exists, 30, what=f"result of {name}")
        return [json.loads(line) for line in path.read_bytes().splitlines()]

    def kill(self) -> None:
        """Test cleanup: kill the processes of the daemon's own session."""
        if not self.sid and self.pidfile.exists():
            try:
                self.sid = os.getsid(int(self.pidfile.read_text()))
            except (ValueError, ProcessLookupError):
                return
        if not self.sid:
            return
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    if os.getsid(int(entry)) == self.sid:
                        os.kill(int(entry), signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    continue


@pytest.fixture
def detached(tmp_path: Path) -> Iterator[Detached]:
    d = Detached(tmp_path)
    yield d
    d.kill()


def test_daemonize_pidfile_rotation_and_graceful_term(detached: Detached) -> None:
    """Detaches with a locked pidfile, refuses a second start, reopens its log on USR1, stops on TERM."""
    d = detached
    d.pidfile.write_text("999999\n")  # left by a killed daemon: no lock, so it must not block
    started = d.start()
    assert started.returncode == 0, started.stderr
    ready = wait_for(lambda: d.events(name="daemon.ready"), 30, what="daemon.ready in the log file")[0]
    d.pid = int(d.pidfile.read_text())  # written before the supervisor starts, so final by now
    assert ready["pid"] == d.pid
    d.sid = os.getsid(d.pid)
    assert d.sid not in (os.getsid(0), d.pid), "detached: a new session it does not lead (double fork)"
    assert oct(os.stat(d.log).st_mode & 0o777) == oct(0o640)
    with open(d.pidfile, "rb") as handle, pytest.raises(BlockingIOError):
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)

    second = d.start()
    assert second.returncode == 1
    assert f"locked by pid {d.pid}" in second.stderr

    d.drop("a.txt", "192.0.2.1\n10.0.0.1\n")
    assert [(r["ip"], r["class"]) for r in d.result("a.txt")] == [("192.0.2.1", "reserved"), ("10.0.0.1", "private")]
    workers = wait_for(lambda: d.events(name="worker.started"), 10, what="worker lines in the log file")
    assert sorted(e["worker"] for e in workers) == [0, 1]

    rotated = d.log.with_suffix(".log.1")
    os.rename(d.log, rotated)
    os.kill(d.pid, signal.SIGUSR1)
    wait_for(lambda: d.events(name="log.reopened"), 10, what="log.reopened in the new log file")
    d.drop("b.txt", "198.51.100.7\n")
    wait_for(lambda: d.events(name="file.done"), 30, what="file.done of b.txt in the new log file")
    assert [r["ip"] for r in d.result("b.txt")] == ["198.51.100.7"]
    assert [e["file"] for e in d.events(name="file.done")] == ["b.txt"]
    assert [e["file"] for e in d.events(rotated, "file.done")] == ["a.txt"]

    os.kill(d.pid, signal.SIGTERM)
    wait_for(lambda: not _alive(d.pid), 30, what="daemon exit after TERM")
    assert not d.pidfile.exists()
    stopped = d.events(name="daemon.stopped")
    assert stopped and stopped[0]["exit_code"] == 0
    assert d.events(name="daemon.stopping")[0]["signal"] == "SIGTERM"
