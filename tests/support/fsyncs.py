"""Spools under tmp_path for in-process tests, and a record of what gets fsync'd."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from ipspool.spool import Spool

__all__ = ["SyncLog", "fail_fsync", "open_spool", "open_under", "record_fsyncs"]


class SyncLog:
    """Each os.fsync call, as the path its descriptor names (read from /proc/self/fd)."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.paths: list[str] = []

    def __call__(self, fd: int) -> None:
        target = Path(os.readlink(f"/proc/self/fd/{fd}"))
        try:
            self.paths.append(str(target.relative_to(self.base)))
        except ValueError:
            self.paths.append(str(target))

    def clear(self) -> None:
        self.paths.clear()


def record_fsyncs(monkeypatch: pytest.MonkeyPatch, base: Path) -> SyncLog:
    """Replace os.fsync by a recorder; paths are shown relative to ``base``."""
    log = SyncLog(base)
    monkeypatch.setattr(os, "fsync", log)
    return log


def fail_fsync(monkeypatch: pytest.MonkeyPatch, suffix: str) -> None:
    """Make os.fsync fail with EIO for a descriptor whose path ends with ``suffix``; others go on to
    whatever os.fsync was (the real one, or a recorder)."""
    inner = os.fsync

    def fsync(fd: int) -> None:
        if os.readlink(f"/proc/self/fd/{fd}").endswith(suffix):
            raise OSError(errno.EIO, "Input/output error")
        inner(fd)
    monkeypatch.setattr(os, "fsync", fsync)


def open_spool(tmp_path: Path) -> Spool:
    """A spool at tmp_path/spool with results in tmp_path/results, created and open."""
    spool = Spool(tmp_path / "spool", tmp_path / "results")
    spool.create()
    spool.open()
    return spool


def open_under(base: Path) -> list[str]:
    """What this process's descriptors name under ``base``: a leak check others' descriptors cannot upset."""
    names = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue  # the descriptor of the listing itself, closed by now
        if target.startswith(f"{base}/") or target == str(base):
            names.append(target)
    return sorted(names)
