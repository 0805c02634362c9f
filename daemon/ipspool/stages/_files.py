"""Noticing that a data file was changed or replaced, for ``refresh()``.

Lists and databases are replaced in place by cron jobs and by geoipupdate,
which writes a temporary file and rename()s it over the old one; the new
inode is what betrays that. An in-place rewrite changes size or mtime.
"""

from __future__ import annotations

import errno
import os
import stat
from typing import BinaryIO, NamedTuple

__all__ = ["FileStamp", "describe_os_error", "open_regular", "stamp_of", "stamp_path"]


class FileStamp(NamedTuple):
    """What identifies one version of a file's contents."""

    device: int
    inode: int
    size: int
    mtime_ns: int


def stamp_of(result: os.stat_result) -> FileStamp:
    return FileStamp(result.st_dev, result.st_ino, result.st_size, result.st_mtime_ns)


def stamp_path(path: str) -> FileStamp | None:
    """The file's stamp now, or None if it cannot be looked at."""
    try:
        return stamp_of(os.stat(path))
    except OSError:
        return None


def open_regular(path: str) -> tuple[BinaryIO, FileStamp]:
    """Open a data file for reading, refusing anything but a regular file.

    O_NONBLOCK keeps a FIFO put in place of a list from hanging the worker; it
    changes nothing for a regular file. The stamp comes from the open file,
    so it describes exactly the contents about to be read.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        result = os.fstat(fd)
        if stat.S_ISREG(result.st_mode):
            return os.fdopen(fd, "rb"), stamp_of(result)
    except BaseException:
        os.close(fd)
        raise
    os.close(fd)
    if stat.S_ISDIR(result.st_mode):
        raise IsADirectoryError(errno.EISDIR, "is a directory", path)
    raise OSError(errno.EINVAL, "not a regular file", path)


def describe_os_error(exc: OSError) -> str:
    """A short reason an operator can act on."""
    if isinstance(exc, FileNotFoundError):
        return "file not found"
    if isinstance(exc, PermissionError):
        return "permission denied (is it readable by the service user?)"
    if isinstance(exc, IsADirectoryError):
        return "is a directory, expected a file"
    return exc.strerror or str(exc)
