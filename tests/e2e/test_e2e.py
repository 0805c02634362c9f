"""End to end: the real daemon as a process, real files in a real spool."""

from __future__ import annotations

import json
import os
import random
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from ipspool.exitcodes import ExitCode
from tests.support.daemon import Daemon, wait_for


def addresses(n: int, seed: int = 1) -> list[str]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        if i % 50 == 7:
            out.append("not-an-ip")
        elif i % 3 == 0:
            out.append(str(rng.getrandbits(128) and f"2001:db8::{rng.getrandbits(16):x}"))
        else:
            out.append(".".join(str(rng.randrange(1, 255)) for _ in range(4)))
    return out


def check_result(records: list[dict[str, object]], lines: list[str]) -> None:
    """One record per line, in order, each naming its line and input."""
    assert len(records) == len(lines)
    for n, (record, line) in enumerate(zip(records, lines, strict=True), 1):
        assert record["line"] == n
        assert record["input"] == line


def test_files_present_before_start_and_dropped_while_running(make_daemon: Callable[..., Daemon]) -> None:
    """Files waiting at start-up and files arriving later are all processed."""
    d = make_daemon()
    (d.spool / "incoming").mkdir(parents=True)
    (d.spool / "incoming" / "early.txt").write_text("1.1.1.1\n10.0.0.1\n")
    d.start()
    assert [r["ip"] for r in d.wait_result("early.txt")] == ["1.1.1.1", "10.0.0.1"]
    d.drop("late.txt", "8.8.8.8\n::1\n")
    records = d.wait_result("late.txt")
    assert [r["class"] for r in records] == ["global", "loopback"]
    assert (d.spool / "done" / "late.txt").exists()
    assert not list((d.spool / "active").iterdir())
    done = d.wait_event("file.done", where=lambda e: e["file"] == "late.txt")
    assert done["lines"] == 2 and done["valid"] == 2 and done["duration"] >= 0
    assert d.stop() == 0


def test_large_file_is_split_across_workers_in_order(make_daemon: Callable[..., Daemon]) -> None:
    """A 200k-line file is cut into chunks that both workers process; output keeps input order."""
    d = make_daemon(workers={"chunk_bytes": 65536})
    d.start()
    lines = addresses(200_000)
    d.drop("big.txt", "\n".join(lines) + "\n")
    records = d.wait_result("big.txt", timeout=120)
    check_result(records, lines)
    done = d.wait_event("file.done", where=lambda e: e["file"] == "big.txt")
    assert done["chunks"] > 20
    workers = {e["worker"] for e in d.events("chunk.done") if e.get("file") == "big.txt"}
    assert workers == {0, 1}
    assert d.stop() == 0


def test_burst_of_two_thousand_small_files(make_daemon: Callable[..., Daemon]) -> None:
    """2,000 files dropped at once all get exactly one correct result."""
    d = make_daemon()
    d.start()
    for i in range(2000):
        d.drop(f"small-{i:04d}.txt", f"10.0.{i // 256}.{i % 256}\n")
    wait_for(lambda: len(list(d.results.glob("*.jsonl"))) == 2000, timeout=120, what="2000 results")
    for i in (0, 999, 1999):
        assert d.wait_result(f"small-{i:04d}.txt")[0]["ip"] == f"10.0.{i // 256}.{i % 256}"
    assert d.stop() == 0
    assert not list((d.spool / "incoming").iterdir())
    assert not list((d.spool / "active").iterdir())


def test_term_mid_work_then_restart_loses_and_duplicates_nothing(make_daemon: Callable[..., Daemon]) -> None:
    """TERM while busy stops cleanly; the next start completes every file exactly once."""
    d = make_daemon(workers={"chunk_bytes": 4096, "threads": 8},
                    pipeline={"stages": ["classify", "tests.support.stagelib:slow"]})
    d.start()
    inputs = {f"f{i:02d}.txt": addresses(40 + i * 7, seed=i) for i in range(30)}
    for name, lines in inputs.items():
        d.drop(name, "\n".join(lines) + "\n")
    d.wait_event("file.done")
    d.signal(signal.SIGTERM)
    assert d.proc is not None and d.proc.wait(60) == 0
    stopping = d.events("daemon.stopping")
    assert stopping and stopping[0]["signal"] == "SIGTERM"
    unfinished = len(list((d.spool / "active").iterdir())) + len(list((d.spool / "incoming").iterdir()))
    assert unfinished > 0, "the stop came too late to test anything"
    d.start()
    for name, lines in inputs.items():
        check_result(d.wait_result(name, timeout=120), lines)
    assert d.stop() == 0
    results = sorted(p.name for p in d.results.iterdir() if p.is_file())
    # No duplicates, nothing partial, every result with its summary.
    assert results == sorted(f"{name}{suffix}" for name in inputs for suffix in (".jsonl", ".summary.json"))
    assert not list((d.results / ".parts").iterdir())


