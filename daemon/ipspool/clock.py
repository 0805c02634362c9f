"""Time, injected: one clock for every decision the daemon makes.

Every part that decides by time (respawn back-off, heartbeat staleness,
disk back-off, stop extension, health alert edges, claim settling) takes a
``Clock`` instead of calling ``time`` itself, so tests drive those
decisions with a fake clock and never sleep. ``SystemClock`` is the real
one; its monotonic reading is CLOCK_MONOTONIC, which is the same in every
process of the machine, so a worker's heartbeat stamp and the supervisor's
reading of it are comparable.
"""

from __future__ import annotations

import time
from typing import Protocol

__all__ = ["SYSTEM_CLOCK", "Clock", "Periodic", "SystemClock"]


class Clock(Protocol):
    def monotonic(self) -> float:
        """Seconds on a clock that never jumps (timers, heartbeats)."""
        ...

    def time(self) -> float:
        """Wall-clock seconds since the epoch (file mtimes, timestamps)."""
        ...


class SystemClock:
    """The machine's clocks."""

    def monotonic(self) -> float:
        return time.monotonic()

    def time(self) -> float:
        return time.time()


SYSTEM_CLOCK = SystemClock()


class Periodic:
    """Named periodic tasks on one clock: ``due(name, seconds)`` says when to run each."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self._last: dict[str, float] = {}

    def due(self, name: str, seconds: float) -> bool:
        """True (and the period restarts) when ``seconds`` passed since the last time."""
        now = self.clock.monotonic()
        if now - self._last.get(name, float("-inf")) >= seconds:
            self._last[name] = now
            return True
        return False

    def next_in(self, name: str, seconds: float, period: float) -> None:
        """Make ``name`` (of the given ``period``) due ``seconds`` from now."""
        self._last[name] = self.clock.monotonic() - period + seconds
