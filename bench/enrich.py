"""Data for the enrichment workloads: unique addresses, a CIDR list, MaxMind DBs, checks.

The rdns and enrichment workloads of ``bench.run`` (and the IntelMQ runner,
and ``bench.geoip_readers``) use:

- files of unique global IPv4 addresses, a new set for every run of every
  system, so every lookup is cold (``bench.rdns.unique_addresses``);
- a CIDR list of random IPv4 prefixes for the ``lists`` stage;
- a City-type and an ASN MaxMind DB of ``networks`` non-overlapping IPv4
  networks covering about 80% of the IPv4 space (written with ``tests.support.geodb.write_db``; the City type is
  what IntelMQ's MaxMind expert asks for, and the ``geoip`` stage reads its
  ``country.iso_code``). Writing a large one takes minutes, so they are kept
  in ``build/bench-data/`` (never committed) and reused.

The delaying nameserver is ``bench.rdns.nameserver``.
"""

from __future__ import annotations

import ipaddress
import json
import random
from pathlib import Path
from typing import Any

import orjson

from bench.rdns import expected, unique_addresses

__all__ = ["DATA", "check_enriched", "config_json", "countries", "geo_dbs", "lists_file", "pipeline_config",
           "unique_file"]

DATA = Path(__file__).resolve().parent.parent / "build" / "bench-data"
COUNTRIES = ("DE", "FR", "US", "CN", "BR", "IN", "RU", "JP", "GB", "NL", "SE", "PL", "IT", "ES", "CA",
             "AU", "KR", "VN", "ZA", "NG", "AR", "MX", "TR", "UA", "ID", "IR", "EG", "SG", "HK", "CH")
RECORDS = 1000  # distinct records in each database (cities, AS organisations)


def unique_file(path: Path, count: int, seed: int) -> list[str]:
    """Write ``count`` unique global IPv4 addresses, one a line; the addresses."""
    ips = unique_addresses(count, seed)
    path.write_text("".join(ip + "\n" for ip in ips))
    return ips


def lists_file(path: Path, prefixes: int, seed: int = 14) -> Path:
    """A plain list of ``prefixes`` random IPv4 prefixes (/12 to /24)."""
    rng = random.Random(seed)
    lines = []
    for _ in range(prefixes):
        length = rng.randint(12, 24)
        network = ipaddress.IPv4Network((rng.getrandbits(32) >> (32 - length) << (32 - length), length))
        lines.append(f"{network}\n")
    path.write_text("".join(lines))
    return path


def _networks(count: int, seed: int) -> dict[int, list[str]]:
    """``count`` non-overlapping IPv4 networks spread over the address space, grouped by record number."""
    rng = random.Random(seed)
    slot_bits = 32 - max(0, (count - 1).bit_length())  # each network lies inside its own slot
    groups: dict[int, list[str]] = {}
    for slot in range(count):
        # Most slots are one network; the others a smaller one at the slot's start, leaving a gap.
        length = 32 - slot_bits if rng.random() < 0.75 else min(32, 32 - slot_bits + rng.randint(1, 6))
        start = slot << slot_bits
        groups.setdefault(rng.randrange(RECORDS), []).append(f"{ipaddress.IPv4Address(start)}/{length}")
    return groups


def _city(number: int) -> dict[str, Any]:
    rng = random.Random(number)
    return {"country": {"iso_code": COUNTRIES[number % len(COUNTRIES)]},
            "city": {"names": {"en": f"City {number}"}},
            "location": {"latitude": round(rng.uniform(-60, 70), 4), "longitude": round(rng.uniform(-180, 180), 4)}}


def _asn(number: int) -> dict[str, Any]:
    return {"autonomous_system_number": 64512 + number, "autonomous_system_organization": f"Example AS {number}"}


def geo_dbs(networks: int, seed: int = 14, directory: Path = DATA) -> tuple[Path, Path]:
    """The City-type and ASN databases of ``networks`` networks, written once and kept."""
    from mmdb_writer import MMDBWriter
    from netaddr import IPNetwork, IPSet

    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for kind, record in (("GeoLite2-City", _city), ("GeoLite2-ASN", _asn)):
        path = directory / f"{kind}-{networks}-{seed}-v2.mmdb"
        paths.append(path)
        if path.exists():
            continue
        writer = MMDBWriter(ip_version=6, database_type=kind, ipv4_compatible=True)
        for number, nets in sorted(_networks(networks, seed).items()):
            writer.insert_network(IPSet(IPNetwork(net) for net in nets), record(number))
        fresh = path.with_name(path.name + ".tmp")
        writer.to_db_file(str(fresh))
        fresh.replace(path)
    return paths[0], paths[1]


def pipeline_config(nameserver: str, cache_dir: Path | None = None, lists: Path | None = None,
                    dbs: tuple[Path, Path] | None = None) -> dict[str, Any]:
    """Config sections for the stages: ``[rdns] nameservers`` (and for the baselines, which have no
    spool, the directory of the rdns disk cache), ``[[lists]]``, ``[geoip]``."""
    rdns: dict[str, Any] = {"nameservers": [nameserver]}
    if cache_dir is not None:
        rdns["cache_dir"] = str(cache_dir)
    sections: dict[str, Any] = {"rdns": rdns}
    if lists is not None:
        sections["lists"] = [{"name": "bench", "path": str(lists)}]
    if dbs is not None:
        sections["geoip"] = {"country_db": str(dbs[0]), "asn_db": str(dbs[1])}
    return sections


def config_json(sections: dict[str, Any]) -> str:
    return json.dumps(sections, sort_keys=True)


def countries(city_db: Path, ips: list[str]) -> dict[str, str | None]:
    """The country code the City database holds for each address (None: not in it)."""
    import maxminddb

    with maxminddb.open_database(str(city_db)) as reader:
        found = {ip: reader.get(ip) for ip in ips}
    return {ip: r["country"]["iso_code"] if isinstance(r, dict) else None for ip, r in found.items()}


def check_enriched(result: Path, ips: list[str], dbs: tuple[Path, Path] | None) -> None:
    """Every address has its record, in order, with its own PTR name (and its country and the list
    and AS fields, with ``dbs``); else RuntimeError."""
    records = [orjson.loads(line) for line in result.read_bytes().splitlines()]
    if len(records) != len(ips):
        raise RuntimeError(f"{result.name}: {len(records)} records for {len(ips)} addresses")
    country = countries(dbs[0], ips) if dbs is not None else {}
    for record, ip in zip(records, ips, strict=True):
        if record.get("ip") != ip or record.get("rdns") != "ok" or record.get("ptr") != expected(ip):
            raise RuntimeError(f"{result.name}: wrong record for {ip}: {record}")
        if dbs is not None and (record.get("country", "-") != country[ip] or not {"asn", "lists"} <= record.keys()):
            raise RuntimeError(f"{result.name}: wrong geoip or lists fields for {ip}: {record}")
