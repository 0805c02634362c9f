"""process_chunk on the fast parser gives byte-identical results (issue 5)."""

from __future__ import annotations

import ipaddress
from collections import Counter
from collections.abc import Mapping
from typing import Any
from unittest import mock

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from ipspool import fastip
from ipspool import pipeline as pipeline_module
from ipspool.address import Address
from ipspool.config import parse_config
from ipspool.pipeline import Pipeline, load_pipeline, process_chunk
from tests.support.lines import physical_lines

_BOM = b"\xef\xbb\xbf"
_ASCII_SPACE = b" \t\n\r\x0b\x0c"


def ip_error(text: str) -> str | None:
    """Why ``text`` is not one address (docs/results.md), or None when it is one."""
    if "/" in text:
        return "CIDR notation is a network, not an address"
    if ":" not in text and "-" in text and text.count(".") > 3:
        return "address ranges are not expanded"
    try:
        (ipaddress.IPv6Address if ":" in text else ipaddress.IPv4Address)(text)
    except ValueError as exc:
        return str(exc)
    return None


def expected_record(raw: bytes, line_no: int, pipeline: Pipeline) -> dict[str, Any] | None:
    """The record one line gets, by the rules of docs/results.md, or None for a skipped line.

    1. A line of more than ``max_line_bytes`` bytes is an error ("line too
       long: N bytes, limit L"), shown as its first 64 bytes.
    2. A UTF-8 byte order mark opens line 1 only; it is dropped there.
    3. Everything from the first ``#`` is a comment; ASCII whitespace around
       the rest is not part of it; nothing left means the line is skipped.
    4. The rest must be UTF-8 ("not valid UTF-8") without NUL ("contains a
       NUL byte", shown as ``\x00``).
    5. A colon means IPv6; a slash is CIDR; a dash with more than three dots
       is a range; otherwise ipaddress's own message says what is wrong
       ("not an IP address: ...").
    6. A valid line's record is line, input, the normalized ip, then every
       stage's fields in stage order; failing stages are named in
       ``stage_errors``. Error records show at most 200 characters of input.
    """
    def error(shown: str, message: str) -> dict[str, Any]:
        return {"line": line_no, "input": shown[:200], "error": message}

    if len(raw) > pipeline.max_line_bytes:
        return error(raw[:64].decode("utf-8", "backslashreplace"),
                     f"line too long: {len(raw)} bytes, limit {pipeline.max_line_bytes}")
    if line_no == 1:
        raw = raw.removeprefix(_BOM)
    content = raw.partition(b"#")[0].strip(_ASCII_SPACE)
    if not content:
        return None
    try:
        text = content.decode("utf-8")
    except UnicodeDecodeError:
        return error(content.decode("utf-8", "backslashreplace"), "not valid UTF-8")
    if "\x00" in text:
        return error(text.replace("\x00", "\\x00"), "contains a NUL byte")
    problem = ip_error(text)
    if problem is not None:
        return error(text, f"not an IP address: {problem}")
    address = ipaddress.ip_address(text)
    record: dict[str, Any] = {"line": line_no, "input": text, "ip": str(address)}
    failures: dict[str, str] = {}
    for name, stage in zip(pipeline.names, pipeline.stages, strict=True):
        try:
            record.update(stage(address) or {})
        except Exception as exc:
            failures[name] = f"{type(exc).__name__}: {exc}"
    if failures:
        record["stage_errors"] = failures
    return record


# The kind each error record is counted under (the summary's errors_by_kind), by its message.
ERROR_KINDS = {"line too long": "line_too_long", "not valid UTF-8": "not_utf8", "contains a NUL byte": "nul_byte",
               "not an IP address": "not_an_address"}


def expected_chunk(data: bytes, first_line: int, pipeline: Pipeline) -> tuple[list[dict[str, Any]], Counter[str]]:
    """The records (in order) and the counts a chunk should give."""
    lines = physical_lines(data)
    records = [r for n, raw in enumerate(lines, first_line) if (r := expected_record(raw, n, pipeline)) is not None]
    counts: Counter[str] = Counter(lines=len(lines))
    counts["skipped"] = len(lines) - len(records)
    for record in records:
        counts["invalid" if "error" in record else "valid"] += 1
        if "error" in record:
            counts["error." + ERROR_KINDS[record["error"].split(":")[0]]] += 1
        if isinstance(record.get("class"), str):
            counts["class." + record["class"]] += 1
        counts["stage_errors"] += "stage_errors" in record
    return records, +counts


def actual_chunk(data: bytes, first_line: int, pipeline: Pipeline) -> tuple[list[dict[str, Any]], Counter[str]]:
    """process_chunk's records, parsed with their key order kept, and its counts."""
    out, counts = process_chunk(data, first_line, pipeline)
    assert out == b"" or out.endswith(b"\n")
    return [orjson.loads(line) for line in out.splitlines()], +counts


