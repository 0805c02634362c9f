"""The committer: joining parts in order, the group commit, and what a full disk or a changed input does."""

from __future__ import annotations

import errno
import json
import os
import threading
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from ipspool.commit import Committer
from ipspool.jobs import Job
from ipspool.protocol import Done
from ipspool.states import JobState
from ipspool.supervisor import Supervisor
from tests.support.fakes import FakeClock, FakeExecutor
from tests.support.fsyncs import SyncLog, fail_fsync
from tests.unit.test_decisions_jobs import claim_one, lines, make


class Recorder:
    """The committer's callbacks, recorded, and passed on to the supervisor."""

    def __init__(self, sup: Supervisor) -> None:
        self.sup = sup
        self.failed: list[tuple[str, str, str]] = []
        self.committed: list[tuple[str, str]] = []
        self.wakes = 0

    def fail(self, job: Job, reason: str, detail: str) -> None:
        self.failed.append((job.claimed.name, reason, detail))
        self.sup.fail_job(job, reason, detail)

    def done(self, job: Job, result: str) -> None:
        self.committed.append((job.claimed.name, result))
        self.sup.committed(job, result)

    def wake(self) -> None:
        self.wakes += 1


def with_recorder(sup: Supervisor) -> Recorder:
    """Give the supervisor a committer whose callbacks the test sees."""
    recorder = Recorder(sup)
    committer = Committer(sup.spool, sup.clock, sup.outage, True, fail=recorder.fail, committed=recorder.done,
                          wake=recorder.wake)
    sup.committer.assembler.shutdown(wait=True)  # not shutdown(): that would abandon the new one's joins too
    sup.committer = committer
    sup.book.commits = committer
    return recorder


def settle(sup: Supervisor) -> None:
    """Wait for the assembler thread (FIFO, one thread) and take its outcomes on the loop."""
    while True:
        sup.committer.assembler.submit(lambda: None).result(timeout=30)
        sup.committer.collect()
        if not sup.committer.joining():
            return


def finish_all(sup: Supervisor, executor: FakeExecutor, order: list[int] | None = None) -> list[bytes]:
    chunks = [c for c, _ in executor.submitted]
    datas = [b'{"line":%d}\n' % c.index for c in chunks]
    for i in order if order is not None else range(len(chunks)):
        part = sup.spool.part_path(f"p{i}")
        Path(part).write_bytes(datas[i])
        executor.report(Done(chunks[i].key, part, {"lines": 1}), chunks[i].key)
        sup.route_events()
        settle(sup)
    return datas


def test_parts_arriving_out_of_order_are_joined_in_order_and_published_once(tmp_path: Path) -> None:
    """The result is the parts in chunk order; the input is retired; no part is left behind."""
    sup, _, executor = make(tmp_path, slots=8)
    recorder = with_recorder(sup)
    claim_one(sup, executor, "big", lines(3000))
    count = len(executor.submitted)
    assert count >= 4
    order = [count - 1, 1, 0, *range(2, count - 1)]
    datas = finish_all(sup, executor, order)
    job = next(iter(sup.book.jobs.values()))
    assert job.state is JobState.QUEUED and job.assembly.path is None
    sup.committer.commit()  # the rest of the join first: the job is queued again when it is done
    settle(sup)
    assert job.state is JobState.QUEUED and job.assembly.appended == count
    sup.committer.commit()
    result = sup.config.results_dir / "big.jsonl"
    assert result.read_bytes() == b"".join(datas)
    assert recorder.committed == [("big", str(result))] and recorder.failed == []
    assert recorder.wakes >= 1
    assert (sup.config.spool_dir / "done" / "big").exists()
    assert os.listdir(sup.spool.part_path("x").rsplit("/", 1)[0]) == []
    assert sup.book.jobs == {} and sup.reporter.totals["files_done"] == 1
    sup.committer.commit()  # nothing queued twice
    assert len(recorder.committed) == 1


