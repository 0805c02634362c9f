"""The Dask executor's decisions, with a fake cluster link and a fake clock: no scheduler, no sleep."""

from __future__ import annotations

import asyncio
import os
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from ipspool.chunking import Chunk
from ipspool.config import parse_config
from ipspool.protocol import Done, Failed, Lost
from tests.support.dask_cluster import need_distributed
from tests.support.fakes import FakeClock, FakeSelector


class FakeLink:
    """Records what the executor asks of the cluster."""

    def __init__(self) -> None:
        self.submitted: list[tuple[str, list[str] | None]] = []
        self.cancelled: list[str] = []
        self.restarted: list[str] = []
        self.installed: list[int] = []

    def start(self, package: Any) -> None:
        self.installed.append(package.version)

    def submit(self, token: str, data: bytes, first_line: int, version: int, limit: int,
               workers: list[str] | None, fmt: Any = None, first_chunk: bool = True) -> None:
        self.submitted.append((token, workers))

    def forget(self, token: str) -> None:
        pass

    def cancel(self, token: str) -> None:
        self.cancelled.append(token)

    def install(self, package: Any) -> None:
        self.installed.append(package.version)

    def restart(self, worker: str) -> None:
        self.restarted.append(worker)

    def reconnect(self, settings: Any) -> None:
        pass

    def close(self, timeout: float) -> None:
        pass


@pytest.fixture
def setup(tmp_path: Path) -> tuple[Any, FakeLink, FakeClock, Path]:
    need_distributed()
    from ipspool.dask_executor import DaskExecutor
    from ipspool.dask_link import Connected, Installed

    config = parse_config({"spool": {"dir": str(tmp_path / "spool")},
                           "executor": {"kind": "dask", "scheduler": "tcp://127.0.0.1:1"},
                           "workers": {"heartbeat_timeout": 10.0}})
    link, clock = FakeLink(), FakeClock()
    executor = DaskExecutor(config, tmp_path, clock, Counter(), link=link)  # type: ignore[arg-type]
    executor.start(FakeSelector())
    executor.handle(Connected("tcp://127.0.0.1:1", {"tcp://w1:1": 2, "tcp://w2:1": 1}))
    executor.handle(Installed(1))
    data = tmp_path / "input"
    data.write_bytes(b"10.0.0.1\n10.0.0.2\n")
    return executor, link, clock, data


def chunk(path: Path, index: int = 0) -> Chunk:
    st = os.stat(path)
    return Chunk(1, index, str(path), 0, st.st_size, 1, dev=st.st_dev, ino=st.st_ino)


def events(executor: Any) -> list[Any]:
    return list(executor.events())


def test_chunks_in_flight_are_bounded_by_the_cluster_threads(setup: Any) -> None:
    """free_slots: the cluster's threads plus one per worker, minus what is out; none on an old pipeline."""
    executor, _, _, data = setup
    assert executor.free_slots() == 3 + 2
    executor.submit(chunk(data))
    assert executor.free_slots() == 4 and executor.inflight() == 1
    executor.refresh()
    assert executor.free_slots() == 0, "a chunk must not run on the old pipeline version"


def test_result_is_written_here_as_a_part_and_reported_done(setup: Any) -> None:
    """The result bytes become a part file in parts_dir; Done carries the counts."""
    from ipspool.dask_link import Finished

    executor, link, _, data = setup
    executor.submit(chunk(data))
    token = link.submitted[0][0]
    executor.handle(Finished(token, (b'{"line":1}\n', {"lines": 2}, []), None))
    [done] = events(executor)
    assert isinstance(done, Done) and done.counts == {"lines": 2}
    assert Path(done.part).read_bytes() == b'{"line":1}\n'
    assert executor.inflight() == 0


