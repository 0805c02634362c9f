"""The supervisor: one event loop that owns every decision.

Signal handlers only record the signal; the watchdog observer thread only
queues names. Everything else happens on this loop, one step at a time:

    select() on: signal wake-up, watcher wake-up, each worker's pipe and exit
                 sentinel, the Manager's exit sentinel
    -> handle what arrived (messages, deaths, names, signals)
    -> tick: heartbeats, respawns, retries, rescans, stats, notify
    -> fill: claim files and hand chunks to workers with spare capacity
    -> commit: publish finished results as one group (one fsync per directory)

Workers are started through a ``forkserver``: the fork happens in a clean,
single-threaded server process, never in this one (which runs the observer
thread). The supervisor knows which chunks each worker holds, so a dead
worker's chunks are dispatched again; a chunk that was in progress when
``max_attempts`` workers died is poison, and its file goes to failed/.
Retries run alone on an idle worker, so the blame lands on the right chunk.
"""

from __future__ import annotations

import errno
import multiprocessing
import os
import queue
import selectors
import signal
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.context import BaseContext
from multiprocessing.process import BaseProcess
from typing import Any

from ipspool.chunking import Chunk, split_file
from ipspool.config import Config, ConfigError, load_config
from ipspool.exitcodes import ExitCode
from ipspool.health import HealthChecks
from ipspool.logs import LogTarget, configure_logging, get_logger
from ipspool.metrics import Metrics, Snapshot
from ipspool.notify import Notifier, watchdog_interval
from ipspool.pipeline import load_pipeline
from ipspool.spool import Claimed, InputRejected, Spool, SpoolError, printable
from ipspool.stats import StatsClient, StatsManager, ensure_authkey, start_manager
from ipspool.watcher import OVERFLOW, IncomingWatcher
from ipspool.worker import worker_main

__all__ = ["Supervisor"]

Key = tuple[int, int]

_BOOT_FAILURE_LIMIT = 5     # workers dying before "ready" in a row: halt
_HEALTHY_AFTER = 30.0       # a worker alive this long resets the back-off
_MAX_BACKOFF = 30.0
_SETTLE = 1.0               # a rescan skips files modified this recently
_TICK = 0.25
_MIN_SPLIT = 16384          # a lone file smaller than this stays one chunk (see chunk_bytes_for)
_EXTEND_EVERY = 2.0         # while draining, look for progress this often...
_EXTEND_WINDOW = 10.0       # ...and keep systemd's stop timeout this far ahead when there was some


@dataclass
class WorkerHandle:
    slot: int
    process: BaseProcess
    conn: Connection
    heartbeat: Any
    born: float
    pid: int
    generation: int
    ready: bool = False
    retiring: bool = False
    exclusive: bool = False
    killed_for: str = ""
    inflight: dict[Key, Chunk] = field(default_factory=dict)
    started: set[Key] = field(default_factory=set)


@dataclass
class Job:
    """A claimed file, from claim to commit."""

    seq: int
    claimed: Claimed
    chunks: Iterator[Chunk] | None
    fd: int | None
    total: int | None = None          # chunk count, once the splitter is done
    produced: int = 0
    parts: dict[int, str] = field(default_factory=dict)
    counts: Counter[str] = field(default_factory=Counter)
    failed: bool = False
    started: float = field(default_factory=time.monotonic)
    assembled: str | None = None      # the parts joined into one fsync'd file
    assembling: bool = False          # an append is running on the assembler thread
    appended: int = 0                 # parts 0..appended-1 are in the assembly
    assembly_bytes: int = 0           # its size after the last good append
    alerts_logged: int = 0
    queued: bool = False              # on the commit queue (never twice)

    @property
    def complete(self) -> bool:
        return self.total is not None and len(self.parts) == self.total

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
        self.chunks = None


