"""Delimited files: the reader agrees with Python's csv module for any chunking, and headers are resolved."""

from __future__ import annotations

import csv
import io
import os
from collections import Counter
from itertools import pairwise
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ipspool.chunking import Chunk
from ipspool.config import Config, parse_config
from ipspool.formats import Format, process_chunk, select, split_chunks
from ipspool.formats.delimited import csv_rows, quote_free_rows, records, split_lines_kept
from ipspool.formats.readers import DelimitedReader
from ipspool.formats.work import too_long_output
from ipspool.pipeline import Pipeline, load_pipeline
from ipspool.spool import InputRejected

LIMIT = 1 << 20


def config(**rule: Any) -> Config:
    return parse_config({"inputs": [{"match": "*", "format": "delimited", **rule}]} if rule else {})


def fmt_of(data: bytes, name: str = "f.csv", **rule: Any) -> Format:
    return select(config(**rule), name, data, len(data))


def chunks_of(path: Path, fmt: Format, chunk_bytes: int) -> list[Chunk]:
    size = path.stat().st_size
    fd = os.open(path, os.O_RDONLY)
    try:
        return [c for c in split_chunks(fmt, fd, size, chunk_bytes, LIMIT, path=str(path)) if c is not None]
    finally:
        os.close(fd)


def reference(text: str, delimiter: str) -> list[tuple[int, list[str]]]:
    """(first line, fields) of every record after the header, as csv reads the whole file."""
    lines = io.StringIO(text, newline="\n")
    reader = csv.reader(lines, delimiter=delimiter)
    found = []
    before = 0
    for fields in reader:
        found.append((before + 1, fields))
        before = reader.line_num
    return found[1:]


def read_chunks(data: bytes, fmt: Format, chunks: list[Chunk]) -> list[tuple[int, list[str] | None]]:
    reader = DelimitedReader(fmt)
    seen = []
    for chunk in chunks:
        for line_no, _, fields, _, _ in reader.units(data[chunk.start:chunk.end], chunk.first_line):
            seen.append((line_no, fields))
    return seen


_FIELD = st.text(st.sampled_from(list('ab 1.2,;"\n\t')), max_size=8)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(st.lists(_FIELD, min_size=1, max_size=4), max_size=25),
       terminator=st.sampled_from(["\n", "\r\n"]), delimiter=st.sampled_from([",", ";", "\t"]),
       chunk_bytes=st.integers(1, 120))
def test_any_chunking_reads_the_records_and_line_numbers_csv_reads(
    tmp_path: Path, rows: list[list[str]], terminator: str, delimiter: str, chunk_bytes: int,
) -> None:
    """Split anywhere (chunk sizes down to one byte), the chunks' records are the csv module's, numbered alike."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, delimiter=delimiter, lineterminator=terminator)
    writer.writerow(["ip", "note"])
    writer.writerows(rows)
    text = buffer.getvalue()
    data = text.encode()
    path = tmp_path / "f.csv"
    path.write_bytes(data)
    fmt = fmt_of(data, delimiter=delimiter)
    got = read_chunks(data, fmt, chunks_of(path, fmt, chunk_bytes))
    assert got == reference(text, delimiter)


QUOTED = (b'src_ip,note,action\r\n'
          b'192.0.2.1,"one\nline, two",deny\r\n'
          b'"192.0.2.2","say ""hi""\r\nand ""bye""",allow\r\n'
          b'\r\n'
          b'192.0.2.3,"\n\n\n",deny\n'
          b'not-an-ip,x,allow\n'
          b'2001:db8::1,"last, unterminated\n')


def pipeline() -> Pipeline:
    return load_pipeline(Config())