def test_a_join_that_runs_out_of_space_waits_and_is_retried(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """ENOSPC while joining: disk.full, a commit back-off, then the join and the commit succeed."""
    sup, clock, executor = make(tmp_path, slots=8)
    recorder = with_recorder(sup)
    claim_one(sup, executor, "big", lines(3000))
    real = sup.spool.append_parts
    calls: list[int] = []

    def full_once(*args: Any) -> int:
        calls.append(1)
        if len(calls) == 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(*args)

    monkeypatch.setattr(sup.spool, "append_parts", full_once)
    with capture_logs() as logs:
        datas = finish_all(sup, executor)
    disk = [e["event"] for e in logs if e["event"].startswith("disk.")]
    assert disk == ["disk.full", "disk.retry", "disk.recovered"]  # the next part written ends the outage
    full = next(e for e in logs if e["event"] == "disk.full")
    assert full["reason"] == "commit" and full["detail"] == "[Errno 28] No space left on device"
    assert next(e for e in logs if e["event"] == "disk.retry") == {
        "event": "disk.retry", "log_level": "debug", "step": "commit", "delay": 0.5}
    job = next(iter(sup.book.jobs.values()))
    assert job.state is JobState.QUEUED and job.assembly.path is None
    assert sup.committer.retry_at == clock.now + 0.5
    assert not sup.committer.due()
    clock.advance(0.5)
    assert sup.committer.due()
    sup.committer.commit()  # the join is due again first
    settle(sup)
    sup.committer.commit()
    assert (sup.config.results_dir / "big.jsonl").read_bytes() == b"".join(datas)
    assert recorder.failed == []


@pytest.mark.parametrize(("error", "shown"), [
    (OSError(errno.EIO, "Input/output error"), "[Errno 5] Input/output error"),
    (RuntimeError(), "RuntimeError"),
])
def test_a_join_that_fails_for_another_reason_fails_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, error: Exception, shown: str
) -> None:
    """Retrying an I/O error or a bug would loop forever: the file goes to failed/ as assembly_failed."""
    sup, _, executor = make(tmp_path, slots=8)
    recorder = with_recorder(sup)
    claim_one(sup, executor, "big", lines(3000))

    def broken(*args: Any) -> int:
        raise error

    monkeypatch.setattr(sup.spool, "append_parts", broken)
    finish_all(sup, executor)
    assert recorder.failed == [("big", "assembly_failed", f"joining the result's parts failed: {shown}")]
    assert sup.book.jobs == {} and not sup.outage.active


def test_an_existing_result_is_never_overwritten(tmp_path: Path) -> None:
    """A result name held by a file we did not write fails the input as result_exists; that file is kept."""
    sup, _, executor = make(tmp_path, slots=1)
    recorder = with_recorder(sup)
    claim_one(sup, executor, "f", b"1.2.3.4\n")
    (sup.config.results_dir / "f.jsonl").write_bytes(b"theirs\n")  # after the claim, which avoids taken names
    finish_all(sup, executor)
    sup.committer.commit()
    assert recorder.failed == [
        ("f", "result_exists", "a file we did not write holds the result or summary name; nothing was overwritten")]
    assert (sup.config.results_dir / "f.jsonl").read_bytes() == b"theirs\n"
    assert not (sup.config.results_dir / "f.summary.json").exists()  # linked first, taken back with the failure


