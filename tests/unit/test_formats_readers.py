"""JSON lines, free text, networks, CSV output and the choice of reader."""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ipspool.config import Config, parse_config
from ipspool.formats import Format, process_chunk, select
from ipspool.formats.text import find_addresses
from ipspool.pipeline import load_pipeline
from ipspool.pipeline import process_chunk as plain_process_chunk


def run(data: bytes, fmt: Format, config: Config | None = None) -> list[dict[str, Any]]:
    out, _ = process_chunk(data, 1, load_pipeline(config or Config()), [], fmt)
    return [orjson.loads(line) for line in out.splitlines()]


def rule(**keys: Any) -> Config:
    return parse_config({"inputs": [{"match": "*", **keys}]})


# -- choosing -------------------------------------------------------------------

@pytest.mark.parametrize(("name", "kind"), [
    ("a.txt", "plain"), ("a", "plain"), ("A.CSV", "delimited"), ("a.tsv", "delimited"), ("a.jsonl", "jsonl"),
    ("a.ndjson", "jsonl"), ("a.log", "text"), ("a.eml", "text"),
])
def test_defaults_by_extension(name: str, kind: str) -> None:
    """Without a rule the extension decides (case-insensitive)."""
    assert select(Config(), name, b"ip\n", 3).kind == kind


@pytest.mark.parametrize(("head", "kind"), [
    (b'{"src_ip": "1.2.3.4"}\n', "jsonl"), (b"\xef\xbb\xbfdate;SRC;port\n", "delimited"),
    (b"192.0.2.1\n", "plain"), (b"{not json\n", "plain"), (b"a,b\n", "plain"),
])
def test_unknown_extensions_are_sniffed(head: bytes, kind: str) -> None:
    """A JSON object or a header with an address column; anything else stays plain."""
    assert select(Config(), "export.dat", head, len(head)).kind == kind


def test_the_first_matching_rule_wins_over_the_extension() -> None:
    """Rules are tried in order; format auto keeps the extension's choice but takes the output."""
    config = parse_config({"inputs": [{"match": "fw-*", "format": "text"}, {"match": "*.csv", "output": "csv"},
                                      {"match": "*", "format": "networks"}]})
    assert select(config, "fw-1.csv", b"", 0).kind == "text"
    chosen = select(config, "x.csv", b"ip\n", 3)
    assert (chosen.kind, chosen.output, chosen.suffix) == ("delimited", "csv", ".csv")
    assert select(config, "x.txt", b"", 0).kind == "networks"


def test_plain_files_stay_byte_identical() -> None:
    """A plain file through formats.process_chunk is pipeline.process_chunk's output exactly."""
    data = b"\xef\xbb\xbf8.8.8.8 # x\n\n010.1.1.1\n10.0.0.0/8\n2001:DB8::1\r\n"
    fmt = select(Config(), "a.txt", b"", 0)
    loaded = load_pipeline(Config())
    assert process_chunk(data, 1, loaded, [], fmt) == plain_process_chunk(data, 1, loaded, [])
    assert process_chunk(data, 1, loaded, [], None) == plain_process_chunk(data, 1, loaded, [])


# -- JSON lines -------------------------------------------------------------------

JSONL = (b'{"src_ip": "192.0.2.1", "n": 1}\n'
         b'{"source": {"ip": "::1"}}\n'
         b'not json\n'
         b'[1, 2]\n'
         b'{"other": 1}\n'
         b'{"ip": 7}\n'
         b'\n'
         b'{"source.ip": "10.0.0.1", "source": {"ip": "x"}}\n')


def test_jsonl_annotates_in_place_by_default() -> None:
    """The original object gains an ipspool key; bad lines are error records of their own."""
    records = run(JSONL, select(Config(), "a.jsonl"))
    assert records[0] == {"src_ip": "192.0.2.1", "n": 1, "ipspool": {
        "line": 1, "field": "src_ip", "input": "192.0.2.1", "ip": "192.0.2.1", "version": 4,
        "class": "reserved", "global": False}}
    assert records[1]["ipspool"]["field"] == "source.ip" and records[1]["ipspool"]["ip"] == "::1"
    assert records[2] == {"line": 3, "input": "not json", "error": records[2]["error"]}
    assert records[2]["error"].startswith("not JSON")
    assert records[3]["error"] == "not a JSON object but list"
    assert records[4] == {"other": 1, "ipspool": {"line": 5, "error": "no address field (looked for ip, src_ip, "
                                                  "source_ip, source.ip, client.ip, remote_addr)"}}
    assert records[5]["ipspool"]["error"] == "the address field is int, not a string"
    assert records[6]["ipspool"]["ip"] == "10.0.0.1"  # a literal dotted key first
    assert len(records) == 7  # the blank line has none


