"""Joining parts, publishing, retiring and failing inputs: the files, their modes and the fsyncs, in order."""

from __future__ import annotations

import errno
import os
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from ipspool import spool as spool_mod
from ipspool.spool import Spool
from tests.support.fsyncs import fail_fsync, open_spool, open_under, record_fsyncs


@pytest.fixture(autouse=True)
def _umask() -> Iterator[None]:
    old = os.umask(0o022)
    yield
    os.umask(old)


@pytest.fixture
def sp(tmp_path: Path) -> Iterator[Spool]:
    spool = open_spool(tmp_path)
    spool.start_run()
    yield spool
    spool.close()


def _parts(sp: Spool, *contents: bytes, prefix: str = "p") -> list[str]:
    paths = []
    for i, data in enumerate(contents):
        path = sp.part_path(f"{prefix}{i}.part")
        Path(path).write_bytes(data)
        paths.append(path)
    return paths


def test_assemble_joins_parts_in_order_fsyncs_and_removes_them(sp: Spool, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    parts = _parts(sp, b"a\n", b"", b"bc\n", b"d" * 5000)
    log = record_fsyncs(monkeypatch, tmp_path)
    out = sp.assemble(parts, "joined.part")
    assert out == str(sp.parts_dir / "joined.part")
    assert Path(out).read_bytes() == b"a\nbc\n" + b"d" * 5000
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o640
    assert sorted(os.listdir(sp.parts_dir)) == ["joined.part"]
    assert log.paths == [f"results/.parts/{sp.run}/joined.part"]


def test_an_append_cuts_what_a_failed_attempt_left_and_returns_the_new_size(sp: Spool, tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    out = sp.part_path("asm.part")
    Path(out).write_bytes(b"kept|half a failed attempt")
    log = record_fsyncs(monkeypatch, tmp_path)
    assert sp.append_parts(out, _parts(sp, b"12", b"345"), 5, sync=False) == 10
    assert Path(out).read_bytes() == b"kept|12345"
    assert log.paths == []
    assert sp.append_parts(out, [], 10, sync=True) == 10
    assert log.paths == [f"results/.parts/{sp.run}/asm.part"]


def test_an_append_copies_a_large_part_in_pieces(sp: Spool, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(spool_mod, "_COPY_PIECE", 1000)
    sizes: list[int] = []
    real = os.copy_file_range

    def copy(src: int, dst: int, count: int) -> int:
        sizes.append(count)
        return real(src, dst, count)
    monkeypatch.setattr(os, "copy_file_range", copy)
    out = sp.part_path("asm.part")
    assert sp.append_parts(out, _parts(sp, bytes(range(256)) * 10), 0, sync=False) == 2560
    assert sizes == [1000, 1000, 560]
    assert Path(out).read_bytes() == bytes(range(256)) * 10


def test_an_append_stops_at_a_part_that_ends_early(sp: Spool, monkeypatch: pytest.MonkeyPatch) -> None:
    """copy_file_range returning 0 (the part shrank) ends that part; the next one is copied."""
    parts = _parts(sp, b"abcdef", b"gh")
    real_fstat = os.fstat
    monkeypatch.setattr(os, "fstat", lambda fd: _sized(real_fstat(fd), 100) if real_fstat(fd).st_size == 6
                        else real_fstat(fd))
    out = sp.part_path("asm.part")
    assert sp.append_parts(out, parts, 0, sync=False) == 8
    assert Path(out).read_bytes() == b"abcdefgh"


def _sized(st: os.stat_result, size: int) -> Any:
    class Sized:
        st_size = size

        def __getattr__(self, name: str) -> Any:
            return getattr(st, name)
    return Sized()


def test_a_stopping_daemon_abandons_a_join_and_keeps_the_parts(sp: Spool) -> None:
    parts = _parts(sp, b"a", b"b")
    sp.abandon.set()
    with pytest.raises(InterruptedError) as err:
        sp.assemble(parts, "joined.part")
    assert str(err.value) == "the daemon is stopping"
    assert sorted(os.listdir(sp.parts_dir)) == ["p0.part", "p1.part"]


def test_a_stop_that_comes_once_the_last_piece_is_copied_keeps_the_join(sp: Spool,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    real = os.copy_file_range

    def copy_then_stop(src: int, dst: int, count: int) -> int:
        copied = real(src, dst, count)
        sp.abandon.set()
        return copied
    monkeypatch.setattr(os, "copy_file_range", copy_then_stop)
    out = sp.assemble(_parts(sp, b"whole"), "joined.part")
    assert Path(out).read_bytes() == b"whole"


def test_a_failed_join_removes_its_half_result_and_a_failed_removal_is_not_an_error(
        sp: Spool, monkeypatch: pytest.MonkeyPatch) -> None:
    parts = _parts(sp, b"a", b"b")
    calls = [0]
    real = os.copy_file_range

    def fail_second(src: int, dst: int, count: int) -> int:
        calls[0] += 1
        if calls[0] == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(src, dst, count)
    monkeypatch.setattr(os, "copy_file_range", fail_second)
    with pytest.raises(OSError) as err:
        sp.assemble(parts, "joined.part")
    assert err.value.errno == errno.ENOSPC
    assert sorted(os.listdir(sp.parts_dir)) == ["p0.part", "p1.part"]
    monkeypatch.setattr(os, "copy_file_range", real)

    def refuse(part: str) -> None:
        raise OSError(errno.EIO, "Input/output error")
    monkeypatch.setattr(sp, "remove_part", refuse)
    assert sp.append_parts(sp.part_path("asm.part"), parts, 0, sync=False) == 2


def test_descriptors_are_closed_after_a_join_whatever_happens(sp: Spool, tmp_path: Path) -> None:
    before = open_under(tmp_path)
    sp.assemble(_parts(sp, b"x"), "ok.part")
    sp.abandon.set()
    with pytest.raises(InterruptedError):
        sp.assemble(_parts(sp, b"y"), "stopped.part")
    assert open_under(tmp_path) == before


def test_a_result_is_published_by_link_never_over_an_existing_one(sp: Spool, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    part = _parts(sp, b"rec\n")[0]
    result = sp.publish_result(part, "job")
    assert result == str(tmp_path / "results" / "job.jsonl")
    assert os.stat(result).st_ino == os.stat(part).st_ino
    assert os.stat(result).st_nlink == 2
    other = _parts(sp, b"other\n", prefix="q")[0]
    with pytest.raises(FileExistsError):
        sp.publish_result(other, "job")
    assert Path(result).read_bytes() == b"rec\n"
    log = record_fsyncs(monkeypatch, tmp_path)
    sp.sync_results()
    assert log.paths == ["results"]


def test_summary_parts_are_all_written_then_each_fsynced_before_write_parts_returns(
    sp: Spool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every file's bytes are in before the first fsync; each file is fsync'd once; an old try's file is replaced."""
    Path(sp.part_path("2.summary")).write_bytes(b"left by an earlier try")
    events: list[str] = []
    log = record_fsyncs(monkeypatch, tmp_path)
    real_write = os.write

    def write(fd: int, data: Any) -> int:
        events.append("write")
        return real_write(fd, data)

    def fsync(fd: int) -> None:
        log(fd)
        events.append("fsync")

    monkeypatch.setattr(os, "write", write)
    monkeypatch.setattr(os, "fsync", fsync)
    sp.write_parts([("1.summary", b"one\n"), ("2.summary", b"two\n"), ("3.summary", b"three\n")])
    assert events == ["write"] * 3 + ["fsync"] * 3
    assert log.paths == [f"results/.parts/{sp.run}/{n}.summary" for n in (1, 2, 3)]
    assert [Path(sp.part_path(f"{n}.summary")).read_bytes() for n in (1, 2, 3)] == [b"one\n", b"two\n", b"three\n"]
    assert stat.S_IMODE(os.stat(sp.part_path("1.summary")).st_mode) == 0o640


def test_summary_parts_are_fsynced_in_groups_that_bound_the_open_descriptors(
    sp: Spool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """More files than one group: each group written, then fsync'd, then closed, before the next is opened."""
    monkeypatch.setattr(spool_mod, "_SYNC_GROUP", 2)
    most = [0]

    def fsync(fd: int) -> None:
        most[0] = max(most[0], len(open_under(tmp_path / "results")))

    monkeypatch.setattr(os, "fsync", fsync)
    before = open_under(tmp_path)
    sp.write_parts([(f"{n}.summary", b"x") for n in range(5)])
    assert most[0] == 3 + 2  # results/, .parts/ and the run's folder (the spool holds them), and one group
    assert open_under(tmp_path) == before
    assert sorted(os.listdir(sp.parts_dir)) == [f"{n}.summary" for n in range(5)]


def test_a_summary_fsync_that_fails_leaves_none_of_the_groups_parts(
    sp: Spool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """fsyncgate: a part whose fsync failed is never linked; the whole call is redone later, descriptors closed."""
    fail_fsync(monkeypatch, "/2.summary")
    before = open_under(tmp_path)
    with pytest.raises(OSError, match="Input/output error"):
        sp.write_parts([("1.summary", b"one"), ("2.summary", b"two"), ("3.summary", b"three")])
    assert os.listdir(sp.parts_dir) == []
    assert open_under(tmp_path) == before


def test_a_published_link_to_a_symlinked_part_is_the_link_itself(sp: Spool, tmp_path: Path) -> None:
    (tmp_path / "target").write_text("not ours")
    os.symlink(tmp_path / "target", sp.parts_dir / "sym.part")
    sp.publish_result(str(sp.parts_dir / "sym.part"), "job")
    assert os.path.islink(tmp_path / "results" / "job.jsonl")


def test_unpublish_takes_the_link_back_and_keeps_the_part(sp: Spool, tmp_path: Path) -> None:
    part = _parts(sp, b"rec\n")[0]
    sp.publish_result(part, "job")
    sp.unpublish("job")
    assert os.listdir(tmp_path / "results") == [".parts"]
    assert Path(part).read_bytes() == b"rec\n"
    sp.unpublish("job")  # already gone: nothing to do


def test_remove_part_removes_by_name_in_this_runs_folder(sp: Spool, tmp_path: Path) -> None:
    part = _parts(sp, b"x")[0]
    sp.remove_part("/somewhere/else/" + os.path.basename(part))
    assert os.listdir(sp.parts_dir) == []
    sp.remove_part(part)


def test_retiring_keeps_the_input_in_done_or_deletes_it(sp: Spool, tmp_path: Path) -> None:
    root = tmp_path / "spool"
    (root / "active" / "a").write_text("A")
    (root / "active" / "b").write_text("B")
    sp.retire_input("a", keep=True)
    sp.retire_input("b", keep=False)
    assert (os.listdir(root / "active"), os.listdir(root / "done")) == ([], ["a"])
    assert (root / "done" / "a").read_text() == "A"


def test_retiring_never_replaces_an_entry_in_done(sp: Spool, tmp_path: Path) -> None:
    root = tmp_path / "spool"
    (root / "active" / "a").write_text("new")
    (root / "done" / "a").write_text("old")
    with pytest.raises(FileExistsError):
        sp.retire_input("a", keep=True)
    assert ((root / "done" / "a").read_text(), (root / "active" / "a").read_text()) == ("old", "new")


def test_a_retire_is_made_durable_at_its_destination_first(sp: Spool, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    log = record_fsyncs(monkeypatch, tmp_path)
    sp.sync_retired(keep=True)
    assert log.paths == ["spool/done", "spool/active"]
    log.clear()
    sp.sync_retired(keep=False)
    assert log.paths == ["spool/active"]


def _record(tmp_path: Path, job: str) -> dict[str, Any]:
    data: dict[str, Any] = orjson.loads((tmp_path / "spool" / "failed" / f"{job}.error.json").read_bytes())
    return data


def test_a_failure_writes_its_record_then_moves_the_input_each_step_durable(
        sp: Spool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    failed = tmp_path / "spool" / "failed"
    (tmp_path / "spool" / "active" / "job").write_text("input")
    monkeypatch.setattr(time, "time", lambda: 1234.5)
    log = record_fsyncs(monkeypatch, tmp_path)
    tmp_name = f".job.{os.getpid()}.tmp"
    real_rename = os.rename
    order: list[str] = []
    monkeypatch.setattr(os, "rename", lambda *a, **k: (order.append(f"rename {a[0]} {a[1]}"), real_rename(*a, **k)))
    error_file = sp.fail("job", "too_large", "11 bytes", {"file": "in", "lines": 3})
    assert error_file == str(failed / "job.error.json")
    assert log.paths == ["spool/incoming", "spool/active", f"spool/failed/{tmp_name}", "spool/failed",
                         "spool/failed", "spool/active"]
    assert order[0] == f"rename {tmp_name} job.error.json"
    assert sorted(os.listdir(failed)) == ["job", "job.error.json"]
    assert (failed / "job").read_text() == "input"
    assert _record(tmp_path, "job") == {"job": "job", "reason": "too_large", "detail": "11 bytes", "time": 1234.5,
                                        "file": "in", "lines": 3}
    raw = (failed / "job.error.json").read_bytes()
    assert raw == orjson.dumps(_record(tmp_path, "job"), option=orjson.OPT_INDENT_2) + b"\n"
    assert stat.S_IMODE(os.stat(failed / "job.error.json").st_mode) == 0o640


def test_a_records_names_are_printable_and_a_retried_failure_rewrites_it(sp: Spool, tmp_path: Path) -> None:
    job = os.fsdecode(b"bad\xffname")
    (tmp_path / "spool" / "active" / job).write_text("x")
    (tmp_path / "spool" / "failed" / f".{job}.{os.getpid()}.tmp").write_text("left by a crash")
    assert sp.fail(job, "r1", "d1", {"file": job}).endswith(f"{job}.error.json")
    record = _record(tmp_path, job)
    assert (record["job"], record["file"]) == ("bad\\xffname", "bad\\xffname")
    sp.fail(job, "r2", "d2")  # the input is in failed/ already (recovery of a moved failure)
    assert (_record(tmp_path, job)["reason"], _record(tmp_path, job)["detail"]) == ("r2", "d2")
    assert sorted(os.listdir(tmp_path / "spool" / "failed")) == sorted([job, f"{job}.error.json"])


def test_a_long_job_names_temporary_record_fits(sp: Spool, tmp_path: Path) -> None:
    job = "j" * 240
    (tmp_path / "spool" / "active" / job).write_text("x")
    seen: list[list[str]] = []
    real = os.fsync

    def look(fd: int) -> None:
        seen.append(os.listdir(tmp_path / "spool" / "failed"))
        real(fd)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(os, "fsync", look)
        sp.fail(job, "r", "d")
    assert f".{'j' * 200}.{os.getpid()}.tmp" in seen[2]


def test_a_record_that_cannot_be_written_is_removed_and_the_input_stays(sp: Spool, tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "spool" / "active" / "job").write_text("x")
    fail_fsync(monkeypatch, ".tmp")
    before = open_under(tmp_path)
    with pytest.raises(OSError) as err:
        sp.fail("job", "r", "d")
    assert err.value.errno == errno.EIO
    assert os.listdir(tmp_path / "spool" / "failed") == []
    assert os.listdir(tmp_path / "spool" / "active") == ["job"]
    assert open_under(tmp_path) == before


def test_a_temporary_record_planted_as_a_symlink_is_replaced_not_followed(sp: Spool, tmp_path: Path) -> None:
    (tmp_path / "victim").write_text("keep")
    (tmp_path / "spool" / "failed" / f".job.{os.getpid()}.tmp").symlink_to(tmp_path / "victim")
    (tmp_path / "spool" / "active" / "job").write_text("x")
    sp.fail("job", "r", "d")
    assert (tmp_path / "victim").read_text() == "keep"
    assert _record(tmp_path, "job")["reason"] == "r"