@pytest.mark.parametrize("max_line_bytes", [4096, 48])
def test_quoted_newlines_across_every_chunk_boundary_give_the_same_result(tmp_path: Path,
                                                                          max_line_bytes: int) -> None:
    """For every chunk size from 1 byte to the whole file, the joined results are the one-chunk result
    (also with a limit so small that the splitter's read-ahead ends inside quoted records)."""
    path = tmp_path / "f.csv"
    path.write_bytes(QUOTED)
    fmt = select(parse_config({"spool": {"max_line_bytes": max_line_bytes},
                               "inputs": [{"match": "*", "format": "delimited", "carry": ["action"]}]}),
                 "f.csv", QUOTED, len(QUOTED))
    loaded = pipeline()
    whole, _ = process_chunk(QUOTED[fmt.body_start:], fmt.header_lines + 1, loaded, [], fmt)
    records = [orjson.loads(r) for r in whole.splitlines()]
    assert [(r["line"], r.get("ip"), r["fields"]["action"]) for r in records] == [
        (2, "192.0.2.1", "deny"), (4, "192.0.2.2", "allow"), (7, "192.0.2.3", "deny"), (11, None, "allow"),
        (12, "2001:db8::1", None)]
    for chunk_bytes in range(1, len(QUOTED) + 1):
        chunks = chunks_of(path, fmt, chunk_bytes)
        assert chunks[0].start == fmt.body_start and chunks[-1].end == len(QUOTED)
        assert all(a.end == b.start for a, b in pairwise(chunks))
        out = b"".join(process_chunk(QUOTED[c.start:c.end], c.first_line, loaded, [], fmt, c.index == 0)[0]
                       for c in chunks)
        assert out == whole, chunk_bytes


def test_counts_cover_every_physical_line_after_the_header() -> None:
    """lines counts physical lines (a quoted newline included); blank records are skipped."""
    fmt = fmt_of(QUOTED)
    counts: Counter[str]
    _, counts = process_chunk(QUOTED[fmt.body_start:], 2, pipeline(), [], fmt)
    assert counts["lines"] == QUOTED.count(b"\n") - 1 + 0
    assert (counts["valid"], counts["invalid"], counts["skipped"]) == (4, 1, 1)


@pytest.mark.parametrize(("data", "name", "delimiter", "column"), [
    (b"IP;port\n1.2.3.4;80\n", "f.csv", ";", 0),
    (b"port\tSrc_IP\n80\t1.2.3.4\n", "f.tsv", "\t", 1),
    (b"a|host|b\nx|1.2.3.4|y\n", "f.csv", "|", 1),
    (b"\xef\xbb\xbf\"ip\",x\r\n1.2.3.4,y\r\n", "f.csv", ",", 0),
    (b" Address , x\n1.2.3.4,y\n", "f.csv", ",", 0),
])
def test_header_delimiter_and_address_column_are_found(data: bytes, name: str, delimiter: str, column: int) -> None:
    """BOM, quotes, case and spaces in the header; ; tab and | sniffed; .tsv means tab."""
    fmt = select(Config(), name, data, len(data))
    assert (fmt.kind, fmt.delimiter, fmt.address) == ("delimited", delimiter, column)
    out, _ = process_chunk(data[fmt.body_start:], fmt.header_lines + 1, pipeline(), [], fmt)
    assert orjson.loads(out)["ip"] == "1.2.3.4"


def test_the_rule_names_the_column_and_the_delimiter() -> None:
    """column and delimiter from the rule win over the defaults."""
    data = b"ip,peer\n10.0.0.1,192.0.2.7\n"
    fmt = fmt_of(data, column="PEER")
    out, _ = process_chunk(data[fmt.body_start:], 2, pipeline(), [], fmt)
    assert orjson.loads(out) | {} == {"line": 2, "column": 2, "input": "192.0.2.7", "ip": "192.0.2.7",
                                       "version": 4, "class": "reserved", "global": False}


def test_a_header_without_an_address_column_is_refused_naming_it() -> None:
    """no_address_column: the detail quotes the header and says how to name the column."""
    with pytest.raises(InputRejected) as info:
        fmt_of(b"when,what\n1,2\n")
    assert info.value.reason == "no_address_column"
    assert "['when', 'what']" in info.value.detail and "column =" in info.value.detail


