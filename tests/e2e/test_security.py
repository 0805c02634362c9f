"""Nothing let in: spool content never runs code or redirects a write; the Manager is private."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from multiprocessing.context import AuthenticationError

import pytest

from ipspool.stats import SOCKET_NAME, StatsManager
from tests.support.daemon import Daemon


def test_spool_content_naming_modules_or_callables_runs_nothing(make_daemon: Callable[..., Daemon]) -> None:
    """Files named like modules or "module:callable", holding such strings and code, are only data."""
    d = make_daemon()
    d.start()
    marker = d.root / "executed"
    code = f"__import__('pathlib').Path({str(marker)!r}).write_text('x')\n"
    files = {
        "evil.py": code,
        "sitecustomize.py": code,
        "os:system": f"os:system\ntests.support.stagelib:crash\nsubprocess:run\n{code}",
        "tests.support.stagelib:crash": "tests.support.stagelib:crash\n6.6.6.6\n",
        "ipspool.py": "ipspool.pipeline:load_pipeline\n",
    }
    for name, content in files.items():
        d.drop(name, content)
    for name, content in files.items():
        records = d.wait_result(name)
        lines = [line for line in content.splitlines() if line.split("#")[0].strip()]
        assert len(records) == len(lines)
        assert all("error" in r or r.get("ip") == "6.6.6.6" for r in records)
    assert not marker.exists()
    assert not d.events("worker.died")
    assert d.stop() == 0


def test_results_dir_that_is_a_symlink_is_refused_at_start(make_daemon: Callable[..., Daemon]) -> None:
    """results_dir as a symlink: exit 5 with a message naming it, and nothing is created through it."""
    d = make_daemon()
    target = d.root / "elsewhere"
    target.mkdir()
    link = d.root / "results-link"
    link.symlink_to(target)
    d.write_config(spool={"results_dir": str(link)})
    d.start(wait_ready=False)
    assert d.proc is not None and d.proc.wait(30) == 5
    d.proc = None
    error = d.wait_event("daemon.spool_error")
    assert error["error"] == f"{link}: is a symbolic link; refusing to follow it"
    assert not list(target.iterdir())


def test_planted_symlink_at_a_result_name_never_redirects_the_write(make_daemon: Callable[..., Daemon]) -> None:
    """Planted before the claim: the job takes NAME.1; planted during processing: failed/ result_exists."""
    d = make_daemon(pipeline={"stages": ["classify", "tests.support.stagelib:slow"]})
    d.start()
    victim = d.root / "victim"
    victim.write_text("precious\n")
    (d.results / "early.txt.jsonl").symlink_to(victim)
    d.drop("early.txt", "1.1.1.1\n")
    assert d.wait_result("early.txt.1")[0]["ip"] == "1.1.1.1"
    d.drop("late.txt", "".join(f"10.0.0.{i}\n" for i in range(60)))
    d.wait_event("file.claimed", where=lambda e: e["file"] == "late.txt")
    (d.results / "late.txt.jsonl").symlink_to(victim)
    failure = d.wait_failed("late.txt")
    assert failure["reason"] == "result_exists"
    assert victim.read_text() == "precious\n"
    assert (d.results / "late.txt.jsonl").is_symlink() and (d.results / "early.txt.jsonl").is_symlink()
    assert not [p for p in (d.results / ".parts").rglob("*") if not p.is_dir()]  # this run's folder only
    assert d.stop() == 0


def test_manager_socket_and_authkey_are_private_and_a_wrong_key_is_refused_and_logged(daemon: Daemon) -> None:
    """authkey 0600, socket and runtime dir closed to others; a client with a wrong key gets nothing."""
    runtime = daemon.spool / ".ipspool"
    authkey = runtime / "authkey"
    sock = runtime / SOCKET_NAME
    assert stat.S_IMODE(authkey.stat().st_mode) == 0o600
    assert stat.S_ISSOCK(sock.stat().st_mode) and stat.S_IMODE(sock.stat().st_mode) & 0o077 == 0
    assert stat.S_IMODE(runtime.stat().st_mode) & 0o007 == 0
    intruder = StatsManager(address=str(sock), authkey=b"0" * 64)
    with pytest.raises(AuthenticationError):
        intruder.connect()
    refused = daemon.wait_event("stats.client_refused")
    assert refused["level"] == "warning" and refused["peer_pid"] == os.getpid() and refused["peer_uid"] == os.getuid()
    out = daemon.ipspool("status", "--config", str(daemon.config_path), "--json")
    assert out.returncode == 0  # the right key still works
