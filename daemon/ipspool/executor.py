"""The executor seam: where chunks run, behind one small interface.

The job book hands chunks to an executor and learns their outcomes as
``ExecutorEvent``s (``Done``, ``Failed``, ``Lost``, ``UnitExited``,
``Halted``), drained once per loop turn. It never learns where a chunk
ran: the forked per-core pool (``ipspool.pool.WorkerPool``) is one
executor; a distributed one implements the same methods, writing the part
file from the result bytes it gets back, so intake, the job book and the
committer stay as they are. Durability lives in the supervisor, never in
an executor: an executor may lose a chunk (it says so with ``Lost``), but it
never publishes, retires or fails a file.

An executor registers its file descriptors (pipes, sockets, a wake-up
pipe for a client thread) with the supervisor's selector in ``start`` and
handles their readiness there; what it learns waits in ``events()``.
"""

from __future__ import annotations

import selectors
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from ipspool.chunking import Chunk
from ipspool.config import Config
from ipspool.protocol import ExecutorEvent

__all__ = ["Census", "Executor"]


@dataclass(frozen=True)
class Census:
    """What an executor runs on now, as ``ipspool status``, STATUS= and the metrics show it.

    ``workers`` and ``threads`` are what is up: forked processes and their
    pools for the local executor, the remote workers and their threads for
    Dask. ``wanted`` is the worker count the configuration asks for (local);
    0 when the cluster decides (Dask).
    """

    kind: str
    workers: int
    threads: int
    inflight: int
    wanted: int = 0
    scheduler: str = ""
    connected: bool = True  # Dask: the scheduler answers; local: always


class Executor(Protocol):
    kind: str

    def start(self, selector: selectors.BaseSelector) -> None:
        """Register with the loop's selector and bring the workers up."""

    def free_slots(self) -> int:
        """How many more chunks it takes now (0 while starting, stopping or full)."""

    def can_run_alone(self) -> bool:
        """An idle worker exists that can run a retry on its own."""

    def submit(self, chunk: Chunk, *, alone: bool = False) -> None:
        """Run a chunk; ``alone``: on an idle worker that takes nothing else meanwhile."""

    def events(self) -> Iterable[ExecutorEvent]:
        """What happened since the last call, in order."""

    def tick(self, now: float) -> None:
        """Timers: heartbeats (kill a silent worker), respawns."""

    def inflight(self) -> int:
        """Chunks handed out and not yet reported."""

    def ready(self) -> bool:
        """Every current worker is up and takes chunks."""

    def healthy(self, now: float) -> bool:
        """Every worker holding work shows progress (systemd's watchdog is fed only then)."""

    def progress_mark(self) -> float:
        """The latest progress stamp among workers holding chunks (stop extension)."""

    def refresh(self) -> None:
        """Same settings, new data files: every worker re-reads them in place."""

    def reconfigure(self, config: Config, generation: int) -> None:
        """New settings: replace every worker gracefully with one of ``generation``."""

    def drain(self) -> None:
        """Stop: no new chunks; workers finish what they hold and exit."""

    def kill(self, reason: str) -> None:
        """Stop now: whatever is in flight is lost (and reported ``Lost``)."""

    def close(self, timeout: float) -> None:
        """Wait up to ``timeout`` for workers to exit; kill what is left."""

    def reopen_logs(self) -> None:
        """logrotate moved the log: every worker reopens its own."""

    def describe(self, now: float) -> list[dict[str, Any]]:
        """The worker table of ``ipspool status``."""

    def alive(self) -> int:
        """Workers up and ready."""

    def census(self) -> Census:
        """Its kind, workers and threads up, chunks in flight."""
