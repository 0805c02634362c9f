"""The named states of a worker and of a job, with every allowed transition.

A part that changes a state calls ``advance``, which refuses a transition
not listed here: the lifecycle is written down once, in this file, and a
bug that would e.g. publish a failed job stops at the transition instead of
corrupting the spool.
"""

from __future__ import annotations

from enum import Enum
from typing import TypeVar

__all__ = ["IllegalTransition", "JobState", "WorkerState", "advance"]


class WorkerState(Enum):
    STARTING = "starting"   # forked, loading its pipeline; takes no chunks yet
    READY = "ready"         # takes chunks, up to the in-flight cap
    ALONE = "alone"         # runs a retry on its own; takes nothing more until it is done
    RETIRING = "retiring"   # told to stop: finishes what it holds, then exits 0
    KILLED = "killed"       # we sent SIGKILL (timeout, stop, halt); waiting for its exit
    EXITED = "exited"       # reaped


class JobState(Enum):
    SPLITTING = "splitting"  # claimed; the splitter still produces chunks
    RUNNING = "running"      # every chunk produced; parts still outstanding
    COMPLETE = "complete"    # every part is in (a multi-part result may still be joining)
    QUEUED = "queued"        # on the commit queue (never twice)
    DONE = "done"            # result published, input retired
    FAILED = "failed"        # input in failed/ (or left in active/ when even that failed)


_WORKER: dict[WorkerState, frozenset[WorkerState]] = {
    WorkerState.STARTING: frozenset({WorkerState.READY, WorkerState.RETIRING, WorkerState.KILLED,
                                     WorkerState.EXITED}),
    WorkerState.READY: frozenset({WorkerState.ALONE, WorkerState.RETIRING, WorkerState.KILLED,
                                  WorkerState.EXITED}),
    WorkerState.ALONE: frozenset({WorkerState.READY, WorkerState.RETIRING, WorkerState.KILLED,
                                  WorkerState.EXITED}),
    WorkerState.RETIRING: frozenset({WorkerState.KILLED, WorkerState.EXITED}),
    WorkerState.KILLED: frozenset({WorkerState.EXITED}),
    WorkerState.EXITED: frozenset(),
}

_JOB: dict[JobState, frozenset[JobState]] = {
    JobState.SPLITTING: frozenset({JobState.RUNNING, JobState.COMPLETE, JobState.FAILED}),
    JobState.RUNNING: frozenset({JobState.COMPLETE, JobState.FAILED}),
    JobState.COMPLETE: frozenset({JobState.QUEUED, JobState.FAILED}),
    JobState.QUEUED: frozenset({JobState.COMPLETE, JobState.DONE, JobState.FAILED}),
    JobState.DONE: frozenset(),
    JobState.FAILED: frozenset(),
}

_TABLES: dict[type[Enum], dict[WorkerState, frozenset[WorkerState]] | dict[JobState, frozenset[JobState]]] = {
    WorkerState: _WORKER,
    JobState: _JOB,
}

S = TypeVar("S", WorkerState, JobState)


class IllegalTransition(RuntimeError):
    """A part tried a transition the lifecycle does not allow (a bug, never an input's fault)."""


def advance(current: S, new: S) -> S:
    """``new`` if the lifecycle allows current -> new; staying in a state is always allowed."""
    if new is current:
        return new
    table = _TABLES[type(current)]
    if new not in table[current]:  # type: ignore[index]
        raise IllegalTransition(f"{type(current).__name__}: {current.value} -> {new.value} is not allowed")
    return new
