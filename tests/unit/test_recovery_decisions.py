"""Start-up recovery, in process: each kind of entry left in active/, against the files, events and fsyncs."""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from structlog.testing import capture_logs

from ipspool.recovery import recover
from ipspool.spool import Spool
from tests.support.fsyncs import SyncLog, open_spool, record_fsyncs


@pytest.fixture
def sp(tmp_path: Path) -> Iterator[Spool]:
    spool = open_spool(tmp_path)
    yield spool
    spool.close()


def _put(tmp_path: Path, where: str, name: str, data: bytes = b"x") -> Path:
    path = tmp_path / ("results" if where == "results" else f"spool/{where}") / name
    path.write_bytes(data)
    return path


def _record_for(job: str, **more: Any) -> bytes:
    return orjson.dumps({"job": job, "reason": "poison", "detail": "d", "time": 1.0, **more})


def _ls(tmp_path: Path, where: str) -> list[str]:
    return sorted(os.listdir(tmp_path / ("results" if where == "results" else f"spool/{where}")))


def _recover(sp: Spool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, keep: bool = True,
             ) -> tuple[tuple[list[str], list[str], list[str]], SyncLog, list[dict[str, Any]]]:
    log = record_fsyncs(monkeypatch, tmp_path)
    with capture_logs() as events:
        out = recover(sp, keep)
    return out, log, events