def test_a_missing_carry_column_and_an_unreadable_header_are_refused() -> None:
    """missing_column names the carried column; bad_header a header that never ends within the head read."""
    with pytest.raises(InputRejected) as info:
        fmt_of(b"ip,x\n1.2.3.4,y\n", carry=["action"])
    assert info.value.reason == "missing_column" and "'action'" in info.value.detail
    with pytest.raises(InputRejected) as info:
        select(Config(), "f.csv", b'ip,"x' + b"y" * 100, 10**6)
    assert info.value.reason == "bad_header"


def test_short_rows_empty_files_and_header_only_files() -> None:
    """A row without the address column is an error record; empty and header-only files have no records."""
    data = b"a,ip\nx\n,\n"
    fmt = fmt_of(data)
    out, counts = process_chunk(data[fmt.body_start:], 2, pipeline(), [], fmt)
    assert orjson.loads(out) == {"line": 2, "column": 2, "input": "x", "error": "no column 2 (ip): the record has 1"}
    assert counts["skipped"] == 1
    assert fmt_of(b"").kind == "delimited"
    header_only = b"ip\n"
    fmt = fmt_of(header_only)
    assert fmt.body_start == len(header_only)
    assert process_chunk(b"", 2, pipeline(), [], fmt)[0] == b""


def test_a_record_over_the_limit_becomes_a_chunk_of_its_own(tmp_path: Path) -> None:
    """An unterminated quote is not read to the end of the file: the splitter cuts it out as too_long."""
    data = b"ip,x\n1.2.3.4,a\n" + b'5.6.7.8,"' + b"z\n" * 5000
    path = tmp_path / "f.csv"
    path.write_bytes(data)
    fmt = select(parse_config({"spool": {"max_line_bytes": 1000}}), "f.csv", data, len(data))
    fd = os.open(path, os.O_RDONLY)
    try:
        chunks = [c for c in split_chunks(fmt, fd, len(data), 64, 1000, path=str(path)) if c is not None]
    finally:
        os.close(fd)
    assert [(c.first_line, c.too_long) for c in chunks][:2] == [(2, False), (3, True)]
    assert chunks[-1].end == len(data)
    assert all(a.end == b.start for a, b in pairwise(chunks))


def result_of(path: Path, fmt: Format, chunk_bytes: int, limit: int, loaded: Pipeline) -> tuple[bytes, Counter[str]]:
    """The file's result and counts as the daemon makes them: split, then each chunk as a worker runs it."""
    data = path.read_bytes()
    fd = os.open(path, os.O_RDONLY)
    try:
        chunks = [c for c in split_chunks(fmt, fd, len(data), chunk_bytes, limit, path=str(path)) if c is not None]
    finally:
        os.close(fd)
    out, total = b"", Counter[str]()
    for c in chunks:
        piece, counts = (too_long_output(c, limit, loaded.names) if c.too_long else
                         process_chunk(data[c.start:c.end], c.first_line, loaded, [], fmt, c.index == 0))
        out += piece
        total.update(counts)
    return out, total


_OVER = 40  # spool.max_line_bytes of the over-long record tests
_LONG_RECORDS = st.sampled_from([
    b"192.0.2.9," + b"z" * 60 + b"\n",                       # one physical line
    b'192.0.2.9,"' + b"z" * 60 + b'",deny\r\n',               # one quoted field
    b'192.0.2.9,"' + b"zzzzzzz\n" * 8 + b'",deny\n',          # quoted newlines past the limit
    b'192.0.2.9,"unterminated\n' + b"q\n" * 30,              # a quote that never closes
    b"192.0.2.9," + b"z" * 39 + b"\n",                       # exactly over: 51 bytes with its newline
])


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(before=st.lists(st.sampled_from([b"192.0.2.1,a\n", b'198.51.100.7,"b\nc"\n', b"x,y\n", b"\n"]), max_size=6),
       long=_LONG_RECORDS, carry=st.booleans(),
       after=st.lists(st.sampled_from([b"192.0.2.2,d\n", b'"2001:db8::1",e\n', b"bad,f\n"]), max_size=6))
