"""The job book's outcomes: failures, retries, stale reports, alerts and their events, with a fake executor."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from ipspool import chunking, jobs
from ipspool.chunking import Chunk
from ipspool.protocol import Done, Failed, Lost
from ipspool.states import JobState
from ipspool.supervisor import Supervisor
from tests.support.fakes import FakeExecutor
from tests.unit.test_decisions_jobs import claim_one, drop, lines, make


def events_named(logs: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [e for e in logs if e["event"] == name]


def report(sup: Supervisor, executor: FakeExecutor, event: Done | Failed | Lost) -> None:
    key = event.chunk.key if isinstance(event, Lost) else event.key
    executor.report(event, key)
    sup.route_events()


def write_part(sup: Supervisor, name: str, data: bytes = b"x\n") -> str:
    part = sup.spool.part_path(name)
    Path(part).write_bytes(data)
    return part


def error_json(sup: Supervisor, job_name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((sup.config.spool_dir / "failed" / f"{job_name}.error.json").read_bytes())
    return loaded


def test_a_failed_chunk_fails_its_file_with_the_documented_event_and_error_file(tmp_path: Path) -> None:
    """file.failed names file, job, reason, detail and error file; the reason is on disk; files_failed counts it."""
    sup, _, executor = make(tmp_path, slots=1)
    claim_one(sup, executor, "f", b"1.2.3.4\n")
    chunk, _ = executor.submitted[0]
    with capture_logs() as logs:
        report(sup, executor, Failed(chunk.key, "unreadable", "short read"))
    error_file = str(sup.config.spool_dir / "failed" / "f.error.json")
    assert events_named(logs, "file.failed") == [{
        "event": "file.failed", "log_level": "error", "file": "f", "job": "f", "reason": "unreadable",
        "detail": "short read", "error_file": error_file,
    }]
    info = error_json(sup, "f")
    assert (info["reason"], info["detail"], info["file"], info["job"]) == ("unreadable", "short read", "f", "f")
    assert sup.reporter.totals["files_failed"] == 1
    assert sup.book.jobs == {}


def test_a_poison_file_says_which_chunk_and_how_many_workers_died(tmp_path: Path) -> None:
    """The poison detail names the chunk, its bytes and lines, the attempts and the last cause."""
    sup, _, executor = make(tmp_path, slots=1, max_attempts=2)
    claim_one(sup, executor, "f", b"1.2.3.4\n")
    chunk, _ = executor.submitted[0]
    with capture_logs() as logs:
        report(sup, executor, Lost(chunk, started=True, cause="signal 9"))
        sup.fill()
        report(sup, executor, Lost(chunk, started=True, cause="signal 11"))
    detail = "chunk 0 (bytes 0-8, lines from 1) was in progress when 2 workers died; last: signal 11"
    (failed,) = events_named(logs, "file.failed")
    assert failed["detail"] == detail and failed["attempts"] == 2 and failed["reason"] == "poison"
    info = error_json(sup, "f")
    assert info["detail"] == detail and info["attempts"] == 2
    assert sup.book.attempts == {}


def test_a_retry_is_logged_with_the_attempt_it_will_be(tmp_path: Path) -> None:
    """chunk.retry carries file, chunk, the number of the coming attempt and the cause."""
    sup, _, executor = make(tmp_path, slots=1, max_attempts=3)
    claim_one(sup, executor, "f", b"1.2.3.4\n")
    chunk, _ = executor.submitted[0]
    with capture_logs() as logs:
        report(sup, executor, Lost(chunk, started=True, cause="signal 9"))
        sup.fill()
        report(sup, executor, Lost(chunk, started=True, cause="exit code 1"))
    assert events_named(logs, "chunk.retry") == [
        {"event": "chunk.retry", "log_level": "warning", "file": "f", "chunk": 0, "attempt": 2, "cause": "signal 9"},
        {"event": "chunk.retry", "log_level": "warning", "file": "f", "chunk": 0, "attempt": 3,
         "cause": "exit code 1"},
    ]


@pytest.mark.parametrize(("error", "shown"), [
    (OSError(errno.EIO, "Input/output error"), "(not written: Input/output error)"),
    (OSError("no strerror"), "(not written: no strerror)"),
])
def test_a_failure_that_cannot_be_written_still_counts_and_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, error: OSError, shown: str
) -> None:
    """When failed/ cannot be written the input stays in active/; the event says why, the file still counts."""
    sup, _, executor = make(tmp_path, slots=1)
    claim_one(sup, executor, "f", b"1.2.3.4\n")
    chunk, _ = executor.submitted[0]

    def broken(*args: object) -> str:
        raise error

    monkeypatch.setattr(sup.spool, "fail", broken)
    with capture_logs() as logs:
        report(sup, executor, Failed(chunk.key, "unreadable", "x"))
    assert events_named(logs, "file.failed")[0]["error_file"] == shown
    assert sup.reporter.totals["files_failed"] == 1
    assert os.listdir(sup.config.spool_dir / "active") == ["f"]


def test_a_failed_multi_chunk_file_forgets_its_attempts_and_waits_for_chunks_still_out(tmp_path: Path) -> None:
    """The job stays until its last chunk reports; that chunk's part is removed; attempts are dropped."""
    sup, _, executor = make(tmp_path, slots=8)
    claim_one(sup, executor, "big", lines(3000))
    chunks = [c for c, _ in executor.submitted]
    assert len(chunks) >= 3
    job = sup.book.jobs[chunks[0].job]
    report(sup, executor, Lost(chunks[1], started=True, cause="signal 9"))
    assert sup.book.attempts[chunks[1].key] == 1
    report(sup, executor, Failed(chunks[0].key, "unreadable", "short read"))
    assert job.state is JobState.FAILED and sup.book.attempts == {}
    assert sup.book.jobs == {job.seq: job}  # chunks are still out
    parts = [write_part(sup, f"p{c.index}") for c in chunks[2:]]
    for c, part in zip(chunks[2:], parts, strict=True):
        report(sup, executor, Done(c.key, part, {"lines": 1}))
    assert not any(Path(p).exists() for p in parts)
    assert sup.book.jobs == {}
    sup.fill()
    assert len(executor.submitted) == len(chunks)  # the isolated retry of a failed file is not sent


