"""What a claimed input must be to be read, who may own it, and when it counts as changed."""

from __future__ import annotations

import errno
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ipspool import spool as spool_mod
from ipspool.spool import LEASED, Claimed, InputRejected, OwnerCheck, Spool
from tests.support.fsyncs import open_spool, open_under


@pytest.fixture
def sp(tmp_path: Path) -> Iterator[Spool]:
    spool = open_spool(tmp_path)
    yield spool
    spool.close()


def _active(tmp_path: Path, name: str, data: bytes = b"1.2.3.4\n") -> Path:
    path = tmp_path / "spool" / "active" / name
    path.write_bytes(data)
    return path


def _rejected(sp: Spool, job: str, max_bytes: int = 1 << 20, owner_ok: Any = None) -> tuple[str, str]:
    with pytest.raises(InputRejected) as err:
        sp.inspect("in", job, max_bytes, owner_ok)
    return err.value.reason, err.value.detail


def test_a_regular_file_is_described_by_its_inode(sp: Spool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _active(tmp_path, "job.1", b"x" * 100)
    os.utime(path, (5000.5, 5000.5))
    monkeypatch.setattr(time, "time", lambda: 77.25)
    st = os.stat(path)
    claimed = sp.inspect("job", "job.1", 100)
    assert claimed == Claimed("job", "job.1", str(path), 100, st.st_dev, st.st_ino, 77.25, 5000.5, st.st_ctime_ns)


def test_every_kind_of_entry_that_is_not_a_regular_file_is_refused_unread(sp: Spool, tmp_path: Path) -> None:
    active = tmp_path / "spool" / "active"
    (active / "link").symlink_to(_active(tmp_path, "target"))
    os.mkfifo(active / "fifo")
    (active / "dir").mkdir()
    assert _rejected(sp, "link") == ("not_regular_file", "is a symbolic link; not followed")
    assert _rejected(sp, "fifo") == ("not_regular_file", "is a FIFO")
    assert _rejected(sp, "dir") == ("not_regular_file", "is a directory")


@pytest.mark.parametrize(("kind", "said"), [
    (0o140000, "is a socket"), (0o020000, "is a character device"), (0o060000, "is a block device"),
    (0o120000, "is a symbolic link"), (0o170000, "is not a regular file"),
])
def test_special_files_are_named_by_kind(sp: Spool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                         kind: int, said: str) -> None:
    _active(tmp_path, "odd")
    real = os.fstat
    monkeypatch.setattr(os, "fstat", lambda fd: os.stat_result((kind | 0o644, *real(fd)[1:10])))
    assert _rejected(sp, "odd") == ("not_regular_file", said)


@pytest.mark.parametrize(("code", "reason", "detail"), [
    (errno.EACCES, "unreadable", "permission denied for the service user"),
    (errno.EPERM, "unreadable", "permission denied for the service user"),
    (errno.ENXIO, "not_regular_file", "is a socket or device"),
    (errno.EWOULDBLOCK, "leased", LEASED),
    (errno.EIO, "unreadable", "cannot open: Input/output error"),
    (errno.ELOOP, "not_regular_file", "is a symbolic link; not followed"),
])
def test_an_input_that_cannot_be_opened_is_refused_with_its_reason(sp: Spool, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch,
                                                                   code: int, reason: str, detail: str) -> None:
    _active(tmp_path, "job")
    real = os.open
    opened: list[tuple[int, int]] = []

    def refuse(path: Any, flags: int, mode: int = 0o777, *, dir_fd: int | None = None) -> int:
        if path == "job":
            opened.append((flags, dir_fd or -1))
            raise OSError(code, os.strerror(code))
        return real(path, flags, mode, dir_fd=dir_fd)
    monkeypatch.setattr(os, "open", refuse)
    assert _rejected(sp, "job") == (reason, detail)
    assert opened == [(os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, sp.fds["active"])]


def test_the_leased_detail_tells_producers_what_to_do() -> None:
    assert LEASED == ("another process holds a lease on it (it still has the file open); "
                      "producers must close the file before renaming it into incoming/")


def test_hard_links_and_large_files_are_refused(sp: Spool, tmp_path: Path) -> None:
    path = _active(tmp_path, "linked")
    os.link(path, tmp_path / "outside")
    assert _rejected(sp, "linked") == ("hard_link", "has 2 links; only single-link files are read")
    _active(tmp_path, "big", b"y" * 11)
    assert _rejected(sp, "big", 10) == ("too_large", "11 bytes, limit spool.max_file_bytes=10")
    assert sp.inspect("big", "big", 11).size == 11


def test_the_owner_is_checked_before_anything_else_and_the_descriptor_is_closed(sp: Spool, tmp_path: Path) -> None:
    active = tmp_path / "spool" / "active"
    os.mkfifo(active / "fifo")
    os.chown(active / "fifo", 4321, -1)
    seen: list[int] = []

    def owner_ok(uid: int) -> bool:
        seen.append(uid)
        return uid != 4321
    before = len(open_under(tmp_path))
    assert _rejected(sp, "fifo", owner_ok=owner_ok) == (
        "foreign_owner",
        "owned by uid 4321, who is neither in the producer group nor the service user (spool.check_owner)")
    assert len(open_under(tmp_path)) == before
    _active(tmp_path, "mine")
    assert sp.inspect("mine", "mine", 100, owner_ok).name == "mine"
    assert seen == [4321, os.geteuid()]


def _claimed(sp: Spool, tmp_path: Path) -> tuple[Claimed, Path]:
    path = _active(tmp_path, "job", b"abc\n")
    os.utime(path, (100.0, 100.0))
    return sp.inspect("job", "job", 100), path


def test_an_unchanged_input_is_not_changed(sp: Spool, tmp_path: Path) -> None:
    claimed, _ = _claimed(sp, tmp_path)
    assert sp.changed(claimed) is None


def test_a_vanished_or_replaced_input_is_changed(sp: Spool, tmp_path: Path) -> None:
    claimed, path = _claimed(sp, tmp_path)
    keep = tmp_path / "keep"
    os.rename(path, keep)
    assert sp.changed(claimed) == "the claimed file disappeared from active/"
    path.write_bytes(b"abc\n")
    os.utime(path, (100.0, 100.0))
    assert sp.changed(claimed) == "the file in active/ is not the one that was claimed"
    path.unlink()
    os.symlink(keep, path)  # the link itself is looked at, not what it names
    assert sp.changed(claimed) == "the file in active/ is not the one that was claimed"


def test_a_write_is_seen_by_size_by_mtime_and_by_ctime_alone(sp: Spool, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    claimed, path = _claimed(sp, tmp_path)
    said = "written to while it was processed (4 -> {} bytes); producers must write in tmp/ and rename into incoming/"
    with path.open("ab") as f:
        f.write(b"more\n")
    assert sp.changed(claimed) == said.format(9)
    claimed, path = _claimed(sp, tmp_path)
    os.utime(path, (100.0, 101.0))
    assert sp.changed(claimed) == said.format(4)
    claimed, path = _claimed(sp, tmp_path)
    st = os.stat(path)
    real = os.stat
    monkeypatch.setattr(os, "stat", lambda *a, **k: _with_ctime(real(*a, **k), st.st_ctime_ns + 1))
    assert sp.changed(claimed) == said.format(4)


def _with_ctime(st: os.stat_result, ctime_ns: int) -> Any:
    class Moved:
        def __getattr__(self, name: str) -> Any:
            return ctime_ns if name == "st_ctime_ns" else getattr(st, name)
    return Moved()


def test_trusted_owners_need_no_lookup(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 999)
    looked: list[int] = []
    import pwd
    monkeypatch.setattr(pwd, "getpwuid", lambda uid: looked.append(uid) or (_ for _ in ()).throw(KeyError(uid)))
    check = OwnerCheck(50)
    assert (check.gid, check(0), check(999), check(1000)) == (50, True, True, False)
    assert looked == [1000]


class Users:
    """pwd.getpwuid and os.getgrouplist over a table, counting lookups."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, groups: dict[int, list[int]]) -> None:
        self.groups = groups
        self.lookups = 0
        import pwd
        monkeypatch.setattr(pwd, "getpwuid", self.getpwuid)
        monkeypatch.setattr(os, "getgrouplist", self.getgrouplist)

    def getpwuid(self, uid: int) -> Any:
        self.lookups += 1
        if uid not in self.groups:
            raise KeyError(uid)

        class User:
            pw_name = f"u{uid}"
            pw_gid = 7
        return User()

    def getgrouplist(self, name: str, gid: int) -> list[int]:
        if name == "u666":
            raise OSError(errno.EINVAL, "bad")
        return [gid, *self.groups[int(name[1:])]]


def test_membership_comes_from_the_group_list_and_is_kept_for_a_minute(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [1000.0]
    monkeypatch.setattr(spool_mod.time, "monotonic", lambda: now[0])
    users = Users(monkeypatch, {1001: [50], 1002: [51], 666: []})
    check = OwnerCheck(50)
    assert (check(1001), check(1002), check(1003), check(666)) == (True, False, False, False)
    assert users.lookups == 4
    users.groups[1001] = []
    users.groups[1002] = [50]
    now[0] = 1059.75
    assert (check(1001), check(1002)) == (True, False)
    assert users.lookups == 4
    now[0] = 1060.0
    assert (check(1001), check(1002)) == (False, True)
    assert users.lookups == 6
    assert check.cache[1001] == (False, 1060.0)
    assert OwnerCheck.TTL == 60.0


def test_a_user_whose_primary_group_is_the_producer_group_may_submit(monkeypatch: pytest.MonkeyPatch) -> None:
    """getgrouplist is given the user's primary group: membership through it alone counts."""
    Users(monkeypatch, {1005: []})
    assert OwnerCheck(7)(1005) is True
