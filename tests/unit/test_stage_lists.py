"""The lists stage: formats, nesting, bad lines and reloading (issue 6)."""

from __future__ import annotations

import ipaddress
import os
import random
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from ipspool.config import ConfigError, parse_config
from ipspool.pipeline import load_pipeline
from ipspool.stages.lists import (
    MAX_INVALID_LOGGED,
    ListsStage,
    build,
    build_table,
    parse_list,
)


def ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    return ipaddress.ip_address(text)


def write(path: Path, *lines: str) -> str:
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def make_stage(*lists: dict[str, Any]) -> ListsStage:
    return build(parse_config({"lists": list(lists), "pipeline": {"stages": ["lists"]}}))


def names(stage: ListsStage, address: str) -> list[str]:
    result: list[str] = stage(ip(address))["lists"]
    return result


def replace(path: Path, *lines: str) -> None:
    """Write a new version beside the file and rename it over, as cron jobs do."""
    fresh = path.with_name(path.name + ".new")
    write(fresh, *lines)
    os.replace(fresh, path)


# --- formats ---------------------------------------------------------------------


def test_spamhaus_drop_text_format_with_semicolon_comments(tmp_path: Path) -> None:
    """Spamhaus DROP/EDROP lines "CIDR ; SBL" and ";" header lines are read."""
    path = write(
        tmp_path / "drop.txt",
        "; Spamhaus DROP List 2024/01/01 - (c) 2024 The Spamhaus Project",
        "; Last-Modified: Mon, 01 Jan 2024 00:00:00 GMT",
        "1.10.16.0/20 ; SBL256894",
        "2.56.192.0/22 ; SBL459831",
    )
    stage = make_stage({"name": "drop", "path": path})
    assert names(stage, "1.10.20.1") == ["drop"]
    assert names(stage, "2.56.195.255") == ["drop"]
    assert names(stage, "2.56.196.0") == []


def test_spamhaus_json_lines_format(tmp_path: Path) -> None:
    """Spamhaus's JSON DROP lines give their "cidr"; the metadata line is skipped."""
    path = write(
        tmp_path / "drop_v4.json",
        '{"cidr":"1.10.16.0/20","sblid":"SBL256894","rir":"apnic"}',
        '{"cidr":"2001:db8:100::/40","sblid":"SBL1","rir":"ripencc"}',
        '{"type":"metadata","timestamp":1700000000,"size":2,"records":2}',
    )
    stage = make_stage({"name": "drop", "path": path})
    assert names(stage, "1.10.31.255") == ["drop"]
    assert names(stage, "2001:db8:1ff::1") == ["drop"]


def test_firehol_netset_with_hash_comments(tmp_path: Path) -> None:
    """FireHOL netsets: "#" header blocks, one address or CIDR a line."""
    path = write(
        tmp_path / "firehol_level1.netset",
        "#",
        "# firehol_level1",
        "# ipv4 hash:net ipset",
        "#",
        "0.0.0.0/8",
        "5.188.10.0/23",
        "31.13.195.52",
    )
    stage = make_stage({"name": "firehol", "path": path})
    assert names(stage, "0.1.2.3") == ["firehol"]
    assert names(stage, "5.188.11.200") == ["firehol"]
    assert names(stage, "31.13.195.52") == ["firehol"]
    assert names(stage, "31.13.195.53") == []


def test_plain_list_with_mixed_versions_ranges_and_trailing_comments(tmp_path: Path) -> None:
    """Plain lists mix IPv4, IPv6, "a-b" ranges, blank lines and trailing comments."""
    path = write(
        tmp_path / "plain.txt",
        "\ufeff192.0.2.1",
        "",
        "   2001:db8::1   # a honeypot hit",
        "198.51.100.10-198.51.100.20",
        "203.0.113.0/24\r",
        "2001:db8:aa::/48",
    )
    stage = make_stage({"name": "plain", "path": path})
    for listed in ("192.0.2.1", "2001:db8::1", "198.51.100.15", "203.0.113.9", "2001:db8:aa::5"):
        assert names(stage, listed) == ["plain"], listed
    for unlisted in ("192.0.2.2", "2001:db8::2", "198.51.100.21", "2001:db8:ab::"):
        assert names(stage, unlisted) == [], unlisted


def test_ipv4_and_ipv6_tables_are_separate(tmp_path: Path) -> None:
    """::/0 lists all of IPv6 but no IPv4 address, and 0.0.0.0/0 the reverse."""
    six = write(tmp_path / "six", "::/0")
    four = write(tmp_path / "four", "0.0.0.0/0")
    stage = make_stage({"name": "six", "path": six}, {"name": "four", "path": four})
    assert names(stage, "0.0.0.1") == ["four"]
    assert names(stage, "::1") == ["six"]
    assert names(stage, "::ffff:1.2.3.4") == ["six"]


