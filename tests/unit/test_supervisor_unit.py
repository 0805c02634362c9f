"""The supervisor's commit path driven directly, for states hard to reach by timing."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from ipspool.config import load_config
from ipspool.logs import LogTarget, configure_logging
from ipspool.supervisor import Supervisor, WorkerHandle


def settle(supervisor: Supervisor) -> None:
    """Let the assembler thread finish, then take its reports on the 'loop'."""
    deadline = time.monotonic() + 10
    while any(job.assembling for job in supervisor.jobs.values()) and time.monotonic() < deadline:
        time.sleep(0.01)
        supervisor.collect_assembled()
    supervisor.collect_assembled()


def test_a_job_reaching_the_commit_queue_twice_is_published_once(tmp_path: Path) -> None:
    """Last chunk and last join both queue the job; it is published once, never also failed."""
    configure_logging("debug", "json", role="test", target=LogTarget(str(tmp_path / "log")))
    config = load_config(None, spool=str(tmp_path / "spool"))
    supervisor = Supervisor(config, None)
    supervisor.spool.create()
    supervisor.spool.open()
    (tmp_path / "spool" / "incoming" / "big").write_bytes(b"1.2.3.4\n" * 3)
    job_name = supervisor.spool.claim("big")
    assert job_name is not None
    job = supervisor.open_job("big", job_name)
    assert job is not None
    job.chunks, job.total = None, 3  # as if the splitter made three chunks
    worker: Any = WorkerHandle(0, None, None, None, 0.0, 1, 0)  # type: ignore[arg-type]
    worker.inflight = {(job.seq, i): None for i in range(3)}

    def part(i: int) -> str:
        path = supervisor.spool.part_path(f"x.{i}.part")
        Path(path).write_bytes(b'{"line":%d}\n' % (i + 1))
        return path

    supervisor.delay_commit("ENOSPC (an earlier outage postpones commits)")
    supervisor.chunk_done(worker, (job.seq, 0), part(0), {"lines": 1})  # a join of part 0 starts
    supervisor.chunk_done(worker, (job.seq, 2), part(2), {"lines": 1})
    supervisor.chunk_done(worker, (job.seq, 1), part(1), {"lines": 1})  # complete: queued
    settle(supervisor)  # the join finishes: would queue it again
    assert [j.seq for j in supervisor.to_commit] == [job.seq]
    supervisor.commit_retry_at = 0
    supervisor.commit()
    settle(supervisor)
    supervisor.commit()
    assert sorted(os.listdir(tmp_path / "spool" / "results")) == [".parts", "big.jsonl"]
    assert (tmp_path / "spool" / "results" / "big.jsonl").read_bytes() == b'{"line":1}\n{"line":2}\n{"line":3}\n'
    assert os.listdir(tmp_path / "spool" / "failed") == []
    assert os.listdir(tmp_path / "spool" / "done") == ["big"]
    supervisor.assembler.shutdown()
    supervisor.spool.close()
