"""The geoip stage on small MaxMind DB files written at test time (issue 6)."""

from __future__ import annotations

import ipaddress
import os
import random
import threading
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from ipspool.config import ConfigError, parse_config
from ipspool.pipeline import load_pipeline
from ipspool.stages import geoip
from ipspool.stages.geoip import GeoipStage, build
from tests.support.geodb import asn_db, country_db, write_db


def ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    return ipaddress.ip_address(text)


def make_stage(**geoip: str) -> GeoipStage:
    return build(parse_config({"geoip": geoip, "pipeline": {"stages": ["geoip"]}}))


@pytest.fixture
def both(tmp_path: Path) -> GeoipStage:
    return make_stage(
        country_db=country_db(tmp_path / "country.mmdb"), asn_db=asn_db(tmp_path / "asn.mmdb")
    )


# --- lookups -----------------------------------------------------------------------


def test_ipv4_address_gets_country_asn_and_org(both: GeoipStage) -> None:
    """An address in both databases gets all three fields."""
    assert both(ip("192.0.2.1")) == {"country": "DE", "asn": 64500, "as_org": "Example Transit"}


def test_ipv6_address_is_looked_up_in_the_ipv6_tree(both: GeoipStage) -> None:
    """IPv6 lookups work, and a 32-bit ASN above 2**31 survives as an int."""
    assert both(ip("2001:db8:1::9")) == {"country": "FR", "asn": 4200000000, "as_org": "Big AS"}


def test_address_in_neither_database_gets_nulls(both: GeoipStage) -> None:
    """Unknown addresses keep the fields, with null values."""
    assert both(ip("198.51.100.1")) == {"country": None, "asn": None, "as_org": None}
    assert both(ip("192.0.2.200")) == {"country": "DE", "asn": None, "as_org": None}


def test_only_the_configured_database_adds_fields(tmp_path: Path) -> None:
    """country_db alone adds country; asn_db alone adds asn and as_org."""
    countries = make_stage(country_db=country_db(tmp_path / "c.mmdb"))
    assert countries(ip("192.0.2.1")) == {"country": "DE"}
    asns = make_stage(asn_db=asn_db(tmp_path / "a.mmdb"))
    assert asns(ip("192.0.2.1")) == {"asn": 64500, "as_org": "Example Transit"}


def test_ipv6_lookup_in_ipv4_only_database_gives_nulls(tmp_path: Path) -> None:
    """An IPv4-only database answers null for IPv6 instead of raising."""
    stage = make_stage(asn_db=asn_db(tmp_path / "a4.mmdb", ip_version=4))
    assert stage(ip("2001:db8:1::9")) == {"asn": None, "as_org": None}
    assert stage(ip("192.0.2.1"))["asn"] == 64500


def test_record_without_iso_code_gives_null_country(tmp_path: Path) -> None:
    """A record lacking country.iso_code (continent only) is a null country."""
    path = write_db(
        tmp_path / "c.mmdb", {"192.0.2.0/24": {"continent": {"code": "EU"}}}, "GeoLite2-Country"
    )
    assert make_stage(country_db=path)(ip("192.0.2.1")) == {"country": None}


def test_stage_runs_inline() -> None:
    """geoip is pure CPU on a mapping: blocking is False."""
    assert GeoipStage.blocking is False