def test_host_bits_mean_the_enclosing_network(tmp_path: Path) -> None:
    """"10.1.2.3/8" lists 10.0.0.0/8, as ipset reads it."""
    stage = make_stage({"name": "loose", "path": write(tmp_path / "l", "10.1.2.3/8")})
    assert names(stage, "10.255.0.1") == ["loose"]


def test_boundaries_of_edge_prefixes(tmp_path: Path) -> None:
    """The very first and last addresses of each version are matched exactly."""
    path = write(tmp_path / "edges", "0.0.0.0/32", "255.255.255.255", "::/128", "ffff::/16")
    stage = make_stage({"name": "edges", "path": path})
    assert names(stage, "0.0.0.0") == ["edges"]
    assert names(stage, "0.0.0.1") == []
    assert names(stage, "255.255.255.254") == []
    assert names(stage, "255.255.255.255") == ["edges"]
    assert names(stage, "::") == ["edges"]
    assert names(stage, "::1") == []
    assert names(stage, "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff") == ["edges"]


# --- several lists ---------------------------------------------------------------


def test_nested_and_overlapping_prefixes_report_every_list(tmp_path: Path) -> None:
    """An address inside nested and overlapping entries names each list once, sorted."""
    wide = write(tmp_path / "wide", "10.0.0.0/8", "10.1.0.0/16")  # nested inside itself
    mid = write(tmp_path / "mid", "10.1.0.0/16")
    narrow = write(tmp_path / "narrow", "10.1.2.3", "10.1.2.0/24")
    other = write(tmp_path / "other", "10.1.2.128-10.2.0.0")  # overlaps mid's edge
    stage = make_stage(
        {"name": "wide", "path": wide},
        {"name": "mid", "path": mid},
        {"name": "narrow", "path": narrow},
        {"name": "other", "path": other},
    )
    assert names(stage, "10.1.2.3") == ["mid", "narrow", "wide"]
    assert names(stage, "10.1.2.200") == ["mid", "narrow", "other", "wide"]
    assert names(stage, "10.1.255.255") == ["mid", "other", "wide"]
    assert names(stage, "10.2.0.0") == ["other", "wide"]
    assert names(stage, "10.2.0.1") == ["wide"]
    assert names(stage, "11.0.0.0") == []


def test_random_lists_agree_with_ipaddress_membership(tmp_path: Path) -> None:
    """On random overlapping lists the table agrees with a naive containment scan."""
    rng = random.Random(6)
    networks: dict[str, list[ipaddress.IPv4Network | ipaddress.IPv6Network]] = {}
    entries = []
    for index in range(5):
        chosen: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
        for _ in range(200):
            if rng.random() < 0.3:
                value, length = 0x20010DB8 << 96 | rng.getrandbits(96), rng.randint(32, 128)
                chosen.append(ipaddress.IPv6Network((value, length), strict=False))
            else:
                value, length = 10 << 24 | rng.getrandbits(24), rng.randint(8, 32)
                chosen.append(ipaddress.IPv4Network((value, length), strict=False))
        networks[f"l{index}"] = chosen
        path = write(tmp_path / f"l{index}", *(str(network) for network in chosen))
        entries.append({"name": f"l{index}", "path": path})
    stage = make_stage(*entries)
    probes: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = []
    for chosen in networks.values():
        for network in chosen[:40]:
            probes += [network.network_address, network.broadcast_address]
            probes += [network.network_address - 1, network.broadcast_address + 1]
    probes += [ipaddress.IPv4Address(10 << 24 | rng.getrandbits(24)) for _ in range(500)]
    for address in probes:
        expected = sorted(
            name
            for name, chosen in networks.items()
            if any(address in network for network in chosen if network.version == address.version)
        )
        assert stage(address)["lists"] == expected, address


def test_build_table_merges_equal_neighbours() -> None:
    """Adjacent intervals with the same lists collapse into one table entry."""
    table = build_table(32, [("a", [(0, 9), (10, 19)]), ("b", [(5, 14)])])
    assert table.starts == (0, 5, 15, 20)
    assert table.names == (("a",), ("a", "b"), ("a",), ())


def test_no_lists_configured_gives_an_empty_list_field() -> None:
    """With no [[lists]] the stage still answers, with an empty list."""
    assert make_stage()(ip("192.0.2.1")) == {"lists": []}


