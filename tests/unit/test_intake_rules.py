"""Intake rules pinned by mutation testing: overflow, backlog age, settling, claim errors, rejections."""

from __future__ import annotations

import errno
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from ipspool.intake import SETTLE
from ipspool.spool import InputRejected
from ipspool.watcher import OVERFLOW, SUBDIR
from tests.unit.test_decisions_jobs import drop, make


def test_take_names_reports_overflow_and_offers_every_other_name_once(tmp_path: Path) -> None:
    """OVERFLOW and SUBDIR mean a rescan is due (OVERFLOW says so louder); names around them are offered,
    a repeated name only once."""
    sup, _, _ = make(tmp_path)
    intake = sup.intake
    assert intake.take_names(["a", "b"]) == ""
    assert intake.take_names(["c", OVERFLOW, "a"]) == "overflow"
    assert intake.take_names(["fw/d", SUBDIR]) == "subdir"
    assert intake.take_names([OVERFLOW, SUBDIR]) == intake.take_names([SUBDIR, OVERFLOW]) == "overflow"
    assert len(intake) == 4
    assert [name for name, _ in intake.fresh] == ["a", "b", "c", "fw/d"]
    assert intake.take_names([]) == ""


def test_the_backlog_age_is_the_oldest_wait_and_never_negative(tmp_path: Path) -> None:
    """By mtime for scanned files, by arrival for watched ones, the older queue front wins; 0 when none wait."""
    sup, clock, _ = make(tmp_path)
    intake = sup.intake
    assert intake.backlog_age() == 0.0
    intake.take_names(["new"])
    assert intake.backlog_age() == 0.0
    drop(sup, "old", b"1.2.3.4\n", mtime=clock.time() - 250)
    assert intake.rescan() == 1
    assert intake.backlog_age() == 250.0
    clock.advance(0.25)
    assert intake.backlog_age() == 250.25


def test_a_rescan_offers_every_settled_name_not_yet_waiting_and_logs_how_many(tmp_path: Path) -> None:
    """spool.rescan carries found and backlog; names already waiting are skipped, the rest still counted."""
    sup, clock, _ = make(tmp_path)
    intake = sup.intake
    for name in ("a", "b", "c", "d"):
        drop(sup, name, b"1.2.3.4\n", mtime=clock.time() - 60)
    intake.take_names(["a"])
    with capture_logs() as logs:
        assert intake.rescan() == 3
    assert logs == [{"event": "spool.rescan", "log_level": "debug", "found": 3, "backlog": 4}]
    assert len(intake) == 4
    with capture_logs() as logs:
        assert intake.rescan() == 0
    assert logs == []


def test_a_file_modified_exactly_settle_seconds_ago_is_settled(tmp_path: Path) -> None:
    """The boundary belongs to settled."""
    sup, clock, _ = make(tmp_path)
    drop(sup, "edge", b"1.2.3.4\n", mtime=clock.time() - SETTLE)
    assert sup.intake.rescan() == 1


def test_a_file_with_a_future_mtime_waits_a_full_settle_from_our_first_sighting(tmp_path: Path) -> None:
    """Half a settle after the first sighting is not enough; a whole one is."""
    sup, clock, _ = make(tmp_path)
    drop(sup, "future", b"1.2.3.4\n", mtime=clock.time() + 3600)
    assert sup.intake.rescan() == 0
    clock.advance(SETTLE / 2)
    assert sup.intake.rescan() == 0
    clock.advance(SETTLE / 2)
    assert sup.intake.rescan() == 1
    assert sup.intake.backlog_age() == 0.0  # its wait is counted from now, not from the future


def test_sightings_are_forgotten_once_a_name_leaves_incoming_or_is_offered(tmp_path: Path) -> None:
    """The memory of unsettled names stays bounded by what is in incoming/ and not yet waiting."""
    sup, clock, _ = make(tmp_path)
    intake = sup.intake
    drop(sup, "gone", b"1.2.3.4\n", mtime=clock.time() + 3600)
    drop(sup, "stays", b"1.2.3.4\n", mtime=clock.time() + 3600)
    intake.rescan()
    assert set(intake.sightings) == {"gone", "stays"}
    os.unlink(sup.config.spool_dir / "incoming" / "gone")
    clock.advance(SETTLE)
    intake.rescan()
    assert intake.sightings == {}  # "gone" left incoming/, "stays" is now waiting


