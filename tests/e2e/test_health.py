"""Health alerts and metrics failures of a real daemon: spool.backlog, disk.low, metrics.write_failed.

The health checks run every 5 s in the supervisor's loop (reporting.py);
their edges (warn once, clear once) are unit-tested with a fake clock in
tests/unit/test_decisions_jobs.py. Here the whole path runs: configuration,
a real spool and filesystem, the log.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable

from tests.support.daemon import Daemon, wait_for

HEALTH_EVERY = 5.0  # reporting.py: the period of the health checks


def test_a_backlog_over_alerts_backlog_files_warns_and_clears(make_daemon: Callable[..., Daemon]) -> None:
    """alerts.backlog_files = 1, one chunk at a time on a slow stage: spool.backlog, then .cleared once done."""
    d = make_daemon(workers={"processes": 1, "threads": 1, "max_inflight": 1},
                    pipeline={"stages": ["classify", "tests.support.stagelib:slow"]},
                    alerts={"backlog_files": 1, "backlog_age": 0})
    d.start()
    names = [f"wait-{i}.txt" for i in range(16)]  # ~13 s of work: several health checks see the queue
    for i, name in enumerate(names):
        d.drop(name, "".join(f"10.5.{i}.{n}\n" for n in range(40)))  # ~0.8 s each
    warned = d.wait_event("spool.backlog", timeout=3 * HEALTH_EVERY)
    assert warned["level"] == "warning" and warned["files"] > 1
    assert warned["limit_files"] == 1 and warned["limit_age"] == 0
    for name in names:
        assert len(d.wait_result(name, timeout=60)) == 40
    cleared = d.wait_event("spool.backlog.cleared", timeout=3 * HEALTH_EVERY)
    assert cleared["level"] == "info" and cleared["files"] <= 1
    assert len(d.events("spool.backlog")) == 1  # one warning per crossing, not one per check
    assert d.stop() == 0


def test_results_disk_under_alerts_disk_low_bytes_warns_and_a_reload_clears_it(
    make_daemon: Callable[..., Daemon],
) -> None:
    """disk_low_bytes larger than any disk: disk.low with the real free space; a reload to 0 clears it."""
    d = make_daemon(alerts={"disk_low_bytes": 1 << 50})  # 1 PiB, the bound: larger than any disk here
    d.start()
    low = d.wait_event("disk.low", timeout=3 * HEALTH_EVERY)
    assert low["level"] == "warning" and low["path"] == str(d.results)
    assert low["limit_bytes"] == 1 << 50
    assert 0 < low["free_bytes"] <= shutil.disk_usage(d.results).free * 2
    d.drop("still-works.txt", "192.0.2.9\n")  # a warning, not an outage
    assert d.wait_result("still-works.txt")[0]["ip"] == "192.0.2.9"
    d.write_config(alerts={"disk_low_bytes": 0})
    d.signal(1)  # SIGHUP
    d.wait_event("config.reloaded")
    cleared = d.wait_event("disk.low.cleared", timeout=3 * HEALTH_EVERY)
    assert cleared["level"] == "info" and cleared["limit_bytes"] == 0
    assert len(d.events("disk.low")) == 1
    assert d.stop() == 0


def test_a_metrics_file_that_cannot_be_written_is_logged_once_and_recovers(
    make_daemon: Callable[..., Daemon],
) -> None:
    """metrics.write_failed once while its directory is gone (a file stands in its place); then writes resume."""
    d = make_daemon()
    folder = d.root / "textfiles"
    folder.mkdir()
    prom = folder / "ipspool.prom"
    d.write_config(metrics={"textfile": str(prom), "interval": 0.2})
    d.start()
    wait_for(prom.exists, what="the first metrics file")
    shutil.rmtree(folder)
    folder.write_text("not a directory\n")
    failed = d.wait_event("metrics.write_failed")
    assert failed["level"] == "error" and failed["path"] == str(prom)
    assert "Not a directory" in failed["error"]
    folder.unlink()
    folder.mkdir()
    wait_for(prom.exists, what="the metrics file written again")
    assert "ipspool_" in prom.read_text()
    assert len(d.events("metrics.write_failed")) == 1
    assert d.stop() == 0
