"""Intake, job book, disk back-off and stop decisions, with a fake executor and clock."""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from ipspool.compression import SNIFF_BYTES
from ipspool.config import load_config
from ipspool.formats import head_size
from ipspool.health import HealthChecks
from ipspool.intake import SETTLE
from ipspool.outage import MAX_BACKOFF, DiskOutage
from ipspool.protocol import Done, Failed, Lost
from ipspool.states import JobState
from ipspool.supervisor import Supervisor
from tests.support.fakes import FakeClock, FakeExecutor, FakeNotifier


def make(tmp_path: Path, slots: int = 2, **workers: Any) -> tuple[Supervisor, FakeClock, FakeExecutor]:
    config = load_config(None, spool=str(tmp_path / "spool"))
    config = config.model_copy(update={"workers": config.workers.model_copy(
        update={"processes": 2, "chunk_bytes": 4096, **workers})})
    clock = FakeClock()
    executor = FakeExecutor(slots)
    sup = Supervisor(config, None, clock=clock, executor=executor)
    sup.spool.create()
    sup.spool.open()
    sup.notifier = FakeNotifier()  # type: ignore[assignment]
    sup.reporter.notifier = sup.notifier
    sup.ready_sent = True  # as after daemon.ready
    return sup, clock, executor


def drop(sup: Supervisor, name: str, data: bytes, mtime: float | None = None) -> None:
    path = sup.config.spool_dir / "incoming" / name
    path.write_bytes(data)
    if mtime is not None:
        os.utime(path, (mtime, mtime))