def test_dead_dask_worker_is_one_charged_loss_and_a_restart_counted(setup: Any) -> None:
    """KilledWorker: Lost(started=True) naming the worker; worker_restarts counts it."""
    from distributed.scheduler import KilledWorker

    from ipspool.dask_link import Begun, Finished

    executor, link, _, data = setup
    executor.submit(chunk(data))
    token = link.submitted[0][0]
    executor.handle(Begun(token, "tcp://w1:1"))
    error = KilledWorker(f"ipspool-{token}", type("W", (), {"address": "tcp://w1:1"})(), 0)
    executor.handle(Finished(token, None, error))
    [lost] = events(executor)
    assert isinstance(lost, Lost) and lost.started and "tcp://w1:1" in lost.cause
    assert executor.totals["worker_restarts"] == 1


def test_scheduler_lost_hands_every_chunk_back_uncharged_and_takes_nothing_until_back(setup: Any) -> None:
    """SchedulerLost: every chunk Lost(started=False); no slots until Connected and installed again."""
    from ipspool.dask_link import Connected, Installed, SchedulerLost

    executor, _, _, data = setup
    executor.submit(chunk(data, 0))
    executor.submit(chunk(data, 1))
    executor.handle(SchedulerLost("tcp://127.0.0.1:1", "gone"))
    lost = events(executor)
    assert [(type(e), e.started) for e in lost] == [(Lost, False), (Lost, False)]
    assert executor.free_slots() == 0 and executor.ready()
    [summary] = executor.describe(0.0)
    assert summary["scheduler_state"] == "down" and summary["resent"] == 2 and summary["retried"] == 0
    executor.handle(Connected("tcp://127.0.0.1:1", {"tcp://w3:1": 2}))
    assert executor.free_slots() == 0
    executor.handle(Installed(1))
    assert executor.free_slots() == 2 + 1


def test_cancelled_or_stale_chunks_are_sent_again_uncharged(setup: Any) -> None:
    """A cancelled future or a worker with an older pipeline: Lost(started=False); stale reinstalls."""
    from ipspool.dask_link import Finished
    from ipspool.dask_remote import StalePipeline

    executor, link, _, data = setup
    executor.submit(chunk(data, 0))
    executor.submit(chunk(data, 1))
    (first, _), (second, _) = link.submitted
    executor.handle(Finished(first, None, asyncio.CancelledError()))
    executor.handle(Finished(second, None, StalePipeline("old")))
    assert [e.started for e in events(executor)] == [False, False]
    assert link.installed[-1] == 1  # the current version, once more


def test_chunk_past_heartbeat_timeout_is_lost_charged_and_its_worker_restarted(setup: Any) -> None:
    """No result heartbeat_timeout after it began: Lost(started=True), cancelled, worker restarted, avoided."""
    from ipspool.dask_link import Begun

    executor, link, clock, data = setup
    executor.submit(chunk(data, 0))
    executor.submit(chunk(data, 1))
    (hung, _), (other, _) = link.submitted
    executor.handle(Begun(hung, "tcp://w1:1"))
    executor.handle(Begun(other, "tcp://w1:1"))
    clock.advance(5)
    executor.tick(clock.monotonic())
    assert not events(executor) and executor.healthy(clock.monotonic())
    clock.advance(6)
    assert not executor.healthy(clock.monotonic())
    executor.tick(clock.monotonic())
    lost = events(executor)
    assert all(isinstance(e, Lost) and e.started and "heartbeat_timeout" in e.cause for e in lost)
    assert link.restarted == ["tcp://w1:1"] and hung in link.cancelled
    executor.submit(chunk(data, 2))
    assert link.submitted[-1][1] == ["tcp://w2:1"], "nothing new goes to the worker being restarted"


def test_retry_alone_is_pinned_to_an_idle_worker_and_others_avoid_it(setup: Any) -> None:
    """submit(alone=True): one idle worker runs only the retry; other chunks go elsewhere."""
    from ipspool.dask_link import Begun

    executor, link, _, data = setup
    executor.submit(chunk(data, 0))
    executor.handle(Begun(link.submitted[0][0], "tcp://w1:1"))
    assert executor.can_run_alone()
    executor.submit(chunk(data, 1), alone=True)
    assert link.submitted[-1][1] == ["tcp://w2:1"]
    assert not executor.can_run_alone()
    executor.submit(chunk(data, 2))
    assert link.submitted[-1][1] == ["tcp://w1:1"]


