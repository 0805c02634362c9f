"""The messages between the supervisor and an executor's workers, as types.

Every message is a small frozen dataclass, matched by type on both ends
(``match message: case Done(...)``), so mypy checks each field and no tuple
is unpacked by position. The supervisor sends ``ToWorker`` messages down a
worker's pipe and receives ``FromWorker`` messages back; an executor turns
what its workers say into ``ExecutorEvent``s for the job book, so the job
book never learns where a chunk ran.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from ipspool.chunking import Chunk

__all__ = [
    "Alert",
    "ChunkKey",
    "Done",
    "ExecutorEvent",
    "Failed",
    "FromWorker",
    "Halted",
    "Heartbeat",
    "Lost",
    "Ready",
    "Refresh",
    "RunChunk",
    "Started",
    "Stop",
    "ToWorker",
    "UnitExited",
]

ChunkKey = tuple[int, int]          # (job sequence number, chunk index)
Alert = tuple[int, str, list[str]]  # (line, ip, names of alerting lists)


class Heartbeat(Protocol):
    """A worker's progress stamp (Clock.monotonic()), shared with the supervisor (a RawValue("d"))."""

    value: float


# -- supervisor -> worker ---------------------------------------------------

@dataclass(frozen=True, slots=True)
class RunChunk:
    """Process this chunk (a byte range of a claimed file) into a part file."""

    chunk: Chunk


@dataclass(frozen=True, slots=True)
class Refresh:
    """The configuration is unchanged: re-read data files (lists, databases) in place."""


@dataclass(frozen=True, slots=True)
class Stop:
    """Finish what you hold, then exit 0."""


ToWorker = RunChunk | Refresh | Stop


# -- worker -> supervisor (and executor -> job book) --------------------------

@dataclass(frozen=True, slots=True)
class Ready:
    """The worker loaded its pipeline and takes chunks."""

    pid: int


@dataclass(frozen=True, slots=True)
class Started:
    """A chunk is in progress: if the worker dies now, the chunk is charged an attempt."""

    key: ChunkKey


@dataclass(frozen=True, slots=True)
class Done:
    """A chunk's records are in ``part`` (written, and fsync'd if ``chunk.sync``)."""

    key: ChunkKey
    part: str
    counts: dict[str, int]
    alerts: list[Alert] = field(default_factory=list)
    worker: int = -1  # which worker (slot) did it, for the log


@dataclass(frozen=True, slots=True)
class Failed:
    """A chunk cannot be processed for a reason of its file (or, with ``retry``, of the disk)."""

    key: ChunkKey
    reason: str
    detail: str
    retry: bool = False


FromWorker = Ready | Started | Done | Failed


# -- executor -> coordinator and job book -------------------------------------

@dataclass(frozen=True, slots=True)
class Lost:
    """The executor lost a chunk (its worker died); ``started`` says whether it was in progress."""

    chunk: Chunk
    started: bool
    cause: str


@dataclass(frozen=True, slots=True)
class UnitExited:
    """A worker is gone (its row leaves the worker table)."""

    pid: int


@dataclass(frozen=True, slots=True)
class Halted:
    """Workers cannot start: the daemon must stop instead of looping."""

    reason: str


ExecutorEvent = Done | Failed | Lost | UnitExited | Halted
