"""The line parser and the record format."""

from __future__ import annotations

import orjson
import pytest

from ipspool.config import parse_config
from ipspool.pipeline import load_pipeline, process_chunk


def run(data: bytes, stages: list[str] | None = None) -> list[dict[str, object]]:
    config = parse_config({"pipeline": {"stages": stages or ["classify"]}})
    out, _ = process_chunk(data, 1, load_pipeline(config))
    return [orjson.loads(line) for line in out.splitlines()]


def test_valid_addresses_are_normalized_and_classified() -> None:
    """IPv4 and IPv6 come out normalized with version, class and global."""
    records = run(b"8.8.8.8\n2001:DB8:0:0::1\n10.1.2.3\n")
    assert records[0] == {"line": 1, "input": "8.8.8.8", "ip": "8.8.8.8", "version": 4, "class": "global",
                          "global": True}
    assert records[1]["ip"] == "2001:db8::1" and records[1]["version"] == 6
    assert records[2]["class"] == "private"


@pytest.mark.parametrize(
    ("line", "cls"),
    [
        ("0.0.0.0", "unspecified"), ("::", "unspecified"), ("127.0.0.1", "loopback"), ("::1", "loopback"),
        ("169.254.1.1", "link_local"), ("fe80::1", "link_local"), ("224.0.0.1", "multicast"),
        ("ff02::1", "multicast"), ("100.64.0.1", "shared"), ("192.168.1.1", "private"),
        ("172.16.0.1", "private"), ("fd00::1", "private"), ("192.0.2.1", "reserved"),
        ("240.0.0.1", "reserved"), ("1.1.1.1", "global"), ("2606:4700::1111", "global"),
    ],
)
def test_class_vocabulary(line: str, cls: str) -> None:
    """Each documented class is produced for a representative address."""
    assert run(line.encode())[0]["class"] == cls


def test_blank_and_comment_lines_make_no_record_but_keep_numbering() -> None:
    """Blank lines and comments are skipped; line numbers still count them."""
    records = run(b"# header\n\n1.1.1.1\n   \n2.2.2.2 # trailing comment\n")
    assert [(r["line"], r["ip"]) for r in records] == [(3, "1.1.1.1"), (5, "2.2.2.2")]


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"010.1.1.1", "Leading zeros"),
        (b"256.1.1.1", "not an IP address"),
        (b"1.2.3", "not an IP address"),
        (b"10.0.0.0/8", "CIDR notation"),
        (b"1.2.3.4-1.2.3.9", "ranges"),
        (b"example.com", "not an IP address"),
        (b"\xff\xfe1.1.1.1", "not valid UTF-8"),
        (b"1.1.\x001.1", "NUL byte"),
        (b"1.1.1.1 2.2.2.2", "not an IP address"),
    ],
)
def test_bad_lines_become_error_records(raw: bytes, message: str) -> None:
    """A line that is not an address gives a record with `error`, never an exception."""
    records = run(raw + b"\n8.8.8.8\n")
    assert "error" in records[0] and message in str(records[0]["error"])
    assert "ip" not in records[0]
    assert records[1]["ip"] == "8.8.8.8"


def test_crlf_bom_tabs_and_spaces() -> None:
    """CRLF endings, a UTF-8 BOM on line 1 and surrounding whitespace are tolerated."""
    records = run(b"\xef\xbb\xbf1.1.1.1\r\n\t 2.2.2.2 \t\r\n")
    assert [r["ip"] for r in records] == ["1.1.1.1", "2.2.2.2"]


def test_ipv6_forms() -> None:
    """Zone ids are kept, IPv4-mapped addresses are accepted and normalized."""
    records = run(b"fe80::1%eth0\n::ffff:1.2.3.4\n2001:0db8:0000:0000:0000:0000:0000:0001\n")
    assert records[0]["ip"] == "fe80::1%eth0" and records[0]["class"] == "link_local"
    assert records[1]["ip"] == "::ffff:102:304" and records[1]["version"] == 6
    assert records[2]["ip"] == "2001:db8::1"


def test_line_too_long_is_an_error_record() -> None:
    """A line over max_line_bytes is rejected with its length, and the file goes on."""
    records = run(b"1" * 5000 + b"\n9.9.9.9\n")
    assert "line too long: 5000 bytes" in str(records[0]["error"])
    assert records[1]["line"] == 2


def test_stage_errors_are_recorded_per_address() -> None:
    """A stage that raises marks that record and the rest go on."""
    records = run(b"1.1.1.13\n1.1.1.14\n", ["classify", "tests.support.stagelib:boom"])
    assert records[0]["stage_errors"] == {"tests.support.stagelib:boom": "ValueError: unlucky address"}
    assert records[0]["class"] == "global"
    assert records[1]["ok"] is True and "stage_errors" not in records[1]


def test_stage_returning_a_non_mapping_is_a_stage_error() -> None:
    """A stage breaking the contract is reported on the record."""
    records = run(b"1.1.1.1\n", ["tests.support.stagelib:bad_return"])
    assert "expected a mapping" in str(records[0]["stage_errors"])


def test_counts() -> None:
    """Counts add up: lines = valid + invalid + skipped."""
    config = parse_config({})
    _, counts = process_chunk(b"1.1.1.1\nbad\n# c\n\n10.0.0.1\n", 1, load_pipeline(config))
    assert counts["lines"] == 5 and counts["valid"] == 2 and counts["invalid"] == 1 and counts["skipped"] == 2
    assert counts["class.global"] == 1 and counts["class.private"] == 1