def test_a_scan_that_fails_is_logged_and_finds_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """spool.scan_failed carries the error; the loop goes on."""
    sup, _, _ = make(tmp_path)

    def broken() -> Any:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(sup.spool, "scan_incoming", broken)
    with capture_logs() as logs:
        assert sup.intake.rescan() == 0
    assert logs == [{"event": "spool.scan_failed", "log_level": "error", "error": "[Errno 5] Input/output error"}]


def claim_refused(sup: Any, monkeypatch: pytest.MonkeyPatch, refused: dict[str, OSError]) -> None:
    real = sup.spool.claim

    def claim(name: str) -> str | None:
        if name in refused:
            raise refused[name]
        result: str | None = real(name)
        return result

    monkeypatch.setattr(sup.spool, "claim", claim)


def test_a_name_we_may_not_move_is_skipped_until_it_changes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """EACCES: spool.claim_failed once, the next name is claimed, rescans skip it while its mtime stands."""
    sup, clock, _ = make(tmp_path)
    intake = sup.intake
    claim_refused(sup, monkeypatch, {"locked": PermissionError(errno.EACCES, "Permission denied")})
    drop(sup, "locked", b"1.2.3.4\n", mtime=clock.time() - 60)
    intake.take_names(["locked"])
    drop(sup, "fine", b"1.2.3.4\n", mtime=clock.time() - 60)
    intake.take_names(["fine"])
    with capture_logs() as logs:
        assert intake.claim_next() == ("fine", "fine")
    assert logs == [{"event": "spool.claim_failed", "log_level": "warning", "file": "locked",
                     "error": "Permission denied"}]
    assert intake.rescan() == 0
    clock.advance(10)
    os.utime(sup.config.spool_dir / "incoming" / "locked", (clock.time() - 5, clock.time() - 5))
    assert intake.rescan() == 1  # it changed: worth another try


