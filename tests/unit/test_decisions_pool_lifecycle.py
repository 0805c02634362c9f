"""The worker pool's deaths, exits, messages and status, with fake processes and a fake clock."""

from __future__ import annotations

import os
import signal
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from ipspool.chunking import Chunk
from ipspool.config import Config, load_config
from ipspool.exitcodes import ExitCode
from ipspool.pool import BOOT_FAILURE_LIMIT, HEALTHY_AFTER, ForkserverLauncher, WorkerHandle, WorkerPool
from ipspool.protocol import Done, Failed, Halted, Lost, Ready, Refresh, RunChunk, Started, UnitExited
from ipspool.states import WorkerState
from tests.support.fakes import FakeClock, FakeConn, FakeHeartbeat, FakeLauncher, FakeProcess, FakeSelector


def make_pool(tmp_path: Path, processes: int = 1, threads: int = 2, clock: FakeClock | None = None,
              **workers: object) -> tuple[WorkerPool, FakeClock, FakeLauncher, FakeSelector]:
    config = load_config(None, spool=str(tmp_path / "spool"))
    config = config.model_copy(update={"workers": config.workers.model_copy(
        update={"processes": processes, "threads": threads, **workers})})
    clock = clock or FakeClock()
    launcher = FakeLauncher(clock)
    selector = FakeSelector()
    pool = WorkerPool(config, launcher, clock, Counter())
    pool.start(selector)  # type: ignore[arg-type]
    return pool, clock, launcher, selector


def ready_all(pool: WorkerPool) -> None:
    for worker in list(pool.workers.values()):
        pool.handle(worker, Ready(worker.pid))


def chunk(job: int = 1, index: int = 0, name: str = "") -> Chunk:
    return Chunk(job, index, f"/spool/active/{name or f'f{job}'}", index * 10, index * 10 + 10, index + 1)


def proc_of(worker: WorkerHandle) -> FakeProcess:
    assert isinstance(worker.proc, FakeProcess)
    return worker.proc


def die(pool: WorkerPool, worker: WorkerHandle, code: int = -9) -> None:
    proc_of(worker).code = code
    pool.on_exit(worker)


def only(pool: WorkerPool) -> WorkerHandle:
    (worker,) = pool.workers.values()
    return worker


