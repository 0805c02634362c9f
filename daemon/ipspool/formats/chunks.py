"""Chunks of a file in any format.

Line formats (plain, JSON lines, free text, networks) are split by
``chunking.split_steps`` as plain files always were; each chunk then carries
the file's ``Format``. A delimited file is split where records end: the
splitter reads the file sequentially (as plain splitting does, to count
lines) and runs the very parser the worker will run (``delimited.records``),
so a quoted newline never falls on a chunk boundary, whatever the chunk
size. Its first chunk starts after the header, which every chunk carries in
its ``Format``. A record over ``max_line_bytes`` becomes a chunk of its own
marked ``too_long``, never read whole, as an over-long plain line does.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

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


def _split_delimited(fmt: Format, fd: int, size: int, chunk_bytes: int, *,
                     job: int, path: str, dev: int, ino: int) -> Iterator[Chunk | None]:
    start = fmt.body_start
    line = fmt.header_lines + 1
    index = 0

    def make(begin: int, end: int, first: int, too_long: bool = False, alone: bool = False) -> Chunk:
        nonlocal index
        index += 1
        return Chunk(job, index - 1, path, begin, end, first, too_long, dev, ino, sync=alone, format=fmt)

    if size - start <= chunk_bytes:
        yield make(start, max(start, size), line, alone=True)
        return
    pos, first = start, line
    rows = delimited.records(delimited.file_lines(fd, start, size, fmt.max_record_bytes), fmt.delimiter,
                             fmt.max_record_bytes)
    row_start = start
    for row in rows:
        row_end = start + row.end
        if row.fields is None and row_end - row_start > fmt.max_record_bytes:
            # Too long to read: the records before it, then it alone, unread.
            if row_start > pos:
                yield make(pos, row_start, first)
            yield make(row_start, row_end, line + row.before, too_long=True)
            pos, first = row_end, line + row.before + row.lines
        elif row_end - pos >= chunk_bytes and row_end < size:
            yield make(pos, row_end, first)
            pos, first = row_end, line + row.before + row.lines
        row_start = row_end
    if pos < size or index == 0:
        yield make(pos, size, first, alone=index == 0)
