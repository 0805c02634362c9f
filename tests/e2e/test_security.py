"""Nothing let in: spool content never runs code or redirects a write; the Manager is private."""

from __future__ import annotations

import contextlib
import json
import os
import stat
import time
from collections.abc import Callable, Iterator
from multiprocessing.context import AuthenticationError
from pathlib import Path

import pytest

from ipspool.exitcodes import ExitCode
from ipspool.stats import SOCKET_NAME, STATUS_NAME, StatsManager
from tests.support.daemon import Daemon, wait_for


def test_spool_content_naming_modules_or_callables_runs_nothing(make_daemon: Callable[..., Daemon]) -> None:
    """Files named like modules or "module:callable", holding such strings and code, are only data."""
    d = make_daemon()
    d.start()
    marker = d.root / "executed"
    code = f"__import__('pathlib').Path({str(marker)!r}).write_text('x')\n"
    files = {
        "evil.py": code,
        "sitecustomize.py": code,
        "os:system": f"os:system\ntests.support.stagelib:crash\nsubprocess:run\n{code}",
        "tests.support.stagelib:crash": "tests.support.stagelib:crash\n6.6.6.6\n",
        "ipspool.py": "ipspool.pipeline:load_pipeline\n",
    }
    for name, content in files.items():
        d.drop(name, content)
    for name, content in files.items():
        records = d.wait_result(name)
        lines = [line for line in content.splitlines() if line.split("#")[0].strip()]
        assert len(records) == len(lines)
        assert all("error" in r or r.get("ip") == "6.6.6.6" for r in records)
    assert not marker.exists()
    assert not d.events("worker.died")
    assert d.stop() == 0


def test_results_dir_that_is_a_symlink_is_refused_at_start(make_daemon: Callable[..., Daemon]) -> None:
    """results_dir as a symlink: SPOOL_ERROR with a message naming it, and nothing is created through it."""
    d = make_daemon()
    target = d.root / "elsewhere"
    target.mkdir()
    link = d.root / "results-link"
    link.symlink_to(target)
    d.write_config(spool={"results_dir": str(link)})
    d.start(wait_ready=False)
    assert d.proc is not None and d.proc.wait(30) == ExitCode.SPOOL_ERROR
    d.proc = None
    error = d.wait_event("daemon.spool_error")
    assert error["error"] == f"{link}: is a symbolic link; refusing to follow it"
    assert not list(target.iterdir())


def test_planted_symlink_at_a_result_name_never_redirects_the_write(make_daemon: Callable[..., Daemon]) -> None:
    """Planted before the claim: the job takes NAME.1; planted during processing: failed/ result_exists."""
    d = make_daemon(pipeline={"stages": ["classify", "tests.support.stagelib:slow"]})
    d.start()
    victim = d.root / "victim"
    victim.write_text("precious\n")
    (d.results / "early.txt.jsonl").symlink_to(victim)
    d.drop("early.txt", "1.1.1.1\n")
    assert d.wait_result("early.txt.1")[0]["ip"] == "1.1.1.1"
    d.drop("late.txt", "".join(f"10.0.0.{i}\n" for i in range(60)))
    d.wait_event("file.claimed", where=lambda e: e["file"] == "late.txt")
    (d.results / "late.txt.jsonl").symlink_to(victim)
    failure = d.wait_failed("late.txt")
    assert failure["reason"] == "result_exists"
    assert victim.read_text() == "precious\n"
    assert (d.results / "late.txt.jsonl").is_symlink() and (d.results / "early.txt.jsonl").is_symlink()
    assert not [p for p in (d.results / ".parts").rglob("*") if not p.is_dir()]  # this run's folder only
    assert d.stop() == 0


def test_manager_socket_and_authkey_are_private_and_a_wrong_key_is_refused_and_logged(daemon: Daemon) -> None:
    """authkey 0600, socket and runtime dir closed to others; a client with a wrong key gets nothing."""
    runtime = daemon.spool / ".ipspool"
    authkey = runtime / "authkey"
    sock = runtime / SOCKET_NAME
    assert stat.S_IMODE(authkey.stat().st_mode) == 0o600
    assert stat.S_ISSOCK(sock.stat().st_mode) and stat.S_IMODE(sock.stat().st_mode) & 0o077 == 0
    assert stat.S_IMODE(runtime.stat().st_mode) & 0o007 == 0
    intruder = StatsManager(address=str(sock), authkey=b"0" * 64)
    with pytest.raises(AuthenticationError):
        intruder.connect()
    refused = daemon.wait_event("stats.client_refused")
    assert refused["level"] == "warning" and refused["peer_pid"] == os.getpid() and refused["peer_uid"] == os.getuid()
    out = daemon.ipspool("status", "--config", str(daemon.config_path), "--json")
    assert out.returncode == 0  # the right key still works


