"""Crash points and injected errors at every mutating system call of the real daemon.

The method of ALICE ("All File Systems Are Not Created Equal", OSDI 2014) and
SQLite's crash tests, on a real ``ipspool run``: record the mutating calls of
one process (the supervisor from its start, or a worker attached once it is
up), then for every call N run the same scenario from a fresh spool, cut the
process at exactly that call (``strace --inject=SYSCALL:signal=KILL:when=K``)
or make the call fail (``error=EIO|ENOSPC|EDQUOT``), restart the daemon as
systemd would, let it finish, stop it and audit. See tests/crashpoints.py for
how each call is hit exactly and what the audits check.

The default run explores every call of a single file's life in the supervisor
and in a worker, and an error at each directory fsync; the full exploration
(every scenario x every call x kill and each errno) is marked
``crashpoints_full``: ``make crashpoints``.

Failures found are grouped into findings (``crashpoints.FINDINGS``). A point
that fails for a reason no finding names fails its test; each known finding
is an xfail(strict) test that passes, and so fails the run, once it is fixed:
then remove it from KNOWN below.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support import crashpoints as cp

pytestmark = pytest.mark.skipif(not cp.strace_available(), reason="strace is not installed or ptrace is not permitted")

# What each test's scope still shows (a finding fixed is removed, so its test keeps it fixed).
KNOWN: dict[str, set[str]] = {
    "basic/supervisor/kill": set(),
    "basic/worker/kill+errors": set(),
    # An EIO from fsync(incoming/ | active/ | done/) is logged (spool.sync_failed) and the step retried
    # with back-off; the retry's success does not prove the earlier rename durable (Linux reports a
    # writeback error once). What it risks after a power cut is a duplicate or a second retire, never a
    # loss: docs/durability.md, "Where the promise stops".
    "basic/supervisor/fsync-errors": {"fsync-error-then-trusted", "done-never-resynced"},
}


def _report_dir() -> Path | None:
    where = os.environ.get("CRASHPOINTS_REPORT")
    return Path(where) if where else None


class Exploration:
    def __init__(self, key: str, role: str, results: list[cp.PointResult], explorer: cp.Explorer,
                 seconds: float) -> None:
        self.key = key
        self.role = role
        self.results = results
        self.explorer = explorer
        self.seconds = seconds
        self.findings: dict[str, list[str]] = {}
        for r in results:
            for f in cp.classify(r, role):
                key = f.split(":")[0] if f.startswith(cp.ALLOWED) else f
                self.findings.setdefault(key, []).append(r.describe())

    def summary(self) -> str:
        hits = Counter(r.hit.split(":")[0] for r in self.results)
        return (f"{self.key}: {len(self.results)} points in {self.seconds:.0f}s, hits {dict(hits)}, "
                f"findings {sorted(self.findings)}")


def explore(tmp: Path, scenario: str, role: str, modes: list[str], key: str,
            select: Callable[[cp.Target], bool] | None = None) -> Exploration:
    t0 = time.monotonic()
    report = _report_dir()
    path = None
    if report:
        report.mkdir(parents=True, exist_ok=True)
        path = report / "points.jsonl"
    explorer, results = cp.explore_all(cp.scenarios()[scenario], role, modes, tmp / key.replace("/", "-"),
                                       select, path)
    done = Exploration(key, role, results, explorer, time.monotonic() - t0)
    print(done.summary())
    if report:
        with open(report / "summary.jsonl", "a") as handle:
            handle.write(json.dumps({"key": key, "points": len(results), "seconds": round(done.seconds, 1),
                                     "calls": len(explorer.targets), "findings": done.findings,
                                     "baseline": explorer.baseline}) + "\n")
    return done


@pytest.fixture(scope="module")
def workdir() -> Iterator[Path]:
    """Short: the Manager's socket lives in each spool, and AF_UNIX paths end at 107 bytes.

    Kept with CRASHPOINTS_KEEP=1 (the run directories of failed points are in it).
    """
    path = Path(tempfile.mkdtemp(prefix="cp-"))
    yield path
    if not os.environ.get("CRASHPOINTS_KEEP"):
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def basic_supervisor_kills(workdir: Path) -> Exploration:
    return explore(workdir, "basic", "supervisor", ["kill"], "basic/supervisor/kill")


@pytest.fixture(scope="module")
def basic_worker(workdir: Path) -> Exploration:
    return explore(workdir, "basic", "worker", ["kill", "EIO"], "basic/worker/kill+errors")


@pytest.fixture(scope="module")
def basic_fsync_errors(workdir: Path) -> Exploration:
    return explore(workdir, "basic", "supervisor", ["EIO"], "basic/supervisor/fsync-errors",
                   select=lambda t: t.call.name == "fsync")


FAST = ("basic_supervisor_kills", "basic_worker", "basic_fsync_errors")


@pytest.mark.parametrize("exploration", FAST)
def test_every_call_is_hit_exactly(exploration: str, request: pytest.FixtureRequest) -> None:
    """Each run's own trace shows the cut (or failed) call is the recorded one: no point is missed or guessed."""
    done: Exploration = request.getfixturevalue(exploration)
    assert done.results, "nothing explored"
    assert all(t.kill is not None for t in done.explorer.targets), "a call of the recording cannot be cut"
    wrong = [r.describe() for r in done.results if r.hit != "exact"]
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize("exploration", FAST)
def test_every_point_passes_the_audit_but_for_known_findings(exploration: str, request: pytest.FixtureRequest) -> None:
    """After every cut or error, restarted and finished: results identical to the uninterrupted run, nothing left."""
    done: Exploration = request.getfixturevalue(exploration)
    unknown = {f: where for f, where in done.findings.items() if f not in KNOWN[done.key] and f not in cp.ALLOWED}
    assert not unknown, json.dumps(unknown, indent=1)