def test_alert_lists_names_the_lists_marked_alert(tmp_path: Path) -> None:
    """alert_lists holds exactly the names with alert = true."""
    path = write(tmp_path / "l", "192.0.2.0/24")
    stage = make_stage(
        {"name": "page", "path": path, "alert": True},
        {"name": "quiet", "path": path},
    )
    assert stage.alert_lists == frozenset({"page"})


def test_returned_list_is_a_fresh_copy(tmp_path: Path) -> None:
    """Changing one record's list does not change the next record's."""
    stage = make_stage({"name": "l", "path": write(tmp_path / "l", "192.0.2.0/24")})
    names(stage, "192.0.2.1").append("tampered")
    assert names(stage, "192.0.2.1") == ["l"]


# --- bad lines and bad files -----------------------------------------------------


def test_invalid_lines_are_logged_and_skipped_without_sinking_the_list(tmp_path: Path) -> None:
    """Each bad line is a list.invalid_line warning with list, file and line number."""
    path = write(
        tmp_path / "messy.txt",
        "192.0.2.1",
        "not-an-address",
        "192.0.2.0/33",
        "010.1.1.1",
        "192.0.2.9 192.0.2.10",
        "198.51.100.0/24",
        "10.0.0.9-10.0.0.1",
        '{"sblid": "SBL1"}',
        "1.2.3.4-::1",
    )
    with capture_logs() as logs:
        stage = make_stage({"name": "messy", "path": path})
    invalid = [event for event in logs if event["event"] == "list.invalid_line"]
    assert [event["line"] for event in invalid] == [2, 3, 4, 5, 7, 8, 9]
    assert all(event["list"] == "messy" and event["file"] == path for event in invalid)
    assert all(event["log_level"] == "warning" and event["reason"] for event in invalid)
    assert invalid[0]["text"] == "not-an-address"
    loaded = [event for event in logs if event["event"] == "list.loaded"]
    assert loaded[0]["ipv4_entries"] == 2
    assert loaded[0]["invalid_lines"] == 7
    assert names(stage, "192.0.2.1") == ["messy"]
    assert names(stage, "198.51.100.77") == ["messy"]


def test_flood_of_invalid_lines_is_summarised(tmp_path: Path) -> None:
    """A file of garbage logs a bounded number of warnings, then a count."""
    path = write(tmp_path / "page.html", *(["<html>"] * (MAX_INVALID_LOGGED + 100)))
    with capture_logs() as logs:
        make_stage({"name": "oops", "path": path})
    events = [event["event"] for event in logs]
    assert events.count("list.invalid_line") == MAX_INVALID_LOGGED
    assert events.count("list.invalid_lines_suppressed") == 1
    summary = next(e for e in logs if e["event"] == "list.invalid_lines_suppressed")
    assert summary["count"] == 100


def test_parse_list_reports_line_numbers_and_reasons() -> None:
    """parse_list returns entries and each invalid line with its number and reason."""
    parsed = parse_list(["# comment", "192.0.2.1", "; note", "nope", "2001:db8::/129"])
    assert parsed.v4 == ((0xC0000201, 0xC0000201),)
    assert [(bad.line, bad.text) for bad in parsed.invalid] == [
        (4, "nope"),
        (5, "2001:db8::/129"),
    ]
    assert "prefix length must be 0 to 128" in parsed.invalid[1].reason


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda tmp: tmp / "missing.txt", "file not found"),
        (lambda tmp: tmp, "is a directory, expected a file"),
        (lambda tmp: _fifo(tmp / "fifo"), "not a regular file"),
    ],
)
def test_unreadable_list_is_a_config_error_naming_key_and_file(
    tmp_path: Path, make: Any, reason: str
) -> None:
    """A list that cannot be read fails the build with lists[i].path and the file."""
    bad = str(make(tmp_path))
    good = write(tmp_path / "good", "192.0.2.1")
    config = parse_config(
        {"lists": [{"name": "good", "path": good}, {"name": "bad", "path": bad}]}
    )
    with pytest.raises(ConfigError) as raised:
        build(config)
    assert raised.value.problems == (f"lists[1].path: cannot read {bad}: {reason}",)


def _fifo(path: Path) -> Path:
    os.mkfifo(path)
    return path


def test_duplicate_list_names_are_a_config_error(tmp_path: Path) -> None:
    """Two [[lists]] with one name would be indistinguishable in records."""
    path = write(tmp_path / "l", "192.0.2.1")
    config = parse_config({"lists": [{"name": "x", "path": path}, {"name": "x", "path": path}]})
    with pytest.raises(ConfigError, match=r"lists\[1\].name: 'x' is already used by lists\[0\]"):
        build(config)


