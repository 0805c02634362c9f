"""Producer subdirectories of incoming/: their names, the job names made from them, scans, claims and syncs.

Checked on real directories: what a scan yields, what a claim moves, which
directories get fsync'd, and that nothing a producer plants (a link in place
of its subdirectory, a tree inside it, more subdirectories than the cap) is
followed or read.
"""

from __future__ import annotations

import errno
import os
import stat
import string
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ipspool import spool as spool_mod
from ipspool.config import ConfigError, parse_config
from ipspool.formats import select
from ipspool.formats.select import rule_for
from ipspool.spool import Spool, job_source, job_stem, producer_subdir
from tests.support.fsyncs import fail_fsync, open_spool, open_under, record_fsyncs

SUB_FIRST = string.ascii_letters + string.digits + "_"
SUB_REST = SUB_FIRST + ".-"


@pytest.fixture
def sp(tmp_path: Path) -> Iterator[Spool]:
    spool = open_spool(tmp_path)
    spool.incoming.max_subdirs = 32
    yield spool
    spool.close()


def _incoming(tmp_path: Path) -> Path:
    return tmp_path / "spool" / "incoming"


# -- names ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["a", "firewall", "fw-2", "fw.eu", "_x", "0", "A" * 64])
def test_names_an_operator_would_type_are_subdirectory_names(name: str) -> None:
    assert producer_subdir(name)


@pytest.mark.parametrize("name", ["", ".hidden", "-x", "a~b", "a/b", "a b", "A" * 65, "caf\u00e9", "x\udcff",
                                  "a\n", "a:b"])
def test_anything_else_is_not(name: str) -> None:
    assert not producer_subdir(name)


subdir_names = st.builds(lambda first, rest: first + rest, st.sampled_from(SUB_FIRST),
                         st.text(SUB_REST, max_size=63))
file_names = st.text(st.characters(exclude_characters="/\0", exclude_categories=("Cs",)), min_size=1, max_size=80)


@given(subdir_names, file_names)
def test_the_job_name_says_which_subdirectory_and_name_the_file_came_from(sub: str, name: str) -> None:
    """SUB/NAME and its job name SUB~NAME give back (SUB, NAME), whatever NAME holds (a ~ too)."""
    assert job_stem(f"{sub}/{name}") == f"{sub}~{name}"
    assert job_source(f"{sub}/{name}") == job_source(job_stem(f"{sub}/{name}")) == (sub, name)


@given(file_names)
def test_a_top_level_name_is_its_own_stem(name: str) -> None:
    assert job_stem(name) == name
    sub, base = job_source(name)
    assert (sub, base) == ("", name) or (f"{sub}~{base}" == name and producer_subdir(sub))


def test_a_trailing_or_leading_separator_is_no_subdirectory() -> None:
    assert job_source("ips.txt~") == ("", "ips.txt~")
    assert job_source("~x") == ("", "~x")
    assert job_source(".fw~x") == ("", ".fw~x")


# -- scans ---------------------------------------------------------------------------------------------


def test_a_scan_reads_each_subdirectory_one_level_deep_and_nothing_it_may_not(sp: Spool, tmp_path: Path) -> None:
    held = open_under(tmp_path)  # the spool's own descriptors
    incoming = _incoming(tmp_path)
    (incoming / "top.txt").write_text("")
    (incoming / "fw").mkdir()
    (incoming / "fw" / "a.csv").write_text("")
    (incoming / "fw" / ".partial").write_text("")
    (incoming / "fw" / "nested").mkdir()  # an input like any other: it fails as not_regular_file
    (incoming / "fw" / "nested" / "deep.txt").write_text("")
    (incoming / "bad name").mkdir()  # not a subdirectory name: an input
    (incoming / ".hidden").mkdir()
    (incoming / "link").symlink_to(incoming / "fw")  # a link is never a subdirectory
    (incoming / "ok").mkdir()
    names = sorted(name for name, _ in sp.scan_incoming())
    assert names == ["bad name", "fw/a.csv", "fw/nested", "link", "top.txt"]
    assert list(sp.incoming.subdirs) == ["fw", "ok"]
    fw = os.lstat(incoming / "fw")
    assert sp.incoming.subdirs["fw"] == (fw.st_dev, fw.st_ino)
    assert sp.incoming.over_cap == []
    assert open_under(tmp_path) == held  # every subdirectory descriptor closed again