def lines(n: int) -> bytes:
    return b"".join(b"10.0.%d.%d\n" % (i // 250, i % 250) for i in range(n))


def test_claims_alternate_between_new_arrivals_and_the_backlog(tmp_path: Path) -> None:
    """Fresh names are not stuck behind a scanned backlog, and the backlog still moves."""
    sup, clock, _ = make(tmp_path)
    for i in range(4):
        drop(sup, f"old{i}", b"1.2.3.4\n", mtime=clock.time() - 60)
    sup.intake.rescan()
    for i in range(2):
        drop(sup, f"new{i}", b"1.2.3.4\n")
        sup.intake.take_names([f"new{i}"])
    order = []
    while (claim := sup.intake.claim_next()) is not None:
        order.append(claim[0])
    assert [name[:3] for name in order] == ["new", "old", "new", "old", "old", "old"]
    assert order[0::2][:2] == ["new0", "new1"] and sorted(order) == sorted(set(order))


def test_a_file_with_a_future_mtime_is_claimed_by_the_next_scan(tmp_path: Path) -> None:
    """Settling is measured from our own sighting, not from an mtime the producer controls."""
    sup, clock, _ = make(tmp_path)
    drop(sup, "future", b"1.2.3.4\n", mtime=clock.time() + 86400 * 365)
    assert sup.intake.rescan() == 0
    clock.advance(SETTLE)
    assert sup.intake.rescan() == 1
    assert sup.intake.claim_next() == ("future", "future")


def test_a_file_still_being_written_is_not_offered_by_a_scan(tmp_path: Path) -> None:
    """An mtime that keeps moving never settles."""
    sup, clock, _ = make(tmp_path)
    for step in range(3):
        drop(sup, "growing", b"1.2.3.4\n" * (step + 1), mtime=clock.time())
        assert sup.intake.rescan() == 0
        clock.advance(SETTLE)
        os.utime(sup.config.spool_dir / "incoming" / "growing", (clock.time(), clock.time()))


def test_intake_claims_nothing_new_during_a_results_disk_outage(tmp_path: Path) -> None:
    """Backpressure: the backlog stays in incoming/ while results/ cannot be written."""
    sup, clock, executor = make(tmp_path)
    for i in range(5):
        drop(sup, f"f{i}", b"1.2.3.4\n", mtime=clock.time() - 60)
    sup.intake.rescan()
    sup.outage.backoff("disk_full", "ENOSPC")
    sup.tick()
    sup.fill()
    assert executor.submitted == []
    assert len(os.listdir(sup.config.spool_dir / "incoming")) == 5
    sup.outage.ok()
    sup.tick()
    sup.fill()
    assert len(executor.submitted) == 2  # as many as the executor has room for


def test_a_lone_file_is_split_so_every_worker_gets_some_and_a_queued_one_is_not(tmp_path: Path) -> None:
    """Two chunks per worker for a file arriving alone; chunk_bytes when others wait behind it."""
    sup, _, _ = make(tmp_path, chunk_bytes=1 << 20)
    assert sup.book.chunk_bytes_for(100_000, waiting=0) == 25_000
    assert sup.book.chunk_bytes_for(100_000, waiting=3) == 1 << 20
    assert sup.book.chunk_bytes_for(10_000, waiting=0) == 1 << 20  # under MIN_SPLIT: one chunk


def claim_one(sup: Supervisor, executor: FakeExecutor, name: str, data: bytes) -> None:
    drop(sup, name, data)
    sup.intake.take_names([name])
    sup.fill()
    assert executor.submitted, "nothing was dispatched"


def test_a_chunk_lost_before_it_started_is_requeued_first_without_an_attempt(tmp_path: Path) -> None:
    """A worker that died with chunks still queued did not choke on them."""
    sup, _, executor = make(tmp_path, slots=1)
    claim_one(sup, executor, "f", lines(2000))
    first, _ = executor.submitted[0]
    executor.report(Lost(first, started=False, cause="signal 9"), first.key)
    sup.route_events()
    sup.fill()
    assert executor.submitted[1] == (first, False)
    assert sup.book.attempts[first.key] == 0


def test_a_chunk_lost_in_progress_is_retried_alone_then_poison_after_max_attempts(tmp_path: Path) -> None:
    """Each death charges an attempt; the retry runs alone; max_attempts sends the file to failed/."""
    sup, _, executor = make(tmp_path, slots=1, max_attempts=3)
    claim_one(sup, executor, "f", b"1.2.3.4\n")
    chunk, _ = executor.submitted[0]
    with capture_logs() as logs:
        for _ in range(3):
            executor.report(Lost(chunk, started=True, cause="signal 9"), chunk.key)
            sup.route_events()
            sup.fill()
    events = [e["event"] for e in logs if e["event"] in ("chunk.retry", "file.failed")]
    assert events == ["chunk.retry", "chunk.retry", "file.failed"]
    assert [alone for _, alone in executor.submitted] == [False, True, True]
    failed = sup.config.spool_dir / "failed"
    assert json.loads((failed / "f.error.json").read_bytes())["reason"] == "poison"
    assert (failed / "f").exists()
    assert sup.book.jobs == {}


def test_a_full_disk_delays_a_chunk_with_back_off_and_charges_no_attempt(tmp_path: Path) -> None:
    """Failed(retry=True) waits out the outage, then runs again."""
    sup, clock, executor = make(tmp_path, slots=1)
    claim_one(sup, executor, "f", b"1.2.3.4\n")
    chunk, _ = executor.submitted[0]
    with capture_logs() as logs:
        executor.report(Failed(chunk.key, "disk_full", "ENOSPC", retry=True), chunk.key)
        sup.route_events()
    assert [e["event"] for e in logs] == ["disk.full", "disk.retry"]
    sup.tick()
    sup.fill()
    assert len(executor.submitted) == 1  # still waiting
    clock.advance(0.5)
    sup.tick()
    sup.fill()
    assert executor.submitted[1] == (chunk, False)
    assert sup.book.attempts[chunk.key] == 0


def test_disk_back_off_grows_with_the_outage_and_is_capped() -> None:
    """0.5 s at first, then half the outage so far, never over 30 s; recovery resets it."""
    clock = FakeClock()
    outage = DiskOutage(clock, Path("/results"))
    waits = []
    for _ in range(5):
        waits.append(outage.backoff("commit", "ENOSPC"))
        clock.advance(20)
    assert waits == [0.5, 10.5, 20.5, 30.0, MAX_BACKOFF]
    with capture_logs() as logs:
        outage.ok()
    assert logs[0]["event"] == "disk.recovered" and logs[0]["outage"] == 100.0
    assert outage.backoff("commit", "ENOSPC") == 0.5


def test_a_whole_file_commits_after_its_parts_and_the_job_reaches_done(tmp_path: Path) -> None:
    """One chunk: its part is the result; published, input retired to done/."""
    sup, _, executor = make(tmp_path, slots=1)
    claim_one(sup, executor, "f", b"1.2.3.4\n")
    chunk, _ = executor.submitted[0]
    job = sup.book.jobs[chunk.job]
    part = sup.spool.part_path("w.part")
    Path(part).write_bytes(b'{"line":1}\n')
    executor.report(Done(chunk.key, part, {"lines": 1, "valid": 1}), chunk.key)
    sup.route_events()
    assert job.state is JobState.QUEUED
    sup.committer.commit()
    assert job.state is JobState.DONE
    assert (sup.config.results_dir / "f.jsonl").read_bytes() == b'{"line":1}\n'
    assert sup.reporter.totals["files_done"] == 1 and sup.reporter.totals["valid"] == 1


def term_with(sup: Supervisor, clock: FakeClock, executor: FakeExecutor) -> None:
    sup.handle_term("SIGTERM")
    assert "drain" in executor.calls


def test_a_stop_waits_for_in_flight_work_then_kills_at_graceful_timeout(tmp_path: Path) -> None:
    """TERM with a hung stage: no new work, wait graceful_timeout, kill, unfinished stays in active/."""
    sup, clock, executor = make(tmp_path, slots=1, graceful_timeout=30.0)
    claim_one(sup, executor, "f", b"1.2.3.4\n")
    term_with(sup, clock, executor)
    sup.fill()
    clock.advance(29.9)
    sup.check_stopped()
    assert not sup.finished
    clock.advance(0.2)
    with capture_logs() as logs:
        sup.check_stopped()
    assert sup.finished
    assert [e["event"] for e in logs] == ["daemon.stop_timeout"]
    assert "kill graceful_timeout" in executor.calls
    assert os.listdir(sup.config.spool_dir / "active") == ["f"]


def test_a_stop_with_nothing_in_flight_finishes_at_once(tmp_path: Path) -> None:
    """No work: the executor is closed and the loop ends."""
    sup, _, executor = make(tmp_path)
    term_with(sup, FakeClock(), executor)
    sup.check_stopped()
    assert sup.finished and executor.calls[-1] == "close"


def test_a_second_term_stops_now(tmp_path: Path) -> None:
    """The operator insists: kill what runs, leave it in active/."""
    sup, clock, executor = make(tmp_path, slots=1)
    claim_one(sup, executor, "f", b"1.2.3.4\n")
    term_with(sup, clock, executor)
    with capture_logs() as logs:
        sup.handle_term("SIGTERM")
    assert sup.finished and "kill second stop signal" in executor.calls
    assert logs[0]["event"] == "daemon.stop_now"


def test_the_stop_timeout_is_extended_only_while_the_drain_makes_progress(tmp_path: Path) -> None:
    """EXTEND_TIMEOUT_USEC when a worker holding work beat since the last look; none when stalled."""
    sup, clock, executor = make(tmp_path, slots=1, graceful_timeout=100.0)
    claim_one(sup, executor, "f", b"1.2.3.4\n")
    term_with(sup, clock, executor)
    notifier: FakeNotifier = sup.notifier  # type: ignore[assignment]
    extended = []
    for step in range(6):
        if step < 3:
            executor.mark = clock.now  # a heartbeat since the last look
        notifier.sent.clear()
        sup.check_stopped()
        extended.append(any(name == "extend_timeout" for name, _ in notifier.sent))
        clock.advance(2.0)
    assert extended == [True, True, True, False, False, False]


def test_hup_with_a_changed_config_replaces_workers_while_a_multi_chunk_file_is_in_flight(tmp_path: Path) -> None:
    """The old generation's chunks still land in the same job; the file completes once."""
    sup, _, executor = make(tmp_path, slots=8)
    claim_one(sup, executor, "big", lines(3000))
    chunks = [c for c, _ in executor.submitted]
    assert len(chunks) > 1
    new = sup.config.model_copy(update={"workers": sup.config.workers.model_copy(update={"threads": 3})})
    sup.apply(new, sup.log_target)
    assert executor.calls[-1] == "reconfigure 1" and sup.reload_pending
    job = sup.book.jobs[chunks[0].job]
    for i, c in enumerate(chunks):
        part = sup.spool.part_path(f"p{i}")
        Path(part).write_bytes(b"x\n")
        executor.report(Done(c.key, part, {"lines": 1}), c.key)
    sup.route_events()
    assert job.complete and job.state in (JobState.COMPLETE, JobState.QUEUED)
    assert not sup.reload_pending  # the fake executor is ready: config.reloaded was logged


def test_health_alerts_fire_on_the_edge_repeat_slowly_and_clear(tmp_path: Path) -> None:
    """One warning when crossed, a reminder per 300 s while crossed, one .cleared event."""
    config = load_config(None, spool=str(tmp_path))
    alerts = config.alerts.model_copy(update={"backlog_files": 10})
    health = HealthChecks(alerts, tmp_path)
    seen = []
    with capture_logs() as logs:
        for now, waiting in ((0, 5), (5, 11), (10, 12), (305, 12), (310, 3), (315, 3)):
            health.backlog(float(now), waiting, 0.0)
            seen.append([e["event"] for e in logs])
            logs.clear()
    assert seen == [[], ["spool.backlog"], [], ["spool.backlog"], ["spool.backlog.cleared"], []]


@pytest.mark.parametrize("free, low, expect", [(100, 50, []), (10, 50, ["disk.low"])])
def test_disk_low_alert_compares_free_bytes_with_the_threshold(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                               free: int, low: int, expect: list[str]) -> None:
    """disk.low fires when results/ has less free space than alerts.disk_low_bytes."""
    config = load_config(None, spool=str(tmp_path))
    health = HealthChecks(config.alerts.model_copy(update={"disk_low_bytes": low}), tmp_path)

    class Stat:
        f_bavail = free
        f_frsize = 1

    monkeypatch.setattr(os, "statvfs", lambda _path: Stat())
    with capture_logs() as logs:
        health.disk(0.0)
    assert [e["event"] for e in logs] == expect


def test_a_spool_on_a_filesystem_without_acls_is_used_with_a_warning(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """spool.acl_unsupported names tmp/ and incoming/: producers could read each other's files there."""
    import grp

    import ipspool.spool

    config = load_config(None, spool=str(tmp_path / "spool"))
    group = grp.getgrgid(os.getgid()).gr_name
    config = config.model_copy(update={"spool": config.spool.model_copy(update={"producer_group": group})})
    sup = Supervisor(config, None, clock=FakeClock(), executor=FakeExecutor())
    monkeypatch.setattr(ipspool.spool, "ensure_private_default_acl", lambda _path, _uid: False)
    with capture_logs() as logs:
        sup.prepare_spool()
    assert [e["paths"] for e in logs if e["event"] == "spool.acl_unsupported"] == [
        [str(config.spool_dir / "tmp"), str(config.spool_dir / "incoming")]]
    assert sup.intake.owner_ok is not None  # the owner check is on with a producer group
    sup.spool.close()


def test_a_status_snapshot_that_cannot_be_written_is_reported_once(tmp_path: Path) -> None:
    """stats.status_write_failed once per outage, not once per attempt; a later write clears it."""
    from ipspool.stats import SnapshotWriter, Stats

    stats = Stats()
    writer = SnapshotWriter(stats, tmp_path / "gone")
    with capture_logs() as logs:
        version, _ = writer.write_once(-1, 0.0)
        stats.set_totals({"files_done": 1})
        writer.write_once(version, 0.0)
    assert [e["event"] for e in logs] == ["stats.status_write_failed"]
    (tmp_path / "gone").mkdir()
    stats.set_totals({"files_done": 2})
    writer.write_once(version, 0.0)
    assert not writer.failing and (tmp_path / "gone" / "status.json").exists()


def test_a_failed_fsync_of_results_is_never_trusted_the_result_is_published_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """fsyncgate: EIO from fsync(results/) takes the new links back, keeps the input, publishes later."""
    import errno

    sup, clock, executor = make(tmp_path, slots=1)
    claim_one(sup, executor, "f", b"1.2.3.4\n")
    chunk, _ = executor.submitted[0]
    part = sup.spool.part_path("w.part")
    Path(part).write_bytes(b'{"line":1}\n')
    executor.report(Done(chunk.key, part, {"lines": 1}), chunk.key)
    sup.route_events()
    real = sup.spool.sync_results

    def eio() -> None:
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(sup.spool, "sync_results", eio)
    with capture_logs() as logs:
        sup.committer.commit()
    assert [e["step"] for e in logs if e["event"] == "spool.sync_failed"] == ["results"]
    assert not (sup.config.results_dir / "f.jsonl").exists()
    assert (sup.config.spool_dir / "active" / "f").exists()
    job = sup.book.jobs[chunk.job]
    assert job.state is JobState.QUEUED and not sup.committer.due()  # backing off
    monkeypatch.setattr(sup.spool, "sync_results", real)
    clock.advance(1.0)
    sup.committer.commit()
    assert job.state is JobState.DONE
    assert (sup.config.results_dir / "f.jsonl").read_bytes() == b'{"line":1}\n'
    assert (sup.config.spool_dir / "done" / "f").exists()


@pytest.mark.parametrize(("name", "data", "read", "kind"), [
    ("plain.txt", b"1.2.3.4\n", ["sniff"], "plain"),
    ("table.csv", b"ip,note\n1.2.3.4,x\n", ["head"], "delimited"),
    ("packed.txt", gzip.compress(b"1.2.3.4\n"), ["sniff"], "gzip"),
    ("empty.csv", b"", [], "delimited"),
])
def test_a_claimed_file_is_read_once_for_its_compression_and_its_head(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, data: bytes, read: list[int], kind: str,
) -> None:
    """One pread at offset 0: the sniff's few bytes, or the head select wants when the name says it needs one."""
    sup, _, _ = make(tmp_path, slots=1)
    real = os.pread
    reads: list[str] = []

    def pread(fd: int, size: int, offset: int) -> bytes:
        if os.readlink(f"/proc/self/fd/{fd}").endswith(f"/active/{name}"):
            assert offset == 0
            reads.append({SNIFF_BYTES: "sniff", head_size(sup.config): "head"}[size])
        return real(fd, size, offset)

    monkeypatch.setattr(os, "pread", pread)
    drop(sup, name, data)
    sup.intake.take_names([name])
    sup.fill()
    assert reads == read
    job = next(iter(sup.book.jobs.values()))
    assert (job.expansion.kind if job.expansion is not None else job.format.kind) == kind
