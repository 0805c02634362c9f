"""sd_notify against a real unix datagram socket, as systemd listens on it."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ipspool.notify import Notifier, watchdog_interval


def _fields(datagram: bytes) -> dict[str, str]:
    return dict(line.split("=", 1) for line in datagram.decode().split("\n"))


@pytest.fixture
def path_socket(tmp_path: Path) -> Iterator[tuple[str, socket.socket]]:
    """A listening datagram socket on a filesystem path."""
    address = str(tmp_path / "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(address)
    sock.settimeout(5)
    yield address, sock
    sock.close()


@pytest.fixture
def abstract_socket() -> Iterator[tuple[str, socket.socket]]:
    """A listening datagram socket in the abstract namespace, named as NOTIFY_SOCKET names it."""
    name = f"ipspool-test-notify-{os.getpid()}-{time.monotonic_ns()}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(5)
    yield "@" + name, sock
    sock.close()


def test_ready_with_status_is_one_datagram_on_a_path_socket(path_socket: tuple[str, socket.socket]) -> None:
    """READY=1 and STATUS= arrive together in a single datagram."""
    address, sock = path_socket
    notifier = Notifier(address)
    assert notifier.enabled
    assert notifier.ready("running: 2/2 workers")
    assert _fields(sock.recv(4096)) == {"READY": "1", "STATUS": "running: 2/2 workers"}
    notifier.close()


def test_abstract_socket_from_the_environment(
    abstract_socket: tuple[str, socket.socket], monkeypatch: pytest.MonkeyPatch,
) -> None:
    """NOTIFY_SOCKET=@name reaches the abstract socket; each call sends what sd_notify(3) expects."""
    address, sock = abstract_socket
    monkeypatch.setenv("NOTIFY_SOCKET", address)
    notifier = Notifier()
    assert notifier.status("backlog 3")
    assert notifier.watchdog()
    assert notifier.stopping("stopping: finishing in-flight chunks")
    assert notifier.extend_timeout(2.5)
    assert _fields(sock.recv(4096)) == {"STATUS": "backlog 3"}
    assert _fields(sock.recv(4096)) == {"WATCHDOG": "1"}
    assert _fields(sock.recv(4096)) == {"STOPPING": "1", "STATUS": "stopping: finishing in-flight chunks"}
    assert _fields(sock.recv(4096)) == {"EXTEND_TIMEOUT_USEC": "2500000"}
    notifier.close()


def test_reloading_carries_monotonic_usec_in_the_same_datagram(path_socket: tuple[str, socket.socket]) -> None:
    """RELOADING=1 and MONOTONIC_USEC (CLOCK_MONOTONIC, now) come in one datagram."""
    address, sock = path_socket
    notifier = Notifier(address)
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert notifier.reloading()
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    fields = _fields(sock.recv(4096))
    assert set(fields) == {"RELOADING", "MONOTONIC_USEC"}
    assert fields["RELOADING"] == "1"
    assert before <= int(fields["MONOTONIC_USEC"]) <= after
    notifier.close()


def test_outside_systemd_every_call_is_a_quiet_no_op(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without NOTIFY_SOCKET nothing is sent and nothing fails."""
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    notifier = Notifier()
    assert not notifier.enabled
    assert not notifier.ready("x")
    assert not notifier.reloading()
    notifier.close()


def test_a_vanished_socket_is_reported_not_raised(tmp_path: Path) -> None:
    """A send to a socket nobody listens on returns False (the daemon goes on)."""
    notifier = Notifier(str(tmp_path / "gone"))
    assert notifier.enabled
    assert not notifier.watchdog()
    notifier.close()


@pytest.mark.parametrize(("usec", "pid", "expected"), [
    ("10000000", None, 5.0),
    ("10000000", "self", 5.0),
    ("10000000", "other", None),
    ("0", None, None),
    ("", None, None),
    ("soon", None, None),
])
def test_watchdog_interval_is_half_of_watchdog_usec_for_our_pid(
    monkeypatch: pytest.MonkeyPatch, usec: str, pid: str | None, expected: float | None,
) -> None:
    """WATCHDOG_USEC/2 in seconds; None when unset, zero, malformed, or meant for another pid."""
    monkeypatch.setenv("WATCHDOG_USEC", usec)
    if pid is None:
        monkeypatch.delenv("WATCHDOG_PID", raising=False)
    else:
        monkeypatch.setenv("WATCHDOG_PID", str(os.getpid() if pid == "self" else os.getpid() + 1))
    assert watchdog_interval() == expected
