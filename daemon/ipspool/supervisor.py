"""The supervisor: one event loop over named parts, owning every decision.

Signal handlers only record the signal; the watchdog observer thread only
queues names. Everything else happens on this loop, one step at a time, and
each kind of decision lives in the part named for it:

    intake.py     names in incoming/ -> claimed, checked inputs
    jobs.py       the job book: split, dispatch order, attempts, poison
    pool.py       the executor: forked per-core workers (executor.py: the seam)
    commit.py     the committer: assembly, group commit, disk back-off
    reporting.py  totals, ``ipspool status``, metrics, health, systemd notify

One turn of the loop:

    select() on: signal wake-up, watcher wake-up, the executor's pipes and
                 exit sentinels, the Manager's exit sentinel
    -> route what the executor reported to the job book
    -> signals, then timers (heartbeats, respawns, retries, rescans, reports)
    -> fill: claim files and hand chunks to the executor while it has room
    -> commit: publish finished results as one group
"""

from __future__ import annotations

import multiprocessing
import os
import selectors
import signal
from collections import deque
from collections.abc import Callable
from pathlib import Path

from ipspool.clock import SYSTEM_CLOCK, Clock, Periodic
from ipspool.commit import Committer
from ipspool.config import Config, ConfigError, load_discovered, with_log_level
from ipspool.configfiles import Discovered, Ignored
from ipspool.executor import Executor
from ipspool.exitcodes import ExitCode
from ipspool.intake import SETTLE, Intake
from ipspool.jobs import Job, JobBook
from ipspool.logs import LogTarget, configure_logging, get_logger, install_crash_hooks, log_crash
from ipspool.notify import Notifier, watchdog_interval
from ipspool.outage import DiskOutage
from ipspool.pipeline import load_pipeline
from ipspool.pool import ForkserverLauncher, WorkerPool
from ipspool.protocol import Done, Failed, Halted, Lost, UnitExited
from ipspool.recovery import recover
from ipspool.reporting import Picture, Reporter, StatsLink
from ipspool.spool import OwnerCheck, Spool, SpoolError, ensure_runtime_dir
from ipspool.stats import ensure_authkey
from ipspool.watcher import IncomingWatcher

__all__ = ["Supervisor"]

_TICK = 0.25
_EXTEND_EVERY = 2.0         # while draining, look for progress this often...
_EXTEND_WINDOW = 10.0       # ...and keep systemd's stop timeout this far ahead when there was some
_JOIN_AT_STOP = 10.0        # seconds retired workers get to exit at the end of a stop


