"""The stats Manager: a stopped one stops nothing; its authkey is whole, private and never empty."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from multiprocessing.context import AuthenticationError
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from ipspool.exitcodes import ExitCode
from ipspool.spool import SpoolError
from ipspool.stats import (
    AUTHKEY_NAME,
    SOCKET_NAME,
    StatsClient,
    StatsManager,
    ensure_authkey,
    read_authkey,
)
from ipspool.statusfile import STALE_AFTER
from tests.support.daemon import Daemon, wait_for
from tests.support.spoolcheck import audit, mixed_lines

# -- a stopped or hung Manager (issue 4) ------------------------------------------


def test_stopped_manager_stops_no_processing_and_status_answers_again_after_sigcont(
    make_daemon: Callable[..., Daemon],
) -> None:
    """kill -STOP of the Manager: files still complete, status gives up in bounded time; SIGCONT restores it."""
    d = make_daemon()
    d.start()
    (manager,) = d.pids_titled("ipspool: stats")
    d.drop("before.txt", "1.1.1.1\n")
    d.wait_result("before.txt")
    inputs = {f"stopped-{i}.txt": mixed_lines(30 + i, seed=i) for i in range(10)}
    os.kill(manager, signal.SIGSTOP)
    try:
        for name, lines in inputs.items():
            d.drop(name, "\n".join(lines) + "\n")
        for name in inputs:
            d.wait_result(name, timeout=60)
        # status reads RUNTIME/status.json, which a stopped Manager no longer
        # refreshes: once it is older than STALE_AFTER, status says so.
        began = time.monotonic()

        def stale() -> bool:
            out = d.ipspool("status", "--config", str(d.config_path), timeout=60)
            return out.returncode == ExitCode.NOT_RUNNING and "old" in out.stderr

        wait_for(stale, timeout=30, interval=0.5, what="status: not running, the snapshot is stale")
        assert time.monotonic() - began < STALE_AFTER + 10
    finally:
        os.kill(manager, signal.SIGCONT)

    def exact() -> bool:
        out = d.ipspool("status", "--config", str(d.config_path), "--json")
        totals = json.loads(out.stdout)["totals"] if out.returncode == 0 else {}
        return totals.get("files_done") == len(inputs) + 1  # type: ignore[no-any-return]

    wait_for(exact, timeout=30, interval=0.2, what="status with exact totals after SIGCONT")
    assert not d.events("stats.died")
    assert d.stop() == 0
    audit(d, {"before.txt": ["1.1.1.1"], **inputs})


def test_client_call_is_bounded_and_backs_off_when_the_manager_never_answers(tmp_path: Path) -> None:
    """A socket that accepts and never speaks: call() returns None within the timeout, then at once."""
    import socket

    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(tmp_path / SOCKET_NAME))
    listener.listen(16)
    held: list[socket.socket] = []
    accepting = threading.Thread(target=lambda: held.append(listener.accept()[0]), daemon=True)
    accepting.start()
    client = StatsClient(tmp_path, b"0" * 64, timeout=0.3)
    try:
        with capture_logs() as logs:
            assert client.call("snapshot") is None  # returns: the reply wait is bounded
        assert [e["event"] for e in logs] == ["stats.call_failed"]
        with capture_logs() as logs:
            assert client.call("snapshot") is None  # backing off: not even tried
        assert not any(e["event"] == "stats.call_failed" for e in logs)
    finally:
        listener.close()
        for sock in held:
            sock.close()


# -- the authkey (issue 12) ---------------------------------------------------------


def _bad_authkey(kind: str, path: Path, elsewhere: Path) -> None:
    good = os.urandom(32).hex()
    if kind == "symlink":
        elsewhere.write_text(good)
        elsewhere.chmod(0o600)
        path.symlink_to(elsewhere)
        return
    if kind == "directory":
        path.mkdir()
        return
    content = {"empty": "", "short": "abcd", "not_hex": "z" * 64, "world_readable": good, "other_user": good}[kind]
    path.write_text(content)
    path.chmod(0o644 if kind == "world_readable" else 0o600)
    if kind == "other_user":
        os.chown(path, 65534, 65534)


@pytest.mark.parametrize("kind", ["empty", "short", "not_hex", "world_readable", "other_user", "symlink"])
def test_an_authkey_file_that_cannot_be_trusted_is_replaced_whole(tmp_path: Path, kind: str) -> None:
    """Empty, short, not hex, not 0600, not ours, a symlink: a new 64-hex-digit key, 0600, ours."""
    if kind == "other_user" and os.geteuid() != 0:
        pytest.skip("needs root to give the file to another user")
    path = tmp_path / AUTHKEY_NAME
    _bad_authkey(kind, path, tmp_path / "elsewhere")
    before = path.read_bytes() if kind != "symlink" else b""
    key = ensure_authkey(tmp_path)
    st = os.lstat(path)
    assert stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600 and st.st_uid == os.geteuid()
    assert len(key) == 64 and bytes.fromhex(key.decode()) and key != before.strip()
    assert path.read_bytes() == key and read_authkey(tmp_path) == key
    assert ensure_authkey(tmp_path) == key  # kept from now on
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_an_authkey_is_written_whole_despite_short_writes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """write(2) returning after 5 bytes each time still leaves all 64 digits."""
    real = os.write
    monkeypatch.setattr(os, "write", lambda fd, data: real(fd, bytes(data[:5])))
    key = ensure_authkey(tmp_path)
    monkeypatch.undo()
    assert len(key) == 64 and (tmp_path / AUTHKEY_NAME).read_bytes() == key


def test_an_empty_key_is_never_used_by_a_client(tmp_path: Path) -> None:
    """read_authkey refuses an empty or malformed file; StatsClient refuses b''."""
    from ipspool.stats import AuthkeyError

    (tmp_path / AUTHKEY_NAME).write_bytes(b"")
    with pytest.raises(AuthkeyError):
        read_authkey(tmp_path)
    with pytest.raises(AuthkeyError):
        StatsClient(tmp_path, b"").connect()
    assert StatsClient(tmp_path, b"").call("snapshot") is None


def test_daemon_started_over_an_empty_authkey_replaces_it(make_daemon: Callable[..., Daemon]) -> None:
    """A 0-byte authkey left by a failed start: the daemon writes a new key; a client with b'' is refused."""
    d = make_daemon()
    runtime = d.spool / ".ipspool"
    runtime.mkdir(parents=True, mode=0o750)
    (runtime / AUTHKEY_NAME).write_bytes(b"")
    (runtime / AUTHKEY_NAME).chmod(0o600)
    d.start()
    replaced = d.wait_event("stats.authkey_replaced")
    assert "holds no key" in replaced["reason"]
    assert len(read_authkey(runtime)) == 64
    intruder = StatsManager(address=str(runtime / SOCKET_NAME), authkey=b"")
    with pytest.raises(AuthenticationError):
        intruder.connect()
    assert d.ipspool("status", "--config", str(d.config_path)).returncode == 0
    assert d.stop() == 0


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs to fill up; skipped where mount(2) is not permitted."""
    mountpoint = tmp_path / "runtime-fs"
    mountpoint.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,mode=0750", "tmpfs", str(mountpoint)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root and CAP_SYS_ADMIN): {done.stderr.strip()}")
    yield mountpoint
    subprocess.run(["umount", "-l", str(mountpoint)], check=True)