def _known_cases() -> Iterator[object]:
    fixture = {"basic/supervisor/kill": "basic_supervisor_kills", "basic/worker/kill+errors": "basic_worker",
               "basic/supervisor/fsync-errors": "basic_fsync_errors"}
    for key, findings in KNOWN.items():
        for finding in sorted(findings):
            yield pytest.param(fixture[key], finding, id=f"{key}:{finding}")


@pytest.mark.parametrize(("exploration", "finding"), list(_known_cases()))
def test_known_finding_is_gone(exploration: str, finding: str, request: pytest.FixtureRequest) -> None:
    """xfail while the finding reproduces; fails once it is gone, so that KNOWN is kept true."""
    done: Exploration = request.getfixturevalue(exploration)
    if finding in done.findings:
        where = done.findings[finding]
        pytest.xfail(f"{cp.FINDINGS[finding]} -- {len(where)} points, e.g. {where[0]}")
    pytest.fail(f"{finding} no longer reproduces in {done.key}: fixed? remove it from KNOWN")


# -- how the harness tells what it saw -------------------------------------------

_RMDIR = "unlinkat(<{ROOT}/spool/results/.parts>, 'run.{RND}', AT_REMOVEDIR)"
_CLEARED = " (until the next start: a restart cleared it)"


def _record(call: str, mode: str, problem: str) -> dict[str, object]:
    return {"role": "supervisor", "mode": mode, "call": call, "order": [], "problems": [problem], "hit": "exact",
            "extra_injections": 0, "stuck": [], "settled": True, "notes": []}


def test_audit_names_an_empty_run_folder_apart_from_part_files(tmp_path: Path) -> None:
    """An empty results/.parts/RUN is its own problem; a run folder with a part in it is reported by that part."""
    spool, results = tmp_path / "spool", tmp_path / "spool" / "results"
    (results / ".parts" / "run.1.2").mkdir(parents=True)
    (results / ".parts" / "run.3.4").mkdir()
    (results / ".parts" / "run.3.4" / "9.1.0.part").write_bytes(b"{}\n")
    problems = cp.audit_spool(spool, results, {}).problems
    assert problems == ["empty run folder left in results/.parts/: ['run.1.2']",
                        "part files left in results/.parts/: ['run.3.4/9.1.0.part']"]


def test_only_an_error_on_end_runs_rmdir_leaving_its_empty_folder_until_a_restart_is_allowed() -> None:
    """The end_run leftover is allowed once a restart removed it; a folder that stayed, or left by another
    call or by a kill, or with parts in it, stays an unknown finding."""
    left = "empty run folder left in results/.parts/: ['run.123.456']"
    assert cp.classify_record(_record(_RMDIR, "EIO", left + _CLEARED)) == {"run-folder-left-until-restart"}
    unknown = [
        _record(_RMDIR, "EIO", left + " (still there after a restart)"),
        _record(_RMDIR, "kill", left + _CLEARED),
        _record("fsync(<{ROOT}/spool/results>)", "EIO", left + _CLEARED),
        _record(_RMDIR, "EIO", "part files left in results/.parts/: ['run.123.456/1.summary']" + _CLEARED),
        _record(_RMDIR, "EIO", "empty run folder left in results/.parts/: ['run.1.2', 'run.3.4']" + _CLEARED),
    ]
    for rec in unknown:
        assert all(f.startswith("unknown: ") for f in cp.classify_record(rec)), rec


