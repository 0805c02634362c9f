"""The daemon's connection to a Dask scheduler, kept off the supervisor's loop.

A Dask ``Client`` runs its own event loop thread; every call that waits on
the network (connecting, installing a pipeline, probing, restarting a
worker) runs on one more thread of ours, the control thread, so the
supervisor's loop never blocks. Only ``submit`` is called from the loop: it
hands the task to the client's thread and returns at once.

What the link learns becomes a ``Notice`` passed to ``post`` (the executor
queues it and wakes its loop through a pipe): a result or error of a task
(fetched by a coroutine on the client's loop), a task that began and where, the
workers and their threads, the scheduler answering, unreachable, lost or
replaced, a pipeline version installed.

On every connection the link sets the scheduler's ``allowed_failures`` to 0:
a task whose worker dies is then an error (``KilledWorker``) for us to
judge, never silently rerun by Dask, so each death is one attempt in the
job book. The cluster should therefore serve ipspool alone.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import distributed
from distributed.security import Security

from ipspool.config import ExecutorConfig
from ipspool.dask_remote import STARTED_TOPIC, PipelineBundle, PipelinePlugin, run_chunk
from ipspool.formats import Format

__all__ = ["Begun", "ClusterLink", "Connected", "Finished", "Installed", "Notice", "Restarted", "SchedulerLost",
           "Unreachable", "WorkersSeen", "check_scheduler", "probe_scheduler", "security_for"]

POLL_EVERY = 1.0        # seconds between looks at the scheduler (workers, identity)
RETRY_EVERY = 2.0       # seconds between connection attempts

# distributed's API is only partly annotated: its client and futures are Any here.
_Client: Any = distributed.Client
_Security: Any = Security
Future = Any


@dataclass(frozen=True)
class Finished:
    token: str
    value: Any
    error: BaseException | None


@dataclass(frozen=True)
class Begun:
    token: str
    worker: str


@dataclass(frozen=True)
class Connected:
    scheduler: str
    workers: dict[str, int]


@dataclass(frozen=True)
class Unreachable:
    scheduler: str
    error: str
    attempt: int


@dataclass(frozen=True)
class SchedulerLost:
    scheduler: str
    error: str


@dataclass(frozen=True)
class WorkersSeen:
    workers: dict[str, int]


@dataclass(frozen=True)
class Installed:
    version: int
    error: str = ""  # set: the workers could not load it


@dataclass(frozen=True)
class Restarted:
    worker: str
    outcome: str


Notice = Finished | Begun | Connected | Unreachable | SchedulerLost | WorkersSeen | Installed | Restarted


def security_for(settings: ExecutorConfig) -> Any:
    if not settings.scheduler.startswith("tls://"):
        return None
    return _Security(tls_ca_file=settings.tls_ca_file, tls_client_cert=settings.tls_cert_file,
                    tls_client_key=settings.tls_key_file, require_encryption=True)


def check_scheduler(settings: ExecutorConfig) -> str:
    """One connection attempt: a summary of the cluster, or ConnectionError saying why not."""
    try:
        client = _Client(settings.scheduler, security=security_for(settings), timeout=settings.connect_timeout,
                         set_as_default=False, name="ipspool-check")
    except Exception as exc:  # noqa: BLE001 - every reason is reported to the operator
        raise ConnectionError(f"{type(exc).__name__}: {exc}"[:300]) from None
    try:
        workers = client.scheduler_info()["workers"]
        threads = sum(int(w["nthreads"]) for w in workers.values())
        return f"{len(workers)} worker(s), {threads} thread(s)"
    finally:
        client.close(timeout=2)


def probe_scheduler(dask_scheduler: Any) -> tuple[str, dict[str, int]]:
    """On the scheduler: its identity and workers; no task is ever rerun behind our back."""
    dask_scheduler.allowed_failures = 0
    return dask_scheduler.id, {ws.address: ws.nthreads for ws in dask_scheduler.workers.values()}


class ClusterLink:
    """One Dask client and the control thread doing its blocking calls."""

    def __init__(self, settings: ExecutorConfig, post: Callable[[Notice], None]) -> None:
        self.settings = settings
        self.post = post
        self.client: Any = None
        self.scheduler_id = ""
        self.futures: dict[str, Future] = {}
        self.bundle: PipelineBundle | None = None
        self.commands: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self.closing = threading.Event()
        self.thread = threading.Thread(target=self.run, name="dask-control", daemon=True)

    # -- called from the supervisor's loop ------------------------------------

    def start(self, package: PipelineBundle) -> None:
        self.bundle = package
        self.thread.start()

    def submit(self, token: str, data: bytes, first_line: int, version: int, limit: int,
               workers: list[str] | None, fmt: Format | None = None, first_chunk: bool = True) -> None:
        """Hand one task to the client's thread; RuntimeError when not connected."""
        client = self.client
        if client is None or client.status != "running":
            raise RuntimeError("not connected to the scheduler")
        future = client.submit(run_chunk, token, data, first_line, version, limit, fmt, first_chunk,
                               key=f"ipspool-{token}",
                               pure=False, retries=0, workers=workers, allow_other_workers=False)
        self.futures[token] = future
        client.loop.add_callback(self._collect, token, future)

    def forget(self, token: str) -> None:
        self.futures.pop(token, None)

    def cancel(self, token: str) -> None:
        future = self.futures.pop(token, None)
        if future is not None:
            self.commands.put(partial(self._cancel, future))

    def install(self, package: PipelineBundle) -> None:
        self.bundle = package
        self.commands.put(partial(self._install, package))

    def restart(self, worker: str) -> None:
        self.commands.put(partial(self._restart, worker))

    def reconnect(self, settings: ExecutorConfig) -> None:
        self.commands.put(partial(self._drop, settings, "the [executor] settings changed"))

    def close(self, timeout: float) -> None:
        self.closing.set()
        self.commands.put(lambda: None)
        self.thread.join(timeout)

    # -- the control thread --------------------------------------------------------

    def run(self) -> None:
        attempt = 0
        while not self.closing.is_set():
            if self.client is None:
                attempt += 1
                if not self._connect(attempt):
                    self.closing.wait(RETRY_EVERY)
                    continue
                attempt = 0
            try:
                command = self.commands.get(timeout=POLL_EVERY)
            except queue.Empty:
                command = None
            if command is not None:
                command()
            if self.client is not None and not self.closing.is_set():
                self._poll()
        self._close_client()

    def _connect(self, attempt: int) -> bool:
        address = self.settings.scheduler
        try:
            client = _Client(address, security=security_for(self.settings), timeout=self.settings.connect_timeout,
                            set_as_default=False, name="ipspool")
        except Exception as exc:  # noqa: BLE001 - any failure to connect is reported and retried
            self.post(Unreachable(address, f"{type(exc).__name__}: {exc}"[:300], attempt))
            return False
        try:
            self.scheduler_id, workers = client.run_on_scheduler(probe_scheduler)
            client.subscribe_topic(STARTED_TOPIC, self._begun)
            if self.bundle is not None:
                self._register(client, self.bundle)
        except Exception as exc:  # noqa: BLE001 - the scheduler went away during set-up: try again
            client.close(timeout=2)
            self.post(Unreachable(address, f"during set-up: {type(exc).__name__}: {exc}"[:300], attempt))
            return False
        self.client = client
        self.post(Connected(address, workers))
        if self.bundle is not None:
            self.post(Installed(self.bundle.version))
        return True

    def _register(self, client: Any, package: PipelineBundle) -> None:
        plugin = PipelinePlugin(package)
        if hasattr(client, "register_plugin"):
            client.register_plugin(plugin, name=plugin.name)
        else:  # distributed before 2023.9
            client.register_worker_plugin(plugin, name=plugin.name)

    def _poll(self) -> None:
        client = self.client
        assert client is not None
        try:
            if client.status != "running":
                raise ConnectionError(f"client is {client.status}")
            info = client.scheduler_info()
            identity = info["id"]
            workers = {address: int(w["nthreads"]) for address, w in info["workers"].items()}
        except Exception as exc:  # noqa: BLE001 - every failure here means the scheduler is gone
            self._drop(self.settings, f"{type(exc).__name__}: {exc}"[:300])
            return
        if identity != self.scheduler_id:
            # A new scheduler behind the same address (the client reconnected
            # by itself): it has neither our plugin nor our subscription.
            self._drop(self.settings, "the scheduler was restarted")
            return
        self.post(WorkersSeen(workers))

    def _drop(self, settings: ExecutorConfig, why: str) -> None:
        self.post(SchedulerLost(self.settings.scheduler, why))
        self._close_client()
        self.settings = settings

    def _close_client(self) -> None:
        client, self.client = self.client, None
        self.futures.clear()
        if client is not None:
            try:
                client.close(timeout=2)
            except Exception:  # noqa: BLE001, S110 - a client of a dead scheduler may fail to close; it is dropped
                pass

    def _install(self, package: PipelineBundle) -> None:
        if self.client is None:
            return  # installed on connection
        try:
            self._register(self.client, package)
        except Exception as exc:  # noqa: BLE001 - reported; the executor retries
            self.post(Installed(package.version, f"{type(exc).__name__}: {exc}"[:500]))
            return
        self.post(Installed(package.version))

    def _cancel(self, future: Future) -> None:
        if self.client is not None:
            try:
                self.client.cancel([future], reason="ipspool gave up on this chunk")
            except Exception:  # noqa: BLE001, S110 - the scheduler is gone: nothing left to cancel
                pass

    def _restart(self, worker: str) -> None:
        if self.client is None:
            return
        try:
            outcome = self.client.restart_workers([worker], timeout=30, raise_for_error=False)
            self.post(Restarted(worker, str(outcome.get(worker, outcome))))
        except Exception as exc:  # noqa: BLE001 - reported: without a nanny a worker cannot be restarted
            self.post(Restarted(worker, f"{type(exc).__name__}: {exc}"[:300]))

    # -- Dask's threads -----------------------------------------------------------

    async def _collect(self, token: str, future: Future) -> None:
        """On the client's loop: wait for the task, fetch its result (or error), pass it on.

        One coroutine per task, so results are fetched concurrently; Dask's
        done-callbacks run on one thread, where each blocking fetch would
        wait for the one before (60 small files a second at most).
        """
        try:
            value = await future._result()
        except BaseException as exc:  # noqa: BLE001 - every outcome (cancelled included) is the executor's to judge
            self.post(Finished(token, None, exc))
            return
        self.post(Finished(token, value, None))

    def _begun(self, event: tuple[float, dict[str, str]]) -> None:
        """On the client's loop thread: a task reported its start."""
        message = event[1]
        self.post(Begun(str(message.get("token", "")), str(message.get("worker", ""))))
