"""The small deciding parts: periodic timers, lifecycle transitions and the results-disk outage."""

from __future__ import annotations

from pathlib import Path

import pytest
from structlog.testing import capture_logs

from ipspool.clock import SYSTEM_CLOCK, Periodic
from ipspool.outage import DiskOutage
from ipspool.states import IllegalTransition, JobState, WorkerState, advance
from tests.support.fakes import FakeClock


def test_a_periodic_task_is_due_at_once_then_once_per_period() -> None:
    """The first ask is due; then not again until the full period passed, each name on its own."""
    clock = FakeClock()
    periodic = Periodic(clock)
    assert periodic.due("scan", 10.0)
    assert not periodic.due("scan", 10.0)
    assert periodic.due("metrics", 10.0)  # another name has its own period
    clock.advance(9.5)
    assert not periodic.due("scan", 10.0)
    clock.advance(0.5)
    assert periodic.due("scan", 10.0)
    assert not periodic.due("scan", 10.0)


def test_next_in_makes_a_task_due_that_many_seconds_from_now() -> None:
    """After next_in(name, 1, period) the task is due in 1 s, not a period later, and not before."""
    clock = FakeClock()
    periodic = Periodic(clock)
    assert periodic.due("rescan", 10.0)
    clock.advance(2.0)
    periodic.next_in("rescan", 1.0, 10.0)
    clock.advance(0.9)
    assert not periodic.due("rescan", 10.0)
    clock.advance(0.1)
    assert periodic.due("rescan", 10.0)


def test_the_system_clock_reads_the_machine_clocks() -> None:
    """monotonic() never goes back; time() is the epoch time."""
    import time

    first = SYSTEM_CLOCK.monotonic()
    assert SYSTEM_CLOCK.monotonic() >= first
    assert abs(SYSTEM_CLOCK.time() - time.time()) < 5.0


def test_a_refused_transition_names_the_lifecycle_and_both_states() -> None:
    """The error says which machine and which move, so the bug report is specific."""
    with pytest.raises(IllegalTransition, match=r"^JobState: done -> running is not allowed$"):
        advance(JobState.DONE, JobState.RUNNING)
    with pytest.raises(IllegalTransition, match=r"^WorkerState: exited -> ready is not allowed$"):
        advance(WorkerState.EXITED, WorkerState.READY)
    assert advance(JobState.DONE, JobState.DONE) is JobState.DONE


@pytest.mark.parametrize(("current", "allowed"), [
    (JobState.SPLITTING, {JobState.RUNNING, JobState.COMPLETE, JobState.FAILED}),
    (JobState.RUNNING, {JobState.COMPLETE, JobState.FAILED}),
    (JobState.COMPLETE, {JobState.QUEUED, JobState.FAILED}),
    (JobState.QUEUED, {JobState.COMPLETE, JobState.DONE, JobState.FAILED}),
    (JobState.DONE, set()),
    (JobState.FAILED, set()),
])
def test_a_job_moves_only_forward_as_the_architecture_lists(current: JobState, allowed: set[JobState]) -> None:
    """splitting -> running -> complete -> queued -> done, or failed; queued may go back to complete."""
    for new in JobState:
        if new in allowed or new is current:
            assert advance(current, new) is new
        else:
            with pytest.raises(IllegalTransition):
                advance(current, new)


def test_an_outage_logs_disk_full_once_with_its_reason_and_recovery_with_its_length() -> None:
    """disk.full: reason, detail, results directory, on the first failure only; disk.recovered: seconds."""
    clock = FakeClock()
    outage = DiskOutage(clock, Path("/srv/results"))
    with capture_logs() as logs:
        outage.backoff("disk_full", "ENOSPC")
        clock.advance(1.23456)
        outage.backoff("quota", "EDQUOT")
        outage.ok()
        outage.ok()
    assert logs == [
        {"event": "disk.full", "log_level": "error", "reason": "disk_full", "detail": "ENOSPC",
         "results": "/srv/results"},
        {"event": "disk.recovered", "log_level": "info", "outage": 1.235},
    ]
    assert not outage.active
