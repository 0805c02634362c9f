"""Load: a large backlog plus arrivals, and inotify overflow.

Sized for a 2-core machine within the test budget. The full-size run quoted
in docs/durability.md is the same test with bigger numbers:

    IPSPOOL_LOAD_BACKLOG=100000 IPSPOOL_LOAD_ARRIVALS=20000 \
        pytest -s --timeout 1800 tests/e2e/test_load.py -k backlog
"""

from __future__ import annotations

import os
import signal
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path

import pytest

from tests.support.daemon import Daemon, wait_for
from tests.support.spoolcheck import vm_hwm_kib

BACKLOG = int(os.environ.get("IPSPOOL_LOAD_BACKLOG", "20000"))
ARRIVALS = int(os.environ.get("IPSPOOL_LOAD_ARRIVALS", "4000"))


def write_backlog(incoming: Path, count: int) -> None:
    """Files already waiting when the daemon starts (mtime in the past, as after an outage)."""
    incoming.mkdir(parents=True, exist_ok=True)
    past = time.time() - 60
    for i in range(count):
        path = incoming / f"b{i:06d}.txt"
        path.write_bytes(b"10.%d.%d.%d\n" % (i >> 16, (i >> 8) & 255, i & 255))
        os.utime(path, (past, past))


def count_results(d: Daemon) -> int:
    with os.scandir(d.results) as entries:
        return sum(1 for e in entries if e.name.endswith(".jsonl"))


def done_times(d: Daemon, prefix: str) -> dict[str, float]:
    return {
        e["file"]: datetime.fromisoformat(e["timestamp"].replace("Z", "+00:00")).timestamp()
        for e in d.events("file.done") if e["file"].startswith(prefix)
    }


@pytest.mark.slow
def test_backlog_and_arrivals_are_all_processed_once(make_daemon: Callable[..., Daemon]) -> None:
    """20,000 files waiting at start and 4,000 arriving meanwhile: all done once, none starved.

    Memory and latency are reported (printed) here and measured by ``make bench``
    (bench/memory.py, bench/latency.py), not asserted: a loaded machine must not fail a correct daemon.
    """
    d = make_daemon(log={"level": "info"})
    write_backlog(d.spool / "incoming", BACKLOG)
    started = time.monotonic()
    d.start()
    (supervisor,) = d.pids_titled("ipspool: supervisor")
    dropped: dict[str, float] = {}

    def producer() -> None:
        for i in range(ARRIVALS):
            name = f"a{i:05d}.txt"
            d.drop(name, f"192.0.2.{i % 256}\n")
            dropped[name] = time.time()
            if i % 100 == 99:
                time.sleep(0.1)  # about 1,000 files/s in bursts

    thread = threading.Thread(target=producer)
    thread.start()
    peak = 0

    def all_done() -> bool:
        nonlocal peak
        peak = max(peak, vm_hwm_kib(supervisor))
        return count_results(d) == BACKLOG + ARRIVALS

    wait_for(all_done, timeout=60 + (BACKLOG + ARRIVALS) / 100, interval=0.5, what="every result")
    elapsed = time.monotonic() - started
    thread.join()
    assert d.stop(timeout=60) == 0
    assert not list((d.spool / "incoming").iterdir()) and not list((d.spool / "active").iterdir())
    done = done_times(d, "a")
    latencies = sorted(done[name] - at for name, at in dropped.items())
    assert len(latencies) == ARRIVALS
    p50, p99 = statistics.median(latencies), latencies[int(len(latencies) * 0.99)]
    print(f"\n{BACKLOG} + {ARRIVALS} files in {elapsed:.1f}s ({(BACKLOG + ARRIVALS) / elapsed:.0f} files/s); "
          f"supervisor VmHWM {peak / 1024:.1f} MiB; arrival latency p50 {p50:.2f}s p99 {p99:.2f}s "
          f"max {latencies[-1]:.2f}s")
    # No arrival starved: each was done exactly once, and every file is accounted for.
    assert sorted(done) == sorted(dropped)
    assert len(d.events("file.done")) == BACKLOG + ARRIVALS


@pytest.fixture
def tiny_inotify_queue() -> Iterator[None]:
    """fs.inotify.max_queued_events = 16 for inotify instances created meanwhile; restored after."""
    knob = Path("/proc/sys/fs/inotify/max_queued_events")
    try:
        old = knob.read_text()
        knob.write_text("16\n")
    except OSError as exc:
        pytest.skip(f"cannot set {knob} here: {exc}")
    try:
        yield
    finally:
        knob.write_text(old)


def test_real_inotify_overflow_is_logged_and_nothing_is_missed(
    make_daemon: Callable[..., Daemon], tiny_inotify_queue: None,
) -> None:
    """With a 16-event inotify queue, a burst overflows it: watch.overflow, a rescan, every file done."""
    d = make_daemon(spool={"rescan_interval": 3600.0})  # only the overflow can trigger a rescan
    d.start()
    names = [f"burst-{i:04d}.txt" for i in range(600)]
    for name in names:
        d.drop(name, "1.1.1.1\n")
    d.wait_event("watch.overflow")
    wait_for(lambda: count_results(d) == len(names), timeout=60, what="every burst file")
    assert d.stop() == 0


def test_simulated_overflow_rescans_and_finds_files_inotify_never_reported(make_daemon: Callable[..., Daemon]) -> None:
    """SIGUSR2 acts as IN_Q_OVERFLOW: files linked in place (no event the watcher acts on) are found."""
    d = make_daemon(spool={"rescan_interval": 3600.0})
    d.start()
    for i in range(50):
        tmp = d.spool / "tmp" / f"quiet-{i}"
        tmp.write_text("2.2.2.2\n")
        os.link(tmp, d.spool / "incoming" / f"quiet-{i}")  # IN_CREATE only: not acted on
        os.unlink(tmp)
    # The watch handles events in order: once a renamed file is done, the
    # links' IN_CREATE events before it were seen and not acted on.
    d.drop("loud.txt", "3.3.3.3\n")
    d.wait_result("loud.txt")
    assert count_results(d) == 1
    d.signal(signal.SIGUSR2)
    d.wait_event("watch.overflow")
    rescan = d.wait_event("spool.rescan")
    assert rescan["found"] == 50
    wait_for(lambda: count_results(d) == 51, timeout=30, what="the quiet files")
    assert d.stop() == 0
