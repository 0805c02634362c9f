"""File-system calls the standard library lacks."""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os

__all__ = ["rename_noreplace", "rename_noreplace_at", "write_all"]

_AT_FDCWD = -100
_RENAME_NOREPLACE = 1
_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_renameat2 = getattr(_libc, "renameat2", None)


def _renameat2_noreplace(src_dir_fd: int, src: str, dst_dir_fd: int, dst: str) -> bool:
    """renameat2(RENAME_NOREPLACE); False where the call or the flag is unsupported."""
    if _renameat2 is None:
        return False
    rc = _renameat2(src_dir_fd, os.fsencode(src), dst_dir_fd, os.fsencode(dst), _RENAME_NOREPLACE)
    if rc == 0:
        return True
    err = ctypes.get_errno()
    if err == errno.EEXIST:
        raise FileExistsError(err, os.strerror(err), dst)
    if err in (errno.EINVAL, errno.ENOSYS):
        return False
    raise OSError(err, os.strerror(err), src)


def rename_noreplace(src: str, dst: str) -> None:
    """rename(2) that fails with FileExistsError instead of replacing ``dst``.

    A rename (unlike link) is reported by inotify as a move, which the
    watcher acts on at once. Where renameat2(2) is missing or the filesystem
    refuses RENAME_NOREPLACE, fall back to link+unlink, which is just as
    safe but is only noticed by the next rescan.
    """
    if _renameat2_noreplace(_AT_FDCWD, src, _AT_FDCWD, dst):
        return
    os.link(src, dst)
    os.unlink(src)


def rename_noreplace_at(src: str, dst: str, src_dir_fd: int, dst_dir_fd: int) -> None:
    """``rename_noreplace`` between directories held open by descriptor.

    The entry may be anything (a directory or a symlink refused as an input
    moves too), so the fallback is not link+unlink but a check followed by
    rename(2): only the daemon writes the directories this is used in.
    """
    if _renameat2_noreplace(src_dir_fd, src, dst_dir_fd, dst):
        return
    try:
        os.stat(dst, dir_fd=dst_dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        os.rename(src, dst, src_dir_fd=src_dir_fd, dst_dir_fd=dst_dir_fd)
        return
    raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), dst)


def write_all(fd: int, data: bytes) -> None:
    """write(2) until every byte is written: a short write is not an error."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