def test_leftover_parts_run_folders_and_temporary_records_are_removed(sp: Spool, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    parts = tmp_path / "results" / ".parts"
    (parts / "1.a.0.part").write_text("x")
    (parts / "run.1.2").mkdir()
    (parts / "run.1.2" / "9.b.0.part").write_text("y")
    (parts / "run.1.3").mkdir()
    for name in (".job.77.tmp", ".kept", "visible.tmp", "job.error.json"):
        _put(tmp_path, "failed", name)
    out, log, events = _recover(sp, tmp_path, monkeypatch)
    assert os.listdir(parts) == []
    assert _ls(tmp_path, "failed") == [".kept", "job.error.json", "visible.tmp"]
    assert out == ([], [], [])
    assert (log.paths, events) == (["results", "spool/failed", "spool/done"], [])


def test_a_published_result_is_retired_not_redone(sp: Spool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _put(tmp_path, "active", "job", b"input")
    _put(tmp_path, "results", "job.jsonl", b"{}\n")
    out, log, events = _recover(sp, tmp_path, monkeypatch, keep=True)
    assert out == ([], ["job"], [])
    assert (_ls(tmp_path, "active"), _ls(tmp_path, "done")) == ([], ["job"])
    assert log.paths == ["results", "spool/failed", "spool/done", "spool/done", "spool/active"]
    assert events == []


def test_a_published_result_without_keep_deletes_the_input(sp: Spool, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    _put(tmp_path, "active", "job")
    _put(tmp_path, "results", "job.jsonl")
    out, log, _ = _recover(sp, tmp_path, monkeypatch, keep=False)
    assert out == ([], ["job"], [])
    assert (_ls(tmp_path, "active"), _ls(tmp_path, "done")) == ([], [])
    assert log.paths == ["results", "spool/failed", "spool/done", "spool/active"]


def test_a_job_with_its_own_error_record_finishes_moving_to_failed(sp: Spool, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    _put(tmp_path, "active", "job", b"input")
    _put(tmp_path, "failed", "job.error.json", _record_for("job"))
    _put(tmp_path, "results", "job.jsonl")  # the record is looked at first
    out, log, _ = _recover(sp, tmp_path, monkeypatch)
    assert out == ([], [], ["job"])
    assert _ls(tmp_path, "failed") == ["job", "job.error.json"]
    assert log.paths == ["results", "spool/failed", "spool/done", "spool/failed", "spool/active"]


def test_a_record_of_exactly_the_largest_size_is_still_read(sp: Spool, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    record = _record_for("job", pad="")  # its last byte matters: a short read would not be JSON
    record = _record_for("job", pad="p" * ((64 << 10) - len(record)))
    assert len(record) == 64 << 10
    _put(tmp_path, "active", "job")
    _put(tmp_path, "failed", "job.error.json", record)
    assert _recover(sp, tmp_path, monkeypatch)[0] == ([], [], ["job"])


def test_an_undecodable_job_name_matches_its_printable_record(sp: Spool, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    job = os.fsdecode(b"j\xff")
    _put(tmp_path, "active", job)
    _put(tmp_path, "failed", f"{job}.error.json", _record_for("j\\xff"))
    assert _recover(sp, tmp_path, monkeypatch)[0] == ([], [], [job])


def _not_ours(tmp_path: Path, kind: str) -> None:
    failed = tmp_path / "spool" / "failed"
    if kind == "symlink":
        (tmp_path / "elsewhere").write_bytes(_record_for("job"))
        (failed / "job.error.json").symlink_to(tmp_path / "elsewhere")
        return
    data = {"other job": _record_for("other"), "not json": b"{oops", "a list": b'["job"]',
            "too large": _record_for("job") + b" " * (64 << 10), "no job": b'{"reason": "x"}',
            }.get(kind, _record_for("job"))
    path = _put(tmp_path, "failed", "job.error.json", data)
    if kind == "hard link":
        os.link(path, tmp_path / "second")
    elif kind == "foreign":
        os.chown(path, 4321, -1)
    elif kind == "directory":
        path.unlink()
        path.mkdir()


@pytest.mark.parametrize("kind", ["other job", "not json", "a list", "too large", "no job", "symlink", "hard link",
                                  "foreign", "directory"])
def test_an_error_record_that_is_not_ours_proves_nothing_and_the_job_is_renamed(
        sp: Spool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str) -> None:
    _put(tmp_path, "active", "job", b"input")
    _not_ours(tmp_path, kind)
    out, log, events = _recover(sp, tmp_path, monkeypatch)
    assert out == (["job.1"], [], [])
    assert _ls(tmp_path, "active") == ["job.1"]
    assert (tmp_path / "spool" / "active" / "job.1").read_bytes() == b"input"
    assert events == [{"event": "spool.name_conflict", "log_level": "warning", "file": "job", "job": "job.1",
                       "note": "another entry holds a name derived from it; processed under the new name"}]
    assert log.paths == ["results", "spool/failed", "spool/done", "spool/active"]


def test_an_error_record_that_cannot_be_opened_proves_nothing(sp: Spool, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    _put(tmp_path, "active", "job")
    _put(tmp_path, "failed", "job.error.json", _record_for("job"))
    real = os.open

    def refuse(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        if path == "job.error.json":
            raise OSError(errno.EACCES, "Permission denied")
        return real(path, flags, *args, **kwargs)
    monkeypatch.setattr(os, "open", refuse)
    assert _recover(sp, tmp_path, monkeypatch)[0] == (["job.1"], [], [])


@pytest.mark.parametrize("entry", ["done/job", "failed/job", "failed/job.error.json"])
def test_a_job_whose_derived_name_is_held_is_processed_under_a_new_name(
        sp: Spool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, entry: str) -> None:
    _put(tmp_path, "active", "job", b"input")
    where, name = entry.split("/")
    _put(tmp_path, where, name, b"someone else's")
    out, _, events = _recover(sp, tmp_path, monkeypatch)
    assert out == (["job.1"], [], [])
    assert (tmp_path / "spool" / where / name).read_bytes() == b"someone else's"
    assert [e["event"] for e in events] == ["spool.name_conflict"]


def test_a_job_named_like_an_error_record_is_renamed(sp: Spool, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    _put(tmp_path, "active", "x.error.json")
    out, _, events = _recover(sp, tmp_path, monkeypatch)
    assert out == (["x.error.json.1"], [], [])
    assert (events[0]["file"], events[0]["job"]) == ("x.error.json", "x.error.json.1")


def test_anything_else_is_processed_again_in_name_order_with_no_extra_fsync(
        sp: Spool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("b", "a", "c"):
        _put(tmp_path, "active", name)
    _put(tmp_path, "done", "other")
    out, log, events = _recover(sp, tmp_path, monkeypatch)
    assert out == (["a", "b", "c"], [], [])
    assert (log.paths, events) == (["results", "spool/failed", "spool/done"], [])