class Supervisor:
    def __init__(
        self,
        config: Config,
        config_path: str | None,
        *,
        spool_override: str | None = None,
        log_target: LogTarget | None = None,
        clock: Clock = SYSTEM_CLOCK,
        executor: Executor | None = None,
        log_level: str | None = None, ignored: tuple[Ignored, ...] = (),
    ) -> None:
        self.config = config
        self.config_path = config_path
        self.spool_override = spool_override
        self.log_level = log_level  # run -v/-q/--log-level: outlasts reloads
        self.ignored = ignored
        self.log_target = log_target or LogTarget(config.log.file)
        self.clock = clock
        self.log = get_logger()
        self.periodic = Periodic(clock)
        self.selector = selectors.DefaultSelector()
        self.ctx = multiprocessing.get_context("forkserver")
        self.notifier = Notifier()
        self.watcher = IncomingWatcher(config.spool_dir / "incoming")
        self.signals: deque[int] = deque()
        self.sig_r, self.sig_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.spool = Spool(config.spool_dir, config.results_dir)
        self.authkey = b""
        self.stats = StatsLink(self.ctx, config, self.authkey, clock)
        self.reporter = Reporter(config, config_path, clock, self.notifier, self.stats, watchdog_interval())
        self.stats.on_start = lambda: self.reporter.publish(self.picture())
        totals = self.reporter.totals
        self.outage = DiskOutage(clock, config.results_dir)
        self.intake = Intake(self.spool, clock, totals, config.spool.max_file_bytes)
        self.committer = Committer(self.spool, clock, self.outage, config.spool.keep_processed,
                                   fail=self.fail_job, committed=self.committed, wake=self.wake,
                                   summary_top=config.spool.summary_top, summaries=config.spool.summaries)
        self.book = JobBook(config, self.spool, clock, totals, self.committer, self.outage, wake=self.wake)
        self._executor = executor
        self.generation = 0
        self.ready_sent = False
        self.reload_pending = False
        self.stopping = False
        self.stop_deadline = 0.0
        self.drain_progress = 0.0
        self.exit_code = ExitCode.OK
        self.finished = False
        self.thread_crashed = False  # set by another thread (threading.excepthook): read only by the loop

    @property
    def executor(self) -> Executor:
        assert self._executor is not None, "the executor exists once start() ran"
        return self._executor

    # -- start-up and shutdown ------------------------------------------------------

    def run(self) -> int:
        install_crash_hooks(self.on_thread_crash)
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
        except Exception as exc:  # noqa: BLE001 - a bug: one critical event, then the orderly shutdown below
            log_crash("daemon.crashed", exc)
            self.exit_code = ExitCode.INTERNAL_ERROR
        finally:
            self.shutdown()
        return int(self.exit_code)

    def on_thread_crash(self) -> None:
        """On the thread that crashed (already logged as thread.crashed): the loop stops the daemon."""
        self.thread_crashed = True
        self.wake()

    def start(self) -> None:
        config = self.config
        set_title(f"ipspool: supervisor {config.spool_dir}")
        self.install_signals()
        load_pipeline(config).close()  # a stage that cannot load stops us here, clearly
        self.prepare_spool()
        ensure_runtime_dir(config.runtime_dir)
        self.authkey = self.stats.authkey = ensure_authkey(config.runtime_dir)
        self.recover()
        self.ctx.set_forkserver_preload(["ipspool.forkserver"])
        self.stats.start(self.selector)
        if self._executor is None:
            self._executor = make_executor(self, config)
        self.executor.start(self.selector)
        # Threads start only now, after the forkserver exists: no fork ever
        # happens in a process that runs the observer.
        self.watcher.start()
        self.intake.follow = self.watcher.follow
        self.reporter.open_server(config.metrics.listen)
        self.selector.register(self.watcher.wake_r, selectors.EVENT_READ, self.on_watcher)
        self.selector.register(self.sig_r, selectors.EVENT_READ, self.on_wakeup)
        self.intake.rescan()
        warn_ignored(self.ignored)
        self.log.info(
            "daemon.started", spool=str(config.spool_dir), results=str(config.results_dir),
            processes=config.process_count, threads=config.workers.threads,
            stages=list(config.pipeline.stages), config=self.config_path or "<defaults>",
        )

    def prepare_spool(self) -> None:
        """Create (or check) the spool's folders, their producer group and ACLs; open them."""
        gid = producer_gid(self.config, self.config_path)
        self.spool.create(gid, self.config.spool.subdirs)
        if gid is not None and self.config.spool.check_owner:
            self.intake.owner_ok = OwnerCheck(gid)
        if self.spool.acl_unsupported:
            self.log.warning("spool.acl_unsupported", paths=self.spool.acl_unsupported,
                             note="no ACLs on this filesystem: producers can read each other's pending files")
        self.spool.open(self.config.spool.max_subdirs)

    def recover(self) -> None:
        redo, finished, failed = recover(self.spool, self.config.spool.keep_processed)
        try:
            self.spool.start_run()
        except OSError as exc:
            # A full results filesystem: parts go to results/.parts/ itself
            # this run; the start goes on (nothing can be written yet anyway).
            self.log.warning("spool.run_folder_failed", error=exc.strerror or str(exc),
                             note="this run's parts go to results/.parts/ itself")
        log_recovered(finished, failed, redo)
        self.intake.recovered.extend(redo)

    def shutdown(self) -> None:
        self.watcher.stop()
        self.committer.shutdown()  # sets Spool.abandon: a decompression stops too
        self.book.shutdown()
        if self._executor is not None:
            self.executor.kill("shutdown")
            self.executor.close(0)
        for job in self.book.jobs.values():
            job.close()
        self.stats.close()
        if self.reporter.metrics:
            self.reporter.write_metrics(self.picture(), up=False)
        self.reporter.close_server()
        self.notifier.close()
        if self.spool.fds:
            self.spool.end_run()
        self.spool.close()
        self.log.info("daemon.stopped", exit_code=int(self.exit_code), **self.reporter.summary())

    # -- the loop -----------------------------------------------------------------

    def turn(self) -> None:
        for key, _ in self.selector.select(self.timeout()):
            key.data(key.fileobj)
        if self.thread_crashed:  # what the thread did no longer happens: stop, systemd restarts us
            self.exit_code = ExitCode.INTERNAL_ERROR
            self.executor.kill("a supervisor thread crashed")
            self.finished = True
            return
        self.committer.collect()
        self.route_events()
        self.handle_signals()
        self.tick()
        self.fill()
        self.committer.commit()
        self.check_stopped()

    def timeout(self) -> float:
        return 0 if self.signals or self.committer.due() or self.book.scanning else _TICK

    def wake(self) -> None:
        """Wake the loop from another thread (the assembler)."""
        try:
            os.write(self.sig_w, b"\0")
        except BlockingIOError:
            pass

    def on_wakeup(self, _fd: object) -> None:
        try:
            while os.read(self.sig_r, 512):
                pass
        except BlockingIOError:
            pass

    def on_watcher(self, _sock: object) -> None:
        why = self.intake.take_names(self.watcher.drain())
        if why == "overflow":
            self.log.warning("watch.overflow", note="inotify dropped events; rescanning incoming/")
        if why:
            self.intake.rescan()
            # That scan skipped files younger than SETTLE, which are the very
            # ones whose events were lost: look again once they settled.
            self.periodic.next_in("rescan", SETTLE, self.config.spool.rescan_interval)

    def route_events(self) -> None:
        for event in self.executor.events():
            match event:
                case Done():
                    self.book.on_done(event)
                case Failed():
                    self.book.on_failed(event)
                case Lost():
                    self.book.on_lost(event)
                case UnitExited(pid):
                    self.stats.call("remove_worker", pid)
                case Halted(reason):
                    self.halt(reason)
        self.check_ready()

    def tick(self) -> None:
        now = self.clock.monotonic()
        self.executor.tick(now)
        self.book.release_delayed(now)
        self.stats.tick(now)
        self.intake.paused_for = "results disk outage" if self.outage.active else ""
        if not self.stopping and self.periodic.due("rescan", self.config.spool.rescan_interval):
            self.intake.rescan()
        self.reporter.tick(now, self.picture, self.executor.healthy(now))

    def fill(self) -> None:
        if not (self.stopping or self.finished):
            self.book.fill(self.executor, self.intake)

    # -- parts calling back ------------------------------------------------------

    def fail_job(self, job: Job, reason: str, detail: str) -> None:
        self.book.fail_job(job, reason, detail)

    def committed(self, job: Job, result: str) -> None:
        self.book.finished(job)
        self.reporter.file_done(job, result)

    def picture(self) -> Picture:
        state = "stopping" if self.stopping else ("running" if self.ready_sent else "starting")
        executor = self._executor
        return Picture(
            state=state, backlog=len(self.intake), backlog_age=self.intake.backlog_age(),
            active=len(self.book.jobs), alive=executor.alive() if executor else 0, generation=self.generation,
            workers=executor.describe(self.clock.monotonic()) if executor else [],
            executor=executor.census() if executor else None,
        )

    def check_ready(self) -> None:
        if not self.executor.ready():
            return
        if not self.ready_sent:
            self.ready_sent = True
            p = self.picture()
            self.reporter.publish(p)  # `ipspool status` says "running" as soon as systemd does
            self.notifier.ready(self.reporter.status_line(p))
            self.log.info("daemon.ready", workers=[w["pid"] for w in p.workers], backlog=p.backlog)
        elif self.reload_pending:
            self.reload_pending = False
            p = self.picture()
            self.notifier.ready(self.reporter.status_line(p))
            self.log.info("config.reloaded", generation=self.generation, mode="replace",
                          workers=[w["pid"] for w in p.workers if not w["retiring"]])
            self.reporter.publish_reload(ok=True, problems=[], generation=self.generation)

    def halt(self, reason: str) -> None:
        self.log.critical("daemon.halt", reason=reason, exit_code=int(ExitCode.WORKER_BOOT_ERROR))
        self.exit_code = ExitCode.WORKER_BOOT_ERROR
        self.executor.kill("halt")
        self.finished = True

    # -- signals ----------------------------------------------------------------

    def install_signals(self) -> None:
        def record(signum: int, _frame: object) -> None:
            """NO LOGGING, just queue the signal (the loop handles it)."""
            self.signals.append(signum)

        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2):
            signal.signal(signum, record)
        signal.set_wakeup_fd(self.sig_w, warn_on_full_buffer=False)

    def handle_signals(self) -> None:
        while self.signals:
            signum = self.signals.popleft()
            if signum in (signal.SIGTERM, signal.SIGINT):
                self.handle_term(signal.Signals(signum).name)
            elif signum == signal.SIGHUP:
                self.handle_hup()
            elif signum == signal.SIGUSR1:
                self.log_target.reopen()
                self.executor.reopen_logs()
                self.log.info("log.reopened", file=self.log_target.path or "<stdout>")
            elif signum == signal.SIGUSR2:
                self.watcher.simulate_overflow()

    def handle_term(self, name: str) -> None:
        inflight = self.executor.inflight()
        if self.stopping:
            self.log.warning("daemon.stop_now", signal=name, inflight=inflight)
            self.executor.kill("second stop signal")
            self.finished = True
            return
        self.stopping = True
        self.stop_deadline = self.clock.monotonic() + self.config.workers.graceful_timeout
        self.executor.drain()
        self.notifier.stopping("stopping: finishing in-flight chunks")
        self.log.info("daemon.stopping", signal=name, inflight=inflight,
                      graceful_timeout=self.config.workers.graceful_timeout)

    def handle_hup(self) -> None:
        if self.stopping:
            self.log.warning("config.reload_failed", config=self.config_path or "<defaults>",
                             problems=["the daemon is stopping; reload ignored"])
            self.reporter.publish_reload(ok=False, problems=["the daemon is stopping"], generation=self.generation)
            return
        new, target, problems = self.reload_candidate()
        if new is None:
            self.log.error("config.reload_failed", config=self.config_path or "<defaults>", problems=problems)
            self.reporter.publish_reload(ok=False, problems=problems, generation=self.generation)
            return
        self.notifier.reloading()
        if new == self.config:
            # Same settings: only data files (lists, databases) may have
            # changed. Workers re-read them in place, each swapping in the new
            # tables at once, so matching never pauses and no worker restarts.
            self.executor.refresh()
            workers = [w["pid"] for w in self.executor.describe(self.clock.monotonic()) if not w["retiring"]]
            self.log.info("config.reloaded", generation=self.generation, mode="refresh", workers=workers)
            self.notifier.ready(self.reporter.status_line(self.picture()))
            self.reporter.publish_reload(ok=True, problems=[], generation=self.generation)
            return
        self.apply(new, target)

    def reload_candidate(self) -> tuple[Config | None, LogTarget, list[str]]:
        """The new configuration and its log target, or None and the problems."""
        try:
            new, ignored = reread(self.config_path, self.spool_override, self.log_level)
        except ConfigError as exc:
            return None, self.log_target, list(exc.problems)
        warn_ignored(ignored)
        problems = fixed_until_restart(self.config, new)
        target = self.log_target
        if not problems and new.log.file != self.config.log.file:
            try:
                target = LogTarget(new.log.file)
            except OSError as exc:
                problems.append(f"log.file: cannot open {new.log.file!r}: {exc.strerror or exc}")
        return (None if problems else new), target, problems

    def apply(self, new: Config, target: LogTarget) -> None:
        """Take a validated, changed configuration: new workers replace the old gracefully."""
        self.config = new
        if target is not self.log_target:
            self.log_target.close()
        self.log_target = configure_logging(new.log.level, new.log.format, role="supervisor", target=target)
        self.reporter.reconfigure(new)
        self.book.config = new
        self.intake.max_file_bytes = new.spool.max_file_bytes
        self.intake.owner_ok = owner_check(new, self.config_path, self.intake.owner_ok)
        add_subdirs(self.spool, new, self.config_path)
        self.committer.reconfigure(new.spool.keep_processed, new.spool.summary_top, new.spool.summaries)
        self.generation += 1
        self.executor.reconfigure(new, self.generation)
        self.reload_pending = True
        self.log.info("config.reloading", generation=self.generation, processes=new.process_count,
                      stages=list(new.pipeline.stages))

    # -- stopping -------------------------------------------------------------------

    def check_stopped(self) -> None:
        if not self.stopping or self.finished:
            return
        inflight = self.executor.inflight()
        # A file whose chunks are all done but whose parts are still being
        # joined is worth finishing too.
        if (inflight or self.committer.joining()) and self.clock.monotonic() < self.stop_deadline:
            self.extend_stop()
            return
        if inflight:
            self.log.warning("daemon.stop_timeout", inflight=inflight,
                             note="unfinished files stay in active/ and are processed at the next start")
            self.executor.kill("graceful_timeout")
        else:
            self.executor.close(_JOIN_AT_STOP)
        self.finished = True

    def extend_stop(self) -> None:
        """Keep systemd's TimeoutStopSec from cutting a drain that still makes progress.

        EXTEND_TIMEOUT_USEC (sd_notify(3)) only ever pushes the deadline out,
        so it matters once graceful_timeout outlasts TimeoutStopSec. Progress
        is a worker holding chunks that beat since the last look; a stalled
        drain gets no extension, and graceful_timeout still bounds ours.
        """
        if not self.notifier.enabled or not self.periodic.due("extend_stop", _EXTEND_EVERY):
            return
        latest = self.executor.progress_mark()
        if latest > self.drain_progress:
            self.notifier.extend_timeout(_EXTEND_WINDOW)
        self.drain_progress = latest


