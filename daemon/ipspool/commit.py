"""The committer: finished jobs become published results, as one group.

Publishing is step 2 and 3 of the spool protocol (spool.py): link the
fsync'd result into results/, fsync results/, then retire the inputs and
fsync their directories. Doing it for every job finished since the last
turn at once costs one fsync per directory for the whole group, which is
what makes many small files fast.

A multi-chunk result is first joined from its parts, in order, on a helper
thread as the parts arrive (``assemble``), so joining a large file overlaps
with processing it and the loop (and systemd's watchdog) keeps turning while
gigabytes are copied; the append that takes in the last part also fsyncs.

The group's summaries are written together too, every file before the
first fsync (``Spool.write_parts``), then each linked in before its result.

A full disk postpones the whole commit with back-off (``DiskOutage``);
nothing is lost, the parts wait.
"""

from __future__ import annotations

import errno
import functools
import queue
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from ipspool.clock import Clock
from ipspool.jobs import Job
from ipspool.logs import get_logger
from ipspool.outage import DiskOutage
from ipspool.spool import Spool, printable
from ipspool.states import JobState
from ipspool.summary import render_summary

__all__ = ["Committer"]


@dataclass(frozen=True)
class _Appended:
    """What one append on the assembler thread came to."""

    seq: int
    count: int
    size: int
    error: str = ""
    code: int = 0