def test_oversized_result_fails_the_file_as_result_too_large(setup: Any) -> None:
    """The remote side reports only the size of a result beyond the output ratio: Failed(result_too_large)."""
    from ipspool.dask_link import Finished

    executor, link, _, data = setup
    executor.submit(chunk(data))
    executor.handle(Finished(link.submitted[0][0], (b"", {"result_bytes": 1 << 30}, []), None))
    [failed] = events(executor)
    assert isinstance(failed, Failed) and failed.reason == "result_too_large"


def test_dask_config_needs_a_scheduler_url_and_whole_tls_settings() -> None:
    """kind = "dask" without tcp:// or tls://, tls:// without its files, or files without tls://: errors."""
    from ipspool.config import ConfigError

    for executor in ({"kind": "dask"}, {"kind": "dask", "scheduler": "127.0.0.1:8786"},
                     {"kind": "dask", "scheduler": "tls://h:1", "tls_ca_file": "ca"},
                     {"kind": "dask", "scheduler": "tcp://h:1", "tls_ca_file": "ca"}):
        with pytest.raises(ConfigError, match="executor"):
            parse_config({"executor": executor})
    parse_config({"executor": {"kind": "dask", "scheduler": "tls://h:1", "tls_ca_file": "a", "tls_cert_file": "b",
                               "tls_key_file": "c"}})


def test_status_shows_the_dask_executor_line_and_its_workers() -> None:
    """render_status: one Executor line from the summary row, a table row per Dask worker with its address."""
    from ipspool.status import render_status

    table = [
        {"slot": 0, "pid": 0, "host": "tcp://10.0.0.7:40000", "executor": "dask", "threads": 4, "ready": True,
         "retiring": False, "inflight": 3, "heartbeat_age": 1.5, "uptime": 60, "restarts": 1,
         "chunks_done": 12, "lines_done": 3400, "current": ["big.txt"]},
        {"slot": "queued", "pid": 0, "host": "tls://sched:8786", "executor": "dask", "scheduler_state": "up",
         "pipeline_version": 2, "ready": True, "retiring": False, "inflight": 1, "retried": 2, "resent": 5},
    ]
    text = render_status({"daemon": {"worker_table": table}, "totals": {}})
    assert ("Executor: dask tls://sched:8786 (up, pipeline v2): 1 worker(s), 4 thread(s), 4 chunk(s) in flight "
            "(1 not begun), 1 worker deaths, 2 chunk(s) retried, 5 sent again uncharged") in text
    [row] = [line for line in text.splitlines() if "[tcp://10.0.0.7:40000]" in line]
    assert "big.txt" in row and "3400" in row and "queued" not in text


def test_a_pipeline_that_fails_to_install_is_retried_and_the_old_one_kept(setup: Any) -> None:
    """dask.pipeline_failed: the workers keep the version they have; the install is tried again later."""
    from structlog.testing import capture_logs

    from ipspool.dask_link import Installed

    executor, _, _, _ = setup
    with capture_logs() as logs:
        executor.handle(Installed(2, "ModuleNotFoundError: no module named 'gone'"))
    assert [e["version"] for e in logs if e["event"] == "dask.pipeline_failed"] == [2]
    assert executor.version == 1


def test_the_executor_says_where_it_connects(tmp_path: Path) -> None:
    """dask.connecting names the scheduler before the first chunk can go anywhere."""
    need_distributed()
    from structlog.testing import capture_logs

    from ipspool.dask_executor import DaskExecutor

    config = parse_config({"spool": {"dir": str(tmp_path / "spool")},
                           "executor": {"kind": "dask", "scheduler": "tcp://127.0.0.1:1"}})
    executor = DaskExecutor(config, tmp_path, FakeClock(), Counter(), link=FakeLink())  # type: ignore[arg-type]
    with capture_logs() as logs:
        executor.start(FakeSelector())
    assert any(e["event"] == "dask.connecting" and e["scheduler"] == "tcp://127.0.0.1:1" for e in logs)
    assert executor.free_slots() == 0  # nothing is sent before the scheduler answers