def reread(config_path: str | None, spool: str | None, log_level: str | None) -> tuple[Config, tuple[Ignored, ...]]:
    """The configuration file again, with its conf.d/ drop-ins, each stage loaded once (for a reload)."""
    found = Discovered(None if config_path is None else Path(config_path), "run")
    loaded = load_discovered(found, spool=spool)
    new = with_log_level(loaded.config, log_level)
    load_pipeline(new, config_path or "<config>").close()
    return new, loaded.ignored


def warn_ignored(ignored: tuple[Ignored, ...]) -> None:
    for item in ignored:
        get_logger().warning("config.dropin_ignored", file=str(item.path), reason=item.reason)


def producer_gid(config: Config, source: str | None) -> int | None:
    """The gid of ``spool.producer_group`` (None when unset), or a ConfigError naming the key."""
    name = config.spool.producer_group
    if not name:
        return None
    import grp

    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        raise ConfigError(source or "<config>", (f"spool.producer_group: no group {name!r}",)) from None


def log_recovered(finished: list[str], failed: list[str], redo: list[str]) -> None:
    log = get_logger()
    for job_name in finished:
        log.info("file.recovered", file=job_name, action="retired", note="result was published before a stop")
    for job_name in failed:
        log.info("file.recovered", file=job_name, action="failed", note="failure was recorded before a stop")
    for job_name in redo:
        log.info("file.recovered", file=job_name, action="reprocess", note="interrupted; processing again")


