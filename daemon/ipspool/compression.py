"""Compressed inputs: recognised by their first bytes, expanded once, streamed.

A compressed input cannot be split into byte ranges (a range of a gzip
stream is not a range of its lines), so it is decompressed once into a plain
file beside the parts, fsync'd, then split like any other input; every core
then shares it. ``expand`` streams: it holds one piece of output at a time,
whatever the ratio, and stops

- at ``limit`` bytes of output (a decompression bomb): ``decompressed_too_large``;
- on a corrupt or truncated stream: ``corrupt_compressed``;
- when the filesystem it writes to would keep less than ``keep_free`` bytes
  free, or is full: ``NoRoom`` (the disk's fault, retried later);
- when ``abandon`` is set (the daemon is stopping): ``InterruptedError``.

Whatever stops it, the partial output is removed. The kind is taken from the
magic bytes, never from the name: ``x.txt`` that is gzip is gzip, and
``x.gz`` that is plain text is plain text.
"""

from __future__ import annotations

import bz2
import errno
import gzip
import lzma
import os
import threading
import zlib
from collections.abc import Callable
from typing import BinaryIO, Protocol

__all__ = ["KINDS", "SNIFF_BYTES", "CorruptInput", "NoRoom", "Reader", "TooLarge", "decompressed_name", "expand",
           "open_stream", "sniff"]

# (magic, kind): gzip RFC 1952 2.3.1; bzip2 "BZh" + block size digit; xz
# (tukaani xz-file-format 2.1.1.1); zstd frame magic 0xFD2FB528 little-endian
# (RFC 8878 3.1.1).
KINDS: tuple[tuple[bytes, str], ...] = (
    (b"\x1f\x8b", "gzip"),
    (b"BZh", "bzip2"),
    (b"\xfd7zXZ\x00", "xz"),
    (b"\x28\xb5\x2f\xfd", "zstd"),
)
SNIFF_BYTES = 6
PIECE = 1 << 20            # bytes of output held at a time
_ROOM_EVERY = 64 << 20     # bytes written between two free-space checks
_OUT_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


class CorruptInput(Exception):
    """The compressed stream is corrupt or truncated (``corrupt_compressed``).

    A plain exception, not a frozen dataclass: code that sets an exception's
    ``__traceback__`` (contextlib, futures) must be able to.
    """

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(reason, detail)
        self.reason = reason
        self.detail = detail


class TooLarge(CorruptInput):
    """More output than the configured cap (``decompressed_too_large``)."""


class NoRoom(OSError):
    """The output filesystem is full or under its free-space floor: retry later."""


def sniff(head: bytes) -> str | None:
    """The compression of a file starting with ``head`` (``SNIFF_BYTES`` suffice), or None for plain."""
    for magic, kind in KINDS:
        if head.startswith(magic):
            if kind == "bzip2" and not (len(head) > 3 and head[3:4] in b"123456789"):
                return None  # "BZh" alone is text that happens to start so
            return kind
    return None


class Reader(Protocol):
    """What ``open_stream`` returns: reads of bounded size."""

    def read(self, size: int = -1, /) -> bytes: ...


def open_stream(kind: str, raw: BinaryIO) -> Reader:
    """A reader of the decompressed bytes of ``raw`` (multi-member and multi-frame streams included)."""
    if kind == "gzip":
        return gzip.GzipFile(fileobj=raw, mode="rb")
    if kind == "bzip2":
        return bz2.BZ2File(raw, "rb")
    if kind == "xz":
        return lzma.LZMAFile(raw, "rb")
    if kind == "zstd":
        return _ZstdReader(raw)
    raise ValueError(f"unknown compression {kind!r}")