def test_an_unclaimable_name_that_left_incoming_is_forgotten(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Once the producer removed it, a new file of that name is a new file."""
    sup, clock, _ = make(tmp_path)
    claim_refused(sup, monkeypatch, {"x": PermissionError(errno.EPERM, "Operation not permitted")})
    drop(sup, "x", b"1.2.3.4\n", mtime=clock.time() - 60)
    sup.intake.take_names(["x"])
    assert sup.intake.claim_next() is None
    assert "x" in sup.intake.unclaimable
    os.unlink(sup.config.spool_dir / "incoming" / "x")
    sup.intake.rescan()
    assert sup.intake.unclaimable == {}


def test_other_claim_errors_are_retried_by_the_next_scan(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A full disk or EIO is not the file's fault: it is offered again; an error without strerror is shown whole."""
    sup, clock, _ = make(tmp_path)
    claim_refused(sup, monkeypatch, {"f": OSError("odd failure")})
    drop(sup, "f", b"1.2.3.4\n", mtime=clock.time() - 60)
    sup.intake.take_names(["f"])
    with capture_logs() as logs:
        assert sup.intake.claim_next() is None
    assert logs[0]["error"] == "odd failure"
    assert sup.intake.unclaimable == {}
    assert sup.intake.rescan() == 1


def test_recovered_inputs_go_first_even_while_claiming_is_paused(tmp_path: Path) -> None:
    """Inputs found in active/ at start-up keep their job name; a disk outage stops only new claims."""
    sup, clock, _ = make(tmp_path)
    intake = sup.intake
    drop(sup, "new", b"1.2.3.4\n", mtime=clock.time() - 60)
    intake.rescan()
    intake.recovered.extend(["r1", "r2"])
    intake.paused_for = "results disk outage"
    assert intake.claim_next() == ("r1", "r1")
    assert intake.claim_next() == ("r2", "r2")
    assert intake.claim_next() is None
    intake.paused_for = ""
    assert intake.claim_next() == ("new", "new")
    assert len(intake) == 0


def test_a_rejected_input_goes_to_failed_with_its_reason_and_is_counted(tmp_path: Path) -> None:
    """file.rejected names file, job, reason and detail; the error file says the same."""
    sup, clock, _ = make(tmp_path)
    intake = sup.intake
    intake.max_file_bytes = 4
    drop(sup, "big", b"1.2.3.4\n", mtime=clock.time() - 60)
    intake.rescan()
    claim = intake.claim_next()
    assert claim == ("big", "big")
    with capture_logs() as logs:
        assert intake.inspect(*claim) is None
    (event,) = logs
    assert {k: event[k] for k in ("event", "log_level", "file", "job", "reason")} == {
        "event": "file.rejected", "log_level": "warning", "file": "big", "job": "big", "reason": "too_large"}
    assert set(event) == {"event", "log_level", "file", "job", "reason", "detail"}
    info = json.loads((sup.config.spool_dir / "failed" / "big.error.json").read_bytes())
    assert (info["reason"], info["detail"], info["file"]) == ("too_large", event["detail"], "big")
    assert sup.reporter.totals["files_failed"] == 1


def test_a_rejection_that_cannot_be_written_leaves_the_input_in_active(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """spool.fail_failed names file, job and error, and says the next start looks again; it still counts."""
    sup, _, _ = make(tmp_path)

    def broken(*args: object) -> str:
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(sup.spool, "fail", broken)
    with capture_logs() as logs:
        sup.intake.reject("n", "j", InputRejected("hard_link", "2 links"))
    assert logs == [
        {"event": "file.rejected", "log_level": "warning", "file": "n", "job": "j", "reason": "hard_link",
         "detail": "2 links"},
        {"event": "spool.fail_failed", "log_level": "error", "file": "n", "job": "j",
         "error": "[Errno 30] Read-only file system", "note": "left in active/; retried at the next start"},
    ]
    assert sup.reporter.totals["files_failed"] == 1


def test_every_rejection_counts(tmp_path: Path) -> None:
    """files_failed goes up by one per rejected input."""
    sup, _, _ = make(tmp_path)
    for name in ("a", "b"):
        drop(sup, name, b"x")
        sup.intake.reject(name, name, InputRejected("hard_link", "2 links"))
    assert sup.reporter.totals["files_failed"] == 2


def test_a_scan_keeps_the_watch_on_its_subdirectories_and_warns_once_of_each_it_cannot_watch_or_read(
        tmp_path: Path) -> None:
    """spool.subdir_unwatched and spool.subdir_ignored come once per subdirectory, again only after it recovered."""
    sup, _, _ = make(tmp_path)
    intake = sup.intake
    intake.spool.incoming.max_subdirs = 2
    for sub in ("a", "b", "c"):
        (sup.spool.root / "incoming" / sub).mkdir()
    followed: list[list[str]] = []
    unwatchable = {"b"}

    def follow(subdirs: Mapping[str, object]) -> list[str]:
        followed.append(list(subdirs))
        return sorted(unwatchable & set(subdirs))
    intake.follow = follow
    with capture_logs() as logs:
        intake.rescan()
        intake.rescan()
    assert followed == [["a", "b"], ["a", "b"]]
    assert [(e["event"], e["subdir"]) for e in logs] == [("spool.subdir_unwatched", "b"),
                                                         ("spool.subdir_ignored", "c")]
    assert logs[1]["max_subdirs"] == 2
    unwatchable.clear()
    intake.spool.incoming.max_subdirs = 3
    with capture_logs() as logs:
        intake.rescan()
    assert logs == [] and followed[-1] == ["a", "b", "c"]
    unwatchable.add("b")
    with capture_logs() as logs:
        intake.rescan()
    assert [(e["event"], e["subdir"]) for e in logs] == [("spool.subdir_unwatched", "b")]


def test_a_subdirectory_a_scan_cannot_read_is_warned_about_once(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    sup, _, _ = make(tmp_path)
    intake = sup.intake
    intake.spool.incoming.max_subdirs = 4
    (sup.spool.root / "incoming" / "locked").mkdir()

    def denied(sub: str) -> int:
        raise PermissionError(errno.EACCES, "Permission denied")
    monkeypatch.setattr(intake.spool.incoming, "subdir_fd", denied)
    with capture_logs() as logs:
        intake.rescan()
        intake.rescan()
    assert logs == [{"event": "spool.subdir_unreadable", "log_level": "warning", "subdir": "locked",
                     "error": "Permission denied",
                     "note": "the service user needs read and search permission on it; its files wait"}]
