"""Job names: no input in failed/ can stand where another job's error record goes.

A job's name is free only if every entry derived from it is (active/JOB,
done/JOB, failed/JOB, failed/JOB.error.json, results/JOB.jsonl and JOB.csv), and a name
ending in ``.error.json`` is never a job's (docs/durability.md, "Job names").
"""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from ipspool.recovery import recover
from ipspool.spool import ERROR_SUFFIX, Spool
from tests.support.daemon import Daemon, wait_for
from tests.support.spoolcheck import crash_supervisor, wait_ready


@pytest.fixture
def spool(tmp_path: Path) -> Iterator[Spool]:
    s = Spool(tmp_path / "spool", tmp_path / "results")
    s.create()
    s.open()
    yield s
    s.close()


def put(spool: Spool, name: str, content: bytes) -> None:
    (spool.root / "incoming" / name).write_bytes(content)


def test_rejected_entry_never_overwrites_a_failed_input_named_like_its_error_record(
    make_daemon: Callable[..., Daemon],
) -> None:
    """failed `a.error.json`, then a rejected `a`: both inputs and both records are in failed/."""
    d = make_daemon(spool={"max_file_bytes": 100})
    d.start()
    first = b"1.1.1.1\n" * 20  # 160 bytes: too_large
    d.drop("a.error.json", first)
    one = d.wait_event("file.rejected", where=lambda e: e["file"] == "a.error.json")
    wait_for((d.spool / "failed" / one["job"]).exists, what="the first input in failed/")
    (d.spool / "incoming" / "a").symlink_to("/etc/hostname")
    two = d.wait_event("file.rejected", where=lambda e: e["file"] == "a")
    wait_for((d.spool / "failed" / two["job"]).is_symlink, what="the symlink in failed/")
    failed = d.spool / "failed"
    assert (failed / one["job"]).read_bytes() == first, "the first input was overwritten"
    for event, reason in ((one, "too_large"), (two, "not_regular_file")):
        assert not event["job"].endswith(ERROR_SUFFIX)
        record = json.loads((failed / (event["job"] + ERROR_SUFFIX)).read_text())
        assert record["job"] == event["job"] and record["file"] == event["file"] and record["reason"] == reason
    assert d.stop() == 0


def test_valid_file_killed_mid_processing_beside_a_failed_input_named_like_its_record_is_processed(
    make_daemon: Callable[..., Daemon],
) -> None:
    """failed `a.error.json`, then `a` interrupted by kill -9: after the restart `a` has its result."""
    d = make_daemon(spool={"max_file_bytes": 10_000}, pipeline={"stages": ["classify", "tests.support.stagelib:slow"]})
    d.start()
    d.drop("a.error.json", b"1.1.1.1\n" * 2000)  # too_large
    d.wait_event("file.rejected", where=lambda e: e["file"] == "a.error.json")
    lines = [f"10.7.{i // 250}.{i % 250}" for i in range(400)]
    d.drop("a", "\n".join(lines) + "\n")
    claimed = d.wait_event("file.claimed", where=lambda e: e["file"] == "a")
    crash_supervisor(d)
    assert (d.spool / "active" / claimed["job"]).exists(), "finished before the crash; the test needs it in flight"
    d.start(wait_ready=False)
    wait_ready(d)
    records = d.wait_result(claimed["job"])
    assert [r["input"] for r in records] == lines
    assert not any(e["action"] == "failed" for e in d.events("file.recovered"))
    assert d.stop() == 0


def test_operator_retry_leaves_the_old_record_alone_and_takes_a_new_name(spool: Spool) -> None:
    """failed/x moved back to incoming/ while x.error.json stays: the claim is x.1, not x."""
    put(spool, "x", b"1.1.1.1\n")
    assert spool.claim("x") == "x"
    spool.fail("x", "too_large", "over the limit", {"file": "x"})
    os.rename(spool.root / "failed" / "x", spool.root / "incoming" / "x")
    assert spool.claim("x") == "x.1"
    assert json.loads((spool.root / "failed" / "x.error.json").read_text())["job"] == "x"