def test_jsonl_wrap_mode_and_a_named_field() -> None:
    """wrap: ipspool's record with the original under source; field names a dotted path."""
    config = rule(format="jsonl", field="peer.addr", mode="wrap")
    (record,) = run(b'{"peer": {"addr": "192.0.2.9"}}\n', select(config, "x"), config)
    assert record == {"line": 1, "field": "peer.addr", "input": "192.0.2.9", "ip": "192.0.2.9", "version": 4,
                      "class": "reserved", "global": False, "source": {"peer": {"addr": "192.0.2.9"}}}


# -- free text ----------------------------------------------------------------------

@pytest.mark.parametrize(("line", "found"), [
    ("from 192.0.2[.]1 and 198.51.100(.)2", ["192.0.2.1", "198.51.100.2"]),
    ("GET http://1.2.3.4:8080/x [2001:db8::1]:443", ["1.2.3.4", "2001:db8::1"]),
    ("host-1.2.3.4.example (8.8.8.8), ip=9.9.9.9; end 4.4.4.4.", ["1.2.3.4", "8.8.8.8", "9.9.9.9", "4.4.4.4"]),
    ("version 1.2.3 and 1.2.3.4.5, v1.2.3.4, 1.2.3.4a", []),
    ("net 10.0.0.0/8 and 2001:db8::/32", ["10.0.0.0", "2001:db8::"]),  # networks: see the records test
    ("http://1.2.3.4/2026/report 5.6.7.8/33 9.9.9.9/x 1.2.3.0/024", ["1.2.3.4", "5.6.7.8", "9.9.9.9", "1.2.3.0"]),
    ("::ffff:1.2.3.4 and 2001[:]db8[:][:]2", ["::ffff:1.2.3.4", "2001:db8::2"]),
    ("std::vector at 10:20:30", ["10:20:30"]),  # a candidate; the strict parser refuses it
    ("a:" * 2000 + "g", []), (":" * 4000 + " ::1", ["::1"]),  # long runs: read once, not from every start
])
def test_free_text_candidates(line: str, found: list[str]) -> None:
    """Defanged forms, ports, brackets and prefixes are handled; versions and networks are not taken."""
    assert [f.address for f in find_addresses(line)] == found


_TEXTISH = st.text(st.sampled_from(list("0123456789abcdefABCDEF:[]().%xz _/-\u00e9")), max_size=40)


@settings(max_examples=400, deadline=None)
@given(line=_TEXTISH)
def test_free_text_scans_only_around_colons_and_finds_what_a_whole_line_scan_finds(line: str) -> None:
    """The IPv6 candidates found stretch by stretch around colons are those the pattern finds over the whole
    line."""
    from ipspool.formats import text

    def candidates(matches: Iterable[re.Match[str]]) -> list[tuple[int, int]]:
        return [m.span() for m in matches if m.group().count(":") + m.group().count("[:]") >= 2]

    assert candidates(text._v6_runs(line)) == candidates(text._V6.finditer(line))


@settings(max_examples=400, deadline=None)
@given(line=st.text(st.sampled_from(list("0123456789abcdefABCDEF:::...%e ")), min_size=1, max_size=45))
def test_free_text_candidates_refused_without_parsing_are_ones_the_parser_refuses(line: str) -> None:
    """``cannot_be_an_address`` (no ``::``, no dotted tail, not eight hextets) is never wrong about a candidate."""
    from ipspool.formats.records import parse_text
    from ipspool.formats.text import cannot_be_an_address

    for found in find_addresses(line):
        if ":" in found.address and cannot_be_an_address(found.address):
            assert isinstance(parse_text(found.address), str), found


def test_free_text_records_carry_line_position_and_what_was_written() -> None:
    """Every address a record, with position (1-based) and found when defanged; not-addresses dropped."""
    data = b"\xef\xbb\xbfSeen: 192.0.2[.]1 at 10:20:30, and 999.1.1.1\nnothing here\n  2001:db8::5\n"
    records = run(data, select(Config(), "a.log"))
    assert [(r["line"], r["position"], r["ip"], r.get("found")) for r in records] == [
        (1, 7, "192.0.2.1", "192.0.2[.]1"), (3, 3, "2001:db8::5", None)]