def fill(directory: Path) -> Path:
    """Write a filler file until the filesystem is full."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError:
        pass
    finally:
        os.close(fd)
    return filler


def test_first_start_on_a_full_runtime_filesystem_is_a_spool_error_and_leaves_no_empty_key(
    make_daemon: Callable[..., Daemon], small_tmpfs: Path,
) -> None:
    """ENOSPC on the authkey: daemon.spool_error, SPOOL_ERROR, nothing at the key's name; fine once space is back."""
    d = make_daemon(spool={"runtime_dir": str(small_tmpfs)})
    filler = fill(small_tmpfs)
    d.start(wait_ready=False)
    assert d.proc is not None and d.proc.wait(60) == ExitCode.SPOOL_ERROR
    d.proc = None
    error = d.wait_event("daemon.spool_error")
    assert "authkey" in error["error"] and "No space left" in error["error"]
    assert not (small_tmpfs / AUTHKEY_NAME).exists()
    assert [p.name for p in small_tmpfs.iterdir()] == ["filler"]
    assert "Traceback" not in (d.root / "stderr.log").read_text()
    filler.unlink()
    d.start()
    assert len(read_authkey(small_tmpfs)) == 64
    assert d.stop() == 0


def test_ensure_authkey_that_cannot_write_raises_spool_error(tmp_path: Path) -> None:
    """A runtime directory that is not one: SpoolError naming the key, not a traceback."""
    runtime = tmp_path / "not-a-dir"
    runtime.write_text("")
    with pytest.raises(SpoolError, match=r"spool\.runtime_dir: .*authkey"):
        ensure_authkey(runtime)


def test_a_client_that_hangs_up_before_the_handshake_is_noted_quietly(tmp_path: Path) -> None:
    """stats.client_left (debug), not stats.client_refused: a client gone first is no intruder."""
    from multiprocessing import Pipe

    from ipspool.stats import StatsManager, _StatsServer

    server = _StatsServer(StatsManager._registry, str(tmp_path / "s.sock"), b"k" * 64, "pickle")  # type: ignore[attr-defined]
    try:
        ours, theirs = Pipe()
        theirs.close()  # the client is gone before the challenge
        with capture_logs() as logs:
            server._handle_request(ours)  # type: ignore[attr-defined]
        assert [e["event"] for e in logs] == ["stats.client_left"]
    finally:
        server.listener.close()