# --- bad databases -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (None, "file not found"),
        (b"", "not a valid MaxMind DB"),
        (b"\x00" * 4096, "not a valid MaxMind DB"),
        ("truncated", "not a valid MaxMind DB"),
    ],
)
def test_missing_or_corrupt_database_is_a_config_error_naming_key_and_path(
    tmp_path: Path, content: bytes | str | None, reason: str
) -> None:
    """A database that cannot be opened fails the build with the key and path."""
    path = tmp_path / "asn.mmdb"
    if content == "truncated":
        whole = Path(asn_db(tmp_path / "good.mmdb")).read_bytes()
        path.write_bytes(whole[: len(whole) // 2])
    elif isinstance(content, bytes):
        path.write_bytes(content)
    with pytest.raises(ConfigError) as raised:
        make_stage(country_db=country_db(tmp_path / "c.mmdb"), asn_db=str(path))
    assert len(raised.value.problems) == 1
    assert raised.value.problems[0].startswith(f"geoip.asn_db: cannot open {path}: {reason}")


def test_no_database_configured_is_a_config_error() -> None:
    """Enabling the stage without any database is a mistake worth stopping on."""
    with pytest.raises(ConfigError, match=r"neither geoip\.country_db nor geoip\.asn_db"):
        make_stage()


def test_load_pipeline_reports_missing_database_with_config_file(tmp_path: Path) -> None:
    """check-config's path names the config file, the stage, the key and the path."""
    missing = str(tmp_path / "GeoLite2-Country.mmdb")
    config = parse_config({"pipeline": {"stages": ["geoip"]}, "geoip": {"country_db": missing}})
    with pytest.raises(ConfigError) as raised:
        load_pipeline(config, "/etc/ipspool.toml")
    assert str(raised.value) == (
        f"/etc/ipspool.toml: pipeline.stages[0] (geoip): geoip.country_db: "
        f"cannot open {missing}: file not found"
    )


# --- reloading -------------------------------------------------------------------------


def test_refresh_picks_up_a_database_replaced_by_rename(tmp_path: Path) -> None:
    """A new file renamed over the database is used after refresh()."""
    path = tmp_path / "country.mmdb"
    stage = make_stage(country_db=country_db(path))
    country_db(path, {"192.0.2.0/24": "NL"})
    assert stage(ip("192.0.2.1")) == {"country": "DE"}
    with capture_logs() as logs:
        stage.refresh()
    assert stage(ip("192.0.2.1")) == {"country": "NL"}
    assert [(e["event"], e["key"], e["reload"]) for e in logs] == [
        ("geoip.loaded", "geoip.country_db", True)
    ]


def test_refresh_without_changes_keeps_the_reader(tmp_path: Path) -> None:
    """An unchanged database is not reopened and nothing is logged."""
    stage = make_stage(country_db=country_db(tmp_path / "c.mmdb"))
    databases = stage._databases
    with capture_logs() as logs:
        stage.refresh()
    assert logs == []
    assert stage._databases is databases


def test_corrupt_replacement_keeps_the_old_database_and_logs_once(tmp_path: Path) -> None:
    """A bad new file is reported once (geoip.reload_failed); lookups go on."""
    path = tmp_path / "country.mmdb"
    stage = make_stage(country_db=country_db(path))
    broken = tmp_path / "broken"
    broken.write_bytes(b"not a database")
    os.replace(broken, path)
    with capture_logs() as logs:
        stage.refresh()
        stage.refresh()
    assert [e["event"] for e in logs] == ["geoip.reload_failed"]
    assert logs[0]["file"] == str(path)
    assert stage(ip("192.0.2.1")) == {"country": "DE"}
    country_db(path, {"192.0.2.0/24": "SE"})
    stage.refresh()
    assert stage(ip("192.0.2.1")) == {"country": "SE"}


def test_lookups_from_threads_never_fail_while_databases_are_swapped(tmp_path: Path) -> None:
    """Swapping readers under concurrent lookups loses no lookup to a closed reader."""
    path = tmp_path / "country.mmdb"
    stage = make_stage(country_db=country_db(path))
    stop = threading.Event()
    bad: list[object] = []

    def look() -> None:
        while not stop.is_set():
            try:
                country = stage(ip("192.0.2.1"))["country"]
            except Exception as exc:
                bad.append(exc)
                continue
            if country not in ("DE", "NL"):
                bad.append(country)

    readers = [threading.Thread(target=look) for _ in range(2)]
    for reader in readers:
        reader.start()
    try:
        for round_number in range(20):
            country_db(path, {"192.0.2.0/24": "NL" if round_number % 2 == 0 else "DE"})
            stage.refresh()
    finally:
        stop.set()
        for reader in readers:
            reader.join()
    assert bad == []
    assert stage(ip("192.0.2.1")) == {"country": "DE"}  # round 19 wrote DE


def test_close_releases_the_readers(tmp_path: Path) -> None:
    """After close() the stage holds no database."""
    stage = make_stage(country_db=country_db(tmp_path / "c.mmdb"))
    stage.close()
    assert stage._databases == (None, None)


# --- readers: maxminddb-rust first, the maxminddb C extension beside it -----------------


def test_maxminddb_rust_is_the_preferred_reader() -> None:
    """With maxminddb-rust installed (the test extra has it) databases are read through it first."""
    assert geoip.READERS == ("maxminddb-rust", "maxminddb")


def test_each_reader_opens_the_file_with_its_own_library(tmp_path: Path) -> None:
    """Asked for by name, each implementation reads the file itself; the default is the first."""
    path = asn_db(tmp_path / "a.mmdb")
    modules = {name: type(geoip.open_reader(path, name)).__module__.split(".")[0] for name in geoip.READERS}
    assert modules == {"maxminddb-rust": "maxminddb_rust", "maxminddb": "maxminddb"}
    assert type(geoip.open_reader(path)).__module__.split(".")[0] == "maxminddb_rust"


def _random_databases(directory: Path, count: int, seed: int) -> tuple[str, str, list[str]]:
    """Country and ASN databases of ``count`` random, partly nested IPv4 and IPv6 networks, and
    addresses at, inside, beside and far from each."""
    rng = random.Random(seed)
    countries: dict[str, dict[str, Any]] = {}
    asns: dict[str, dict[str, Any]] = {}
    probes: list[str] = []
    for n in range(count):
        if rng.random() < 0.7:
            net: ipaddress.IPv4Network | ipaddress.IPv6Network = ipaddress.IPv4Network(
                (rng.getrandbits(32), rng.randint(8, 30)), strict=False)
        else:
            net = ipaddress.IPv6Network(((0x2000 << 112) | rng.getrandbits(120), rng.randint(16, 64)), strict=False)
        countries[str(net)] = {"country": {"iso_code": f"{chr(65 + n % 26)}{chr(65 + n // 26 % 26)}",
                                           "names": {"de": "Ländchen", "en": f"Land {n}"}}}
        if n % 3:
            asns[str(net)] = {"autonomous_system_number": rng.choice((n, 4_200_000_000 + n)),
                              "autonomous_system_organization": f"AS {n} Ünïcode ✓"}
        last = net.broadcast_address
        probes += [str(net.network_address), str(last), str(net.network_address + rng.randrange(net.num_addresses))]
        if int(last) < (1 << net.max_prefixlen) - 1:
            probes.append(str(last + 1))
    probes += [str(ipaddress.IPv4Address(rng.getrandbits(32))) for _ in range(count)]
    probes += [str(ipaddress.IPv6Address(rng.getrandbits(128))) for _ in range(count // 4)]
    country = write_db(directory / "country.mmdb", countries, "GeoLite2-Country")
    return country, write_db(directory / "asn.mmdb", asns, "GeoLite2-ASN"), probes


def test_both_readers_give_the_same_records_and_fields_for_many_addresses(tmp_path: Path) -> None:
    """2,000 random networks, about 9,000 addresses: every raw record and every stage field is the same."""
    country, asn, probes = _random_databases(tmp_path, 2_000, seed=14)
    config = parse_config({"geoip": {"country_db": country, "asn_db": asn}})
    stages = [geoip.build(config, name) for name in geoip.READERS]
    readers = [[geoip.open_reader(path, name) for path in (country, asn)] for name in geoip.READERS]
    found = 0
    for text in probes:
        address = ip(text)
        fields = [stage(address) for stage in stages]
        assert fields[0] == fields[1], text
        records = [[reader.get(address) for reader in pair] for pair in readers]
        assert records[0] == records[1], text
        found += fields[0]["country"] is not None
    assert len(probes) > 8_000 and found > len(probes) // 3  # most probes are in some network


@pytest.mark.parametrize("implementation", ["maxminddb-rust", "maxminddb"])
@pytest.mark.parametrize(("content", "reason"), [(None, "file not found"), (b"\x00" * 4096, "not a valid MaxMind DB")])
def test_a_bad_database_reads_the_same_with_either_reader(
    tmp_path: Path, implementation: str, content: bytes | None, reason: str
) -> None:
    """Whichever reader is asked for, a missing or corrupt file is the same ConfigError."""
    path = tmp_path / "asn.mmdb"
    if content is not None:
        path.write_bytes(content)
    config = parse_config({"geoip": {"asn_db": str(path)}})
    with pytest.raises(ConfigError) as raised:
        geoip.build(config, implementation)
    [problem] = raised.value.problems
    assert problem.startswith(f"geoip.asn_db: cannot open {path}: {reason}")


def test_a_reload_keeps_the_reader_asked_for(tmp_path: Path) -> None:
    """A database replaced by rename is read again with the same implementation."""
    path = asn_db(tmp_path / "a.mmdb")
    stage = geoip.build(parse_config({"geoip": {"asn_db": path}}), "maxminddb")
    write_db(Path(path), {"192.0.2.0/24": {"autonomous_system_number": 7, "autonomous_system_organization": "New"}},
             "GeoLite2-ASN")
    stage.refresh()
    assert stage(ip("192.0.2.1")) == {"asn": 7, "as_org": "New"}
    assert type(stage._databases[1].reader).__module__.split(".")[0] == "maxminddb"  # type: ignore[union-attr]
