"""The spool's naming rules and its checks of configured paths, against the names and files on disk."""

from __future__ import annotations

import collections
import errno
import os
import stat
import struct
from collections.abc import Iterator
from itertools import islice
from pathlib import Path
from typing import Any

import pytest

from ipspool import spool as spool_mod
from ipspool.spool import (
    SpoolError,
    ensure_runtime_dir,
    entry_exists,
    fsync_dir,
    job_base,
    job_entries,
    job_name_candidates,
    path_problems,
    printable,
)
from tests.support.fsyncs import record_fsyncs

ROOM = 255 - len(".error.json") - 12  # JOB.N.error.json must still fit in NAME_MAX


@pytest.fixture(autouse=True)
def _umask() -> Iterator[None]:
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_a_name_that_fits_is_its_own_base_and_a_longer_one_is_cut_to_the_room_left() -> None:
    """job_base keeps 232 bytes, so NAME.N.error.json fits in 255 bytes."""
    assert job_base("a" * ROOM) == "a" * ROOM
    assert job_base("b" * (ROOM + 1)) == "b" * ROOM
    assert len(os.fsencode(job_base("c" * 300) + ".999999.error.json")) <= 255


def test_the_base_of_a_name_counts_bytes_not_characters() -> None:
    """A multi-byte name is cut by its encoded length; undecodable bytes come back as surrogates."""
    name = "é" * ROOM  # 2 bytes each
    assert os.fsencode(job_base(name)) == os.fsencode(name)[:ROOM]
    raw = os.fsdecode(b"\xff" * (ROOM + 5))
    assert os.fsencode(job_base(raw)) == b"\xff" * ROOM


def test_every_entry_a_job_owns_is_listed() -> None:
    assert job_entries("x") == (
        ("active", "x"), ("done", "x"), ("failed", "x"), ("failed", "x.error.json"), ("results", "x.jsonl"),
        ("results", "x.csv"), ("results", "x.summary.json"),
    )


def test_candidates_are_the_name_then_numbered_names() -> None:
    assert list(islice(job_name_candidates("in.txt"), 4)) == ["in.txt", "in.txt.1", "in.txt.2", "in.txt.3"]


def test_a_name_like_an_error_record_or_too_long_is_never_a_candidate_itself() -> None:
    assert list(islice(job_name_candidates("x.error.json"), 2)) == ["x.error.json.1", "x.error.json.2"]
    long = "l" * (ROOM + 3)
    assert next(job_name_candidates(long)) == "l" * ROOM + ".1"


def test_candidates_stop_before_a_million() -> None:
    candidates = job_name_candidates("n")
    assert next(candidates) == "n"
    assert collections.deque(candidates, maxlen=1) == collections.deque(["n.999999"])


