"""Hostile and malformed input: lines, files, spool entries, configuration.

Each case goes through the real daemon (or the real ``check-config``) and ends
as docs/durability.md promises: a per-line error record, a result, or a
failed/ entry with a reason; never a crash, a hang or a read outside the spool.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, get_args

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ipspool.config import Config, ConfigError, parse_config
from ipspool.exitcodes import ExitCode
from ipspool.pipeline import load_pipeline, process_chunk
from tests.support.daemon import REPO, Daemon, wait_for, write_toml
from tests.support.lines import physical_lines
from tests.support.spoolcheck import install_for_nobody, records_of, start_under, wait_ready

# -- lines ----------------------------------------------------------------------

HOSTILE_LINES: list[tuple[bytes, str, Any]] = [
    # (raw line, "ip" or "error", the normalized ip or a piece of the error)
    (b"\xef\xbb\xbf1.0.0.1", "ip", "1.0.0.1"),  # a UTF-8 BOM on line 1
    (b"\xff\xfe1.1.1.1", "error", "not valid UTF-8"),
    (b"1.1.\x001.1", "error", "NUL byte"),
    (b"8.8.8.8\r", "ip", "8.8.8.8"),  # CRLF
    (b"\t  9.9.9.9 \t ", "ip", "9.9.9.9"),
    (b"1.1.1.1   # trailing comment", "ip", "1.1.1.1"),
    (b"fe80::1%eth0", "ip", "fe80::1%eth0"),
    (b"::ffff:1.2.3.4", "ip", "::ffff:102:304"),
    (b"010.1.1.1", "error", "Leading zeros"),
    (b"256.1.1.1", "error", "not an IP address"),
    (b"1.2.3.4.5", "error", "not an IP address"),
    (b"10.0.0.0/8", "error", "CIDR notation"),
    (b"2001:db8::/32", "error", "CIDR notation"),
    (b"1.2.3.4-1.2.3.9", "error", "ranges"),
    (b"example.com", "error", "not an IP address"),
    (b"localhost", "error", "not an IP address"),
    (b"1.1.1.1 2.2.2.2", "error", "not an IP address"),
    (b"\x1b[31m1.1.1.1", "error", "not an IP address"),  # terminal escapes are data, echoed escaped
]


def test_hostile_lines_get_per_line_errors_and_the_file_goes_on(daemon: Daemon) -> None:
    """Encodings, NUL, CRLF, BOM, whitespace, comments, zone ids, mapped, CIDR, ranges, names: one record each."""
    data = b"\n".join(raw for raw, _, _ in HOSTILE_LINES) + b"\n# only a comment\n\n"
    daemon.drop("hostile.txt", data)
    records = daemon.wait_result("hostile.txt")
    assert [r["line"] for r in records] == list(range(1, len(HOSTILE_LINES) + 1))
    for record, (raw, kind, expected) in zip(records, HOSTILE_LINES, strict=True):
        if kind == "ip":
            assert record.get("ip") == expected, (raw, record)
        else:
            assert "ip" not in record and expected in record["error"], (raw, record)
    done = daemon.wait_event("file.done")
    assert done["lines"] == len(HOSTILE_LINES) + 2
    assert done["valid"] + done["invalid"] == len(HOSTILE_LINES)


def test_fifty_megabyte_line_is_one_error_record_and_the_file_goes_on(make_daemon: Callable[..., Daemon]) -> None:
    """A 50 MB line (and one with no newline at all) is one error record with a short preview; the file goes on.

    How much memory this takes is measured by ``python -m bench.memory`` (long_line), not asserted here.
    """
    d = make_daemon()
    d.start()
    huge = b"7" * 50_000_000
    d.drop("long-line.txt", b"1.1.1.1\n" + huge + b"\n2.2.2.2\n")
    d.drop("no-newline.txt", b"3.3.3.3\n" + huge)
    first = d.wait_result("long-line.txt")
    assert [r.get("ip") for r in first] == ["1.1.1.1", None, "2.2.2.2"]
    assert first[1]["line"] == 2 and first[1]["error"] == "line too long: 50000000 bytes, limit 4096"
    assert first[1]["input"] == "7" * 64  # a short preview, not the line
    second = d.wait_result("no-newline.txt")
    assert second[0]["ip"] == "3.3.3.3" and "line too long: 50000000 bytes" in second[1]["error"]
    assert len(second) == 2 and second[1]["line"] == 2 and second[1]["input"] == "7" * 64
    assert d.stop() == 0


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=2000), st.integers(min_value=1, max_value=10**6), st.sampled_from([8, 64, 4096]))
def test_parser_never_raises_and_accounts_for_every_line(data: bytes, first: int, max_line: int) -> None:
    """process_chunk on arbitrary bytes: no exception; records + skipped == lines, numbered in order."""
    config = parse_config({"pipeline": {"stages": ["classify", "tests.support.stagelib:boom"]},
                           "spool": {"max_line_bytes": max_line}})
    out, counts = process_chunk(data, first, load_pipeline(config))
    records = [json.loads(line) for line in out.splitlines()]
    assert counts["lines"] == len(physical_lines(data))
    assert counts["valid"] + counts["invalid"] == len(records)
    assert len(records) + counts["skipped"] == counts["lines"]
    numbers = [r["line"] for r in records]
    assert numbers == sorted(set(numbers)) and all(first <= n < first + counts["lines"] for n in numbers)
    assert all(("ip" in r) != ("error" in r) for r in records)


# -- files ----------------------------------------------------------------------


def test_empty_comment_only_garbage_and_oversized_files(make_daemon: Callable[..., Daemon]) -> None:
    """Empty and comment-only files give empty results; garbage gives error records; too large goes to failed/."""
    d = make_daemon(spool={"max_file_bytes": 100_000})
    d.start()
    d.drop("empty.txt", b"")
    d.drop("comments.txt", b"# nothing\n\n   \n#1.1.1.1\n")
    garbage = random.Random(1).randbytes(50_000)
    d.drop("garbage.bin", garbage)
    d.drop("too-large.txt", b"1.1.1.1\n" * 20_000)
    assert d.wait_result("empty.txt") == []
    assert d.wait_result("comments.txt") == []
    records = d.wait_result("garbage.bin")
    assert records and all("error" in r for r in records)
    assert [r["line"] for r in records] == sorted({r["line"] for r in records})
    failure = d.wait_failed("too-large.txt")
    assert failure["reason"] == "too_large" and "limit spool.max_file_bytes=100000" in failure["detail"]
    assert not d.result_path("too-large.txt").exists()
    assert d.stop() == 0


def test_file_written_in_place_slowly_is_read_only_when_closed(make_daemon: Callable[..., Daemon]) -> None:
    """A producer writing into incoming/ directly, a scan passing after each line: claimed after close, complete."""
    d = make_daemon(spool={"rescan_interval": 0.25})  # scans come well within the settle time of each write
    d.start()
    lines = [f"10.0.0.{i}" for i in range(1, 5)]
    with open(d.spool / "incoming" / "grow.txt", "w") as handle:
        for line in lines:
            handle.write(line + "\n")
            handle.flush()
            d.await_rescan()  # it saw the open file, modified less than a settle time ago
            assert not [e for e in d.events("file.claimed") if e["file"] == "grow.txt"], "claimed while open"
    assert [r["ip"] for r in d.wait_result("grow.txt")] == lines
    assert len([e for e in d.events("file.claimed") if e["file"] == "grow.txt"]) == 1
    assert d.stop() == 0


def test_file_written_to_after_its_claim_is_failed_as_changed(make_daemon: Callable[..., Daemon]) -> None:
    """A producer that pauses, is claimed, then writes more: no partial result, failed/ with reason changed."""
    d = make_daemon(workers={"threads": 2}, pipeline={"stages": ["classify", "tests.support.stagelib:slow"]})
    d.start()
    with open(d.spool / "incoming" / "paused.txt", "w") as handle:
        handle.write("".join(f"10.1.{i // 250}.{i % 250}\n" for i in range(300)))
        handle.flush()
        d.wait_event("file.claimed", where=lambda e: e["file"] == "paused.txt")
        handle.write("10.9.9.9\n")
    failure = d.wait_failed("paused.txt")
    assert failure["reason"] == "changed" and "tmp/" in failure["detail"]
    assert not d.result_path("paused.txt").exists()
    assert d.stop() == 0


def test_awkward_names(make_daemon: Callable[..., Daemon]) -> None:
    """Spaces, newlines, non-UTF-8 bytes, leading dashes, 255-byte names: each processed under its own name."""
    d = make_daemon()
    d.start()
    names = ["with space.txt", "new\nline.txt", os.fsdecode(b"bad-\xff\xfe-bytes.txt"), "-rf", "--help",
             "x" * 255, "\u00e9t\u00e9.txt"]
    for i, name in enumerate(names):
        tmp = d.spool / "tmp" / f"name-{i}"  # Daemon.drop's tmp name has no room for 255 bytes
        tmp.write_text(f"10.2.0.{i}\n")
        os.rename(tmp, d.spool / "incoming" / name)
    wait_for(lambda: len(d.events("file.done")) == len(names), what="every name done")
    for i, name in enumerate(names):
        if len(name) == 255:
            continue  # no room for ".jsonl": shortened, below
        assert d.result_path(name).exists(), name
        assert records_of(d.result_path(name))[0]["ip"] == f"10.2.0.{i}"
    long_results = [p for p in d.results.iterdir() if p.name.startswith("x" * 200) and p.suffix == ".jsonl"]
    long_summaries = [p for p in d.results.iterdir() if p.name.startswith("x" * 200) and p.suffix == ".json"]
    assert [p.name for p in long_summaries] == [long_results[0].name[:-len(".jsonl")] + ".summary.json"]
    assert len(os.fsencode(long_summaries[0].name)) <= 255
    assert len(long_results) == 1 and len(os.fsencode(long_results[0].name)) <= 255
    assert long_results[0].name.endswith(".1.jsonl")
    logged = {e["file"] for e in d.events("file.done")}
    assert "bad-\\xff\\xfe-bytes.txt" in logged  # shown escaped, never as invalid JSON
    assert d.stop() == 0


def test_dotfiles_in_incoming_are_left_alone(daemon: Daemon) -> None:
    """Names starting with "." are a producer's work in progress: never claimed."""
    (daemon.spool / "incoming" / ".partial").write_text("1.1.1.1\n")
    daemon.drop("after.txt", "1.1.1.1\n")
    daemon.wait_result("after.txt")
    daemon.await_rescan()
    assert (daemon.spool / "incoming" / ".partial").exists()
    assert {e["file"] for e in daemon.events("file.claimed")} == {"after.txt", "rescan-marker-1"}


