"""Directory fsync order under strict POSIX, traced with ``strace -f -y`` on the real programs.

Each step is durable before the next begins, and a move is durable at its
destination before its source is synced (docs/durability.md, "Order of
operations").
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from ipspool.spool import Spool
from tests.support.daemon import REPO, Daemon, write_toml
from tests.support.spoolcheck import start_under

_SYSCALL = re.compile(r"^(\d+)\s+(?:<\.\.\. (\w+) resumed>|(\w+)\()(.*)$")
_TRACED = "trace=fsync,fdatasync,rename,renameat,renameat2,link,linkat,unlink,unlinkat"


@pytest.fixture
def strace() -> str:
    path = shutil.which("strace")
    if path is None or subprocess.run([path, "-o", "/dev/null", "true"], capture_output=True).returncode:
        pytest.skip("strace is not installed or ptrace is not permitted (apt-get install strace)")
    return path


def calls(trace: Path) -> list[tuple[str, str]]:
    """(syscall, text) of the successful calls, in the order they completed."""
    pending: dict[tuple[str, str], str] = {}
    out: list[tuple[str, str]] = []
    for line in trace.read_text(errors="replace").splitlines():
        m = _SYSCALL.match(line)
        if not m:
            continue
        pid, resumed, call, rest = m.groups()
        if resumed:
            out.append((resumed, pending.pop((pid, resumed), "") + rest))
        elif rest.endswith("<unfinished ...>"):
            pending[(pid, call)] = rest
        else:
            out.append((call, rest))
    return [(call, text) for call, text in out if "= -1" not in text.rsplit(")", 1)[-1]]


def stop_traced(d: Daemon) -> None:
    """TERM to the supervisor (the process strace runs), then wait for strace to exit."""
    (supervisor,) = d.pids_titled("ipspool: supervisor")
    os.kill(supervisor, signal.SIGTERM)
    assert d.proc is not None and d.proc.wait(30) == 0
    d.proc = None


def index(events: list[tuple[str, str]], call: str, *needles: str, start: int = 0) -> int:
    """The first call from ``start`` whose name starts with ``call`` (renameat: renameat2 too) and has the needles."""
    for i in range(start, len(events)):
        name, text = events[i]
        if name.startswith(call) and all(n in text for n in needles):
            return i
    raise AssertionError(f"no {call} with {needles} after call {start} in the trace")


def test_rejected_input_has_its_claim_durable_before_its_error_record(
    make_daemon: Callable[..., Daemon], strace: str,
) -> None:
    """A symlink refused after its claim: incoming/ and active/ are fsync'd before the record is written."""
    d = make_daemon(workers={"processes": 1})
    trace = d.root / "trace"
    start_under(d, [strace, "-f", "-y", "-o", str(trace), "-e", _TRACED])
    d.wait_event("daemon.ready", after_start=True)
    (d.spool / "incoming" / "link").symlink_to("/etc/hostname")
    d.wait_failed("link")
    d.wait_event("file.rejected")
    stop_traced(d)
    events = calls(trace)
    spool = str(d.spool)
    claim = index(events, "renameat", f"{spool}/incoming>", '"link"', f"{spool}/active>")
    record = index(events, "fsync", f"{spool}/failed/.link.", start=claim)
    incoming = index(events, "fsync", f"{spool}/incoming>", start=claim)
    active = index(events, "fsync", f"{spool}/active>", start=claim)
    assert claim < incoming < record and claim < active < record, "the claim is not durable before the record"


def test_recovery_syncs_failed_and_done_before_active(make_daemon: Callable[..., Daemon], strace: str) -> None:
    """Finishing a failure and a retirement at start-up: failed/ and done/ are fsync'd before active/."""
    d = make_daemon(workers={"processes": 1})
    spool = Spool(d.spool, d.results)
    spool.create()
    (d.spool / "active" / "failing").write_text("1.1.1.1\n")
    (d.spool / "failed" / "failing.error.json").write_text(json.dumps({"job": "failing", "reason": "too_large"}))
    (d.spool / "active" / "published").write_text("1.1.1.1\n")
    (d.results / "published.jsonl").write_text('{"line":1,"input":"1.1.1.1"}\n')
    trace = d.root / "trace"
    start_under(d, [strace, "-f", "-y", "-o", str(trace), "-e", _TRACED])
    d.wait_event("daemon.ready", after_start=True)
    stop_traced(d)
    assert (d.spool / "failed" / "failing").exists() and (d.spool / "done" / "published").exists()
    events = calls(trace)
    root = str(d.spool)
    moved = max(index(events, "renameat", f"{root}/active>", '"failing"', f"{root}/failed>"),
                index(events, "renameat", f"{root}/active>", '"published"', f"{root}/done>"))
    failed = index(events, "fsync", f"{root}/failed>", start=moved)
    done = index(events, "fsync", f"{root}/done>", start=moved)
    active = index(events, "fsync", f"{root}/active>", start=moved)
    assert failed < active and done < active, "active/ is synced before the directories its entries went to"


def test_submit_syncs_tmp_after_the_rename_into_incoming(tmp_path: Path, strace: str) -> None:
    """`ipspool submit`: file fsync'd, renamed, then incoming/ and tmp/ fsync'd, the destination first."""
    spool_dir = tmp_path / "spool"
    Spool(spool_dir, spool_dir / "results").create()
    config = write_toml(tmp_path / "c.toml", {"spool": {"dir": str(spool_dir)}})
    source = tmp_path / "input.txt"
    source.write_text("1.1.1.1\n")
    trace = tmp_path / "trace"
    done = subprocess.run(
        [strace, "-f", "-y", "-o", str(trace), "-e", _TRACED, sys.executable, "-m", "ipspool", "submit",
         "--config", str(config), str(source)],
        capture_output=True, text=True, timeout=60, env={"PYTHONPATH": str(REPO / "daemon"), "PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 0, done.stderr
    events = calls(trace)
    root = str(spool_dir)
    written = index(events, "fsync", f"{root}/tmp/.submit.")
    renamed = next(i for i, (name, text) in enumerate(events) if name.startswith("rename") and "/incoming/" in text)
    incoming = index(events, "fsync", f"{root}/incoming>", start=renamed)
    tmp = index(events, "fsync", f"{root}/tmp>", start=renamed)
    assert written < renamed < incoming < tmp