# -- operators never unpickle what the service account serves ------------------


class _Planted:
    """Unpickling this creates ``path``: a stand-in for any code a pickle can run."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Callable[..., object], tuple[str]]:
        return os.mknod, (self.path,)


@pytest.fixture
def hostile_runtime() -> Iterator[tuple[Path, Path, list[int]]]:
    """A runtime dir owned by a non-root user whose stats socket answers every request with a planted pickle.

    Yields the directory, the marker the pickle would create, and the list of
    connections the socket accepted.
    """
    import pickle
    import shutil
    import tempfile
    import threading
    from multiprocessing.connection import Listener

    if os.geteuid() != 0:
        pytest.skip("the trust boundary is root reading what another account serves: needs root")
    top = Path(tempfile.mkdtemp(prefix="ipsr-"))  # short: a unix socket path has 108 bytes
    runtime, marker = top / "run", top / "pwned"
    runtime.mkdir(mode=0o750)
    key = os.urandom(32).hex().encode()
    (runtime / "authkey").write_bytes(key)
    (runtime / "authkey").chmod(0o600)
    listener = Listener(str(runtime / SOCKET_NAME), family="AF_UNIX", authkey=key)
    for path in (runtime, runtime / "authkey", runtime / SOCKET_NAME):
        os.chown(path, 65534, 65534)  # nobody: the "service account", compromised
    payload = pickle.dumps(("#RETURN", _Planted(str(marker))))
    accepted: list[int] = []

    def serve() -> None:
        while True:
            try:
                conn = listener.accept()
            except OSError:
                return
            accepted.append(1)
            try:
                while True:
                    conn.recv_bytes()
                    conn.send_bytes(payload)
            except (EOFError, OSError):
                conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield runtime, marker, accepted
    finally:
        listener.close()
        shutil.rmtree(top, ignore_errors=True)


def test_the_planted_pickle_would_run_code_in_a_client_of_the_stats_socket(
    hostile_runtime: tuple[Path, Path, list[int]],
) -> None:
    """Control: a client of the Manager protocol (what `status` used to be) creates the marker."""
    runtime, marker, accepted = hostile_runtime
    from ipspool.stats import StatsConnection, read_authkey

    with contextlib.suppress(Exception):
        StatsConnection.open(str(runtime / SOCKET_NAME), read_authkey(runtime), timeout=5).snapshot()
    assert accepted and marker.exists()


def test_status_and_reload_as_root_never_connect_to_a_hostile_stats_socket(
    make_daemon: Callable[..., Daemon], hostile_runtime: tuple[Path, Path, list[int]],
) -> None:
    """`ipspool status`/`reload` as root read only RUNTIME/status.json: no connection, no unpickling, no marker.

    With no snapshot they say "not running"; with a planted one status shows it
    (as escaped text), and reload refuses to signal a pid that is not the
    service account's (a root process here, which stays alive).
    """
    import subprocess

    runtime, marker, accepted = hostile_runtime
    d = make_daemon(spool={"runtime_dir": str(runtime)})
    config = ("--config", str(d.config_path))
    out = d.ipspool("status", *config)
    assert out.returncode == ExitCode.NOT_RUNNING and "not running" in out.stderr, out
    out = d.ipspool("reload", *config, "--timeout", "2")
    assert out.returncode == ExitCode.NOT_RUNNING and "not running" in out.stderr, out
    victim = subprocess.Popen(["sleep", "120"])
    try:
        planted = runtime / STATUS_NAME
        planted.write_text(json.dumps({"written": time.time(), "totals": {}, "workers": {},
                                       "daemon": {"pid": victim.pid, "state": "owned\x1b[2J"}}))
        os.chown(planted, 65534, 65534)
        out = d.ipspool("status", *config)
        assert out.returncode == 0 and "owned\\x1b[2J" in out.stdout and "\x1b" not in out.stdout, out
        out = d.ipspool("reload", *config, "--timeout", "2")
        assert out.returncode == 1 and "not signalled" in out.stderr, out
        assert victim.poll() is None
    finally:
        victim.kill()
        victim.wait()
    assert not accepted and not marker.exists()


def test_status_refuses_a_snapshot_that_is_a_link_to_another_file(
    make_daemon: Callable[..., Daemon], hostile_runtime: tuple[Path, Path, list[int]],
) -> None:
    """A status.json that is a symlink or a hard link (to a file root may read) is not read."""
    runtime, _marker, _accepted = hostile_runtime
    d = make_daemon(spool={"runtime_dir": str(runtime)})
    secret = runtime.parent / "secret.json"
    secret.write_text(json.dumps({"written": time.time(), "daemon": {"pid": os.getpid(), "state": "SECRET"}}))
    (runtime / STATUS_NAME).symlink_to(secret)
    out = d.ipspool("status", "--config", str(d.config_path))
    assert out.returncode == ExitCode.NOT_RUNNING and "symbolic link" in out.stderr and "SECRET" not in out.stdout, out
    (runtime / STATUS_NAME).unlink()
    os.link(secret, runtime / STATUS_NAME)
    out = d.ipspool("status", "--config", str(d.config_path))
    assert out.returncode == ExitCode.NOT_RUNNING and "links" in out.stderr and "SECRET" not in out.stdout, out


def test_status_json_is_written_atomically_private_and_current(daemon: Daemon) -> None:
    """RUNTIME/status.json: the service's, mode 0640, rewritten with a fresh time; status reads it."""
    path = daemon.spool / ".ipspool" / STATUS_NAME
    wait_for(path.exists, what="status.json")
    st = path.stat()
    assert stat.S_IMODE(st.st_mode) == 0o640 and st.st_uid == os.geteuid()
    first = json.loads(path.read_text())["written"]
    wait_for(lambda: json.loads(path.read_text())["written"] > first, timeout=5, what="a refreshed snapshot")
    out = daemon.ipspool("status", "--config", str(daemon.config_path), "--json")
    assert out.returncode == 0 and json.loads(out.stdout)["daemon"]["pid"] == daemon.proc.pid  # type: ignore[union-attr]


