"""The supervisor's commit path driven directly, for states hard to reach by timing."""

from __future__ import annotations

import os
from pathlib import Path

from ipspool.config import load_config
from ipspool.logs import LogTarget, configure_logging
from ipspool.protocol import Done
from ipspool.supervisor import Supervisor
from tests.support.daemon import wait_for


def settle(supervisor: Supervisor) -> None:
    """Let the assembler thread finish (failing if it does not), then take its reports on the 'loop'."""
    def joined() -> bool:
        supervisor.committer.collect()
        return not supervisor.committer.joining()

    wait_for(joined, timeout=10, interval=0.01, what="the assembler thread")
    supervisor.committer.collect()


def test_a_job_reaching_the_commit_queue_twice_is_published_once(tmp_path: Path) -> None:
    """Last chunk and last join both queue the job; it is published once, never also failed."""
    configure_logging("debug", "json", role="test", target=LogTarget(str(tmp_path / "log")))
    config = load_config(None, spool=str(tmp_path / "spool"))
    supervisor = Supervisor(config, None)
    supervisor.spool.create()
    supervisor.spool.open()
    (tmp_path / "spool" / "incoming" / "big").write_bytes(b"1.2.3.4\n" * 3)
    supervisor.intake.offer("big", 0.0)
    claim = supervisor.intake.claim_next()
    assert claim is not None
    claimed = supervisor.intake.inspect(*claim)
    assert claimed is not None
    job = supervisor.book.open_job(claimed, supervisor.intake)
    assert job is not None
    # As if the splitter made three chunks, all handed out.
    first = supervisor.book.split_next(job)
    assert first is not None
    job.close()
    job.total = job.produced = 3
    job.move(job.state.RUNNING)
    job.outstanding = {i: first for i in range(3)}
    book = supervisor.book

    def part(i: int) -> str:
        path = supervisor.spool.part_path(f"x.{i}.part")
        Path(path).write_bytes(b'{"line":%d}\n' % (i + 1))
        return path

    supervisor.committer.delay("ENOSPC (an earlier outage postpones commits)")
    book.on_done(Done((job.seq, 0), part(0), {"lines": 1}))  # a join of part 0 starts
    book.on_done(Done((job.seq, 2), part(2), {"lines": 1}))
    book.on_done(Done((job.seq, 1), part(1), {"lines": 1}))  # complete: queued
    settle(supervisor)  # the join finishes: would queue it again
    assert [j.seq for j in supervisor.committer.to_commit] == [job.seq]
    supervisor.committer.retry_at = 0
    supervisor.committer.commit()
    settle(supervisor)
    supervisor.committer.commit()
    assert sorted(os.listdir(tmp_path / "spool" / "results")) == [".parts", "big.jsonl", "big.summary.json"]
    assert (tmp_path / "spool" / "results" / "big.jsonl").read_bytes() == b'{"line":1}\n{"line":2}\n{"line":3}\n'
    assert os.listdir(tmp_path / "spool" / "failed") == []
    assert os.listdir(tmp_path / "spool" / "done") == ["big"]
    supervisor.committer.assembler.shutdown()
    supervisor.spool.close()


def test_a_reload_that_switches_the_executor_kind_is_refused(tmp_path: Path) -> None:
    """executor.kind takes effect at a restart: a reload asking for another kind names it and changes nothing."""
    configure_logging("debug", "json", role="test", target=LogTarget(str(tmp_path / "log")))
    path = tmp_path / "ipspool.toml"
    spool = tmp_path / "spool"
    path.write_text(f'[spool]\ndir = "{spool}"\n')
    supervisor = Supervisor(load_config(str(path)), str(path))
    path.write_text(f'[spool]\ndir = "{spool}"\n[executor]\nkind = "dask"\nscheduler = "tcp://127.0.0.1:1"\n')
    new, _, problems = supervisor.reload_candidate()
    assert new is None
    assert problems == ["executor.kind cannot change on reload ('local' to 'dask'); "
                        "restart the daemon to switch executors"]
    assert supervisor.config.executor.kind == "local"
    path.write_text(f'[spool]\ndir = "{spool}"\n[workers]\nthreads = 3\n')
    new, _, problems = supervisor.reload_candidate()
    assert problems == [] and new is not None and new.workers.threads == 3