class Committer:
    def __init__(
        self,
        spool: Spool,
        clock: Clock,
        outage: DiskOutage,
        keep_processed: bool,
        *,
        fail: Callable[[Job, str, str], None],
        committed: Callable[[Job, str], None],
        wake: Callable[[], None],
        summary_top: int = 10,
        summaries: bool = True,
    ) -> None:
        self.spool = spool
        self.clock = clock
        self.outage = outage
        self.keep_processed = keep_processed
        self.fail = fail
        self.committed = committed
        self.wake = wake
        self.summary_top = summary_top  # spool.summary_top
        self.summaries = summaries  # spool.summaries
        self.log = get_logger()
        self.to_commit: list[Job] = []
        self.retry_at = 0.0
        self.assembler = ThreadPoolExecutor(1, thread_name_prefix="assemble")
        self.appended: queue.SimpleQueue[_Appended] = queue.SimpleQueue()
        self.jobs: dict[int, Job] = {}  # jobs with an append running, by seq

    # -- the queue ----------------------------------------------------------

    def reconfigure(self, keep_processed: bool, summary_top: int, summaries: bool = True) -> None:
        """A reload: what to do with processed inputs, and whether summaries are written and how long
        their top lists are."""
        self.keep_processed = keep_processed
        self.summary_top = summary_top
        self.summaries = summaries

    def queue(self, job: Job) -> None:
        """Put a job on the commit queue once, however many paths lead there."""
        if job.state is JobState.COMPLETE:
            job.move(JobState.QUEUED)
            self.to_commit.append(job)

    def due(self) -> bool:
        return bool(self.to_commit) and self.clock.monotonic() >= self.retry_at

    def joining(self) -> bool:
        return any(job.assembly.running for job in self.jobs.values())

    def discard(self, job: Job) -> None:
        """A failed job's parts and half-joined result go."""
        for part in job.parts.values():
            self.spool.remove_part(part)
        if not job.assembly.running:  # a running append is cleaned up when it reports back
            self.spool.remove_part(self.assembly_path(job))

    def delay(self, error: str) -> None:
        wait = self.outage.backoff("commit", error)
        self.retry_at = self.clock.monotonic() + wait
        self.log.debug("disk.retry", step="commit", delay=round(wait, 3))

    def requeue(self, job: Job) -> None:
        job.move(JobState.COMPLETE)
        self.queue(job)

    # -- the group commit -----------------------------------------------------

    def commit(self) -> None:
        """Publish every finished job as one group: few fsyncs for many files."""
        if not self.due():
            return
        batch, self.to_commit = self.to_commit, []
        # A claim must be durable before its result is: otherwise a power cut
        # could bring the input back to incoming/ beside its result.
        if not self.synced("claims", self.spool.sync_claims):
            for job in batch:
                if job.state is JobState.QUEUED:
                    self.requeue(job)
            return
        published = self.publish_batch(batch)
        if not published:
            return
        self.outage.ok()
        if not self.synced("results", self.spool.sync_results):
            # The links may not be durable (fsyncgate: a failed fsync is not
            # retried by the kernel): take them back and publish again later;
            # the inputs were never retired.
            for job, _, _ in published:
                self.spool.unpublish(job.claimed.job_name, job.format.suffix)
                self.requeue(job)
            return
        for job, _, _ in published:
            self.retire(job)
        # A failure here is no loss: an input whose move to done/ is not
        # durable comes back to active/ beside its result, and recovery retires it.
        self.synced("retired", lambda: self.spool.sync_retired(self.keep_processed))
        for job, part, result in published:
            for p in job.parts.values():
                self.spool.remove_part(p)
            self.spool.remove_part(part)
            self.spool.remove_part(self.summary_path(job))
            self.committed(job, result)

    def publish_batch(self, batch: list[Job]) -> list[tuple[Job, str, str]]:
        """Step 2 for every job of the batch that can be published now: (job, part, result path)."""
        ready = [job for job in batch if not (job.failed or self.input_changed(job)) and self.joined(job)]
        if not self.write_summaries(ready):
            return []
        published: list[tuple[Job, str, str]] = []
        for job in ready:
            done = self.publish_one(job)
            if done is not None:
                published.append((job, *done))
        return published

    def joined(self, job: Job) -> bool:
        """Is the job's result one part? If its parts are not joined yet, the join goes on (queued again when done)."""
        if job.total != 1 and job.assembly.path is None:
            job.move(JobState.COMPLETE)
            self.assemble(job)
            return False
        return True

    def write_summaries(self, jobs: list[Job]) -> bool:
        """The jobs' summary parts, each written and fsync'd before any is linked; False (all of them
        queued again, the commit backing off) if that failed. None with spool.summaries off."""
        if not self.summaries:
            return True
        parts = [(self.summary_token(job),
                  render_summary(printable(job.claimed.job_name), printable(job.claimed.name), job.counts,
                                 self.summary_top))
                 for job in jobs]
        try:
            self.spool.write_parts(parts)
        except OSError as exc:
            # Out of space or similar: none of them is left; keep the parts and try the commit again later.
            for job in jobs:
                self.requeue(job)
            self.delay(str(exc))
            return False
        return True

    def synced(self, what: str, sync: Callable[[], None]) -> bool:
        """Run one directory fsync step of the commit; on failure log it, back off and say False."""
        try:
            sync()
        except OSError as exc:
            self.log.error("spool.sync_failed", step=what, error=exc.strerror or str(exc),
                           note="what depends on it is not trusted: published again later, never retired on it")
            self.delay(exc.strerror or str(exc))
            return False
        return True

    def retire(self, job: Job) -> None:
        """Step 3 for one job; a failure (no room for done/ to grow) leaves it to the next start."""
        try:
            self.spool.retire_input(job.claimed.job_name, self.keep_processed)
        except OSError as exc:
            self.log.error("spool.retire_failed", file=job.claimed.name, job=job.claimed.job_name,
                           error=exc.strerror or str(exc),
                           note="the result is published; the input stays in active/ until recovery at the next start")

    def publish_one(self, job: Job) -> tuple[str, str] | None:
        """Step 2 for one job, its summary written: link both in; (part, result path) or None if not now."""
        part = job.parts[0] if job.total == 1 else job.assembly.path or ""
        try:
            return part, self.spool.publish_result(part, job.claimed.job_name,
                                                   self.summary_path(job) if self.summaries else None,
                                                   job.format.suffix)
        except FileExistsError:
            self.spool.remove_part(self.summary_path(job))
            self.fail(job, "result_exists",
                      "a file we did not write holds the result or summary name; nothing was overwritten")
        except OSError as exc:
            # Out of space or similar: keep the parts and try the commit again later.
            self.spool.remove_part(self.summary_path(job))
            self.requeue(job)
            self.delay(str(exc))
        return None

    def summary_path(self, job: Job) -> str:
        return self.spool.part_path(self.summary_token(job))

    @staticmethod
    def summary_token(job: Job) -> str:
        return f"{job.seq}.summary"

    def input_changed(self, job: Job) -> bool:
        """Fail a job whose input was written to after its claim (a producer writing in place)."""
        changed = self.spool.changed(job.claimed)
        if changed:
            self.fail(job, "changed", changed)
        return changed is not None

    # -- joining parts ----------------------------------------------------------

    def assembly_path(self, job: Job) -> str:
        return self.spool.part_path(f"{job.seq}.assembled")

    def assemble(self, job: Job) -> None:
        """Append the next run of finished parts, in order, on the assembler thread.

        Called as parts arrive; ``collect`` takes the outcome back on the loop.
        """
        asm = job.assembly
        if job.failed or asm.running or asm.path is not None or job.total == 1:
            return
        run: list[str] = []
        while asm.appended + len(run) in job.parts:
            run.append(job.parts[asm.appended + len(run)])
        last = job.total is not None and asm.appended + len(run) == job.total
        if not run and not last:
            return
        asm.running = True
        self.jobs[job.seq] = job
        future = self.assembler.submit(self.spool.append_parts, self.assembly_path(job), run, asm.size, last)
        future.add_done_callback(functools.partial(self._report, seq=job.seq, count=len(run)))

    def _report(self, done: Future[int], seq: int, count: int) -> None:
        """On the assembler thread: hand the outcome to the loop."""
        error = done.exception()
        if error is None:
            self.appended.put(_Appended(seq, count, done.result()))
        else:
            code = (error.errno or 0) if isinstance(error, OSError) else 0
            self.appended.put(_Appended(seq, count, -1, str(error) or type(error).__name__, code))
        self.wake()

    def collect(self) -> None:
        while True:
            try:
                outcome = self.appended.get_nowait()
            except queue.Empty:
                return
            job = self.jobs.pop(outcome.seq)
            job.assembly.running = False
            if job.failed:
                self.spool.remove_part(self.assembly_path(job))
            elif outcome.error:
                self.append_failed(job, outcome)
            else:
                self.appended_ok(job, outcome)

    def append_failed(self, job: Job, outcome: _Appended) -> None:
        if outcome.code in (errno.ENOSPC, errno.EDQUOT):
            self.delay(outcome.error)  # out of space: the commit retry appends again
            if job.state is JobState.COMPLETE:
                self.queue(job)
            return
        # Not a full disk (a filesystem without copy_file_range, an I/O
        # error): retrying would loop forever.
        self.fail(job, "assembly_failed", f"joining the result's parts failed: {outcome.error}")

    def appended_ok(self, job: Job, outcome: _Appended) -> None:
        asm = job.assembly
        asm.appended += outcome.count
        asm.size = outcome.size
        if job.total is not None and asm.appended == job.total:
            asm.path = self.assembly_path(job)
            if job.state is JobState.COMPLETE:
                self.queue(job)
        else:
            self.assemble(job)

    def shutdown(self) -> None:
        # A join still copying is abandoned within one 64 MiB piece; its input
        # stays in active/ and is processed again at the next start.
        self.spool.abandon.set()
        self.assembler.shutdown(wait=True, cancel_futures=True)
