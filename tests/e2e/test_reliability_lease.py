"""A producer's file lease (fcntl F_SETLEASE) never freezes the daemon and never loses the file."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Iterator

import pytest

from tests.support.daemon import Daemon, wait_for

# The producer: writes in tmp/, takes a write lease, renames into incoming/
# and keeps the file open (and the lease) until told to stop. SIGIO, which
# announces the lease break, is ignored: its default action would kill it.
_PRODUCER = r"""
import fcntl, os, signal, sys
signal.signal(signal.SIGIO, signal.SIG_IGN)
tmp, target = sys.argv[1], sys.argv[2]
fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o640)
os.write(fd, b"1.1.1.1\n2.2.2.2\n")
try:
    fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_WRLCK)
except OSError as exc:
    print("no-lease", exc, flush=True)
    sys.exit(0)
os.rename(tmp, target)
print("leased", flush=True)
sys.stdin.read()
fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_UNLCK)
"""


@pytest.fixture
def producers() -> Iterator[list[subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []
    yield started
    for producer in started:
        release(producer)


def drop_leased(d: Daemon, name: str, producers: list[subprocess.Popen[str]]) -> subprocess.Popen[str]:
    """Drop NAME as the producer above does; skip where no write lease can be taken."""
    producer = subprocess.Popen(
        [sys.executable, "-c", _PRODUCER, str(d.spool / "tmp" / f".{name}"), str(d.spool / "incoming" / name)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    producers.append(producer)
    assert producer.stdout is not None
    line = producer.stdout.readline()
    if not line.startswith("leased"):
        pytest.skip(f"cannot take a write lease here: {line.strip()}")
    return producer


def release(producer: subprocess.Popen[str]) -> None:
    if producer.poll() is None:
        producer.communicate("", timeout=30)


def test_leased_input_is_failed_as_leased_at_once_and_others_keep_flowing(
    make_daemon: Callable[..., Daemon], producers: list[subprocess.Popen[str]],
) -> None:
    """The O_NONBLOCK open meets the lease: failed/ reason `leased` without waiting out the lease break."""
    d = make_daemon()
    d.start()
    began = time.monotonic()
    producer = drop_leased(d, "leased.txt", producers)
    failure = d.wait_failed("leased.txt", timeout=20)
    assert failure["reason"] == "leased" and "lease" in failure["detail"]
    assert time.monotonic() - began < 10  # the kernel's lease-break-time is 45 s by default
    rejected = d.wait_event("file.rejected", where=lambda e: e["file"] == "leased.txt")
    assert rejected["reason"] == "leased"
    d.drop("after.txt", "3.3.3.3\n")
    assert d.wait_result("after.txt", timeout=10)[0]["ip"] == "3.3.3.3"
    wait_for((d.spool / "failed" / "leased.txt").exists, what="the input beside its record")
    release(producer)  # before we read it ourselves: a blocking open would wait for the lease break too
    assert (d.spool / "failed" / "leased.txt").read_bytes() == b"1.1.1.1\n2.2.2.2\n"  # never lost
    assert d.stop() == 0