def test_a_chunk_requeued_before_its_file_failed_is_dropped(tmp_path: Path) -> None:
    """A chunk given back unstarted is not dispatched once its file has gone to failed/."""
    sup, _, executor = make(tmp_path, slots=8)
    claim_one(sup, executor, "big", lines(3000))
    chunks = [c for c, _ in executor.submitted]
    report(sup, executor, Lost(chunks[1], started=False, cause="signal 9"))
    report(sup, executor, Failed(chunks[0].key, "unreadable", "short read"))
    for c in chunks[2:]:
        report(sup, executor, Failed(c.key, "unreadable", "short read"))
    assert sup.book.jobs == {}
    sup.fill()
    assert len(executor.submitted) == len(chunks)


def test_reports_about_unknown_or_already_reported_chunks_are_ignored(tmp_path: Path) -> None:
    """A stale Failed, Lost or Done changes nothing; a stale Done's part is removed."""
    sup, _, executor = make(tmp_path, slots=1)
    claim_one(sup, executor, "f", b"1.2.3.4\n")
    chunk, _ = executor.submitted[0]
    report(sup, executor, Failed(chunk.key, "disk_full", "ENOSPC", retry=True))
    report(sup, executor, Failed(chunk.key, "disk_full", "ENOSPC", retry=True))
    assert len(sup.book.delayed) == 1
    ghost = Chunk(99, 0, "/nowhere", 0, 1, 1)
    report(sup, executor, Failed(ghost.key, "unreadable", "x"))
    report(sup, executor, Lost(ghost, started=True, cause="signal 9"))
    part = write_part(sup, "ghost")
    report(sup, executor, Done(ghost.key, part, {"lines": 1}))
    assert not Path(part).exists()
    assert sup.reporter.totals["files_failed"] == 0 and sup.book.attempts == {}


def test_lost_chunks_of_a_failed_file_are_neither_requeued_nor_charged(tmp_path: Path) -> None:
    """Once its file failed, a chunk's death no longer matters."""
    sup, _, executor = make(tmp_path, slots=8)
    claim_one(sup, executor, "big", lines(3000))
    chunks = [c for c, _ in executor.submitted]
    report(sup, executor, Failed(chunks[0].key, "unreadable", "short read"))
    report(sup, executor, Lost(chunks[1], started=True, cause="signal 9"))
    report(sup, executor, Lost(chunks[2], started=False, cause="signal 9"))
    assert sup.book.attempts == {} and not sup.book.requeued and not sup.book.isolated


