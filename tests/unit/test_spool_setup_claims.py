"""Setting up the spool, its run folders, claiming and inspecting inputs: checked on the files on disk."""

from __future__ import annotations

import errno
import os
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ipspool import spool as spool_mod
from ipspool.spool import Spool, SpoolError
from tests.support.fsyncs import open_spool, open_under, record_fsyncs

SUBDIRS = ("tmp", "incoming", "active", "done", "failed")


@pytest.fixture(autouse=True)
def _umask() -> Iterator[None]:
    old = os.umask(0o022)
    yield
    os.umask(old)


@pytest.fixture
def sp(tmp_path: Path) -> Iterator[Spool]:
    spool = open_spool(tmp_path)
    yield spool
    spool.close()


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def test_create_makes_every_directory_with_the_protocols_modes(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "a" / "spool", tmp_path / "b" / "results")
    spool.create()
    assert sorted(os.listdir(tmp_path / "a" / "spool")) == sorted(SUBDIRS)
    assert {sub: _mode(tmp_path / "a" / "spool" / sub) for sub in SUBDIRS} == dict.fromkeys(SUBDIRS, 0o750)
    assert _mode(tmp_path / "b" / "results") == 0o750
    assert _mode(tmp_path / "b" / "results" / ".parts") == 0o700
    assert os.listdir(tmp_path / "b" / "results") == [".parts"]
    assert spool.acl_unsupported == []