def test_past_the_cap_subdirectories_are_left_in_name_order_and_0_means_none(sp: Spool, tmp_path: Path) -> None:
    incoming = _incoming(tmp_path)
    for sub in ("c", "a", "b"):
        (incoming / sub).mkdir()
        (incoming / sub / "f").write_text("")
    sp.incoming.max_subdirs = 2
    assert sorted(name for name, _ in sp.scan_incoming()) == ["a/f", "b/f"]
    assert (list(sp.incoming.subdirs), sp.incoming.over_cap) == (["a", "b"], ["c"])
    sp.incoming.max_subdirs = 0
    assert sorted(name for name, _ in sp.scan_incoming()) == ["a", "b", "c"]
    assert sp.incoming.subdirs == {}


def test_a_subdirectory_that_vanishes_during_a_scan_is_skipped(sp: Spool, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    (_incoming(tmp_path) / "fw").mkdir()
    (_incoming(tmp_path) / "fw" / "f").write_text("")
    real = sp.incoming.subdir_fd

    def vanished(sub: str) -> int:
        raise FileNotFoundError(errno.ENOENT, "gone")
    monkeypatch.setattr(sp.incoming, "subdir_fd", vanished)
    assert list(sp.scan_incoming()) == []
    monkeypatch.setattr(sp.incoming, "subdir_fd", real)
    assert [name for name, _ in sp.scan_incoming()] == ["fw/f"]


def test_the_mtime_of_a_name_in_a_subdirectory_and_of_one_that_is_gone(sp: Spool, tmp_path: Path) -> None:
    held = open_under(tmp_path)  # the spool's own descriptors
    (_incoming(tmp_path) / "fw").mkdir()
    (_incoming(tmp_path) / "fw" / "f").write_text("")
    os.utime(_incoming(tmp_path) / "fw" / "f", (1234.5, 1234.5))
    assert sp.mtime_in_incoming("fw/f") == 1234.5
    assert sp.mtime_in_incoming("fw/gone") == -1.0
    assert sp.mtime_in_incoming("nodir/f") == -1.0
    assert open_under(tmp_path) == held


# -- claims --------------------------------------------------------------------------------------------


def test_a_claim_from_a_subdirectory_is_job_sub_tilde_name_and_collides_with_nothing(sp: Spool,
                                                                                    tmp_path: Path) -> None:
    held = open_under(tmp_path)  # the spool's own descriptors
    root = tmp_path / "spool"
    (root / "incoming" / "fw").mkdir()
    (root / "incoming" / "fw" / "x.csv").write_text("sub")
    (root / "incoming" / "fw~x.csv").write_text("top, named like the job")
    (root / "incoming" / "x.csv").write_text("top")
    assert sp.claim("fw/x.csv") == "fw~x.csv"
    assert sp.claim("fw~x.csv") == "fw~x.csv.1"
    assert sp.claim("x.csv") == "x.csv"
    assert {n: (root / "active" / n).read_text() for n in os.listdir(root / "active")} == {
        "fw~x.csv": "sub", "fw~x.csv.1": "top, named like the job", "x.csv": "top"}
    assert sp.claim("fw/x.csv") is None  # already gone
    assert sp.claim("gone/x.csv") is None  # and its subdirectory too
    sp.sync_claims()
    assert open_under(tmp_path) == held  # fw/ was held open for the sync only


def test_a_subdirectory_swapped_for_a_link_after_the_scan_is_not_followed(sp: Spool, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "x").write_text("not the spool's")
    incoming = _incoming(tmp_path)
    (incoming / "fw").mkdir()
    (incoming / "fw" / "x").write_text("")
    assert [name for name, _ in sp.scan_incoming()] == ["fw/x"]
    os.unlink(incoming / "fw" / "x")
    os.rmdir(incoming / "fw")
    (incoming / "fw").symlink_to(outside)
    with pytest.raises(OSError) as err:
        sp.claim("fw/x")
    assert err.value.errno in (errno.ELOOP, errno.ENOTDIR)  # O_NOFOLLOW | O_DIRECTORY on a link
    assert sp.mtime_in_incoming("fw/x") == -1.0
    assert os.listdir(tmp_path / "spool" / "active") == []
    assert (outside / "x").read_text() == "not the spool's"


def test_claims_sync_incoming_then_each_subdirectory_claimed_from_then_active(sp: Spool, tmp_path: Path,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    incoming = _incoming(tmp_path)
    for sub in ("b", "a", "idle"):
        (incoming / sub).mkdir()
    for name in ("b/1", "a/1", "a/2", "top"):
        (incoming / name).write_text("")
    for name in ("b/1", "a/1", "a/2", "top"):
        sp.claim(name)
    log = record_fsyncs(monkeypatch, tmp_path)
    sp.sync_claims()
    assert log.paths == ["spool/incoming", "spool/incoming/a", "spool/incoming/b", "spool/active"]
    log.clear()
    sp.sync_claims()
    assert log.paths == ["spool/incoming", "spool/active"]  # nothing claimed from a subdirectory since


def test_the_sync_reaches_the_directory_a_claim_left_even_once_it_is_renamed_away(
        sp: Spool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The claim keeps its subdirectory open until the sync: a power cut cannot bring the file back
    into the directory it left, under whatever name that directory has by then."""
    held = open_under(tmp_path)
    (_incoming(tmp_path) / "fw").mkdir()
    (_incoming(tmp_path) / "fw" / "1").write_text("")
    (_incoming(tmp_path) / "fw" / "2").write_text("")
    sp.claim("fw/1")
    sp.claim("fw/2")
    assert len(open_under(tmp_path)) == len(held) + 1  # one descriptor for both claims
    os.rename(_incoming(tmp_path) / "fw", tmp_path / "spool" / "tmp" / "moved")
    log = record_fsyncs(monkeypatch, tmp_path)
    sp.sync_claims()
    assert log.paths == ["spool/incoming", "spool/tmp/moved", "spool/active"]
    assert open_under(tmp_path) == held


def test_a_failed_claim_from_a_subdirectory_holds_nothing_open(sp: Spool, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    held = open_under(tmp_path)
    (_incoming(tmp_path) / "fw").mkdir()
    (_incoming(tmp_path) / "fw" / "1").write_text("")
    assert sp.claim("fw/gone") is None

    def refused(*args: Any, **kwargs: Any) -> None:
        raise PermissionError(errno.EACCES, "Permission denied")
    monkeypatch.setattr(os, "rename", refused)
    with pytest.raises(PermissionError):
        sp.claim("fw/1")
    assert open_under(tmp_path) == held
    assert sp.incoming.touched == {}


# -- creating them -------------------------------------------------------------------------------------


def test_configured_subdirectories_get_incomings_group_mode_and_acl(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    written: list[tuple[str, str]] = []
    monkeypatch.setattr(os, "getxattr", lambda *a, **k: (_ for _ in ()).throw(OSError(errno.ENODATA, "none")))
    monkeypatch.setattr(os, "setxattr",
                        lambda path, name, value, **k: written.append((Path(path).name, name.split("_")[-1])))
    spool = Spool(tmp_path / "spool", tmp_path / "results")
    spool.create(producer_gid=os.getgid(), subdirs=("fw", "hp"))
    for sub in ("fw", "hp"):
        path = tmp_path / "spool" / "incoming" / sub
        assert stat.S_IMODE(os.lstat(path).st_mode) == 0o3770
        assert os.lstat(path).st_gid == os.getgid()
    # The subdirectories: the plain access ACL (rwxrwx---), then the private default one.
    assert written == [("tmp", "default"), ("incoming", "default"), ("fw", "access"), ("fw", "default"),
                       ("hp", "access"), ("hp", "default")]
    spool.create(subdirs=("fw",))  # no group: made if missing, left as they are
    assert stat.S_IMODE(os.lstat(tmp_path / "spool" / "incoming" / "fw").st_mode) == 0o3770


def test_a_link_in_place_of_a_configured_subdirectory_is_refused(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool", tmp_path / "results")
    spool.create()
    (tmp_path / "spool" / "incoming" / "fw").symlink_to(tmp_path)
    with pytest.raises(spool_mod.SpoolError) as err:
        spool.create(subdirs=("fw",))
    assert str(err.value).endswith("incoming/fw: is a symbolic link; refusing to follow it")


def test_a_file_in_place_of_a_configured_subdirectory_is_a_spool_error_naming_it(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool", tmp_path / "results")
    spool.create()
    (tmp_path / "spool" / "incoming" / "fw").write_text("")
    with pytest.raises(spool_mod.SpoolError) as err:
        spool.create(subdirs=("fw",))
    assert str(err.value) == f"{tmp_path}/spool/incoming/fw: cannot create the directory: File exists"


# -- configuration and rules ---------------------------------------------------------------------------


def _config(**spool: Any) -> Any:
    return parse_config({"spool": spool}, "ipspool.toml")


@pytest.mark.parametrize(("subdirs", "cap", "message"), [
    (["a b"], 32, "'a b' is not a subdirectory name"),
    (["ok", ".x"], 32, "'.x' is not a subdirectory name"),
    (["a", "a"], 32, "a subdirectory is named twice"),
    (["a", "b"], 1, "spool.subdirs names 2 subdirectories, more than spool.max_subdirs = 1"),
])
def test_bad_subdirectory_settings_are_refused_with_the_reason(subdirs: list[str], cap: int, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        _config(subdirs=subdirs, max_subdirs=cap)
    assert message in str(err.value)
    assert "spool" in str(err.value)


def test_a_rule_chooses_by_subdirectory_glob_and_by_the_name_within_it() -> None:
    config = parse_config({"inputs": [
        {"subdir": "fw-*", "match": "*.csv", "format": "delimited", "column": "peer"},
        {"subdir": "", "match": "*.log", "format": "plain"},
        {"match": "*.log", "format": "text"},
    ]}, "ipspool.toml")
    firewall, top, anywhere = config.inputs
    assert rule_for(config, "fw-eu/x.csv") is firewall
    assert rule_for(config, "fw-eu~x.csv") is firewall  # a recovered job: the same rule
    assert rule_for(config, "x.csv") is None
    assert rule_for(config, "hp/x.csv") is None
    assert rule_for(config, "a.log") is top
    assert rule_for(config, "hp/a.log") is anywhere
    assert rule_for(config, "hp~a.log") is anywhere


def test_the_default_by_extension_is_taken_from_the_name_within_the_subdirectory() -> None:
    config = parse_config({}, "ipspool.toml")
    assert select(config, "hp/events.jsonl").kind == "jsonl"
    assert select(config, "hp~events.jsonl").kind == "jsonl"
    assert select(config, "mail.d/report.eml").kind == "text"
    assert select(config, "logs.csv~x").kind == "plain"  # the subdirectory's own dot says nothing
    assert select(config, "fw/list.txt").kind == "plain"


def _as_producer(uid: int, gid: int, action: Any) -> int:
    """Run ``action`` in a child with that uid and gid only; its exit status (0: it worked)."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover (the child)
        try:
            os.setgroups([])
            os.setgid(gid)
            os.setuid(uid)
            action()
            os._exit(0)
        except OSError as exc:
            os._exit(exc.errno or 1)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as a producer (uid and gid 65534)")
def test_a_producer_of_the_group_can_write_into_a_configured_subdirectory_but_not_read_anothers_file() -> None:
    """On a filesystem with ACLs: the subdirectory does not inherit incoming/'s default ACL as its own
    access ACL (whose empty group entry would lock the group out); the files in it still get that default."""
    import shutil
    import tempfile

    base = Path(tempfile.mkdtemp(prefix="ipspool-subdir-"))
    try:
        base.chmod(0o755)
        spool = Spool(base / "spool", base / "results")
        (base / "spool").mkdir()
        (base / "spool").chmod(0o755)
        spool.create(producer_gid=65534, subdirs=("fw",))
        if spool.acl_unsupported:
            pytest.skip(f"no ACLs on {base}'s filesystem")
        fw = base / "spool" / "incoming" / "fw"
        with pytest.raises(OSError) as none:
            os.getxattr(fw, "system.posix_acl_access")
        assert none.value.errno == errno.ENODATA
        assert os.getxattr(fw, "system.posix_acl_default") == spool_mod.private_default_acl(None)
        assert _as_producer(65534, 65534, lambda: (fw / "x.csv").write_text("ip\n192.0.2.1\n")) == 0
        assert (fw / "x.csv").read_text() == "ip\n192.0.2.1\n"
        # Another member of the group may not read it (the default ACL's empty group entry).
        assert _as_producer(65533, 65534, (fw / "x.csv").read_text) == errno.EACCES
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_a_subdirectory_the_service_cannot_search_is_reported_and_the_others_are_read(
        sp: Spool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for sub in ("locked", "open"):
        (_incoming(tmp_path) / sub).mkdir()
        (_incoming(tmp_path) / sub / "f").write_text("")
    real = sp.incoming.subdir_fd

    def denied(sub: str) -> int:
        if sub == "locked":
            raise PermissionError(errno.EACCES, "Permission denied")
        return real(sub)
    monkeypatch.setattr(sp.incoming, "subdir_fd", denied)
    assert [name for name, _ in sp.scan_incoming()] == ["open/f"]
    assert sp.incoming.unreadable == {"locked": "Permission denied"}
    monkeypatch.setattr(sp.incoming, "subdir_fd", real)
    assert sorted(name for name, _ in sp.scan_incoming()) == ["locked/f", "open/f"]
    assert sp.incoming.unreadable == {}


@pytest.mark.parametrize(("name", "kind"), [
    ("x.csv.1", "delimited"), ("fw~x.csv.12", "delimited"), ("auth.log.1", "text"), ("e.jsonl.3", "jsonl"),
    ("ips.1", "plain"), ("ips.txt.1", "plain"), ("x.csv.1a", "plain"), ("x.csv.", "plain"), (".1", "plain"),
])
def test_a_trailing_number_hides_no_extension(name: str, kind: str) -> None:
    """A job renamed unique (x.csv -> x.csv.1) or a rotated log keeps its reader; other names are as before
    (ips.1 says nothing: its content is sniffed, and bare addresses are plain)."""
    head = b"ip\n192.0.2.1\n" if kind == "delimited" else b"192.0.2.1\n"
    assert select(parse_config({}, "ipspool.toml"), name, head, len(head)).kind == kind


def test_a_rule_matches_a_name_made_unique_and_still_matches_on_the_number() -> None:
    config = parse_config({"inputs": [{"match": "fw-*.csv", "format": "delimited"},
                                      {"match": "*.7", "format": "text"}]}, "ipspool.toml")
    assert rule_for(config, "fw-a.csv.1") is config.inputs[0]
    assert rule_for(config, "fw~fw-a.csv.2") is config.inputs[0]
    assert rule_for(config, "notes.7") is config.inputs[1]


def test_at_start_up_the_first_sync_reaches_every_subdirectory_a_killed_run_may_have_claimed_from(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A claim whose sync the kill cut off: its job is recovered from active/ and published by the next run,
    so that run's first sync of claims covers every producer subdirectory (up to the cap), not only those it
    claimed from itself (found by the crash points of the subdirs scenario)."""
    spool = Spool(tmp_path / "spool", tmp_path / "results")
    spool.create()
    for sub in ("b", "a", "c", "not a subdir"):
        (_incoming(tmp_path) / sub).mkdir()
    (_incoming(tmp_path) / "link").symlink_to(_incoming(tmp_path) / "a")
    spool.open(max_subdirs=2)
    log = record_fsyncs(monkeypatch, tmp_path)
    spool.sync_claims()
    assert log.paths == ["spool/incoming", "spool/incoming/a", "spool/incoming/b", "spool/active"]
    log.clear()
    spool.sync_claims()
    assert log.paths == ["spool/incoming", "spool/active"]
    spool.close()


def test_a_recovered_job_is_named_by_the_path_it_came_from() -> None:
    from ipspool.spool import job_origin

    assert job_origin("fw~x.csv") == "fw/x.csv"
    assert job_origin("x.csv.1") == "x.csv.1"
    assert job_origin("bad name~x") == "bad name~x"


def test_a_failed_fsync_of_one_subdirectory_leaves_it_and_the_ones_after_it_for_the_retry(
        sp: Spool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """EIO on incoming/a's fsync: the retry syncs a and b again (b had not been reached), not only incoming/
    (found by the crash points: b's result was published with its claim never synced)."""
    for sub in ("a", "b"):
        (_incoming(tmp_path) / sub).mkdir()
        (_incoming(tmp_path) / sub / "f").write_text("")
        sp.claim(f"{sub}/f")
    fail_fsync(monkeypatch, "/incoming/a")
    with pytest.raises(OSError):
        sp.sync_claims()
    assert sorted(sp.incoming.touched) == ["a", "b"]
    log = record_fsyncs(monkeypatch, tmp_path)
    sp.sync_claims()
    assert log.paths == ["spool/incoming", "spool/incoming/a", "spool/incoming/b", "spool/active"]
    assert sp.incoming.touched == {}
