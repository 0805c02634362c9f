"""Intake and the stats link when the spool or the Manager misbehaves: fakes, no processes, no sleeps."""

from __future__ import annotations

import errno
import multiprocessing
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from ipspool import reporting
from ipspool.config import load_config
from ipspool.intake import Intake
from ipspool.reporting import StatsLink
from ipspool.spool import Incoming, InputRejected
from tests.support.fakes import FakeClock, FakeSelector


class FakeSpool:
    """incoming/ as a dict of name -> mtime (``files``); each step fails when the test says so."""

    def __init__(self, clock: FakeClock) -> None:
        self.files: dict[str, float] = {}
        self.incoming = Incoming()  # no producer subdirectories
        self.clock = clock
        self.claim_error: OSError | None = None
        self.scan_error: OSError | None = None
        self.fail_error: OSError | None = None
        self.rejected: InputRejected | None = None
        self.claims: list[str] = []
        self.failed: list[str] = []

    def scan_incoming(self) -> Iterator[tuple[str, float]]:
        if self.scan_error is not None:
            raise self.scan_error
        yield from list(self.files.items())

    def mtime_in_incoming(self, name: str) -> float:
        return self.files[name]

    def claim(self, name: str) -> str | None:
        self.claims.append(name)
        if self.claim_error is not None:
            raise self.claim_error
        del self.files[name]
        return name

    def inspect(self, name: str, job_name: str, max_file_bytes: int, owner_ok: Any = None) -> Any:
        if self.rejected is not None:
            raise self.rejected
        return object()

    def fail(self, job_name: str, reason: str, detail: str, extra: dict[str, Any] | None = None) -> str:
        if self.fail_error is not None:
            raise self.fail_error
        self.failed.append(job_name)
        return job_name


def make_intake() -> tuple[Intake, FakeSpool, FakeClock]:
    clock = FakeClock()
    spool = FakeSpool(clock)
    return Intake(spool, clock, Counter(), 1 << 20), spool, clock  # type: ignore[arg-type]


def test_a_name_that_cannot_be_moved_is_logged_and_left_until_it_changes() -> None:
    """spool.claim_failed (EACCES): no claim, no crash; later scans skip it until its mtime changes."""
    intake, spool, clock = make_intake()
    spool.files["dir-of-a-producer"] = clock.time() - 60
    spool.claim_error = PermissionError(errno.EACCES, "Permission denied")
    assert intake.rescan() == 1
    with capture_logs() as logs:
        assert intake.claim_next() is None
    assert [(e["event"], e["file"], e["error"]) for e in logs] == [
        ("spool.claim_failed", "dir-of-a-producer", "Permission denied")]
    assert intake.rescan() == 0  # skipped while unchanged
    spool.files["dir-of-a-producer"] = clock.time() - 30  # it changed: offered again
    spool.claim_error = None
    assert intake.rescan() == 1
    assert intake.claim_next() == ("dir-of-a-producer", "dir-of-a-producer")


def test_an_unlistable_incoming_is_logged_and_the_scan_finds_nothing() -> None:
    """spool.scan_failed: the scan reports nothing and the loop goes on."""
    intake, spool, _ = make_intake()
    spool.scan_error = OSError(errno.EIO, "Input/output error")
    with capture_logs() as logs:
        assert intake.rescan() == 0
    assert [e["event"] for e in logs] == ["spool.scan_failed"]
    assert "Input/output error" in logs[0]["error"]


def test_a_rejected_input_that_cannot_go_to_failed_stays_and_is_counted() -> None:
    """spool.fail_failed: file.rejected, then the move to failed/ fails; the file is counted as failed."""
    intake, spool, clock = make_intake()
    spool.files["fifo"] = clock.time() - 60
    intake.rescan()
    claimed = intake.claim_next()
    assert claimed == ("fifo", "fifo")
    spool.rejected = InputRejected("not_regular_file", "a FIFO")
    spool.fail_error = OSError(errno.EROFS, "Read-only file system")
    with capture_logs() as logs:
        assert intake.inspect(*claimed) is None
    assert [e["event"] for e in logs] == ["file.rejected", "spool.fail_failed"]
    assert logs[1]["job"] == "fifo" and "Read-only file system" in logs[1]["error"]
    assert "next start" in logs[1]["note"]
    assert intake.totals["files_failed"] == 1 and spool.failed == []


def test_a_manager_that_cannot_start_is_logged_and_retried_later(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """stats.start_failed: no client, and the next attempt is scheduled 5 s on."""
    def refuse(*args: object, **kwargs: object) -> None:
        raise OSError(errno.EADDRINUSE, "Address already in use")

    monkeypatch.setattr(reporting, "start_manager", refuse)
    clock = FakeClock()
    config = load_config(None, spool=str(tmp_path / "spool"))
    link = StatsLink(multiprocessing.get_context("forkserver"), config, b"k" * 32, clock)
    with capture_logs() as logs:
        link.start(FakeSelector())  # type: ignore[arg-type]
    assert [e["event"] for e in logs] == ["stats.start_failed"]
    assert "Address already in use" in logs[0]["error"]
    assert link.client is None and link.restart_at == clock.monotonic() + 5.0