def test_fsync_dir_syncs_that_descriptor(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    log = record_fsyncs(monkeypatch, tmp_path)
    (tmp_path / "d").mkdir()
    fd = os.open(tmp_path / "d", os.O_RDONLY)
    try:
        fsync_dir(fd)
    finally:
        os.close(fd)
    assert log.paths == ["d"]


def test_printable_shows_undecodable_bytes_and_lone_surrogates_escaped() -> None:
    assert printable("plain é") == "plain é"
    assert printable(os.fsdecode(b"a\xffb")) == "a\\xffb"
    assert printable("x\ud800y") == "x\\ud800y"


def test_the_runtime_dir_is_created_with_its_parents_mode_0750(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "run"
    ensure_runtime_dir(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o750
    ensure_runtime_dir(path)  # an existing one is fine


def test_a_runtime_dir_that_is_a_symlink_is_refused(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "run").symlink_to(tmp_path / "real")
    with pytest.raises(SpoolError) as err:
        ensure_runtime_dir(tmp_path / "run")
    assert str(err.value) == f"spool.runtime_dir: {tmp_path / 'run'} is a symbolic link; refusing to follow it"


def test_a_runtime_dir_under_a_file_cannot_be_created(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("")
    with pytest.raises(SpoolError) as err:
        ensure_runtime_dir(tmp_path / "f" / "run")
    assert str(err.value) == f"spool.runtime_dir: {tmp_path / 'f' / 'run'} cannot be created: {tmp_path / 'f'} " \
                             "is not a directory"


def test_a_runtime_dir_mkdir_refuses_says_why(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(self: Path, *args: Any, **kwargs: Any) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(Path, "mkdir", refuse)
    with pytest.raises(SpoolError) as err:
        ensure_runtime_dir(tmp_path / "run")
    assert str(err.value) == f"spool.runtime_dir: {tmp_path / 'run'} cannot be created: No space left on device"


def test_a_runtime_dir_this_user_cannot_write_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = tmp_path / "run"
    run.mkdir()
    calls: list[tuple[str, int]] = []

    def access(path: Any, mode: int) -> bool:
        calls.append((str(path), mode))
        return len(calls) == 1  # the first check (of the directory as found) passes, the one after mkdir not
    monkeypatch.setattr(os, "access", access)
    with pytest.raises(SpoolError) as err:
        ensure_runtime_dir(run)
    assert str(err.value) == f"spool.runtime_dir: {run} is not writable by this user"
    assert calls == [(str(run), os.W_OK | os.X_OK)] * 2


def _access_denied_for(monkeypatch: pytest.MonkeyPatch, *denied: Path) -> list[tuple[str, int]]:
    calls: list[tuple[str, int]] = []

    def access(path: Any, mode: int) -> bool:
        calls.append((str(path), mode))
        return Path(path) not in denied
    monkeypatch.setattr(os, "access", access)
    return calls


def test_path_problems_are_none_for_usable_and_creatable_paths(tmp_path: Path) -> None:
    (tmp_path / "spool").mkdir()
    assert path_problems(tmp_path / "spool", tmp_path / "new" / "results", tmp_path / "run", "") == []
    assert path_problems(tmp_path / "spool", tmp_path / "r", tmp_path / "run", str(tmp_path / "log")) == []
    (tmp_path / "log").write_text("")
    assert path_problems(tmp_path / "spool", tmp_path / "r", tmp_path / "run", str(tmp_path / "log")) == []


def test_path_problems_name_each_key_and_what_is_wrong(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "file").write_text("")
    (tmp_path / "link").symlink_to(tmp_path)
    (tmp_path / "locked").mkdir()
    calls = _access_denied_for(monkeypatch, tmp_path / "locked")
    problems = path_problems(tmp_path / "file", tmp_path / "link", tmp_path / "locked" / "run", "")
    assert problems == [
        f"spool.dir: {tmp_path / 'file'} is not a directory",
        f"spool.results_dir: {tmp_path / 'link'} is a symbolic link; refusing to follow it",
        f"spool.runtime_dir: {tmp_path / 'locked' / 'run'} cannot be created: {tmp_path / 'locked'} "
        "is not writable by this user",
    ]
    assert calls == [(str(tmp_path / "locked"), os.W_OK | os.X_OK)]
    assert path_problems(tmp_path / "locked", tmp_path, tmp_path, "") == [
        f"spool.dir: {tmp_path / 'locked'} is not writable by this user"]


def test_path_problems_of_the_log_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "ro").write_text("")
    (tmp_path / "rodir").mkdir()
    calls = _access_denied_for(monkeypatch, tmp_path / "ro", tmp_path / "rodir")
    ok = (tmp_path, tmp_path, tmp_path)
    assert path_problems(*ok, str(tmp_path / "d")) == [f"log.file: {tmp_path / 'd'} is not a writable regular file"]
    assert path_problems(*ok, str(tmp_path / "ro")) == [f"log.file: {tmp_path / 'ro'} is not a writable regular file"]
    assert (str(tmp_path / "ro"), os.W_OK) in calls
    assert path_problems(*ok, str(tmp_path / "rodir" / "log")) == [
        f"log.file: {tmp_path / 'rodir' / 'log'} cannot be created: {tmp_path / 'rodir'} is not a writable directory"]
    assert (str(tmp_path / "rodir"), os.W_OK | os.X_OK) in calls
    assert path_problems(*ok, str(tmp_path / "nodir" / "log")) == [
        f"log.file: {tmp_path / 'nodir' / 'log'} cannot be created: {tmp_path / 'nodir'} is not a writable directory"]


def test_an_existing_writable_log_file_needs_no_writable_directory(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "ipspool.log").write_text("")
    _access_denied_for(monkeypatch, tmp_path / "logs")
    assert path_problems(tmp_path, tmp_path, tmp_path, str(tmp_path / "logs" / "ipspool.log")) == []


def test_entry_exists_sees_any_kind_of_entry_without_following_links(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("")
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert entry_exists("f", fd)
        assert entry_exists("dangling", fd)
        assert not entry_exists("nowhere", fd)
    finally:
        os.close(fd)


def test_the_private_default_acl_is_laid_out_as_the_kernel_reads_it() -> None:
    """posix_acl_xattr.h: version 2, then (tag, perm, id) little-endian, sorted by tag."""
    undefined = 0xFFFFFFFF
    assert spool_mod.private_default_acl(1234) == struct.pack(
        "<IHHIHHIHHIHHIHHI", 2, 0x01, 7, undefined, 0x02, 4, 1234, 0x04, 0, undefined, 0x10, 4, undefined,
        0x20, 0, undefined)
    assert spool_mod.acl_entries(spool_mod.private_default_acl(None)) == [
        (0x01, 7, undefined), (0x04, 0, undefined), (0x10, 4, undefined), (0x20, 0, undefined)]


class FakeXattrs:
    """getxattr/setxattr of one attribute, with an errno to raise on either."""

    def __init__(self, current: bytes | None, get_errno: int = 0, set_errno: int = 0) -> None:
        self.current = current
        self.get_errno = get_errno
        self.set_errno = set_errno
        self.written: list[tuple[str, str, bytes, bool]] = []

    def getxattr(self, path: Any, name: str, *, follow_symlinks: bool = True) -> bytes:
        assert (name, follow_symlinks) == ("system.posix_acl_default", False)
        if self.get_errno:
            raise OSError(self.get_errno, os.strerror(self.get_errno))
        if self.current is None:
            raise OSError(errno.ENODATA, "No data available")
        return self.current

    def setxattr(self, path: Any, name: str, value: bytes, *, follow_symlinks: bool = True) -> None:
        if self.set_errno:
            raise OSError(self.set_errno, os.strerror(self.set_errno))
        self.written.append((str(path), name, value, follow_symlinks))


def _xattrs(monkeypatch: pytest.MonkeyPatch, fake: FakeXattrs) -> FakeXattrs:
    monkeypatch.setattr(os, "getxattr", fake.getxattr)
    monkeypatch.setattr(os, "setxattr", fake.setxattr)
    return fake


@pytest.mark.parametrize("code", [errno.ENOTSUP, errno.EOPNOTSUPP])
def test_a_filesystem_without_acls_is_reported_not_raised(monkeypatch: pytest.MonkeyPatch, code: int) -> None:
    _xattrs(monkeypatch, FakeXattrs(None, get_errno=code))
    assert spool_mod.ensure_private_default_acl(Path("/x"), 5) is False
    fake = _xattrs(monkeypatch, FakeXattrs(None, set_errno=code))
    assert spool_mod.ensure_private_default_acl(Path("/x"), 5) is False
    assert fake.written == []


def test_other_acl_errors_are_raised(monkeypatch: pytest.MonkeyPatch) -> None:
    _xattrs(monkeypatch, FakeXattrs(None, get_errno=errno.EIO))
    with pytest.raises(OSError):
        spool_mod.ensure_private_default_acl(Path("/x"), 5)
    _xattrs(monkeypatch, FakeXattrs(None, set_errno=errno.EPERM))
    with pytest.raises(OSError):
        spool_mod.ensure_private_default_acl(Path("/x"), 5)


def test_a_missing_or_wrong_acl_is_written_and_a_right_one_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    wanted = spool_mod.private_default_acl(5)
    fake = _xattrs(monkeypatch, FakeXattrs(None))
    assert spool_mod.ensure_private_default_acl(Path("/x"), 5) is True
    assert fake.written == [("/x", "system.posix_acl_default", wanted, False)]
    fake = _xattrs(monkeypatch, FakeXattrs(wanted))
    assert spool_mod.ensure_private_default_acl(Path("/x"), 5) is True
    assert fake.written == []
    fake = _xattrs(monkeypatch, FakeXattrs(spool_mod.private_default_acl(None)))
    assert spool_mod.ensure_private_default_acl(Path("/x"), None) is True
    assert fake.written == []


@pytest.mark.parametrize("missing", [(0x02, 4, 5), (0x04, 0, 0xFFFFFFFF), (0x20, 0, 0xFFFFFFFF)])
def test_an_acl_lacking_one_entry_is_rewritten(monkeypatch: pytest.MonkeyPatch, missing: tuple[int, int, int]) -> None:
    entries = [e for e in spool_mod.acl_entries(spool_mod.private_default_acl(5)) if e != missing]
    fake = _xattrs(monkeypatch, FakeXattrs(struct.pack("<I", 2) + b"".join(struct.pack("<HHI", *e) for e in entries)))
    assert spool_mod.ensure_private_default_acl(Path("/x"), 5) is True
    assert [w[2] for w in fake.written] == [spool_mod.private_default_acl(5)]