@pytest.mark.parametrize(("line", "found"), [
    ("block 198.51.100.0/24 now", [("198.51.100.0", 24, "198.51.100.0/24")]),
    ("2001:db8::/32, 2001[:]db8[:][:]/48.", [("2001:db8::", 32, "2001:db8::/32"),
                                             ("2001:db8::", 48, "2001[:]db8[:][:]/48")]),
    ("198.51.100[.]0/25 and 10.0.0.0/0", [("198.51.100.0", 25, "198.51.100[.]0/25"), ("10.0.0.0", 0, "10.0.0.0/0")]),
    ("1.2.3.4/33 ::1/129 1.2.3.4/2026 1.2.3.4/x 1.2.3.0/024", [
        ("1.2.3.4", None, "1.2.3.4"), ("::1", None, "::1"), ("1.2.3.4", None, "1.2.3.4"),
        ("1.2.3.4", None, "1.2.3.4"), ("1.2.3.0", None, "1.2.3.0")]),
    ("10.0.0.0/8/9 10.0.0.0/8a 10.0.0.0/8.5", [("10.0.0.0", None, "10.0.0.0")] * 3),
])
def test_free_text_prefix_lengths(line: str, found: list[tuple[str, int | None, str]]) -> None:
    """A prefix length the address can have, ending the token, makes a network; any other / is a path."""
    assert [(f.address, f.prefix, f.shown) for f in find_addresses(line)] == found


def test_free_text_cidr_is_a_network_record_as_the_networks_reader_makes_it(tmp_path: Path) -> None:
    """``block 198.51.100.0/24 now``: the networks reader's record for 198.51.100.0/24, with position; host bits
    set is an interface's address (taken, found shows the prefix); an impossible prefix leaves the address."""
    (tmp_path / "l.txt").write_text("198.51.100.0/25\n")
    config = parse_config({"pipeline": {"stages": ["classify", "lists"]},
                           "lists": [{"name": "l", "path": str(tmp_path / "l.txt")}]})
    data = b"block 198.51.100.0/24 now, 198.51.100[.]0/25 too\nif 192.0.2.5/24 and 1.2.3.4/33 and 2001:db8::/64\n"
    fmt = select(config, "a.log")
    loaded = load_pipeline(config)
    out, counts = process_chunk(data, 1, loaded, [], fmt)
    records = [orjson.loads(line) for line in out.splitlines()]
    networks = run(b"198.51.100.0/24\n", select(parse_config({
        "pipeline": {"stages": ["classify", "lists"]}, "lists": [{"name": "l", "path": str(tmp_path / "l.txt")}],
        "inputs": [{"match": "*", "format": "networks"}]}), "n"), config)
    assert records[0] == {"position": 7, **networks[0]}
    assert records[0]["overlaps"] == ["l"] and list(records[0])[:3] == ["line", "position", "input"]
    assert (records[1]["network"], records[1]["found"], records[1]["contained_in"]) == (
        "198.51.100.0/25", "198.51.100[.]0/25", ["l"])
    assert [(r["line"], r["position"], r.get("ip"), r.get("network"), r.get("found")) for r in records[2:]] == [
        (2, 4, "192.0.2.5", None, "192.0.2.5/24"), (2, 21, "1.2.3.4", None, None),
        (2, 36, None, "2001:db8::/64", None)]
    assert records[-1]["addresses"] == str(1 << 64)
    assert (counts["networks"], counts["valid"], counts["lines"]) == (3, 2, 2)


def test_free_text_skip_reserved_leaves_out_networks_that_are_not_global() -> None:
    """skip_reserved keeps a global network (or a mixed one, partly global) and leaves out the others."""
    config = rule(format="text", skip_reserved=True)
    records = run(b"10.0.0.0/8 8.8.8.0/24 0.0.0.0/0 192.0.2.0/24\n", select(config, "a"), config)
    assert [(r["network"], r["class"]) for r in records] == [("8.8.8.0/24", "global"), ("0.0.0.0/0", "mixed")]


def test_free_text_can_skip_reserved_and_private_addresses() -> None:
    """skip_reserved keeps only global addresses."""
    config = rule(format="text", skip_reserved=True)
    records = run(b"10.0.0.1 8.8.8.8 192.0.2.1 ::1\n", select(config, "a"), config)
    assert [r["ip"] for r in records] == ["8.8.8.8"]


# -- networks -----------------------------------------------------------------------

def test_networks_ranges_netmasks_and_list_overlaps(tmp_path: Path) -> None:
    """One record per network with prefix, size, class and the lists around it; ranges become blocks."""
    (tmp_path / "l.txt").write_text("10.1.0.0/16\n192.0.2.0/24\n")
    config = parse_config({"pipeline": {"stages": ["classify", "lists"]},
                           "lists": [{"name": "l", "path": str(tmp_path / "l.txt")}],
                           "inputs": [{"match": "*", "format": "networks", "expand_cap": 2}]})
    data = b"10.0.0.0/8\n192.0.2.0 255.255.255.128 # half\n192.0.2.1-192.0.2.4\n10.0.0.1/8\n198.51.100.7\n"
    records = run(data, select(config, "n"), config)
    assert records[0] == {"line": 1, "input": "10.0.0.0/8", "network": "10.0.0.0/8", "version": 4, "prefix": 8,
                          "addresses": 16777216, "class": "private", "contained_in": [], "overlaps": ["l"]}
    assert (records[1]["network"], records[1]["contained_in"]) == ("192.0.2.0/25", ["l"])
    # Each block, then (expand_cap = 2) its addresses, each naming its block.
    assert [(r["network"], r.get("ip")) for r in records if r["line"] == 3] == [
        ("192.0.2.1/32", None), ("192.0.2.1/32", "192.0.2.1"), ("192.0.2.2/31", None),
        ("192.0.2.2/31", "192.0.2.2"), ("192.0.2.2/31", "192.0.2.3"), ("192.0.2.4/32", None),
        ("192.0.2.4/32", "192.0.2.4")]
    host_bits = next(r for r in records if r["line"] == 4)
    assert "has host bits set" in host_bits["error"]
    assert records[-1]["ip"] == "198.51.100.7" and records[-1]["lists"] == []


