"""Chunks of a file in any format.

Line formats (plain, JSON lines, free text, networks) are split by
``chunking.split_steps`` as plain files always were; each chunk then carries
the file's ``Format``. A delimited file is split where records end: the
splitter reads the file sequentially (as plain splitting does, to count
lines) and runs the very parser the worker will run (``delimited.records``),
so a quoted newline never falls on a chunk boundary, whatever the chunk
size. Its first chunk starts after the header, which every chunk carries in
its ``Format``. A record over ``max_line_bytes`` becomes a chunk of its own
marked ``too_long``, never read whole, as an over-long plain line does; its
error record is the one the worker's reader makes of such a record inside a
chunk (the last chunk is not scanned for one), so it is the same for any
chunk size.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import os
from collections.abc import Callable, Iterator
from itertools import accumulate

from ipspool.chunking import Chunk, split_steps
from ipspool.formats import delimited
from ipspool.formats.spec import Format

__all__ = ["split_chunks"]


def split_chunks(fmt: Format, fd: int, size: int, chunk_bytes: int, max_line_bytes: int, *,
                 job: int = 0, path: str = "", dev: int = 0, ino: int = 0) -> Iterator[Chunk | None]:
    """``split_steps`` for a file of format ``fmt`` (None items: "not yet", as there)."""
    if fmt.kind != "delimited":
        carried = None if fmt.is_default else fmt
        for chunk in split_steps(fd, size, chunk_bytes, max_line_bytes, job=job, path=path, dev=dev, ino=ino):
            yield chunk if chunk is None or carried is None else dataclasses.replace(chunk, format=carried)
        return
    yield from _split_delimited(fmt, fd, size, chunk_bytes, job=job, path=path, dev=dev, ino=ino)


def _quote_free_end(fd: int, pos: int, size: int, chunk_bytes: int, limit: int) -> tuple[int, int] | None:
    """(end, lines) of a chunk from ``pos`` when no quote can be open in it, else None.

    Without a quote and with every line within the limit, each line is one
    record (as ``delimited.records`` reads them), so the chunk may end at the
    first newline past ``chunk_bytes``: the plain splitter's rule, at its speed.
    """
    span = os.pread(fd, min(chunk_bytes + limit + 1, size - pos), pos)
    newline = span.find(b"\n", chunk_bytes - 1)
    if newline < 0:
        return None
    piece = span[:newline + 1]
    if b'"' in piece or max(map(len, piece.split(b"\n"))) >= limit:
        return None
    return pos + newline + 1, piece.count(b"\n")


def _csv_end(fd: int, pos: int, size: int, chunk_bytes: int, fmt: Format) -> tuple[int, int] | None:
    """(end, lines) of a chunk from ``pos`` found by ``csv.reader`` over a span in memory, else None.

    The quick way through a span with quotes: C parses, Python only counts.
    It agrees with ``delimited.records`` (which splits unquoted lines itself
    and hands quoted ones to the same ``csv.reader``) as long as no record is
    too long or malformed and the chunk ends inside the span; otherwise None,
    and ``_scan_one`` takes the careful way.
    """
    span = os.pread(fd, min(2 * chunk_bytes + fmt.max_record_bytes, size - pos), pos)
    complete = len(span) if pos + len(span) == size else span.rfind(b"\n") + 1
    ends = [0, *accumulate(len(line) + 1 for line in span[:complete].split(b"\n"))]
    reader = csv.reader(io.StringIO(span[:complete].decode("utf-8", "replace"), newline="\n"),
                        delimiter=fmt.delimiter)
    before = 0
    try:
        for _ in reader:
            taken = reader.line_num
            if ends[taken] - ends[before] > fmt.max_record_bytes:
                return None
            if ends[taken] >= complete and pos + complete < size:
                return None  # the span's end may have cut this record short: csv cannot tell
            if ends[taken] >= chunk_bytes:
                return pos + min(ends[taken], complete), taken
            before = taken
    except csv.Error:
        return None
    return None


def _split_delimited(fmt: Format, fd: int, size: int, chunk_bytes: int, *,
                     job: int, path: str, dev: int, ino: int) -> Iterator[Chunk | None]:
    index = 0

    def make(begin: int, end: int, first: int, too_long: bool = False, alone: bool = False) -> Chunk:
        nonlocal index
        index += 1
        return Chunk(job, index - 1, path, begin, end, first, too_long, dev, ino, sync=alone, format=fmt)

    pos, first = fmt.body_start, fmt.header_lines + 1
    while size - pos > chunk_bytes:
        fast = (_quote_free_end(fd, pos, size, chunk_bytes, fmt.max_record_bytes)
                or _csv_end(fd, pos, size, chunk_bytes, fmt))
        if fast is not None:
            yield make(pos, fast[0], first)
            pos, first = fast[0], first + fast[1]
            continue
        chunks, pos, first = _scan_one(fmt, fd, pos, first, size, chunk_bytes, make)
        if not chunks:
            break  # the rest is one last chunk
        yield from chunks
    if pos < size or index == 0:
        yield make(pos, size, first, alone=index == 0)


def _scan_one(fmt: Format, fd: int, pos: int, first: int, size: int, chunk_bytes: int,
              make: Callable[..., Chunk]) -> tuple[list[Chunk], int, int]:
    """The next chunk from ``pos`` found by parsing records (a quote is about), and where the next begins.

    A record too long to read becomes a chunk of its own (after one holding
    the records before it). No chunk: the records run to the end of the file.
    """
    limit = fmt.max_record_bytes
    row_start = pos
    for before, lines, end, fields, _ in delimited.records(delimited.file_lines(fd, pos, size, limit),
                                                           fmt.delimiter, limit):
        row_end = pos + end
        if fields is None and row_end - row_start > limit:
            head = [make(pos, row_start, first)] if row_start > pos else []
            return [*head, make(row_start, row_end, first + before, too_long=True)], row_end, first + before + lines
        if row_end - pos >= chunk_bytes and row_end < size:
            return [make(pos, row_end, first)], row_end, first + before + lines
        row_start = row_end
    return [], pos, first
