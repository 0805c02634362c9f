"""The job book: every claimed file from its claim to its commit.

A job is one claimed input. The book splits it into chunks lazily (the
splitter is a generator pulled only as fast as chunks are handed out, so a
1 GB file never sits in memory), decides the dispatch order (chunks given
back first, then more of the files already open, then new claims), keeps
the attempts of every chunk, and decides a file's fate from what the
executor reports:

- ``Done``: the part is kept; a complete job goes to the committer;
- ``Failed``: a reason of the file fails the job; a full disk delays the
  chunk without charging an attempt;
- ``Lost`` (its worker died): a chunk that had not started goes back to the
  front of the queue; one in progress is charged an attempt and retried
  alone on an idle worker, so the blame lands on the right chunk, until
  ``max_attempts`` makes it poison and its file goes to failed/.
"""

from __future__ import annotations

import os
from collections import Counter, deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from ipspool.chunking import Chunk
from ipspool.clock import Clock
from ipspool.config import Config
from ipspool.executor import Executor
from ipspool.formats import Format, head_size, needs_head, select, split_chunks
from ipspool.intake import Intake
from ipspool.logs import get_logger
from ipspool.outage import DiskOutage
from ipspool.protocol import Alert, ChunkKey, Done, Failed, Lost
from ipspool.spool import LEASED, Claimed, InputRejected, Spool
from ipspool.states import JobState, advance

__all__ = ["Assembly", "CommitPort", "Job", "JobBook"]

MIN_SPLIT = 16384  # a lone file smaller than this stays one chunk (see chunk_bytes_for)
_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


@dataclass
class Assembly:
    """The parts of a multi-chunk result joined, in order, into one file (by the committer)."""

    appended: int = 0        # parts 0..appended-1 are in the assembly
    size: int = 0            # its size after the last good append
    running: bool = False    # an append is on the assembler thread
    path: str | None = None  # set once every part is in and fsync'd


@dataclass
class Job:
    seq: int
    claimed: Claimed
    chunks: Iterator[Chunk | None] | None
    fd: int | None
    started: float
    state: JobState = JobState.SPLITTING
    total: int | None = None          # chunk count, once the splitter is done
    produced: int = 0
    outstanding: dict[int, Chunk] = field(default_factory=dict)  # handed out, not reported yet
    parts: dict[int, str] = field(default_factory=dict)
    counts: Counter[str] = field(default_factory=Counter)
    alerts_logged: int = 0
    assembly: Assembly = field(default_factory=Assembly)
    format: Format = field(default_factory=Format)  # how it is read and its result written

    @property
    def failed(self) -> bool:
        return self.state is JobState.FAILED

    @property
    def complete(self) -> bool:
        return self.total is not None and len(self.parts) == self.total

    def move(self, state: JobState) -> None:
        self.state = advance(self.state, state)

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
        self.chunks = None


class CommitPort(Protocol):
    """What the job book needs of the committer."""

    def queue(self, job: Job) -> None: ...
    def assemble(self, job: Job) -> None: ...
    def discard(self, job: Job) -> None: ...


