"""Start-up recovery when a result name is not ours, when a step or an fsync fails, and when an orphan keeps writing."""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from structlog.testing import capture_logs

from ipspool import recovery as recovery_mod
from ipspool.recovery import recover
from ipspool.spool import Spool
from tests.support.fsyncs import open_spool, open_under, record_fsyncs
from tests.unit.test_recovery_decisions import _ls, _put, _record_for, _recover


@pytest.fixture
def sp(tmp_path: Path) -> Iterator[Spool]:
    spool = open_spool(tmp_path)
    yield spool
    spool.close()


DETAIL = "a file we did not write holds the result name; nothing was overwritten"


def _foreign_result(tmp_path: Path, kind: str) -> None:
    results = tmp_path / "results"
    if kind == "symlink":
        (tmp_path / "target").write_text("{}\n")
        (results / "job.jsonl").symlink_to(tmp_path / "target")
    elif kind == "directory":
        (results / "job.jsonl").mkdir()
    else:
        path = _put(tmp_path, "results", "job.jsonl", b"{}\n")
        if kind == "hard link":
            os.link(path, tmp_path / "second")
        else:
            os.chown(path, 4321, -1)


@pytest.mark.parametrize("kind", ["symlink", "directory", "hard link", "foreign"])
def test_a_result_name_holding_a_file_we_did_not_write_fails_the_job(sp: Spool, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch, kind: str) -> None:
    _put(tmp_path, "active", "job", b"input")
    _foreign_result(tmp_path, kind)
    out, _, events = _recover(sp, tmp_path, monkeypatch)
    assert out == ([], [], [])
    assert _ls(tmp_path, "failed") == ["job", "job.error.json"]
    assert (_ls(tmp_path, "active"), _ls(tmp_path, "done")) == ([], [])
    record = orjson.loads((tmp_path / "spool" / "failed" / "job.error.json").read_bytes())
    assert {k: record[k] for k in ("job", "reason", "detail", "file")} == {
        "job": "job", "reason": "result_exists", "detail": DETAIL, "file": "job"}
    assert events == [{"event": "file.failed", "log_level": "error", "file": "job", "job": "job",
                       "reason": "result_exists", "detail": DETAIL,
                       "error_file": str(tmp_path / "spool" / "failed" / "job.error.json")}]


