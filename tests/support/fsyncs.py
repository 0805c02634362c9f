"""Spools under tmp_path for in-process tests, and a record of what gets fsync'd."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ipspool.spool import Spool

__all__ = ["SyncLog", "open_spool", "record_fsyncs"]


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


def open_spool(tmp_path: Path) -> Spool:
    """A spool at tmp_path/spool with results in tmp_path/results, created and open."""
    spool = Spool(tmp_path / "spool", tmp_path / "results")
    spool.create()
    spool.open()
    return spool