def test_worker_killed_mid_chunk_loses_nothing(make_daemon: Callable[..., Daemon]) -> None:
    """kill -9 of a busy worker: it is replaced and the file still completes correctly."""
    d = make_daemon(workers={"chunk_bytes": 4096, "threads": 4},
                    pipeline={"stages": ["classify", "tests.support.stagelib:slow"]})
    d.start()
    lines = addresses(3000)  # ~8 s of work: the kill lands while chunks are in flight
    d.drop("victim.txt", "\n".join(lines) + "\n")

    def worker_holding_the_file() -> dict[str, Any] | None:
        out = d.ipspool("status", "--config", str(d.config_path), "--json")
        rows = json.loads(out.stdout)["daemon"]["worker_table"] if out.returncode == 0 else []
        return next((row for row in rows if row["inflight"] and "victim.txt" in row["current"]), None)

    busy = wait_for(worker_holding_the_file, what="a worker holding a chunk of victim.txt")
    assert not d.result_path("victim.txt").exists(), "the file finished before the kill"
    victim = busy["pid"]
    os.kill(victim, signal.SIGKILL)
    check_result(d.wait_result("victim.txt", timeout=120), lines)
    died = d.wait_event("worker.died", where=lambda e: e["worker_pid"] == victim)
    assert died["cause"] == "signal 9"
    assert died["chunks_in_flight"] >= 1, "the worker died holding no chunk: nothing was mid-chunk"
    retries = d.events("chunk.retry")
    assert retries and all(e["file"] == "victim.txt" and e["attempt"] == 2 for e in retries)  # the retry is try 2
    assert {e["cause"] for e in retries} == {"signal 9"}
    d.wait_event("worker.replaced")
    wait_for(lambda: len(d.worker_pids()) == 2, what="two workers again")

    def status_counts_the_restart() -> bool:
        out = d.ipspool("status", "--config", str(d.config_path), "--json")
        rows = json.loads(out.stdout)["daemon"]["worker_table"] if out.returncode == 0 else []
        return any(row["slot"] == died["worker"] and row["restarts"] == 1 for row in rows)

    wait_for(status_counts_the_restart, what="the restart in the status worker table")
    assert d.stop() == 0


def test_stage_that_raises_marks_records_and_the_file_goes_on(make_daemon: Callable[..., Daemon]) -> None:
    """A user stage raising on some addresses yields stage_errors on those records only."""
    d = make_daemon(pipeline={"stages": ["classify", "tests.support.stagelib:boom"]})
    d.start()
    d.drop("mixed.txt", "1.1.1.13\n1.1.1.14\n")
    records = d.wait_result("mixed.txt")
    assert records[0]["stage_errors"] == {"tests.support.stagelib:boom": "ValueError: unlucky address"}
    assert records[1]["ok"] is True
    done = d.wait_event("file.done")
    assert done["stage_errors"] == 1
    assert d.stop() == 0


def test_fifo_and_symlink_in_incoming_fail_without_blocking(make_daemon: Callable[..., Daemon]) -> None:
    """A FIFO and a symlink go to failed/ with a reason; other files keep flowing."""
    d = make_daemon()
    d.start()
    os.mkfifo(d.spool / "incoming" / "pipe")
    secret = d.root / "secret.txt"
    secret.write_text("9.9.9.9\n")
    os.symlink(secret, d.spool / "incoming" / "link")
    d.drop("normal.txt", "1.2.3.4\n")
    assert d.wait_result("normal.txt")[0]["ip"] == "1.2.3.4"
    fifo = d.wait_failed("pipe")
    assert fifo["reason"] == "not_regular_file" and "FIFO" in fifo["detail"]
    link = d.wait_failed("link")
    assert link["reason"] == "not_regular_file" and "symbolic link" in link["detail"]
    # The reason is written first, then the entry moves: wait for the move.
    wait_for((d.spool / "failed" / "link").is_symlink, what="the symlink moved to failed/, never followed")
    assert secret.read_text() == "9.9.9.9\n"
    assert not d.result_path("link").exists()
    assert d.stop() == 0


