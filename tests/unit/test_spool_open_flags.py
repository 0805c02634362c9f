"""Every file and directory the spool, recovery and the part writer open is opened with the protocol's flags.

O_NOFOLLOW (nothing planted redirects a read or write), O_NONBLOCK for inputs
(a FIFO cannot block), O_EXCL where a file must be new, O_CLOEXEC everywhere
(no worker inherits a descriptor): checked on the calls themselves.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from ipspool.parts import PartWriter
from ipspool.recovery import recover
from ipspool.spool import Spool
from tests.support.fsyncs import open_spool

DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
INPUT = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


class Opens:
    """os.open, recorded as (name, flags, mode) and then done."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: list[tuple[str, int, int | None]] = []
        real = os.open

        def record(path: Any, flags: int, mode: int = 0o777, *, dir_fd: int | None = None) -> int:
            self.calls.append((os.path.basename(os.fsdecode(path)), flags, mode if flags & os.O_CREAT else None))
            return real(path, flags, mode, dir_fd=dir_fd)
        monkeypatch.setattr(os, "open", record)


@pytest.fixture
def sp(tmp_path: Path) -> Iterator[Spool]:
    spool = open_spool(tmp_path)
    yield spool
    spool.close()


def test_directories_are_opened_without_following_links(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    Spool(tmp_path / "spool", tmp_path / "results").create()
    opens = Opens(monkeypatch)
    spool = Spool(tmp_path / "spool", tmp_path / "results")
    spool.open()
    spool.start_run()
    spool.close()
    assert [c[1] for c in opens.calls] == [DIR] * 8
    assert [c[0] for c in opens.calls][:7] == ["tmp", "incoming", "active", "done", "failed", "results", ".parts"]


def test_parts_are_joined_through_descriptors_that_follow_no_link(sp: Spool, monkeypatch: pytest.MonkeyPatch) -> None:
    sp.start_run()
    Path(sp.part_path("a.part")).write_bytes(b"a")
    opens = Opens(monkeypatch)
    sp.assemble([sp.part_path("a.part")], "out.part")
    assert opens.calls == [("out.part", os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o640),
                           ("a.part", os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, None)]


def test_an_assembly_planted_as_a_symlink_is_not_written_through(sp: Spool, tmp_path: Path) -> None:
    sp.start_run()
    (tmp_path / "victim").write_text("keep")
    os.symlink(tmp_path / "victim", sp.part_path("out.part"))
    Path(sp.part_path("a.part")).write_bytes(b"a")
    with pytest.raises(OSError):
        sp.assemble([sp.part_path("a.part")], "out.part")
    assert (tmp_path / "victim").read_text() == "keep"
    assert os.listdir(sp.parts_dir) == ["a.part"]  # the planted link is taken away, the part kept for the retry


def test_an_error_record_is_written_to_a_new_file_that_follows_no_link(sp: Spool, tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "spool" / "active" / "job").write_text("x")
    opens = Opens(monkeypatch)
    sp.fail("job", "r", "d")
    assert opens.calls == [(f".job.{os.getpid()}.tmp",
                            os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o640)]


def test_a_temporary_record_planted_after_the_cleanup_is_refused_not_followed(sp: Spool, tmp_path: Path,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """O_EXCL: an entry that appears between the unlink and the open is never opened."""
    (tmp_path / "victim").write_text("keep")
    (tmp_path / "spool" / "active" / "job").write_text("x")
    tmp_name = f".job.{os.getpid()}.tmp"
    real = os.unlink

    def plant(name: str, *, dir_fd: int) -> None:
        try:
            real(name, dir_fd=dir_fd)
        finally:
            if name == tmp_name:
                os.symlink(tmp_path / "victim", name, dir_fd=dir_fd)
    monkeypatch.setattr(os, "unlink", plant)
    with pytest.raises(FileExistsError):
        sp.fail("job", "r", "d")
    assert (tmp_path / "victim").read_text() == "keep"
    assert os.listdir(tmp_path / "spool" / "active") == ["job"]


def test_recovery_reads_records_and_empties_run_folders_without_following_links(
        sp: Spool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "spool" / "active" / "job").write_text("x")
    (tmp_path / "spool" / "failed" / "job.error.json").write_bytes(orjson.dumps({"job": "job"}))
    (tmp_path / "results" / ".parts" / "run.1.2").mkdir()
    opens = Opens(monkeypatch)
    assert recover(sp, True) == ([], [], ["job"])
    assert opens.calls == [("run.1.2", DIR, None), ("job.error.json", INPUT, None)]


def test_a_part_file_must_be_new_and_follows_no_link(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    opens = Opens(monkeypatch)
    PartWriter(str(tmp_path / "a.part"), 1, 1).close(sync=False)
    assert opens.calls == [("a.part", os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o640)]
