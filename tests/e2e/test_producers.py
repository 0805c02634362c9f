"""Producers cannot read each other's pending files; the daemon reads them all; foreign owners are refused.

Real accounts (useradd in a fixture, removed after), a real spool made by
``systemd-tmpfiles`` from systemd/ipspool.tmpfiles (paths and names
rewritten), on the test machine's filesystem, which must support POSIX
ACLs (ext4, tmpfs do). Producer commands run as the producers with
``runuser``; the service account ``svc`` (a non-root member of the producer
group, as ``ipspool`` is) is checked to read every pending file. The daemon
itself runs as root here, the simplest version: the interpreter of the test
virtualenv may live where non-root accounts cannot reach it.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from ipspool.config import load_config
from ipspool.spool import acl_entries
from ipspool.submit import submit_files
from tests.support.daemon import REPO, Daemon

_ACCESS, _DEFAULT = "system.posix_acl_access", "system.posix_acl_default"
_GROUP_OBJ, _MASK, _OTHER, _USER = 0x04, 0x10, 0x20, 0x02


@dataclass(frozen=True)
class Accounts:
    group: str
    a: str      # producer
    b: str      # producer
    svc: str    # the service account: in the producer group, like ipspool
    foreign: str  # not in the group

    def uid(self, name: str) -> int:
        import pwd

        return pwd.getpwnam(name).pw_uid


def _need(tool: str) -> None:
    if shutil.which(tool) is None:
        pytest.skip(f"{tool} is missing")


@pytest.fixture
def accounts() -> Iterator[Accounts]:
    if os.geteuid() != 0:
        pytest.skip("creating accounts needs root")
    for tool in ("useradd", "userdel", "groupadd", "groupdel", "runuser", "systemd-tmpfiles"):
        _need(tool)
    tag = f"{os.getpid() % 100000}"
    made = Accounts(f"ipsg{tag}", f"ipsa{tag}", f"ipsb{tag}", f"ipss{tag}", f"ipsx{tag}")
    subprocess.run(["groupadd", made.group], check=True)
    users: list[str] = []
    try:
        for name, groups in ((made.a, made.group), (made.b, made.group), (made.svc, made.group),
                             (made.foreign, "")):
            subprocess.run(["useradd", "--no-create-home", "--shell", "/bin/sh", *(["-G", groups] if groups else []),
                            name], check=True)
            users.append(name)
        yield made
    finally:
        for name in users:
            subprocess.run(["userdel", name], check=False)
        subprocess.run(["groupdel", made.group], check=False)


@pytest.fixture
def shared_root() -> Iterator[Path]:
    """A directory every account may traverse (tmp_path is root's alone)."""
    root = Path(tempfile.mkdtemp(prefix="ipspool-producers-"))
    root.chmod(0o755)
    yield root
    shutil.rmtree(root, ignore_errors=True)


def on_spool(d: Daemon, spool: Path) -> Daemon:
    d.spool, d.results = spool, spool / "results"
    return d


def as_user(user: str, script: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["runuser", "-u", user, "--", "sh", "-c", script, "sh", *args],
                          capture_output=True, text=True, timeout=30)


def packaged_spool(root: Path, acc: Accounts) -> Path:
    """systemd/ipspool.tmpfiles, for this spool, this service account and this group."""
    spool = root / "spool"
    names = {"ipspool": acc.svc, "ipspool-submit": acc.group}
    lines = []
    for original in (REPO / "systemd" / "ipspool.tmpfiles").read_text().splitlines():
        line, fields = original, original.split()
        if fields and not line.startswith("#"):
            fields[1] = fields[1].replace("/var/spool/ipspool", str(spool))
            fields[3], fields[4] = names.get(fields[3], fields[3]), names.get(fields[4], fields[4])
            fields[6:] = [" ".join(fields[6:]).replace("user:ipspool:", f"user:{acc.svc}:")]
            line = " ".join(fields)
        lines.append(line)
    text = "\n".join(lines) + "\n"
    conf = root / "ipspool-tmpfiles.conf"
    conf.write_text(text)
    subprocess.run(["systemd-tmpfiles", "--create", str(conf)], check=True, capture_output=True)
    try:
        os.getxattr(spool / "tmp", _DEFAULT)
    except OSError:
        pytest.skip(f"no POSIX ACLs on the filesystem of {spool}")
    return spool


def _acl(path: Path, name: str = _ACCESS) -> set[tuple[int, int, int]]:
    return set(acl_entries(os.getxattr(path, name)))


def assert_private(path: Path, svc_uid: int | None) -> None:
    """Only its owner and the service may read ``path``; its group (other producers) nothing."""
    entries = _acl(path)
    assert (_GROUP_OBJ, 0, 0xFFFFFFFF) in entries and (_OTHER, 0, 0xFFFFFFFF) in entries, entries
    if svc_uid is not None:
        assert (_USER, 4, svc_uid) in entries, entries
    assert stat.S_IMODE(path.stat().st_mode) & 0o037 <= 0o040


def test_producers_cannot_read_each_others_pending_files_but_the_service_reads_both(
    accounts: Accounts, shared_root: Path, make_daemon: Callable[..., Daemon],
) -> None:
    """Two producers: neither reads the other's file in tmp/ or incoming/; svc reads both; both get results."""
    acc = accounts
    spool = packaged_spool(shared_root, acc)
    assert (stat.S_IMODE((spool / "tmp").stat().st_mode), (spool / "tmp").stat().st_uid) == (0o3770, acc.uid(acc.svc))
    # a: by hand, a plain `cat` (mode 0666 asked for), then rename into incoming/.
    out = as_user(acc.a, 'printf "192.0.2.1\\n" > "$1/tmp/.a" && mv "$1/tmp/.a" "$1/incoming/a.txt"', str(spool))
    assert out.returncode == 0, out.stderr
    # b: still writing in tmp/ (a chmod 0660 "for the group" is masked away too).
    out = as_user(acc.b, 'printf "198.51.100.2\\n" > "$1/tmp/.b" && chmod 0640 "$1/tmp/.b"', str(spool))
    assert out.returncode == 0, out.stderr
    a_file, b_file = spool / "incoming" / "a.txt", spool / "tmp" / ".b"
    assert_private(a_file, acc.uid(acc.svc))
    assert_private(b_file, acc.uid(acc.svc))
    assert as_user(acc.b, 'cat "$1"', str(a_file)).returncode != 0          # b cannot read a's pending file
    assert as_user(acc.a, 'cat "$1"', str(b_file)).returncode != 0          # a cannot read b's
    assert as_user(acc.a, 'cat "$1"', str(a_file)).stdout == "192.0.2.1\n"  # each reads its own
    assert as_user(acc.svc, 'cat "$1"', str(a_file)).stdout == "192.0.2.1\n"  # the service reads both
    assert as_user(acc.svc, 'cat "$1"', str(b_file)).stdout == "198.51.100.2\n"
    # What a producer can see: the names in tmp/ and incoming/ (the folders are the group's).
    assert "a.txt" in as_user(acc.b, 'ls "$1/incoming"', str(spool)).stdout
    # ... and it cannot take another's file away (sticky bit).
    assert as_user(acc.b, 'mv "$1/incoming/a.txt" "$1/tmp/stolen"', str(spool)).returncode != 0
    assert as_user(acc.b, 'mv "$1/tmp/.b" "$1/incoming/b.txt"', str(spool)).returncode == 0
    # A file of someone outside the group (root put it there; no member can chown).
    foreign = spool / "incoming" / "x.txt"
    foreign.write_text("203.0.113.3\n")
    os.chown(foreign, acc.uid(acc.foreign), -1)
    d = on_spool(make_daemon(spool={"dir": str(spool), "producer_group": acc.group}), spool)
    d.start()
    assert [r["ip"] for r in d.wait_result("a.txt")] == ["192.0.2.1"]
    assert [r["ip"] for r in d.wait_result("b.txt")] == ["198.51.100.2"]
    record = d.wait_failed("x.txt")
    assert record["reason"] == "foreign_owner" and f"uid {acc.uid(acc.foreign)}" in record["detail"]
    assert not d.result_path("x.txt").exists()
    rejected = d.wait_event("file.rejected", where=lambda e: e["file"] == "x.txt")
    assert rejected["reason"] == "foreign_owner"
    assert d.stop() == 0


def test_the_daemon_sets_the_default_acl_and_submit_creates_private_files(
    accounts: Accounts, shared_root: Path, make_daemon: Callable[..., Daemon],
) -> None:
    """A spool the daemon creates itself gets the same ACL; `ipspool submit` leaves a file its group cannot read."""
    acc = accounts
    spool = shared_root / "spool"
    d = on_spool(make_daemon(spool={"dir": str(spool), "producer_group": acc.group}), spool)
    d.start()
    try:
        os.getxattr(spool / "tmp", _DEFAULT)
    except OSError:
        pytest.skip("no POSIX ACLs here")
    for sub in ("tmp", "incoming"):
        default = _acl(spool / sub, _DEFAULT)
        assert (_GROUP_OBJ, 0, 0xFFFFFFFF) in default and (_MASK, 4, 0xFFFFFFFF) in default, default
    d.stop()
    source = shared_root / "list.txt"
    source.write_text("192.0.2.9\n")
    config = load_config(str(d.config_path))
    assert submit_files(config, [str(source)], wait=False, timeout=0) == 0
    (pending,) = list((spool / "incoming").iterdir())
    os.chown(pending, acc.uid(acc.a), -1)  # as if a had submitted it
    assert_private(pending, None)
    assert stat.S_IMODE(pending.stat().st_mode) == 0o640
    assert as_user(acc.b, 'cat "$1"', str(pending)).returncode != 0


def test_check_owner_false_processes_a_foreign_file(
    accounts: Accounts, shared_root: Path, make_daemon: Callable[..., Daemon],
) -> None:
    """spool.check_owner = false: the owner is not looked at."""
    acc = accounts
    spool = shared_root / "spool"
    d = on_spool(make_daemon(spool={"dir": str(spool), "producer_group": acc.group, "check_owner": False}), spool)
    d.start()
    foreign = spool / "tmp" / ".x"
    foreign.write_text("203.0.113.3\n")
    os.chown(foreign, acc.uid(acc.foreign), -1)
    os.rename(foreign, spool / "incoming" / "x.txt")
    assert [r["ip"] for r in d.wait_result("x.txt")] == ["203.0.113.3"]
    assert d.stop() == 0
