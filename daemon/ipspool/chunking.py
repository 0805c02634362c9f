"""Splitting a file into chunks: byte ranges that start and end on lines.

A chunk owns whole lines and knows the number of its first line, so results
come out numbered and in order no matter which worker computed them. The
splitter is a generator the supervisor pulls from only as fast as it hands
chunks out, so a 1 GB file never stalls the main loop or sits in memory.

A line too long to be worth reading (longer than ``max_line_bytes``) that
crosses a chunk boundary becomes a chunk of its own marked ``too_long``; the
worker writes its error record without reading it. Shorter over-long lines
inside a chunk are caught by the line parser, and cannot exceed the chunk.

Finding the end of such a line may mean scanning hundreds of megabytes.
``split_steps`` does that in pieces of ``SCAN_STEP`` bytes, yielding None
("not yet") between them, so the supervisor's loop keeps turning while a
cold disk is read; ``split_file`` is the same without the pauses.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ipspool.config import Config
    from ipspool.formats.spec import Format

__all__ = ["MIN_SPLIT", "SCAN_STEP", "Chunk", "chunk_bytes_for", "count_newlines", "split_file", "split_steps"]

MIN_SPLIT = 16384  # a lone file smaller than this stays one chunk (see chunk_bytes_for)

_READ_BLOCK = 1 << 20
SCAN_STEP = 8 << 20  # bytes of an over-long line scanned between two "not yet"s


@dataclass(frozen=True, slots=True)
class Chunk:
    """A byte range of one file, as it travels to a worker (no payload)."""

    job: int          # the file's sequence number in this supervisor
    index: int        # position of the chunk in its file
    path: str         # the claimed file in active/
    start: int
    end: int
    first_line: int
    too_long: bool = False
    dev: int = 0      # (dev, ino) the supervisor saw; the worker checks it
    ino: int = 0
    # A whole file's only chunk: its part file *is* the result, so the worker
    # fsyncs it. Parts of larger files are fsync'd once, after assembly.
    sync: bool = True
    # How to read the file and write its result; None: plain lines, JSON lines out.
    format: Format | None = None

    @property
    def key(self) -> tuple[int, int]:
        return (self.job, self.index)


def chunk_bytes_for(config: Config, size: int, waiting: int) -> int:
    """workers.chunk_bytes, or less so that a file arriving alone uses every worker.

    Files waiting behind it keep the other workers busy; without them, a
    file under chunk_bytes would be one chunk on one worker, and a slow
    stage (1 ms of CPU or a 10 ms lookup per address) would leave the
    other cores idle. Two chunks per worker even out a worker slowed by a
    noisy neighbour. Below MIN_SPLIT the extra part file and its assembly
    would cost more than they save. The daemon and ``ipspool process`` both
    split by it.
    """
    limit = config.workers.chunk_bytes
    if waiting or size <= MIN_SPLIT:
        return limit
    return max(4096, min(limit, -(-size // (2 * config.process_count))))


def count_newlines(fd: int, start: int, end: int) -> tuple[int, int]:
    """Newlines in [start, end) and the offset just after the last one (or start)."""
    count = 0
    after_last = start
    pos = start
    while pos < end:
        block = os.pread(fd, min(_READ_BLOCK, end - pos), pos)
        if not block:
            break  # the file shrank; the worker will notice the short read
        found = block.count(b"\n")
        if found:
            count += found
            after_last = pos + block.rfind(b"\n") + 1
        pos += len(block)
    return count, after_last


def _find_newline(fd: int, start: int, limit: int, size: int) -> int:
    """Offset of the first newline in [start, min(start+limit, size)), or -1."""
    pos = start
    stop = min(start + limit, size)
    while pos < stop:
        block = os.pread(fd, min(_READ_BLOCK, stop - pos), pos)
        if not block:
            return -1
        at = block.find(b"\n")
        if at >= 0:
            return pos + at
        pos += len(block)
    return -1


def split_file(fd: int, size: int, chunk_bytes: int, max_line_bytes: int, **where: Any) -> Iterator[Chunk]:
    """Yield the chunks of an open file of ``size`` bytes, in order.

    Every line of the file belongs to exactly one chunk (a property test
    checks this for arbitrary bytes and chunk sizes). ``where``: the
    keyword arguments of ``split_steps`` saying which file it is.
    """
    return (chunk for chunk in split_steps(fd, size, chunk_bytes, max_line_bytes, **where) if chunk is not None)


def _end_of_line(fd: int, start: int, size: int) -> Iterator[int | None]:
    """None after each SCAN_STEP bytes without a newline, then the offset after the line."""
    pos = start
    while pos < size:
        newline = _find_newline(fd, pos, SCAN_STEP, size)
        if newline >= 0:
            yield newline + 1
            return
        pos += SCAN_STEP
        if pos < size:
            yield None
    yield size


def split_steps(
    fd: int,
    size: int,
    chunk_bytes: int,
    max_line_bytes: int,
    *,
    job: int = 0,
    path: str = "",
    dev: int = 0,
    ino: int = 0,
) -> Iterator[Chunk | None]:
    """``split_file``, yielding None between bounded pieces of a long scan."""
    index = 0
    pos = 0
    line = 1

    def make(start: int, end: int, first: int, too_long: bool = False) -> Chunk:
        nonlocal index
        chunk = Chunk(job, index, path, start, end, first, too_long, dev, ino, sync=(start, end) == (0, size))
        index += 1
        return chunk

    if size <= chunk_bytes:
        yield make(0, size, 1)
        return
    while pos < size:
        nominal = pos + chunk_bytes
        if nominal >= size:
            yield make(pos, size, line)
            return
        lines_before, line_start = count_newlines(fd, pos, nominal)
        newline = _find_newline(fd, nominal, max_line_bytes + 1, size)
        if newline >= 0 or nominal + max_line_bytes + 1 >= size:
            # The common case: end the chunk at the end of the line that
            # crosses the nominal boundary (or at the end of the file).
            end = newline + 1 if newline >= 0 else size
            yield make(pos, end, line)
            line += lines_before + (1 if newline >= 0 else 0)
            pos = end
            continue
        # The line crossing the boundary is over the limit: close the chunk
        # before it, then hand the long line out alone, unread.
        if line_start > pos:
            yield make(pos, line_start, line)
            line += lines_before
        line_end: int | None = None
        for line_end in _end_of_line(fd, nominal, size):
            if line_end is None:
                yield None
        assert line_end is not None
        yield make(line_start, line_end, line, too_long=True)
        line += 1
        pos = line_end
