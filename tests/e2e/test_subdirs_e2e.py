"""Producer subdirectories through the real daemon: incoming/SUB/NAME is job SUB~NAME, read by SUB's rule.

The periodic rescan is set to an hour in most of these tests, so a file that
is processed at all was reported by the watch of its subdirectory (or by the
scan a new subdirectory asks for).
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

from tests.support.daemon import Daemon, wait_for

RULES = [
    {"subdir": "firewall", "match": "*.csv", "format": "delimited", "column": "peer", "carry": ["action"]},
    {"subdir": "", "match": "*.csv", "format": "delimited"},
]
FIREWALL_CSV = b"time,peer,ip,action\nt1,192.0.2.1,198.51.100.1,deny\nt2,192.0.2.2,198.51.100.2,allow\n"
TOP_CSV = b"ip,note\n203.0.113.9,top\n"


def drop_in(d: Daemon, relative: str, data: bytes) -> None:
    """As a producer does: write in tmp/, rename into incoming/RELATIVE."""
    tmp = d.spool / "tmp" / f".{relative.replace('/', '_')}.part"
    tmp.write_bytes(data)
    os.rename(tmp, d.spool / "incoming" / relative)


def test_a_file_in_a_producer_subdirectory_gets_its_rule_and_a_job_name_of_its_own(
        make_daemon: Callable[..., Daemon]) -> None:
    """Same name in incoming/firewall/, incoming/ and a second subdirectory: three jobs, three readers' results."""
    d = make_daemon(spool={"subdirs": ["firewall", "honeypot"], "rescan_interval": 3600.0}, inputs=RULES)
    d.start()
    assert sorted(os.listdir(d.spool / "incoming")) == ["firewall", "honeypot"]
    drop_in(d, "firewall/x.csv", FIREWALL_CSV)
    drop_in(d, "x.csv", TOP_CSV)
    drop_in(d, "honeypot/x.csv", TOP_CSV)
    firewall = d.wait_result("firewall~x.csv")
    assert [(r["line"], r["ip"], r["fields"]) for r in firewall] == [
        (2, "192.0.2.1", {"action": "deny"}), (3, "192.0.2.2", {"action": "allow"})]
    assert [r["ip"] for r in d.wait_result("x.csv")] == ["203.0.113.9"]
    # honeypot/ matches neither rule ("" is incoming/ itself): the default by extension.
    assert [r["ip"] for r in d.wait_result("honeypot~x.csv")] == ["203.0.113.9"]
    claimed = {e["job"]: e["file"] for e in d.events("file.claimed")}
    assert claimed == {"firewall~x.csv": "firewall/x.csv", "x.csv": "x.csv", "honeypot~x.csv": "honeypot/x.csv"}
    wait_for(lambda: len(os.listdir(d.spool / "done")) == 3, 30, what="three inputs in done/")
    assert sorted(os.listdir(d.spool / "done")) == ["firewall~x.csv", "honeypot~x.csv", "x.csv"]
    assert sorted(os.listdir(d.spool / "incoming")) == ["firewall", "honeypot"]  # the subdirectories stay
    summary = json.loads((d.results / "firewall~x.csv.summary.json").read_text())
    assert (summary["job"], summary["file"], summary["addresses"]) == ("firewall~x.csv", "firewall/x.csv", 2)
    assert d.stop() == 0


def test_a_subdirectory_made_while_running_is_watched_and_a_bad_file_in_it_fails_with_its_path(
        make_daemon: Callable[..., Daemon]) -> None:
    """mkdir in incoming/ asks for a scan that adds the watch; a header without the column names the file."""
    d = make_daemon(spool={"rescan_interval": 3600.0}, inputs=RULES)
    d.start()
    (d.spool / "incoming" / "firewall").mkdir()
    # The new directory's watch is in place once the scan it caused ran: a file
    # renamed in after that is reported by inotify alone.
    deadline = time.monotonic() + 30
    while not (d.results / "firewall~probe.txt.jsonl").exists():
        assert time.monotonic() < deadline, "the new subdirectory was never watched"
        if not (d.spool / "incoming" / "firewall" / "probe.txt").exists() and \
                not (d.spool / "done" / "firewall~probe.txt").exists():
            drop_in(d, "firewall/probe.txt", b"192.0.2.10\n")
        time.sleep(0.2)
    drop_in(d, "firewall/bad.csv", b"when,what\n1,2\n")
    failure = d.wait_failed("firewall~bad.csv")
    assert failure["reason"] == "no_address_column"
    assert "expected 'peer'" in failure["detail"]  # firewall's rule, not the default column names
    assert failure["file"] == "firewall/bad.csv"
    assert (d.spool / "failed" / "firewall~bad.csv").read_bytes() == b"when,what\n1,2\n"
    assert d.stop() == 0


def test_a_job_recovered_from_active_is_read_with_its_subdirectory_rule(make_daemon: Callable[..., Daemon]) -> None:
    """A crash after the claim leaves active/firewall~x.csv: the restart reads it with firewall's rule."""
    d = make_daemon(spool={"subdirs": ["firewall"]}, inputs=RULES)
    (d.spool / "active").mkdir(parents=True)
    (d.spool / "active" / "firewall~x.csv").write_bytes(FIREWALL_CSV)
    d.start()
    assert d.wait_event("file.recovered")["file"] == "firewall~x.csv"
    assert [r["ip"] for r in d.wait_result("firewall~x.csv")] == ["192.0.2.1", "192.0.2.2"]
    assert d.stop() == 0


