"""Intake: from names in incoming/ to claimed, checked inputs.

Names arrive from the watch (``fresh``: a producer just renamed a file in)
and from scans of incoming/ (``backlog``: files there at start-up, or whose
events inotify dropped). Claims alternate between the two, so a file dropped
into an idle-looking spool is not stuck behind a 100,000-file backlog found
at start-up. Inputs interrupted by a crash (``recovered``) go first.

A scan offers a name only once it has settled: modified more than
``SETTLE`` seconds ago, or seen unchanged by an earlier scan (so a file whose
mtime lies in the future is still claimed, one scan later).

A file in a producer subdirectory is named ``SUB/NAME`` here (``Spool.scan_incoming``).
A claim is the rename incoming/NAME (or incoming/SUB/NAME) -> active/JOB; the claimed file is then
opened without following links or blocking and checked (``Spool.inspect``).
One that may not be read goes to failed/ with its reason, unread.
"""

from __future__ import annotations

import errno
from collections import Counter, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from ipspool.clock import Clock
from ipspool.logs import get_logger
from ipspool.spool import Claimed, InputRejected, Spool, job_origin
from ipspool.watcher import OVERFLOW, SUBDIR

__all__ = ["SETTLE", "Intake"]

SETTLE = 1.0   # a scan skips files modified this recently (they may still be written)


@dataclass(frozen=True)
class _Sighting:
    mtime: float
    first_seen: float


