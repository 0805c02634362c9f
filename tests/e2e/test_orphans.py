"""A worker orphaned by a killed supervisor cannot leave anything behind for the next run."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable

from tests.support.daemon import Daemon, wait_for


def test_an_orphan_finishing_after_the_next_runs_recovery_leaves_no_part(make_daemon: Callable[..., Daemon]) -> None:
    """kill -9 of the supervisor mid-chunk; restart at once; the orphan's late part has nowhere to go."""
    d = make_daemon(workers={"processes": 1, "threads": 1},
                    pipeline={"stages": ["classify", "tests.support.stagelib:inline_slow"]})
    d.start()
    # ~4 s each, inline; both chunks are sent to the one worker (max_inflight = threads + 1),
    # so the orphan starts the second one after the next run's recovery.
    for name in ("slow1.txt", "slow2.txt"):
        d.drop(name, "".join(f"10.1.{i // 250}.{i % 250}\n" for i in range(400)))
    wait_for(lambda: len(d.events("file.claimed")) == 2, 30, what="both files claimed")
    (orphan,) = d.pids_titled("ipspool: worker 0")
    (supervisor,) = d.pids_titled("ipspool: supervisor")
    first_run = d.proc
    assert first_run is not None
    os.kill(supervisor, signal.SIGKILL)
    first_run.wait(10)
    assert os.path.exists(f"/proc/{orphan}"), "the worker must outlive its supervisor for this test"
    d.proc = None
    d.start()  # recovery removes the old run's parts folder while the orphan still works
    for name in ("slow1.txt", "slow2.txt"):
        records = d.wait_result(name, timeout=60)
        assert [r["line"] for r in records] == list(range(1, 401))
    wait_for(lambda: not os.path.exists(f"/proc/{orphan}"), 30, what="the orphan to exit")
    assert any(e.get("pid") == orphan for e in d.events("worker.orphaned"))
    assert d.stop() == 0
    assert list((d.results / ".parts").iterdir()) == []
    assert "Traceback" not in (d.root / "stderr.log").read_text()