class JobBook:
    def __init__(self, config: Config, spool: Spool, clock: Clock, totals: Counter[str],
                 commits: CommitPort, outage: DiskOutage) -> None:
        self.config = config
        self.spool = spool
        self.clock = clock
        self.totals = totals
        self.commits = commits
        self.outage = outage
        self.log = get_logger()
        self.jobs: dict[int, Job] = {}
        self.seq = 0
        self.requeued: deque[Chunk] = deque()   # lost before they started: first in line
        self.isolated: deque[Chunk] = deque()   # lost while running: retried alone
        self.delayed: list[tuple[float, Chunk]] = []  # waiting out a disk outage
        self.attempts: Counter[ChunkKey] = Counter()
        self.scanning = False  # a splitter paused inside a long scan: the loop should not wait

    # -- opening ----------------------------------------------------------------

    def open_job(self, claimed: Claimed, intake: Intake) -> Job | None:
        chunk_bytes = self.chunk_bytes_for(claimed.size, len(intake))
        fd: int | None = None
        wants_head = needs_head(self.config, claimed.name)
        try:
            if claimed.size > chunk_bytes or wants_head:
                fd = self.open_input(claimed)
            head = os.pread(fd, head_size(self.config), 0) if wants_head and fd is not None else b""
            fmt = select(self.config, claimed.name, head, claimed.size)
        except InputRejected as exc:
            if fd is not None:
                os.close(fd)
            intake.reject(claimed.name, claimed.job_name, exc)
            return None
        except OSError as exc:
            if fd is not None:
                os.close(fd)
            intake.reject(claimed.name, claimed.job_name, InputRejected("unreadable", f"read error: {exc.strerror}"))
            return None
        if fd is not None and claimed.size - fmt.body_start <= chunk_bytes:
            os.close(fd)  # one chunk: the worker reads it, the splitter need not
            fd = None
        self.seq += 1
        chunks = split_chunks(
            fmt, fd if fd is not None else -1, claimed.size, chunk_bytes, self.config.spool.max_line_bytes,
            job=self.seq, path=claimed.path, dev=claimed.dev, ino=claimed.ino,
        )
        job = Job(self.seq, claimed, chunks, fd, self.clock.monotonic(), format=fmt)
        self.jobs[job.seq] = job
        self.totals["files_claimed"] += 1
        self.log.info("file.claimed", file=claimed.name, job=claimed.job_name, bytes=claimed.size)
        return job

    @staticmethod
    def open_input(claimed: Claimed) -> int:
        """The claimed file, opened for the splitter; InputRejected if it cannot be."""
        try:
            # O_NONBLOCK: a producer's lease on the file must not stall the loop.
            return os.open(claimed.path, _OPEN_FLAGS)
        except BlockingIOError:
            raise InputRejected("leased", LEASED) from None
        except OSError as exc:
            raise InputRejected("unreadable", f"cannot open: {exc.strerror}") from None

    def chunk_bytes_for(self, size: int, waiting: int) -> int:
        """workers.chunk_bytes, or less so that a file arriving alone uses every worker.

        Files waiting behind it keep the other workers busy; without them, a
        file under chunk_bytes would be one chunk on one worker, and a slow
        stage (1 ms of CPU or a 10 ms lookup per address) would leave the
        other cores idle. Two chunks per worker even out a worker slowed by a
        noisy neighbour. Below MIN_SPLIT the extra part file and its assembly
        would cost more than they save.
        """
        limit = self.config.workers.chunk_bytes
        if waiting or size <= MIN_SPLIT:
            return limit
        return max(4096, min(limit, -(-size // (2 * self.config.process_count))))

    # -- dispatch -----------------------------------------------------------------

    def fill(self, executor: Executor, intake: Intake) -> None:
        """Hand chunks to the executor while it has room: retries alone first."""
        while self.isolated and executor.can_run_alone():
            retry = self.isolated.popleft()
            if self.live(retry):
                self.send(executor, retry, alone=True)
        while executor.free_slots() > 0:
            chunk = self.next_chunk(intake)
            if chunk is None:
                return
            self.send(executor, chunk)

    def send(self, executor: Executor, chunk: Chunk, alone: bool = False) -> None:
        self.jobs[chunk.job].outstanding[chunk.index] = chunk
        executor.submit(chunk, alone=alone)

    def next_chunk(self, intake: Intake) -> Chunk | None:
        while self.requeued:
            retry = self.requeued.popleft()
            if self.live(retry):
                return retry
        self.scanning = False
        for job in list(self.jobs.values()):
            if job.chunks is not None and not job.failed:
                more = self.split_next(job)
                if more is not None:
                    return more
        while (claim := intake.claim_next()) is not None:
            claimed = intake.inspect(*claim)
            new = self.open_job(claimed, intake) if claimed is not None else None
            first = self.split_next(new) if new is not None else None
            if first is not None:
                return first
        return None

    def live(self, chunk: Chunk) -> bool:
        job = self.jobs.get(chunk.job)
        return job is not None and not job.failed

    def split_next(self, job: Job) -> Chunk | None:
        assert job.chunks is not None
        try:
            chunk = next(job.chunks)
        except StopIteration:
            self.split_finished(job)
            return None
        except OSError as exc:
            self.fail_job(job, "unreadable", f"read error while splitting: {exc.strerror}")
            return None
        if chunk is None:  # in the middle of a long scan: other work first, more next turn
            self.scanning = True
            return None
        job.produced += 1
        if chunk.end >= job.claimed.size:
            # The last chunk: knowing it now lets the job commit as soon as
            # its parts are in, without another pull from the splitter.
            self.split_finished(job)
        return chunk

    def split_finished(self, job: Job) -> None:
        job.total = job.produced
        job.close()
        job.move(JobState.RUNNING)
        if job.complete:
            self.part_complete(job)

    def part_complete(self, job: Job) -> None:
        job.move(JobState.COMPLETE)
        self.commits.queue(job)

    # -- outcomes -------------------------------------------------------------------

    def on_done(self, event: Done) -> None:
        self.outage.ok()
        job, _ = self.report(event.key)
        if job is None or job.failed:
            self.spool.remove_part(event.part)
            return
        job.parts[event.key[1]] = event.part
        job.counts.update(event.counts)
        self.log.debug("chunk.done", file=job.claimed.name, chunk=event.key[1], worker=event.worker,
                       lines=event.counts.get("lines", 0))
        self.alert(job, event.alerts)
        if job.complete:
            self.part_complete(job)
        elif job.total != 1:
            self.commits.assemble(job)  # start joining the parts that are in order already

    def on_failed(self, event: Failed) -> None:
        job, chunk = self.report(event.key)
        if job is None or chunk is None or job.failed:
            return
        if event.retry:
            self.delay(chunk, event.reason, event.detail)
        else:
            self.fail_job(job, event.reason, event.detail)

    def on_lost(self, event: Lost) -> None:
        chunk = event.chunk
        job, _ = self.report(chunk.key)
        if job is None or job.failed:
            return
        if not event.started:
            self.requeued.appendleft(chunk)
            return
        self.attempts[chunk.key] += 1
        attempts = self.attempts[chunk.key]
        if attempts >= self.config.workers.max_attempts:
            self.fail_job(job, "poison", (
                f"chunk {chunk.index} (bytes {chunk.start}-{chunk.end}, lines from {chunk.first_line}) "
                f"was in progress when {attempts} workers died; last: {event.cause}"
            ), attempts=attempts)
        else:
            self.log.warning("chunk.retry", file=job.claimed.job_name, chunk=chunk.index,
                             attempt=attempts + 1, cause=event.cause)
            self.isolated.append(chunk)

    def report(self, key: ChunkKey) -> tuple[Job | None, Chunk | None]:
        """The job and chunk a report is about (None if gone); the chunk is no longer out."""
        job = self.jobs.get(key[0])
        if job is None:
            return None, None
        chunk = job.outstanding.pop(key[1], None)
        if job.failed and not job.outstanding:
            del self.jobs[job.seq]
        return job, chunk

    def alert(self, job: Job, alerts: list[Alert]) -> None:
        """Log ip.listed for matches in alerting lists, up to the per-file limit."""
        limit = self.config.alerts.listed_per_file
        for line, ip, lists in alerts:
            if job.alerts_logged >= limit:
                return
            job.alerts_logged += 1
            self.log.warning("ip.listed", ip=ip, lists=lists, file=job.claimed.name, line=line)

    def delay(self, chunk: Chunk, reason: str, detail: str) -> None:
        """Retry later without counting an attempt (a full disk is not the chunk's fault)."""
        wait = self.outage.backoff(reason, detail)
        self.delayed.append((self.clock.monotonic() + wait, chunk))
        self.log.debug("disk.retry", step="chunk", file=os.path.basename(chunk.path), chunk=chunk.index,
                       delay=round(wait, 3))

    def release_delayed(self, now: float) -> None:
        if not self.delayed:
            return
        due = [c for t, c in self.delayed if t <= now]
        self.delayed = [(t, c) for t, c in self.delayed if t > now]
        self.requeued.extend(due)

    # -- endings ----------------------------------------------------------------------

    def fail_job(self, job: Job, reason: str, detail: str, **extra: Any) -> None:
        job.move(JobState.FAILED)
        job.close()
        self.commits.discard(job)  # chunks still out are discarded as they come back
        for index in range(job.produced):
            self.attempts.pop((job.seq, index), None)
        name = job.claimed.name
        try:
            error_file = self.spool.fail(job.claimed.job_name, reason, detail, {"file": name, **extra})
        except OSError as exc:
            # The input stays in active/; the next start processes it again.
            error_file = f"(not written: {exc.strerror or exc})"
        self.totals["files_failed"] += 1
        self.log.error("file.failed", file=name, job=job.claimed.job_name, reason=reason, detail=detail,
                       error_file=error_file, **extra)
        if not job.outstanding:
            del self.jobs[job.seq]

    def finished(self, job: Job) -> None:
        """The job's result is published and its input retired."""
        job.move(JobState.DONE)
        del self.jobs[job.seq]
        for index in range(job.total or 0):
            self.attempts.pop((job.seq, index), None)