class _ZstdReader:
    """Frames of a zstd file, one after another, and an error if the last is cut short.

    zstandard's own stream reader returns a truncated frame's output without
    a word, so this feeds a decompression object small pieces of input (the
    output of one piece is at most ~32,000 times its size: 32 MiB for 1 KiB,
    a zstd block's best ratio) and checks that the stream ends at a frame's end.
    """

    _FEED = 1024

    def __init__(self, raw: BinaryIO) -> None:
        import zstandard

        self.raw = raw
        self.new = zstandard.ZstdDecompressor().decompressobj
        self.error = zstandard.ZstdError
        self.obj = self.new()
        self.fed = False        # input went into the current frame
        self.buffer = bytearray()

    def read(self, size: int = -1, /) -> bytes:
        while len(self.buffer) < size and self.fill():
            pass
        out = bytes(self.buffer[:size])
        del self.buffer[:size]
        return out

    def fill(self) -> bool:
        data = self.raw.read(self._FEED)
        if not data:
            if self.fed:
                raise self.error("the stream ends inside a frame (truncated)")
            return False
        while data:
            self.fed = True
            self.buffer += self.obj.decompress(data)
            data = b""
            if self.obj.eof:
                data = self.obj.unused_data  # the next frame, or trailing bytes that must be one
                self.obj = self.new()
                self.fed = False
        return True


def _stream_errors() -> tuple[type[BaseException], ...]:
    import zstandard

    return (EOFError, zlib.error, gzip.BadGzipFile, lzma.LZMAError, zstandard.ZstdError)


def _free_bytes(fd: int) -> int:
    st = os.fstatvfs(fd)
    return st.f_bavail * st.f_frsize


def expand(
    kind: str,
    src_fd: int,
    out_path: str,
    *,
    limit: int,
    keep_free: int = 0,
    abandon: threading.Event | None = None,
    progress: Callable[[int], None] | None = None,
) -> int:
    """Decompress the open ``src_fd`` into a new file ``out_path``, fsync it; its size.

    ``src_fd`` is read from offset 0 through a duplicate, so the caller's
    descriptor stays its own. On any exception the output is removed.
    """
    out = os.open(out_path, _OUT_FLAGS, 0o640)
    try:
        size = _copy_out(kind, src_fd, out, limit, keep_free, abandon, progress)
        os.fsync(out)
    except OSError as exc:
        _discard(out, out_path)
        if exc.errno in (errno.ENOSPC, errno.EDQUOT) and not isinstance(exc, NoRoom):
            raise NoRoom(exc.errno, f"writing the decompressed copy: {exc.strerror}") from None
        raise
    except BaseException:
        _discard(out, out_path)
        raise
    os.close(out)
    return size


def _discard(fd: int, path: str) -> None:
    os.close(fd)
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _copy_out(kind: str, src_fd: int, out: int, limit: int, keep_free: int,
              abandon: threading.Event | None, progress: Callable[[int], None] | None) -> int:
    errors = _stream_errors()
    with os.fdopen(os.dup(src_fd), "rb", buffering=PIECE) as raw:
        raw.seek(0)
        stream = open_stream(kind, raw)
        written = 0
        next_check = 0
        while True:
            if abandon is not None and abandon.is_set():
                raise InterruptedError("the daemon is stopping")
            if written >= next_check:
                if keep_free and _free_bytes(out) < keep_free:
                    raise NoRoom(errno.ENOSPC, f"less than alerts.disk_low_bytes={keep_free} bytes would be "
                                               "left free for the decompressed copy")
                next_check = written + _ROOM_EVERY
            try:
                piece = stream.read(PIECE)
            except errors as exc:
                raise CorruptInput("corrupt_compressed", f"{kind} stream is corrupt or truncated after "
                                                         f"{written} bytes of output: {exc}") from None
            except OSError as exc:
                # bz2 and gzip report bad data as a bare OSError ("Invalid data stream").
                if exc.errno is None:
                    raise CorruptInput("corrupt_compressed", f"{kind} stream is corrupt: {exc}") from None
                raise
            if not piece:
                return written
            written += len(piece)
            if written > limit:
                raise TooLarge("decompressed_too_large", (
                    f"{kind} input decompresses to more than spool.max_decompressed_bytes={limit} bytes "
                    "(a decompression bomb?)"))
            view = memoryview(piece)
            while view:
                view = view[os.write(out, view):]
            if progress is not None:
                progress(written)


_COMPRESSED_SUFFIXES = (".gz", ".gzip", ".bz2", ".xz", ".zst", ".zstd")


def decompressed_name(name: str) -> str:
    """The name a compressed input's content is read by: ``export.csv.gz`` is read as ``export.csv``."""
    lowered = name.lower()
    for suffix in _COMPRESSED_SUFFIXES:
        if lowered.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return name
