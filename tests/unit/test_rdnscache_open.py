"""Workers open the shared rdns cache together: a lock met while another sets the file up is waited out."""

from __future__ import annotations

import multiprocessing
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest

from ipspool.stages import rdnscache
from ipspool.stages.rdnscache import open_cache


class _LockedOnce:
    """A connection whose first statement meets "database is locked", as a second opener can."""

    failures = 0

    def __init__(self, real: sqlite3.Connection) -> None:
        self.real = real

    def execute(self, sql: str, *args: Any) -> Any:
        if _LockedOnce.failures:
            _LockedOnce.failures -= 1
            raise sqlite3.OperationalError("database is locked")
        return self.real.execute(sql, *args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


def test_a_lock_while_another_worker_sets_the_file_up_is_retried(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Three "database is locked" in a row: the fourth attempt opens it, and the cache works."""
    connect = sqlite3.connect
    opened: list[_LockedOnce] = []

    def flaky(*args: Any, **kwargs: Any) -> _LockedOnce:
        conn = _LockedOnce(connect(*args, **kwargs))
        opened.append(conn)
        return conn

    pauses: list[float] = []
    monkeypatch.setattr(rdnscache.sqlite3, "connect", flaky)
    monkeypatch.setattr(rdnscache.time, "sleep", pauses.append)
    _LockedOnce.failures = 3
    cache = open_cache(tmp_path / "state", 100, time.time)
    assert len(opened) == 4 and pauses == [0.05, 0.1, 0.2]
    cache.put_many([("192.0.2.1", "a.example.", "ok", None, 60.0)])
    assert cache.get_many(["192.0.2.1"])["192.0.2.1"][:2] == ("a.example.", "ok")
    cache.close()


def test_a_lock_that_outlasts_every_attempt_is_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The wait is bounded: after the last attempt the error reaches the stage (memory cache only)."""
    connect = sqlite3.connect
    monkeypatch.setattr(rdnscache.sqlite3, "connect", lambda *a, **k: _LockedOnce(connect(*a, **k)))
    pauses: list[float] = []
    monkeypatch.setattr(rdnscache.time, "sleep", pauses.append)
    _LockedOnce.failures = 1000
    with pytest.raises(sqlite3.OperationalError, match="locked"):
        open_cache(tmp_path / "state", 100, time.time)
    assert len(pauses) == rdnscache._OPEN_TRIES - 1 and sum(pauses) < 7
    _LockedOnce.failures = 0


def test_other_errors_are_not_retried(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / rdnscache.CACHE_FILE).write_bytes(b"not a database, " * 100)
    monkeypatch.setattr(rdnscache.time, "sleep", lambda s: pytest.fail("an error that is no lock was retried"))
    with pytest.raises(sqlite3.DatabaseError):
        open_cache(tmp_path / "state", 100, time.time)


def _open_and_write(directory: str, start: Any, results: Any) -> None:
    start.wait()
    try:
        cache = open_cache(Path(directory), 1000, time.time)
        cache.put_many([(f"198.51.100.{i}", "x.example.", "ok", None, 60.0) for i in range(50)])
        cache.close()
        results.put("ok")
    except Exception as exc:
        results.put(f"{type(exc).__name__}: {exc}")


def test_two_workers_opening_a_new_cache_at_once_both_get_it(tmp_path: Path) -> None:
    """The race itself, 120 times: before the retry, about 1 opening in 60 met "database is locked"."""
    ctx = multiprocessing.get_context("fork")
    outcomes: list[str] = []
    for round_ in range(120):
        start, results = ctx.Barrier(2), ctx.Queue()
        procs = [ctx.Process(target=_open_and_write, args=(str(tmp_path / str(round_)), start, results))
                 for _ in range(2)]
        for proc in procs:
            proc.start()
        outcomes += [results.get(timeout=30) for _ in procs]
        for proc in procs:
            proc.join(30)
    assert set(outcomes) == {"ok"}, [o for o in outcomes if o != "ok"][:3]
