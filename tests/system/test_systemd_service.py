"""The packaged unit under a real systemd: start, status, producers, reload, stop, journald."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ipspool.exitcodes import ExitCode
from tests.support.nspawn import SPOOL, UNIT, Machine, boot_ipspool

pytestmark = pytest.mark.systemd

BASE: dict[str, dict[str, Any]] = {
    "spool": {"rescan_interval": 1.0},
    "workers": {"processes": 2, "threads": 8},
    "log": {"level": "debug"},
}
SLOW: dict[str, dict[str, Any]] = {
    **BASE,
    "workers": {"processes": 2, "threads": 8, "chunk_bytes": 4096, "max_inflight": 1},
    "pipeline": {"stages": ["classify", "tests.support.stagelib:slow"]},
}
_PRIORITY = {"debug": 7, "info": 6, "warning": 4, "error": 3, "critical": 2}


@pytest.fixture(scope="module")
def machine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Machine]:
    yield from boot_ipspool("ipspool-svc", tmp_path_factory.mktemp("nspawn"))


def _addresses(count: int) -> str:
    return "".join(f"10.{i // 65536 % 256}.{i // 256 % 256}.{i % 256}\n" for i in range(count))


def test_start_returns_when_ready_and_status_shows_the_status_line(machine: Machine) -> None:
    """`systemctl start` returns after READY=1, sent once every worker is up; STATUS= is shown."""
    machine.reset(**BASE)
    state = machine.show("ActiveState", "SubState", "StatusText", "Type", "NotifyAccess")
    assert (state["ActiveState"], state["SubState"]) == ("active", "running")
    assert (state["Type"], state["NotifyAccess"]) == ("notify", "main")
    # READY=1 carries the status line; "2/2 workers" proves start waited for the workers.
    assert state["StatusText"].startswith("running: 2/2 workers"), state
    status = machine.systemctl("status", UNIT, "--no-pager", "--lines=0", check=False).stdout
    assert 'Status: "running: 2/2 workers' in status


def test_a_producer_drop_gets_its_result(machine: Machine) -> None:
    """A non-root member of ipspool-submit drops a file (tmp/ then rename) and gets its result; results stay private."""
    machine.reset(**BASE)
    machine.submit("drop.txt", "192.0.2.1\nnot-an-ip\n2001:db8::1\n")
    records = machine.wait_result("drop.txt")
    assert [r["input"] for r in records] == ["192.0.2.1", "not-an-ip", "2001:db8::1"]
    assert "error" in records[1]
    # `ipspool submit` as the producer works; --wait needs group ipspool (results are private) and says so.
    machine.write("/tmp/more.txt", "198.51.100.9\n")
    machine.run("chmod", "644", "/tmp/more.txt")
    python = machine.show("ExecStart")["ExecStart"].split("path=")[1].split(" ;")[0]
    submit = [python, "-m", "ipspool", "submit", "--config", "/etc/ipspool/ipspool.toml"]
    refused = machine.run(*submit, "--wait", "--timeout", "30", "/tmp/more.txt", user="producer", check=False)
    assert refused.returncode == 1 and "cannot observe results" in refused.stderr
    machine.run(*submit, "/tmp/more.txt", user="producer")
    assert machine.wait_result("more.txt")[0]["ip"] == "198.51.100.9"
    assert machine.run("ls", f"{SPOOL}/results", user="producer", check=False).returncode != 0
    assert machine.run("touch", f"{SPOOL}/results/forged.jsonl", user="producer", check=False).returncode != 0
    assert machine.run("ls", f"{SPOOL}/active", user="producer", check=False).returncode != 0


def test_reload_applies_a_good_config_and_refuses_a_bad_one(machine: Machine) -> None:
    """A good reload takes effect; bad ones fail `systemctl reload` while the daemon keeps processing."""
    cursor = machine.reset(**BASE)
    pid = machine.main_pid()
    machine.configure(**{**BASE, "pipeline": {"stages": ["classify", "tests.support.stagelib:tag"]}})
    machine.systemctl("reload", UNIT)
    machine.wait_event("config.reloaded", cursor)
    machine.submit("tagged.txt", "192.0.2.7\n")
    assert machine.wait_result("tagged.txt")[0]["tagged"] == 4

    # Not even TOML-valid: `ipspool reload` refuses before signalling: CONFIG_ERROR.
    machine.write("/etc/ipspool/ipspool.toml", "[workers]\nprocesses = 'two'\n")
    before = machine.cursor()
    refused = machine.systemctl("reload", UNIT, check=False)
    assert refused.returncode != 0  # systemctl reports the failed job; ExecReload's own status is below
    assert machine.control_exit_status(before) == ExitCode.CONFIG_ERROR
    # Valid alone but not as a reload (the spool cannot move): the daemon refuses: RELOAD_REJECTED.
    machine.configure(**{**BASE, "spool": {"results_dir": "/var/spool/ipspool/elsewhere"}})
    before = machine.cursor()
    refused = machine.systemctl("reload", UNIT, check=False)
    assert refused.returncode != 0
    assert machine.control_exit_status(before) == ExitCode.RELOAD_REJECTED
    failed = machine.wait_event("config.reload_failed", cursor)
    assert any("results_dir" in p for p in failed["problems"])
    reload_lines = [e.get("MESSAGE", "") for e in machine.journal(cursor) if e.get("_TRANSPORT") == "stdout"]
    assert any("refused the new configuration" in str(m) for m in reload_lines)

    assert machine.show("ActiveState")["ActiveState"] == "active"
    assert machine.main_pid() == pid
    machine.submit("after.txt", "203.0.113.5\n")
    assert machine.wait_result("after.txt")[0]["tagged"] == 4  # still the last good configuration


def test_stop_mid_big_file_is_graceful_and_the_next_start_completes_it(machine: Machine) -> None:
    """`systemctl stop` drains in-flight chunks within TimeoutStopSec; nothing lost; restart finishes."""
    cursor = machine.reset(**SLOW)
    lines = 3600  # ~10 chunks of ~1 s each on two workers
    machine.submit("big.txt", _addresses(lines))
    machine.wait_event("chunk.done", cursor)
    machine.systemctl("stop", UNIT)
    assert machine.show("TimeoutStopUSec")["TimeoutStopUSec"] == "1min"  # TimeoutStopSec=60
    assert machine.show("Result")["Result"] == "success"  # "timeout" had systemd killed it
    stopped = machine.wait_event("daemon.stopped", cursor)
    assert stopped["exit_code"] == 0
    assert not machine.events(cursor, "daemon.stop_timeout")
    assert machine.result("big.txt") is None, "stopped before the end: the file must wait in active/"
    assert machine.exists(f"{SPOOL}/active/big.txt")

    machine.systemctl("start", UNIT)
    records = machine.wait_result("big.txt", timeout=60)
    assert [r["line"] for r in records] == list(range(1, lines + 1))
    assert machine.events(cursor, "file.recovered")[0]["action"] == "reprocess"


def test_stop_timeout_is_extended_while_the_drain_makes_progress(machine: Machine) -> None:
    """With TimeoutStopSec shorter than the drain, EXTEND_TIMEOUT_USEC keeps systemd from killing it."""
    machine.write("/etc/systemd/system/ipspool.service.d/short-stop.conf", "[Service]\nTimeoutStopSec=3\n")
    machine.systemctl("daemon-reload")
    try:
        cursor = machine.reset(**{**SLOW, "workers": {**SLOW["workers"], "threads": 4, "max_inflight": 3}})
        machine.submit("long.txt", _addresses(3600))
        machine.wait_event("chunk.done", cursor)
        began = time.monotonic()
        machine.systemctl("stop", UNIT)
        took = time.monotonic() - began
        assert machine.show("Result")["Result"] == "success"
        assert took > 3, f"the drain took {took:.1f}s: too short to show the extension"
        assert machine.wait_event("daemon.stopped", cursor)["exit_code"] == 0
    finally:
        machine.run("rm", "/etc/systemd/system/ipspool.service.d/short-stop.conf")
        machine.systemctl("daemon-reload")


def test_journal_priority_filter_and_json_lines(machine: Machine) -> None:
    """`journalctl -p warning` shows exactly our warnings and errors; each line of ours is JSON."""
    cursor = machine.reset(**BASE)
    machine.sh(f"ln -s /etc/hostname {SPOOL}/incoming/link.txt")            # file.rejected: warning
    machine.wait_event("file.rejected", cursor)
    machine.configure(**{**BASE, "spool": {"results_dir": "/elsewhere"}})
    machine.systemctl("reload", UNIT, check=False)                           # config.reload_failed: error
    machine.wait_event("config.reload_failed", cursor)
    machine.submit("fine.txt", "192.0.2.1\n")
    machine.wait_result("fine.txt")

    ours: list[tuple[int, dict[str, Any]]] = []
    for entry in machine.journal(cursor):
        if entry.get("_TRANSPORT") != "stdout" or " reload " in f" {entry.get('_CMDLINE', '')} ":
            continue  # systemd's own lines, and the human-readable output of ExecReload=
        event = json.loads(entry["MESSAGE"])  # every line of the daemon's processes is JSON
        assert int(entry["PRIORITY"]) == _PRIORITY[event["level"]], event
        ours.append((int(entry["PRIORITY"]), event))
    assert {"debug", "info", "warning", "error"} <= {e["level"] for _, e in ours}

    filtered = [json.loads(e["MESSAGE"]) for e in machine.journal(cursor, "-p", "warning")
                if e.get("_TRANSPORT") == "stdout" and str(e.get("MESSAGE", "")).startswith("{")]
    expected = [e for p, e in ours if p <= 4]
    assert filtered == expected
    assert {e["event"] for e in filtered} >= {"file.rejected", "config.reload_failed"}


def test_unit_passes_systemd_analyze_verify(tmp_path: Path, machine: Machine) -> None:
    """`systemd-analyze verify` is clean for the unit as installed (its ExecStart= existing)."""
    out = machine.run("systemd-analyze", "verify", "--man=no", "/etc/systemd/system/ipspool.service", check=False)
    assert out.returncode == 0 and not out.stderr.strip(), out.stderr
