"""Faults injected into the real daemon: nothing is lost, nothing is duplicated.

Each test drives ``ipspool run`` as a process and checks the promise of
docs/durability.md with ``spoolcheck.audit``.
"""

from __future__ import annotations

import errno
import json
import os
import random
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from ipspool.exitcodes import ExitCode
from ipspool.recovery import recover
from ipspool.spool import Spool
from tests.support.daemon import Daemon, wait_for
from tests.support.spoolcheck import (
    audit,
    crash_supervisor,
    mixed_inputs,
    mixed_lines,
    records_of,
    start_under,
    wait_ready,
)


def drop_all(d: Daemon, inputs: dict[str, list[str]]) -> None:
    for name, lines in inputs.items():
        d.drop(name, "\n".join(lines) + "\n")


def settled(d: Daemon, inputs: dict[str, list[str]]) -> bool:
    """Every input has its result or its failure record."""
    return all(
        d.result_path(name).exists() or (d.spool / "failed" / f"{name}.error.json").exists() for name in inputs
    )


def test_random_kill_9_of_workers_manager_and_supervisor_loses_and_duplicates_nothing(
    make_daemon: Callable[..., Daemon],
) -> None:
    """kill -9 of workers, the Manager and the supervisor (restarted) in three rounds: every file ends once."""
    rng = random.Random(4)
    d = make_daemon(
        workers={"chunk_bytes": 4096, "threads": 8, "max_attempts": 10},
        pipeline={"stages": ["classify", "tests.support.stagelib:sleepy"]},
    )
    inputs = mixed_inputs(100, big_lines=1500)
    d.start()
    drop_all(d, inputs)
    killed = {"worker": 0, "manager": 0, "supervisor": 0}

    def some_progress() -> None:
        """Wait for a random number (1-4) of chunks to finish: the next fault lands mid-work."""
        target = len(d.events("chunk.done")) + rng.randint(1, 4)
        wait_for(lambda: len(d.events("chunk.done")) >= target, timeout=60, what="more chunks done")

    for _round in range(3):
        some_progress()
        if d.worker_pids():
            os.kill(rng.choice(d.worker_pids()), signal.SIGKILL)
            killed["worker"] += 1
        some_progress()
        for pid in d.pids_titled("ipspool: stats"):
            os.kill(pid, signal.SIGKILL)
            killed["manager"] += 1
        some_progress()
        crash_supervisor(d)
        killed["supervisor"] += 1
        start_under(d, [])
        wait_ready(d)
    assert not settled(d, inputs), "the work finished before the faults: make the inputs bigger"
    wait_for(lambda: settled(d, inputs), timeout=120, what="every input settled")
    assert d.stop() == 0
    audit(d, inputs, allowed_failures=("poison",))
    assert killed == {"worker": 3, "manager": 3, "supervisor": 3}
    assert any(e["cause"] == "signal 9" for e in d.events("worker.died"))
    assert d.events("stats.died")
    assert any(e["action"] == "reprocess" for e in d.events("file.recovered"))