def test_load_pipeline_reports_missing_list_with_config_file(tmp_path: Path) -> None:
    """check-config's path names the config file, the stage and the list key."""
    missing = str(tmp_path / "gone.txt")
    config = parse_config(
        {"pipeline": {"stages": ["lists"]}, "lists": [{"name": "gone", "path": missing}]}
    )
    with pytest.raises(ConfigError) as raised:
        load_pipeline(config, "/etc/ipspool.toml")
    assert str(raised.value) == (
        f"/etc/ipspool.toml: pipeline.stages[0] (lists): lists[0].path: "
        f"cannot read {missing}: file not found"
    )


# --- reloading -------------------------------------------------------------------


def test_refresh_picks_up_a_list_replaced_by_rename(tmp_path: Path) -> None:
    """A list renamed over (new inode) is reloaded by refresh()."""
    path = tmp_path / "l"
    write(path, "192.0.2.1")
    stage = make_stage({"name": "l", "path": str(path)})
    replace(path, "198.51.100.1")
    assert names(stage, "192.0.2.1") == ["l"]  # nothing changes before refresh()
    with capture_logs() as logs:
        stage.refresh()
    assert names(stage, "192.0.2.1") == []
    assert names(stage, "198.51.100.1") == ["l"]
    assert [(e["event"], e["reload"]) for e in logs] == [("list.loaded", True)]


def test_refresh_picks_up_a_list_rewritten_in_place(tmp_path: Path) -> None:
    """An in-place rewrite that changes the size is noticed too."""
    path = tmp_path / "l"
    write(path, "192.0.2.1")
    stage = make_stage({"name": "l", "path": str(path)})
    write(path, "192.0.2.1", "192.0.2.2")
    stage.refresh()
    assert names(stage, "192.0.2.2") == ["l"]


def test_refresh_without_changes_reloads_nothing(tmp_path: Path) -> None:
    """An unchanged file is not read again and nothing is logged."""
    stage = make_stage({"name": "l", "path": write(tmp_path / "l", "192.0.2.1")})
    tables = stage._tables
    with capture_logs() as logs:
        stage.refresh()
    assert logs == []
    assert stage._tables is tables


def test_refresh_reloads_only_the_changed_list(tmp_path: Path) -> None:
    """Other lists keep their entries when one of them is replaced."""
    first, second = tmp_path / "a", tmp_path / "b"
    write(first, "192.0.2.0/24")
    write(second, "192.0.2.0/25")
    stage = make_stage({"name": "a", "path": str(first)}, {"name": "b", "path": str(second)})
    replace(second, "192.0.2.128/25")
    with capture_logs() as logs:
        stage.refresh()
    assert [e["list"] for e in logs if e["event"] == "list.loaded"] == ["b"]
    assert names(stage, "192.0.2.1") == ["a"]
    assert names(stage, "192.0.2.200") == ["a", "b"]


def test_vanished_list_keeps_old_entries_and_logs_once(tmp_path: Path) -> None:
    """A deleted list file keeps the loaded entries; one list.reload_failed, then quiet."""
    path = tmp_path / "l"
    write(path, "192.0.2.1")
    stage = make_stage({"name": "l", "path": str(path)})
    path.unlink()
    with capture_logs() as logs:
        stage.refresh()
        stage.refresh()
    assert [e["event"] for e in logs] == ["list.reload_failed"]
    assert logs[0]["error"] == "file not found"
    assert names(stage, "192.0.2.1") == ["l"]
    write(path, "192.0.2.2")
    stage.refresh()
    assert names(stage, "192.0.2.2") == ["l"]


def test_lookups_never_miss_during_concurrent_refreshes(tmp_path: Path) -> None:
    """While lists are swapped under load, an address in every version is always listed."""
    path = tmp_path / "l"
    versions: Sequence[Sequence[str]] = (
        ["192.0.2.0/24", "10.0.0.0/8"],
        ["192.0.2.0/24", "172.16.0.0/12", "198.51.100.1"],
    )
    write(path, *versions[0])
    stage = make_stage({"name": "l", "path": str(path)})
    stop = threading.Event()
    misses: list[list[str]] = []

    def look() -> None:
        while not stop.is_set():
            result = names(stage, "192.0.2.77")
            if result != ["l"]:
                misses.append(result)

    readers = [threading.Thread(target=look) for _ in range(2)]
    for reader in readers:
        reader.start()
    try:
        for round_number in range(10):
            replace(path, *versions[round_number % 2])
            stage.refresh()
    finally:
        stop.set()
        for reader in readers:
            reader.join()
    assert misses == []
    # The last round (9) loaded versions[1]: the swaps really happened.
    assert names(stage, "172.16.0.1") == ["l"]
    assert names(stage, "10.1.1.1") == []