def add_subdirs(spool: Spool, new: Config, source: str | None) -> None:
    """At a reload: make the producer subdirectories the new configuration names; the next scan reads them."""
    spool.incoming.max_subdirs = new.spool.max_subdirs
    try:
        spool.create_subdirs(new.spool.subdirs, producer_gid(new, source))
    except (OSError, SpoolError, ConfigError) as exc:
        get_logger().error("spool.subdir_failed", error=str(exc), note="not created; the others are read")


def owner_check(config: Config, source: str | None,
                current: Callable[[int], bool] | None) -> Callable[[int], bool] | None:
    """The owner check a reloaded configuration asks for; the current one stays if its group is gone
    (the next start refuses that configuration)."""
    if not config.spool.check_owner:
        return None
    try:
        gid = producer_gid(config, source)
    except ConfigError:
        return current
    return None if gid is None else OwnerCheck(gid)


def fixed_until_restart(old: Config, new: Config) -> list[str]:
    """What a reload may not change: the directories the daemon holds open, and the executor's kind."""
    problems = [
        f"{what} cannot change on reload; restart the daemon to move it"
        for what in ("spool_dir", "results_dir", "runtime_dir")
        if getattr(new, what) != getattr(old, what)
    ]
    if new.executor.kind != old.executor.kind:
        problems.append(f"executor.kind cannot change on reload ({old.executor.kind!r} to "
                        f"{new.executor.kind!r}); restart the daemon to switch executors")
    return problems


def make_executor(supervisor: Supervisor, config: Config) -> Executor:
    """The executor ``[executor] kind`` asks for: the local worker pool, or a Dask cluster."""
    if config.executor.kind == "dask":
        try:
            from ipspool.dask_executor import DaskExecutor  # distributed is an optional extra
        except ImportError as exc:
            raise ConfigError(supervisor.config_path or "<config>", (
                f"executor.kind = \"dask\" needs the ipspool[dask] extra ({exc})",)) from None
        return DaskExecutor(config, supervisor.spool.parts_dir, supervisor.clock, supervisor.reporter.totals)
    launcher = ForkserverLauncher(supervisor.ctx, config.runtime_dir, supervisor.authkey, supervisor.spool.parts_dir,
                                  supervisor.clock)
    return WorkerPool(config, launcher, supervisor.clock, supervisor.reporter.totals)


def set_title(title: str) -> None:
    try:
        from setproctitle import setproctitle

        setproctitle(title)
    except ImportError:
        pass
