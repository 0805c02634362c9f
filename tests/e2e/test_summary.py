"""RESULTS/NAME.summary.json: the per-file summary, published in the same commit as the result."""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Callable

from tests.support.daemon import Daemon, wait_for
from tests.support.geodb import asn_db, country_db


def test_summary_beside_the_result_counts_classes_lists_countries_asns_and_errors(
        make_daemon: Callable[..., Daemon]) -> None:
    """Counts by class, list, country and ASN (top N, most frequent first, ties by value), errors by kind,
    lines and addresses: all from the chunks' counts, for a file split over both workers."""
    d = make_daemon()
    lists = d.root / "drop.txt"
    lists.write_text("192.0.2.0/24\n10.0.0.0/8\n")
    d.write_config(
        spool={"summary_top": 2},
        workers={"chunk_bytes": 4096},
        pipeline={"stages": ["classify", "lists", "geoip"]},
        lists=[{"name": "drop", "path": str(lists)}],
        geoip={"country_db": country_db(d.root / "c.mmdb"), "asn_db": asn_db(d.root / "a.mmdb")},
    )
    d.start()
    lines = (["192.0.2.1", "192.0.2.200", "2001:db8:1::5", "2001:db8::1", "10.1.2.3", "8.8.8.8", "::1",
              "not-an-ip", "1.2.3.4.5", "", "# comment"] * 300) + ["x" * 5000, "bad\x00nul"]
    d.drop("mixed.txt", "\n".join(lines) + "\n")
    records = d.wait_result("mixed.txt")
    summary = json.loads((d.results / "mixed.txt.summary.json").read_text())
    assert d.wait_event("file.done", where=lambda e: e["file"] == "mixed.txt")["chunks"] > 2
    assert summary["job"] == summary["file"] == "mixed.txt"
    assert summary["lines"] == len(lines) and summary["addresses"] == 7 * 300
    assert summary["errors"] == 2 * 300 + 2 and summary["skipped"] == 2 * 300
    assert len(records) == summary["addresses"] + summary["errors"]
    assert summary["errors_by_kind"] == {"not_an_address": 600, "line_too_long": 1, "nul_byte": 1}
    assert summary["top_n"] == 2
    # reserved 1200 (documentation ranges); global, loopback, private 300 each: the tie goes by value.
    assert summary["classes"] == {"distinct": 4, "top": [{"value": "reserved", "count": 1200},
                                                         {"value": "global", "count": 300}]}
    assert summary["lists"] == {"distinct": 1, "top": [{"value": "drop", "count": 900}]}
    assert summary["countries"] == {"distinct": 2, "top": [{"value": "DE", "count": 600},
                                                           {"value": "FR", "count": 600}]}
    assert summary["asns"] == {"distinct": 2, "top": [{"value": 64500, "count": 300},
                                                      {"value": 4200000000, "count": 300}]}
    def published() -> dict[str, int] | None:  # the status file is rewritten at most 4 times a second
        status = d.ipspool("status", "--json", "--config", str(d.config_path))
        totals: dict[str, int] = json.loads(status.stdout)["totals"]
        return totals if totals.get("files_done") == 1 else None

    totals = wait_for(published, 30, 0.2, what="the file counted in the status totals")
    assert totals["error.not_an_address"] == 600
    assert not [k for k in totals if k.startswith(("country.", "asn."))]  # per file, never in the totals
    assert d.stop() == 0


def test_a_summary_without_its_result_is_removed_at_start_and_the_file_redone(
        make_daemon: Callable[..., Daemon]) -> None:
    """A commit cut between the summary's link and the result's: recovery removes the summary (file.recovered
    action=reprocess), and the redone job publishes both, the summary counting the real file."""
    d = make_daemon()
    for sub in ("active", "incoming", "results"):
        (d.spool / sub).mkdir(parents=True, exist_ok=True)
    (d.spool / "active" / "cut.txt").write_text("192.0.2.1\n10.0.0.1\n")
    stale = d.results / "cut.txt.summary.json"
    stale.write_text('{"job": "cut.txt", "lines": 999}\n')
    os.chmod(stale, 0o640)
    d.start()
    assert [r["ip"] for r in d.wait_result("cut.txt")] == ["192.0.2.1", "10.0.0.1"]
    recovered = d.wait_event("file.recovered", where=lambda e: e["file"] == "cut.txt")
    assert recovered["action"] == "reprocess"
    assert not d.events("spool.name_conflict")  # the stale summary was ours: removed, not a conflict
    assert json.loads(stale.read_text())["lines"] == 2
    assert (d.spool / "done" / "cut.txt").exists()
    assert d.stop() == 0


def test_a_foreign_file_at_the_summary_name_is_not_overwritten(make_daemon: Callable[..., Daemon]) -> None:
    """A symlink planted at NAME.summary.json before the claim: the job takes another name (NAME.1);
    the planted entry is untouched."""
    d = make_daemon()
    d.start()
    target = d.root / "elsewhere"
    target.write_text("keep me\n")
    os.symlink(target, d.results / "planted.txt.summary.json")
    d.drop("planted.txt", "192.0.2.9\n")
    assert [r["ip"] for r in d.wait_result("planted.txt.1")] == ["192.0.2.9"]
    assert (d.results / "planted.txt.1.summary.json").is_file()
    assert target.read_text() == "keep me\n" and (d.results / "planted.txt.summary.json").is_symlink()
    assert d.stop() == 0


def test_with_summaries_off_results_come_alone_and_a_reload_turns_them_back_on(
        make_daemon: Callable[..., Daemon]) -> None:
    """spool.summaries = false: the result and nothing beside it (one fsync a file less); after a reload
    with it on, the next file has its summary again."""
    d = make_daemon(spool={"summaries": False})
    d.start()
    d.drop("quiet.txt", "192.0.2.1\n198.51.100.2\n")
    assert len(d.wait_result("quiet.txt")) == 2
    d.wait_event("file.done", where=lambda e: e["file"] == "quiet.txt")
    assert sorted(p.name for p in d.results.iterdir() if p.name != ".parts") == ["quiet.txt.jsonl"]
    assert not [p for p in (d.results / ".parts").rglob("*") if p.is_file()]
    d.write_config(spool={"summaries": True})
    d.signal(signal.SIGHUP)
    d.wait_event("config.reloaded")
    d.drop("loud.txt", "192.0.2.3\n")
    d.wait_result("loud.txt")
    assert json.loads((d.results / "loud.txt.summary.json").read_text())["addresses"] == 1
    assert not (d.results / "quiet.txt.summary.json").exists()
    assert d.stop() == 0