def assert_as_documented(data: bytes, first_line: int, pipeline: Pipeline) -> None:
    records, counts = actual_chunk(data, first_line, pipeline)
    want, want_counts = expected_chunk(data, first_line, pipeline)
    assert [list(r.items()) for r in records] == [list(r.items()) for r in want]
    assert counts == want_counts


def classify_pipeline(max_line_bytes: int = 4096) -> Pipeline:
    config = parse_config({"spool": {"max_line_bytes": max_line_bytes}}, spool="/tmp/ipspool-test")
    return load_pipeline(config)


def describe(address: Address, /) -> Mapping[str, Any]:
    """A user stage that shows what it was given."""
    return {"type": type(address).__name__, "scope": getattr(address, "scope_id", None)}


def overrides_class(address: Address, /) -> Mapping[str, Any]:
    """A user stage that writes a field classify also writes."""
    return {"class": "user", "packed_len": len(address.packed)}


def broken(address: Address, /) -> Mapping[str, Any] | None:
    """A user stage that fails for IPv6."""
    if address.version == 6:
        raise RuntimeError("no IPv6 here")
    return None


def mixed_pipeline(names: tuple[str, ...]) -> Pipeline:
    """classify from the config, the rest as user stages, in the given order."""
    builtin = classify_pipeline().stages[0]
    user = {"describe": describe, "overrides_class": overrides_class, "broken": broken}
    stages = tuple(builtin if name == "classify" else user[name] for name in names)
    return Pipeline(names, stages, max_line_bytes=200)


LINE_SAMPLES = [
    b"1.2.3.4",
    b"10.0.0.1",
    b"100.64.0.1",
    b"127.0.0.1",
    b"169.254.1.1",
    b"224.0.0.1",
    b"240.0.0.1",
    b"255.255.255.255",
    b"0.0.0.0",
    b"192.0.2.1",
    b"8.8.8.8",
    b"::",
    b"::1",
    b"fe80::1",
    b"fe80::1%eth0",
    b"ff02::1",
    b"fc00::1",
    b"2001:db8::1",
    b"2002:c000:204::1",
    b"2606:4700::1111",
    b"::ffff:1.2.3.4",
    b"::FFFF:10.0.0.1",
    b"::1.2.3.4",
    b"2001:0DB8:0000:0000:0000:0000:0000:0001",
    b"010.1.1.1",
    b"1.2.3",
    b"1.2.3.4/24",
    b"10.0.0.1-10.0.0.9.1",
    b"::1::",
    b"hello",
    b"  1.2.3.4  ",
    b"\t::1",
    b"1.2.3.4 # a comment",
    b"# only a comment",
    b"",
    b"   ",
    b"\xff\xfe1.2.3.4",
    b"1.2.\x003.4",
    b"\xc2\xa01.2.3.4",
    b"1" * 300,
    _BOM + b"1.2.3.4",
    b"1.2.3.4\r",
    "\u0661.2.3.4".encode(),
]

lines_strategy = st.lists(
    st.one_of(
        st.sampled_from(LINE_SAMPLES),
        st.integers(0, (1 << 32) - 1).map(lambda n: str(ipaddress.IPv4Address(n)).encode()),
        st.integers(0, (1 << 128) - 1).map(lambda n: str(ipaddress.IPv6Address(n)).encode()),
        st.binary(max_size=24),
    ),
    max_size=40,
)


def test_classify_record_bytes_are_pinned() -> None:
    """The record format itself: key order, spelling and compact JSON."""
    data = b"1.2.3.4\n::ffff:10.0.0.1\nfe80::1%eth0\n010.1.1.1\n"
    out, counts = process_chunk(data, 1, classify_pipeline())
    assert out == (
        b'{"line":1,"input":"1.2.3.4","ip":"1.2.3.4","version":4,"class":"global","global":true}\n'
        b'{"line":2,"input":"::ffff:10.0.0.1","ip":"::ffff:a00:1","version":6,'
        b'"class":"reserved","global":false}\n'
        b'{"line":3,"input":"fe80::1%eth0","ip":"fe80::1%eth0","version":6,'
        b'"class":"link_local","global":false}\n'
        b'{"line":4,"input":"010.1.1.1","error":"not an IP address: '
        b"Leading zeros are not permitted in '010' in '010.1.1.1'\"}\n"
    )
    assert counts == Counter(
        {
            "lines": 4,
            "valid": 3,
            "invalid": 1,
            "error.not_an_address": 1,
            "class.global": 1,
            "class.reserved": 1,
            "class.link_local": 1,
        }
    )


