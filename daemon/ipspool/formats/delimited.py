"""Delimited files (CSV, TSV, ``;``): one parser for the splitter and the reader.

Python's ``csv`` module reads the records; ``_Feed`` hands it physical lines
(split on ``\\n`` only, kept whole so CRLF and quoted newlines survive) and
counts how many lines and bytes each record took. The supervisor's splitter
runs ``records`` over the file to find where records end, and the worker runs
the same ``records`` over its chunk: since a chunk always starts where a
record starts, both see the same records with the same line numbers, for any
chunk size (a property test checks this against ``csv`` over the whole file).

A record longer than ``max_record_bytes`` (an unterminated quote swallowing
the rest of the file, say) ends at the line where it passed the limit and
becomes an error record, so no record is ever held whole beyond the limit.
The splitter cuts such a record out as a chunk of its own (``too_long``) and
the worker describes it with ``cut_record`` without reading it: the same
error record, line count and preview as ``records`` gives inside a chunk.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Iterable, Iterator
from itertools import accumulate

__all__ = ["Row", "csv_rows", "cut_record", "file_lines", "quote_free_rows", "records", "split_lines_kept",
           "too_long_error"]

_READ_BLOCK = 1 << 20
_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC  # as parts.py opens an input


class _TooLong(Exception):
    """The record in progress passed the limit."""


class _Feed:
    """Physical lines, counted as they are taken, by ``records`` or by ``csv.reader``."""

    __slots__ = ("_lines", "_pending", "count", "limit", "offset", "record_start")

    def __init__(self, lines: Iterable[bytes | int], limit: int) -> None:
        self._lines = iter(lines)
        self._pending: bytes | None = None  # a line taken, then given back for csv to read
        self.count = 0          # lines taken
        self.offset = 0         # bytes taken
        self.record_start = 0   # offset where the record in progress began
        self.limit = limit

    def take(self) -> bytes:
        raw = next(self._lines)
        self.count += 1
        if isinstance(raw, int):  # a line too long to read: only its length (file_lines)
            self.offset += raw
            raise _TooLong
        self.offset += len(raw)
        if self.offset - self.record_start > self.limit:
            raise _TooLong
        return raw

    def give_back(self, raw: bytes) -> None:
        self._pending = raw

    def __iter__(self) -> _Feed:
        return self

    def __next__(self) -> str:
        raw, self._pending = self._pending, None
        if raw is None:
            raw = self.take()
        return raw.decode("utf-8", "replace")


# (lines before it, lines it took, byte offset just after it, its fields or None, the error)
Row = tuple[int, int, int, list[str] | None, str]


def _unquoted(raw: bytes, delimiter: str) -> list[str] | None:
    """The fields of a line csv would only split (no quote, NUL or inner CR); None for the others."""
    body = raw[:-1] if raw.endswith(b"\n") else raw
    if body.endswith(b"\r"):
        body = body[:-1]
    if b'"' in body or b"\r" in body or b"\x00" in body:
        return None
    return body.decode("utf-8", "replace").split(delimiter) if body else []


def records(lines: Iterable[bytes | int], delimiter: str, limit: int) -> Iterator[Row]:
    """Every record of consecutive physical lines that start on a record boundary.

    A line without quotes is split directly; one with a quote is handed to
    ``csv.reader`` with the lines after it, for exactly one record (the
    reader reads no further than the record's end).
    """
    feed = _Feed(lines, limit)
    too_long = too_long_error(limit)
    while True:
        feed.record_start = feed.offset
        before = feed.count
        error = ""
        try:
            raw = feed.take()
            fields = _unquoted(raw, delimiter)
            if fields is None:
                feed.give_back(raw)
                fields = next(csv.reader(feed, delimiter=delimiter))
        except StopIteration:
            return
        except _TooLong:
            fields, error = None, too_long
        except csv.Error as exc:
            fields, error = None, f"not a valid {_name(delimiter)} record: {exc}"
        yield before, feed.count - before, feed.offset, fields, error


def too_long_error(limit: int) -> str:
    """The error of a record over the limit, wherever it was found (one message for any chunking)."""
    return f"record too long: over {limit} bytes (limit spool.max_line_bytes)"


def cut_record(path: str, start: int, end: int, limit: int, preview: int) -> tuple[int, bytes]:
    """(physical lines, first ``preview`` bytes) of the over-long record ``records`` ended at ``[start, end)``.

    Two short reads, however long the record: ``records`` ends a record on
    the line that takes it past ``limit``, so every line before that one
    lies within the first ``limit`` bytes, and that line ends at ``end``.
    """
    fd = os.open(path, _OPEN_FLAGS)
    try:
        head = os.pread(fd, min(max(limit, preview), end - start), start)
    finally:
        os.close(fd)
    return head[:limit].count(b"\n") + 1, head[:preview]


def _name(delimiter: str) -> str:
    return {",": "CSV", "\t": "TSV"}.get(delimiter, f"{delimiter!r}-delimited")


def split_lines_kept(data: bytes) -> list[bytes]:
    """Physical lines with their ``\\n`` (the last one may lack it)."""
    parts = data.split(b"\n")
    last = parts.pop()
    lines = [part + b"\n" for part in parts]
    if last:
        lines.append(last)
    return lines


def file_lines(fd: int, start: int, end: int, limit: int) -> Iterator[bytes | int]:
    """Physical lines of ``[start, end)`` of an open file, read a block at a time.

    A line longer than ``limit`` is not held: its length stands for it.
    """
    pos = start
    carry = b""
    skipped = 0  # bytes of an over-long line passed so far
    while pos < end:
        block = os.pread(fd, min(_READ_BLOCK, end - pos), pos)
        if not block:
            break  # the file shrank; the worker will notice the short read
        pos += len(block)
        if skipped:
            newline = block.find(b"\n")
            if newline < 0:
                skipped += len(block)
                continue
            yield skipped + newline + 1
            skipped, block = 0, block[newline + 1:]
        lines = (carry + block).split(b"\n")
        carry = lines.pop()
        for line in lines:
            yield line + b"\n" if len(line) < limit else len(line) + 1
        if len(carry) > limit:
            skipped, carry = len(carry), b""
    if skipped:
        yield skipped
    elif carry:
        yield carry



def quote_free_rows(data: bytes, delimiter: str, limit: int) -> list[list[str]] | None:
    """The fields of every line of a chunk ``records`` would only split, at ``str.split`` speed.

    None unless the chunk has no quote, NUL or CR other than before a
    newline, and no line reaches the limit: then each line is one record and
    this is exactly what ``records`` (``_unquoted`` on each line) returns.
    """
    if b'"' in data or b"\x00" in data or data.count(b"\r") != data.count(b"\r\n"):
        return None
    lines = data.split(b"\n")
    if lines[-1] == b"":
        lines.pop()
    if not lines or max(map(len, lines)) >= limit:
        return None if lines else []
    text = data.decode("utf-8", "replace").replace("\r\n", "\n").split("\n")
    if text[-1] == "":
        text.pop()
    return [line.split(delimiter) if line else [] for line in text]


def csv_rows(data: bytes, delimiter: str, limit: int) -> list[tuple[int, int, list[str]]] | None:
    """(lines before, lines taken, fields) of every record of a chunk, read by ``csv.reader`` in one go.

    What ``records`` gives (it splits unquoted lines itself and hands quoted
    ones to the same reader) when no record is malformed or too long; None
    as soon as one is, and the caller takes ``records``' careful way.
    """
    ends = [0, *accumulate(len(line) + 1 for line in data.split(b"\n"))]
    reader = csv.reader(io.StringIO(data.decode("utf-8", "replace"), newline="\n"), delimiter=delimiter)
    rows = []
    before = 0
    try:
        for fields in reader:
            taken = reader.line_num
            if ends[taken] - ends[before] > limit:
                return None
            rows.append((before, taken - before, fields))
            before = taken
    except csv.Error:
        return None
    return rows