def test_hup_applies_a_good_config_and_refuses_a_bad_one(make_daemon: Callable[..., Daemon]) -> None:
    """HUP with a good file replaces workers; a bad file is logged and the old one stays in force."""
    d = make_daemon()
    d.start()
    old_workers = set(d.worker_pids())
    d.write_config(pipeline={"stages": ["classify", "tests.support.stagelib:tag"]})
    d.signal(signal.SIGHUP)
    d.wait_event("config.reloaded")
    wait_for(lambda: not old_workers & set(d.worker_pids()), what="old workers gone")
    d.drop("after-good.txt", "1.1.1.1\n")
    assert d.wait_result("after-good.txt")[0]["tagged"] == 4

    d.config_path.write_text(d.config_path.read_text() + "\n[workers]\nthreads = -1\n")
    d.signal(signal.SIGHUP)
    failed = d.wait_event("config.reload_failed")
    assert failed["level"] == "error" and failed["problems"]
    d.drop("after-bad.txt", "2.2.2.2\n")
    assert d.wait_result("after-bad.txt")[0]["tagged"] == 4
    assert d.stop() == 0


def test_status_reads_the_live_manager(daemon: Daemon) -> None:
    """`ipspool status` shows totals and the worker table of the running daemon."""
    daemon.drop("s.txt", "1.1.1.1\nbad\n")
    daemon.wait_result("s.txt")
    snap: dict[str, object] = {}

    def totals_published() -> bool:
        nonlocal snap
        out = daemon.ipspool("status", "--config", str(daemon.config_path), "--json")
        assert out.returncode == 0, out.stderr
        snap = json.loads(out.stdout)
        return snap["totals"].get("files_done") == 1  # type: ignore[union-attr, no-any-return]

    wait_for(totals_published, what="totals in the Manager")
    totals = snap["totals"]
    assert totals["lines"] == 2 and totals["valid"] == 1 and totals["invalid"] == 1  # type: ignore[index]
    table = snap["daemon"]["worker_table"]  # type: ignore[index]
    assert len(table) == 2 and all(row["ready"] for row in table)
    human = daemon.ipspool("status", "--config", str(daemon.config_path))
    assert human.returncode == 0 and "WORKER" in human.stdout and "1 files done" in human.stdout


def test_status_when_not_running(tmp_path: Path, make_daemon: Callable[..., Daemon]) -> None:
    """Without a daemon, status says so and exits NOT_RUNNING."""
    d = make_daemon()
    out = d.ipspool("status", "--config", str(d.config_path))
    assert out.returncode == ExitCode.NOT_RUNNING and "not running" in out.stderr


def test_submit_wait_reports_done_and_failed(daemon: Daemon, tmp_path: Path) -> None:
    """`submit --wait` exits 0 when every file has its result, 1 when one failed."""
    good = tmp_path / "good.txt"
    good.write_text("1.1.1.1\n")
    out = daemon.ipspool("submit", "--config", str(daemon.config_path), "--wait", "--timeout", "60", str(good))
    assert out.returncode == 0, out.stderr
    assert "good.txt: done" in out.stdout
    again = daemon.ipspool("submit", "--config", str(daemon.config_path), "--wait", "--timeout", "60", str(good))
    assert again.returncode == 0 and "good.txt.1: done" in again.stdout
    assert json.loads(daemon.result_path("good.txt.1").read_text())["ip"] == "1.1.1.1"


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_stop_signals_exit_zero(make_daemon: Callable[..., Daemon], signum: int) -> None:
    """TERM and INT both stop the daemon gracefully with exit code 0."""
    d = make_daemon()
    d.start()
    d.signal(signum)
    assert d.proc is not None and d.proc.wait(30) == 0
    assert d.events("daemon.stopped")