class Supervisor:
    def __init__(  # noqa: PLR0915 - every piece of the loop's state, declared in one place
        self,
        config: Config,
        config_path: str | None,
        *,
        spool_override: str | None = None,
        log_target: LogTarget | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.config_path = config_path
        self.spool_override = spool_override
        self.log_target = log_target or LogTarget(config.log.file)
        self.clock = clock
        self.log = get_logger()
        self.spool = Spool(config.spool_dir, config.results_dir)
        self.notifier = Notifier()
        self.selector = selectors.DefaultSelector()
        self.ctx: BaseContext = multiprocessing.get_context("forkserver")
        self.watcher = IncomingWatcher(config.spool_dir / "incoming")
        self.signals: deque[int] = deque()
        self.sig_r, self.sig_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        # workers
        self.workers: dict[int, WorkerHandle] = {}
        self.slots: dict[int, WorkerHandle | None] = {}
        self.respawn_at: dict[int, float] = {}
        self.deaths_in_a_row = 0
        self.boot_failures = 0
        self.slot_restarts: Counter[int] = Counter()  # replacements per slot, for `ipspool status`
        self.generation = 0
        # work
        self.jobs: dict[int, Job] = {}
        self.job_seq = 0
        # Names waiting in incoming/: those the watch reported (fresh) and
        # those scans found (backlog). Claims alternate between the two, so a
        # file dropped into an idle-looking spool is not stuck behind a
        # 100,000-file backlog found at start-up.
        self.backlog: deque[tuple[str, float]] = deque()
        self.fresh: deque[tuple[str, float]] = deque()
        self.prefer_fresh = True
        self.unclaimable: dict[str, float] = {}  # names whose rename failed, with their mtime
        self.waiting: set[str] = set()
        self.recovered: deque[str] = deque()
        self.requeued: deque[Chunk] = deque()
        self.isolated: deque[Chunk] = deque()
        self.delayed: list[tuple[float, Chunk]] = []
        self.attempts: Counter[Key] = Counter()
        self.to_commit: list[Job] = []
        # Joining the parts of a large file copies gigabytes: a helper thread
        # does that I/O so the loop (and the systemd watchdog) keeps turning.
        self.assembler = ThreadPoolExecutor(1, thread_name_prefix="assemble")
        self.assembled: queue.SimpleQueue[tuple[int, int, int, str, int]] = queue.SimpleQueue()
        self.disk_full_since: float | None = None
        # state
        self.totals: Counter[str] = Counter()
        self.started_at = time.time()
        self.ready_sent = False
        self.reload_pending = False
        self.stopping = False
        self.stop_deadline = 0.0
        self.exit_code = ExitCode.OK
        self.finished = False
        self.last: dict[str, float] = {}  # when each periodic task last ran
        self.commit_retry_at = 0.0
        self.dirty = False  # totals changed since the last publish
        self.manager: StatsManager | None = None
        self.manager_watch: Connection | None = None
        self.manager_restart_at = 0.0
        self.stats: StatsClient | None = None
        self.authkey = b""
        self.watchdog_every = watchdog_interval()
        self.rate_window: deque[tuple[float, int]] = deque(maxlen=20)
        self.health = HealthChecks(config.alerts, config.results_dir)
        self.metrics = Metrics(config.metrics.textfile) if config.metrics.textfile else None
        self.metrics_failing = False

    # ==================================================================
    # start-up and shutdown
    # ==================================================================

    def run(self) -> int:
        try:
            self.start()
        except SpoolError as exc:
            self.log.error("daemon.spool_error", error=str(exc))
            return ExitCode.SPOOL_ERROR
        except ConfigError as exc:
            self.log.error("config.invalid", source=exc.source, problems=list(exc.problems))
            return ExitCode.CONFIG_ERROR
        try:
            while not self.finished:
                self.turn()
        finally:
            self.shutdown()
        return int(self.exit_code)

    def start(self) -> None:
        config = self.config
        self.set_title(f"ipspool: supervisor {config.spool_dir}")
        self.install_signals()
        load_pipeline(config).close()  # a stage that cannot load stops us here, clearly
        self.spool.create(self.producer_gid())
        self.spool.open()
        runtime = config.runtime_dir
        runtime.mkdir(parents=True, exist_ok=True, mode=0o750)
        self.authkey = ensure_authkey(runtime)
        self.recover()
        self.ctx.set_forkserver_preload(["ipspool.forkserver"])
        self.start_manager()
        for slot in range(config.process_count):
            self.spawn(slot)
        # Threads start only now, after the forkserver exists: no fork ever
        # happens in a process that runs the observer.
        self.watcher.start()
        self.selector.register(self.watcher.wake_r, selectors.EVENT_READ, self.on_watcher)
        self.selector.register(self.sig_r, selectors.EVENT_READ, self.on_signal_wakeup)
        self.rescan()
        self.log.info(
            "daemon.started", spool=str(config.spool_dir), results=str(config.results_dir),
            processes=config.process_count, threads=config.workers.threads,
            stages=list(config.pipeline.stages), config=self.config_path or "<defaults>",
        )

    def producer_gid(self) -> int | None:
        name = self.config.spool.producer_group
        if not name:
            return None
        import grp

        try:
            return grp.getgrnam(name).gr_gid
        except KeyError:
            raise ConfigError(self.config_path or "<config>", (f"spool.producer_group: no group {name!r}",)) from None

    def recover(self) -> None:
        redo, finished, failed = self.spool.recover(self.config.spool.keep_processed)
        for job_name in finished:
            self.log.info("file.recovered", file=job_name, action="retired", note="result was published before a stop")
        for job_name in failed:
            self.log.info("file.recovered", file=job_name, action="failed", note="failure was recorded before a stop")
        for job_name in redo:
            self.log.info("file.recovered", file=job_name, action="reprocess", note="interrupted; processing again")
        self.recovered.extend(redo)

    def shutdown(self) -> None:
        self.watcher.stop()
        # A join still copying is abandoned within one 64 MiB piece; its input
        # stays in active/ and is processed again at the next start.
        self.spool.abandon.set()
        self.assembler.shutdown(wait=True, cancel_futures=True)
        for worker in list(self.workers.values()):
            if worker.process.is_alive():
                worker.process.kill()
            worker.process.join(5)
        for job in self.jobs.values():
            job.close()
        if self.manager is not None:
            self.manager_watch.close() if self.manager_watch else None
            self.manager.shutdown()
        if self.metrics:
            self.write_metrics()
        self.notifier.close()
        self.spool.close()
        self.log.info("daemon.stopped", exit_code=int(self.exit_code), **self.summary())

    # ==================================================================
    # the loop
    # ==================================================================

    def turn(self) -> None:
        for key, _ in self.selector.select(self.timeout()):
            key.data(key.fileobj)
        self.collect_assembled()
        self.handle_signals()
        self.tick()
        self.fill()
        self.commit()
        self.check_stopped()

    def timeout(self) -> float:
        if self.signals or (self.to_commit and self.clock() >= self.commit_retry_at):
            return 0
        return _TICK

    def every(self, name: str, seconds: float) -> bool:
        """True (and restart the period) when ``seconds`` passed since the last time."""
        now = self.clock()
        if now - self.last.get(name, float("-inf")) >= seconds:
            self.last[name] = now
            return True
        return False

    def tick(self) -> None:
        now = self.clock()
        self.check_heartbeats(now)
        self.respawn_due(now)
        self.release_delayed(now)
        if self.manager_restart_at and now >= self.manager_restart_at:
            self.start_manager()
        if not self.stopping and self.every("rescan", self.config.spool.rescan_interval):
            self.rescan()
        if (self.dirty and self.every("publish_soon", 0.2)) or self.every("publish", 1.0):
            self.publish()
        if self.every("health", 5.0):
            self.health.alerts = self.config.alerts
            self.health.backlog(now, len(self.waiting), self.backlog_age())
            self.health.disk(now)
        if self.metrics and self.every("metrics", self.config.metrics.interval):
            self.write_metrics()
        if self.every("status", 2.0):
            self.notifier.status(self.status_line())
        if self.watchdog_every and self.healthy(now) and self.every("watchdog", self.watchdog_every):
            self.notifier.watchdog()

    # ==================================================================
    # signals
    # ==================================================================

    def install_signals(self) -> None:
        def record(signum: int, _frame: object) -> None:
            """NO LOGGING, just queue the signal (the loop handles it)."""
            self.signals.append(signum)

        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2):
            signal.signal(signum, record)
        signal.set_wakeup_fd(self.sig_w, warn_on_full_buffer=False)

    def on_signal_wakeup(self, _fd: object) -> None:
        try:
            while os.read(self.sig_r, 512):
                pass
        except BlockingIOError:
            pass

    def handle_signals(self) -> None:
        while self.signals:
            signum = self.signals.popleft()
            if signum in (signal.SIGTERM, signal.SIGINT):
                self.handle_term(signal.Signals(signum).name)
            elif signum == signal.SIGHUP:
                self.handle_hup()
            elif signum == signal.SIGUSR1:
                self.log_target.reopen()
                for worker in self.workers.values():
                    try:
                        os.kill(worker.pid, signal.SIGUSR1)  # each worker reopens its own
                    except ProcessLookupError:
                        pass
                self.log.info("log.reopened", file=self.log_target.path or "<stdout>")
            elif signum == signal.SIGUSR2:
                self.watcher.simulate_overflow()

    def handle_term(self, name: str) -> None:
        if self.stopping:
            self.log.warning("daemon.stop_now", signal=name, inflight=self.inflight_count())
            self.kill_workers("second stop signal")
            self.finished = True
            return
        self.stopping = True
        self.stop_deadline = self.clock() + self.config.workers.graceful_timeout
        self.notifier.stopping("stopping: finishing in-flight chunks")
        self.log.info("daemon.stopping", signal=name, inflight=self.inflight_count(),
                      graceful_timeout=self.config.workers.graceful_timeout)

    def reload_candidate(self) -> tuple[Config | None, LogTarget, list[str]]:
        """The new configuration and its log target, or None and the problems."""
        try:
            new = load_config(self.config_path, spool=self.spool_override)
            load_pipeline(new, self.config_path or "<config>").close()
        except ConfigError as exc:
            return None, self.log_target, list(exc.problems)
        problems = [
            f"{what} cannot change on reload; restart the daemon to move it"
            for what in ("spool_dir", "results_dir", "runtime_dir")
            if getattr(new, what) != getattr(self.config, what)
        ]
        target = self.log_target
        if not problems and new.log.file != self.config.log.file:
            try:
                target = LogTarget(new.log.file)
            except OSError as exc:
                problems.append(f"log.file: cannot open {new.log.file!r}: {exc.strerror or exc}")
        return (None if problems else new), target, problems

    def handle_hup(self) -> None:
        if self.stopping:
            self.log.warning("config.reload_failed", config=self.config_path or "<defaults>",
                             problems=["the daemon is stopping; reload ignored"])
            self.publish_reload(ok=False, problems=["the daemon is stopping"])
            return
        new, target, problems = self.reload_candidate()
        if new is None:
            self.log.error("config.reload_failed", config=self.config_path or "<defaults>", problems=problems)
            self.publish_reload(ok=False, problems=problems)
            return
        self.notifier.reloading()
        if new == self.config:
            # Same settings: only data files (lists, databases) may have
            # changed. Workers re-read them in place, each swapping in the new
            # tables at once, so matching never pauses and no worker restarts.
            for worker in self.workers.values():
                if not worker.retiring:
                    self.send_message(worker, ("refresh",))
            self.log.info("config.reloaded", generation=self.generation, mode="refresh",
                          workers=[w.pid for w in self.workers.values() if not w.retiring])
            self.notifier.ready(self.status_line())
            self.publish_reload(ok=True, problems=[])
            return
        old, self.config = self.config, new
        if target is not self.log_target:
            self.log_target.close()
        self.log_target = configure_logging(new.log.level, new.log.format, role="supervisor", target=target)
        if new.metrics.textfile != old.metrics.textfile:
            if self.metrics:
                self.write_metrics(up=False)  # the old file must not say "up" forever
            self.metrics = Metrics(new.metrics.textfile) if new.metrics.textfile else None
        self.health.alerts = new.alerts
        self.generation += 1
        for worker in list(self.workers.values()):
            self.retire(worker)
        self.slots = {}
        for slot in range(new.process_count):
            self.spawn(slot)
        self.reload_pending = True
        self.log.info("config.reloading", generation=self.generation, processes=new.process_count,
                      stages=list(new.pipeline.stages))

    # ==================================================================
    # workers
    # ==================================================================

    def spawn(self, slot: int) -> None:
        parent, child = self.ctx.Pipe(duplex=True)
        heartbeat = self.ctx.RawValue("d", self.clock())
        process = self.ctx.Process(  # type: ignore[attr-defined]
            target=worker_main,
            name=f"ipspool-worker-{slot}",
            args=(slot, child, heartbeat, self.config, str(self.config.runtime_dir), self.authkey,
                  str(self.spool.parts_dir)),
        )
        process.start()
        child.close()  # only the worker may hold its end: EOF then means "supervisor gone"
        pid = process.pid
        assert pid is not None
        worker = WorkerHandle(slot, process, parent, heartbeat, self.clock(), pid, self.generation)
        self.workers[pid] = worker
        self.slots[slot] = worker
        self.selector.register(parent, selectors.EVENT_READ, lambda _o, w=worker: self.on_worker_message(w))
        self.selector.register(process.sentinel, selectors.EVENT_READ, lambda _o, w=worker: self.on_worker_exit(w))
        self.log.info("worker.spawned", worker=slot, worker_pid=pid, generation=self.generation)

    def retire(self, worker: WorkerHandle) -> None:
        """Let a worker finish what it holds, then exit (reload, stop)."""
        if worker.retiring:
            return
        worker.retiring = True
        try:
            worker.conn.send(("stop",))
        except OSError:
            pass  # already dead: its sentinel will tell

    def kill_workers(self, reason: str) -> None:
        for worker in self.workers.values():
            worker.killed_for = worker.killed_for or reason
            if worker.process.is_alive():
                worker.process.kill()

    def on_worker_message(self, worker: WorkerHandle) -> None:
        while True:
            # Only the pipe's own errors mean the worker is gone; an error
            # while handling a message must not cut off a live worker.
            try:
                if worker.conn.closed or not worker.conn.poll():
                    return
                message = worker.conn.recv()
            except (EOFError, OSError):
                try:
                    self.selector.unregister(worker.conn)  # the sentinel reports the death
                except (KeyError, ValueError):
                    pass
                return
            self.handle_message(worker, message)

    def handle_message(self, worker: WorkerHandle, message: tuple[Any, ...]) -> None:
        kind = message[0]
        if kind == "start":
            worker.started.add(message[1])
        elif kind == "done":
            _, key, part, counts, alerts = message
            self.chunk_done(worker, key, part, counts)
            self.alert(key, alerts)
        elif kind == "failed":
            _, key, reason, detail, retry = message
            self.chunk_failed(worker, key, reason, detail, retry)
        elif kind == "ready":
            worker.ready = True
            self.boot_failures = 0
            self.check_ready()

    def check_ready(self) -> None:
        current = [w for w in self.slots.values() if w is not None]
        if not current or not all(w.ready for w in current):
            return
        if not self.ready_sent:
            self.ready_sent = True
            self.publish()  # `ipspool status` says "running" as soon as systemd does
            self.notifier.ready(self.status_line())
            self.log.info("daemon.ready", workers=[w.pid for w in current], backlog=len(self.waiting))
        elif self.reload_pending:
            self.reload_pending = False
            self.notifier.ready(self.status_line())
            self.log.info("config.reloaded", generation=self.generation, mode="replace",
                          workers=[w.pid for w in current])
            self.publish_reload(ok=True, problems=[])

    def on_worker_exit(self, worker: WorkerHandle) -> None:
        self.on_worker_message(worker)  # its last "done" messages may still be in the pipe
        self.selector.unregister(worker.process.sentinel)
        try:
            self.selector.unregister(worker.conn)
        except (KeyError, ValueError):
            pass
        worker.process.join(1)
        worker.conn.close()
        code = worker.process.exitcode
        if code == 255:
            # 255 is also what multiprocessing reports when the forkserver
            # died and took the real status with it: make sure it is dead.
            try:
                os.kill(worker.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        del self.workers[worker.pid]
        if self.slots.get(worker.slot) is worker:
            self.slots[worker.slot] = None
        if self.stats:
            self.stats.call("remove_worker", worker.pid)
        if worker.retiring and code == 0 and not worker.inflight:
            self.log.info("worker.stopped", worker=worker.slot, worker_pid=worker.pid)
            return
        cause = worker.killed_for or (f"signal {-code}" if code is not None and code < 0 else f"exit code {code}")
        self.log.error("worker.died", worker=worker.slot, worker_pid=worker.pid, exit_code=code, cause=cause,
                       chunks_in_flight=len(worker.inflight), uptime=round(self.clock() - worker.born, 3))
        if not self.stopping:
            self.totals["worker_restarts"] += 1
            self.slot_restarts[worker.slot] += 1
        self.reclaim(worker, cause)
        if not worker.ready:
            self.boot_failures += 1
            if code == ExitCode.WORKER_BOOT_ERROR or self.boot_failures >= _BOOT_FAILURE_LIMIT:
                self.halt(f"workers cannot start ({self.boot_failures} in a row, last: {cause})")
                return
        if self.stopping or worker.retiring:
            return
        if self.clock() - worker.born > _HEALTHY_AFTER:
            self.deaths_in_a_row = 0
        self.deaths_in_a_row += 1
        delay = min(_MAX_BACKOFF, 0.1 * 2 ** (self.deaths_in_a_row - 1)) if self.deaths_in_a_row > 1 else 0.0
        self.respawn_at[worker.slot] = self.clock() + delay
        if delay:
            self.log.warning("worker.backoff", worker=worker.slot, delay=delay, deaths_in_a_row=self.deaths_in_a_row)

    def reclaim(self, worker: WorkerHandle, cause: str) -> None:
        """Give a dead worker's chunks back: retried alone, or poison."""
        limit = self.config.workers.max_attempts
        for key, chunk in worker.inflight.items():
            job = self.jobs.get(chunk.job)
            if job is None or job.failed:
                continue
            if key not in worker.started:
                self.requeued.appendleft(chunk)
                continue
            self.attempts[key] += 1
            if self.attempts[key] >= limit:
                self.fail_job(job, "poison", (
                    f"chunk {chunk.index} (bytes {chunk.start}-{chunk.end}, lines from {chunk.first_line}) "
                    f"was in progress when {self.attempts[key]} workers died; last: {cause}"
                ), attempts=self.attempts[key])
            else:
                self.log.warning("chunk.retry", file=job.claimed.job_name, chunk=chunk.index,
                                 attempt=self.attempts[key] + 1, cause=cause)
                self.isolated.append(chunk)
        worker.inflight.clear()

    def respawn_due(self, now: float) -> None:
        if self.stopping or self.finished:
            return
        for slot in range(self.config.process_count):
            if self.slots.get(slot) is None and now >= self.respawn_at.get(slot, 0.0):
                self.spawn(slot)
                self.log.info("worker.replaced", worker=slot)

    def check_heartbeats(self, now: float) -> None:
        limit = self.config.workers.heartbeat_timeout
        for worker in self.workers.values():
            if worker.killed_for:
                continue
            age = now - worker.heartbeat.value
            if age > limit and (worker.inflight or not worker.ready):
                worker.killed_for = f"no progress for {age:.1f}s (heartbeat_timeout={limit})"
                self.log.error("worker.timeout", worker=worker.slot, worker_pid=worker.pid, age=round(age, 1),
                               chunks_in_flight=len(worker.inflight))
                worker.process.kill()

    def healthy(self, now: float) -> bool:
        limit = self.config.workers.heartbeat_timeout
        live = [w for w in self.slots.values() if w is not None]
        return bool(live) and all(now - w.heartbeat.value <= limit or not w.inflight for w in live)

    def halt(self, reason: str) -> None:
        self.log.critical("daemon.halt", reason=reason, exit_code=int(ExitCode.WORKER_BOOT_ERROR))
        self.exit_code = ExitCode.WORKER_BOOT_ERROR
        self.kill_workers("halt")
        self.finished = True

    # ==================================================================
    # the Manager
    # ==================================================================

    def start_manager(self) -> None:
        self.manager_restart_at = 0.0
        try:
            self.manager, self.manager_watch = start_manager(
                self.ctx, self.config.runtime_dir, self.authkey, self.config.log.level,
                f"ipspool: stats {self.config.spool_dir}", log_file=self.config.log.file,
            )
        except (OSError, EOFError) as exc:
            self.log.error("stats.start_failed", error=str(exc))
            self.manager_restart_at = self.clock() + 5.0
            return
        process = self.manager._process  # type: ignore[attr-defined]
        self.selector.register(process.sentinel, selectors.EVENT_READ, self.on_manager_exit)
        self.stats = StatsClient(self.config.runtime_dir, self.authkey)
        self.publish()
        self.log.info("stats.started", socket=self.stats.address, stats_pid=process.pid)

    def on_manager_exit(self, sentinel: object) -> None:
        self.selector.unregister(sentinel)  # type: ignore[arg-type]
        if self.manager_watch is not None:
            self.manager_watch.close()
        self.manager = None
        self.stats = None
        self.log.error("stats.died", note="processing goes on; counters are re-seeded when it is back")
        self.manager_restart_at = self.clock() + 1.0

    # ==================================================================
    # work: names -> claims -> chunks -> workers
    # ==================================================================

    def on_watcher(self, _sock: object) -> None:
        for name in self.watcher.drain():
            if name == OVERFLOW:
                self.log.warning("watch.overflow", note="inotify dropped events; rescanning incoming/")
                self.rescan()
                # That scan skipped files younger than _SETTLE, which are the
                # very ones whose events were lost: look again once they settled.
                self.last["rescan"] = self.clock() - self.config.spool.rescan_interval + _SETTLE
            else:
                self.offer(name, time.time(), fresh=True)

    def offer(self, name: str, seen: float, fresh: bool = False) -> None:
        if name not in self.waiting:
            self.waiting.add(name)
            (self.fresh if fresh else self.backlog).append((name, seen))

    def rescan(self) -> None:
        cutoff = time.time() - _SETTLE
        found = 0
        present: set[str] = set()
        try:
            for name, mtime in self.spool.scan_incoming():
                present.add(name)
                if self.unclaimable.get(name) == mtime:
                    continue
                if mtime <= cutoff and name not in self.waiting:
                    self.offer(name, mtime)
                    found += 1
        except OSError as exc:
            self.log.error("spool.scan_failed", error=str(exc))
            return
        self.unclaimable = {n: m for n, m in self.unclaimable.items() if n in present}
        if found:
            self.log.debug("spool.rescan", found=found, backlog=len(self.waiting))

    def capacity(self, worker: WorkerHandle) -> bool:
        return (worker.ready and not worker.retiring and not worker.killed_for and not worker.exclusive
                and len(worker.inflight) < self.config.inflight_per_worker)

    def fill(self) -> None:
        if self.stopping or self.finished:
            return
        # A retry runs alone on an idle worker.
        while self.isolated:
            idle = [w for w in self.slots.values() if w and self.capacity(w) and not w.inflight]
            if not idle:
                break
            retry = self.isolated.popleft()
            if self.live(retry):
                idle[0].exclusive = True
                self.send(idle[0], retry)
        while True:
            candidates = [w for w in self.slots.values() if w and self.capacity(w)]
            if not candidates:
                return
            chunk = self.next_chunk()
            if chunk is None:
                return
            self.send(min(candidates, key=lambda w: len(w.inflight)), chunk)

    def next_chunk(self) -> Chunk | None:
        while self.requeued:
            retry = self.requeued.popleft()
            if self.live(retry):
                return retry
        for job in list(self.jobs.values()):
            if job.chunks is not None and not job.failed:
                more = self.split_next(job)
                if more is not None:
                    return more
        while (new_job := self.claim_next()) is not None:
            first = self.split_next(new_job)
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
            job.total = job.produced
            job.close()
            if job.complete:
                self.queue_commit(job)
            return None
        except OSError as exc:
            self.fail_job(job, "unreadable", f"read error while splitting: {exc.strerror}")
            return None
        job.produced += 1
        if chunk.end >= job.claimed.size:
            # The last chunk: knowing it now lets the job commit as soon as
            # its parts are in, without another pull from the splitter.
            job.total = job.produced
            job.close()
        return chunk

    def claim_next(self) -> Job | None:
        while self.recovered or self.backlog or self.fresh:
            if self.recovered:
                name = job_name = self.recovered.popleft()
            else:
                use_fresh = bool(self.fresh) and (self.prefer_fresh or not self.backlog)
                self.prefer_fresh = not self.prefer_fresh
                name, _ = (self.fresh if use_fresh else self.backlog).popleft()
                self.waiting.discard(name)
                try:
                    claimed_name = self.spool.claim(name)
                except OSError as exc:
                    # e.g. a producer's directory without write permission for
                    # us (moving it needs that): leave it, and skip it until
                    # it changes, instead of crashing on every rescan. Other
                    # errors (a full disk, EIO) are retried by the next rescan.
                    self.log.warning("spool.claim_failed", file=name, error=exc.strerror or str(exc))
                    if exc.errno in (errno.EACCES, errno.EPERM):
                        self.unclaimable[name] = self.spool.mtime_in_incoming(name)
                    continue
                if claimed_name is None:
                    continue  # already gone: a duplicate event
                job_name = claimed_name
            job = self.open_job(name, job_name)
            if job is not None:
                return job
        return None

    def open_job(self, name: str, job_name: str) -> Job | None:
        config = self.config
        fd: int | None = None
        try:
            claimed = self.spool.inspect(name, job_name, config.spool.max_file_bytes)
            chunk_bytes = self.chunk_bytes_for(claimed.size)
            if claimed.size > chunk_bytes:
                try:
                    fd = os.open(claimed.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
                except OSError as exc:
                    raise InputRejected("unreadable", f"cannot open: {exc.strerror}") from None
        except InputRejected as exc:
            self.log.warning("file.rejected", file=name, job=job_name, reason=exc.reason, detail=exc.detail)
            try:
                self.spool.fail(job_name, exc.reason, exc.detail, {"file": name})
            except OSError as error:
                self.log.error("spool.fail_failed", file=name, job=job_name, error=str(error),
                               note="left in active/; retried at the next start")
            self.totals["files_failed"] += 1
            return None
        self.job_seq += 1
        chunks = split_file(
            fd if fd is not None else -1, claimed.size, chunk_bytes, config.spool.max_line_bytes,
            job=self.job_seq, path=claimed.path, dev=claimed.dev, ino=claimed.ino,
        )
        job = Job(self.job_seq, claimed, chunks, fd)
        self.jobs[job.seq] = job
        self.totals["files_claimed"] += 1
        self.log.info("file.claimed", file=name, job=job_name, bytes=claimed.size)
        return job

    def chunk_bytes_for(self, size: int) -> int:
        """workers.chunk_bytes, or less so that a file arriving alone uses every worker.

        Files waiting behind it keep the other workers busy; without them, a
        file under chunk_bytes would be one chunk on one worker, and a slow
        stage (1 ms of CPU or a 10 ms lookup per address) would leave the
        other cores idle (issue 5). Two chunks per worker even out a worker
        slowed by a noisy neighbour. Below _MIN_SPLIT the extra part file and
        its assembly would cost more than they save.
        """
        limit = self.config.workers.chunk_bytes
        if self.waiting or size <= _MIN_SPLIT:
            return limit
        return max(4096, min(limit, -(-size // (2 * self.config.process_count))))

    def send(self, worker: WorkerHandle, chunk: Chunk) -> None:
        worker.inflight[chunk.key] = chunk
        self.send_message(worker, ("chunk", chunk))

    @staticmethod
    def send_message(worker: WorkerHandle, message: tuple[Any, ...]) -> None:
        try:
            worker.conn.send(message)
        except OSError:
            pass  # the worker is dead; its sentinel will hand its chunks back

    def inflight_count(self) -> int:
        return sum(len(w.inflight) for w in self.workers.values())

    # ==================================================================
    # results
    # ==================================================================

    def chunk_done(self, worker: WorkerHandle, key: Key, part: str, counts: dict[str, int]) -> None:
        worker.inflight.pop(key, None)
        worker.started.discard(key)
        if not worker.inflight:
            worker.exclusive = False
        self.deaths_in_a_row = 0
        self.disk_ok()
        job = self.jobs.get(key[0])
        if job is None or job.failed:
            self.spool.remove_part(part)
            return
        job.parts[key[1]] = part
        job.counts.update(counts)
        self.log.debug("chunk.done", file=job.claimed.name, chunk=key[1], worker=worker.slot,
                       lines=counts.get("lines", 0))
        if job.complete:
            self.queue_commit(job)
        elif job.total != 1:
            self.assemble(job)  # start joining the parts that are in order already

    def alert(self, key: Key, alerts: list[tuple[int, str, list[str]]]) -> None:
        """Log ip.listed for matches in alerting lists, up to the per-file limit."""
        job = self.jobs.get(key[0])
        if job is None or job.failed:
            return
        limit = self.config.alerts.listed_per_file
        for line, ip, lists in alerts:
            if job.alerts_logged >= limit:
                return
            job.alerts_logged += 1
            self.log.warning("ip.listed", ip=ip, lists=lists, file=job.claimed.name, line=line)

    def chunk_failed(self, worker: WorkerHandle, key: Key, reason: str, detail: str, retry: bool) -> None:
        chunk = worker.inflight.pop(key, None)
        worker.started.discard(key)
        if not worker.inflight:
            worker.exclusive = False
        job = self.jobs.get(key[0])
        if chunk is None or job is None or job.failed:
            return
        if retry:
            self.delay(chunk, reason, detail)
        else:
            self.fail_job(job, reason, detail)

    def delay(self, chunk: Chunk, reason: str, detail: str) -> None:
        """Retry later without counting an attempt (a full disk is not the chunk's fault)."""
        now, wait = self.disk_backoff(reason, detail)
        self.delayed.append((now + wait, chunk))
        self.log.debug("disk.retry", step="chunk", file=os.path.basename(chunk.path), chunk=chunk.index,
                       delay=round(wait, 3))

    def disk_ok(self) -> None:
        """A write to results/ succeeded: the outage, if any, is over."""
        if self.disk_full_since is not None:
            self.log.info("disk.recovered", outage=round(self.clock() - self.disk_full_since, 3))
            self.disk_full_since = None

    def release_delayed(self, now: float) -> None:
        if not self.delayed:
            return
        due = [c for t, c in self.delayed if t <= now]
        self.delayed = [(t, c) for t, c in self.delayed if t > now]
        self.requeued.extend(due)

    def fail_job(self, job: Job, reason: str, detail: str, **extra: Any) -> None:
        job.failed = True
        job.close()
        # Chunks of this job still on workers are discarded as they come back.
        for part in job.parts.values():
            self.spool.remove_part(part)
        if not job.assembling:  # a running append is cleaned up when it reports back
            self.spool.remove_part(self.assembly_path(job))
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
        if not any(k[0] == job.seq for w in self.workers.values() for k in w.inflight):
            del self.jobs[job.seq]

    def queue_commit(self, job: Job) -> None:
        """Put a job on the commit queue once, however many paths lead there."""
        if not job.queued:
            job.queued = True
            self.to_commit.append(job)

    def publish_one(self, job: Job) -> tuple[str, str] | None:
        """Step 2 for one job: link its result in; (part, result path) or None if not now."""
        if job.total != 1 and job.assembled is None:
            self.assemble(job)
            return None
        part = job.parts[0] if job.total == 1 else job.assembled or ""
        try:
            return part, self.spool.publish_result(part, job.claimed.job_name)
        except FileExistsError:
            self.fail_job(job, "result_exists",
                          "a file we did not write holds the result name; nothing was overwritten")
        except OSError as exc:
            # Out of space or similar: keep the parts and try the commit again later.
            self.queue_commit(job)
            self.delay_commit(str(exc))
        return None

    def commit(self) -> None:
        """Publish every finished job as one group: few fsyncs for many files."""
        if not self.to_commit or self.clock() < self.commit_retry_at:
            self.forget_failed()
            return
        batch, self.to_commit = self.to_commit, []
        for job in batch:
            job.queued = False
        published: list[tuple[Job, str, str]] = []
        # A claim must be durable before its result is: otherwise a power cut
        # could bring the input back to incoming/ beside its result.
        self.spool.sync_claims()
        for job in batch:
            if job.failed or job.seq not in self.jobs or self.input_changed(job):
                continue
            done = self.publish_one(job)
            if done is not None:
                published.append((job, *done))
        if not published:
            return
        self.disk_ok()
        keep = self.config.spool.keep_processed
        self.spool.sync_results()
        for job, _, _ in published:
            self.spool.retire_input(job.claimed.job_name, keep)
        self.spool.sync_retired(keep)
        now = self.clock()
        for job, part, result in published:
            for p in job.parts.values():
                self.spool.remove_part(p)
            self.spool.remove_part(part)
            del self.jobs[job.seq]
            for key in [(job.seq, i) for i in range(job.total or 0)]:
                self.attempts.pop(key, None)
            self.totals.update(job.counts)
            self.totals["files_done"] += 1
            if self.metrics:
                self.metrics.observe_file(now - job.started)
            unlogged = job.counts["listed_alerts"] - job.alerts_logged
            if unlogged > 0:
                self.log.warning("ip.listed.suppressed", file=job.claimed.name, suppressed=unlogged,
                                 logged=job.alerts_logged, limit=self.config.alerts.listed_per_file)
            self.totals["bytes"] += job.claimed.size
            self.log.info(
                "file.done", file=job.claimed.name, job=job.claimed.job_name, result=result,
                lines=job.counts["lines"], valid=job.counts["valid"], invalid=job.counts["invalid"],
                stage_errors=job.counts["stage_errors"], chunks=job.total,
                duration=round(now - job.started, 4),
            )
        self.rate_window.append((now, self.totals["files_done"]))
        self.dirty = True

    def assembly_path(self, job: Job) -> str:
        return self.spool.part_path(f"{job.seq}.assembled")

    def assemble(self, job: Job) -> None:
        """Append the next run of finished parts, in order, on the assembler thread.

        Called as parts arrive, so joining a large file's result overlaps with
        processing it; the append that takes in the last part also fsyncs.
        collect_assembled() takes the outcome back on the loop.
        """
        if job.failed or job.assembling or job.assembled is not None or job.total == 1:
            return
        run: list[str] = []
        while job.appended + len(run) in job.parts:
            run.append(job.parts[job.appended + len(run)])
        last = job.total is not None and job.appended + len(run) == job.total
        if not run and not last:
            return
        job.assembling = True
        future = self.assembler.submit(self.spool.append_parts, self.assembly_path(job), run,
                                       job.assembly_bytes, last)

        def report(done: Future[int], seq: int = job.seq, count: int = len(run)) -> None:
            error = done.exception()
            code = error.errno or 0 if isinstance(error, OSError) else 0
            self.assembled.put((seq, count, -1 if error else done.result(), str(error) if error else "", code))
            try:
                os.write(self.sig_w, b"\0")  # wake the loop
            except BlockingIOError:
                pass

        future.add_done_callback(report)

    def collect_assembled(self) -> None:
        while True:
            try:
                seq, count, size, error, code = self.assembled.get_nowait()
            except queue.Empty:
                return
            job = self.jobs.get(seq)
            if job is None or job.failed:
                self.spool.remove_part(self.spool.part_path(f"{seq}.assembled"))
                continue
            job.assembling = False
            if error and code in (errno.ENOSPC, errno.EDQUOT):
                self.delay_commit(error)  # out of space: the commit retry appends again
                self.queue_commit(job)
                continue
            if error:
                # Not a full disk (a filesystem without copy_file_range, an
                # I/O error): retrying would loop forever.
                self.fail_job(job, "assembly_failed", f"joining the result's parts failed: {error}")
                continue
            job.appended += count
            job.assembly_bytes = size
            if job.total is not None and job.appended == job.total:
                job.assembled = self.assembly_path(job)
                self.queue_commit(job)
            else:
                self.assemble(job)

    def input_changed(self, job: Job) -> bool:
        """Fail a job whose input was written to after its claim (a producer writing in place)."""
        changed = self.spool.changed(job.claimed)
        if changed:
            self.fail_job(job, "changed", changed)
        return changed is not None

    def disk_backoff(self, reason: str, detail: str) -> tuple[float, float]:
        """(now, seconds to wait) for a failed results write; the first failure of an outage logs disk.full."""
        now = self.clock()
        if self.disk_full_since is None:
            self.disk_full_since = now
            self.log.error("disk.full", reason=reason, detail=detail, results=str(self.config.results_dir))
        return now, min(_MAX_BACKOFF, 0.5 + (now - self.disk_full_since) / 2)

    def delay_commit(self, error: str) -> None:
        now, wait = self.disk_backoff("commit", error)
        self.commit_retry_at = now + wait
        self.log.debug("disk.retry", step="commit", delay=round(wait, 3))

    def forget_failed(self) -> None:
        for seq in [s for s, j in self.jobs.items() if j.failed]:
            if not any(k[0] == seq for w in self.workers.values() for k in w.inflight):
                del self.jobs[seq]

    # ==================================================================
    # stopping
    # ==================================================================

    def check_stopped(self) -> None:
        if not self.stopping or self.finished:
            return
        # A file whose chunks are all done but whose parts are still being
        # joined is worth finishing too.
        joining = any(job.assembling for job in self.jobs.values())
        if (self.inflight_count() or joining) and self.clock() < self.stop_deadline:
            self.extend_stop()
            return
        if self.inflight_count():
            self.log.warning("daemon.stop_timeout", inflight=self.inflight_count(),
                             note="unfinished files stay in active/ and are processed at the next start")
            self.kill_workers("graceful_timeout")
        else:
            for worker in list(self.workers.values()):
                self.retire(worker)
            deadline = time.monotonic() + 10
            for worker in list(self.workers.values()):
                worker.process.join(max(0.0, deadline - time.monotonic()))
        self.finished = True

    def extend_stop(self) -> None:
        """Keep systemd's TimeoutStopSec from cutting a drain that still makes progress.

        EXTEND_TIMEOUT_USEC (sd_notify(3)) only ever pushes the deadline out,
        so it matters once graceful_timeout outlasts TimeoutStopSec. Progress
        is a worker holding chunks that beat since the last look; a stalled
        drain gets no extension, and graceful_timeout still bounds ours.
        """
        if not self.notifier.enabled or not self.every("extend_stop", _EXTEND_EVERY):
            return
        beats = [w.heartbeat.value for w in self.workers.values() if w.inflight]
        latest = max(beats, default=0.0)
        if latest > self.last.get("drain_progress", 0.0):
            self.notifier.extend_timeout(_EXTEND_WINDOW)
        self.last["drain_progress"] = latest

    # ==================================================================
    # reporting
    # ==================================================================

    def summary(self) -> dict[str, int]:
        return {k: self.totals[k] for k in ("files_done", "files_failed", "lines", "valid", "invalid")}

    def backlog_age(self) -> float:
        """Seconds the oldest waiting file has waited (by its mtime or first sighting)."""
        fronts = [q[0][1] for q in (self.backlog, self.fresh) if q]
        return max(0.0, time.time() - min(fronts)) if fronts else 0.0

    def files_per_second(self) -> float:
        if len(self.rate_window) < 2:
            return 0.0
        (t0, n0), (t1, n1) = self.rate_window[0], self.rate_window[-1]
        return (n1 - n0) / (t1 - t0) if t1 > t0 else 0.0

    def status_line(self) -> str:
        alive = sum(1 for w in self.slots.values() if w is not None and w.ready)
        state = "stopping" if self.stopping else "running"
        return (f"{state}: {alive}/{self.config.process_count} workers, backlog {len(self.waiting)}, "
                f"{self.files_per_second():.1f} files/s, {self.totals['files_done']} done, "
                f"{self.totals['files_failed']} failed")

    def publish(self) -> None:
        if self.stats is None:
            return
        self.dirty = False
        now = self.clock()
        oldest = self.backlog_age()
        workers = [
            {"slot": w.slot, "pid": w.pid, "ready": w.ready, "retiring": w.retiring,
             "inflight": len(w.inflight), "heartbeat_age": round(now - w.heartbeat.value, 3),
             "uptime": round(now - w.born, 1), "restarts": self.slot_restarts[w.slot],
             "current": sorted({printable(os.path.basename(c.path)) for c in w.inflight.values()})[:3]}
            for w in sorted(self.workers.values(), key=lambda w: (w.slot, w.pid))
        ]
        self.stats.call("set_totals", dict(self.totals))
        state = "stopping" if self.stopping else ("running" if self.ready_sent else "starting")
        self.stats.call("set_daemon", {
            "pid": os.getpid(), "state": state,
            "started": self.started_at, "spool": str(self.config.spool_dir), "config": self.config_path,
            "generation": self.generation, "processes": self.config.process_count,
            "threads": self.config.workers.threads, "backlog": len(self.waiting), "backlog_age": round(oldest, 3),
            "active": len(self.jobs), "files_per_second": round(self.files_per_second(), 2),
            "worker_table": workers,
        })

    def write_metrics(self, up: bool | None = None) -> None:
        assert self.metrics is not None
        snapshot = Snapshot(
            totals=dict(self.totals), backlog_files=len(self.waiting), backlog_age=self.backlog_age(),
            workers_alive=sum(1 for w in self.slots.values() if w is not None and w.ready),
            workers_configured=self.config.process_count, active_files=len(self.jobs),
            up=not (self.stopping or self.finished) if up is None else up,
        )
        try:
            self.metrics.write(snapshot)
        except OSError as exc:
            if not self.metrics_failing:
                self.log.error("metrics.write_failed", path=self.metrics.path, error=str(exc))
            self.metrics_failing = True
        else:
            self.metrics_failing = False

    def publish_reload(self, ok: bool, problems: list[str]) -> None:
        if self.stats is not None:
            self.stats.call("set_daemon", {"last_reload": {
                "ok": ok, "problems": problems, "time": time.time(), "generation": self.generation,
            }})

    @staticmethod
    def set_title(title: str) -> None:
        try:
            from setproctitle import setproctitle

            setproctitle(title)
        except ImportError:
            pass