def test_same_name_twice_while_the_first_is_in_flight(make_daemon: Callable[..., Daemon]) -> None:
    """A second file with the name of one still in active/ gets NAME.1: two results, nothing overwritten."""
    d = make_daemon(pipeline={"stages": ["classify", "tests.support.stagelib:slow"]})
    d.start()
    d.drop("twice.txt", "".join(f"10.3.0.{i}\n" for i in range(100)))
    d.wait_event("file.claimed", where=lambda e: e["file"] == "twice.txt")
    d.drop("twice.txt", "10.4.0.1\n")
    assert len(d.wait_result("twice.txt")) == 100
    assert [r["ip"] for r in d.wait_result("twice.txt.1")] == ["10.4.0.1"]
    assert d.stop() == 0


# -- spool entries ------------------------------------------------------------------


def test_links_sockets_and_directories_are_never_followed_or_read(make_daemon: Callable[..., Daemon]) -> None:
    """Symlinks (to /etc/shadow, to a spool file, dangling), hard links, sockets, directories: failed/, unread."""
    d = make_daemon()
    d.start()
    incoming = d.spool / "incoming"
    outside = d.root / "outside.txt"
    outside.write_text("9.9.9.9\n")
    os.link(outside, d.spool / "tmp" / "hard")
    os.rename(d.spool / "tmp" / "hard", incoming / "hard")
    (incoming / "shadow").symlink_to("/etc/shadow")
    (incoming / "dangling").symlink_to(d.root / "nowhere")
    d.drop("real.txt", "1.1.1.1\n")
    d.wait_result("real.txt")
    (incoming / "to-spool-file").symlink_to(d.spool / "done" / "real.txt")
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(incoming / "sock"))
    # Not a producer subdirectory's name (those are read: tests/e2e/test_subdirs_e2e.py).
    (incoming / "a dir").mkdir()
    (incoming / "a dir" / "inner.txt").write_text("8.8.8.8\n")
    expected = {
        "hard": ("hard_link", "2 links"), "shadow": ("not_regular_file", "symbolic link"),
        "dangling": ("not_regular_file", "symbolic link"), "to-spool-file": ("not_regular_file", "symbolic link"),
        "sock": ("not_regular_file", "socket"), "a dir": ("not_regular_file", "directory"),
    }
    for name, (reason, detail) in expected.items():
        failure = d.wait_failed(name)
        assert failure["reason"] == reason and detail in failure["detail"], (name, failure)
        assert not d.result_path(name).exists()
    listener.close()
    assert outside.read_text() == "9.9.9.9\n" and outside.stat().st_nlink == 2  # moved with the link, unread
    # The error record lands first, the input right after it (docs/durability.md, order of operations).
    wait_for((d.spool / "failed" / "shadow").is_symlink, what="the symlink moved to failed/")
    assert (d.spool / "done" / "real.txt").read_text() == "1.1.1.1\n"
    log = d.log_path.read_text()
    assert "root:" not in log and "9.9.9.9" not in log
    assert sorted(p.name for p in d.results.glob("*.jsonl")) == ["real.txt.jsonl"]
    assert d.stop() == 0


