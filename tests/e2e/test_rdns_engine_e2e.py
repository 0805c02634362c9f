"""The rdns engine inside the real daemon: a file of unique addresses against a slow
nameserver on loopback, every answer checked, and the shared cache across a restart."""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Callable
from typing import Any

from tests.support.daemon import Daemon, wait_for
from tests.support.slow_dns import SlowDns, expected_ptr


def unique_addresses(count: int) -> list[str]:
    start = int(ipaddress.IPv4Address("11.0.0.1"))
    return [str(ipaddress.IPv4Address(start + 7919 * i)) for i in range(count)]


def check(records: list[dict[str, Any]], ips: list[str]) -> None:
    assert [r["ip"] for r in records] == ips
    wrong = [r for r in records if r["rdns"] != "ok" or r["ptr"] != expected_ptr(r["ip"])]
    assert wrong == []


def worker_rows(d: Daemon) -> list[dict[str, Any]]:
    out = d.ipspool("status", "--config", str(d.config_path), "--json")
    return list(json.loads(out.stdout)["workers"].values()) if out.returncode == 0 else []


def test_unique_addresses_resolve_in_order_and_the_cache_survives_a_restart(
    make_daemon: Callable[..., Daemon],
) -> None:
    """3,001 addresses, 10 ms a query: every PTR right, in order; after a restart, no query at all."""
    ips = [*unique_addresses(3000), "2001:db8::77"]
    with SlowDns(delay=0.01) as server:
        d = make_daemon()
        d.write_config(pipeline={"stages": ["classify", "rdns"]}, rdns={"nameservers": [server.nameserver]},
                       workers={"threads": 16})
        d.start()
        d.drop("first.txt", "".join(ip + "\n" for ip in ips))
        check(d.wait_result("first.txt", timeout=120), ips)
        done = d.wait_event("file.done", where=lambda e: e["file"] == "first.txt")
        assert done["rdns_lookups"] == len(ips) and done["rdns_cache_hits"] == 0
        assert server.count == len(ips)
        # Workers publish their rows a few times a second: wait until the last counts are in.
        wait_for(lambda: sum(r.get("rdns_lookups", 0) for r in worker_rows(d)) >= len(ips), 30,
                 what="rdns counts in status")
        assert sum(r.get("rdns_lookups", 0) for r in worker_rows(d)) == len(ips)
        assert d.stop() == 0

        d.start()
        d.drop("again.txt", "".join(ip + "\n" for ip in ips))
        check(d.wait_result("again.txt", timeout=120), ips)
        done = d.wait_event("file.done", where=lambda e: e["file"] == "again.txt")
        assert done["rdns_lookups"] == 0 and done["rdns_cache_hits"] == len(ips)
        assert server.count == len(ips)
        assert (d.spool / ".state" / "rdns-cache.sqlite").exists()
        assert d.stop() == 0