def test_a_publish_on_a_full_disk_keeps_the_job_queued_with_back_off(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The parts stay; the job is retried as one of the next group after the delay."""
    sup, clock, executor = make(tmp_path, slots=1)
    recorder = with_recorder(sup)
    claim_one(sup, executor, "f", b"1.2.3.4\n")
    finish_all(sup, executor)
    real = sup.spool.publish_result

    def full(*args: Any) -> str:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(sup.spool, "publish_result", full)
    with capture_logs() as logs:
        sup.committer.commit()
    assert [(e["reason"], e["detail"]) for e in logs if e["event"] == "disk.full"] == [
        ("commit", "[Errno 28] No space left on device")]
    job = next(iter(sup.book.jobs.values()))
    assert job.state is JobState.QUEUED and sup.committer.to_commit == [job]
    assert sup.committer.retry_at == clock.now + 0.5
    monkeypatch.setattr(sup.spool, "publish_result", real)
    clock.advance(0.5)
    sup.committer.commit()
    assert recorder.committed and (sup.config.results_dir / "f.jsonl").exists()


def test_an_input_written_to_after_its_claim_fails_and_the_rest_of_the_group_commits(tmp_path: Path) -> None:
    """A changed input goes to failed/ as changed; the next job of the same group is still published."""
    sup, _, executor = make(tmp_path, slots=8)
    recorder = with_recorder(sup)
    claim_one(sup, executor, "a", b"1.2.3.4\n")
    claim_one(sup, executor, "b", b"1.2.3.5\n")
    finish_all(sup, executor)
    jobs = sorted(sup.book.jobs.values(), key=lambda j: j.seq)
    first = jobs[0]
    with open(first.claimed.path, "ab") as handle:
        handle.write(b"9.9.9.9\n")
    expected = sup.spool.changed(first.claimed)
    assert expected
    sup.committer.commit()
    assert recorder.failed == [(first.claimed.name, "changed", expected)]
    assert [name for name, _ in recorder.committed] == [jobs[1].claimed.name]


def test_a_failed_files_parts_and_half_joined_result_are_removed(tmp_path: Path) -> None:
    """discard takes the parts already in and the assembly so far."""
    sup, _, executor = make(tmp_path, slots=8)
    with_recorder(sup)
    claim_one(sup, executor, "big", lines(3000))
    chunks = [c for c, _ in executor.submitted]
    parts = []
    for c in chunks[:2]:
        part = sup.spool.part_path(f"p{c.index}")
        Path(part).write_bytes(b"x\n")
        parts.append(part)
        executor.report(Done(c.key, part, {"lines": 1}), c.key)
        sup.route_events()
        settle(sup)
    job = sup.book.jobs[chunks[0].job]
    assembly = sup.committer.assembly_path(job)
    assert Path(assembly).exists()
    sup.book.fail_job(job, "unreadable", "x")
    assert not Path(assembly).exists()
    assert not any(Path(p).exists() for p in parts)


def test_the_first_commit_is_due_at_once_whatever_the_clock_reads(tmp_path: Path) -> None:
    """No back-off is pending at start, even at monotonic time 0."""
    sup, _, _ = make(tmp_path)
    committer = Committer(sup.spool, FakeClock(start=0.0), sup.outage, True, fail=lambda *a: None,
                          committed=lambda *a: None, wake=lambda: None)
    committer.to_commit.append(object())  # type: ignore[arg-type]
    assert committer.due()
    committer.to_commit.clear()
    assert not committer.due()
    committer.shutdown()


def test_shutdown_abandons_joins_and_accepts_no_more(tmp_path: Path) -> None:
    """A copy in progress is told to stop; the assembler thread is gone afterwards."""
    sup, _, _ = make(tmp_path)
    names: list[str] = []
    sup.committer.assembler.submit(lambda: names.append(threading.current_thread().name)).result(timeout=30)
    assert names[0].startswith("assemble")
    sup.committer.shutdown()
    assert sup.spool.abandon.is_set()
    with pytest.raises(RuntimeError):
        sup.committer.assembler.submit(lambda: None)


def test_only_the_append_that_takes_in_the_last_part_syncs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Earlier appends skip fsync; the one completing the result fsyncs it."""
    sup, _, executor = make(tmp_path, slots=8)
    with_recorder(sup)
    claim_one(sup, executor, "big", lines(3000))
    real = sup.spool.append_parts
    syncs: list[bool] = []

    def recording(out: str, parts: list[str], offset: int, sync: bool) -> int:
        syncs.append(sync)
        return real(out, parts, offset, sync)

    monkeypatch.setattr(sup.spool, "append_parts", recording)
    finish_all(sup, executor)
    sup.committer.commit()
    settle(sup)
    sup.committer.commit()
    assert syncs and syncs[-1] is True and not any(syncs[:-1])
    assert (sup.config.results_dir / "big.jsonl").exists()


def test_the_final_join_running_out_of_space_queues_the_job_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ENOSPC on the last append of a complete job: back on the commit queue, published once space is back."""
    sup, clock, executor = make(tmp_path, slots=8)
    recorder = with_recorder(sup)
    claim_one(sup, executor, "big", lines(3000))
    count = len(executor.submitted)
    finish_all(sup, executor, order=[count - 1, *range(count - 1)])  # part 0 last: nothing joins early
    real = sup.spool.append_parts
    full = [True]

    def maybe_full(*args: Any) -> int:
        if full[0]:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(*args)

    monkeypatch.setattr(sup.spool, "append_parts", maybe_full)
    sup.committer.commit()
    settle(sup)
    job = next(iter(sup.book.jobs.values()))
    assert job.state is JobState.QUEUED and sup.committer.to_commit == [job]
    full[0] = False
    clock.advance(1)
    sup.committer.commit()
    settle(sup)
    sup.committer.commit()
    assert [name for name, _ in recorder.committed] == ["big"]


def test_a_join_still_running_when_its_file_fails_is_cleaned_up_when_it_reports(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The half-joined result of a failed file is removed once its append comes back."""
    sup, _, executor = make(tmp_path, slots=8)
    with_recorder(sup)
    claim_one(sup, executor, "big", lines(3000))
    chunks = [c for c, _ in executor.submitted]
    real = sup.spool.append_parts
    release = threading.Event()

    def slow(*args: Any) -> int:
        release.wait(30)
        return real(*args)

    monkeypatch.setattr(sup.spool, "append_parts", slow)
    part = sup.spool.part_path("p0")
    Path(part).write_bytes(b"x\n")
    executor.report(Done(chunks[0].key, part, {"lines": 1}), chunks[0].key)
    sup.route_events()
    job = sup.book.jobs[chunks[0].job]
    assert job.assembly.running
    sup.book.fail_job(job, "unreadable", "x")
    release.set()
    settle(sup)
    assert not Path(sup.committer.assembly_path(job)).exists()
    assert not job.assembly.running


def test_a_groups_summaries_are_all_made_durable_then_each_linked_before_its_result_under_one_fsync(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Rules P and S: claims synced, every summary part fsync'd, then summary and result links, one fsync of
    results/ for the group, then the retirement."""
    sup, _, executor = make(tmp_path, slots=8)
    recorder = with_recorder(sup)
    claim_one(sup, executor, "a", b"1.2.3.4\n")
    claim_one(sup, executor, "b", b"1.2.3.5\n")
    finish_all(sup, executor)
    events: list[str] = []
    paths = SyncLog(tmp_path)
    real_link = os.link

    def fsync(fd: int) -> None:
        paths(fd)
        events.append(f"fsync {paths.paths[-1]}")

    def link(src: str, dst: str, **kwargs: Any) -> None:
        events.append(f"link {dst}")
        real_link(src, dst, **kwargs)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "link", link)
    sup.committer.commit()
    assert events == [
        "fsync spool/incoming", "fsync spool/active",
        "fsync spool/results/.parts/1.summary", "fsync spool/results/.parts/2.summary",
        "link a.summary.json", "link a.jsonl", "link b.summary.json", "link b.jsonl",
        "fsync spool/results", "fsync spool/done", "fsync spool/active"]
    assert [name for name, _ in recorder.committed] == ["a", "b"]
    assert json.loads((sup.config.results_dir / "a.summary.json").read_bytes())["lines"] == 1
    assert os.listdir(sup.spool.parts_dir) == []


def test_a_summary_that_cannot_be_made_durable_is_never_linked_and_the_group_is_published_after_a_back_off(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """fsyncgate: EIO from a summary's fsync links nothing of the group, leaves no summary, backs the commit off."""
    sup, clock, executor = make(tmp_path, slots=8)
    recorder = with_recorder(sup)
    claim_one(sup, executor, "a", b"1.2.3.4\n")
    claim_one(sup, executor, "b", b"1.2.3.5\n")
    finish_all(sup, executor)
    real = os.fsync
    fail_fsync(monkeypatch, "/2.summary")
    with capture_logs() as logs:
        sup.committer.commit()
    assert [e["detail"] for e in logs if e["event"] == "disk.full"] == ["[Errno 5] Input/output error"]
    assert os.listdir(sup.config.results_dir) == [".parts"]
    assert sorted(os.listdir(sup.spool.parts_dir)) == ["p0", "p1"]  # the results' parts wait; no summary is left
    assert all(job.state is JobState.QUEUED for job in sup.book.jobs.values()) and not sup.committer.due()
    monkeypatch.setattr(os, "fsync", real)
    clock.advance(0.5)
    sup.committer.commit()
    assert [name for name, _ in recorder.committed] == ["a", "b"] and recorder.failed == []
    assert sorted(os.listdir(sup.config.results_dir)) == [".parts", "a.jsonl", "a.summary.json", "b.jsonl",
                                                          "b.summary.json"]