class Intake:
    def __init__(self, spool: Spool, clock: Clock, totals: Counter[str], max_file_bytes: int) -> None:
        self.spool = spool
        self.clock = clock
        self.totals = totals
        self.max_file_bytes = max_file_bytes
        self.owner_ok: Callable[[int], bool] | None = None  # spool.check_owner (Supervisor.start)
        self.log = get_logger()
        self.backlog: deque[tuple[str, float]] = deque()
        self.fresh: deque[tuple[str, float]] = deque()
        self.prefer_fresh = True
        self.waiting: set[str] = set()
        self.recovered: deque[str] = deque()
        self.unclaimable: dict[str, float] = {}  # names whose rename failed, with their mtime
        self.sightings: dict[str, _Sighting] = {}  # unsettled names seen by a scan
        self.paused_for = ""  # why claiming is paused (results disk outage), or ""
        self.follow: Callable[[Mapping[str, object]], list[str]] = lambda subdirs: []  # the watch (Supervisor.start)
        self.unwatched: set[str] = set()  # subdirectories read by scans only (warned about once)
        self.over_cap: set[str] = set()  # subdirectories past spool.max_subdirs (warned about once)
        self.unreadable: set[str] = set()  # subdirectories a scan could not read (warned about once)

    # -- names in --------------------------------------------------------------

    def take_names(self, names: list[str]) -> str:
        """Names from the watch; why a rescan is due now ("overflow": inotify dropped events,
        "subdir": a directory appeared in incoming/), or ""."""
        why = ""
        for name in names:
            if name == OVERFLOW:
                why = "overflow"
            elif name == SUBDIR:
                why = why or "subdir"
            else:
                self.offer(name, self.clock.time(), fresh=True)
        return why

    def offer(self, name: str, seen: float, fresh: bool = False) -> None:
        if name not in self.waiting:
            self.waiting.add(name)
            (self.fresh if fresh else self.backlog).append((name, seen))

    def rescan(self) -> int:
        """Offer every settled name in incoming/ not waiting yet; how many were new."""
        now = self.clock.time()
        found = 0
        present: set[str] = set()
        try:
            for name, mtime in self.spool.scan_incoming():
                present.add(name)
                if self.unclaimable.get(name) == mtime or name in self.waiting:
                    continue
                if self.settled(name, mtime, now):
                    self.offer(name, min(mtime, now))
                    found += 1
        except OSError as exc:
            self.log.error("spool.scan_failed", error=str(exc))
            return 0
        self.watch_subdirs()
        self.unclaimable = {n: m for n, m in self.unclaimable.items() if n in present}
        self.sightings = {n: s for n, s in self.sightings.items() if n in present and n not in self.waiting}
        if found:
            self.log.debug("spool.rescan", found=found, backlog=len(self.waiting))
        return found

    def watch_subdirs(self) -> None:
        """Keep the watch on the subdirectories the scan read; say once which cannot be watched or read."""
        unwatched = set(self.follow(self.spool.incoming.subdirs))
        for sub in sorted(unwatched - self.unwatched):
            self.log.warning("spool.subdir_unwatched", subdir=sub,
                             note="no inotify watch (fs.inotify.max_user_instances?); read by rescans only")
        over = set(self.spool.incoming.over_cap)
        for sub in sorted(over - self.over_cap):
            self.log.warning("spool.subdir_ignored", subdir=sub, max_subdirs=self.spool.incoming.max_subdirs,
                             note="more producer subdirectories than spool.max_subdirs; its files wait")
        unreadable = self.spool.incoming.unreadable
        for sub in sorted(unreadable.keys() - self.unreadable):
            self.log.warning("spool.subdir_unreadable", subdir=sub, error=unreadable[sub],
                             note="the service user needs read and search permission on it; its files wait")
        self.unwatched, self.over_cap, self.unreadable = unwatched, over, set(unreadable)

    def settled(self, name: str, mtime: float, now: float) -> bool:
        if mtime <= now - SETTLE:
            self.sightings.pop(name, None)
            return True
        seen = self.sightings.get(name)
        if seen is None or seen.mtime != mtime:
            self.sightings[name] = _Sighting(mtime, now)
            return False
        return now - seen.first_seen >= SETTLE  # unchanged since an earlier scan

    def backlog_age(self) -> float:
        """Seconds the oldest waiting file has waited (by its mtime or first sighting)."""
        fronts = [q[0][1] for q in (self.backlog, self.fresh) if q]
        return max(0.0, self.clock.time() - min(fronts)) if fronts else 0.0

    def __len__(self) -> int:
        return len(self.waiting)

    # -- claims ----------------------------------------------------------------

    def claim_next(self) -> tuple[str, str] | None:
        """(name it arrived with, job name) of the next input moved into active/, or None."""
        if self.recovered:
            name = self.recovered.popleft()
            return job_origin(name), name
        if self.paused_for:
            return None
        while self.backlog or self.fresh:
            use_fresh = bool(self.fresh) and (self.prefer_fresh or not self.backlog)
            self.prefer_fresh = not self.prefer_fresh
            name, _ = (self.fresh if use_fresh else self.backlog).popleft()
            self.waiting.discard(name)
            try:
                job_name = self.spool.claim(name)
            except OSError as exc:
                # e.g. a producer's directory without write permission for
                # us (moving it needs that): leave it, and skip it until it
                # changes, instead of crashing on every rescan. Other errors
                # (a full disk, EIO) are retried by the next rescan.
                self.log.warning("spool.claim_failed", file=name, error=exc.strerror or str(exc))
                if exc.errno in (errno.EACCES, errno.EPERM):
                    self.unclaimable[name] = self.spool.mtime_in_incoming(name)
                continue
            if job_name is not None:  # None: already gone (a duplicate event)
                return name, job_name
        return None

    def inspect(self, name: str, job_name: str) -> Claimed | None:
        """The claimed input, checked; None when it was rejected to failed/."""
        try:
            return self.spool.inspect(name, job_name, self.max_file_bytes, self.owner_ok)
        except InputRejected as exc:
            self.reject(name, job_name, exc)
            return None

    def reject(self, name: str, job_name: str, exc: InputRejected) -> None:
        self.log.warning("file.rejected", file=name, job=job_name, reason=exc.reason, detail=exc.detail)
        try:
            self.spool.fail(job_name, exc.reason, exc.detail, {"file": name})
        except OSError as error:
            self.log.error("spool.fail_failed", file=name, job=job_name, error=str(error),
                           note="left in active/; retried at the next start")
        self.totals["files_failed"] += 1
