"""The Dask executor: the same chunks, run on a Dask cluster.

``DaskExecutor`` implements ``ipspool.executor.Executor``. For each chunk it
reads the byte range in the supervisor (``parts.read_chunk``: same inode,
no links followed), submits ``dask_remote.run_chunk`` (``process_chunk`` on
the worker's installed pipeline) and, when the result bytes and counts come
back, writes and fsyncs the part file itself under the output ratio before
reporting ``Done``. Intake, the job book and the committer are the same as
with the local pool; durability stays in the supervisor.

Outcomes as the job book knows them:

- a Dask worker died while holding the chunk (``KilledWorker``: the link
  sets ``allowed_failures`` to 0, so Dask never reruns it itself):
  ``Lost(started=True)``, one attempt charged, a retry alone, poison after
  ``max_attempts``;
- a chunk without a result for longer than ``heartbeat_timeout`` since it
  began: ``Lost(started=True)``, the task cancelled and its worker
  restarted (through its nanny);
- the scheduler lost, or the task cancelled with it: ``Lost(started=False)``,
  sent again once the scheduler is back;
- the chunk's file or the part's disk: ``Failed``, as with local workers.

Results travel from Dask's threads to the supervisor's single thread
through a queue and a wake-up pipe registered with the selector; at most
``free_slots`` chunks are out at once, which bounds the supervisor's memory.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import selectors
from collections import Counter, deque
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from distributed.scheduler import KilledWorker

from ipspool.chunking import Chunk
from ipspool.clock import Clock
from ipspool.config import Config
from ipspool.dask_link import (
    Begun,
    ClusterLink,
    Connected,
    Finished,
    Installed,
    Notice,
    Restarted,
    SchedulerLost,
    Unreachable,
    WorkersSeen,
)
from ipspool.dask_remote import PipelineBundle, StalePipeline, bundle
from ipspool.executor import Census
from ipspool.formats.work import too_long_output
from ipspool.logs import get_logger
from ipspool.parts import OUTPUT_SLACK, ChunkFailed, PartWriter, read_chunk, write_part
from ipspool.protocol import Done, ExecutorEvent, Failed, Lost
from ipspool.spool import printable

__all__ = ["DaskExecutor"]

_REPORT_UNREACHABLE_EVERY = 30   # connection attempts between two dask.scheduler_unreachable events
_INSTALL_RETRY = 10.0            # seconds before installing a pipeline the workers refused again
_CONDEMNED_FOR = 60.0            # seconds a worker being restarted gets no chunks
_REFRESH_EVERY = 5.0             # seconds between looks at the data files (as local workers do)


@dataclass
class _Flight:
    chunk: Chunk
    token: str
    sent: float
    alone: bool
    begun: float = 0.0
    worker: str = ""
    pinned: str = ""  # the one worker a retry alone may run on
    bystander: bool = False  # its worker is restarted for another chunk: its death is not this chunk's fault


@dataclass
class _Host:
    threads: int
    joined: float
    chunks_done: int = 0
    lines_done: int = 0


class DaskExecutor:
    """Chunks on a Dask cluster, parts written here."""

    kind = "dask"

    def __init__(self, config: Config, parts_dir: Path, clock: Clock, totals: Counter[str],
                 link: ClusterLink | None = None) -> None:
        self.config = config
        self.parts_dir = str(parts_dir)
        self.clock = clock
        self.totals = totals
        self.log = get_logger()
        self.notices: deque[Notice] = deque()
        self.wake_r, self.wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.link = link or ClusterLink(config.executor, self.post)
        self.state = "connecting"       # connecting | up | down
        self.tried = False              # one connection attempt concluded (ready() may say so)
        self.version = 0                # the pipeline version the workers have
        self.wanted = 0                 # the newest version asked for
        self.install_at = 0.0           # retry a refused install then
        self.current: PipelineBundle | None = None
        self.refresh_at = 0.0
        self.hosts: dict[str, _Host] = {}
        self.deaths: Counter[str] = Counter()
        self.losses: Counter[str] = Counter()  # chunks handed back: "charged" (an attempt) or "resent"
        self.flights: dict[str, _Flight] = {}
        self.tokens = itertools.count(1)
        self.alone_on = ""
        self.condemned: dict[str, float] = {}  # workers being restarted -> until when they get nothing
        self.stopping = False
        self.last_progress = 0.0
        self._events: deque[ExecutorEvent] = deque()

    # -- life -----------------------------------------------------------------------

    def start(self, selector: selectors.BaseSelector) -> None:
        selector.register(self.wake_r, selectors.EVENT_READ, self.on_wake)
        self.link.start(self.next_bundle())
        self.log.info("dask.connecting", scheduler=self.config.executor.scheduler)

    def next_bundle(self) -> PipelineBundle:
        self.wanted += 1
        self.current = bundle(self.config, self.wanted)
        return self.current

    def post(self, notice: Notice) -> None:
        """From Dask's or the control thread: queue, then wake the loop."""
        self.notices.append(notice)
        try:
            os.write(self.wake_w, b"\0")
        except BlockingIOError:
            pass  # the pipe is full: the loop is awake already

    def on_wake(self, _fd: object) -> None:
        try:
            while os.read(self.wake_r, 4096):
                pass
        except BlockingIOError:
            pass
        while self.notices:
            self.handle(self.notices.popleft())

    def refresh(self) -> None:
        try:
            package = self.next_bundle()
        except OSError as exc:
            self.wanted -= 1
            self.log.error("dask.pipeline_failed", version=self.wanted + 1, error=f"reading data files: {exc}",
                           action="keeping the pipeline installed before")
            return
        self.install(package)

    def reconfigure(self, config: Config, generation: int) -> None:
        moved = config.executor != self.config.executor
        self.config = config
        if moved:
            self.link.reconnect(config.executor)
        self.install(self.next_bundle())

    def install(self, package: PipelineBundle) -> None:
        self.link.install(package)

    def drain(self) -> None:
        self.stopping = True

    def kill(self, reason: str) -> None:
        for flight in list(self.flights.values()):
            self.lose(flight, False, reason)
        self.stopping = True

    def close(self, timeout: float) -> None:
        self.link.close(max(timeout, 3.0))

    def reopen_logs(self) -> None:
        """Dask workers keep their own logs; the supervisor reopened its own."""

    # -- chunks -------------------------------------------------------------------------

    def up(self) -> bool:
        return self.state == "up" and self.version >= self.wanted and bool(self.hosts) and not self.stopping

    def free_slots(self) -> int:
        if not self.up():
            return 0
        usable = [h for a, h in self.hosts.items() if a != self.alone_on]
        threads = sum(h.threads for h in usable)
        # One chunk more than threads per worker: its next chunk waits there
        # instead of a round trip through this loop after each result.
        cap = self.config.executor.max_inflight or threads + len(usable)
        return max(0, cap - len(self.flights)) if threads else 0

    def busy_hosts(self) -> set[str]:
        return {f.worker for f in self.flights.values() if f.worker}

    def can_run_alone(self) -> bool:
        return self.up() and not self.alone_on and bool(set(self.hosts) - self.busy_hosts())

    def submit(self, chunk: Chunk, *, alone: bool = False) -> None:
        if chunk.too_long:
            self.finish_too_long(chunk)
            return
        try:
            data = read_chunk(chunk)
        except ChunkFailed as exc:
            self._events.append(Failed(chunk.key, exc.reason, exc.detail, exc.retry))
            return
        workers = None
        if alone:
            self.alone_on = min(set(self.hosts) - self.busy_hosts())
            workers = [self.alone_on]
        elif self.alone_on or self.condemned:
            workers = [a for a in self.hosts if a != self.alone_on]
        token = f"{chunk.job}-{chunk.index}-{next(self.tokens)}"
        flight = _Flight(chunk, token, self.clock.monotonic(), alone, pinned=self.alone_on if alone else "")
        self.flights[token] = flight
        limit = self.config.spool.max_output_ratio * len(data) + OUTPUT_SLACK
        try:
            self.link.submit(token, data, chunk.first_line, self.wanted, limit, workers,
                             chunk.format, chunk.index == 0)
        except Exception as exc:  # noqa: BLE001 - the client is going away: send it again later
            self.lose(flight, False, f"could not submit: {type(exc).__name__}: {exc}")

    def finish_too_long(self, chunk: Chunk) -> None:
        """A chunk that is one over-long line: its error record needs no cluster."""
        part = self.part_path(chunk, "long")
        try:
            data, counts = too_long_output(chunk, self.config.spool.max_line_bytes, self.config.pipeline.stages)
            write_part(part, data, chunk.sync)
        except ChunkFailed as exc:
            self._events.append(Failed(chunk.key, exc.reason, exc.detail, exc.retry))
            return
        except OSError as exc:
            self._events.append(Failed(chunk.key, "unreadable", exc.strerror or str(exc)))
            return
        self._events.append(Done(chunk.key, part, dict(counts), []))

    def part_path(self, chunk: Chunk, token: str) -> str:
        return f"{self.parts_dir}/{os.getpid()}.dask.{chunk.job}.{chunk.index}.{token}.part"

    def lose(self, flight: _Flight, started: bool, cause: str) -> None:
        self.flights.pop(flight.token, None)
        self.link.forget(flight.token)
        if flight.alone:
            self.alone_on = ""
        self.losses["charged" if started else "resent"] += 1
        self._events.append(Lost(flight.chunk, started, cause))

    def inflight(self) -> int:
        return len(self.flights)

    def events(self) -> Iterable[ExecutorEvent]:
        while self._events:
            yield self._events.popleft()

    # -- what the cluster says ---------------------------------------------------------

    def handle(self, notice: Notice) -> None:
        match notice:
            case Finished():
                self.on_finished(notice)
            case Begun(token, worker):
                flight = self.flights.get(token)
                if flight is not None:
                    flight.begun = self.last_progress = self.clock.monotonic()
                    flight.worker = worker
            case WorkersSeen(workers):
                self.see_workers(workers)
            case Connected():
                self.on_connected(notice)
            case Unreachable(scheduler, error, attempt):
                self.tried = True
                if attempt == 1 or attempt % _REPORT_UNREACHABLE_EVERY == 0:
                    self.log.error("dask.scheduler_unreachable", scheduler=scheduler, error=error, attempt=attempt,
                                   note="files wait in incoming/; processing starts when the scheduler answers")
            case SchedulerLost(scheduler, error):
                self.on_scheduler_lost(scheduler, error)
            case Installed(version, error):
                self.on_installed(version, error)
            case Restarted(worker, outcome):
                self.log.warning("dask.worker_restarted", host=worker, outcome=outcome)

    def on_connected(self, notice: Connected) -> None:
        back = self.state == "down"
        self.state = "up"
        self.tried = True
        self.see_workers(notice.workers)
        self.log.info("dask.scheduler_back" if back else "dask.connected", scheduler=notice.scheduler,
                      workers=len(notice.workers), threads=sum(notice.workers.values()))

    def on_scheduler_lost(self, scheduler: str, error: str) -> None:
        self.state = "down"
        held = len(self.flights)
        for flight in list(self.flights.values()):
            self.lose(flight, False, f"scheduler lost: {error}")
        self.log.error("dask.scheduler_lost", scheduler=scheduler, error=error, chunks_in_flight=held,
                       note="chunks in flight are sent again when the scheduler is back")
        self.hosts.clear()
        self.alone_on = ""
        self.version = 0

    def on_installed(self, version: int, error: str) -> None:
        if error:
            self.log.error("dask.pipeline_failed", version=version, error=error, retry_in=_INSTALL_RETRY)
            self.install_at = self.clock.monotonic() + _INSTALL_RETRY
            return
        self.version = max(self.version, version)
        self.log.info("dask.pipeline_installed", version=version, stages=list(self.config.pipeline.stages))

    def see_workers(self, workers: dict[str, int]) -> None:
        now = self.clock.monotonic()
        for address in set(self.hosts) - set(workers):
            self.log.warning("dask.worker_left", host=address)
            self.host_gone(address)
        for address, threads in workers.items():
            if address not in self.hosts and address not in self.condemned:
                self.hosts[address] = _Host(threads, now)
                self.log.info("dask.worker_joined", host=address, threads=threads)

    def host_gone(self, address: str) -> None:
        """A worker left: a retry pinned to it and not begun would wait forever; send it again."""
        self.hosts.pop(address, None)
        for flight in list(self.flights.values()):
            if flight.pinned == address and not flight.begun:
                self.link.cancel(flight.token)
                self.lose(flight, False, f"dask worker {address} left before the retry began")
        if address == self.alone_on and not any(f.pinned == address for f in self.flights.values()):
            self.alone_on = ""

    def on_finished(self, notice: Finished) -> None:
        flight = self.flights.get(notice.token)
        if flight is None:
            return  # already reported lost (timed out, scheduler lost, stopped)
        error = notice.error
        if error is None:
            self.flights.pop(notice.token)
            self.link.forget(notice.token)
            if flight.alone:
                self.alone_on = ""
            self.last_progress = self.clock.monotonic()
            self.finish(flight, notice.value)
        elif isinstance(error, KilledWorker):
            self.worker_died(flight, error)
        elif isinstance(error, StalePipeline):
            self.lose(flight, False, str(error))
            if self.clock.monotonic() >= self.install_at:
                self.install(self.current or bundle(self.config, self.wanted))
        elif isinstance(error, asyncio.CancelledError):
            self.lose(flight, False, "cancelled by the cluster (scheduler connection lost?)")
        else:
            self.lose(flight, True, f"remote error: {type(error).__name__}: {error}"[:300])

    def worker_died(self, flight: _Flight, error: KilledWorker) -> None:
        last = getattr(error, "last_worker", None)
        address = str(getattr(last, "address", "") or flight.worker or "?")
        self.log.error("dask.worker_lost", host=address, file=printable(os.path.basename(flight.chunk.path)),
                       chunk=flight.chunk.index)
        if self.deaths[address] == 0 or address in self.hosts:
            self.totals["worker_restarts"] += 1
        self.deaths[address] += 1
        if flight.bystander:
            self.lose(flight, False, f"dask worker {address} was restarted for another chunk")
        else:
            self.lose(flight, True, f"dask worker {address} died")
        self.host_gone(address)

    def finish(self, flight: _Flight, value: tuple[bytes, dict[str, int], list[Any]]) -> None:
        out, counts, alerts = value
        chunk = flight.chunk
        if "result_bytes" in counts:
            self._events.append(Failed(chunk.key, "result_too_large", (
                f"the records ({counts['result_bytes']} bytes) outgrew {self.config.spool.max_output_ratio} times "
                "the input; limit spool.max_output_ratio")))
            return
        part = self.part_path(chunk, flight.token)
        try:
            writer = PartWriter(part, chunk.end - chunk.start, self.config.spool.max_output_ratio)
            writer.write(out)
            writer.close(chunk.sync)
        except ChunkFailed as exc:
            self._events.append(Failed(chunk.key, exc.reason, exc.detail, exc.retry))
            return
        host = self.hosts.get(flight.worker)
        if host is not None:
            host.chunks_done += 1
            host.lines_done += counts.get("lines", 0)
        self._events.append(Done(chunk.key, part, counts, list(alerts)))

    # -- timers and health ---------------------------------------------------------

    def overdue(self, now: float) -> list[_Flight]:
        """Chunks past heartbeat_timeout since they began (three times that if never seen beginning)."""
        limit = self.config.workers.heartbeat_timeout
        return [f for f in self.flights.values()
                if (f.begun and now - f.begun > limit) or (not f.begun and now - f.sent > 3 * limit)]

    def tick(self, now: float) -> None:
        for flight in self.overdue(now):
            age = now - (flight.begun or flight.sent)
            self.log.error("dask.chunk_timeout", host=flight.worker or "?", age=round(age, 1),
                           file=printable(os.path.basename(flight.chunk.path)), chunk=flight.chunk.index)
            self.link.cancel(flight.token)
            if flight.worker:
                self.condemn(flight.worker, now)
            limit = self.config.workers.heartbeat_timeout
            self.lose(flight, True, f"no result for {age:.1f}s (heartbeat_timeout={limit})")
        if now >= self.refresh_at:
            self.refresh_at = now + _REFRESH_EVERY
            if self.current is not None and self.current.changed():
                self.refresh()  # a list or database was replaced: the workers get the new contents
        for address, until in list(self.condemned.items()):
            if now >= until:
                del self.condemned[address]
        if self.state == "up" and self.version < self.wanted and self.install_at and now >= self.install_at:
            self.install_at = 0.0
            self.install(self.current or bundle(self.config, self.wanted))

    def condemn(self, address: str, now: float) -> None:
        """Restart a worker (its hung thread cannot be stopped otherwise); nothing new goes to it."""
        if address in self.condemned:
            return  # restarting already (two chunks timed out there at once)
        self.condemned[address] = now + _CONDEMNED_FOR
        for other in self.flights.values():
            if other.worker == address:
                other.bystander = True
        self.host_gone(address)
        self.link.restart(address)

    def ready(self) -> bool:
        # Waiting for an unreachable scheduler is a state of a running daemon
        # (dask.scheduler_unreachable says so), not a failed start.
        return (self.state == "up" and self.version >= self.wanted) or (self.state != "up" and self.tried)

    def healthy(self, now: float) -> bool:
        return not self.overdue(now)

    def progress_mark(self) -> float:
        return self.last_progress if self.flights else 0.0

    def alive(self) -> int:
        return len(self.hosts)

    def census(self) -> Census:
        return Census(self.kind, len(self.hosts), sum(h.threads for h in self.hosts.values()), len(self.flights),
                      scheduler=self.config.executor.scheduler, connected=self.state == "up")

    def describe(self, now: float) -> list[dict[str, Any]]:
        rows = []
        for slot, (address, host) in enumerate(sorted(self.hosts.items())):
            held = [f for f in self.flights.values() if f.worker == address]
            rows.append({
                "slot": slot, "pid": 0, "host": address, "executor": self.kind, "threads": host.threads,
                "ready": True, "retiring": False, "state": "alone" if address == self.alone_on else "ready",
                "inflight": len(held), "heartbeat_age": round(max((now - f.begun for f in held), default=0.0), 3),
                "uptime": round(now - host.joined, 1), "restarts": self.deaths[address],
                "chunks_done": host.chunks_done, "lines_done": host.lines_done,
                "current": sorted({printable(os.path.basename(f.chunk.path)) for f in held})[:3],
            })
        waiting = sum(1 for f in self.flights.values() if not f.worker)
        rows.append({"slot": "queued", "pid": 0, "host": self.config.executor.scheduler, "executor": self.kind,
                     "scheduler_state": self.state, "pipeline_version": self.version, "ready": self.up(),
                     "retried": self.losses["charged"], "resent": self.losses["resent"],
                     "retiring": False, "state": self.state, "inflight": waiting, "heartbeat_age": 0.0,
                     "uptime": 0.0, "restarts": 0, "current": []})
        return rows
