"""A chunk's bytes in and its part file out: the reasons of every failure, the files left, the fsyncs."""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from ipspool.chunking import Chunk
from ipspool.parts import OUTPUT_SLACK, ChunkFailed, PartWriter, part_path, read_chunk, too_long_record, write_part
from tests.support.fsyncs import open_under, record_fsyncs


@pytest.fixture(autouse=True)
def _umask() -> Iterator[None]:
    old = os.umask(0o022)
    yield
    os.umask(old)


def _chunk(path: Path, start: int, end: int, first_line: int = 1) -> Chunk:
    st = os.stat(path)
    return Chunk(7, 2, str(path), start, end, first_line, dev=st.st_dev, ino=st.st_ino)


def _failure(call: Any, *args: Any) -> tuple[str, str, bool]:
    with pytest.raises(ChunkFailed) as err:
        call(*args)
    return err.value.reason, err.value.detail, err.value.retry


def test_a_part_is_named_by_worker_job_and_chunk() -> None:
    chunk = Chunk(12, 3, "/a", 0, 1, 1)
    assert part_path("/r/.parts/run.1.2", 4000, chunk) == "/r/.parts/run.1.2/4000.12.3.part"
    assert OUTPUT_SLACK == 64 << 10


def test_a_chunk_is_its_byte_range_of_the_claimed_file(tmp_path: Path) -> None:
    path = tmp_path / "in"
    path.write_bytes(b"0123456789")
    assert read_chunk(_chunk(path, 3, 7)) == b"3456"
    assert read_chunk(_chunk(path, 0, 10)) == b"0123456789"


def test_a_chunk_of_a_file_that_vanished_was_replaced_or_shrank_fails_with_its_reason(tmp_path: Path) -> None:
    path = tmp_path / "in"
    path.write_bytes(b"0123456789")
    chunk = _chunk(path, 2, 10)
    path.write_bytes(b"01234")
    assert _failure(read_chunk, chunk) == (
        "changed", "the file shrank while it was processed (written to incoming/ directly?)", False)
    os.rename(path, tmp_path / "kept")
    assert _failure(read_chunk, chunk) == ("vanished", "the claimed file disappeared from active/", False)
    path.write_bytes(b"0123456789")
    assert _failure(read_chunk, chunk) == ("replaced", "the file in active/ is not the one that was claimed", False)


def test_a_chunk_is_never_read_through_a_symlink_or_from_a_fifo(tmp_path: Path) -> None:
    (tmp_path / "real").write_bytes(b"0123456789")
    os.symlink(tmp_path / "real", tmp_path / "link")
    chunk = _chunk(tmp_path / "real", 0, 4)
    linked = Chunk(7, 2, str(tmp_path / "link"), 0, 4, 1, dev=chunk.dev, ino=chunk.ino)
    assert _failure(read_chunk, linked) == ("unreadable", "cannot open: Too many levels of symbolic links", False)
    os.mkfifo(tmp_path / "fifo")  # a writer-less FIFO would block a reader opened without O_NONBLOCK
    fifo = Chunk(7, 2, str(tmp_path / "fifo"), 0, 4, 1, dev=chunk.dev, ino=chunk.ino)
    assert _failure(read_chunk, fifo) == ("replaced", "the file in active/ is not the one that was claimed", False)


def test_a_leased_or_unreadable_chunk_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "in"
    path.write_bytes(b"0123456789")
    chunk = _chunk(path, 0, 4)
    codes = [errno.EWOULDBLOCK, errno.EACCES]

    def refuse(*args: Any) -> int:
        code = codes.pop(0)
        raise OSError(code, os.strerror(code))
    real_open = os.open
    monkeypatch.setattr(os, "open", refuse)
    assert _failure(read_chunk, chunk) == ("leased", "another process took a lease on it after its claim", False)
    assert _failure(read_chunk, chunk) == ("unreadable", "cannot open: Permission denied", False)
    monkeypatch.setattr(os, "open", real_open)
    before = open_under(tmp_path)

    def eio(*args: Any) -> bytes:
        raise OSError(errno.EIO, "Input/output error")
    monkeypatch.setattr(os, "pread", eio)
    assert _failure(read_chunk, chunk) == ("unreadable", "read error: Input/output error", False)
    assert open_under(tmp_path) == before


