"""The worker pool's decisions, with fake processes and a fake clock: no forks, no sleeps."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from ipspool.chunking import Chunk
from ipspool.config import load_config
from ipspool.exitcodes import ExitCode
from ipspool.pool import BOOT_FAILURE_LIMIT, MAX_BACKOFF, WorkerHandle, WorkerPool
from ipspool.protocol import Done, Halted, Lost, Ready, RunChunk, Started, Stop, UnitExited
from ipspool.states import IllegalTransition, WorkerState
from tests.support.fakes import FakeClock, FakeLauncher, FakeProcess, FakeSelector


def make_pool(tmp_path: Path, processes: int = 2, threads: int = 2, **workers: object) -> tuple[WorkerPool, FakeClock,
                                                                                                 FakeLauncher]:
    config = load_config(None, spool=str(tmp_path / "spool"))
    config = config.model_copy(update={"workers": config.workers.model_copy(
        update={"processes": processes, "threads": threads, **workers})})
    clock = FakeClock()
    launcher = FakeLauncher(clock)
    pool = WorkerPool(config, launcher, clock, Counter())
    pool.start(FakeSelector())  # type: ignore[arg-type]
    return pool, clock, launcher


def ready_all(pool: WorkerPool) -> None:
    for worker in list(pool.workers.values()):
        pool.handle(worker, Ready(worker.pid))


def chunk(job: int = 1, index: int = 0) -> Chunk:
    return Chunk(job, index, f"/spool/active/f{job}", index * 10, index * 10 + 10, index + 1)


def die(pool: WorkerPool, worker: WorkerHandle, code: int = -9) -> None:
    proc = worker.proc
    assert isinstance(proc, FakeProcess)
    proc.code = code
    pool.on_exit(worker)


def test_chunks_go_to_the_least_loaded_ready_worker_up_to_the_inflight_cap(tmp_path: Path) -> None:
    """Nothing goes to a starting worker; then least loaded first; threads + 1 each at most."""
    pool, _, _ = make_pool(tmp_path, processes=2, threads=2)
    assert pool.free_slots() == 0  # both still starting
    ready_all(pool)
    assert pool.free_slots() == 6
    for i in range(6):
        pool.submit(chunk(1, i))
    loads = sorted(len(w.inflight) for w in pool.workers.values())
    assert loads == [3, 3]
    assert pool.free_slots() == 0
    with pytest.raises(RuntimeError):
        pool.submit(chunk(1, 6))
    sent = [m for w in pool.workers.values() for m in w.proc.conn.sent]  # type: ignore[attr-defined]
    assert all(isinstance(m, RunChunk) for m in sent) and len(sent) == 6


def test_a_retry_runs_alone_and_the_worker_takes_nothing_else_until_it_is_done(tmp_path: Path) -> None:
    """ALONE: the retried chunk has its worker to itself, so blame for a crash is exact."""
    pool, _, _ = make_pool(tmp_path, processes=2, threads=2)
    ready_all(pool)
    pool.submit(chunk(1, 0))
    assert pool.can_run_alone()
    pool.submit(chunk(2, 0), alone=True)
    alone = next(w for w in pool.workers.values() if chunk(2, 0).key in w.inflight)
    assert alone.state is WorkerState.ALONE
    assert len(alone.inflight) == 1
    assert not pool.can_run_alone()  # the other worker holds a chunk
    assert pool.free_slots() == 2    # only the other worker takes more
    pool.handle(alone, Done(chunk(2, 0).key, "p", {"lines": 1}))
    assert alone.state is WorkerState.READY
    assert pool.free_slots() == 5


def test_a_dead_workers_chunks_come_back_as_lost_with_whether_they_had_started(tmp_path: Path) -> None:
    """Started chunks are charged by the job book; queued ones are only requeued."""
    pool, _, _ = make_pool(tmp_path, processes=1, threads=2)
    ready_all(pool)
    pool.submit(chunk(1, 0))
    pool.submit(chunk(1, 1))
    (worker,) = pool.workers.values()
    pool.handle(worker, Started(chunk(1, 0).key))
    die(pool, worker)
    events = list(pool.events())
    assert UnitExited(worker.pid) in events
    lost = {(e.chunk.key, e.started) for e in events if isinstance(e, Lost)}
    assert lost == {((1, 0), True), ((1, 1), False)}
    assert all(e.cause == "signal 9" for e in events if isinstance(e, Lost))
    assert pool.totals["worker_restarts"] == 1


def test_respawn_back_off_doubles_for_deaths_in_a_row_and_resets_after_a_healthy_life(tmp_path: Path) -> None:
    """First death: at once; then 0.2, 0.4, ... s up to 30 s; a worker that lived 30 s resets it."""
    pool, clock, launcher = make_pool(tmp_path, processes=1)
    ready_all(pool)
    delays = []
    for _ in range(12):
        (worker,) = pool.workers.values()
        die(pool, worker)
        delays.append(pool.respawn_at[0] - clock.now)
        pool.tick(clock.now)
        if not pool.workers:  # still waiting: the slot stays empty until the delay passed
            clock.advance(delays[-1])
            pool.tick(clock.now)
        ready_all(pool)
    assert delays[:4] == pytest.approx([0.0, 0.2, 0.4, 0.8])
    assert delays[-1] == pytest.approx(MAX_BACKOFF)
    (worker,) = pool.workers.values()
    clock.advance(31)
    die(pool, worker)
    assert pool.respawn_at[0] - clock.now == 0.0
    assert len(launcher.launched) == 13


def test_a_finished_chunk_resets_the_back_off(tmp_path: Path) -> None:
    """Progress proves the workers are fine again: the next death respawns at once."""
    pool, clock, _ = make_pool(tmp_path, processes=1)
    ready_all(pool)
    for _ in range(3):
        (worker,) = pool.workers.values()
        die(pool, worker)
        clock.advance(pool.respawn_at[0] - clock.now)
        pool.tick(clock.now)
        ready_all(pool)
    (worker,) = pool.workers.values()
    pool.submit(chunk())
    pool.handle(worker, Done(chunk().key, "p", {}))
    die(pool, worker)
    assert pool.respawn_at[0] == clock.now


def test_a_silent_worker_holding_work_is_killed_an_idle_one_is_not(tmp_path: Path) -> None:
    """heartbeat_timeout applies to workers with chunks (and to ones that never became ready)."""
    pool, clock, _ = make_pool(tmp_path, processes=2, heartbeat_timeout=10.0)
    ready_all(pool)
    busy, idle = pool.workers.values()
    pool.submit(chunk())
    assert chunk().key in busy.inflight
    clock.advance(10.0)
    with capture_logs() as logs:
        pool.tick(clock.now)
    assert logs == []  # exactly at the limit is not over it
    assert pool.healthy(clock.now)
    clock.advance(0.5)
    with capture_logs() as logs:
        pool.tick(clock.now)
    assert [e["event"] for e in logs] == ["worker.timeout"]
    assert busy.proc.killed and not idle.proc.killed  # type: ignore[attr-defined]
    assert busy.state is WorkerState.KILLED and "heartbeat_timeout=10.0" in busy.killed_for
    assert not pool.healthy(clock.now)
    assert pool.free_slots() == 3  # the killed worker takes nothing


def test_a_worker_that_never_becomes_ready_is_killed_by_its_heartbeat(tmp_path: Path) -> None:
    """A boot that hangs is as bad as a stage that hangs."""
    pool, clock, _ = make_pool(tmp_path, processes=1, heartbeat_timeout=5.0)
    clock.advance(6)
    pool.tick(clock.now)
    (worker,) = pool.workers.values()
    assert worker.proc.killed  # type: ignore[attr-defined]


def test_workers_dying_before_ready_halt_the_pool_instead_of_fork_looping(tmp_path: Path) -> None:
    """BOOT_FAILURE_LIMIT deaths in a row before 'ready': Halted, everything killed, no respawn."""
    pool, clock, launcher = make_pool(tmp_path, processes=1)
    for n in range(BOOT_FAILURE_LIMIT):
        (worker,) = pool.workers.values()
        die(pool, worker, code=1)
        halted = [e for e in pool.events() if isinstance(e, Halted)]
        if n < BOOT_FAILURE_LIMIT - 1:
            assert halted == []
            clock.advance(MAX_BACKOFF)
            pool.tick(clock.now)
    assert len(halted) == 1 and f"{BOOT_FAILURE_LIMIT} in a row" in halted[0].reason
    clock.advance(MAX_BACKOFF)
    pool.tick(clock.now)
    assert len(launcher.launched) == BOOT_FAILURE_LIMIT


def test_a_worker_boot_error_exit_halts_at_once(tmp_path: Path) -> None:
    """Exit code WORKER_BOOT_ERROR means the stage cannot load: retrying cannot help."""
    pool, _, _ = make_pool(tmp_path, processes=2)
    worker = next(iter(pool.workers.values()))
    die(pool, worker, code=int(ExitCode.WORKER_BOOT_ERROR))
    assert any(isinstance(e, Halted) for e in pool.events())
    assert all(w.proc.killed for w in pool.workers.values())  # type: ignore[attr-defined]


def test_drain_retires_idle_workers_at_once_and_busy_ones_after_their_last_chunk(tmp_path: Path) -> None:
    """A stop lets in-flight chunks finish; nothing new is taken and nothing is respawned."""
    pool, clock, launcher = make_pool(tmp_path, processes=2)
    ready_all(pool)
    pool.submit(chunk())
    busy = next(w for w in pool.workers.values() if w.inflight)
    idle = next(w for w in pool.workers.values() if not w.inflight)
    pool.drain()
    assert idle.state is WorkerState.RETIRING and isinstance(idle.proc.conn.sent[-1], Stop)  # type: ignore[attr-defined]
    assert busy.state is WorkerState.READY
    assert pool.free_slots() == 0 and not pool.can_run_alone()
    pool.handle(busy, Done(chunk().key, "p", {}))
    assert busy.state is WorkerState.RETIRING
    die(pool, idle, code=0)
    clock.advance(60)
    pool.tick(clock.now)
    assert len(launcher.launched) == 2  # no replacement while stopping


def test_reconfigure_retires_the_old_generation_and_starts_a_new_one(tmp_path: Path) -> None:
    """A reload replaces workers gracefully: old ones finish what they hold."""
    pool, _, launcher = make_pool(tmp_path, processes=2)
    ready_all(pool)
    pool.submit(chunk())
    old = list(pool.workers.values())
    pool.reconfigure(pool.config, generation=1)
    assert all(w.state is WorkerState.RETIRING for w in old)
    assert len(launcher.launched) == 4
    assert not pool.ready()  # the new generation is still starting
    assert pool.inflight() == 1  # the old worker's chunk is still counted
    ready_all(pool)
    assert pool.ready()


def test_worker_states_refuse_transitions_the_lifecycle_does_not_allow(tmp_path: Path) -> None:
    """An exited worker cannot come back to READY."""
    pool, _, _ = make_pool(tmp_path, processes=1)
    (worker,) = pool.workers.values()
    die(pool, worker)
    with pytest.raises(IllegalTransition):
        worker.move(WorkerState.READY)


def test_a_message_outside_the_protocol_is_logged_and_ignored(tmp_path: Path) -> None:
    """worker.bad_message: the worker and its chunks are untouched."""
    pool, _, _ = make_pool(tmp_path, processes=1)
    ready_all(pool)
    (worker,) = pool.workers.values()
    pool.submit(chunk())
    with capture_logs() as logs:
        pool.handle(worker, {"not": "a message"})  # type: ignore[arg-type]
    assert [(e["event"], e["worker"]) for e in logs] == [("worker.bad_message", worker.slot)]
    assert "not" in logs[0]["message"]
    assert worker.state is WorkerState.READY and chunk().key in worker.inflight
    assert list(pool.events()) == []


def test_a_spawn_that_cannot_reach_the_forkserver_is_retried_not_fatal(tmp_path: Path) -> None:
    """A killed forkserver makes one launch fail: worker.spawn_failed, the slot is tried again shortly."""
    pool, clock, launcher = make_pool(tmp_path, processes=1)
    ready_all(pool)
    (worker,) = pool.workers.values()
    real = launcher.launch
    calls = []

    def broken(slot: int, config: object) -> FakeProcess:
        calls.append(slot)
        raise EOFError("the forkserver closed the connection")

    launcher.launch = broken  # type: ignore[method-assign]
    die(pool, worker)
    with capture_logs() as logs:
        pool.tick(clock.now)
    assert [e["event"] for e in logs if e["event"] == "worker.spawn_failed"] == ["worker.spawn_failed"]
    assert calls == [0] and pool.workers == {}
    launcher.launch = real  # type: ignore[method-assign]
    clock.advance(1.0)
    pool.tick(clock.now)
    assert len(pool.workers) == 1