def test_manager_killed_processing_goes_on_and_counters_are_exact_again(make_daemon: Callable[..., Daemon]) -> None:
    """The Manager dies: stats.died is logged, files keep completing, it returns with exact totals."""
    d = make_daemon(workers={"threads": 8}, pipeline={"stages": ["classify", "tests.support.stagelib:sleepy"]})
    d.start()
    inputs = {f"m{i:02d}.txt": mixed_lines(40 + i, seed=i) for i in range(30)}
    (manager,) = d.pids_titled("ipspool: stats")
    drop_all(d, dict(list(inputs.items())[:15]))
    os.kill(manager, signal.SIGKILL)
    died = d.wait_event("stats.died")
    assert died["level"] == "error"
    drop_all(d, dict(list(inputs.items())[15:]))
    wait_for(lambda: settled(d, inputs), timeout=60, what="every input settled")
    back = d.wait_event("stats.started", where=lambda e: e["stats_pid"] != manager)
    log_order = [e["event"] for e in d.events() if e["event"] in ("stats.died", "file.done", "stats.started")]
    between = log_order[log_order.index("stats.died"):log_order.index("stats.started", log_order.index("stats.died"))]
    assert "file.done" in between, "no file completed while the Manager was down"
    assert back["stats_pid"] in d.pids_titled("ipspool: stats")

    def exact() -> bool:
        out = d.ipspool("status", "--config", str(d.config_path), "--json")
        totals = json.loads(out.stdout)["totals"] if out.returncode == 0 else {}
        return totals.get("files_done") == 30 and totals.get("lines") == sum(len(v) for v in inputs.values())

    wait_for(exact, timeout=20, what="exact totals from the restarted Manager")
    assert d.stop() == 0
    audit(d, inputs)


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs to fill up; skipped where mount(2) is not permitted."""
    mountpoint = tmp_path / "results-fs"
    mountpoint.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,mode=0755", "tmpfs", str(mountpoint)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root and CAP_SYS_ADMIN): {done.stderr.strip()}")
    yield mountpoint
    # The daemon may still hold the directory open if the test failed: detach lazily.
    subprocess.run(["umount", "-l", str(mountpoint)], check=True)


def fill(directory: Path) -> Path:
    """Write a filler file until the filesystem is full (ENOSPC, and no other error)."""
    filler = directory / "filler"
    with open(filler, "wb") as handle:
        try:
            while True:
                handle.write(b"\0" * 65536)
                handle.flush()
        except OSError as exc:
            if exc.errno != errno.ENOSPC:
                raise
    return filler


def test_results_filesystem_full_keeps_inputs_and_completes_when_space_returns(
    make_daemon: Callable[..., Daemon], small_tmpfs: Path,
) -> None:
    """ENOSPC on results: disk.full, inputs stay in active/, retries back off, all complete after space returns."""
    d = make_daemon(spool={"results_dir": str(small_tmpfs)}, workers={"chunk_bytes": 4096})
    d.results = small_tmpfs
    d.start()
    filler = fill(small_tmpfs)
    inputs = {f"full-{i}.txt": mixed_lines(20 + i, seed=i) for i in range(8)}
    inputs["full-big.txt"] = mixed_lines(3000, seed=99)  # several chunks: the assemble step runs out too
    drop_all(d, inputs)
    full = d.wait_event("disk.full")
    assert full["level"] == "error" and full["results"] == str(small_tmpfs)
    wait_for(lambda: len(d.events("disk.retry")) >= 10, timeout=30, what="several delayed retries")
    delays = [e["delay"] for e in d.events("disk.retry")]
    assert max(delays) > min(delays), "retries do not back off"
    # Safe in the spool, not failed: claimed ones in active/, the rest still in incoming/ (claims pause
    # during an outage: see test_a_results_outage_stops_claiming_instead_of_draining_the_backlog).
    waiting = len(list((d.spool / "active").iterdir())) + len(list((d.spool / "incoming").iterdir()))
    assert waiting == len(inputs)
    assert not list((d.spool / "failed").iterdir())
    filler.unlink()
    wait_for(lambda: settled(d, inputs), timeout=60, what="every input settled")
    recovered = d.wait_event("disk.recovered")
    assert recovered["outage"] > 0
    assert d.stop() == 0
    audit(d, inputs)
    assert len(d.events("disk.full")) == 1  # one alert per outage, not one per chunk


def test_a_results_outage_stops_claiming_instead_of_draining_the_backlog(
    make_daemon: Callable[..., Daemon], small_tmpfs: Path,
) -> None:
    """Backpressure: with results/ full, only what the workers had room for is claimed; the backlog waits."""
    d = make_daemon(spool={"results_dir": str(small_tmpfs)}, workers={"processes": 2, "threads": 2})
    d.results = small_tmpfs
    d.start()
    filler = fill(small_tmpfs)
    inputs = {f"wait-{i}.txt": mixed_lines(20, seed=i) for i in range(60)}
    drop_all(d, inputs)
    d.wait_event("disk.full")
    wait_for(lambda: len(d.events("disk.retry")) >= 6, timeout=30, what="delayed retries")
    capacity = 2 * (2 + 1)  # processes x in-flight chunks per worker (threads + 1)
    claimed = len(list((d.spool / "active").iterdir()))
    assert claimed <= capacity
    assert len(list((d.spool / "incoming").iterdir())) == len(inputs) - claimed
    filler.unlink()
    wait_for(lambda: settled(d, inputs), timeout=60, what="every input settled")
    assert d.stop() == 0
    audit(d, inputs)


def test_assembly_out_of_space_leaves_no_half_result_and_can_be_retried(tmp_path: Path, small_tmpfs: Path) -> None:
    """Spool.assemble hitting ENOSPC removes its output, so the retry after space returns succeeds."""
    spool = Spool(tmp_path / "spool", small_tmpfs)
    spool.create()
    spool.open()
    try:
        parts = []
        for i in range(3):
            part = small_tmpfs / ".parts" / f"p{i}.part"
            part.write_bytes(bytes([48 + i]) * 150_000)
            parts.append(str(part))
        filler = small_tmpfs / "filler"
        filler.write_bytes(b"\0" * 300_000)
        with pytest.raises(OSError) as info:
            spool.assemble(parts, "1.assembled")
        assert info.value.errno == errno.ENOSPC
        assert not (small_tmpfs / ".parts" / "1.assembled").exists()
        filler.unlink()
        out = spool.assemble(parts, "1.assembled")
        assert Path(out).read_bytes() == b"0" * 150_000 + b"1" * 150_000 + b"2" * 150_000
    finally:
        spool.close()


def test_stage_hanging_forever_is_poison_while_other_files_keep_flowing(make_daemon: Callable[..., Daemon]) -> None:
    """A stage that never returns: heartbeat stale, worker replaced, poison after max_attempts; others flow."""
    d = make_daemon(
        workers={"heartbeat_timeout": 2.0, "max_attempts": 2, "threads": 4},
        pipeline={"stages": ["classify", "tests.support.stagelib:hang"]},
    )
    d.start()
    d.drop("hang.txt", "1.1.1.1\n6.6.6.6\n2.2.2.2\n")
    others: dict[str, list[str]] = {}
    deadline = time.monotonic() + 45
    # A steady stream of other files: the stuck thread must be noticed even
    # while the same worker keeps finishing other chunks.
    while not (d.spool / "failed" / "hang.txt.error.json").exists():
        assert time.monotonic() < deadline, "the hanging file was never declared poison"
        name = f"flow-{len(others):03d}.txt"
        others[name] = mixed_lines(5, seed=len(others))
        d.drop(name, "\n".join(others[name]) + "\n")
        time.sleep(0.1)
    failure = d.wait_failed("hang.txt")
    assert failure["reason"] == "poison" and failure["attempts"] == 2
    assert len(d.events("worker.timeout")) >= 2
    wait_for(lambda: settled(d, others), timeout=30, what="the other files")
    done_before = {e["file"] for e in d.events("file.done")}
    assert len(done_before & set(others)) == len(others)
    d.wait_event("worker.replaced")
    assert d.stop(timeout=30) == 0
    assert audit(d, {"hang.txt": [], **others}, allowed_failures=("poison",)) == {"hang.txt": "poison"}


def test_stage_that_aborts_is_poison_without_a_fork_loop(make_daemon: Callable[..., Daemon]) -> None:
    """os.abort() in a stage: workers die and are replaced with back-off; the file is poison, others complete."""
    d = make_daemon(workers={"max_attempts": 3}, pipeline={"stages": ["classify", "tests.support.stagelib:crash"]})
    d.start()
    d.drop("abort.txt", "1.1.1.1\n6.6.6.6\n")
    failure = d.wait_failed("abort.txt")
    assert failure["reason"] == "poison" and "signal 6" in failure["detail"]
    # Deaths in a row with no progress in between: each respawn waits longer.
    # (The back-off of the last death is logged just after the failure record.)
    wait_for(lambda: len(d.events("worker.backoff")) >= 2, what="two back-off events")
    delays = [e["delay"] for e in d.events("worker.backoff")]
    assert len(delays) == 2 and 0 < delays[0] < delays[1]
    d.drop("abort-2.txt", "6.6.6.6\n")
    inputs = {f"ok-{i}.txt": mixed_lines(10, seed=i) for i in range(10)}
    drop_all(d, inputs)
    assert d.wait_failed("abort-2.txt")["reason"] == "poison"
    wait_for(lambda: settled(d, inputs), timeout=30, what="the other files")
    wait_for(lambda: len(d.worker_pids()) == 2, what="both workers back")
    # A fork loop would show up as more spawns while one more file goes through.
    d.drop("after.txt", "1.1.1.1\n")
    assert d.wait_result("after.txt")[0]["ip"] == "1.1.1.1"
    died = d.events("worker.died")
    assert len(died) == 6 and all(e["cause"] == "signal 6" for e in died)
    assert len(d.events("worker.spawned")) == 2 + 6
    assert d.stop() == 0
    audit(d, {"abort.txt": [], "abort-2.txt": [], "after.txt": ["1.1.1.1"], **inputs}, allowed_failures=("poison",))


def test_workers_that_cannot_start_halt_the_daemon_with_worker_boot_error(make_daemon: Callable[..., Daemon]) -> None:
    """A stage that loads in the supervisor but not in workers: daemon.halt, WORKER_BOOT_ERROR, no fork loop."""
    d = make_daemon(pipeline={"stages": ["classify", "tests.support.workerboot:stage"]})
    d.start(wait_ready=False)
    assert d.proc is not None
    assert d.proc.wait(30) == ExitCode.WORKER_BOOT_ERROR
    d.proc = None
    halt = d.wait_event("daemon.halt")
    assert halt["level"] == "critical" and halt["exit_code"] == ExitCode.WORKER_BOOT_ERROR
    boot = d.events("worker.boot_failed")
    assert boot and "cannot be loaded in a worker process" in json.dumps(boot[0]["problems"])
    assert len(d.events("worker.spawned")) <= 3
    assert not d.events("daemon.ready")


# -- power-cut ordering ---------------------------------------------------------

_SYSCALL = re.compile(r"^(\d+)\s+(?:<\.\.\. (\w+) resumed>|(\w+)\()(.*)$")


def trace_events(path: Path) -> list[tuple[str, str]]:
    """(syscall, text) in the order the calls completed (``strace -f -y``)."""
    pending: dict[tuple[str, str], str] = {}
    out: list[tuple[str, str]] = []
    for line in path.read_text(errors="replace").splitlines():
        m = _SYSCALL.match(line)
        if not m:
            continue
        pid, resumed, call, rest = m.groups()
        if resumed:
            text = pending.pop((pid, resumed), "") + rest
            out.append((resumed, text))
        elif rest.endswith("<unfinished ...>"):
            pending[(pid, call)] = rest
        else:
            out.append((call, rest))
    return [(call, text) for call, text in out if "= -1" not in text.rsplit(")", 1)[-1]]


def first(events: list[tuple[str, str]], call: str, *needles: str) -> int:
    for i, (name, text) in enumerate(events):
        if name.startswith(call) and all(n in text for n in needles):  # renameat: renameat2 too
            return i
    raise AssertionError(f"no {call} with {needles} in the trace")


def test_fsync_order_part_then_link_then_results_dir_then_retire(make_daemon: Callable[..., Daemon]) -> None:
    """Traced: claim synced, part fsync'd, linked, results/ fsync'd, then the input leaves active/ and is synced."""
    strace = shutil.which("strace")
    if strace is None or subprocess.run([strace, "-o", "/dev/null", "true"], capture_output=True).returncode:
        pytest.skip("strace is not installed or ptrace is not permitted (apt-get install strace)")
    d = make_daemon(workers={"chunk_bytes": 4096, "processes": 1})
    trace = d.root / "trace"
    start_under(d, [strace, "-f", "-y", "-o", str(trace), "-e",
                    "trace=fsync,fdatasync,rename,renameat,renameat2,link,linkat,unlink,unlinkat"])
    d.wait_event("daemon.ready", after_start=True)
    d.drop("one.txt", "1.1.1.1\n")
    d.drop("many.txt", "\n".join(mixed_lines(2000, seed=3)) + "\n")  # several parts, assembled
    (d.spool / "incoming" / "link").symlink_to("/etc/hostname")  # the failure path
    d.wait_result("one.txt")
    d.wait_result("many.txt")
    d.wait_failed("link")
    (supervisor,) = d.pids_titled("ipspool: supervisor")
    os.kill(supervisor, signal.SIGTERM)
    assert d.proc is not None and d.proc.wait(30) == 0
    d.proc = None
    events = trace_events(trace)
    spool = str(d.spool)
    for name in ("one.txt", "many.txt"):
        claim = first(events, "renameat", f"{spool}/incoming>", f'"{name}"', f"{spool}/active>")
        claim_sync = first(events[claim:], "fsync", f"{spool}/incoming>") + claim
        link = first(events, "linkat", f'"{name}.jsonl"')
        part = re.search(r'"([^"]+\.part|[^"]+\.assembled)"', events[link][1])
        assert part, events[link]
        part_sync = first(events, "fsync", part.group(1))
        results_sync = first(events[link:], "fsync", f"{d.results}>") + link
        retire = first(events, "renameat", f"{spool}/active>", f'"{name}"', f"{spool}/done>")
        done_sync = first(events[retire:], "fsync", f"{spool}/done>") + retire
        active_sync = first(events[retire:], "fsync", f"{spool}/active>") + retire
        assert claim < claim_sync < link, f"{name}: the claim is not durable before the result"
        assert part_sync < link < results_sync < retire, f"{name}: result not durable before the input is retired"
        assert done_sync < active_sync, f"{name}: the input leaves active/ before done/ is synced"
    error_sync = first(events, "fsync", f"{spool}/failed/.link.")
    error_in = first(events, "renameat", '"link.error.json"')
    moved = first(events, "renameat", f"{spool}/active>", '"link"', f"{spool}/failed>")
    failed_sync = first(events[moved:], "fsync", f"{spool}/failed>") + moved
    assert error_sync < error_in < moved < failed_sync, "the failure record is not durable before the input moves"
    assert first(events[error_in:], "fsync", f"{spool}/failed>") + error_in < moved


# -- recovery, through the Spool API -------------------------------------------


def test_recovery_retires_published_finishes_failed_redoes_the_rest_and_cleans_parts(tmp_path: Path) -> None:
    """Spool.recover: result present -> retired (not redone); error record -> failed/; parts and tmp removed."""
    spool = Spool(tmp_path / "spool", tmp_path / "results")
    spool.create()
    spool.open()
    try:
        for name in ("published", "failing", "interrupted"):
            (tmp_path / "spool" / "active" / name).write_text("1.1.1.1\n")
        (tmp_path / "results" / "published.jsonl").write_text('{"line": 1}\n')
        (tmp_path / "spool" / "failed" / "failing.error.json").write_text('{"job": "failing", "reason": "too_large"}')
        (tmp_path / "results" / ".parts" / "123.1.0.part").write_text("half")
        (tmp_path / "spool" / "failed" / ".failing.999.tmp").write_text("{")
        redo, finished, failed = recover(spool, keep=True)
        assert (redo, finished, failed) == (["interrupted"], ["published"], ["failing"])
        assert (tmp_path / "spool" / "done" / "published").exists()
        assert (tmp_path / "results" / "published.jsonl").read_text() == '{"line": 1}\n'  # untouched
        assert (tmp_path / "spool" / "failed" / "failing").exists()
        assert sorted(os.listdir(tmp_path / "spool" / "active")) == ["interrupted"]
        assert not os.listdir(tmp_path / "results" / ".parts")
        assert sorted(os.listdir(tmp_path / "spool" / "failed")) == ["failing", "failing.error.json"]
        (tmp_path / "results" / "interrupted.jsonl").write_text("")
        assert recover(spool, keep=False) == ([], ["interrupted"], [])
        assert not (tmp_path / "spool" / "done" / "interrupted").exists()  # keep_processed=false: deleted
    finally:
        spool.close()


def test_restart_after_crash_between_link_and_retire_does_not_redo(make_daemon: Callable[..., Daemon]) -> None:
    """A result published before a crash is recognised at start-up: file.recovered retired, no second result."""
    d = make_daemon()
    d.spool.mkdir()
    for sub in ("active", "incoming"):
        (d.spool / sub).mkdir()
    d.results.mkdir()
    (d.spool / "active" / "crashed.txt").write_text("1.1.1.1\n")
    (d.results / "crashed.txt.jsonl").write_text('{"line": 1, "input": "1.1.1.1"}\n')
    d.start()
    event = d.wait_event("file.recovered")
    assert event["action"] == "retired" and event["file"] == "crashed.txt"
    assert (d.spool / "done" / "crashed.txt").exists()
    assert records_of(d.results / "crashed.txt.jsonl") == [{"line": 1, "input": "1.1.1.1"}]
    assert not d.events("file.claimed")
    assert d.stop() == 0


def test_an_error_escaping_a_batch_crashes_the_worker_and_the_file_is_poison(
    make_daemon: Callable[..., Daemon],
) -> None:
    """worker.batch_crashed: the worker exits INTERNAL_ERROR, is replaced; its chunk's attempts make the file poison."""
    d = make_daemon(workers={"max_attempts": 2}, pipeline={"stages": ["classify", "tests.support.stagelib:escape"]})
    d.start()
    d.drop("escape.txt", "1.1.1.1\n6.6.6.6\n")
    failure = d.wait_failed("escape.txt")
    assert failure["reason"] == "poison" and failure["attempts"] == 2
    crashed = d.events("worker.batch_crashed")
    assert len(crashed) == 2 and all("KeyboardInterrupt" in e["error"] for e in crashed)
    assert all(e["level"] == "critical" and e["exc_type"] == "KeyboardInterrupt" for e in crashed)
    assert all(e["traceback"].startswith("Traceback (most recent call last):") for e in crashed)
    died = d.wait_event("worker.died")
    assert died["exit_code"] == ExitCode.INTERNAL_ERROR and died["cause"] == f"exit code {int(ExitCode.INTERNAL_ERROR)}"
    d.drop("fine.txt", "2.2.2.2\n")
    assert d.wait_result("fine.txt")[0]["ip"] == "2.2.2.2"
    assert d.stop() == 0


def test_workers_of_a_killed_supervisor_notice_and_exit(make_daemon: Callable[..., Daemon]) -> None:
    """worker.orphaned: kill -9 of the supervisor; each worker sees its pipe close, logs it and exits."""
    d = make_daemon(workers={"processes": 2})
    d.start()
    workers = set(d.worker_pids())
    assert d.proc is not None
    os.kill(d.proc.pid, signal.SIGKILL)
    d.proc.wait(10)
    wait_for(lambda: {e["pid"] for e in d.events("worker.orphaned")} == workers, what="both workers orphaned")
    assert all(e["level"] == "warning" and e["reason"] for e in d.events("worker.orphaned"))
    wait_for(lambda: not set(d.session_pids()) & workers, what="the orphaned workers to exit")
    d.kill_all()  # the Manager, if it is still there
