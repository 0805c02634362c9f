"""Reporting: what the daemon tells the world, and when.

The ``Reporter`` owns the totals (exact, commit-time counts), and from them
and a ``Picture`` of the loop's state it feeds every audience on its own
period: the stats Manager (``ipspool status``), the Prometheus textfile,
the health checks (backlog and disk alerts), systemd's STATUS= line and its
watchdog. ``StatsLink`` keeps the Manager process running: started through
the forkserver, restarted when it dies, re-seeded from the totals.
"""

from __future__ import annotations

import os
import selectors
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.context import BaseContext
from typing import Any

from ipspool.clock import Clock, Periodic
from ipspool.config import Config
from ipspool.executor import Census
from ipspool.health import HealthChecks
from ipspool.jobs import Job
from ipspool.logs import get_logger
from ipspool.metrics import Metrics, Snapshot
from ipspool.metrics_http import MetricsServer
from ipspool.notify import Notifier
from ipspool.stats import StatsClient, StatsManager, start_manager
from ipspool.summary import PER_FILE_PREFIXES

__all__ = ["Picture", "Reporter", "StatsLink"]

_MANAGER_RETRY = 5.0     # after a failed start
_MANAGER_RESTART = 1.0   # after a death


@dataclass(frozen=True)
class Picture:
    """The loop's state at one moment, as the reports show it."""

    state: str                 # starting | running | stopping
    backlog: int
    backlog_age: float
    active: int
    alive: int
    generation: int
    workers: list[dict[str, Any]] = field(default_factory=list)
    executor: Census | None = None


class StatsLink:
    """The stats Manager process: started, watched, restarted."""

    def __init__(self, ctx: BaseContext, config: Config, authkey: bytes, clock: Clock) -> None:
        self.ctx = ctx
        self.config = config
        self.authkey = authkey
        self.clock = clock
        self.log = get_logger()
        self.manager: StatsManager | None = None
        self.watch: Connection | None = None
        self.client: StatsClient | None = None
        self.restart_at = 0.0
        self.selector: selectors.BaseSelector | None = None
        self.on_start: Callable[[], None] = lambda: None

    def start(self, selector: selectors.BaseSelector) -> None:
        self.selector = selector
        self.restart_at = 0.0
        config = self.config
        try:
            self.manager, self.watch = start_manager(
                self.ctx, config.runtime_dir, self.authkey, config.log.level,
                f"ipspool: stats {config.spool_dir}", log_file=config.log.file,
            )
        except (OSError, EOFError) as exc:
            self.log.error("stats.start_failed", error=str(exc))
            self.restart_at = self.clock.monotonic() + _MANAGER_RETRY
            return
        process = self.manager._process  # type: ignore[attr-defined]
        selector.register(process.sentinel, selectors.EVENT_READ, self.on_exit)
        self.client = StatsClient(config.runtime_dir, self.authkey)
        self.on_start()
        self.log.info("stats.started", socket=self.client.address, stats_pid=process.pid)

    def on_exit(self, sentinel: object) -> None:
        assert self.selector is not None
        self.selector.unregister(sentinel)  # type: ignore[arg-type]
        if self.watch is not None:
            self.watch.close()
        self.manager = None
        self.client = None
        self.log.error("stats.died", note="processing goes on; counters are re-seeded when it is back")
        self.restart_at = self.clock.monotonic() + _MANAGER_RESTART

    def tick(self, now: float) -> None:
        if self.restart_at and now >= self.restart_at and self.selector is not None:
            self.start(self.selector)

    def call(self, method: str, *args: Any) -> Any:
        return self.client.call(method, *args) if self.client is not None else None

    def close(self) -> None:
        if self.manager is not None:
            if self.watch is not None:
                self.watch.close()
            self.manager.shutdown()


