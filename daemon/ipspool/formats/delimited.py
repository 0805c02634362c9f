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
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

__all__ = ["Row", "file_lines", "records", "split_lines_kept"]

_READ_BLOCK = 1 << 20


class _TooLong(Exception):
    """The record in progress passed the limit."""


class _Feed:
    """Physical lines into ``csv.reader``, counted as they are taken."""

    __slots__ = ("_lines", "count", "limit", "offset", "record_start")

    def __init__(self, lines: Iterable[bytes | int], limit: int) -> None:
        self._lines = iter(lines)
        self.count = 0          # lines taken
        self.offset = 0         # bytes taken
        self.record_start = 0   # offset where the record in progress began
        self.limit = limit

    def __iter__(self) -> _Feed:
        return self

    def __next__(self) -> str:
        raw = next(self._lines)
        self.count += 1
        if isinstance(raw, int):  # a line too long to read: only its length (file_lines)
            self.offset += raw
            raise _TooLong
        self.offset += len(raw)
        if self.offset - self.record_start > self.limit:
            raise _TooLong
        return raw.decode("utf-8", "replace")


@dataclass(frozen=True, slots=True)
class Row:
    """One record: where it starts (lines before it), how many lines it took, its fields or its error."""

    before: int
    lines: int
    end: int                   # byte offset just after it
    fields: list[str] | None
    error: str = ""


def records(lines: Iterable[bytes | int], delimiter: str, limit: int) -> Iterator[Row]:
    """Every record of consecutive physical lines that start on a record boundary."""
    feed = _Feed(lines, limit)
    reader = csv.reader(feed, delimiter=delimiter)
    while True:
        feed.record_start = feed.offset
        before = feed.count
        error = ""
        try:
            fields: list[str] | None = next(reader)
        except StopIteration:
            return
        except _TooLong:
            fields, error = None, f"record too long: over {limit} bytes (limit spool.max_line_bytes)"
        except csv.Error as exc:
            fields, error = None, f"not a valid {_name(delimiter)} record: {exc}"
        if fields is None:
            # The reader may be mid-record: start a fresh one on the next line.
            reader = csv.reader(feed, delimiter=delimiter)
        yield Row(before, feed.count - before, feed.offset, fields, error)


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