class Recorded:
    """os.chown and Path.chmod, recorded and then done."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: list[tuple[str, str, int]] = []
        real_chown, real_chmod = os.chown, Path.chmod

        def chown(path: Any, uid: int, gid: int) -> None:
            self.calls.append(("chown", Path(path).name, gid))
            assert uid == -1
            real_chown(path, uid, gid)

        def chmod(path: Path, mode: int) -> None:
            self.calls.append(("chmod", path.name, mode))
            real_chmod(path, mode)
        monkeypatch.setattr(os, "chown", chown)
        monkeypatch.setattr(Path, "chmod", chmod)


def test_a_producer_group_gets_tmp_and_incoming_setgid_and_sticky_once(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    recorded = Recorded(monkeypatch)
    spool = Spool(tmp_path / "spool", tmp_path / "results")
    spool.create(producer_gid=4242)
    assert recorded.calls == [("chown", "tmp", 4242), ("chmod", "tmp", 0o3770),
                              ("chown", "incoming", 4242), ("chmod", "incoming", 0o3770)]
    for sub in SUBDIRS:
        st = os.lstat(tmp_path / "spool" / sub)
        shared = sub in ("tmp", "incoming")
        assert (st.st_gid == 4242, stat.S_IMODE(st.st_mode)) == (shared, 0o3770 if shared else 0o750)
    recorded.calls.clear()
    spool.create(producer_gid=4242)
    assert recorded.calls == []  # touched only when wrong


def test_the_default_acl_names_the_service_user_unless_it_is_root(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    written: list[tuple[str, bytes]] = []
    monkeypatch.setattr(os, "getxattr", lambda *a, **k: (_ for _ in ()).throw(OSError(errno.ENODATA, "none")))
    monkeypatch.setattr(os, "setxattr", lambda path, name, value, **k: written.append((Path(path).name, value)))
    monkeypatch.setattr(os, "chown", lambda *a: None)
    Spool(tmp_path / "s1", tmp_path / "r1").create(producer_gid=4242)
    assert written == [(n, spool_mod.private_default_acl(None)) for n in ("tmp", "incoming")]
    written.clear()
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    Spool(tmp_path / "s2", tmp_path / "r2").create(producer_gid=4242)
    assert written == [(n, spool_mod.private_default_acl(1000)) for n in ("tmp", "incoming")]


def test_directories_without_acl_support_are_listed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "getxattr", lambda *a, **k: (_ for _ in ()).throw(OSError(errno.ENOTSUP, "no")))
    spool = Spool(tmp_path / "spool", tmp_path / "results")
    spool.create(producer_gid=os.getgid())
    assert spool.acl_unsupported == [str(tmp_path / "spool" / "tmp"), str(tmp_path / "spool" / "incoming")]


@pytest.mark.parametrize("where", ["spool", "spool/incoming", "spool/done", "results", "results/.parts"])
def test_a_symlink_in_place_of_a_directory_is_refused_before_anything_is_created(tmp_path: Path, where: str) -> None:
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / where).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / where).symlink_to(tmp_path / "elsewhere")
    with pytest.raises(SpoolError) as err:
        Spool(tmp_path / "spool", tmp_path / "results").create()
    assert str(err.value) == f"{tmp_path / where}: is a symbolic link; refusing to follow it"
    assert os.listdir(tmp_path / "elsewhere") == []


def test_a_directory_that_cannot_be_created_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(SpoolError) as err:
        Spool(tmp_path / "file" / "spool", tmp_path / "results").create()
    assert str(err.value) == f"{tmp_path / 'file' / 'spool'}: cannot create the directory: Not a directory"

    def refuse(*args: Any) -> None:
        raise OSError(errno.EPERM, "Operation not permitted")
    monkeypatch.setattr(os, "chown", refuse)
    with pytest.raises(SpoolError) as err:
        Spool(tmp_path / "spool", tmp_path / "results").create(producer_gid=4242)
    assert str(err.value) == f"{tmp_path / 'spool'}: cannot create the directory: Operation not permitted"


def test_open_holds_every_directory_and_close_lets_go(tmp_path: Path) -> None:
    spool = open_spool(tmp_path)
    fds = dict(spool.fds)
    assert sorted(fds) == sorted((*SUBDIRS, "results", "parts", "all_parts"))
    named = {k: os.readlink(f"/proc/self/fd/{fd}") for k, fd in fds.items()}
    assert named == {**{s: str(tmp_path / "spool" / s) for s in SUBDIRS}, "results": str(tmp_path / "results"),
                     "parts": str(tmp_path / "results" / ".parts"), "all_parts": str(tmp_path / "results" / ".parts")}
    assert fds["parts"] == fds["all_parts"]
    flags = {k: os.get_inheritable(fd) for k, fd in fds.items()}
    assert set(flags.values()) == {False}
    spool.start_run()
    spool.close()
    assert (spool.fds, spool.run) == ({}, "")
    assert open_under(tmp_path) == []


def _open_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int) -> str:
    Spool(tmp_path / "spool", tmp_path / "results").create()
    real_open = os.open

    def refuse(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        if str(path).endswith("/done"):
            raise OSError(code, os.strerror(code), str(path))
        return real_open(path, flags, *args, **kwargs)
    monkeypatch.setattr(os, "open", refuse)
    spool = Spool(tmp_path / "spool", tmp_path / "results")
    with pytest.raises(SpoolError) as err:
        spool.open()
    for fd in spool.fds.values():
        os.close(fd)
    return str(err.value)


@pytest.mark.parametrize(("code", "said"), [
    (errno.ENOENT, "does not exist"), (errno.ENOTDIR, "not a directory"), (errno.EACCES, "permission denied"),
    (errno.ELOOP, "is a symbolic link; refusing to follow it"), (errno.EIO, "Input/output error"),
])
def test_a_directory_that_cannot_be_opened_says_why(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                    code: int, said: str) -> None:
    assert _open_error(tmp_path, monkeypatch, code) == f"{tmp_path / 'spool' / 'done'}: {said}"


def test_a_real_symlink_or_file_in_place_of_a_subdirectory_is_not_opened(tmp_path: Path) -> None:
    Spool(tmp_path / "spool", tmp_path / "results").create()
    os.rmdir(tmp_path / "spool" / "done")
    (tmp_path / "spool" / "done").symlink_to(tmp_path)
    # O_DIRECTORY|O_NOFOLLOW on a symlink: Linux answers ENOTDIR (open(2)), not ELOOP.
    for kind in ("symlink", "file"):
        spool = Spool(tmp_path / "spool", tmp_path / "results")
        with pytest.raises(SpoolError) as err:
            spool.open()
        assert str(err.value) == f"{tmp_path / 'spool' / 'done'}: not a directory"
        for fd in spool.fds.values():
            os.close(fd)
        (tmp_path / "spool" / "done").unlink()
        (tmp_path / "spool" / "done").write_text(kind)


def test_a_run_has_a_private_parts_folder_that_its_end_removes(sp: Spool, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    assert sp.parts_dir == tmp_path / "results" / ".parts"
    monkeypatch.setattr(time, "time_ns", lambda: 123456789)
    sp.start_run()
    run = f"run.{os.getpid()}.123456789"
    assert sp.run == run
    assert sp.parts_dir == tmp_path / "results" / ".parts" / run
    assert _mode(sp.parts_dir) == 0o700
    assert os.readlink(f"/proc/self/fd/{sp.fds['parts']}") == str(sp.parts_dir)
    assert sp.fds["all_parts"] != sp.fds["parts"]
    (sp.parts_dir / "a.part").write_text("x")
    (sp.parts_dir / "b.part").write_text("y")
    sp.end_run()
    assert os.listdir(tmp_path / "results" / ".parts") == []


def test_ending_no_run_or_a_run_whose_folder_is_gone_changes_nothing(sp: Spool, tmp_path: Path) -> None:
    (tmp_path / "results" / ".parts" / "other").mkdir()
    sp.end_run()
    assert os.listdir(tmp_path / "results" / ".parts") == ["other"]
    sp.start_run()
    (sp.parts_dir / "keep").mkdir()  # unlink fails on a directory: left for recovery
    sp.end_run()
    assert sorted(os.listdir(tmp_path / "results" / ".parts")) == sorted(["other", sp.run])


@pytest.mark.parametrize("entry", ["active/x", "done/x", "failed/x", "failed/x.error.json", "results/x.jsonl"])
def test_a_job_name_is_taken_while_any_entry_derived_from_it_exists(sp: Spool, tmp_path: Path, entry: str) -> None:
    where, name = entry.split("/")
    base = tmp_path / ("results" if where == "results" else f"spool/{where}")
    (base / name).symlink_to("/nowhere")
    assert sp.unique_job_name("x") == "x.1"
    (base / name.replace("x", "x.1", 1)).write_text("")
    assert sp.unique_job_name("x") == "x.2"
    assert sp.unique_job_name("y") == "y"


def test_no_free_name_is_a_spool_error(sp: Spool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "spool" / "done" / "x").write_text("")
    monkeypatch.setattr(spool_mod, "job_name_candidates", lambda name: iter([name]))
    with pytest.raises(SpoolError) as err:
        sp.unique_job_name("x")
    assert str(err.value) == "no free job name for 'x'"


def test_a_scan_lists_names_and_mtimes_without_dotfiles(sp: Spool, tmp_path: Path) -> None:
    incoming = tmp_path / "spool" / "incoming"
    for name, mtime in (("a", 1000.5), (".hidden", 2000.0), ("b", 3000.25)):
        (incoming / name).write_text("")
        os.utime(incoming / name, (mtime, mtime))
    (incoming / "link").symlink_to("/nowhere")
    os.utime(incoming / "link", (4000.0, 4000.0), follow_symlinks=False)
    assert sorted(sp.scan_incoming()) == [("a", 1000.5), ("b", 3000.25), ("link", 4000.0)]
    assert sp.mtime_in_incoming("b") == 3000.25
    assert sp.mtime_in_incoming("link") == 4000.0
    assert sp.mtime_in_incoming("gone") == -1.0


class _Vanishing:
    name = "gone"

    def stat(self, *, follow_symlinks: bool = True) -> os.stat_result:
        raise FileNotFoundError(errno.ENOENT, "gone")


def test_a_name_that_vanishes_during_a_scan_is_skipped(sp: Spool, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "spool" / "incoming" / "kept").write_text("")
    real = os.scandir

    class Entries:
        def __init__(self, path: Any) -> None:
            self.inner = real(path)

        def __enter__(self) -> Iterator[Any]:
            return iter([_Vanishing(), *self.inner])

        def __exit__(self, *exc: object) -> None:
            self.inner.close()
    monkeypatch.setattr(os, "scandir", Entries)
    assert [name for name, _ in sp.scan_incoming()] == ["kept"]


def test_a_claim_moves_the_input_under_a_free_name_and_says_none_when_it_is_gone(sp: Spool, tmp_path: Path) -> None:
    root = tmp_path / "spool"
    (root / "incoming" / "x").write_text("one")
    assert sp.claim("x") == "x"
    (root / "incoming" / "x").write_text("two")
    assert sp.claim("x") == "x.1"
    assert (sorted(os.listdir(root / "active")), os.listdir(root / "incoming")) == (["x", "x.1"], [])
    assert (root / "active" / "x.1").read_text() == "two"
    assert sp.claim("x") is None
    assert sorted(os.listdir(root / "active")) == ["x", "x.1"]


def test_claims_are_made_durable_incoming_then_active(sp: Spool, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    log = record_fsyncs(monkeypatch, tmp_path)
    sp.sync_claims()
    assert log.paths == ["spool/incoming", "spool/active"]
