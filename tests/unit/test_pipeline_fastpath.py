"""process_chunk on the fast parser gives byte-identical results (issue 5)."""

from __future__ import annotations

import ipaddress
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any
from unittest import mock

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from ipspool import fastip
from ipspool import pipeline as pipeline_module
from ipspool.address import Address, parse_address
from ipspool.config import parse_config
from ipspool.pipeline import Pipeline, load_pipeline, process_chunk, split_lines

_BOM = b"\xef\xbb\xbf"
_INPUT_PREVIEW = 200


def _error_record(line_no: int, shown: str, message: str) -> bytes:
    record = {"line": line_no, "input": shown[:_INPUT_PREVIEW], "error": message}
    return orjson.dumps(record) + b"\n"


def reference_process_lines(
    lines: Sequence[bytes], first_line: int, pipeline: Pipeline, counts: Counter[str]
) -> bytes:
    """process_lines before the fast path (commit 743587e), only reflowed for ruff."""
    out: list[bytes] = []
    limit = pipeline.max_line_bytes
    for line_no, physical in enumerate(lines, first_line):
        raw = physical
        if len(raw) > limit:
            counts["invalid"] += 1
            shown = raw[:64].decode("utf-8", "backslashreplace")
            message = f"line too long: {len(raw)} bytes, limit {limit}"
            out.append(_error_record(line_no, shown, message))
            continue
        if line_no == 1 and raw.startswith(_BOM):
            raw = raw[len(_BOM) :]
        hash_at = raw.find(b"#")
        if hash_at >= 0:
            raw = raw[:hash_at]
        raw = raw.strip()
        if not raw:
            counts["skipped"] += 1
            continue
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            counts["invalid"] += 1
            shown = raw.decode("utf-8", "backslashreplace")
            out.append(_error_record(line_no, shown, "not valid UTF-8"))
            continue
        if "\x00" in text:
            counts["invalid"] += 1
            out.append(_error_record(line_no, text.replace("\x00", "\\x00"), "contains a NUL byte"))
            continue
        try:
            address = parse_address(text)
        except ValueError as exc:
            counts["invalid"] += 1
            out.append(_error_record(line_no, text, f"not an IP address: {exc}"))
            continue
        record: dict[str, Any] = {"line": line_no, "input": text, "ip": str(address)}
        record.update(pipeline.run(address))
        counts["valid"] += 1
        cls = record.get("class")
        if isinstance(cls, str):
            counts["class." + cls] += 1
        if "stage_errors" in record:
            counts["stage_errors"] += 1
        out.append(orjson.dumps(record) + b"\n")
    counts["lines"] += len(lines)
    return b"".join(out)


def reference_process_chunk(
    data: bytes, first_line: int, pipeline: Pipeline
) -> tuple[bytes, Counter[str]]:
    counts: Counter[str] = Counter()
    return reference_process_lines(split_lines(data), first_line, pipeline, counts), counts


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
            "class.global": 1,
            "class.reserved": 1,
            "class.link_local": 1,
        }
    )


@given(lines_strategy, st.integers(1, 3))
@settings(max_examples=400)
def test_classify_pipeline_output_is_byte_identical_to_slow_path(
    lines: list[bytes], first_line: int
) -> None:
    """Mixed valid, invalid, commented and odd lines give the same bytes and counts."""
    pipeline = classify_pipeline(max_line_bytes=200)
    data = b"\n".join(lines) + b"\n"
    assert process_chunk(data, first_line, pipeline) == reference_process_chunk(
        data, first_line, pipeline
    )


@given(
    lines_strategy,
    st.lists(st.sampled_from(["classify", "describe", "overrides_class", "broken"]), max_size=4),
)
@settings(max_examples=200)
def test_mixed_pipeline_output_is_byte_identical_to_slow_path(
    lines: list[bytes], names: list[str]
) -> None:
    """User stages in any order beside classify give the same bytes and counts."""
    pipeline = mixed_pipeline(tuple(names))
    data = b"\n".join(lines)
    assert process_chunk(data, 1, pipeline) == reference_process_chunk(data, 1, pipeline)


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
