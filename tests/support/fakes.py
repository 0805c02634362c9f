"""Fake parts for deciding-without-processes tests: a clock, worker processes, an executor."""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from ipspool.chunking import Chunk
from ipspool.config import Config
from ipspool.executor import Census
from ipspool.protocol import ExecutorEvent


class FakeClock:
    """Time that moves only when a test says so."""

    def __init__(self, start: float = 1000.0, wall: float = 1_700_000_000.0) -> None:
        self.now = start
        self.wall = wall

    def monotonic(self) -> float:
        return self.now

    def time(self) -> float:
        return self.wall + (self.now - 1000.0)

    def advance(self, seconds: float) -> None:
        self.now += seconds


class FakeSelector:
    """Records what the pool registers; nothing is ever ready by itself."""

    def __init__(self) -> None:
        self.registered: dict[Any, Any] = {}

    def register(self, fileobj: Any, events: int, data: Any = None) -> None:
        self.registered[fileobj] = data

    def unregister(self, fileobj: Any) -> None:
        if fileobj not in self.registered:
            raise KeyError(fileobj)
        del self.registered[fileobj]


class FakeConn:
    def __init__(self) -> None:
        self.sent: list[Any] = []
        self.inbox: deque[Any] = deque()
        self.closed = False

    def send(self, obj: Any) -> None:
        self.sent.append(obj)

    def recv(self) -> Any:
        return self.inbox.popleft()

    def poll(self, timeout: float | None = None) -> bool:
        return bool(self.inbox)

    def close(self) -> None:
        self.closed = True

    def fileno(self) -> int:
        return -1


@dataclass
class FakeHeartbeat:
    value: float


_pids = itertools.count(4000)


@dataclass
class FakeProcess:
    heartbeat: FakeHeartbeat
    pid: int = field(default_factory=lambda: next(_pids))
    conn: FakeConn = field(default_factory=FakeConn)
    code: int | None = None
    killed: bool = False

    @property
    def sentinel(self) -> int:
        return -self.pid

    @property
    def exitcode(self) -> int | None:
        return self.code

    def is_alive(self) -> bool:
        return self.code is None

    def kill(self) -> None:
        self.killed = True

    def join(self, timeout: float | None = None) -> None:
        pass


class FakeLauncher:
    def __init__(self, clock: FakeClock, parts_dir: str = "/nonexistent") -> None:
        self.clock = clock
        self.parts_dir = parts_dir
        self.launched: list[FakeProcess] = []

    def launch(self, slot: int, config: Config) -> FakeProcess:
        proc = FakeProcess(FakeHeartbeat(self.clock.monotonic()))
        self.launched.append(proc)
        return proc


class FakeExecutor:
    """An executor whose workers are the test: chunks wait until the test reports on them."""

    kind = "fake"

    def __init__(self, slots: int = 2) -> None:
        self.slots = slots
        self.submitted: list[tuple[Chunk, bool]] = []
        self.out: dict[tuple[int, int], Chunk] = {}
        self.queue: deque[ExecutorEvent] = deque()
        self.mark = 0.0
        self.calls: list[str] = []
        self.is_ready = True
        self.threads = 4
        self.scheduler = ""

    def start(self, selector: Any) -> None:
        self.calls.append("start")

    def free_slots(self) -> int:
        return max(0, self.slots - len(self.out))

    def can_run_alone(self) -> bool:
        return not self.out and self.slots > 0

    def submit(self, chunk: Chunk, *, alone: bool = False) -> None:
        self.submitted.append((chunk, alone))
        self.out[chunk.key] = chunk

    def report(self, event: ExecutorEvent, key: tuple[int, int]) -> None:
        self.out.pop(key, None)
        self.queue.append(event)

    def events(self) -> Iterable[ExecutorEvent]:
        while self.queue:
            yield self.queue.popleft()

    def tick(self, now: float) -> None:
        pass

    def inflight(self) -> int:
        return len(self.out)

    def ready(self) -> bool:
        return self.is_ready

    def healthy(self, now: float) -> bool:
        return True

    def progress_mark(self) -> float:
        return self.mark

    def refresh(self) -> None:
        self.calls.append("refresh")

    def reconfigure(self, config: Config, generation: int) -> None:
        self.calls.append(f"reconfigure {generation}")

    def drain(self) -> None:
        self.calls.append("drain")

    def kill(self, reason: str) -> None:
        self.calls.append(f"kill {reason}")

    def close(self, timeout: float) -> None:
        self.calls.append("close")

    def reopen_logs(self) -> None:
        self.calls.append("reopen")

    def describe(self, now: float) -> list[dict[str, Any]]:
        return []

    def alive(self) -> int:
        return self.slots

    def census(self) -> Census:
        return Census(self.kind, self.slots, self.slots * self.threads, len(self.out), wanted=self.slots,
                      scheduler=self.scheduler)


class FakeNotifier:
    enabled = True

    def __init__(self) -> None:
        self.sent: list[tuple[str, Any]] = []

    def __getattr__(self, name: str) -> Any:
        return lambda *args: self.sent.append((name, args)) or True
