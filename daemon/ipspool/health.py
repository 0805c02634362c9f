"""Health checks that page someone: a spool falling behind, a disk filling up.

Each check is edge-triggered: one warning when a threshold is crossed, then
at most one reminder per ``repeat`` seconds while it stays crossed, and one
info event when it clears, so alert rules can fire and resolve on them
without the journal flooding.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ipspool.config import AlertsConfig
from ipspool.logs import get_logger

__all__ = ["HealthChecks"]


@dataclass
class _Edge:
    active: bool = False
    last_warned: float = float("-inf")


@dataclass
class HealthChecks:
    alerts: AlertsConfig
    results_dir: Path
    repeat: float = 300.0
    free_bytes: int = -1  # the results filesystem's free space at the last look; -1: not known yet
    _edges: dict[str, _Edge] = field(default_factory=dict)

    def _check(self, name: str, now: float, bad: bool, **fields: Any) -> None:
        edge = self._edges.setdefault(name, _Edge())
        log = get_logger()
        if bad and (not edge.active or now - edge.last_warned >= self.repeat):
            log.warning(name, **fields)
            edge.last_warned = now
        elif not bad and edge.active:
            log.info(name + ".cleared", **fields)
        edge.active = bad

    def backlog(self, now: float, waiting: int, oldest_age: float) -> None:
        limits = self.alerts
        too_deep = bool(limits.backlog_files) and waiting > limits.backlog_files
        too_old = bool(limits.backlog_age) and oldest_age > limits.backlog_age
        self._check("spool.backlog", now, too_deep or too_old, files=waiting, oldest_age=round(oldest_age, 1),
                    limit_files=limits.backlog_files, limit_age=limits.backlog_age)

    def disk(self, now: float) -> None:
        try:
            st = os.statvfs(self.results_dir)
        except OSError:
            return
        free = self.free_bytes = st.f_bavail * st.f_frsize
        self._check("disk.low", now, free < self.alerts.disk_low_bytes, path=str(self.results_dir),
                    free_bytes=free, limit_bytes=self.alerts.disk_low_bytes)