# -- every path the daemon creates, as docs/security.md lists it --------------

_SECURITY_MD = Path(__file__).resolve().parents[2] / "docs" / "security.md"
_KINDS = {"directory": stat.S_IFDIR, "file": stat.S_IFREG, "socket": stat.S_IFSOCK}


def _created_paths_table() -> list[dict[str, str]]:
    text = _SECURITY_MD.read_text()
    body = text.split("<!-- created-paths:begin -->", 1)[1].split("<!-- created-paths:end -->", 1)[0]
    rows = [[cell.strip().strip("`") for cell in line.strip().strip("|").split("|")]
            for line in body.strip().splitlines()]
    header, _rule, *data = rows
    return [dict(zip(header, row, strict=True)) for row in data]


def test_every_path_the_daemon_creates_matches_the_table_in_security_md(make_daemon: Callable[..., Daemon]) -> None:
    """A run with one file done and one failed: every path created is a row of the table, with its type and mode."""
    import fnmatch

    table = _created_paths_table()
    assert len(table) > 10
    d = make_daemon()
    old = os.umask(0o027)  # the unit's UMask=
    try:
        d.start()
    finally:
        os.umask(old)
    d.drop("good.txt", "192.0.2.1\n")
    os.mkfifo(d.spool / "incoming" / "bad.txt")
    d.wait_result("good.txt")
    d.wait_failed("bad.txt")
    wait_for((d.spool / ".ipspool" / STATUS_NAME).exists, what="status.json")
    inputs = {"done/good.txt", "failed/bad.txt"}  # moved, not created: the producer's
    found: dict[str, os.stat_result] = {"SPOOL": d.spool.lstat()}
    for dirpath, dirnames, filenames in os.walk(d.spool):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            rel = str(path.relative_to(d.spool))
            if rel not in inputs:
                try:
                    found[rel] = path.lstat()
                except FileNotFoundError:
                    continue  # transient: a part joined, a snapshot renamed in meanwhile

    def doc_path(rel: str) -> str:
        if rel == "SPOOL":
            return rel
        for prefix, word in ((".ipspool", "RUNTIME"), ("results", "RESULTS")):
            if rel == prefix or rel.startswith(prefix + "/"):
                return word + rel[len(prefix):]
        return "SPOOL/" + rel

    seen: set[str] = set()
    for rel, st in sorted(found.items()):
        shown = doc_path(rel)
        rows = [r for r in table if fnmatch.fnmatchcase(shown, r["path"])]
        # The most specific row: `RESULTS/.parts/run.*` before `RESULTS/.parts/run.*/*`.
        rows.sort(key=lambda r: -len(r["path"]))
        assert rows, f"{shown} is created by the daemon but not in docs/security.md"
        row = rows[0]
        seen.add(row["path"])
        assert stat.S_IFMT(st.st_mode) == _KINDS[row["type"]], (shown, row)
        assert f"{stat.S_IMODE(st.st_mode):04o}" in row["mode"].split(" or "), (shown, row)
        assert row["owner"] == "service" and st.st_uid == os.geteuid(), (shown, row)
    missing = [r["path"] for r in table if r["path"] not in seen and not r["when"].startswith("transient")]
    assert not missing, f"docs/security.md lists paths this run did not create: {missing}"
    assert d.stop() == 0