def test_past_the_cap_a_subdirectory_waits_and_a_reload_that_raises_the_cap_reads_it(
        make_daemon: Callable[..., Daemon]) -> None:
    """max_subdirs = 1 with two: the second (by name) is warned about once and left; SIGHUP with 2 reads it."""
    d = make_daemon(spool={"subdirs": ["a"], "max_subdirs": 1})
    (d.spool / "incoming" / "b").mkdir(parents=True)
    (d.spool / "incoming" / "b" / "waits.txt").write_bytes(b"192.0.2.20\n")
    d.start()
    ignored = d.wait_event("spool.subdir_ignored")
    assert (ignored["subdir"], ignored["max_subdirs"]) == ("b", 1)
    drop_in(d, "a/first.txt", b"192.0.2.21\n")
    d.wait_result("a~first.txt")
    d.await_rescan()
    assert (d.spool / "incoming" / "b" / "waits.txt").exists()
    assert len(d.events("spool.subdir_ignored")) == 1
    d.write_config(spool={"subdirs": ["a", "c"], "max_subdirs": 3})
    d.signal(signal.SIGHUP)
    d.wait_event("config.reloaded")
    assert [r["ip"] for r in d.wait_result("b~waits.txt")] == ["192.0.2.20"]
    assert (d.spool / "incoming" / "c").is_dir()
    assert d.stop() == 0


def test_a_reload_naming_a_subdirectory_that_cannot_be_made_says_so_and_keeps_the_others(
        make_daemon: Callable[..., Daemon]) -> None:
    """incoming/blocked is a file: the reload logs spool.subdir_failed; a/ is still read."""
    d = make_daemon(spool={"subdirs": ["a"], "rescan_interval": 3600.0})
    d.start()
    (d.spool / "tmp" / "blocked").write_bytes(b"")
    os.utime(d.spool / "tmp" / "blocked", (1, 1))
    d.write_config(spool={"subdirs": ["a", "blocked"]})
    os.link(d.spool / "tmp" / "blocked", d.spool / "incoming" / "blocked")  # a name only a scan would take
    d.signal(signal.SIGHUP)
    failed = d.wait_event("spool.subdir_failed")
    assert "blocked" in failed["error"]
    drop_in(d, "a/still.txt", b"192.0.2.30\n")
    d.wait_result("a~still.txt")
    assert d.stop() == 0


def test_a_subdirectory_swapped_for_a_link_is_never_followed(make_daemon: Callable[..., Daemon],
                                                             tmp_path: Path) -> None:
    """incoming/fw replaced by a symlink to a directory outside: nothing of the target is claimed or moved."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_bytes(b"192.0.2.40\n")
    os.utime(outside / "secret.txt", (1, 1))
    d = make_daemon(spool={"subdirs": ["fw"]})
    d.start()
    os.rmdir(d.spool / "incoming" / "fw")
    (d.spool / "incoming" / "fw").symlink_to(outside)
    failure = d.wait_failed("fw")  # the link itself is an input: failed/, unfollowed
    assert failure["reason"] == "not_regular_file"
    d.await_rescan()
    assert (outside / "secret.txt").read_bytes() == b"192.0.2.40\n"
    assert not list(d.results.glob("fw~*"))
    assert d.stop() == 0


def test_submit_into_a_subdirectory_waits_for_the_job_the_daemon_names(make_daemon: Callable[..., Daemon],
                                                                       tmp_path: Path) -> None:
    """`ipspool submit --subdir firewall --wait` twice with one name: firewall~x.csv, then firewall~x.csv.1."""
    d = make_daemon(spool={"subdirs": ["firewall"]}, inputs=RULES)
    d.start()
    source = tmp_path / "x.csv"
    source.write_bytes(FIREWALL_CSV)
    config = str(d.config_path)
    first = d.ipspool("submit", "--config", config, "--subdir", "firewall", "--wait", "--timeout", "60", str(source))
    assert first.returncode == 0, first.stderr
    assert first.stdout.splitlines()[0] == f"submitted {source} as incoming/firewall/x.csv"
    assert first.stdout.splitlines()[1].startswith("firewall~x.csv: done ")
    second = d.ipspool("submit", "--config", config, "--subdir", "firewall", "--json", "--wait", "--timeout", "60",
                       str(source))
    assert second.returncode == 0, second.stderr
    (item,) = json.loads(second.stdout)["files"]
    assert (item["name"], item["state"]) == ("firewall~x.csv.1", "done")
    assert [r["fields"]["action"] for r in d.wait_result("firewall~x.csv.1")] == ["deny", "allow"]
    for bad, why in (("no such", "not a subdirectory name"), ("absent", "is not a directory")):
        refused = d.ipspool("submit", "--config", config, "--subdir", bad, str(source))
        assert refused.returncode == 2
        assert why in refused.stderr and "nothing was submitted" in refused.stderr
    assert sorted(os.listdir(d.spool / "incoming" / "firewall")) == []
    assert d.stop() == 0