def test_large_file_parts_are_joined_while_it_is_processed(make_daemon: Callable[..., Daemon]) -> None:
    """A multi-chunk file's parts are appended in order as they arrive (and removed), not all at the end."""
    d = make_daemon(workers={"chunk_bytes": 4096, "threads": 4},
                    pipeline={"stages": ["classify", "tests.support.stagelib:sleepy"]})
    d.start()
    lines = addresses(3000)
    d.drop("growing.txt", "\n".join(lines) + "\n")
    parts = d.results / ".parts"
    seen: list[int] = []

    def assembly_growing_before_the_result() -> bool:
        assembled = [p for p in parts.rglob("*") if p.name.endswith(".assembled")]  # in this run's folder
        if assembled and not d.result_path("growing.txt").exists():
            seen.append(assembled[0].stat().st_size)
            waiting_parts = [p for p in parts.rglob("*") if p.name.endswith(".part")]
            return len(seen) > 1 and seen[-1] > seen[0] and len(waiting_parts) < 20
        return False

    wait_for(assembly_growing_before_the_result, timeout=60, what="the assembly to grow while chunks run")
    check_result(d.wait_result("growing.txt", timeout=120), lines)
    assert not [p for p in parts.rglob("*") if not p.is_dir()]  # only this run's (empty) folder
    assert d.stop() == 0


def test_log_writes_failing_do_not_stop_processing(make_daemon: Callable[..., Daemon]) -> None:
    """With log.file on /dev/full (every write ENOSPC) the daemon still processes files and stops cleanly."""
    d = make_daemon()
    d.write_config(log={"file": "/dev/full"})
    d.start(wait_ready=False)
    wait_for((d.spool / "tmp").is_dir, what="the spool to be created")
    d.drop("quiet.txt", "1.1.1.1\n")
    assert d.wait_result("quiet.txt")[0]["ip"] == "1.1.1.1"
    assert d.stop() == 0


def test_hup_during_a_stop_is_ignored(make_daemon: Callable[..., Daemon]) -> None:
    """A reload signal that arrives while the daemon drains starts no new workers."""
    d = make_daemon(workers={"chunk_bytes": 4096, "threads": 2},
                    pipeline={"stages": ["classify", "tests.support.stagelib:sleepy"]})
    d.start()
    d.drop("long.txt", "\n".join(addresses(1500)) + "\n")
    d.wait_event("chunk.done")
    d.signal(signal.SIGTERM)
    d.wait_event("daemon.stopping")
    d.signal(signal.SIGHUP)
    assert d.proc is not None and d.proc.wait(60) == 0
    refused = d.wait_event("config.reload_failed")
    assert "stopping" in refused["problems"][0]
    assert not d.events("config.reloading")
    assert [e["generation"] for e in d.events("worker.spawned")] == [0, 0]


def test_status_json_shows_a_non_utf8_name_in_progress(make_daemon: Callable[..., Daemon]) -> None:
    """`status --json` works while a file whose name is not UTF-8 is being processed (shown as \\xNN)."""
    d = make_daemon(workers={"threads": 2},
                    pipeline={"stages": ["classify", "tests.support.stagelib:sleepy"]})
    d.start()
    body = ("\n".join(addresses(3000)) + "\n").encode()  # ~7 s in flight: time for a few status calls
    tmp = d.spool / "tmp" / "x"
    tmp.write_bytes(body)
    os.rename(tmp, os.fsencode(d.spool / "incoming") + b"/caf\xe9.txt")

    def shows_it() -> bool:
        out = d.ipspool("status", "--config", str(d.config_path), "--json")
        assert out.returncode == 0, out.stderr
        rows = json.loads(out.stdout)["daemon"]["worker_table"]
        return any("caf\\xe9.txt" in name for row in rows for name in row["current"])

    wait_for(shows_it, timeout=30, interval=0.2, what="the file in the worker table")
    assert d.stop() == 0


