"""The local executor: a fixed set of forked worker processes, one per core.

``WorkerPool`` owns every decision about its workers: spawning them through
the forkserver, handing out chunks (least loaded first; a retry alone on an
idle worker), noticing silent ones (a heartbeat older than
``heartbeat_timeout`` while holding work: SIGKILL), replacing the dead with
back-off, and halting when workers cannot even start (gunicorn's
WORKER_BOOT_ERROR lesson). What a worker held when it died comes back to the
job book as ``Lost`` events, with whether it was in progress, so the job
book can charge attempts; the pool itself never decides a file's fate.

Processes come from a ``Launcher``; tests give the pool fake ones and a fake
clock and drive every decision without forking or sleeping.
"""

from __future__ import annotations

import os
import selectors
import signal
from collections import Counter, deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from multiprocessing.context import BaseContext
from pathlib import Path
from typing import Any, Protocol

from ipspool.chunking import Chunk
from ipspool.clock import Clock
from ipspool.config import Config
from ipspool.executor import Census
from ipspool.exitcodes import ExitCode
from ipspool.logs import get_logger
from ipspool.parts import part_path
from ipspool.protocol import (
    ChunkKey,
    Done,
    ExecutorEvent,
    Failed,
    FromWorker,
    Halted,
    Heartbeat,
    Lost,
    Ready,
    Refresh,
    RunChunk,
    Started,
    Stop,
    ToWorker,
    UnitExited,
)
from ipspool.spool import printable
from ipspool.states import WorkerState, advance

__all__ = ["ForkserverLauncher", "Launcher", "WorkerHandle", "WorkerPool", "WorkerProcess"]

BOOT_FAILURE_LIMIT = 5     # workers dying before "ready" in a row: halt
HEALTHY_AFTER = 30.0       # a worker alive this long resets the back-off
MAX_BACKOFF = 30.0
SPAWN_RETRY = 0.5          # seconds before a spawn that could not reach the forkserver is tried again


class Channel(Protocol):
    """The supervisor's end of a worker's pipe."""

    @property
    def closed(self) -> bool: ...

    def send(self, obj: Any) -> None: ...
    def recv(self) -> Any: ...
    def poll(self, timeout: float | None = ...) -> bool: ...
    def close(self) -> None: ...
    def fileno(self) -> int: ...


class WorkerProcess(Protocol):
    """One started worker, as the pool sees it."""

    pid: int
    conn: Channel
    heartbeat: Heartbeat
    sentinel: int

    @property
    def exitcode(self) -> int | None: ...
    def is_alive(self) -> bool: ...
    def kill(self) -> None: ...
    def join(self, timeout: float | None = None) -> None: ...


class Launcher(Protocol):
    parts_dir: str  # where its workers write their parts

    def launch(self, slot: int, config: Config) -> WorkerProcess: ...


@dataclass
class _Forked:
    process: Any  # multiprocessing's Process of the forkserver context
    conn: Channel
    heartbeat: Heartbeat
    pid: int
    sentinel: int

    @property
    def exitcode(self) -> int | None:
        code: int | None = self.process.exitcode
        return code

    def is_alive(self) -> bool:
        return bool(self.process.is_alive())

    def kill(self) -> None:
        self.process.kill()

    def join(self, timeout: float | None = None) -> None:
        self.process.join(timeout)


class ForkserverLauncher:
    """Workers forked by the multiprocessing forkserver, never by the (threaded) supervisor."""

    def __init__(self, ctx: BaseContext, runtime_dir: Path, authkey: bytes, parts_dir: Path, clock: Clock) -> None:
        self.ctx = ctx
        self.runtime_dir = str(runtime_dir)
        self.authkey = authkey
        self.parts_dir = str(parts_dir)
        self.clock = clock

    def launch(self, slot: int, config: Config) -> WorkerProcess:
        from ipspool.worker import worker_main

        parent, child = self.ctx.Pipe(duplex=True)
        heartbeat = self.ctx.RawValue("d", self.clock.monotonic())
        process = self.ctx.Process(  # type: ignore[attr-defined]
            target=worker_main, name=f"ipspool-worker-{slot}",
            args=(slot, child, heartbeat, config, self.runtime_dir, self.authkey, self.parts_dir),
        )
        process.start()
        child.close()  # only the worker may hold its end: EOF then means "supervisor gone"
        return _Forked(process, parent, heartbeat, process.pid, process.sentinel)