def test_no_job_ever_shares_an_entry_with_another_whatever_the_arrival_order(tmp_path: Path) -> None:
    """x, x.error.json, x.1, x.1.error.json, x.jsonl, x.error.json.error.json in every order:
    claimed, some failed, some left in flight: every input and every record keeps its own name."""

    def entries(job: str) -> list[tuple[str, str]]:  # spool.job_entries, spelled out: the contract
        return [("active", job), ("done", job), ("failed", job), ("failed", job + ERROR_SUFFIX),
                ("results", job + ".jsonl"), ("results", job + ".csv")]

    names = ["x", "x.error.json", "x.1", "x.1.error.json", "x.jsonl", "x.error.json.error.json"]
    for n, order in enumerate(itertools.permutations(names)):
        if n % 7:  # a spread of the 720 orders keeps this quick
            continue
        root = tmp_path / f"case{n}"
        spool = Spool(root / "spool", root / "results")
        spool.create()
        spool.open()
        try:
            jobs: dict[str, str] = {}
            for i, name in enumerate(order):
                put(spool, name, name.encode())
                job = spool.claim(name)
                assert job is not None
                jobs[job] = name
                if i % 2:
                    spool.fail(job, "too_large", "test", {"file": name})
            taken = [entry for job in jobs for entry in entries(job)]
            assert len(taken) == len(set(taken)), order
            for job, name in jobs.items():
                where = "failed" if (spool.root / "failed" / (job + ERROR_SUFFIX)).exists() else "active"
                assert (spool.root / where / job).read_bytes() == name.encode(), (order, job)
                if where == "failed":
                    assert json.loads((spool.root / "failed" / (job + ERROR_SUFFIX)).read_text())["job"] == job
        finally:
            spool.close()


def test_recovery_trusts_only_an_error_record_that_names_the_job(spool: Spool) -> None:
    """An input of an older version at failed/a.error.json is not a's record: a is processed again, renamed."""
    (spool.root / "active" / "a").write_text("1.1.1.1\n")
    (spool.root / "failed" / "a.error.json").write_text("9.9.9.9\n")  # an input, not a record
    (spool.root / "active" / "b").write_text("1.1.1.1\n")
    (spool.root / "failed" / "b.error.json").write_text(json.dumps({"job": "other", "reason": "poison"}))
    (spool.root / "active" / "c").write_text("1.1.1.1\n")
    (spool.root / "failed" / "c.error.json").write_text(json.dumps({"job": "c", "reason": "poison"}))
    with capture_logs() as logs:
        redo, finished, failed = recover(spool, keep=True)
    assert (sorted(redo), finished, failed) == (["a.1", "b.1"], [], ["c"])
    assert (spool.root / "failed" / "a.error.json").read_text() == "9.9.9.9\n"  # untouched
    assert (spool.root / "active" / "a.1").read_text() == "1.1.1.1\n"
    assert (spool.root / "failed" / "c").exists()
    assert sorted((e["file"], e["job"]) for e in logs if e["event"] == "spool.name_conflict") == [
        ("a", "a.1"), ("b", "b.1")]


def test_recovery_renames_a_job_of_an_older_version_named_like_a_record(spool: Spool) -> None:
    """active/a.error.json (claimed by an older version) is redone under a name that is no record's."""
    (spool.root / "active" / "a.error.json").write_text("1.1.1.1\n")
    redo, _, _ = recover(spool, keep=True)
    assert redo == ["a.error.json.1"]
    assert (spool.root / "active" / "a.error.json.1").read_text() == "1.1.1.1\n"


def test_submit_picks_the_name_the_daemon_keeps(tmp_path: Path, spool: Spool) -> None:
    """`ipspool submit` of a.error.json (or of x beside failed/x.error.json) names it as a claim would."""
    from ipspool.config import load_config
    from ipspool.submit import submit_bytes

    config = load_config(None, spool=str(spool.root))
    config = config.model_copy(update={"spool": config.spool.model_copy(update={"results_dir": str(spool.results)})})
    (spool.root / "failed" / "x.error.json").write_text("{}")
    source = tmp_path / "source"
    source.write_text("1.1.1.1\n")
    for wanted, expected in (("a.error.json", "a.error.json.1"), ("x", "x.1")):
        fd = os.open(source, os.O_RDONLY)
        try:
            name = submit_bytes(config, fd, wanted)
        finally:
            os.close(fd)
        assert name == expected
        assert spool.claim(name) == name