def test_reload_to_a_log_file_that_cannot_be_opened_is_refused(make_daemon: Callable[..., Daemon]) -> None:
    """HUP naming a log.file in a missing directory is refused; the daemon keeps running and logging."""
    d = make_daemon()
    d.start()
    good = d.config_path.read_text()
    d.config_path.write_text(good.replace(str(d.log_path), str(d.root / "missing" / "x.log")))
    d.signal(signal.SIGHUP)
    refused = d.wait_event("config.reload_failed")
    assert "log.file" in refused["problems"][0]
    d.drop("still.txt", "1.2.3.4\n")
    assert d.wait_result("still.txt")[0]["ip"] == "1.2.3.4"
    assert d.stop() == 0


def test_a_run_logs_its_lifecycle_from_start_through_a_reload_to_the_stop(make_daemon: Callable[..., Daemon]) -> None:
    """daemon.started names the setup; workers retired by a reload log worker.drained and are worker.stopped;
    on TERM the new ones drain too."""
    d = make_daemon(workers={"processes": 2, "threads": 3})
    d.start()
    started = d.wait_event("daemon.started")
    assert started["spool"] == str(d.spool) and started["results"] == str(d.results)
    assert started["processes"] == 2 and started["threads"] == 3
    assert started["stages"] == ["classify"] and started["config"] == str(d.config_path)
    first = {e["worker_pid"] for e in d.events("worker.spawned")}
    d.drop("one.txt", "192.0.2.1\n198.51.100.2\nbad\n")
    assert len(d.wait_result("one.txt")) == 3
    d.write_config(workers={"threads": 2})  # a setting the workers hold: they are replaced
    d.signal(signal.SIGHUP)
    assert d.wait_event("config.reloaded")["mode"] == "replace"
    wait_for(lambda: len(d.events("worker.stopped")) == 2, what="both old workers stopped")
    stopped = d.events("worker.stopped")
    assert {e["worker_pid"] for e in stopped} == first and {e["worker"] for e in stopped} == {0, 1}
    drained = {e["pid"]: e for e in d.events("worker.drained")}
    assert set(drained) == first
    assert sum(e["chunks_done"] for e in drained.values()) == 1
    assert sum(e["lines_done"] for e in drained.values()) == 3
    second = {e["worker_pid"] for e in d.events("worker.spawned")} - first
    assert len(second) == 2
    assert d.stop() == 0
    assert {e["pid"] for e in d.events("worker.drained")} == first | second


def test_a_stage_that_cannot_be_loaded_at_start_is_a_config_error(make_daemon: Callable[..., Daemon]) -> None:
    """A configuration that parses but whose stage cannot be imported: config.invalid, CONFIG_ERROR, no worker."""
    d = make_daemon(pipeline={"stages": ["classify", "no_such_module:stage"]})
    d.start(wait_ready=False)
    assert d.proc is not None and d.proc.wait(30) == ExitCode.CONFIG_ERROR
    d.proc = None
    invalid = d.wait_event("config.invalid")
    assert invalid["level"] == "error" and invalid["source"] == "<config>"
    assert any("no_such_module" in p for p in invalid["problems"])
    assert not d.events("worker.spawned")


def test_a_second_term_stops_at_once_and_the_next_start_finishes_the_file(make_daemon: Callable[..., Daemon]) -> None:
    """daemon.stop_now: TERM, then TERM again mid-drain; workers are killed, the file waits in active/."""
    d = make_daemon(workers={"chunk_bytes": 4096, "threads": 2},
                    pipeline={"stages": ["classify", "tests.support.stagelib:slow"]})
    d.start()
    lines = addresses(600)  # ~6 s of work on two workers
    d.drop("big.txt", "\n".join(lines) + "\n")
    d.wait_event("chunk.done", where=lambda e: e["file"] == "big.txt")
    d.signal(signal.SIGTERM)
    stopping = d.wait_event("daemon.stopping")
    assert stopping["inflight"] > 0
    d.signal(signal.SIGTERM)
    assert d.proc is not None and d.proc.wait(30) == 0
    d.proc = None
    now = d.wait_event("daemon.stop_now")
    assert now["level"] == "warning" and now["signal"] == "SIGTERM"
    assert not d.result_path("big.txt").exists()
    assert [p.name for p in (d.spool / "active").iterdir()] == ["big.txt"]
    d.start()
    check_result(d.wait_result("big.txt", timeout=120), lines)
    assert d.stop() == 0
