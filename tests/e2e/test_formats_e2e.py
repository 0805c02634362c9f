"""Input formats through the real daemon: CSV split into many chunks, JSON lines, free text, networks, CSV output."""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from typing import Any

from tests.support.daemon import Daemon, wait_for

RULES = [
    {"match": "fw-*.csv", "format": "delimited", "carry": ["action"]},
    {"match": "out-*", "format": "delimited", "column": "peer", "output": "csv"},
    {"match": "*.blocklist", "format": "networks"},
    {"match": "wrapped-*", "format": "jsonl", "mode": "wrap", "field": "peer.ip"},
]


def firewall_export(rows: int) -> tuple[bytes, list[tuple[int, str, str]]]:
    """A CSV export with CRLF, quoted newlines and doubled quotes; the (line, address, action) csv reads."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow(["time", "SRC_IP", "dst_port", "action", "note"])
    for n in range(rows):
        note = f'multi\nline "{n}"\n' if n % 7 == 0 else f"plain {n}"
        writer.writerow([f"t{n}", f"192.0.2.{n % 256}", 443, "deny" if n % 2 else "allow", note])
    text = buffer.getvalue()
    expected = []
    reader = csv.reader(io.StringIO(text, newline="\n"))
    before = 0
    for fields in reader:
        if reader.line_num > 1:
            expected.append((before + 1, fields[1], fields[3]))
        before = reader.line_num
    return text.encode(), expected


def drop_all(d: Daemon) -> list[tuple[int, str, str]]:
    data, expected = firewall_export(3000)
    assert len(data) > 20 * 4096  # many chunks at chunk_bytes = 4096
    d.drop("fw-big.csv", data)
    d.drop("honeypot.jsonl", b'{"src_ip": "198.51.100.1", "port": 22}\nnot json\n{"source": {"ip": "::1"}}\n')
    d.drop("wrapped-1", b'{"peer": {"ip": "203.0.113.5"}}\n')
    d.drop("abuse.eml", b"Subject: abuse\n\nWe saw 203.0.113[.]7:8080 and [2001:db8::9]:443 (v1.2.3).\n")
    d.drop("drop.blocklist", b"# ranges\n10.0.0.0/8\n192.0.2.0-192.0.2.2\n")
    d.drop("out-peers.tsv", b"peer\tnote\n192.0.2.77\t\"a\ttab\"\n")
    d.drop("headerless.csv", b"192.0.2.1\n192.0.2.2\n")
    d.drop("plain.txt", b"192.0.2.1\n10.0.0.0/8\n")
    return expected


def check_all(d: Daemon, expected: list[tuple[int, str, str]]) -> None:
    records = d.wait_result("fw-big.csv")
    assert [(r["line"], r["ip"], r["fields"]["action"]) for r in records] == expected
    assert {r["column"] for r in records} == {2}
    honeypot = d.wait_result("honeypot.jsonl")
    assert honeypot[0] == {"src_ip": "198.51.100.1", "port": 22, "ipspool": {
        "line": 1, "field": "src_ip", "input": "198.51.100.1", "ip": "198.51.100.1", "version": 4,
        "class": "reserved", "global": False, **honeypot[0]["ipspool"]}}
    assert honeypot[1]["line"] == 2 and honeypot[1]["error"].startswith("not JSON")
    assert honeypot[2]["ipspool"]["ip"] == "::1"
    (wrapped,) = d.wait_result("wrapped-1")
    assert wrapped["ip"] == "203.0.113.5" and wrapped["source"] == {"peer": {"ip": "203.0.113.5"}}
    text = d.wait_result("abuse.eml")
    assert [(r["line"], r["position"], r["ip"]) for r in text] == [(3, 8, "203.0.113.7"), (3, 32, "2001:db8::9")]
    networks = d.wait_result("drop.blocklist")
    assert [(r["line"], r["network"], r["addresses"]) for r in networks] == [
        (2, "10.0.0.0/8", 16777216), (3, "192.0.2.0/31", 2), (3, "192.0.2.2/32", 1)]
    csv_result = d.results / "out-peers.tsv.csv"
    wait_for(csv_result.exists, 30, what=str(csv_result))
    rows = list(csv.DictReader(io.StringIO(csv_result.read_text())))
    assert [(r["line"], r["column"], r["ip"], r["class"]) for r in rows] == [("2", "1", "192.0.2.77", "reserved")]
    assert not d.result_path("out-peers.tsv").exists()
    failure = d.wait_failed("headerless.csv")
    assert failure["reason"] == "no_address_column"
    assert "['192.0.2.1']" in failure["detail"]
    rejected = d.wait_event("file.rejected", where=lambda e: e["file"] == "headerless.csv")
    assert rejected["reason"] == "no_address_column"
    plain = d.wait_result("plain.txt")
    assert plain[1] == {"line": 2, "input": "10.0.0.0/8",
                        "error": "not an IP address: CIDR notation is a network, not an address"}


def test_every_format_through_the_daemon_inline(make_daemon: Callable[..., Daemon]) -> None:
    """Non-blocking stages (one thread per worker): each format's result, and the headerless CSV in failed/."""
    d = make_daemon(inputs=RULES, workers={"chunk_bytes": 4096})
    d.start()
    check_all(d, drop_all(d))
    assert d.stop() == 0


def test_every_format_through_the_daemon_on_the_thread_pool(make_daemon: Callable[..., Daemon]) -> None:
    """A blocking user stage sends batches of every format to the pool: the same records, in order."""
    settings: dict[str, Any] = {"pipeline": {"stages": ["classify", "tests.support.stagelib:tag"]}}
    d = make_daemon(inputs=RULES, workers={"chunk_bytes": 4096}, **settings)
    d.start()
    expected = drop_all(d)
    check_all(d, expected)
    assert all(r["tagged"] == 4 for r in d.wait_result("fw-big.csv"))
    assert d.stop() == 0