@pytest.fixture
def nobody_root() -> Iterator[Path]:
    """A directory the unprivileged user ``nobody`` owns (pytest's tmp_path is root-only)."""
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv(1) to run the daemon as nobody")
    root = Path(tempfile.mkdtemp(prefix="ipspool-nobody-"))
    root.chmod(0o755)
    os.chown(root, 65534, 65534)
    yield root
    shutil.rmtree(root, ignore_errors=True)


def test_file_the_service_user_cannot_read_goes_to_failed(nobody_root: Path) -> None:
    """The daemon running as nobody: a root-only file is moved to failed/ as unreadable, others flow."""
    d = Daemon(nobody_root, {})
    for path in (d.root, d.config_path):
        os.chown(path, 65534, 65534)
    prefix = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    python, env = install_for_nobody(nobody_root / "python")
    try:
        start_under(d, prefix, env, python)
        wait_ready(d)
        secret = d.spool / "incoming" / "secret.txt"
        fd = os.open(d.spool / "tmp" / "secret.txt", os.O_WRONLY | os.O_CREAT, 0o600)
        os.write(fd, b"7.7.7.7\n")
        os.close(fd)
        os.rename(d.spool / "tmp" / "secret.txt", secret)
        d.drop("open.txt", "1.1.1.1\n")
        assert d.wait_result("open.txt")[0]["ip"] == "1.1.1.1"
        failure = d.wait_failed("secret.txt")
        assert failure["reason"] == "unreadable" and "permission denied" in failure["detail"]
        assert d.stop() == 0
    finally:
        if d.proc is not None:
            d.kill_all()


