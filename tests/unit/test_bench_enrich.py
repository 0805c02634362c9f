"""The enrichment benchmark's own checks refuse wrong answers (bench/enrich.py, bench/intelmq.py).

A fast wrong answer is no result: these are what make ``bench.run`` fail on
a record without its own PTR name or with another country than the
database holds, for ipspool and the baselines as for IntelMQ's events.
"""

from __future__ import annotations

import ipaddress
import itertools
import json
from pathlib import Path

import orjson
import pytest

from bench.enrich import _networks, check_enriched, countries, geo_dbs, pipeline_config, unique_file
from bench.intelmq import IntelmqPipeline, check_events
from bench.rdns import expected


@pytest.fixture(scope="module")
def dbs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return geo_dbs(256, directory=tmp_path_factory.mktemp("geo"))


def records(ips: list[str], country: dict[str, str | None]) -> list[dict[str, object]]:
    return [{"line": n, "ip": ip, "rdns": "ok", "ptr": expected(ip), "country": country[ip], "asn": None,
             "lists": []} for n, ip in enumerate(ips, 1)]


def write(path: Path, rows: list[dict[str, object]]) -> Path:
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))
    return path


def test_networks_do_not_overlap_and_cover_most_of_the_space() -> None:
    nets = sorted((ipaddress.IPv4Network(n) for group in _networks(4096, 1).values() for n in group),
                  key=lambda n: int(n.network_address))
    assert len(nets) == 4096
    assert all(a.broadcast_address < b.network_address for a, b in itertools.pairwise(nets))
    assert sum(n.num_addresses for n in nets) > 0.7 * 2**32


def test_right_records_pass_and_each_kind_of_wrong_one_fails(tmp_path: Path, dbs: tuple[Path, Path]) -> None:
    ips = unique_file(tmp_path / "in.txt", 300, seed=3)
    country = countries(dbs[0], ips)
    assert any(country.values()) and not all(country.values())  # some addresses in, some out
    good = records(ips, country)
    check_enriched(write(tmp_path / "good.jsonl", good), ips, dbs)
    inside = next(i for i, ip in enumerate(ips) if country[ip])
    wrongs = {
        "ptr": [*good[:inside], {**good[inside], "ptr": "evil.example.test"}, *good[inside + 1:]],
        "country": [*good[:inside], {**good[inside], "country": "ZZ"}, *good[inside + 1:]],
        "missing": good[:-1],
        "order": [good[1], good[0], *good[2:]],
        "status": [*good[:inside], {**good[inside], "rdns": "timeout"}, *good[inside + 1:]],
    }
    for name, rows in wrongs.items():
        with pytest.raises(RuntimeError):
            check_enriched(write(tmp_path / f"{name}.jsonl", rows), ips, dbs)


def test_intelmq_events_are_checked_alike(tmp_path: Path, dbs: tuple[Path, Path]) -> None:
    ips = unique_file(tmp_path / "in.txt", 100, seed=4)
    country = countries(dbs[0], ips)

    def event(ip: str) -> dict[str, str]:
        fields = {"source.ip": ip, "source.reverse_dns": expected(ip)}
        if country[ip]:
            fields["source.geolocation.cc"] = str(country[ip])
        return fields

    events = [event(ip) for ip in reversed(ips)]  # order is not part of IntelMQ's promise
    check_events(b"".join(json.dumps(e).encode() + b"\n" for e in events), ips, dbs[0])
    events[0]["source.reverse_dns"] = "wrong.example.test"
    with pytest.raises(RuntimeError, match="wrong reverse DNS"):
        check_events(b"".join(json.dumps(e).encode() + b"\n" for e in events), ips, dbs[0])
    with pytest.raises(RuntimeError, match="events for"):
        check_events(b"".join(json.dumps(e).encode() + b"\n" for e in events[1:]), ips, dbs[0])


def test_intelmq_bots_are_chained_collector_to_output(tmp_path: Path) -> None:
    runtime = IntelmqPipeline(tmp_path, 6399, "127.0.0.1:5353", tmp_path / "city.mmdb").runtime()
    chain = ["collector"]
    while "destination_queues" in runtime[chain[-1]]["parameters"]:
        [queue] = runtime[chain[-1]]["parameters"]["destination_queues"]["_default"]
        chain.append(queue.removesuffix("-queue"))
    assert chain == list(IntelmqPipeline.BOTS)
    assert runtime["rdns"]["parameters"]["redis_cache_port"] == runtime["global"]["source_pipeline_port"] == 6399
    assert runtime["geoip"]["parameters"]["database"] == str(tmp_path / "city.mmdb")


def test_pipeline_config_names_the_nameserver_list_and_databases(tmp_path: Path) -> None:
    sections = pipeline_config("127.0.0.1:5353", tmp_path, tmp_path / "l.txt", (tmp_path / "c", tmp_path / "a"))
    assert sections["rdns"] == {"nameservers": ["127.0.0.1:5353"], "cache_dir": str(tmp_path)}
    assert sections["lists"] == [{"name": "bench", "path": str(tmp_path / "l.txt")}]
    assert sections["geoip"] == {"country_db": str(tmp_path / "c"), "asn_db": str(tmp_path / "a")}
    assert "cache_dir" not in pipeline_config("127.0.0.1:53")["rdns"]