def test_an_over_long_record_gives_one_result_for_every_chunk_size(
    tmp_path: Path, before: list[bytes], long: bytes, carry: bool, after: list[bytes],
) -> None:
    """A record over spool.max_line_bytes among short ones, split at every chunk size from 1 byte to past the
    file's end: the same result bytes and counts each time (one error record, the same message and preview,
    every physical line counted), and the same as reading the body as one chunk without the splitter."""
    data = b"ip,note\n" + b"".join(before) + long + b"".join(after)
    path = tmp_path / "f.csv"
    path.write_bytes(data)
    config = parse_config({"spool": {"max_line_bytes": _OVER},
                           "inputs": [{"match": "*", "format": "delimited", **({"carry": ["note"]} if carry else {})}]})
    fmt = select(config, "f.csv", data, len(data))
    loaded = load_pipeline(config)
    whole, whole_counts = process_chunk(data[fmt.body_start:], fmt.header_lines + 1, loaded, [], fmt)
    errors = [r for r in map(orjson.loads, whole.splitlines()) if r.get("error", "").startswith("record too long")]
    assert [e["line"] for e in errors][:1] == [2 + len(before) + b"".join(before).count(b'"b\nc"')]
    assert whole_counts["error.line_too_long"] == len(errors) >= 1
    assert whole_counts["lines"] == data.count(b"\n") - 1 + (not data.endswith(b"\n"))
    for chunk_bytes in range(1, len(data) + 2):
        assert result_of(path, fmt, chunk_bytes, _OVER, loaded) == (whole, whole_counts), chunk_bytes


def test_chunks_end_only_where_records_end_even_when_records_outgrow_the_read_ahead(tmp_path: Path) -> None:
    """Long quoted records near the limit, split at every size: each boundary is one records() finds."""
    body = b"".join(b'192.0.2.%d,"%s",x\n' % (n, b"\n".join([b"y" * 25] * (n % 4 + 1))) for n in range(40))
    data = b"ip,note,action\n" + body
    path = tmp_path / "f.csv"
    path.write_bytes(data)
    config = parse_config({"spool": {"max_line_bytes": 64}})
    fmt = select(config, "f.csv", data, len(data))
    ends = {fmt.body_start}
    offset = fmt.body_start
    for _, _, end, _, _ in records(split_lines_kept(data[fmt.body_start:]), ",", 64):
        ends.add(offset + end)
    for chunk_bytes in range(1, 200):
        chunks = chunks_of(path, fmt, chunk_bytes)
        assert {c.start for c in chunks} | {c.end for c in chunks} <= ends, chunk_bytes


@settings(max_examples=300, deadline=None)
@given(data=st.binary().map(lambda b: b.replace(b"\x00", b"")) | st.text(st.sampled_from(list('a,;"\r\n '))).map(
    str.encode), limit=st.integers(1, 40))
def test_the_quick_readers_agree_with_the_careful_one(data: bytes, limit: int) -> None:
    """quote_free_rows and csv_rows, when they answer, give exactly what records() gives on any bytes."""
    careful = list(records(split_lines_kept(data), ",", limit))
    quick = quote_free_rows(data, ",", limit)
    if quick is not None:
        assert [(before, lines, fields) for before, lines, _, fields, _ in careful] == [
            (n, 1, fields) for n, fields in enumerate(quick)]
    parsed = csv_rows(data, ",", limit)
    if parsed is not None:
        assert [(before, lines, fields) for before, lines, _, fields, _ in careful] == parsed