# -- configuration --------------------------------------------------------------------


# Listed by hand, not derived from the config model: removing a key's type
# check or bound must fail a test here, not silently remove the case.
WRONG_TYPES: list[tuple[str, str, Any]] = [
    ("spool", "dir", 5),
    ("spool", "results_dir", 5),
    ("spool", "runtime_dir", ["a"]),
    ("spool", "keep_processed", "yes"),
    ("spool", "subdirs", "firewall"),
    ("spool", "summaries", "yes"),
    ("spool", "max_subdirs", "many"),
    ("spool", "max_file_bytes", "many"),
    ("spool", "max_line_bytes", "many"),
    ("spool", "max_decompressed_bytes", "many"),
    ("spool", "summary_top", "ten"),
    ("spool", "rescan_interval", "often"),
    ("spool", "max_output_ratio", "many"),
    ("spool", "check_owner", "yes"),
    ("rdns", "cache_dir", 5),
    ("rdns", "disk_cache_size", "big"),
    ("rdns", "max_in_flight", "many"),
    ("rdns", "rate_limit", "fast"),
    ("metrics", "listen", 9464),
    ("executor", "kind", 5),
    ("executor", "scheduler", 5),
    ("executor", "max_inflight", "many"),
    ("executor", "connect_timeout", "long"),
    ("executor", "tls_ca_file", 5),
    ("executor", "tls_cert_file", 5),
    ("executor", "tls_key_file", 5),
    ("spool", "producer_group", 5),
    ("workers", "processes", "many"),
    ("workers", "threads", "many"),
    ("workers", "chunk_bytes", "big"),
    ("workers", "max_attempts", "many"),
    ("workers", "graceful_timeout", "long"),
    ("workers", "heartbeat_timeout", "long"),
    ("workers", "max_inflight", "many"),
    ("pipeline", "stages", 5),
    ("log", "level", "loud"),
    ("log", "format", "xml"),
    ("log", "file", 5),
    ("lists", "name", 5),
    ("lists", "path", 5),
    ("lists", "alert", "yes"),
    ("rdns", "nameservers", 5),
    ("rdns", "timeout", "long"),
    ("rdns", "retries", "many"),
    ("rdns", "cache_size", "big"),
    ("rdns", "negative_ttl", "long"),
    ("rdns", "forward_confirm", "yes"),
    ("geoip", "country_db", 5),
    ("geoip", "asn_db", 5),
    ("alerts", "listed_per_file", "many"),
    ("alerts", "backlog_files", "many"),
    ("alerts", "backlog_age", "old"),
    ("alerts", "disk_low_bytes", "lots"),
    ("metrics", "textfile", 5),
    ("metrics", "interval", "often"),
    ("inputs", "match", 5),
    ("inputs", "subdir", 5),
    ("inputs", "format", "xml"),
    ("inputs", "column", 5),
    ("inputs", "delimiter", 5),
    ("inputs", "carry", "action"),
    ("inputs", "field", 5),
    ("inputs", "mode", "merge"),
    ("inputs", "skip_reserved", "yes"),
    ("inputs", "expand_cap", "many"),
    ("inputs", "output", "xml"),
]

