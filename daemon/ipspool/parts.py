"""A chunk's input and output on disk: its byte range in, its part file out.

``read_chunk`` reads the range of the claimed file the supervisor checked
(same inode, no links followed, never blocking). ``PartWriter`` writes the
result as batches of records are produced, so a worker holds one batch of
output at a time rather than a whole chunk's (results are often 20 times
the size of their input), and it enforces ``spool.max_output_ratio``: a
chunk whose records outgrow that many times its input fails the file as
``result_too_large`` instead of filling the results disk.

Every failure is a ``ChunkFailed`` with a reason; ``retry`` marks the disk's
fault (full, or an I/O error), which the job book retries without charging
the chunk an attempt.
"""

from __future__ import annotations

import errno
import os
from collections import Counter
from dataclasses import dataclass

from ipspool.chunking import Chunk
from ipspool.pipeline import error_record

__all__ = ["OUTPUT_SLACK", "ChunkFailed", "PartWriter", "part_path", "read_chunk", "too_long_record", "write_part"]

OUTPUT_SLACK = 64 << 10   # bytes of output every chunk may have whatever its size (headers of tiny inputs)
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_PART_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass(frozen=True)
class ChunkFailed(Exception):
    """The chunk cannot be processed for a reason of its file (or disk)."""

    reason: str
    detail: str
    retry: bool = False


def part_path(parts_dir: str, pid: int, chunk: Chunk) -> str:
    """Where worker ``pid`` writes the part of ``chunk`` (its pool removes it if the worker dies)."""
    return f"{parts_dir}/{pid}.{chunk.job}.{chunk.index}.part"


def read_chunk(chunk: Chunk) -> bytes:
    """The chunk's bytes, from the file the supervisor claimed and checked."""
    try:
        fd = os.open(chunk.path, _FILE_FLAGS)
    except FileNotFoundError:
        raise ChunkFailed("vanished", "the claimed file disappeared from active/") from None
    except BlockingIOError:
        raise ChunkFailed("leased", "another process took a lease on it after its claim") from None
    except OSError as exc:
        raise ChunkFailed("unreadable", f"cannot open: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if (st.st_dev, st.st_ino) != (chunk.dev, chunk.ino):
            raise ChunkFailed("replaced", "the file in active/ is not the one that was claimed")
        data = os.pread(fd, chunk.end - chunk.start, chunk.start)
    except OSError as exc:
        raise ChunkFailed("unreadable", f"read error: {exc.strerror}") from None
    finally:
        os.close(fd)
    if len(data) != chunk.end - chunk.start:
        raise ChunkFailed("changed", "the file shrank while it was processed (written to incoming/ directly?)")
    return data


def too_long_record(chunk: Chunk, limit: int) -> tuple[bytes, Counter[str]]:
    """The error record for a line we refuse to read, from a short preview."""
    fd = os.open(chunk.path, _FILE_FLAGS)
    try:
        preview = os.pread(fd, 64, chunk.start)
        ends_line = os.pread(fd, 1, chunk.end - 1) == b"\n"
    finally:
        os.close(fd)
    length = chunk.end - chunk.start - ends_line  # the line, without its newline
    counts: Counter[str] = Counter({"lines": 1, "invalid": 1, "error.line_too_long": 1})
    shown = preview.decode("utf-8", "backslashreplace")
    return error_record(chunk.first_line, shown, f"line too long: {length} bytes, limit {limit}"), counts


def _write_error(path: str, exc: OSError) -> ChunkFailed:
    full = exc.errno in (errno.ENOSPC, errno.EDQUOT)
    return ChunkFailed("disk_full" if full else "write_error", f"writing {path}: {exc.strerror}",
                       retry=full or exc.errno == errno.EIO)


class PartWriter:
    """One part file, written batch by batch, fsync'd at the end; removed if anything fails."""

    def __init__(self, path: str, input_bytes: int, ratio: int) -> None:
        self.path = path
        self.limit = ratio * input_bytes + OUTPUT_SLACK
        self.ratio = ratio
        self.written = 0
        try:
            self.fd: int | None = os.open(path, _PART_FLAGS, 0o640)
        except OSError as exc:
            raise ChunkFailed("results_unwritable", f"cannot create {path}: {exc.strerror}", retry=True) from None

    def write(self, data: bytes) -> None:
        assert self.fd is not None
        self.written += len(data)
        if self.written > self.limit:
            self.abort()
            raise ChunkFailed("result_too_large", (
                f"the records outgrew {self.ratio} times the input ({self.limit} bytes for this chunk); "
                "limit spool.max_output_ratio"))
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(self.fd, view):]
        except OSError as exc:
            self.abort()
            raise _write_error(self.path, exc) from None

    def close(self, sync: bool) -> None:
        assert self.fd is not None
        try:
            if sync:
                os.fsync(self.fd)
        except OSError as exc:
            self.abort()
            raise _write_error(self.path, exc) from None
        os.close(self.fd)
        self.fd = None

    def abort(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass


def write_part(path: str, data: bytes, sync: bool = True) -> None:
    """Write (and fsync) one part file whole; ENOSPC/EDQUOT is a retryable failure."""
    writer = PartWriter(path, len(data), 1)
    writer.write(data)
    writer.close(sync)