def test_a_run_that_made_fewer_calls_of_the_kind_is_another_schedule(tmp_path: Path) -> None:
    """Not reached because no thread made K such calls: retried as another schedule; K calls made and no
    injection: plainly not reached."""
    explorer = cp.Explorer(cp.scenarios()["basic"], tmp_path)
    call = cp.Call(7, 0.0, "ftruncate", [("fd", (5, "/x/1.assembled")), ("raw", "0")], "0")
    target = cp.Target(1, call, "thread-1", "ftruncate(</x/1.assembled>, N)", None, cp.Choice((), 3, False), True)
    norm = cp.Normalizer(tmp_path, {})
    two = [call, call]
    hit, _ = explorer._check_hit(two, {}, target, norm, "EIO", cp.Choice((), 3, False), tmp_path, None)
    assert hit == "not reached: another schedule, at most 2 ftruncate calls in a thread, not 3"
    hit, _ = explorer._check_hit([*two, call], {}, target, norm, "EIO", cp.Choice((), 3, False), tmp_path, None)
    assert hit == "not reached"


# -- the full exploration: make crashpoints ------------------------------------

FULL_PLAN = [("basic", "supervisor"), ("failing", "supervisor"), ("rejected", "supervisor"),
             ("multichunk", "supervisor"), ("recovery", "supervisor"), ("basic", "worker"),
             ("multichunk", "worker"), ("compressed", "supervisor"), ("subdirs", "supervisor")]
FULL_KNOWN = {
    "stuck-until-restart",  # a failure record that cannot be written waits for the next start
    "fsync-error-then-trusted", "done-never-resynced",  # as in KNOWN above
}


@pytest.mark.crashpoints_full
@pytest.mark.timeout(4 * 3600)
@pytest.mark.parametrize(("scenario", "role"), FULL_PLAN, ids=[f"{s}-{r}" for s, r in FULL_PLAN])
def test_full_exploration(scenario: str, role: str, workdir: Path) -> None:
    """Every call x kill, EIO, ENOSPC, EDQUOT: every point exact, every failure a known finding."""
    done = explore(workdir, scenario, role, ["kill", "EIO", "ENOSPC", "EDQUOT"], f"{scenario}/{role}/full")
    for finding, where in sorted(done.findings.items()):
        print(f"  {finding}: {len(where)} points, e.g. {where[0]}")
    unknown = {f: w for f, w in done.findings.items() if f not in FULL_KNOWN and f not in cp.ALLOWED}
    assert not unknown, json.dumps(unknown, indent=1)


def _decompression_or_commit(target: cp.Target) -> bool:
    """A call on the plain copy of a compressed input, on a summary, or on a result's link."""
    return any(mark in target.call.text for mark in (".expanded", ".summary", ".jsonl"))


@pytest.mark.crashpoints_full
@pytest.mark.timeout(3600)
def test_compressed_input_and_summary_commit_survive_a_kill_at_each_step(workdir: Path) -> None:
    """A gzip input split into chunks: SIGKILL (and ENOSPC) at every call writing or syncing its decompressed
    copy, writing or linking its summary and linking its result; every point exact, the audit holds (one result,
    byte-identical, beside its summary), and rule S (summary linked before result) holds on every trace."""
    done = explore(workdir, "compressed", "supervisor", ["kill", "ENOSPC"], "compressed/supervisor/commit",
                   select=_decompression_or_commit)
    assert done.results, "no call on the copy, the summary or the result was recorded"
    for finding, where in sorted(done.findings.items()):
        print(f"  {finding}: {len(where)} points, e.g. {where[0]}")
    unknown = {f: w for f, w in done.findings.items() if f not in FULL_KNOWN and f not in cp.ALLOWED}
    assert not unknown, json.dumps(unknown, indent=1)


def _subdir_step(target: cp.Target) -> bool:
    """A call on a producer subdirectory (the claim's rename out of it, its fsync) or on the job it became."""
    # Not the data writes that carry the job's name in their bytes (a summary's, the log's): their ordinal
    # among the main thread's writes moves with the log, so a cut there is not exact from run to run.
    text = target.call.text
    return target.call.name not in ("write", "pwrite64") and "daemon.log" not in text and any(
        mark in text for mark in ("incoming/fw", "incoming/hp", "fw~peers.csv"))


def test_claims_from_producer_subdirectories_survive_a_kill_or_an_error_at_each_step(workdir: Path) -> None:
    """Files in incoming/fw/ and incoming/hp/: SIGKILL and EIO at every call on those directories and on the
    CSV job the fw/ rule reads; every point exact, the audit holds (each result byte-identical to a clean run,
    so a job recovered from active/ is read by its subdirectory's rule again), nothing left in the
    subdirectories."""
    done = explore(workdir, "subdirs", "supervisor", ["kill", "EIO"], "subdirs/supervisor/claims",
                   select=_subdir_step)
    assert len(done.results) >= 8, "too few calls on the subdirectories were recorded"
    for finding, where in sorted(done.findings.items()):
        print(f"  {finding}: {len(where)} points, e.g. {where[0]}")
    unknown = {f: w for f, w in done.findings.items() if f not in FULL_KNOWN and f not in cp.ALLOWED}
    assert not unknown, json.dumps(unknown, indent=1)