def events_named(logs: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [e for e in logs if e["event"] == name]


def test_a_death_is_logged_with_its_cause_chunks_and_uptime(tmp_path: Path) -> None:
    """worker.died carries the documented fields: slot, pid, exit code, cause, chunks held, uptime."""
    pool, clock, _, _ = make_pool(tmp_path)
    ready_all(pool)
    worker = only(pool)
    pool.submit(chunk(1, 0))
    pool.submit(chunk(1, 1))
    clock.advance(12.3456)
    with capture_logs() as logs:
        die(pool, worker, code=-9)
    assert events_named(logs, "worker.died") == [{
        "event": "worker.died", "log_level": "error", "worker": 0, "worker_pid": worker.pid, "exit_code": -9,
        "cause": "signal 9", "chunks_in_flight": 2, "uptime": 12.346,
    }]


@pytest.mark.parametrize(("code", "cause"), [(-15, "signal 15"), (0, "exit code 0"), (1, "exit code 1"),
                                             (70, "exit code 70")])
def test_the_cause_of_a_death_names_the_signal_or_the_exit_code(tmp_path: Path, code: int, cause: str) -> None:
    """A negative exit code is a signal; zero or more is an exit code (an unexpected clean exit too)."""
    pool, _, _, _ = make_pool(tmp_path)
    ready_all(pool)
    worker = only(pool)
    pool.submit(chunk())
    with capture_logs() as logs:
        die(pool, worker, code=code)
    assert events_named(logs, "worker.died")[0]["cause"] == cause
    lost = [e for e in pool.events() if isinstance(e, Lost)]
    assert [e.cause for e in lost] == [cause]


def test_a_killed_worker_dies_with_the_reason_it_was_killed_for(tmp_path: Path) -> None:
    """The first kill reason wins over the signal that ended it, in the log and in Lost."""
    pool, _, _, _ = make_pool(tmp_path)
    ready_all(pool)
    worker = only(pool)
    pool.submit(chunk())
    pool.kill("halt")
    pool.kill("second reason")
    assert worker.killed_for == "halt" and proc_of(worker).killed
    with capture_logs() as logs:
        die(pool, worker, code=-9)
    assert events_named(logs, "worker.died")[0]["cause"] == "halt"


def test_every_unexpected_death_counts_a_restart_for_its_slot_and_in_the_totals(tmp_path: Path) -> None:
    """worker_restarts and the per-slot restarts of `ipspool status` count each death once."""
    pool, clock, _, _ = make_pool(tmp_path, processes=2)
    ready_all(pool)
    for _ in range(3):
        die(pool, pool.slots[1])  # type: ignore[arg-type]
        clock.advance(60)
        pool.tick(clock.now)
        ready_all(pool)
    assert pool.totals["worker_restarts"] == 3
    assert pool.slot_restarts == Counter({1: 3})
    assert [row["restarts"] for row in pool.describe(clock.now)] == [0, 3]


def test_a_second_death_in_a_row_waits_and_logs_the_back_off(tmp_path: Path) -> None:
    """worker.backoff says the slot, the delay and the run of deaths; the slot stays empty meanwhile."""
    pool, clock, launcher, _ = make_pool(tmp_path)
    ready_all(pool)
    die(pool, only(pool))
    pool.tick(clock.now)
    ready_all(pool)
    with capture_logs() as logs:
        die(pool, only(pool))
    assert events_named(logs, "worker.backoff") == [{
        "event": "worker.backoff", "log_level": "warning", "worker": 0, "delay": pytest.approx(0.2),
        "deaths_in_a_row": 2,
    }]
    pool.tick(clock.now + 0.1)
    assert pool.workers == {} and len(launcher.launched) == 2
    with capture_logs() as logs:
        pool.tick(clock.now + 0.2)
    assert len(launcher.launched) == 3
    assert events_named(logs, "worker.replaced") == [{"event": "worker.replaced", "log_level": "info", "worker": 0}]


def test_a_lone_death_logs_no_back_off(tmp_path: Path) -> None:
    """The first death of a run is replaced at once, without a worker.backoff warning."""
    pool, _, _, _ = make_pool(tmp_path)
    ready_all(pool)
    with capture_logs() as logs:
        die(pool, only(pool))
    assert events_named(logs, "worker.backoff") == []


def test_only_a_life_longer_than_healthy_after_resets_the_back_off(tmp_path: Path) -> None:
    """A worker that lived exactly HEALTHY_AFTER seconds still counts as one more death in a row."""
    pool, clock, _, _ = make_pool(tmp_path)
    ready_all(pool)
    die(pool, only(pool))
    pool.tick(clock.now)
    ready_all(pool)
    clock.advance(HEALTHY_AFTER)
    die(pool, only(pool))
    assert pool.deaths_in_a_row == 2
    pool.tick(clock.now + 1)
    ready_all(pool)
    clock.advance(HEALTHY_AFTER + 1.5)
    die(pool, only(pool))
    assert pool.deaths_in_a_row == 1


def test_an_empty_slot_without_back_off_is_filled_whatever_the_clock_reads(tmp_path: Path) -> None:
    """respawn_due refills a slot with no pending back-off even at monotonic time 0."""
    pool, _, launcher, _ = make_pool(tmp_path, clock=FakeClock(start=0.0))
    ready_all(pool)
    die(pool, only(pool))
    pool.tick(0.0)
    assert len(launcher.launched) == 2


def test_a_retired_worker_that_exits_cleanly_is_no_death(tmp_path: Path) -> None:
    """After a reload the old worker's exit 0 logs worker.stopped; nothing is restarted or lost."""
    pool, clock, launcher, _ = make_pool(tmp_path)
    ready_all(pool)
    old = only(pool)
    pool.reconfigure(pool.config, generation=1)
    with capture_logs() as logs:
        die(pool, old, code=0)
    assert [e["event"] for e in logs] == ["worker.stopped"]
    assert logs[0] == {"event": "worker.stopped", "log_level": "info", "worker": 0, "worker_pid": old.pid}
    assert list(pool.events()) == [UnitExited(old.pid)]
    assert pool.totals["worker_restarts"] == 0
    pool.tick(clock.now)
    assert len(launcher.launched) == 2  # the new generation's worker is the slot's


def test_a_retired_worker_that_fails_is_a_death_but_is_not_replaced(tmp_path: Path) -> None:
    """A retiring worker exiting non-zero, or with chunks, is logged as a death; its chunks come back."""
    pool, clock, launcher, _ = make_pool(tmp_path)
    ready_all(pool)
    old = only(pool)
    pool.submit(chunk())
    pool.reconfigure(pool.config, generation=1)
    with capture_logs() as logs:
        die(pool, old, code=0)  # exit 0, but it still held a chunk
    assert [e["event"] for e in logs] == ["worker.died"]
    assert [e.chunk.key for e in pool.events() if isinstance(e, Lost)] == [chunk().key]
    assert old.slot not in pool.respawn_at
    pool.tick(clock.now + 60)
    assert len(launcher.launched) == 2


def test_a_retiring_worker_finishing_its_last_chunk_stays_retiring(tmp_path: Path) -> None:
    """Done from an old-generation worker with nothing left does not bring it back to READY."""
    pool, _, _, _ = make_pool(tmp_path)
    ready_all(pool)
    old = only(pool)
    pool.submit(chunk())
    pool.reconfigure(pool.config, generation=1)
    pool.handle(old, Done(chunk().key, "p", {}))
    assert old.state is WorkerState.RETIRING


def test_exit_code_255_makes_sure_the_process_is_gone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """255 may hide a dead forkserver: the pid gets SIGKILL (already gone is fine); other codes do not."""
    sent: list[tuple[int, int]] = []

    def fake_kill(pid: int, sig: int) -> None:
        sent.append((pid, sig))
        raise ProcessLookupError(pid)

    monkeypatch.setattr(os, "kill", fake_kill)
    pool, _, _, _ = make_pool(tmp_path, processes=2)
    ready_all(pool)
    first, second = pool.workers.values()
    die(pool, first, code=1)
    assert sent == []
    die(pool, second, code=255)
    assert sent == [(second.pid, signal.SIGKILL)]


def test_an_exited_worker_leaves_the_selector_and_its_pipe_is_closed(tmp_path: Path) -> None:
    """Neither its pipe nor its sentinel stays registered; the handle is forgotten."""
    pool, _, _, selector = make_pool(tmp_path, processes=2)
    ready_all(pool)
    worker, other = pool.workers.values()
    die(pool, worker)
    assert worker.proc.conn not in selector.registered
    assert worker.proc.sentinel not in selector.registered
    assert other.proc.conn in selector.registered and other.proc.sentinel in selector.registered
    assert proc_of(worker).conn.closed
    assert worker.pid not in pool.workers and pool.slots[worker.slot] is None
    assert worker.state is WorkerState.EXITED


def test_messages_waiting_in_a_pipe_are_handled_in_order(tmp_path: Path) -> None:
    """on_readable reads every message queued, then stops when the pipe is empty."""
    pool, _, _, _ = make_pool(tmp_path)
    ready_all(pool)
    worker = only(pool)
    pool.submit(chunk(1, 0))
    pool.submit(chunk(1, 1))
    conn = proc_of(worker).conn
    conn.inbox.extend([Started(chunk(1, 0).key), Done(chunk(1, 0).key, "p0", {}), Started(chunk(1, 1).key)])
    pool.on_readable(worker)
    assert worker.started == {chunk(1, 1).key}
    assert list(worker.inflight) == [chunk(1, 1).key]
    assert list(pool.events()) == [Done(chunk(1, 0).key, "p0", {})]


def test_a_broken_pipe_is_unregistered_and_left_to_the_sentinel(tmp_path: Path) -> None:
    """EOF on a worker's pipe stops reading it; the death itself is reported by the sentinel."""

    class EOFConn(FakeConn):
        def poll(self, timeout: float | None = None) -> bool:
            return True

        def recv(self) -> Any:
            raise EOFError

    pool, _, _, selector = make_pool(tmp_path)
    worker = only(pool)
    proc_of(worker).conn = EOFConn()
    selector.registered[worker.proc.conn] = None
    pool.on_readable(worker)
    assert worker.proc.conn not in selector.registered
    assert list(pool.events()) == []


def test_a_message_that_is_not_the_protocol_is_logged_and_ignored(tmp_path: Path) -> None:
    """worker.bad_message shows the slot and at most 200 characters of what arrived."""
    pool, _, _, _ = make_pool(tmp_path)
    worker = only(pool)
    with capture_logs() as logs:
        pool.handle(worker, "x" * 300)  # type: ignore[arg-type]
    assert logs == [{"event": "worker.bad_message", "log_level": "error", "worker": 0,
                     "message": "'" + "x" * 199}]
    assert list(pool.events()) == []


def test_a_done_for_an_unknown_chunk_is_passed_on_but_a_failure_is_not(tmp_path: Path) -> None:
    """A part that exists must reach the job book (it removes it); a stray failure means nothing."""
    pool, _, _, _ = make_pool(tmp_path)
    ready_all(pool)
    worker = only(pool)
    stray = chunk(9, 9).key
    pool.handle(worker, Failed(stray, "x", "y"))
    pool.handle(worker, Done(stray, "p", {}))
    assert list(pool.events()) == [Done(stray, "p", {})]


def test_a_reported_chunk_is_no_longer_started_and_the_event_is_the_message(tmp_path: Path) -> None:
    """After Done or Failed, a later death does not report the chunk; the job book gets the message as sent."""
    pool, _, _, _ = make_pool(tmp_path)
    ready_all(pool)
    worker = only(pool)
    pool.submit(chunk(1, 0))
    pool.submit(chunk(1, 1))
    pool.handle(worker, Started(chunk(1, 0).key))
    pool.handle(worker, Started(chunk(1, 1).key))
    failed = Failed(chunk(1, 0).key, "unreadable", "gone")
    pool.handle(worker, failed)
    assert worker.started == {chunk(1, 1).key}
    assert list(pool.events()) == [failed]


def test_a_ready_message_ends_a_run_of_boot_failures(tmp_path: Path) -> None:
    """Boot failures must be in a row to halt: one worker reaching READY starts the count again."""
    pool, clock, _, _ = make_pool(tmp_path)
    for _ in range(BOOT_FAILURE_LIMIT - 1):
        die(pool, only(pool), code=1)
        clock.advance(60)
        pool.tick(clock.now)
    ready_all(pool)
    clock.advance(60)
    die(pool, only(pool), code=-9)  # a death after ready: no boot failure
    for _ in range(BOOT_FAILURE_LIMIT - 1):
        clock.advance(60)
        pool.tick(clock.now)
        die(pool, only(pool), code=1)
    assert not any(isinstance(e, Halted) for e in pool.events())
    assert not pool.stopping


def test_a_halt_kills_every_worker_for_the_reason_halt(tmp_path: Path) -> None:
    """Workers that cannot start stop the pool: the others are killed, marked 'halt'."""
    pool, _, _, _ = make_pool(tmp_path, processes=2)
    first, second = pool.workers.values()
    die(pool, first, code=int(ExitCode.WORKER_BOOT_ERROR))
    assert second.killed_for == "halt" and proc_of(second).killed
    assert pool.stopping and pool.free_slots() == 0


def test_a_stale_worker_is_logged_once_and_every_stale_one_is_killed(tmp_path: Path) -> None:
    """worker.timeout names slot, pid, age and chunks; a killed worker is not judged again."""
    pool, clock, _, _ = make_pool(tmp_path, processes=2, heartbeat_timeout=10.0)
    ready_all(pool)
    first, second = pool.workers.values()
    pool.submit(chunk(1, 0))
    pool.submit(chunk(2, 0))
    assert first.inflight and second.inflight
    clock.advance(10.26)
    with capture_logs() as logs:
        pool.tick(clock.now)
        pool.tick(clock.now + 1)
    assert logs == [
        {"event": "worker.timeout", "log_level": "error", "worker": w.slot, "worker_pid": w.pid, "age": 10.3,
         "chunks_in_flight": 1}
        for w in (first, second)
    ]
    assert first.killed_for == "no progress for 10.3s (heartbeat_timeout=10.0)"
    assert proc_of(first).killed and proc_of(second).killed


def test_an_idle_worker_with_an_old_heartbeat_is_healthy(tmp_path: Path) -> None:
    """Health looks only at workers holding work: an idle worker beats only when it works."""
    pool, clock, _, _ = make_pool(tmp_path, processes=2, heartbeat_timeout=10.0)
    ready_all(pool)
    clock.advance(100)
    assert pool.healthy(clock.now)
    pool.submit(chunk())
    assert not pool.healthy(clock.now)


def test_reconfigure_starts_the_new_generation_from_the_new_config(tmp_path: Path) -> None:
    """A reload to 3 processes spawns slots 0..2 of generation 1, and respawns use the new count."""
    pool, clock, launcher, _ = make_pool(tmp_path, processes=1)
    ready_all(pool)
    new = pool.config.model_copy(update={"workers": pool.config.workers.model_copy(update={"processes": 3})})
    with capture_logs() as logs:
        pool.reconfigure(new, generation=1)
    assert pool.config is new and pool.generation == 1
    assert sorted(pool.slots) == [0, 1, 2]
    assert [(e["worker"], e["generation"]) for e in events_named(logs, "worker.spawned")] == [(0, 1), (1, 1), (2, 1)]
    assert all(w.generation == 1 for w in pool.current())
    ready_all(pool)
    die(pool, pool.slots[2])  # type: ignore[arg-type]
    pool.tick(clock.now)
    assert len(launcher.launched) == 5 and pool.slots[2] is not None


def test_submit_sends_the_chunk_itself_and_refuses_without_capacity(tmp_path: Path) -> None:
    """The worker receives RunChunk of exactly the chunk; no capacity is a bug the job book avoids."""
    pool, _, _, _ = make_pool(tmp_path)
    with pytest.raises(RuntimeError, match=r"^submit without capacity$"):
        pool.submit(chunk())
    ready_all(pool)
    pool.submit(chunk(3, 4))
    assert proc_of(only(pool)).conn.sent == [RunChunk(chunk(3, 4))]


def test_refresh_is_sent_to_every_worker_except_retiring_ones(tmp_path: Path) -> None:
    """Data files are re-read by the workers that will go on working."""
    pool, _, _, _ = make_pool(tmp_path, processes=2)
    ready_all(pool)
    old = list(pool.workers.values())
    pool.reconfigure(pool.config, generation=1)
    pool.refresh()
    for worker in pool.workers.values():
        sent = proc_of(worker).conn.sent
        assert (Refresh() in sent) == (worker not in old)


def test_reopen_logs_signals_every_worker_even_if_one_is_gone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """SIGUSR1 goes to each worker; a pid already gone does not stop the others."""
    sent: list[tuple[int, int]] = []

    def fake_kill(pid: int, sig: int) -> None:
        sent.append((pid, sig))
        if len(sent) == 1:
            raise ProcessLookupError(pid)

    monkeypatch.setattr(os, "kill", fake_kill)
    pool, _, _, _ = make_pool(tmp_path, processes=2)
    pool.reopen_logs()
    assert sent == [(w.pid, signal.SIGUSR1) for w in pool.workers.values()]


class SlowProcess(FakeProcess):
    """A process whose join takes as long as it is allowed to, on the fake clock."""

    clock: FakeClock
    joins: list[float | None]
    lingers: bool = False

    def join(self, timeout: float | None = None) -> None:
        self.joins.append(timeout)
        if timeout:
            self.clock.advance(timeout)

    def is_alive(self) -> bool:
        return self.lingers and not self.killed


class SlowLauncher(FakeLauncher):
    def launch(self, slot: int, config: Config) -> FakeProcess:
        proc = SlowProcess(FakeHeartbeat(self.clock.monotonic()))
        proc.clock, proc.joins, proc.lingers = self.clock, [], slot == 1
        self.launched.append(proc)
        return proc


def test_close_shares_one_deadline_between_workers_then_kills_the_rest(tmp_path: Path) -> None:
    """The first join may use the whole timeout, later ones what is left; survivors are killed."""
    config = load_config(None, spool=str(tmp_path / "spool"))
    config = config.model_copy(update={"workers": config.workers.model_copy(update={"processes": 2})})
    clock = FakeClock()
    pool = WorkerPool(config, SlowLauncher(clock), clock, Counter())
    pool.start(FakeSelector())  # type: ignore[arg-type]
    first, second = (w.proc for w in pool.workers.values())
    assert isinstance(first, SlowProcess) and isinstance(second, SlowProcess)
    pool.close(3.0)
    assert first.joins == [3.0, 5] and not first.killed
    assert second.joins == [0.0, 5] and second.killed


def test_the_progress_mark_is_the_newest_heartbeat_of_a_worker_holding_work(tmp_path: Path) -> None:
    """Idle workers' beats say nothing about a drain's progress; no work at all reads 0."""
    pool, _, _, _ = make_pool(tmp_path, processes=3)
    ready_all(pool)
    assert pool.progress_mark() == 0.0
    busy, other_busy, idle = pool.workers.values()
    pool.submit(chunk(1, 0))
    pool.submit(chunk(2, 0))
    idle.proc.heartbeat.value = 5000.0
    busy.proc.heartbeat.value = 1200.0
    other_busy.proc.heartbeat.value = 1100.0
    assert pool.progress_mark() == 1200.0


def test_alive_counts_current_workers_that_reached_ready(tmp_path: Path) -> None:
    """Starting workers are not alive yet; retired old generations do not count."""
    pool, _, _, _ = make_pool(tmp_path, processes=2)
    assert pool.alive() == 0
    pool.handle(next(iter(pool.workers.values())), Ready(0))
    assert pool.alive() == 1
    ready_all(pool)
    pool.reconfigure(pool.config, generation=1)
    assert pool.alive() == 0


def test_describe_shows_each_worker_for_ipspool_status(tmp_path: Path) -> None:
    """One row per process, by slot: state, load, heartbeat age, uptime, restarts, up to 3 files."""
    pool, clock, _, _ = make_pool(tmp_path, processes=2, threads=4)
    ready_all(pool)
    first, second = pool.workers.values()
    for i, name in enumerate(["d", "b", "a", "c"]):
        first.inflight[(1, i)] = chunk(1, i, name)
    first.inflight[(1, 9)] = chunk(1, 9, "a")
    clock.advance(7.25)
    first.proc.heartbeat.value = clock.now - 1.23456
    pool.retire(second)
    assert pool.describe(clock.now) == [
        {"slot": 0, "pid": first.pid, "ready": True, "retiring": False, "state": "ready", "inflight": 5,
         "heartbeat_age": 1.235, "uptime": 7.2, "restarts": 0, "current": ["a", "b", "c"]},
        {"slot": 1, "pid": second.pid, "ready": True, "retiring": True, "state": "retiring", "inflight": 0,
         "heartbeat_age": 7.25, "uptime": 7.2, "restarts": 0, "current": []},
    ]


def test_describe_orders_rows_by_slot_then_pid(tmp_path: Path) -> None:
    """After a reload the old and new worker of a slot are listed together, oldest pid first."""
    pool, clock, _, _ = make_pool(tmp_path, processes=2)
    pool.reconfigure(pool.config, generation=1)
    rows = pool.describe(clock.now)
    assert [(r["slot"], r["pid"]) for r in rows] == sorted((w.slot, w.pid) for w in pool.workers.values())
    assert [r["slot"] for r in rows] == [0, 0, 1, 1]


class FakeContext:
    """A multiprocessing context that records what the launcher asks of it."""

    def __init__(self) -> None:
        self.pipes: list[tuple[FakeConn, FakeConn]] = []
        self.values: list[tuple[str, float]] = []
        self.processes: list[dict[str, Any]] = []

    def Pipe(self, duplex: bool) -> tuple[FakeConn, FakeConn]:
        assert duplex
        pair = (FakeConn(), FakeConn())
        self.pipes.append(pair)
        return pair

    def RawValue(self, typecode: str, value: float) -> FakeHeartbeat:
        self.values.append((typecode, value))
        return FakeHeartbeat(value)

    def Process(self, **kwargs: Any) -> Any:
        record = dict(kwargs, started=False)
        self.processes.append(record)

        class Started:
            pid = 4242
            sentinel = 17
            exitcode = None

            def start(self) -> None:
                record["started"] = True

            def is_alive(self) -> bool:
                return True

            def join(self, timeout: float | None = None) -> None:
                record["joined"] = timeout

            def kill(self) -> None:
                record["killed"] = True

        return Started()


def test_the_launcher_gives_the_worker_its_end_of_the_pipe_and_keeps_only_ours(tmp_path: Path) -> None:
    """The child end is closed in the supervisor (EOF then means a dead supervisor); the heartbeat starts now."""
    from ipspool.worker import worker_main

    ctx = FakeContext()
    clock = FakeClock(start=321.0)
    launcher = ForkserverLauncher(ctx, tmp_path / "run", b"key", tmp_path / "parts", clock)  # type: ignore[arg-type]
    config = load_config(None, spool=str(tmp_path / "spool"))
    proc = launcher.launch(5, config)
    ((parent, child),) = ctx.pipes
    (spec,) = ctx.processes
    assert spec["started"] and spec["target"] is worker_main and spec["name"] == "ipspool-worker-5"
    slot, conn, heartbeat, passed, runtime, authkey, parts = spec["args"]
    assert (slot, conn, passed, runtime, authkey, parts) == (5, child, config, str(tmp_path / "run"), b"key",
                                                             str(tmp_path / "parts"))
    assert ctx.values == [("d", 321.0)] and proc.heartbeat is heartbeat
    assert child.closed and not parent.closed
    assert proc.conn is parent and proc.pid == 4242 and proc.sentinel == 17
    assert proc.is_alive() and proc.exitcode is None
    proc.join(2.5)
    proc.kill()
    assert spec["joined"] == 2.5 and spec["killed"]


class ConfigSeeingLauncher(FakeLauncher):
    def __init__(self, clock: FakeClock) -> None:
        super().__init__(clock)
        self.configs: list[Config] = []

    def launch(self, slot: int, config: Config) -> FakeProcess:
        self.configs.append(config)
        return super().launch(slot, config)


def test_a_spawned_worker_is_watched_on_its_pipe_and_its_sentinel(tmp_path: Path) -> None:
    """worker.spawned names slot, pid and generation; the selector's callbacks read the pipe and reap the exit."""
    config = load_config(None, spool=str(tmp_path / "spool"))
    config = config.model_copy(update={"workers": config.workers.model_copy(update={"processes": 1})})
    clock = FakeClock()
    launcher = ConfigSeeingLauncher(clock)
    selector = FakeSelector()
    pool = WorkerPool(config, launcher, clock, Counter())
    with capture_logs() as logs:
        pool.start(selector)  # type: ignore[arg-type]
    worker = only(pool)
    assert launcher.configs == [config]
    assert logs == [{"event": "worker.spawned", "log_level": "info", "worker": 0, "worker_pid": worker.pid,
                     "generation": 0}]
    proc_of(worker).conn.inbox.append(Ready(worker.pid))
    selector.registered[worker.proc.conn](worker.proc.conn)
    assert worker.state is WorkerState.READY
    proc_of(worker).code = 1
    selector.registered[worker.proc.sentinel](worker.proc.sentinel)
    assert worker.state is WorkerState.EXITED and pool.workers == {}


def test_reaping_waits_a_second_at_most_for_the_exited_process(tmp_path: Path) -> None:
    """on_exit joins with a short timeout: the sentinel said it is gone, so this only collects the status."""
    config = load_config(None, spool=str(tmp_path / "spool"))
    config = config.model_copy(update={"workers": config.workers.model_copy(update={"processes": 1})})
    clock = FakeClock()
    pool = WorkerPool(config, SlowLauncher(clock), clock, Counter())
    pool.start(FakeSelector())  # type: ignore[arg-type]
    worker = only(pool)
    proc = worker.proc
    assert isinstance(proc, SlowProcess)
    proc.code = 0
    pool.on_exit(worker)
    assert proc.joins == [1]


def test_a_worker_killed_earlier_does_not_hide_a_later_stale_one(tmp_path: Path) -> None:
    """Each tick judges every worker: one already killed is skipped, the next stale one is still killed."""
    pool, clock, _, _ = make_pool(tmp_path, processes=2, heartbeat_timeout=10.0)
    ready_all(pool)
    first, second = pool.workers.values()
    pool.submit(chunk(1, 0))
    pool.submit(chunk(2, 0))
    second.proc.heartbeat.value = clock.now + 5
    clock.advance(10.5)
    pool.tick(clock.now)
    assert first.killed_for and not second.killed_for
    clock.advance(5)
    pool.tick(clock.now)
    assert second.killed_for and proc_of(second).killed