def test_the_opened_file_is_opened_without_following_links_or_blocking(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "in"
    path.write_bytes(b"0123456789\n")
    flags: list[int] = []
    real_open = os.open
    monkeypatch.setattr(os, "open", lambda p, f, *a, **k: flags.append(f) or real_open(p, f, *a, **k))
    read_chunk(_chunk(path, 0, 4))
    too_long_record(_chunk(path, 0, 11), 5)
    assert flags == [os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC] * 2


def test_a_line_too_long_becomes_one_error_record_with_a_preview(tmp_path: Path) -> None:
    path = tmp_path / "in"
    line = b"\xff" + b"a" * 199
    path.write_bytes(b"short\n" + line + b"\n" + b"tail")
    record, counts = too_long_record(_chunk(path, 6, 6 + 201, first_line=2), 100)
    # 64 bytes read, shown with undecodable bytes escaped
    assert orjson.loads(record) == {"line": 2, "input": "\\xff" + "a" * 63,
                                    "error": "line too long: 200 bytes, limit 100"}
    assert dict(counts) == {"lines": 1, "invalid": 1, "error.line_too_long": 1}
    record, _ = too_long_record(_chunk(path, 6 + 201, 6 + 205, first_line=3), 3)
    assert orjson.loads(record)["error"] == "line too long: 4 bytes, limit 3"  # the file's last line: no newline


def test_the_preview_is_the_first_64_bytes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "in"
    path.write_bytes(b"b" * 300 + b"\n")
    before = open_under(tmp_path)
    too_long_record(_chunk(path, 0, 301), 10)
    assert open_under(tmp_path) == before
    reads: list[tuple[int, int]] = []
    real = os.pread
    monkeypatch.setattr(os, "pread", lambda fd, n, off: reads.append((n, off)) or real(fd, n, off))
    too_long_record(_chunk(path, 0, 301), 10)
    assert reads == [(64, 0), (1, 300)]


def test_a_part_is_written_whole_fsynced_and_closed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    log = record_fsyncs(monkeypatch, tmp_path)
    before = open_under(tmp_path)
    write_part(str(tmp_path / "a.part"), b"rec\n" * 1000)
    assert (tmp_path / "a.part").read_bytes() == b"rec\n" * 1000
    assert stat.S_IMODE(os.stat(tmp_path / "a.part").st_mode) == 0o640
    assert log.paths == ["a.part"]
    write_part(str(tmp_path / "b.part"), b"x", sync=False)
    assert log.paths == ["a.part"]
    assert open_under(tmp_path) == before


def test_a_part_that_exists_or_is_planted_as_a_link_is_never_written_through(tmp_path: Path) -> None:
    (tmp_path / "victim").write_text("keep")
    (tmp_path / "a.part").symlink_to(tmp_path / "victim")
    reason, detail, retry = _failure(write_part, str(tmp_path / "a.part"), b"x")
    assert (reason, detail, retry) == ("results_unwritable", f"cannot create {tmp_path / 'a.part'}: File exists", True)
    assert (tmp_path / "victim").read_text() == "keep"


def test_partial_writes_are_continued(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = os.write
    monkeypatch.setattr(os, "write", lambda fd, data: real(fd, bytes(data[:3])))
    write_part(str(tmp_path / "a.part"), b"0123456789")
    assert (tmp_path / "a.part").read_bytes() == b"0123456789"


def test_output_may_reach_ratio_times_the_input_plus_slack_and_no_more(tmp_path: Path) -> None:
    writer = PartWriter(str(tmp_path / "a.part"), 10, 3)
    assert writer.limit == 30 + OUTPUT_SLACK
    writer.write(b"x" * 20)
    writer.write(b"x" * (writer.limit - 20))
    writer.close(sync=False)
    writer = PartWriter(str(tmp_path / "b.part"), 10, 3)
    writer.write(b"x" * 30)
    assert _failure(writer.write, b"x" * (OUTPUT_SLACK + 1)) == (
        "result_too_large", f"the records outgrew 3 times the input ({30 + OUTPUT_SLACK} bytes for this chunk); "
                            "limit spool.max_output_ratio", False)
    assert not (tmp_path / "b.part").exists()
    assert writer.fd is None


@pytest.mark.parametrize(("code", "reason", "retry"), [
    (errno.ENOSPC, "disk_full", True), (errno.EDQUOT, "disk_full", True), (errno.EIO, "write_error", True),
    (errno.EROFS, "write_error", False),
])
def test_a_write_or_fsync_that_fails_removes_the_part(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      code: int, reason: str, retry: bool) -> None:
    def refuse(*args: Any) -> int:
        raise OSError(code, os.strerror(code))
    before = open_under(tmp_path)
    path = tmp_path / "w.part"
    with monkeypatch.context() as mp:
        mp.setattr(os, "write", refuse)
        failure = _failure(write_part, str(path), b"x")
    assert failure == (reason, f"writing {path}: {os.strerror(code)}", retry)
    path = tmp_path / "s.part"
    with monkeypatch.context() as mp:
        mp.setattr(os, "fsync", refuse)
        failure = _failure(write_part, str(path), b"x")
    assert failure == (reason, f"writing {path}: {os.strerror(code)}", retry)
    assert os.listdir(tmp_path) == []
    assert open_under(tmp_path) == before


def test_a_part_that_cannot_be_created_is_the_results_disks_fault(tmp_path: Path) -> None:
    assert _failure(write_part, str(tmp_path / "none" / "a.part"), b"x") == (
        "results_unwritable", f"cannot create {tmp_path / 'none' / 'a.part'}: No such file or directory", True)


def test_abort_is_safe_twice_and_after_the_file_is_gone(tmp_path: Path) -> None:
    writer = PartWriter(str(tmp_path / "a.part"), 1, 1)
    writer.abort()
    writer.abort()
    assert (writer.fd, os.listdir(tmp_path)) == (None, [])
    writer = PartWriter(str(tmp_path / "b.part"), 1, 1)
    writer.close(sync=True)
    assert writer.fd is None
    assert os.listdir(tmp_path) == ["b.part"]
