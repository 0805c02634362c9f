"""A worker process: chunks in through a pipe, part files out.

Each worker loads the pipeline once, then takes chunk descriptions (paths and
offsets, never data) from the supervisor, reads the byte range itself, runs
it through the pipeline and writes the result to a part file that it
fsyncs. Only a small "done" message with counts goes back.

A pipeline of non-blocking stages (``classify``, ``lists``, ``geoip``) runs
inline on the main thread: threads would only contend for the GIL. A pipeline
with a blocking stage (``rdns``, user stages by default) is cut into batches
that run on the thread pool, several chunks at once, so slow lookups overlap;
batches are joined back in order, so results keep input order.

Progress is a heartbeat: a shared double holding the monotonic time of the
last progress, and, while a pool thread is inside a batch, of that thread's
last step of a few lines: the oldest wins. A stage that hangs on one address
stops the heartbeat even while other threads keep working, and the
supervisor replaces the worker. The worker exits when
its pipe reports end-of-file, which is how it notices a dead supervisor.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections import Counter
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path

from ipspool.chunking import Chunk
from ipspool.clock import SYSTEM_CLOCK, Clock
from ipspool.config import Config, ConfigError
from ipspool.exitcodes import ExitCode
from ipspool.formats import Work, chunk_work
from ipspool.formats.work import INLINE_BATCH, PROGRESS_STEP, too_long_output
from ipspool.logs import (
    LogTarget,
    configure_logging,
    crash_fields,
    exit_internal_error,
    get_logger,
    install_crash_hooks,
    log_crash,
)
from ipspool.parts import ChunkFailed, PartWriter, part_path, read_chunk, write_part
from ipspool.pipeline import Pipeline, load_pipeline
from ipspool.protocol import Alert, Done, Failed, FromWorker, Heartbeat, Ready, Refresh, RunChunk, Started, Stop
from ipspool.spool import printable
from ipspool.stats import StatsClient

__all__ = ["Worker", "worker_main"]

_MAX_POOL_BATCH = 256       # lines per thread-pool task
_PUBLISH_EVERY = 0.25       # seconds between worker-table updates (one Manager round trip each)
_REFRESH_EVERY = 5.0        # seconds between stage refresh() calls


@dataclass
class _Running:
    """A chunk whose batches are on the thread pool."""

    chunk: Chunk
    writer: PartWriter
    alerts: list[list[Alert]]
    counts: Counter[str] = field(default_factory=Counter)
    remaining: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)
    started: bool = False  # "start" sent: a batch of it is running
    outputs: dict[int, bytes] = field(default_factory=dict)  # finished batches not yet written
    written: int = 0       # batches 0..written-1 are in the part file
    failure: ChunkFailed | None = None

    def write_ready(self) -> None:
        """Under ``lock``: append the finished batches that come next, in order."""
        while self.failure is None and self.written in self.outputs:
            try:
                self.writer.write(self.outputs.pop(self.written))
            except ChunkFailed as exc:
                self.failure = exc
                self.outputs.clear()
            self.written += 1


class Worker:
    def __init__(
        self,
        slot: int,
        conn: Connection,
        heartbeat: Heartbeat,
        config: Config,
        pipeline: Pipeline,
        stats: StatsClient | None,
        parts_dir: str,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.clock = clock
        self.slot = slot
        self.conn = conn
        self.heartbeat = heartbeat
        self.config = config
        self.pipeline = pipeline
        self.stats = stats
        self.parts_dir = parts_dir
        self.log = get_logger()
        self.send_lock = threading.Lock()
        self.running: dict[tuple[int, int], _Running] = {}
        self.running_lock = threading.Lock()
        self.idle = threading.Condition(self.running_lock)
        self.pool = (ThreadPoolExecutor(config.workers.threads, thread_name_prefix="stage")
                     if pipeline.blocking else None)
        self.chunks_done = 0
        self.lines_done = 0
        self.current = ""
        self._published = 0.0
        self._refreshed = clock.monotonic()
        self.log_reopen: tuple[LogTarget, threading.Event] | None = None
        # Pool thread id -> when it last made progress, while it runs a batch.
        self.progress: dict[int, float] = {}
        self.progress_lock = threading.Lock()

    # -- plumbing ---------------------------------------------------------

    def beat(self) -> None:
        """Report progress: now, unless a pool thread has been stuck since earlier.

        One thread stuck in a stage that never returns must stop the heartbeat
        even while the other threads keep finishing batches; otherwise a steady
        flow of other files would keep its chunk from ever being noticed.
        """
        now = self.clock.monotonic()
        with self.progress_lock:
            self.heartbeat.value = min(self.progress.values(), default=now)

    def send(self, message: FromWorker) -> None:
        try:
            with self.send_lock:
                self.conn.send(message)
        except OSError:
            # The supervisor is gone (its end of the pipe closed): nobody
            # wants our results, and a part written now would outlive the
            # next supervisor's recovery.
            self.orphaned("supervisor pipe closed while reporting")

    def orphaned(self, reason: str) -> None:
        self.log.warning("worker.orphaned", reason=reason)
        os._exit(0)

    def publish(self, force: bool = False) -> None:
        now = self.clock.monotonic()
        if self.stats is None or (not force and now - self._published < _PUBLISH_EVERY):
            return
        self._published = now
        self.stats.call("update_worker", os.getpid(), {
            "slot": self.slot, "pid": os.getpid(), "chunks_done": self.chunks_done,
            "lines_done": self.lines_done, "current": printable(self.current), "heartbeat": self.clock.time(),
            "state": "busy" if self.current or self.running else "idle",
            **self.pipeline.stats(),
        })

    def part_path(self, chunk: Chunk) -> str:
        return part_path(self.parts_dir, os.getpid(), chunk)

    def finish(self, chunk: Chunk, part: str, data: bytes, counts: Counter[str]) -> None:
        """A chunk whose whole result is one record (an over-long line)."""
        try:
            write_part(part, data, chunk.sync)
        except ChunkFailed as exc:
            self.send(Failed(chunk.key, exc.reason, exc.detail, exc.retry))
            return
        self.done(chunk, part, counts, [])

    def done(self, chunk: Chunk, part: str, counts: Counter[str], alerts: list[Alert]) -> None:
        self.chunks_done += 1
        self.lines_done += counts["lines"]
        self.send(Done(chunk.key, part, dict(counts), alerts[:self.pipeline.alert_cap], self.slot))

    def open_part(self, chunk: Chunk, part: str) -> PartWriter:
        return PartWriter(part, chunk.end - chunk.start, self.config.spool.max_output_ratio)

    # -- the loop ---------------------------------------------------------

    def run(self) -> None:
        self.beat()
        self.send(Ready(os.getpid()))
        self.log.info("worker.started", threads=self.config.workers.threads, inline=self.pool is None,
                      stages=list(self.pipeline.names))
        while True:
            self.maybe_reopen_log()
            if not self.conn.poll(0.5):
                self.beat()  # stays stale while a pool thread is stuck
                self.publish()
                self.maybe_refresh()
                continue
            try:
                message = self.conn.recv()
            except (EOFError, OSError):
                self.orphaned("supervisor pipe closed")  # the supervisor is gone
            match message:
                case RunChunk(chunk):
                    self.start(chunk)
                case Refresh():
                    self.pipeline.refresh()  # a reload that changed only data files
                case Stop():
                    self.drain()
                    return
            self.publish()
            self.maybe_refresh()

    def maybe_reopen_log(self) -> None:
        if self.log_reopen is not None and self.log_reopen[1].is_set():
            self.log_reopen[1].clear()
            self.log_reopen[0].reopen()

    def maybe_refresh(self) -> None:
        now = self.clock.monotonic()
        if now - self._refreshed >= _REFRESH_EVERY:
            self._refreshed = now
            self.pipeline.refresh()

    def start(self, chunk: Chunk) -> None:
        # "start" tells the supervisor this chunk is in progress, so it is
        # charged an attempt if we die. Chunks queued behind others in the
        # pool say so only when their first batch runs.
        if self.pool is None or chunk.too_long:
            self.send(Started(chunk.key))
        part = self.part_path(chunk)
        self.current = os.path.basename(chunk.path)
        try:
            if chunk.too_long:
                data, counts = too_long_output(chunk, self.config.spool.max_line_bytes, self.pipeline.names)
                self.finish(chunk, part, data, counts)
                return
            raw = read_chunk(chunk)
            work = chunk_work(chunk.format, raw, chunk.first_line, self.pipeline, chunk.index == 0)
            del raw
            if self.pool is None:
                self.run_inline(chunk, part, work)
            else:
                self.run_pooled(chunk, part, work)
        except ChunkFailed as exc:
            self.send(Failed(chunk.key, exc.reason, exc.detail, exc.retry))
        except OSError as exc:
            self.send(Failed(chunk.key, "unreadable", exc.strerror or str(exc), False))

    def run_inline(self, chunk: Chunk, part: str, work: Work) -> None:
        """Batch by batch on this thread, each batch's records written as it is done."""
        counts: Counter[str] = Counter()
        alerts: list[Alert] = []
        writer = self.open_part(chunk, part)
        if work.header:
            writer.write(work.header)
        for at in range(0, len(work), INLINE_BATCH):
            writer.write(work.render(at, at + INLINE_BATCH, counts, alerts))
            self.beat()
            self.publish()
        writer.close(chunk.sync)
        self.done(chunk, part, counts, alerts)
        self.current = ""

    def run_pooled(self, chunk: Chunk, part: str, work: Work) -> None:
        assert self.pool is not None
        threads = self.config.workers.threads
        # Small batches when there are few lines, so a short file of slow
        # lookups still spreads over every thread; large ones otherwise, so a
        # fast stage does not pay a pool hand-off per address. The batches
        # come in whole rounds of one per thread: 6,000 lines on 16 threads as
        # 24 batches of 256 take two rounds of 256 lines (8 threads idle in
        # the second); as 32 batches of 188, two rounds of 188 (issue 5).
        units = len(work)
        rounds = max(1, -(-units // (threads * _MAX_POOL_BATCH)))
        size = max(1, -(-units // (threads * rounds)))
        starts = list(range(0, units, size))
        writer = self.open_part(chunk, part)
        if work.header:
            writer.write(work.header)
        if not starts:
            writer.close(chunk.sync)
            self.done(chunk, part, Counter(lines=0), [])
            return
        state = _Running(chunk, writer, [[] for _ in starts], remaining=len(starts))
        with self.running_lock:
            self.running[chunk.key] = state
        for slot, at in enumerate(starts):
            future = self.pool.submit(self.batch, state, slot, work, at, min(at + size, units))
            future.add_done_callback(self._check)

    def batch(self, state: _Running, slot: int, work: Work, start: int, stop: int) -> None:
        counts: Counter[str] = Counter()
        me = threading.get_ident()
        outputs = []
        with state.lock:
            # Sent under the lock: no sibling batch of this chunk can run (and
            # crash the worker) before the supervisor knows it started.
            if not state.started:
                self.send(Started(state.chunk.key))
                state.started = True
            doomed = state.failure is not None
        try:
            if not doomed:
                def waiting() -> None:
                    with self.progress_lock:
                        self.progress[me] = self.clock.monotonic()

                waiting()
                # Batch stages (rdns) resolve every address of the batch at
                # once; the per-address calls below then find them waiting.
                # A wait held up by the rate limit still counts as progress.
                work.prefetch(start, stop, counts, waiting)
            for at in range(start, start if doomed else stop, PROGRESS_STEP):
                with self.progress_lock:
                    self.progress[me] = self.clock.monotonic()
                outputs.append(work.render(at, min(at + PROGRESS_STEP, stop), counts, state.alerts[slot]))
        finally:
            self.pipeline.release()
            with self.progress_lock:
                self.progress.pop(me, None)
        self.beat()
        with state.lock:
            state.outputs[slot] = b"".join(outputs)
            state.write_ready()
            state.counts.update(counts)
            state.remaining -= 1
            last = state.remaining == 0
        if last:
            self.batches_done(state)

    def batches_done(self, state: _Running) -> None:
        """The last batch of a chunk finished: close its part and report."""
        chunk = state.chunk
        try:
            if state.failure is not None:
                raise state.failure
            state.writer.close(chunk.sync)
        except ChunkFailed as exc:
            self.send(Failed(chunk.key, exc.reason, exc.detail, exc.retry))
        else:
            self.done(chunk, state.writer.path, state.counts, [a for batch in state.alerts for a in batch])
        with self.running_lock:
            del self.running[chunk.key]
            if not self.running:
                self.current = ""
                self.idle.notify_all()

    def _check(self, future: Future[None]) -> None:
        # process_lines catches per-address errors; anything reaching here is
        # a bug or a broken pipe, and the worker cannot promise results.
        exc = future.exception()
        if exc is not None:
            self.log.critical("worker.batch_crashed", error=f"{type(exc).__name__}: {exc}", **crash_fields(exc))
            exit_internal_error()

    def drain(self) -> None:
        with self.running_lock:
            while self.running:
                self.idle.wait(0.5)
                self.beat()
        if self.pool is not None:
            self.pool.shutdown(wait=True)
        self.publish(force=True)
        self.pipeline.close()
        self.log.info("worker.drained", chunks_done=self.chunks_done, lines_done=self.lines_done)


def worker_main(
    slot: int,
    conn: Connection,
    heartbeat: Heartbeat,
    config: Config,
    runtime_dir: str,
    authkey: bytes,
    parts_dir: str,
) -> None:
    """Entry point of a worker process (started through the forkserver)."""
    # Ctrl-C reaches the whole process group; only the supervisor decides.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    signal.signal(signal.SIGUSR2, signal.SIG_DFL)
    try:
        from setproctitle import setproctitle

        setproctitle(f"ipspool: worker {slot}")
    except ImportError:
        pass
    # Into log.file when one is set, like the supervisor: on stdout these
    # lines would be lost whenever stdout is not the journal (issue 4).
    target = configure_logging(config.log.level, config.log.format, role="worker", worker=slot,
                               target=LogTarget(config.log.file))
    # SIGUSR1 (forwarded by the supervisor after logrotate) asks for a reopen;
    # the handler only records it: the loop reopens outside any write.
    reopen = threading.Event()
    signal.signal(signal.SIGUSR1, lambda _signum, _frame: reopen.set())
    log = get_logger()
    try:
        pipeline = load_pipeline(config)
    except ConfigError as exc:
        log.error("worker.boot_failed", problems=list(exc.problems))
        sys.exit(ExitCode.WORKER_BOOT_ERROR)
    install_crash_hooks()  # a thread of this worker that dies ends it: the supervisor replaces it
    stats = StatsClient(Path(runtime_dir), authkey)
    worker = Worker(slot, conn, heartbeat, config, pipeline, stats, parts_dir)
    worker.log_reopen = (target, reopen)
    try:
        worker.run()
    except Exception as exc:  # noqa: BLE001 - a bug: one critical event, then INTERNAL_ERROR (the pool's threads
        log_crash("daemon.crashed", exc)  # would hold a normal exit), and the supervisor redoes its chunks
        exit_internal_error()
