"""File-system calls the standard library lacks."""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os

__all__ = ["rename_noreplace"]

_AT_FDCWD = -100
_RENAME_NOREPLACE = 1
_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_renameat2 = getattr(_libc, "renameat2", None)


def rename_noreplace(src: str, dst: str) -> None:
    """rename(2) that fails with FileExistsError instead of replacing ``dst``.

    A rename (unlike link) is reported by inotify as a move, which the
    watcher acts on at once. Where renameat2(2) is missing or the filesystem
    refuses RENAME_NOREPLACE, fall back to link+unlink, which is just as
    safe but is only noticed by the next rescan.
    """
    if _renameat2 is not None:
        rc = _renameat2(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), _RENAME_NOREPLACE)
        if rc == 0:
            return
        err = ctypes.get_errno()
        if err == errno.EEXIST:
            raise FileExistsError(err, os.strerror(err), dst)
        if err not in (errno.EINVAL, errno.ENOSYS):
            raise OSError(err, os.strerror(err), src)
    os.link(src, dst)
    os.unlink(src)
