"""A results-disk outage: when it began, how long to wait before the next try.

Shared by the job book (a chunk whose part could not be written waits,
without being charged an attempt: a full disk is not the chunk's fault) and
the committer (a publish that failed waits too). The first failure of an
outage logs ``disk.full``; the first success after it logs
``disk.recovered``. While an outage lasts, intake claims nothing new, so
the backlog stays in incoming/ instead of being dragged into active/.
"""

from __future__ import annotations

from pathlib import Path

from ipspool.clock import Clock
from ipspool.logs import get_logger

__all__ = ["MAX_BACKOFF", "DiskOutage"]

MAX_BACKOFF = 30.0


class DiskOutage:
    def __init__(self, clock: Clock, results_dir: Path) -> None:
        self.clock = clock
        self.results_dir = results_dir
        self.since: float | None = None
        self.log = get_logger()

    @property
    def active(self) -> bool:
        return self.since is not None

    def backoff(self, reason: str, detail: str) -> float:
        """Seconds to wait after a failed results write: 0.5 s, growing with the outage to 30 s."""
        now = self.clock.monotonic()
        if self.since is None:
            self.since = now
            self.log.error("disk.full", reason=reason, detail=detail, results=str(self.results_dir))
        return min(MAX_BACKOFF, 0.5 + (now - self.since) / 2)

    def ok(self) -> None:
        """A write to results/ succeeded: the outage, if any, is over."""
        if self.since is not None:
            self.log.info("disk.recovered", outage=round(self.clock.monotonic() - self.since, 3))
            self.since = None