# (section, key, a refused value just past the bound, an accepted value near it)
OUT_OF_BOUNDS: list[tuple[str, str, Any, Any]] = [
    ("spool", "max_file_bytes", 0, 1),
    ("spool", "max_line_bytes", 0, 1),
    ("spool", "max_decompressed_bytes", 0, 1),
    ("spool", "summary_top", 0, 1),
    ("spool", "summary_top", 1001, 1000),
    ("spool", "rescan_interval", 0, 1.0),
    ("spool", "max_output_ratio", 0, 1),
    ("spool", "max_output_ratio", 10001, 10000),
    ("spool", "max_subdirs", -1, 0),
    ("spool", "max_subdirs", 101, 100),
    ("spool", "subdirs", ["a b"], ["a.b-c_d"]),
    ("spool", "subdirs", ["x~y"], ["x-y"]),
    ("rdns", "max_in_flight", 0, 1),
    ("rdns", "rate_limit", -1, 0),
    ("rdns", "disk_cache_size", -1, 0),
    ("executor", "max_inflight", -1, 0),
    ("executor", "connect_timeout", 0, 1.0),
    ("workers", "processes", -1, 0),
    ("workers", "threads", 0, 1),
    ("workers", "chunk_bytes", 4095, 4096),
    ("workers", "max_attempts", 0, 1),
    ("workers", "graceful_timeout", 0, 1.0),
    ("workers", "heartbeat_timeout", 0, 1.0),
    ("workers", "max_inflight", -1, 0),
    ("lists", "name", "", "a"),
    ("lists", "name", "a b", "a.b-c_d"),
    ("rdns", "timeout", 0, 1.0),
    ("rdns", "retries", -1, 0),
    ("rdns", "cache_size", -1, 0),
    ("rdns", "negative_ttl", -1, 0),
    ("alerts", "listed_per_file", -1, 0),
    ("alerts", "backlog_files", -1, 0),
    ("alerts", "backlog_age", -1, 0),
    ("alerts", "disk_low_bytes", -1, 0),
    ("metrics", "interval", 0, 1.0),
    ("metrics", "listen", "127.0.0.1:65536", "127.0.0.1:65535"),
    ("metrics", "listen", "::1:9464", "[::1]:9464"),
    ("inputs", "expand_cap", -1, 0),
    ("inputs", "expand_cap", 65537, 65536),
    ("inputs", "match", "", "*.csv"),
    ("inputs", "delimiter", ",,", ";"),
]


def config_with(section: str, key: str, value: Any) -> tuple[dict[str, Any], str]:
    """A configuration setting one key, and the prefix its problem must start with."""
    if section == "lists":
        return {"lists": [{"name": "l", "path": "/x", key: value}]}, f"lists.0.{key}:"
    if section == "inputs":
        # Each format's own keys are checked under that format (any other is refused for it).
        fmt = {"column": "delimited", "delimiter": "delimited", "carry": "delimited", "field": "jsonl",
               "mode": "jsonl", "skip_reserved": "text", "expand_cap": "networks"}.get(key)
        rule = {"format": fmt} if fmt else {}
        return {"inputs": [{**rule, key: value}]}, f"inputs.0.{key}:"
    return {section: {key: value}}, f"{section}.{key}:"


