"""Small MaxMind DB files written at test time, for the geoip stage and the daemon."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from mmdb_writer import MMDBWriter
from netaddr import IPSet

__all__ = ["ASNS", "COUNTRIES", "asn_db", "country_db", "write_db"]

COUNTRIES = {"192.0.2.0/24": "DE", "2001:db8::/32": "FR"}
ASNS = {"192.0.2.0/25": (64500, "Example Transit"), "2001:db8:1::/48": (4200000000, "Big AS")}


def write_db(
    path: Path, records: dict[str, dict[str, Any]], kind: str, ip_version: int = 6
) -> str:
    """An MMDB mapping each network to its record, written through a rename."""
    writer = MMDBWriter(
        ip_version=ip_version, database_type=kind, ipv4_compatible=ip_version == 6
    )
    for network, record in records.items():
        writer.insert_network(IPSet([network]), record)
    fresh = path.with_name(path.name + ".tmp")
    writer.to_db_file(str(fresh))
    os.replace(fresh, path)  # as geoipupdate does: a new inode, never a rewrite
    return str(path)


def country_db(path: Path, countries: dict[str, str] = COUNTRIES) -> str:
    records = {net: {"country": {"iso_code": code}} for net, code in countries.items()}
    return write_db(path, records, "GeoLite2-Country")


def asn_db(path: Path, ip_version: int = 6) -> str:
    records = {
        net: {"autonomous_system_number": number, "autonomous_system_organization": org}
        for net, (number, org) in ASNS.items()
        if ip_version == 6 or ":" not in net
    }
    return write_db(path, records, "GeoLite2-ASN", ip_version)