def test_a_delayed_chunk_is_released_exactly_once_when_due(tmp_path: Path) -> None:
    """disk.full and disk.retry carry the documented fields; at its time the chunk leaves the delay list."""
    sup, clock, executor = make(tmp_path, slots=1)
    claim_one(sup, executor, "f", b"1.2.3.4\n")
    chunk, _ = executor.submitted[0]
    with capture_logs() as logs:
        report(sup, executor, Failed(chunk.key, "disk_full", "ENOSPC", retry=True))
    assert logs == [
        {"event": "disk.full", "log_level": "error", "reason": "disk_full", "detail": "ENOSPC",
         "results": str(sup.config.results_dir)},
        {"event": "disk.retry", "log_level": "debug", "step": "chunk", "file": "f", "chunk": 0, "delay": 0.5},
    ]
    sup.book.release_delayed(clock.now + 0.5)
    assert sup.book.delayed == [] and list(sup.book.requeued) == [chunk]


def test_a_done_chunk_is_logged_and_a_two_chunk_file_starts_joining_at_its_first_part(tmp_path: Path) -> None:
    """chunk.done names file, chunk, worker and lines; the first of two parts goes to the assembler at once."""
    sup, _, executor = make(tmp_path, slots=8)
    claim_one(sup, executor, "two", lines(700))  # 700 lines of 9-10 bytes: two 4 KiB chunks
    chunks = [c for c, _ in executor.submitted]
    assert len(chunks) == 2
    job = sup.book.jobs[chunks[0].job]
    part = write_part(sup, "p0")
    with capture_logs() as logs:
        report(sup, executor, Done(chunks[0].key, part, {"lines": 412}, worker=3))
    assert logs == [{"event": "chunk.done", "log_level": "debug", "file": "two", "chunk": 0, "worker": 3,
                     "lines": 412}]
    assert job.assembly.running or job.assembly.appended == 1
    sup.committer.shutdown()


def test_a_done_without_a_line_count_logs_zero_lines(tmp_path: Path) -> None:
    """An empty part (blank lines only) reports lines=0."""
    sup, _, executor = make(tmp_path, slots=1)
    claim_one(sup, executor, "f", b"1.2.3.4\n")
    chunk, _ = executor.submitted[0]
    with capture_logs() as logs:
        report(sup, executor, Done(chunk.key, write_part(sup, "p"), {}))
    assert events_named(logs, "chunk.done")[0]["lines"] == 0


def test_alerts_are_logged_up_to_the_per_file_limit_across_chunks(tmp_path: Path) -> None:
    """ip.listed carries ip, lists, file and line; alerts.listed_per_file caps them for the whole file."""
    sup, _, executor = make(tmp_path, slots=8)
    sup.book.config = sup.config.model_copy(update={"alerts": sup.config.alerts.model_copy(
        update={"listed_per_file": 2})})
    claim_one(sup, executor, "big", lines(3000))
    chunks = [c for c, _ in executor.submitted]
    first = [(1, "10.0.0.1", ["bad"]), (2, "10.0.0.2", ["bad", "worse"]), (3, "10.0.0.3", ["bad"])]
    with capture_logs() as logs:
        report(sup, executor, Done(chunks[0].key, write_part(sup, "p0"), {"lines": 3}, alerts=first[:1]))
        report(sup, executor, Done(chunks[1].key, write_part(sup, "p1"), {"lines": 3}, alerts=first[1:]))
        report(sup, executor, Done(chunks[2].key, write_part(sup, "p2"), {"lines": 3}, alerts=first))
    assert events_named(logs, "ip.listed") == [
        {"event": "ip.listed", "log_level": "warning", "ip": ip, "lists": listed, "file": "big", "line": line}
        for line, ip, listed in first[:2]
    ]
    sup.committer.shutdown()


def test_a_retried_chunk_that_finally_succeeds_leaves_no_attempts_behind(tmp_path: Path) -> None:
    """After the commit, the attempts of the file's chunks are forgotten."""
    sup, _, executor = make(tmp_path, slots=1, max_attempts=3)
    claim_one(sup, executor, "f", b"1.2.3.4\n")
    chunk, _ = executor.submitted[0]
    report(sup, executor, Lost(chunk, started=True, cause="signal 9"))
    sup.fill()
    report(sup, executor, Done(chunk.key, write_part(sup, "p", b'{"line":1}\n'), {"lines": 1}))
    sup.committer.commit()
    assert (sup.config.results_dir / "f.jsonl").exists()
    assert sup.book.attempts == {} and sup.book.jobs == {}