def declared_keys() -> set[tuple[str, str]]:
    keys = set()
    for section, field in Config.model_fields.items():
        model = get_args(field.annotation)[0] if section in ("lists", "inputs") else field.annotation
        keys.update((section, key) for key in model.model_fields)  # type: ignore[union-attr]
    return keys


def test_the_hand_lists_cover_every_declared_key() -> None:
    """A new key needs a wrong-type case here (its bounds, if any, belong in OUT_OF_BOUNDS)."""
    assert {(section, key) for section, key, _ in WRONG_TYPES} == declared_keys()


@pytest.mark.parametrize(("section", "key", "value"), WRONG_TYPES, ids=lambda v: str(v)[:30])
def test_every_key_with_a_wrong_type_is_named(section: str, key: str, value: Any) -> None:
    """Each key, given a value of the wrong type, is reported by its full name."""
    data, where = config_with(section, key, value)
    with pytest.raises(ConfigError) as info:
        parse_config(data)
    assert any(p.startswith(where) for p in info.value.problems), info.value.problems


@pytest.mark.parametrize(("section", "key", "refused", "accepted"), OUT_OF_BOUNDS, ids=lambda v: str(v)[:30])
def test_values_out_of_bounds_are_refused_by_name(section: str, key: str, refused: Any, accepted: Any) -> None:
    """A value just past a key's bound is refused, naming the key; one on the near side is taken."""
    data, where = config_with(section, key, refused)
    with pytest.raises(ConfigError) as info:
        parse_config(data)
    assert any(p.startswith(where) for p in info.value.problems), (refused, info.value.problems)
    data, _ = config_with(section, key, accepted)
    parse_config(data)


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "ipspool", *args], capture_output=True, text=True, timeout=60,
                          env=env)


@pytest.mark.parametrize(
    ("settings", "problem", "run_code"),
    [
        ({"spool": {"dir": "/etc/hostname/spool"}}, "spool.dir: /etc/hostname/spool", ExitCode.SPOOL_ERROR),
        ({"spool": {"results_dir": "/etc/hostname/results"}}, "spool.results_dir: /etc/hostname/results",
         ExitCode.SPOOL_ERROR),
        ({"log": {"file": "/nonexistent-dir/ipspool.log"}}, "log.file: /nonexistent-dir/ipspool.log",
         ExitCode.CONFIG_ERROR),
        ({"pipeline": {"stages": ["classify", "no_such_module:stage"]}}, "cannot import module 'no_such_module'",
         ExitCode.CONFIG_ERROR),
    ],
)
def test_unusable_paths_and_stages_are_refused_by_check_config_and_run(
    tmp_path: Path, settings: dict[str, Any], problem: str, run_code: int,
) -> None:
    """check-config names the key and the path (CONFIG_ERROR); run refuses to start with a clear message."""
    data: dict[str, Any] = {"spool": {"dir": str(tmp_path / "spool")}}
    for section, body in settings.items():
        data[section] = {**data.get(section, {}), **body}
    config = write_toml(tmp_path / "c.toml", data)
    check = run_cli("check-config", "--config", str(config))
    assert check.returncode == ExitCode.CONFIG_ERROR, check.stdout + check.stderr
    assert problem in check.stderr and "Traceback" not in check.stderr
    run = run_cli("run", "--config", str(config))
    assert run.returncode == run_code, run.stdout + run.stderr
    assert "Traceback" not in run.stderr + run.stdout


def test_reload_with_an_unloadable_stage_keeps_the_old_configuration(daemon: Daemon) -> None:
    """`ipspool reload` with an unimportable stage exits CONFIG_ERROR unsignalled; the daemon keeps its config."""
    daemon.drop("before.txt", "1.1.1.1\n")
    daemon.wait_result("before.txt")
    daemon.write_config(pipeline={"stages": ["classify", "no_such_module:stage"]})
    out = daemon.ipspool("reload", "--config", str(daemon.config_path))
    assert out.returncode == ExitCode.CONFIG_ERROR and "no_such_module" in out.stderr  # refused before signalling
    daemon.signal(1)  # SIGHUP anyway, as a careless operator would
    failed = daemon.wait_event("config.reload_failed")
    assert any("no_such_module" in p for p in failed["problems"])
    daemon.drop("after.txt", "2.2.2.2\n")
    assert daemon.wait_result("after.txt")[0]["ip"] == "2.2.2.2"
    assert daemon.proc is not None and daemon.proc.poll() is None