def test_wide_ipv6_networks_count_their_addresses_as_a_string() -> None:
    """/64 and wider hold more addresses than a JSON integer orjson writes: the count is a decimal string."""
    config = parse_config({"inputs": [{"match": "*", "format": "networks"}]})
    records = run(b"2001:db8::/65\n2001:db8::/64\n2001:db8::/32\n", select(config, "n"), config)
    assert [r["addresses"] for r in records] == [1 << 63, str(1 << 64), str(1 << 96)]


def test_plain_files_keep_refusing_cidr_notation() -> None:
    """Without a networks rule a CIDR in a plain file is still the plain error."""
    (record,) = run(b"10.0.0.0/8\n", select(Config(), "a.txt"))
    assert record["error"] == "not an IP address: CIDR notation is a network, not an address"


# -- CSV output ---------------------------------------------------------------------

def test_csv_output_has_a_stable_header_flattened_fields_and_joined_lists(tmp_path: Path) -> None:
    """Columns in the documented order; fields.NAME carried; lists joined with ;; header in the first chunk only."""
    (tmp_path / "l.txt").write_text("192.0.2.0/24\n")
    config = parse_config({"pipeline": {"stages": ["classify", "lists"]},
                           "lists": [{"name": "a", "path": str(tmp_path / "l.txt")},
                                     {"name": "b", "path": str(tmp_path / "l.txt")}],
                           "inputs": [{"match": "*", "format": "delimited", "carry": ["port"], "output": "csv"}]})
    data = b"port,ip\n443,192.0.2.1\n80,bogus\n"
    fmt = select(config, "x.csv", data, len(data))
    loaded = load_pipeline(config)
    out, _ = process_chunk(data[fmt.body_start:], 2, loaded, [], fmt)
    rows = list(csv.reader(io.StringIO(out.decode())))
    assert rows[0] == ["line", "column", "input", "ip", "error", "version", "class", "global", "lists", "ptr",
                       "rdns", "ptr_confirmed", "country", "asn", "as_org", "stage_errors.classify",
                       "stage_errors.lists", "fields.port", "extra"]
    table = [dict(zip(rows[0], row, strict=True)) for row in rows[1:]]
    assert table[0] | {} == {**dict.fromkeys(rows[0], ""), "line": "2", "column": "2", "input": "192.0.2.1",
                              "ip": "192.0.2.1", "version": "4", "class": "reserved", "global": "false",
                              "lists": "a;b", "fields.port": "443"}
    assert table[1]["error"].startswith("not an IP address") and table[1]["fields.port"] == "80"
    later, _ = process_chunk(data[fmt.body_start:], 2, loaded, [], fmt, first_chunk=False)
    assert later == out[out.index(b"\n") + 1:]


def test_plain_files_with_csv_output_and_an_over_long_line(tmp_path: Path) -> None:
    """Plain records as CSV rows; a too_long chunk's error record is a CSV row too (header in chunk 0 only)."""
    from ipspool.chunking import Chunk
    from ipspool.formats.work import too_long_output

    config = rule(output="csv")
    fmt = select(config, "a.txt")
    out, _ = process_chunk(b"192.0.2.1\n# c\nbad\n", 1, load_pipeline(config), [], fmt)
    rows = list(csv.reader(io.StringIO(out.decode())))
    assert rows[0][:5] == ["line", "input", "ip", "error", "version"]
    assert [(r[0], r[2]) for r in rows[1:]] == [("1", "192.0.2.1"), ("3", "")]
    path = tmp_path / "long.txt"
    path.write_bytes(b"x" * 5000 + b"\n")
    st = path.stat()
    chunk = Chunk(1, 1, str(path), 0, 5001, 7, True, st.st_dev, st.st_ino, format=fmt)
    data, counts = too_long_output(chunk, 4096, ("classify",))
    (row,) = list(csv.reader(io.StringIO(data.decode())))
    assert row[0] == "7" and row[3] == "line too long: 5000 bytes, limit 4096" and counts["invalid"] == 1