def test_a_rejected_claim_does_not_stop_the_next_file_from_being_dispatched(tmp_path: Path) -> None:
    """An input refused at inspection goes to failed/; the job book goes on to the next claim."""
    sup, clock, executor = make(tmp_path, slots=2)
    sup.intake.max_file_bytes = 100
    drop(sup, "a-big", b"1.2.3.4\n" * 50, mtime=clock.time() - 60)
    drop(sup, "b-small", b"1.2.3.4\n", mtime=clock.time() - 60)
    sup.intake.rescan()
    sup.fill()
    assert [os.path.basename(c.path) for c, _ in executor.submitted] == ["b-small"]
    assert error_json(sup, "a-big")["reason"] == "too_large"


def test_a_claimed_file_that_cannot_be_opened_is_rejected_and_the_next_one_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """open() failing for the splitter sends the file to failed/ as unreadable, naming the error."""
    sup, clock, executor = make(tmp_path, slots=2)

    class RefusingOs:
        """The os module as the job book sees it, whose open() refuses the one file (inspect saw it fine)."""

        def __getattr__(self, name: str) -> Any:
            return getattr(os, name)

        @staticmethod
        def open(path: str, flags: int, *args: Any, **kwargs: Any) -> int:
            if path.endswith("a-locked"):
                raise PermissionError(errno.EACCES, "Permission denied")
            return os.open(path, flags, *args, **kwargs)

    monkeypatch.setattr(jobs, "os", RefusingOs())
    drop(sup, "a-locked", lines(3000), mtime=clock.time() - 60)
    drop(sup, "b-fine", b"1.2.3.4\n", mtime=clock.time() - 60)
    sup.intake.rescan()
    sup.fill()
    assert [os.path.basename(c.path) for c, _ in executor.submitted] == ["b-fine"]
    info = error_json(sup, "a-locked")
    assert (info["reason"], info["detail"]) == ("unreadable", "cannot open: Permission denied")


def test_a_file_with_others_waiting_behind_it_is_split_by_chunk_bytes_alone(tmp_path: Path) -> None:
    """Only a file arriving alone is cut finer to feed every worker."""
    sup, clock, executor = make(tmp_path, slots=8, chunk_bytes=1 << 20)
    for name in ("a", "b"):
        drop(sup, name, lines(3000), mtime=clock.time() - 60)
    sup.intake.rescan()
    sup.fill()
    per_file = [os.path.basename(c.path) for c, _ in executor.submitted]
    first, second = per_file[0], ({"a", "b"} - {per_file[0]}).pop()
    assert per_file.count(first) == 1  # the other file was waiting behind it
    assert per_file.count(second) == 4  # alone by then: two chunks for each of the 2 workers