def _rdns_counts(counts: Counter[str]) -> dict[str, int]:
    """file.done's rdns fields, for files that went through the rdns stage."""
    if not counts["rdns.lookups"] and not counts["rdns.cache_hits"]:
        return {}
    return {"rdns_cache_hits": counts["rdns.cache_hits"], "rdns_lookups": counts["rdns.lookups"]}


class Reporter:
    def __init__(self, config: Config, config_path: str | None, clock: Clock, notifier: Notifier,
                 stats: StatsLink, watchdog_every: float | None) -> None:
        self.config = config
        self.config_path = config_path
        self.clock = clock
        self.notifier = notifier
        self.stats = stats
        self.watchdog_every = watchdog_every
        self.log = get_logger()
        self.periodic = Periodic(clock)
        self.totals: Counter[str] = Counter()
        self.started_at = clock.time()
        self.rate_window: deque[tuple[float, int]] = deque(maxlen=20)
        self.dirty = False  # totals changed since the last publish
        self.health = HealthChecks(config.alerts, config.results_dir)
        self.metrics = _metrics(config)
        self.metrics_failing = False
        self.server: MetricsServer | None = None
        self.reload_ok = True                   # the start took its configuration
        self.reload_success_at = self.started_at

    def reconfigure(self, new: Config) -> None:
        old = self.config.metrics
        if (new.metrics.textfile, new.metrics.listen) != (old.textfile, old.listen):
            last = self.metrics.snapshot if self.metrics else None
            if self.metrics and self.metrics.path:
                self.write_metrics(None, up=False)  # the old file must not say "up" forever
            self.close_server()
            self.metrics = _metrics(new)
            if self.metrics and last:
                self.metrics.snapshot = last  # never zeros until the next write: a scrape would see a reset
            self.open_server(new.metrics.listen)
        self.health.alerts = new.alerts
        self.config = new

    # -- the HTTP endpoint ----------------------------------------------------------

    def open_server(self, listen: str) -> None:
        """Serve the registry at ``listen`` (metrics.listen); an address that cannot be had is logged."""
        if not listen or self.metrics is None:
            return
        try:
            self.server = MetricsServer(listen, self.metrics.registry)
        except OSError as exc:
            self.log.error("metrics.listen_failed", listen=listen, error=exc.strerror or str(exc),
                           note="the textfile (if any) is still written; fix the address and reload")
            return
        self.log.info("metrics.listening", listen=self.server.address)

    def close_server(self) -> None:
        if self.server is not None:
            self.server.close()
            self.server = None

    # -- events -----------------------------------------------------------------

    def file_done(self, job: Job, result: str) -> None:
        now = self.clock.monotonic()
        self.totals.update({k: n for k, n in job.counts.items() if not k.startswith(PER_FILE_PREFIXES)})
        self.totals["files_done"] += 1
        self.totals["bytes"] += job.claimed.size
        if self.metrics:
            self.metrics.observe_file(now - job.started)
        unlogged = job.counts["listed_alerts"] - job.alerts_logged
        if unlogged > 0:
            self.log.warning("ip.listed.suppressed", file=job.claimed.name, suppressed=unlogged,
                             logged=job.alerts_logged, limit=self.config.alerts.listed_per_file)
        self.log.info(
            "file.done", file=job.claimed.name, job=job.claimed.job_name, result=result,
            lines=job.counts["lines"], valid=job.counts["valid"], invalid=job.counts["invalid"],
            stage_errors=job.counts["stage_errors"], chunks=job.total,
            duration=round(now - job.started, 4), **_rdns_counts(job.counts),
        )
        self.rate_window.append((now, self.totals["files_done"]))
        self.dirty = True

    # -- the periods --------------------------------------------------------------

    def tick(self, now: float, picture: Callable[[], Picture], healthy: bool) -> None:
        due = self.periodic.due
        if (self.dirty and due("publish_soon", 0.2)) or due("publish", 1.0):
            self.publish(picture())
        if due("health", 5.0):
            p = picture()
            self.health.backlog(now, p.backlog, p.backlog_age)
            self.health.disk(now)
        if self.metrics and due("metrics", self.config.metrics.interval):
            self.write_metrics(picture())
        if due("status", 2.0):
            self.notifier.status(self.status_line(picture()))
        if self.watchdog_every and healthy and due("watchdog", self.watchdog_every):
            self.notifier.watchdog()

    # -- the audiences ------------------------------------------------------------

    def summary(self) -> dict[str, int]:
        return {k: self.totals[k] for k in ("files_done", "files_failed", "lines", "valid", "invalid")}

    def files_per_second(self) -> float:
        if len(self.rate_window) < 2:
            return 0.0
        (t0, n0), (t1, n1) = self.rate_window[0], self.rate_window[-1]
        return (n1 - n0) / (t1 - t0) if t1 > t0 else 0.0

    def status_line(self, p: Picture) -> str:
        state = "stopping" if p.state == "stopping" else "running"
        c = p.executor
        if c is None or c.wanted:
            workers = f"{p.alive}/{c.wanted if c else self.config.process_count} workers"
        else:
            workers = f"{c.kind} {c.workers} workers, {c.threads} threads"
        return (f"{state}: {workers}, backlog {p.backlog}, "
                f"{self.files_per_second():.1f} files/s, {self.totals['files_done']} done, "
                f"{self.totals['files_failed']} failed")

    def publish(self, p: Picture) -> None:
        if self.stats.client is None:
            return
        self.dirty = False
        config = self.config
        self.stats.call("set_totals", dict(self.totals))
        self.stats.call("set_daemon", {
            "pid": os.getpid(), "state": p.state,
            "started": self.started_at, "spool": str(config.spool_dir), "config": self.config_path,
            "generation": p.generation, "processes": config.process_count,
            "threads": config.workers.threads, "backlog": p.backlog, "backlog_age": round(p.backlog_age, 3),
            "active": p.active, "files_per_second": round(self.files_per_second(), 2),
            "worker_table": p.workers, "executor": _census(p.executor),
        })

    def publish_reload(self, ok: bool, problems: list[str], generation: int) -> None:
        now = self.clock.time()
        self.reload_ok = ok
        if ok:
            self.reload_success_at = now
        self.stats.call("set_daemon", {"last_reload": {
            "ok": ok, "problems": problems, "time": now, "generation": generation,
        }})

    def write_metrics(self, p: Picture | None, up: bool | None = None) -> None:
        assert self.metrics is not None
        snapshot = Snapshot(
            totals=dict(self.totals), backlog_files=p.backlog if p else 0, backlog_age=p.backlog_age if p else 0.0,
            workers_alive=p.alive if p else 0, workers_configured=self.config.process_count,
            active_files=p.active if p else 0,
            up=(p is not None and p.state != "stopping") if up is None else up,
            executor=p.executor if p else None, start_time=self.started_at,
            reload_ok=self.reload_ok, reload_success_at=self.reload_success_at,
            results_free_bytes=self.health.free_bytes, disk_low_bytes=self.config.alerts.disk_low_bytes,
        )
        try:
            self.metrics.write(snapshot)
        except OSError as exc:
            if not self.metrics_failing:
                self.log.error("metrics.write_failed", path=self.metrics.path, error=str(exc))
            self.metrics_failing = True
        else:
            self.metrics_failing = False


def _metrics(config: Config) -> Metrics | None:
    """The registry, when a textfile or the HTTP endpoint wants it."""
    m = config.metrics
    return Metrics(m.textfile) if m.textfile or m.listen else None


def _census(c: Census | None) -> dict[str, Any] | None:
    """The executor as ``ipspool status`` (text and JSON) shows it."""
    if c is None:
        return None
    return {"kind": c.kind, "scheduler": c.scheduler, "connected": c.connected, "workers": c.workers,
            "threads": c.threads, "inflight": c.inflight, "wanted": c.wanted}
