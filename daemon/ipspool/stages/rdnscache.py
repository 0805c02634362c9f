"""The rdns answers every worker shares, on disk so that they survive restarts.

One SQLite database (``rdns.cache_dir``/rdns-cache.sqlite) in WAL mode, one
connection per worker process: readers never wait for the writer, several
workers write in turn (each write is one short transaction, with a busy
timeout), and a crash in the middle of a write leaves the last committed
state (SQLite's journal; ``synchronous=NORMAL`` in WAL mode can lose the
last transactions on a power failure, never corrupt the file: a cache can
afford that). Entries carry the wall-clock time they expire at, so a TTL
holds across restarts. The table is kept under ``max_entries``: when a
worker's writes may have taken it past, the entries that expire first go
(expired ones first of all).
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Final

__all__ = ["CACHE_FILE", "DiskCache", "Entry"]

CACHE_FILE: Final = "rdns-cache.sqlite"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS rdns (
    ip TEXT PRIMARY KEY,
    ptr TEXT,
    status TEXT NOT NULL,
    confirmed INTEGER,
    expires REAL NOT NULL
) WITHOUT ROWID;
"""
_CHUNK: Final = 500  # addresses per SELECT ... IN (...)
_TRIM_TO: Final = 0.9  # a trim leaves the table at this share of max_entries
_OPEN_TRIES: Final = 10   # attempts to open a file another worker is setting up
_OPEN_PAUSE: Final = 0.05  # seconds before the second attempt, doubling up to 1 s


def _busy(exc: sqlite3.OperationalError) -> bool:
    """Is this "database is locked" (another connection holds a lock), not a real fault?"""
    code = getattr(exc, "sqlite_errorcode", None)  # an extended code: its low byte is the primary one
    return (code is not None and code & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)) or "locked" in str(exc)

# (ptr, status, confirmed or None when not checked, expires)
Entry = tuple[str | None, str, bool | None, float]


class DiskCache:
    """The shared cache; methods are thread-safe (one connection, one lock)."""

    def __init__(self, directory: Path, max_entries: int, clock: Callable[[], float]) -> None:
        directory.mkdir(parents=True, exist_ok=True, mode=0o750)
        self.path = directory / CACHE_FILE
        self.max_entries = max_entries
        self._clock = clock
        self._lock = threading.Lock()
        self._db = self._connect()
        # No index on expires: it would double the cost of every write, and only
        # a trim (rare: once the table is full) reads in that order.
        # Rows this worker may have added since the table was last counted.
        self._added = 0

    def _connect(self) -> sqlite3.Connection:
        """The connection, in WAL mode, with the table there.

        Workers start together and open the file together: while one turns a
        new file to WAL (or creates the table), another's statement can get
        "database is locked" at once, without the busy timeout. That is
        retried, a bounded number of times (about 6.5 s in all), so that a
        race at start-up does not leave a worker on its memory cache alone.
        """
        pause = _OPEN_PAUSE
        for attempt in range(_OPEN_TRIES):
            db = sqlite3.connect(self.path, timeout=30.0, isolation_level=None, check_same_thread=False)
            try:
                db.execute("PRAGMA journal_mode=WAL")
                db.execute("PRAGMA synchronous=NORMAL")
                db.executescript(_SCHEMA)
                self._counted = int(db.execute("SELECT count(*) FROM rdns").fetchone()[0])
            except sqlite3.OperationalError as exc:
                db.close()
                if attempt == _OPEN_TRIES - 1 or not _busy(exc):
                    raise
            else:
                return db
            time.sleep(pause)
            pause = min(1.0, pause * 2)
        raise AssertionError("unreachable")

    def _count(self) -> int:
        row = self._db.execute("SELECT count(*) FROM rdns").fetchone()
        return int(row[0])

    def get_many(self, ips: Sequence[str]) -> dict[str, Entry]:
        """The unexpired entries among ``ips``."""
        now = self._clock()
        found: dict[str, Entry] = {}
        with self._lock:
            for at in range(0, len(ips), _CHUNK):
                part = ips[at:at + _CHUNK]
                marks = ",".join("?" * len(part))
                rows = self._db.execute(
                    f"SELECT ip, ptr, status, confirmed, expires FROM rdns WHERE ip IN ({marks}) AND expires > ?",  # noqa: S608 - only placeholders
                    (*part, now),
                )
                for ip, ptr, status, confirmed, expires in rows:
                    found[ip] = (ptr, status, None if confirmed is None else bool(confirmed), expires)
        return found

    def put_many(self, entries: Iterable[tuple[str, str | None, str, bool | None, float]]) -> None:
        """Store (ip, ptr, status, confirmed, ttl) rows; a TTL of 0 or less is not stored."""
        now = self._clock()
        rows = [(ip, ptr, status, None if confirmed is None else int(confirmed), now + ttl)
                for ip, ptr, status, confirmed, ttl in entries if ttl > 0]
        if not rows or self.max_entries == 0:
            return
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.executemany("INSERT OR REPLACE INTO rdns VALUES (?, ?, ?, ?, ?)", rows)
                self._added += len(rows)
                # Other workers write too: recount now and then, not only
                # when this worker's own writes may have crossed the bound.
                if (self._counted + self._added > self.max_entries
                        or self._added >= max(1000, self.max_entries // 20)):
                    self._counted, self._added = self._count(), 0
                    if self._counted > self.max_entries:
                        self._trim(now)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def _trim(self, now: float) -> None:
        """Under the lock, in the write transaction: back under the bound."""
        self._db.execute("DELETE FROM rdns WHERE expires <= ?", (now,))
        count = self._count()
        excess = count - int(self.max_entries * _TRIM_TO)
        if count > self.max_entries and excess > 0:
            self._db.execute(
                "DELETE FROM rdns WHERE ip IN (SELECT ip FROM rdns ORDER BY expires LIMIT ?)", (excess,))
            count -= excess
        self._counted, self._added = count, 0

    def __len__(self) -> int:
        with self._lock:
            return self._count()

    def close(self) -> None:
        with self._lock:
            self._db.close()


def open_cache(directory: Path, max_entries: int, clock: Callable[[], float]) -> DiskCache:
    """The cache in ``directory``; OSError or sqlite3.Error when it cannot be opened."""
    os.makedirs(directory, mode=0o750, exist_ok=True)
    return DiskCache(directory, max_entries, clock)
