"""The enrichment stages inside the real daemon: lists, geoip and rdns together."""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.daemon import Daemon, wait_for
from tests.support.dns_server import DNSMASQ_MISSING, Dnsmasq, dnsmasq_binary
from tests.support.geodb import asn_db, country_db


@pytest.fixture
def dns(tmp_path: Path) -> Iterator[Dnsmasq]:
    if dnsmasq_binary() is None:
        pytest.skip(DNSMASQ_MISSING)
    records = ["ptr-record=1.2.0.192.in-addr.arpa,gw.example.test", "host-record=gw.example.test,192.0.2.1"]
    (tmp_path / "dns").mkdir()
    with Dnsmasq(tmp_path / "dns", records) as server:
        yield server


def test_all_stages_enrich_records_and_alert(make_daemon: Callable[..., Daemon], dns: Dnsmasq) -> None:
    """classify+lists+geoip+rdns in the daemon: fields present, listed addresses alert once per limit."""
    d = make_daemon()
    lists = d.root / "drop.txt"
    lists.write_text("192.0.2.0/24 ; SBL1\n")
    d.write_config(
        pipeline={"stages": ["classify", "lists", "geoip", "rdns"]},
        lists=[{"name": "drop", "path": str(lists), "alert": True}],
        geoip={"country_db": country_db(d.root / "c.mmdb"), "asn_db": asn_db(d.root / "a.mmdb")},
        rdns={"nameservers": [dns.nameserver], "timeout": 1.0, "retries": 0},
        alerts={"listed_per_file": 2},
    )
    d.start()
    d.drop("in.txt", "192.0.2.1\n192.0.2.2\n192.0.2.3\n8.8.4.4\n")
    records = d.wait_result("in.txt")
    first = records[0]
    assert first["lists"] == ["drop"] and first["country"] == "DE" and first["asn"] == 64500
    assert first["ptr"] == "gw.example.test" and first["rdns"] == "ok"
    assert records[1]["rdns"] == "nxdomain" and records[1]["ptr"] is None
    assert records[3]["lists"] == [] and records[3]["country"] is None
    suppressed = d.wait_event("ip.listed.suppressed")
    assert suppressed["suppressed"] == 1 and suppressed["level"] == "warning"
    listed = d.events("ip.listed")
    expected = [("192.0.2.1", 1, ["drop"]), ("192.0.2.2", 2, ["drop"])]
    assert [(e["ip"], e["line"], e["lists"]) for e in listed] == expected
    assert d.stop() == 0


def test_list_change_is_picked_up_on_hup_without_restarting_workers(make_daemon: Callable[..., Daemon]) -> None:
    """Editing a list file and sending HUP changes matches while the same worker processes keep running."""
    d = make_daemon()
    lists = d.root / "customers.txt"
    lists.write_text("10.0.0.0/8\n")
    d.write_config(pipeline={"stages": ["classify", "lists"]},
                   lists=[{"name": "customers", "path": str(lists), "alert": False}])
    d.start()
    d.drop("before.txt", "10.1.1.1\n172.16.0.1\n")
    assert [r["lists"] for r in d.wait_result("before.txt")] == [["customers"], []]
    workers = sorted(d.worker_pids())
    replacement = d.root / "customers.new"
    replacement.write_text("10.0.0.0/8\n172.16.0.0/12\n")
    replacement.rename(lists)
    d.signal(signal.SIGHUP)
    reloaded = d.wait_event("config.reloaded")
    assert reloaded["mode"] == "refresh"
    wait_for(lambda: len([e for e in d.events("list.loaded") if e.get("list") == "customers"]) >= 4,
             what="both workers reloading the list")
    d.drop("after.txt", "10.1.1.1\n172.16.0.1\n")
    assert [r["lists"] for r in d.wait_result("after.txt")] == [["customers"], ["customers"]]
    assert sorted(d.worker_pids()) == workers
    assert d.stop() == 0
