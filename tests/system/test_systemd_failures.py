"""Crashes and hangs under a real systemd: dead workers, a dead supervisor, a wedged one."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.support.nspawn import Machine, boot_ipspool, wait_for

pytestmark = pytest.mark.systemd

# Test-only: a short watchdog and restart delay keep the suite quick.
WATCHDOG_DROPIN = "WatchdogSec=3\nRestartSec=1\n"
SLOW: dict[str, dict[str, Any]] = {
    "spool": {"rescan_interval": 1.0},
    "workers": {"processes": 2, "threads": 8, "chunk_bytes": 4096, "max_inflight": 1},
    "pipeline": {"stages": ["classify", "tests.support.stagelib:slow"]},
    "log": {"level": "debug"},
}
LINES = 3000


@pytest.fixture(scope="module")
def machine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Machine]:
    yield from boot_ipspool("ipspool-fail", tmp_path_factory.mktemp("nspawn"), WATCHDOG_DROPIN)


def _big() -> str:
    return "".join(f"10.1.{i // 256 % 256}.{i % 256}\n" for i in range(LINES))


def _complete(records: list[dict[str, Any]]) -> bool:
    return [r["line"] for r in records] == list(range(1, LINES + 1))


def _restarted(machine: Machine, before: int) -> bool:
    state = machine.show("NRestarts", "ActiveState", "SubState")
    return int(state["NRestarts"]) > before and (state["ActiveState"], state["SubState"]) == ("active", "running")


def test_worker_killed_is_replaced_and_the_file_completes(machine: Machine) -> None:
    """kill -9 of a busy worker: worker.died in the journal, a new worker, every line once and in order."""
    cursor = machine.reset(**SLOW)
    machine.submit("w.txt", _big())
    machine.wait_event("chunk.done", cursor)
    victim = machine.pids("ipspool: worker 0")
    assert len(victim) == 1
    machine.run("kill", "-9", str(victim[0]))
    died = machine.wait_event("worker.died", cursor)
    assert died["worker_pid"] == victim[0] and died["cause"] == "signal 9"
    machine.wait_event("worker.replaced", cursor)
    assert _complete(machine.wait_result("w.txt", timeout=60))
    assert machine.show("NRestarts")["NRestarts"] == "0", "a dead worker is the supervisor's business"


def test_supervisor_killed_is_restarted_by_systemd_and_the_file_completes(machine: Machine) -> None:
    """kill -9 of the main process: Restart=on-failure brings it back; the file in active/ completes."""
    cursor = machine.reset(**SLOW)
    before = int(machine.show("NRestarts")["NRestarts"])
    machine.submit("s.txt", _big())
    machine.wait_event("chunk.done", cursor)
    old = machine.main_pid()
    machine.run("kill", "-9", str(old))
    wait_for(lambda: _restarted(machine, before), 30, 0.2, what="systemd to restart ipspool")
    assert machine.main_pid() != old
    assert _complete(machine.wait_result("s.txt", timeout=60))
    recovered = machine.events(cursor, "file.recovered")
    assert recovered and recovered[0]["action"] == "reprocess"


def test_a_wedged_supervisor_is_restarted_by_the_watchdog(machine: Machine) -> None:
    """SIGSTOP of the main loop stops WATCHDOG=1; systemd kills and restarts the service."""
    cursor = machine.reset(**SLOW)
    assert machine.show("WatchdogUSec")["WatchdogUSec"] == "3s"
    before = int(machine.show("NRestarts")["NRestarts"])
    old = machine.main_pid()
    machine.run("kill", "-STOP", str(old))
    wait_for(lambda: _restarted(machine, before), 30, 0.2, what="the watchdog restart")
    assert machine.main_pid() != old
    messages = [str(e.get("MESSAGE", "")) for e in machine.journal(cursor)]
    assert any("Watchdog timeout" in m for m in messages), messages[-20:]
    machine.submit("after.txt", "192.0.2.1\n")
    assert machine.wait_result("after.txt")[0]["ip"] == "192.0.2.1"


PROM = "/var/spool/ipspool/ipspool.prom"
NO_RESTART = "/run/systemd/system/ipspool.service.d/zz-no-restart.conf"


def _up(machine: Machine) -> float | None:
    text = machine.run("cat", PROM, check=False).stdout
    values = [line.split()[1] for line in text.splitlines() if line.startswith("ipspool_up ")]
    return float(values[0]) if values else None


def test_supervisor_killed_leaves_no_metrics_saying_up(machine: Machine) -> None:
    """kill -9 of the main process: ExecStopPost= (ipspool metrics-down) rewrites the textfile with up 0."""
    # No restart this once, so that nothing writes up 1 again before we look.
    machine.write(NO_RESTART, "[Service]\nRestart=no\n")
    machine.systemctl("daemon-reload")
    try:
        cursor = machine.reset(**SLOW, metrics={"textfile": PROM, "interval": 0.2})
        wait_for(lambda: _up(machine) == 1, 30, 0.2, what="ipspool_up 1 in the textfile")
        machine.run("kill", "-9", str(machine.main_pid()))
        wait_for(lambda: machine.show("ActiveState")["ActiveState"] == "failed", 30, 0.2, what="the unit to fail")
        assert _up(machine) == 0
        said = [str(e.get("MESSAGE", "")) for e in machine.journal(cursor)]
        assert any("ipspool_up 0 (it said 1" in m for m in said), said[-20:]
    finally:
        machine.run("rm", "-f", NO_RESTART)
        machine.systemctl("daemon-reload")
        machine.systemctl("reset-failed", "ipspool.service", check=False)
    machine.reset(**SLOW, metrics={"textfile": PROM, "interval": 0.2})
    wait_for(lambda: _up(machine) == 1, 30, 0.2, what="the next start to say up")