@dataclass
class WorkerHandle:
    slot: int
    proc: WorkerProcess
    born: float
    generation: int
    state: WorkerState = WorkerState.STARTING
    was_ready: bool = False      # reached READY once: a death after that is no boot failure
    killed_for: str = ""
    inflight: dict[ChunkKey, Chunk] = field(default_factory=dict)
    started: set[ChunkKey] = field(default_factory=set)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def move(self, state: WorkerState) -> None:
        self.state = advance(self.state, state)


class WorkerPool:
    """The forked per-core executor."""

    kind = "local"

    def __init__(self, config: Config, launcher: Launcher, clock: Clock, totals: Counter[str]) -> None:
        self.config = config
        self.launcher = launcher
        self.clock = clock
        self.totals = totals  # worker_restarts is counted there
        self.log = get_logger()
        self.generation = 0
        self.workers: dict[int, WorkerHandle] = {}          # by pid, every live process
        self.slots: dict[int, WorkerHandle | None] = {}     # the current generation, by slot
        self.respawn_at: dict[int, float] = {}
        self.slot_restarts: Counter[int] = Counter()
        self.deaths_in_a_row = 0
        self.boot_failures = 0
        self.stopping = False
        self.selector: selectors.BaseSelector | None = None
        self._events: deque[ExecutorEvent] = deque()

    # -- life of the pool ---------------------------------------------------

    def start(self, selector: selectors.BaseSelector) -> None:
        self.selector = selector
        for slot in range(self.config.process_count):
            self.spawn(slot)

    def spawn(self, slot: int) -> None:
        assert self.selector is not None
        try:
            proc = self.launcher.launch(slot, self.config)
        except (OSError, EOFError) as exc:
            # The forkserver died (someone killed it): multiprocessing starts
            # a new one at the next launch once the old one is reaped. Try
            # again in a moment instead of taking the supervisor down.
            self.slots[slot] = None
            self.respawn_at[slot] = self.clock.monotonic() + SPAWN_RETRY
            self.log.error("worker.spawn_failed", worker=slot, error=f"{type(exc).__name__}: {exc}",
                           retry_in=SPAWN_RETRY)
            return
        worker = WorkerHandle(slot, proc, self.clock.monotonic(), self.generation)
        self.workers[proc.pid] = worker
        self.slots[slot] = worker
        self.selector.register(proc.conn, selectors.EVENT_READ, lambda _o, w=worker: self.on_readable(w))
        self.selector.register(proc.sentinel, selectors.EVENT_READ, lambda _o, w=worker: self.on_exit(w))
        self.log.info("worker.spawned", worker=slot, worker_pid=proc.pid, generation=self.generation)

    def reconfigure(self, config: Config, generation: int) -> None:
        self.config = config
        self.generation = generation
        for worker in list(self.workers.values()):
            self.retire(worker)
        self.slots = {}
        for slot in range(config.process_count):
            self.spawn(slot)

    def refresh(self) -> None:
        for worker in self.workers.values():
            if worker.state is not WorkerState.RETIRING:
                self.send(worker, Refresh())

    def drain(self) -> None:
        """No more respawns; each worker exits once it holds nothing."""
        self.stopping = True
        for worker in list(self.workers.values()):
            if not worker.inflight:
                self.retire(worker)

    def retire(self, worker: WorkerHandle) -> None:
        """Let a worker finish what it holds, then exit (reload, stop)."""
        if worker.state in (WorkerState.RETIRING, WorkerState.KILLED, WorkerState.EXITED):
            return
        worker.move(WorkerState.RETIRING)
        self.send(worker, Stop())

    def kill(self, reason: str) -> None:
        for worker in self.workers.values():
            self.kill_one(worker, reason)

    def kill_one(self, worker: WorkerHandle, reason: str) -> None:
        worker.killed_for = worker.killed_for or reason
        if worker.state is not WorkerState.EXITED:
            worker.move(WorkerState.KILLED)
        if worker.proc.is_alive():
            worker.proc.kill()

    def close(self, timeout: float) -> None:
        deadline = self.clock.monotonic() + timeout
        for worker in list(self.workers.values()):
            worker.proc.join(max(0.0, deadline - self.clock.monotonic()))
        for worker in list(self.workers.values()):
            if worker.proc.is_alive():
                worker.proc.kill()
            worker.proc.join(5)

    def reopen_logs(self) -> None:
        for worker in self.workers.values():
            try:
                os.kill(worker.pid, signal.SIGUSR1)  # each worker reopens its own
            except ProcessLookupError:
                pass

    # -- chunks -------------------------------------------------------------

    def capacity(self, worker: WorkerHandle) -> int:
        if worker.state is not WorkerState.READY or worker.killed_for:
            return 0
        return max(0, self.config.inflight_per_worker - len(worker.inflight))

    def current(self) -> list[WorkerHandle]:
        return [w for w in self.slots.values() if w is not None]

    def free_slots(self) -> int:
        return 0 if self.stopping else sum(self.capacity(w) for w in self.current())

    def can_run_alone(self) -> bool:
        return not self.stopping and any(self.capacity(w) and not w.inflight for w in self.current())

    def submit(self, chunk: Chunk, *, alone: bool = False) -> None:
        able = [w for w in self.current() if self.capacity(w) and not (alone and w.inflight)]
        if not able:
            raise RuntimeError("submit without capacity")  # the job book asks free_slots() first
        worker = min(able, key=lambda w: len(w.inflight))
        if alone:
            worker.move(WorkerState.ALONE)
        worker.inflight[chunk.key] = chunk
        self.send(worker, RunChunk(chunk))

    def inflight(self) -> int:
        return sum(len(w.inflight) for w in self.workers.values())

    def events(self) -> Iterable[ExecutorEvent]:
        while self._events:
            yield self._events.popleft()

    @staticmethod
    def send(worker: WorkerHandle, message: ToWorker) -> None:
        try:
            worker.proc.conn.send(message)
        except OSError:
            pass  # the worker is dead; its sentinel will hand its chunks back

    # -- what workers say -----------------------------------------------------

    def on_readable(self, worker: WorkerHandle) -> None:
        conn = worker.proc.conn
        while True:
            # Only the pipe's own errors mean the worker is gone; an error
            # while handling a message must not cut off a live worker.
            try:
                if conn.closed or not conn.poll():
                    return
                message = conn.recv()
            except (EOFError, OSError):
                self._unregister(conn)  # the sentinel reports the death
                return
            self.handle(worker, message)

    def handle(self, worker: WorkerHandle, message: FromWorker) -> None:
        match message:
            case Started(key):
                worker.started.add(key)
            case Done(key) | Failed(key):
                chunk = worker.inflight.pop(key, None)
                worker.started.discard(key)
                if worker.state is WorkerState.ALONE and not worker.inflight:
                    worker.move(WorkerState.READY)
                if isinstance(message, Done):
                    self.deaths_in_a_row = 0
                if chunk is not None or isinstance(message, Done):
                    self._events.append(message)
                if self.stopping and not worker.inflight:
                    self.retire(worker)
            case Ready():
                if worker.state is WorkerState.STARTING:
                    worker.move(WorkerState.READY)
                worker.was_ready = True
                self.boot_failures = 0
            case _:
                self.log.error("worker.bad_message", worker=worker.slot, message=repr(message)[:200])

    def ready(self) -> bool:
        current = self.current()
        return bool(current) and all(w.was_ready for w in current)

    def alive(self) -> int:
        return sum(1 for w in self.current() if w.was_ready)

    def census(self) -> Census:
        alive = self.alive()
        return Census(self.kind, alive, alive * self.config.workers.threads, self.inflight(),
                      wanted=self.config.process_count)

    # -- deaths ---------------------------------------------------------------

    def _unregister(self, fileobj: Any) -> None:
        assert self.selector is not None
        try:
            self.selector.unregister(fileobj)
        except (KeyError, ValueError):
            pass

    def on_exit(self, worker: WorkerHandle) -> None:
        self.on_readable(worker)  # its last "done" messages may still be in the pipe
        self._unregister(worker.proc.sentinel)
        self._unregister(worker.proc.conn)
        worker.proc.join(1)
        worker.proc.conn.close()
        code = worker.proc.exitcode
        if code == 255:
            # 255 is also what multiprocessing reports when the forkserver
            # died and took the real status with it: make sure it is dead.
            try:
                os.kill(worker.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        retiring = worker.state is WorkerState.RETIRING
        worker.move(WorkerState.EXITED)
        del self.workers[worker.pid]
        if self.slots.get(worker.slot) is worker:
            self.slots[worker.slot] = None
        self._events.append(UnitExited(worker.pid))
        if retiring and code == 0 and not worker.inflight:
            self.log.info("worker.stopped", worker=worker.slot, worker_pid=worker.pid)
            return
        self.died(worker, code, retiring)

    def died(self, worker: WorkerHandle, code: int | None, retiring: bool) -> None:
        now = self.clock.monotonic()
        cause = worker.killed_for or (f"signal {-code}" if code is not None and code < 0 else f"exit code {code}")
        self.log.error("worker.died", worker=worker.slot, worker_pid=worker.pid, exit_code=code, cause=cause,
                       chunks_in_flight=len(worker.inflight), uptime=round(now - worker.born, 3))
        if not self.stopping:
            self.totals["worker_restarts"] += 1
            self.slot_restarts[worker.slot] += 1
        for key, chunk in worker.inflight.items():
            self._remove_part(worker, chunk)
            self._events.append(Lost(chunk, key in worker.started, cause))
        worker.inflight.clear()
        if not worker.was_ready:
            self.boot_failures += 1
            if code == ExitCode.WORKER_BOOT_ERROR or self.boot_failures >= BOOT_FAILURE_LIMIT:
                self._events.append(Halted(f"workers cannot start ({self.boot_failures} in a row, last: {cause})"))
                self.stopping = True
                self.kill("halt")
                return
        if self.stopping or retiring:
            return
        self.respawn_at[worker.slot] = now + self.backoff(now - worker.born)
        delay = self.respawn_at[worker.slot] - now
        if delay:
            self.log.warning("worker.backoff", worker=worker.slot, delay=delay, deaths_in_a_row=self.deaths_in_a_row)

    def _remove_part(self, worker: WorkerHandle, chunk: Chunk) -> None:
        """What a dead worker wrote of a chunk it never finished is of no use to anyone."""
        try:
            os.unlink(part_path(self.launcher.parts_dir, worker.pid, chunk))
        except FileNotFoundError:
            pass

    def backoff(self, lived: float) -> float:
        """Seconds before the next respawn: none for a lone death, doubling for a run of them."""
        if lived > HEALTHY_AFTER:
            self.deaths_in_a_row = 0
        self.deaths_in_a_row += 1
        if self.deaths_in_a_row <= 1:
            return 0.0
        return float(min(MAX_BACKOFF, 0.1 * 2 ** (self.deaths_in_a_row - 1)))

    # -- timers ---------------------------------------------------------------

    def tick(self, now: float) -> None:
        self.check_heartbeats(now)
        self.respawn_due(now)

    def respawn_due(self, now: float) -> None:
        if self.stopping:
            return
        for slot in range(self.config.process_count):
            if self.slots.get(slot) is None and now >= self.respawn_at.get(slot, 0.0):
                self.spawn(slot)
                self.log.info("worker.replaced", worker=slot)

    def check_heartbeats(self, now: float) -> None:
        limit = self.config.workers.heartbeat_timeout
        for worker in self.workers.values():
            if worker.killed_for or worker.state is WorkerState.EXITED:
                continue
            age = now - worker.proc.heartbeat.value
            if age > limit and (worker.inflight or not worker.was_ready):
                self.log.error("worker.timeout", worker=worker.slot, worker_pid=worker.pid, age=round(age, 1),
                               chunks_in_flight=len(worker.inflight))
                self.kill_one(worker, f"no progress for {age:.1f}s (heartbeat_timeout={limit})")

    def healthy(self, now: float) -> bool:
        limit = self.config.workers.heartbeat_timeout
        live = self.current()
        return bool(live) and all(now - w.proc.heartbeat.value <= limit or not w.inflight for w in live)

    def progress_mark(self) -> float:
        return max((w.proc.heartbeat.value for w in self.workers.values() if w.inflight), default=0.0)

    def describe(self, now: float) -> list[dict[str, Any]]:
        return [
            {"slot": w.slot, "pid": w.pid, "ready": w.was_ready, "retiring": w.state is WorkerState.RETIRING,
             "state": w.state.value, "inflight": len(w.inflight),
             "heartbeat_age": round(now - w.proc.heartbeat.value, 3),
             "uptime": round(now - w.born, 1), "restarts": self.slot_restarts[w.slot],
             "current": sorted({printable(os.path.basename(c.path)) for c in w.inflight.values()})[:3]}
            for w in sorted(self.workers.values(), key=lambda w: (w.slot, w.pid))
        ]