@given(lines_strategy, st.integers(1, 3))
@settings(max_examples=400)
def test_classify_pipeline_output_follows_the_line_rules(lines: list[bytes], first_line: int) -> None:
    """Mixed valid, invalid, commented and odd lines give the documented records and counts."""
    assert_as_documented(b"\n".join(lines) + b"\n", first_line, classify_pipeline(max_line_bytes=200))


@given(
    lines_strategy,
    st.lists(st.sampled_from(["classify", "describe", "overrides_class", "broken"]), max_size=4),
)
@settings(max_examples=200)
def test_mixed_pipeline_output_follows_the_line_rules(lines: list[bytes], names: list[str]) -> None:
    """User stages in any order beside classify give the documented records and counts."""
    assert_as_documented(b"\n".join(lines), 1, mixed_pipeline(tuple(names)))


@given(lines_strategy, lines_strategy, st.integers(1, 3))
@settings(max_examples=200)
def test_a_chunk_cut_at_a_line_boundary_gives_the_same_bytes(head: list[bytes], tail: list[bytes],
                                                              first_line: int) -> None:
    """Two chunks, the second numbered on from the first, give the whole chunk's bytes and summed counts."""
    pipeline = classify_pipeline(max_line_bytes=200)
    top, bottom = b"".join(line + b"\n" for line in head), b"\n".join(tail)
    whole, counts = process_chunk(top + bottom, first_line, pipeline)
    one, first_counts = process_chunk(top, first_line, pipeline)
    two, second_counts = process_chunk(bottom, first_line + len(physical_lines(top)), pipeline)
    assert whole == one + two
    assert counts == first_counts + second_counts


@given(lines_strategy, st.integers(2, 10**6))
@settings(max_examples=200)
def test_line_numbers_shift_with_the_first_line_and_nothing_else_changes(lines: list[bytes], first: int) -> None:
    """Past line 1 (where a BOM is dropped), the first line number only shifts every record's line."""
    pipeline = classify_pipeline(max_line_bytes=200)
    data = b"\n".join(lines)
    at_two, counts_two = actual_chunk(data, 2, pipeline)
    later, counts_later = actual_chunk(data, first, pipeline)
    assert [{**r, "line": r["line"] + first - 2} for r in at_two] == later
    assert counts_two == counts_later
    assert len(later) + counts_later["skipped"] == counts_later["lines"] == len(physical_lines(data))


def test_the_line_rules_reference_sees_every_kind_of_line() -> None:
    """The reference is not vacuous: the samples give records of every kind, skips, and BOM handling."""
    data = b"\n".join(LINE_SAMPLES)
    records, counts = expected_chunk(data, 1, classify_pipeline(max_line_bytes=200))
    errors = {r["error"].split(":")[0] for r in records if "error" in r}
    assert errors == {"line too long", "not an IP address", "not valid UTF-8", "contains a NUL byte"}
    assert counts["skipped"] == 3 and counts["valid"] > 20
    assert {r["class"] for r in records if "class" in r} >= {"global", "private", "loopback", "link_local", "shared"}
    bom, _ = expected_chunk(_BOM + b"1.2.3.4\n" + _BOM + b"1.2.3.4\n", 1, classify_pipeline())
    assert bom[0]["ip"] == "1.2.3.4" and "error" in bom[1]


def test_classify_only_pipeline_builds_no_address_objects() -> None:
    """With only classify, valid plain addresses never reach parse_address."""
    pipeline = classify_pipeline()
    assert pipeline.parsed_only
    # Both modules that call parse_address: the pipeline (for user stages)
    # and the fast parser's fallback.
    with (
        mock.patch.object(pipeline_module, "parse_address", side_effect=AssertionError),
        mock.patch.object(fastip, "parse_address", side_effect=AssertionError),
    ):
        _, counts = process_chunk(b"1.2.3.4\n::1\n::ffff:1.2.3.4\n2001:db8::1\n", 1, pipeline)
    assert counts["valid"] == 4


def test_user_stages_get_one_lazily_built_ipaddress_object() -> None:
    """Every user stage sees the same ipaddress object, built only for them."""
    seen: list[object] = []

    def record_it(address: Address, /) -> None:
        seen.append(address)

    classify_stage = classify_pipeline().stages[0]
    pipeline = Pipeline(("classify", "a", "b"), (classify_stage, record_it, record_it))
    assert not pipeline.parsed_only
    process_chunk(b"1.2.3.4\nfe80::1%eth0\n", 1, pipeline)
    assert [type(a) for a in seen] == [ipaddress.IPv4Address] * 2 + [ipaddress.IPv6Address] * 2
    assert seen[0] is seen[1]
    assert seen[2] is seen[3]
    assert seen[2] == ipaddress.IPv6Address("fe80::1%eth0")