def test_a_result_published_from_a_part_still_linked_is_ours_once_parts_are_cleaned(
        sp: Spool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The parts go first: until then a just-published result has two links."""
    _put(tmp_path, "active", "job")
    part = tmp_path / "results" / ".parts" / "run.1.2"
    part.mkdir()
    (part / "job.part").write_text("{}\n")
    os.link(part / "job.part", tmp_path / "results" / "job.jsonl")
    assert _recover(sp, tmp_path, monkeypatch)[0] == ([], ["job"], [])


def _failing(monkeypatch: pytest.MonkeyPatch, module: Any, name: str, when: Any) -> None:
    real = getattr(module, name)

    def call(*args: Any, **kwargs: Any) -> Any:
        if when(*args):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(*args, **kwargs)
    monkeypatch.setattr(module, name, call)


def test_a_step_that_fails_is_logged_and_the_others_still_run(sp: Spool, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    _put(tmp_path, "active", "a-fail")
    _put(tmp_path, "failed", "a-fail.error.json", _record_for("a-fail"))
    _put(tmp_path, "active", "b-retire")
    _put(tmp_path, "results", "b-retire.jsonl")
    _put(tmp_path, "active", "c-rename")
    _put(tmp_path, "done", "c-rename")
    _put(tmp_path, "active", "d-redo")
    _failing(monkeypatch, recovery_mod, "rename_noreplace_at", lambda *a: True)
    _failing(monkeypatch, sp, "retire_input", lambda *a: True)
    out, log, events = _recover(sp, tmp_path, monkeypatch)
    assert out == (["d-redo"], [], [])
    assert _ls(tmp_path, "active") == ["a-fail", "b-retire", "c-rename", "d-redo"]
    note = "left in active/; looked at again at the next start"
    assert events == [{"event": "spool.recover_failed", "log_level": "error", "file": name, "step": step,
                       "error": "No space left on device", "note": note}
                      for name, step in (("a-fail", "fail"), ("b-retire", "retire"), ("c-rename", "rename"))]
    assert log.paths == ["results", "spool/failed", "spool/done"]


def test_an_error_without_a_message_is_logged_by_its_text(sp: Spool, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    _put(tmp_path, "active", "job")
    _put(tmp_path, "results", "job.jsonl")

    def bare(*args: Any) -> None:
        raise OSError("bare")
    monkeypatch.setattr(sp, "retire_input", bare)
    _, _, events = _recover(sp, tmp_path, monkeypatch)
    assert [(e["step"], e["error"]) for e in events] == [("retire", "bare")]


@pytest.mark.parametrize("where", ["results", "failed"])
def test_a_directory_that_cannot_be_made_durable_leaves_every_entry_for_the_next_start(
        sp: Spool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str) -> None:
    _put(tmp_path, "active", "a")
    _put(tmp_path, "active", "b")
    _put(tmp_path, "results", "b.jsonl")
    log = record_fsyncs(monkeypatch, tmp_path)
    refused = str(tmp_path / ("results" if where == "results" else f"spool/{where}"))

    def fsync(fd: int) -> None:
        log(fd)
        if os.readlink(f"/proc/self/fd/{fd}") == refused:
            raise OSError(errno.EIO, "Input/output error")
    monkeypatch.setattr(os, "fsync", fsync)
    with capture_logs() as events:
        out = recover(sp, True)
    assert out == ([], [], [])
    assert _ls(tmp_path, "active") == ["a", "b"]
    assert events[0] == {"event": "spool.recover_failed", "log_level": "error", "file": f"{where}/", "step": "sync",
                         "error": "Input/output error", "note": "entries of active/ are left for the next start"}
    assert [(e["file"], e["step"], e["error"]) for e in events[1:]] == [
        (name, "fail", "a directory it depends on could not be made durable") for name in ("a", "b")]
    assert log.paths == ["results", "spool/failed", "spool/done"]


def test_done_that_cannot_be_made_durable_still_lets_the_rest_be_decided(sp: Spool, tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    _put(tmp_path, "active", "a")
    _put(tmp_path, "active", "b")
    _put(tmp_path, "failed", "b.error.json", _record_for("b"))
    _failing(monkeypatch, os, "fsync", lambda fd: os.readlink(f"/proc/self/fd/{fd}").endswith("/done"))
    with capture_logs() as events:
        out = recover(sp, True)
    assert out == (["a"], [], ["b"])
    assert [(e["file"], e["step"]) for e in events] == [("done/", "sync")]


@pytest.mark.parametrize(("failing", "keep"), [("done", True), ("failed", False), ("active", True)])
def test_a_final_fsync_that_fails_is_logged_and_the_others_still_run(sp: Spool, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch,
                                                                    failing: str, keep: bool) -> None:
    _put(tmp_path, "active", "r")
    _put(tmp_path, "results", "r.jsonl")
    _put(tmp_path, "active", "f")
    _put(tmp_path, "failed", "f.error.json", _record_for("f"))
    calls = [0]
    log = record_fsyncs(monkeypatch, tmp_path)

    def fsync(fd: int) -> None:
        log(fd)
        calls[0] += 1
        if calls[0] > 3 and log.paths[-1] == f"spool/{failing}":
            raise OSError(errno.EIO, "Input/output error")
    monkeypatch.setattr(os, "fsync", fsync)
    with capture_logs() as events:
        out = recover(sp, keep)
    assert out == ([], ["r"], ["f"])
    assert events == [{"event": "spool.recover_failed", "log_level": "error", "file": f"{failing}/", "step": "sync",
                       "error": "Input/output error", "note": "recovered moves may not survive a power cut"}]
    assert log.paths[3:] == [*(["spool/done"] if keep else []), "spool/failed", "spool/active"]


def test_a_run_folder_an_orphan_refills_is_emptied_again(sp: Spool, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    run = tmp_path / "results" / ".parts" / "run.1.2"
    run.mkdir()
    (run / "a.part").write_text("x")
    real = os.rmdir
    refills = [2]

    def rmdir(name: str, *, dir_fd: int) -> None:
        if refills[0]:
            refills[0] -= 1
            (run / f"late{refills[0]}.part").write_text("late")
        real(name, dir_fd=dir_fd)
    monkeypatch.setattr(os, "rmdir", rmdir)
    before = open_under(tmp_path)
    assert _recover(sp, tmp_path, monkeypatch)[0] == ([], [], [])
    assert os.listdir(tmp_path / "results" / ".parts") == []
    assert open_under(tmp_path) == before


def test_a_run_folder_that_keeps_filling_up_is_given_up_after_a_hundred_tries(sp: Spool, tmp_path: Path,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    run = tmp_path / "results" / ".parts" / "run.1.2"
    run.mkdir()
    tries = [0]

    def rmdir(name: str, *, dir_fd: int) -> None:
        tries[0] += 1
        (run / f"late{tries[0]}.part").write_text("late")
        raise OSError(errno.ENOTEMPTY, "Directory not empty")
    monkeypatch.setattr(os, "rmdir", rmdir)
    before = open_under(tmp_path)
    with pytest.raises(OSError) as err:
        recover(sp, True)
    assert (err.value.errno, err.value.strerror) == (errno.ENOTEMPTY, "results/.parts/run.1.2 keeps filling up")
    assert tries[0] == 100
    assert os.listdir(run) == ["late100.part"]
    assert open_under(tmp_path) == before


def test_a_run_folder_that_cannot_be_removed_for_another_reason_says_so(sp: Spool, tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "results" / ".parts" / "run.1.2").mkdir()
    tries = [0]

    def rmdir(name: str, *, dir_fd: int) -> None:
        tries[0] += 1
        raise OSError(errno.EBUSY, "Device or resource busy")
    monkeypatch.setattr(os, "rmdir", rmdir)
    with pytest.raises(OSError) as err:
        recover(sp, True)
    assert (err.value.errno, tries[0]) == (errno.EBUSY, 1)


def test_a_symlink_among_the_parts_is_removed_not_followed(sp: Spool, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "victim").mkdir()
    (tmp_path / "victim" / "keep").write_text("x")
    (tmp_path / "results" / ".parts" / "run.9.9").symlink_to(tmp_path / "victim")
    _recover(sp, tmp_path, monkeypatch)
    assert os.listdir(tmp_path / "results" / ".parts") == []
    assert os.listdir(tmp_path / "victim") == ["keep"]


@pytest.mark.parametrize("failing", ["results", "active"])
def test_an_fsync_error_without_a_message_is_logged_by_its_text(sp: Spool, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch, failing: str) -> None:
    _put(tmp_path, "active", "r")
    _put(tmp_path, "results", "r.jsonl")
    real = os.fsync
    calls = [0]

    def fsync(fd: int) -> None:
        calls[0] += 1
        if os.readlink(f"/proc/self/fd/{fd}").endswith(f"/{failing}") and (failing == "results" or calls[0] > 3):
            raise OSError("bare")
        real(fd)
    monkeypatch.setattr(os, "fsync", fsync)
    with capture_logs() as events:
        recover(sp, True)
    assert [(e["file"], e["step"], e["error"]) for e in events][:1] == [(f"{failing}/", "sync", "bare")]
