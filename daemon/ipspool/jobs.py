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
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

from ipspool.chunking import MIN_SPLIT, Chunk, chunk_bytes_for
from ipspool.clock import Clock
from ipspool.compression import SNIFF_BYTES, CorruptInput, NoRoom, decompressed_name, sniff
from ipspool.config import Config
from ipspool.executor import Executor
from ipspool.expansion import Expansion
from ipspool.formats import Format, head_size, needs_head, select, split_chunks
from ipspool.intake import Intake
from ipspool.logs import get_logger
from ipspool.outage import DiskOutage
from ipspool.protocol import Alert, ChunkKey, Done, Failed, Lost
from ipspool.spool import LEASED, Claimed, InputRejected, Spool
from ipspool.states import JobState, advance

__all__ = ["MIN_SPLIT", "Assembly", "CommitPort", "Job", "JobBook"]

_MAX_EXPANDING = 2  # compressed inputs claimed and not yet decompressed, at most
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
    expansion: Expansion | None = None  # a compressed input: its plain copy, split instead of it

    @property
    def split_size(self) -> int:
        """Bytes of what is split: the input, or its decompressed copy."""
        return self.expansion.size if self.expansion is not None else self.claimed.size

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
                 commits: CommitPort, outage: DiskOutage, wake: Callable[[], None] | None = None) -> None:
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
        self.wake = wake  # wakes the loop from the decompression thread
        # One decompression at a time, off the loop (threads start on first use,
        # after the forkserver exists).
        self.expander = ThreadPoolExecutor(1, thread_name_prefix="expand")

    # -- opening ----------------------------------------------------------------

    def open_job(self, claimed: Claimed, intake: Intake) -> Job | None:
        chunk_bytes = self.chunk_bytes_for(claimed.size, len(intake))
        fd: int | None = None
        try:
            fd = self.open_input(claimed)
            # One read serves the compression sniff and, when select wants it, the head.
            wants_head = needs_head(self.config, claimed.name)
            head = os.pread(fd, head_size(self.config) if wants_head else SNIFF_BYTES, 0) if claimed.size else b""
            kind = sniff(head)
            fmt = Format()  # a compressed input's format is chosen once it is decompressed
            if kind is None:
                fmt = select(self.config, claimed.name, head if wants_head else b"", claimed.size)
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
        if kind is None and claimed.size - fmt.body_start <= chunk_bytes:
            os.close(fd)  # one chunk: the worker reads it, the splitter need not
            fd = None
        self.seq += 1
        job = Job(self.seq, claimed, None, fd, self.clock.monotonic(), format=fmt)
        if kind is not None:
            job.expansion = self.start_expansion(job, kind, len(intake))
        else:
            job.chunks = split_chunks(
                fmt, fd if fd is not None else -1, claimed.size, chunk_bytes, self.config.spool.max_line_bytes,
                job=self.seq, path=claimed.path, dev=claimed.dev, ino=claimed.ino,
            )
        self.jobs[job.seq] = job
        self.totals["files_claimed"] += 1
        self.log.info("file.claimed", file=claimed.name, job=claimed.job_name, bytes=claimed.size,
                      **({"compression": kind} if kind else {}))
        return job

    @staticmethod
    def open_input(claimed: Claimed) -> int:
        """The claimed file, opened for the sniff and the splitter; InputRejected if it cannot be."""
        try:
            # O_NONBLOCK: a producer's lease on the file must not stall the loop.
            return os.open(claimed.path, _OPEN_FLAGS)
        except BlockingIOError:
            raise InputRejected("leased", LEASED) from None
        except OSError as exc:
            raise InputRejected("unreadable", f"cannot open: {exc.strerror}") from None

    # -- compressed inputs ----------------------------------------------------------

    def start_expansion(self, job: Job, kind: str, waiting: int) -> Expansion:
        assert job.fd is not None
        expansion = Expansion(kind, job.fd, self.spool.part_path(f"{job.seq}.expanded"),
                              self.config.spool.max_decompressed_bytes, self.config.alerts.disk_low_bytes, waiting)
        job.fd = None  # the expansion owns it now
        expansion.start(self.expander, self.spool.abandon, self.wake, self.clock.monotonic())
        return expansion

    def expanded(self, job: Job) -> bool:
        """Is the job's plain copy whole and its splitter set up? (False: not yet, or the job failed.)"""
        expansion = job.expansion
        assert expansion is not None
        if expansion.size >= 0:
            return True  # whole, and split already (or being split)
        if expansion.running:
            return False  # the thread wakes the loop when it ends
        if expansion.future is None:  # waiting out a full disk
            if self.clock.monotonic() >= expansion.retry_at:
                expansion.start(self.expander, self.spool.abandon, self.wake, self.clock.monotonic())
            return False
        try:
            size = expansion.outcome()
            fd = os.open(expansion.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except (CorruptInput, OSError) as exc:
            self.expansion_failed(job, expansion, exc)
            return False
        expansion.close_source()
        st = os.fstat(fd)
        job.fd = fd
        try:
            head = os.pread(fd, head_size(self.config), 0)
            job.format = select(self.config, decompressed_name(job.claimed.name), head, size)
        except (InputRejected, OSError) as exc:
            reason, detail = ((exc.reason, exc.detail) if isinstance(exc, InputRejected)
                              else ("unreadable", f"decompressed copy: {exc.strerror or exc}"))
            self.fail_job(job, reason, detail, compression=expansion.kind)
            return False
        job.chunks = split_chunks(
            job.format, fd, size, self.chunk_bytes_for(size, expansion.waiting), self.config.spool.max_line_bytes,
            job=job.seq, path=expansion.path, dev=st.st_dev, ino=st.st_ino,
        )
        self.log.info("file.decompressed", file=job.claimed.name, job=job.claimed.job_name,
                      compression=expansion.kind, bytes=job.claimed.size, decompressed_bytes=size,
                      seconds=round(self.clock.monotonic() - expansion.started, 3))
        return True

    def expansion_failed(self, job: Job, expansion: Expansion, exc: CorruptInput | OSError) -> None:
        if isinstance(exc, CorruptInput):
            self.fail_job(job, exc.reason, exc.detail, compression=expansion.kind)
        elif isinstance(exc, NoRoom):
            # The disk's fault, not the file's: try again later, like a chunk.
            wait = self.outage.backoff("decompress", str(exc))
            expansion.retry_at = self.clock.monotonic() + wait
            self.log.debug("disk.retry", step="decompress", file=job.claimed.name, delay=round(wait, 3))
        elif not isinstance(exc, InterruptedError):  # abandoned by a stop: redone at the next start
            self.fail_job(job, "unreadable", f"decompressing: {exc.strerror or exc}", compression=expansion.kind)

    def drop_expansion(self, job: Job) -> None:
        """The plain copy is no longer needed (its job is published or failed)."""
        expansion = job.expansion
        if expansion is None or expansion.running:
            return  # a running copy is removed by its thread when the stop abandons it
        expansion.close_source()
        self.spool.remove_part(expansion.path)

    def shutdown(self) -> None:
        """At a stop (after ``Spool.abandon`` is set): a decompression ends within one piece."""
        self.expander.shutdown(wait=True, cancel_futures=True)
        for job in self.jobs.values():
            if job.expansion is not None:
                job.expansion.close_source()

    def chunk_bytes_for(self, size: int, waiting: int) -> int:
        """``chunking.chunk_bytes_for`` with this configuration."""
        return chunk_bytes_for(self.config, size, waiting)

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
            if job.expansion is not None and not job.failed and not self.expanded(job):
                continue
            if job.chunks is not None and not job.failed:
                more = self.split_next(job)
                if more is not None:
                    return more
        # Compressed inputs beyond a few wait in incoming/, not held open in active/.
        while self.expanding() < _MAX_EXPANDING and (claim := intake.claim_next()) is not None:
            claimed = intake.inspect(*claim)
            new = self.open_job(claimed, intake) if claimed is not None else None
            first = self.split_next(new) if new is not None and new.chunks is not None else None
            if first is not None:
                return first
        return None

    def expanding(self) -> int:
        return sum(job.expansion is not None and job.expansion.size < 0 for job in self.jobs.values())

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
        if chunk.end >= job.split_size:
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
            self.totals["chunk_retries"] += 1
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
        self.drop_expansion(job)
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
        self.drop_expansion(job)
        del self.jobs[job.seq]
        for index in range(job.total or 0):
            self.attempts.pop((job.seq, index), None)
