"""systemd/ipspool-generator: no network for a configuration whose stages need none, the network for one that may."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest

from tests.support.nspawn import UNIT, Machine, boot_ipspool

pytestmark = pytest.mark.systemd

DROPIN = "/run/systemd/generator/ipspool.service.d/50-no-network.conf"
BASE: dict[str, dict[str, Any]] = {
    "spool": {"rescan_interval": 1.0},
    "workers": {"processes": 2, "threads": 4},
}


@pytest.fixture(scope="module")
def machine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Machine]:
    yield from boot_ipspool("ipspool-nonet", tmp_path_factory.mktemp("nspawn"))


def _interfaces(machine: Machine, pid: int) -> list[str]:
    """The network interfaces the process ``pid`` sees (its network namespace)."""
    lines = machine.run("cat", f"/proc/{pid}/net/dev").stdout.splitlines()[2:]
    return sorted(line.split(":")[0].strip() for line in lines)


def test_without_network_stages_the_generator_takes_the_network_away_and_the_daemon_works(machine: Machine) -> None:
    """Built-in local stages: PrivateNetwork=yes, IPAddressDeny=any, AF_UNIX only; files processed; exposure <= 1.0."""
    machine.configure(**BASE, pipeline={"stages": ["classify"]})
    machine.systemctl("daemon-reload")
    assert machine.exists(DROPIN)
    machine.reset(**BASE, pipeline={"stages": ["classify"]})
    shown = machine.show("PrivateNetwork", "IPAddressDeny", "RestrictAddressFamilies")
    assert shown["PrivateNetwork"] == "yes", shown
    assert shown["IPAddressDeny"] in ("::/0 0.0.0.0/0", "0.0.0.0/0 ::/0"), shown
    assert shown["RestrictAddressFamilies"] == "AF_UNIX", shown
    assert _interfaces(machine, machine.main_pid()) == ["lo"]
    machine.submit("nonet.txt", "192.0.2.1\n2001:db8::1\nbad\n")
    assert [r.get("ip") for r in machine.wait_result("nonet.txt")] == ["192.0.2.1", "2001:db8::1", None]
    python = machine.show("ExecStart")["ExecStart"].split("path=")[1].split(" ;")[0]
    status = machine.run(python, "-m", "ipspool", "status", "--config", "/etc/ipspool/ipspool.toml")
    assert "State: running" in status.stdout
    machine.systemctl("reload", UNIT)  # reload's verdict comes through status.json, no network needed
    report = machine.run("systemd-analyze", "security", UNIT, "--no-pager", check=False).stdout
    score = float(re.search(r"Overall exposure level for \S+: ([0-9.]+)", report).group(1))  # type: ignore[union-attr]
    assert score <= 1.0, report


def test_a_stage_that_may_need_the_network_keeps_it(machine: Machine) -> None:
    """rdns or a user stage ("module:callable"): after daemon-reload there is no drop-in, the network is there."""
    stages = ["classify", "tests.support.stagelib:tag"]
    machine.configure(**BASE, pipeline={"stages": stages})
    machine.systemctl("daemon-reload")
    assert not machine.exists(DROPIN)
    machine.reset(**BASE, pipeline={"stages": stages})
    assert machine.show("PrivateNetwork")["PrivateNetwork"] == "no"
    machine.submit("net.txt", "192.0.2.1\n")
    assert machine.wait_result("net.txt")[0]["tagged"] == 4
    # Back to the network-less default for whoever uses this machine next.
    machine.configure(**BASE, pipeline={"stages": ["classify"]})
    machine.systemctl("daemon-reload")


def test_the_metrics_endpoint_keeps_the_network_and_answers_outside_the_service(machine: Machine) -> None:
    """[metrics] listen with local stages only: no drop-in, and /metrics answers from outside the unit."""
    settings: dict[str, dict[str, Any]] = {**BASE, "pipeline": {"stages": ["classify"]},
                                           "metrics": {"listen": "127.0.0.1:0"}}
    machine.configure(**settings)
    machine.systemctl("daemon-reload")
    try:
        assert not machine.exists(DROPIN)
        cursor = machine.reset(**settings)
        address = machine.wait_event("metrics.listening", cursor)["listen"]
        python = machine.show("ExecStart")["ExecStart"].split("path=")[1].split(" ;")[0]
        scrape = (f"import urllib.request; print(urllib.request.urlopen('http://{address}/metrics', "
                  f"timeout=10).read().decode())")
        text = machine.run(python, "-c", scrape).stdout
        assert "ipspool_up 1.0" in text and 'ipspool_executor_info{kind="local",scheduler=""} 1.0' in text
    finally:
        machine.configure(**BASE, pipeline={"stages": ["classify"]})
        machine.systemctl("daemon-reload")