def test_the_loop_is_told_while_a_splitter_pauses_in_a_long_scan(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """scanning is True while an over-long line is being scanned, False again once nothing scans."""
    monkeypatch.setattr(chunking, "SCAN_STEP", 4096)
    sup, _, executor = make(tmp_path, slots=8)
    claim_one(sup, executor, "long", b"1.2.3.4\n" * 600 + b"x" * 20000 + b"\n1.2.3.4\n")
    assert sup.book.scanning
    while sup.book.scanning:
        sup.fill()
    keys = [c for c, _ in executor.submitted]
    assert any(c.too_long for c in keys)
    sup.fill()
    assert not sup.book.scanning


def test_a_job_closed_twice_closes_its_file_once(tmp_path: Path) -> None:
    """A multi-chunk file failed after its splitter finished: the descriptor is already gone, nothing breaks."""
    sup, _, executor = make(tmp_path, slots=8)
    claim_one(sup, executor, "big", lines(3000))
    chunk = executor.submitted[0][0]
    job = sup.book.jobs[chunk.job]
    assert job.total is not None and job.fd is None and job.chunks is None
    job.close()
    assert job.fd is None
    report(sup, executor, Failed(chunk.key, "unreadable", "x"))
    assert job.failed


def test_a_claimed_file_is_logged_counted_and_its_chunks_carry_its_identity(tmp_path: Path) -> None:
    """file.claimed names file, job and bytes; jobs are numbered from 1; chunks carry the file's dev and ino."""
    sup, _, executor = make(tmp_path, slots=16)
    with capture_logs() as logs:
        claim_one(sup, executor, "a", lines(3000))
        claim_one(sup, executor, "b", b"1.2.3.4\n")
    size = len(lines(3000))
    assert events_named(logs, "file.claimed") == [
        {"event": "file.claimed", "log_level": "info", "file": "a", "job": "a", "bytes": size},
        {"event": "file.claimed", "log_level": "info", "file": "b", "job": "b", "bytes": 8},
    ]
    assert sup.reporter.totals["files_claimed"] == 2
    chunks = [c for c, _ in executor.submitted]
    assert sorted({c.job for c in chunks}) == [1, 2]
    for chunk in chunks:
        st = os.stat(chunk.path)
        assert (chunk.dev, chunk.ino) == (st.st_dev, st.st_ino)
    assert not sup.book.scanning


def test_a_read_error_while_splitting_fails_the_file_as_unreadable(tmp_path: Path) -> None:
    """An I/O error from the splitter sends the file to failed/ with the error named."""
    sup, _, executor = make(tmp_path, slots=1)
    claim_one(sup, executor, "big", lines(3000))
    job = next(iter(sup.book.jobs.values()))

    def failing() -> Any:
        raise OSError(errno.EIO, "Input/output error")
        yield  # a generator, as the splitter is

    job.chunks = failing()
    assert sup.book.split_next(job) is None
    info = error_json(sup, "big")
    assert (info["reason"], info["detail"]) == ("unreadable", "read error while splitting: Input/output error")


@pytest.mark.parametrize(("size", "processes", "expected"), [
    (16384, 2, 1 << 20),   # MIN_SPLIT itself stays one chunk
    (16385, 2, 4097),      # just over: two chunks per worker
    (20000, 4, 4096),      # never below the smallest chunk_bytes
])
def test_a_lone_files_chunk_size_at_its_edges(tmp_path: Path, size: int, processes: int, expected: int) -> None:
    """chunk_bytes_for: one chunk up to MIN_SPLIT, then size / (2 x workers), never under 4096."""
    sup, _, _ = make(tmp_path, chunk_bytes=1 << 20, processes=processes)
    assert sup.book.chunk_bytes_for(size, waiting=0) == expected


def test_a_delay_in_the_log_is_rounded_to_the_millisecond(tmp_path: Path) -> None:
    """disk.retry's delay has three decimals."""
    sup, clock, executor = make(tmp_path, slots=2)
    claim_one(sup, executor, "a", b"1.2.3.4\n")
    claim_one(sup, executor, "b", b"1.2.3.5\n")
    first, second = (c for c, _ in executor.submitted)
    report(sup, executor, Failed(first.key, "disk_full", "ENOSPC", retry=True))
    clock.advance(0.00123)
    with capture_logs() as logs:
        report(sup, executor, Failed(second.key, "disk_full", "ENOSPC", retry=True))
    assert events_named(logs, "disk.retry")[0]["delay"] == 0.501


def test_a_split_file_leaves_no_descriptor_open(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The splitter's descriptor is closed once the last chunk is cut."""
    opened: list[int] = []

    class RecordingOs:
        """The os module as the job book sees it, noting the descriptors it opens."""

        def __getattr__(self, name: str) -> Any:
            return getattr(os, name)

        @staticmethod
        def open(path: str, flags: int, *args: Any, **kwargs: Any) -> int:
            fd = os.open(path, flags, *args, **kwargs)
            opened.append(fd)
            return fd

    monkeypatch.setattr(jobs, "os", RecordingOs())
    sup, _, executor = make(tmp_path, slots=16)
    claim_one(sup, executor, "big", lines(3000))
    assert len(executor.submitted) > 1 and len(opened) == 1
    with pytest.raises(OSError):
        os.fstat(opened[0])


def test_a_failed_file_stays_in_the_book_until_its_last_chunk_reports(tmp_path: Path) -> None:
    """Each file failed is counted; its job is forgotten only when nothing of it is out any more."""
    sup, _, executor = make(tmp_path, slots=16)
    claim_one(sup, executor, "big", lines(3000))
    claim_one(sup, executor, "small", b"1.2.3.4\n")
    chunks = [c for c, _ in executor.submitted]
    big = [c for c in chunks if c.path.endswith("big")]
    small = [c for c in chunks if c.path.endswith("small")]
    assert len(big) >= 3
    report(sup, executor, Failed(big[0].key, "unreadable", "x"))
    report(sup, executor, Failed(small[0].key, "unreadable", "y"))
    assert sup.reporter.totals["files_failed"] == 2
    for c in big[1:-1]:
        report(sup, executor, Done(c.key, write_part(sup, f"p{c.index}"), {"lines": 1}))
        assert big[0].job in sup.book.jobs
    report(sup, executor, Done(big[-1].key, write_part(sup, "last"), {"lines": 1}))
    assert sup.book.jobs == {}
