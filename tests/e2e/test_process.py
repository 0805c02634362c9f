"""``ipspool process``: the daemon's pipeline without the daemon, byte for byte the daemon's result."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from ipspool.exitcodes import ExitCode
from tests.e2e.test_e2e import addresses
from tests.support.compressed import compress
from tests.support.daemon import Daemon, python_path, wait_for
from tests.support.geodb import asn_db, country_db


def process(*args: str, stdin: bytes | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess[bytes]:
    """``python -m ipspool process ARGS`` as a user runs it."""
    return subprocess.run(
        [sys.executable, "-m", "ipspool", "process", *args], input=stdin, capture_output=True, timeout=120,
        env={**os.environ, "PYTHONPATH": python_path()}, cwd=cwd, check=False,
    )


def sample(lines: int, seed: int = 3) -> bytes:
    """Addresses, bad lines, comments and blank lines, CRLF on some lines."""
    out = []
    for n, text in enumerate(addresses(lines, seed)):
        if n % 97 == 5:
            out.append("# a comment")
        elif n % 89 == 3:
            out.append("")
        out.append(text + ("\r" if n % 13 == 0 else ""))
    return ("\n".join(out) + "\n").encode()


def test_process_output_is_byte_identical_to_the_daemon_result(make_daemon: Callable[..., Daemon],
                                                                tmp_path: Path) -> None:
    """Plain, gzip and a many-chunk file: the daemon's result file and ``process`` stdout are the same bytes."""
    d = make_daemon(workers={"chunk_bytes": 4096})
    d.start()
    inputs = {
        "small.txt": sample(40),
        "many-chunks.txt": sample(20_000, seed=5),
        "export.gz": compress("gzip", sample(15_000, seed=7)),
    }
    for name, data in inputs.items():
        (tmp_path / name).write_bytes(data)
        d.drop(name, data)
    for name in inputs:
        d.wait_result(name)
        run = process("--config", str(d.config_path), str(tmp_path / name))
        assert run.returncode == ExitCode.OK, run.stderr
        assert run.stdout == d.result_path(name).read_bytes(), name
        assert run.stderr == b""  # not a terminal: no progress bar
    chunks = d.events("chunk.done")
    assert len({e["chunk"] for e in chunks if e["file"] == "many-chunks.txt"}) > 10  # really split
    assert d.stop() == 0


def test_process_reads_standard_input_and_writes_output_file_whole(tmp_path: Path) -> None:
    """``-`` spools standard input; ``-o`` writes a temporary name renamed when whole; several inputs in order."""
    data = sample(5_000)
    source = tmp_path / "in.txt"
    source.write_bytes(data)
    from_file = process(str(source))
    from_stdin = process("-", stdin=compress("zstd", data))
    assert from_file.returncode == from_stdin.returncode == ExitCode.OK
    assert from_stdin.stdout == from_file.stdout and from_file.stdout.count(b"\n") > 4_000
    out = tmp_path / "out" / "records.jsonl"
    out.parent.mkdir()
    both = process("-o", str(out), str(source), "-", stdin=data)
    assert both.returncode == ExitCode.OK and both.stdout == b""
    assert out.read_bytes() == from_file.stdout * 2
    assert [p.name for p in out.parent.iterdir()] == ["records.jsonl"]


def test_process_missing_file_fails_naming_it_and_writes_nothing(tmp_path: Path) -> None:
    """A missing input: exit FAILURE before any work, its name on stderr, no output at all."""
    (tmp_path / "ok.txt").write_text("192.0.2.1\n")
    run = process("-o", str(tmp_path / "out.jsonl"), str(tmp_path / "ok.txt"), str(tmp_path / "missing.txt"))
    assert run.returncode == ExitCode.FAILURE
    assert b"missing.txt: no such file" in run.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ok.txt"]


def test_process_corrupt_gzip_fails_with_its_reason_and_no_partial_output(tmp_path: Path) -> None:
    """A truncated gzip stream: exit FAILURE, ``corrupt_compressed`` on stderr, no output file and no scratch left."""
    whole = compress("gzip", sample(30_000))
    (tmp_path / "cut.gz").write_bytes(whole[: len(whole) // 2])
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    run = subprocess.run(
        [sys.executable, "-m", "ipspool", "process", "-o", str(tmp_path / "out.jsonl"), str(tmp_path / "cut.gz")],
        capture_output=True, timeout=120, check=False,
        env={**os.environ, "PYTHONPATH": python_path(), "TMPDIR": str(scratch)},
    )
    assert run.returncode == ExitCode.FAILURE
    assert b"cut.gz: corrupt_compressed" in run.stderr and run.stdout == b""
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cut.gz", "scratch"]
    assert list(scratch.iterdir()) == []


def test_process_bad_configuration_exits_config_error(tmp_path: Path) -> None:
    """A configuration that does not validate: CONFIG_ERROR, the problem on stderr."""
    config = tmp_path / "bad.toml"
    config.write_text("[workers]\nthreads = 0\n")
    (tmp_path / "in.txt").write_text("192.0.2.1\n")
    run = process("--config", str(config), str(tmp_path / "in.txt"))
    assert run.returncode == ExitCode.CONFIG_ERROR
    assert b"workers.threads" in run.stderr and run.stdout == b""


def test_process_with_blocking_user_stages_matches_the_daemon(make_daemon: Callable[..., Daemon],
                                                              tmp_path: Path) -> None:
    """User stages (blocking by default) run on each process's thread pool, in line-aligned pieces; the bytes,
    stage errors included, are still the daemon's."""
    d = make_daemon(workers={"chunk_bytes": 4096},
                    pipeline={"stages": ["classify", "tests.support.stagelib:tag", "tests.support.stagelib:boom"]})
    d.start()
    data = sample(6_000, seed=11) + b"10.0.0.13\n"
    (tmp_path / "in.txt").write_bytes(data)
    d.drop("in.txt", data)
    d.wait_result("in.txt")
    run = process("--config", str(d.config_path), str(tmp_path / "in.txt"))
    assert run.returncode == ExitCode.OK, run.stderr
    assert run.stdout == d.result_path("in.txt").read_bytes()
    assert b'"stage_errors":{"tests.support.stagelib:boom"' in run.stdout and b'"tagged":4' in run.stdout
    assert d.stop() == 0


def test_process_draws_a_progress_bar_only_when_stderr_is_a_terminal(tmp_path: Path) -> None:
    """stderr on a pseudo-terminal: a bar in bytes and files; the records still go to stdout alone."""
    import pty

    data = sample(3_000)
    (tmp_path / "in.txt").write_bytes(data)
    controller, terminal = pty.openpty()
    try:
        run = subprocess.run(
            [sys.executable, "-m", "ipspool", "process", str(tmp_path / "in.txt")], stdout=subprocess.PIPE,
            stderr=terminal, timeout=120, check=False, env={**os.environ, "PYTHONPATH": python_path()},
        )
        os.close(terminal)
        terminal = -1
        shown = b""
        while True:
            try:
                piece = os.read(controller, 65536)
            except OSError:  # EIO: the terminal side is closed and drained
                break
            if not piece:
                break
            shown += piece
    finally:
        if terminal >= 0:
            os.close(terminal)
        os.close(controller)
    assert run.returncode == ExitCode.OK
    assert f"{len(data)}/{len(data)} bytes, 1/1 files".encode() in shown and b"\r[" in shown
    assert run.stdout.count(b"\n") > 2_000 and b"bytes" not in run.stdout


def test_process_summary_is_the_daemon_summary_for_the_same_input(make_daemon: Callable[..., Daemon],
                                                                 tmp_path: Path) -> None:
    """``--summary FILE`` for one many-chunk input: the same bytes as RESULTS/NAME.summary.json (classes, lists,
    countries, ASNs, errors by kind), written only beside a whole ``-o`` file."""
    d = make_daemon()
    lists = d.root / "drop.txt"
    lists.write_text("192.0.2.0/24\n10.0.0.0/8\n")
    d.write_config(
        spool={"summary_top": 3},
        workers={"chunk_bytes": 4096},
        pipeline={"stages": ["classify", "lists", "geoip"]},
        lists=[{"name": "drop", "path": str(lists)}],
        geoip={"country_db": country_db(d.root / "c.mmdb"), "asn_db": asn_db(d.root / "a.mmdb")},
    )
    d.start()
    lines = (["192.0.2.1", "2001:db8:1::5", "10.1.2.3", "8.8.8.8", "not-an-ip", "", "# c"] * 400) + ["x" * 5000]
    data = ("\n".join(lines) + "\n").encode()
    (tmp_path / "mixed.txt").write_bytes(data)
    d.drop("mixed.txt", data)
    d.wait_result("mixed.txt")
    out, summary = tmp_path / "out" / "records.jsonl", tmp_path / "out" / "mixed.summary.json"
    out.parent.mkdir()
    run = process("--config", str(d.config_path), "-o", str(out), "--summary", str(summary),
                  str(tmp_path / "mixed.txt"))
    assert run.returncode == ExitCode.OK, run.stderr
    assert out.read_bytes() == d.result_path("mixed.txt").read_bytes()
    assert summary.read_bytes() == (d.results / "mixed.txt.summary.json").read_bytes()
    assert json.loads(summary.read_bytes())["errors_by_kind"] == {"line_too_long": 1, "not_an_address": 400}
    assert sorted(p.name for p in out.parent.iterdir()) == ["mixed.summary.json", "records.jsonl"]
    assert d.stop() == 0


def test_process_summary_of_several_inputs_counts_them_together(tmp_path: Path) -> None:
    """Several inputs, one summary: counts over all of them, ``job`` and ``file`` their base names joined."""
    (tmp_path / "a.txt").write_text("192.0.2.1\nnope\n")
    (tmp_path / "b.txt").write_text("10.0.0.1\n\n")
    summary = tmp_path / "run.json"
    run = process("--summary", str(summary), str(tmp_path / "a.txt"), "-", stdin=b"8.8.8.8\n")
    assert run.returncode == ExitCode.OK, run.stderr
    doc = json.loads(summary.read_bytes())
    assert doc["job"] == doc["file"] == "a.txt, -"
    assert (doc["lines"], doc["addresses"], doc["errors"], doc["skipped"]) == (3, 2, 1, 0)
    both = process("--summary", str(summary), str(tmp_path / "a.txt"), str(tmp_path / "b.txt"))
    assert json.loads(summary.read_bytes())["lines"] == 4 and both.returncode == ExitCode.OK


def test_process_summary_is_not_written_when_the_run_fails(tmp_path: Path) -> None:
    """A corrupt input: no output and no summary, not even a temporary name; one file for both is a usage error."""
    whole = compress("gzip", sample(30_000))
    (tmp_path / "cut.gz").write_bytes(whole[: len(whole) // 2])
    run = process("--summary", str(tmp_path / "s.json"), "-o", str(tmp_path / "o"), str(tmp_path / "cut.gz"))
    assert run.returncode == ExitCode.FAILURE
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cut.gz"]
    same = process("--summary", str(tmp_path / "o"), "-o", str(tmp_path / "o"), str(tmp_path / "cut.gz"))
    assert same.returncode == ExitCode.USAGE and b"same file" in same.stderr


def _marked(mark: str) -> list[int]:
    """Live processes whose environment carries ``IPSPOOL_TEST_MARK=mark`` (zombies show none)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            environ = Path(f"/proc/{entry}/environ").read_bytes()
        except OSError:  # gone, or not ours to read
            continue
        if f"IPSPOOL_TEST_MARK={mark}".encode() in environ.split(b"\0"):
            found.append(int(entry))
    return found


def test_process_with_a_hung_stage_gives_up_after_heartbeat_timeout(make_daemon: Callable[..., Daemon],
                                                                   tmp_path: Path) -> None:
    """A stage that never returns: after ``workers.heartbeat_timeout`` of no progress, TIMED_OUT with the
    chunk on stderr, every worker process killed, no ``-o`` file and no scratch left."""
    # Long enough for a worker process to boot on a loaded machine (booting counts as no progress).
    d = make_daemon(workers={"chunk_bytes": 4096, "heartbeat_timeout": 4.0},
                    pipeline={"stages": ["classify", "tests.support.stagelib:hang"]})
    d.write_config()
    data = sample(3_000) + b"6.6.6.6\n" + sample(3_000, seed=9)
    (tmp_path / "in.txt").write_bytes(data)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    mark = uuid.uuid4().hex
    began = time.monotonic()
    run = subprocess.run(
        [sys.executable, "-m", "ipspool", "process", "--config", str(d.config_path), "-o", str(tmp_path / "out"),
         "--summary", str(tmp_path / "s.json"), str(tmp_path / "in.txt")],
        capture_output=True, timeout=60, check=False,
        env={**os.environ, "PYTHONPATH": python_path(), "TMPDIR": str(scratch), "IPSPOOL_TEST_MARK": mark},
    )
    took = time.monotonic() - began
    assert run.returncode == ExitCode.TIMED_OUT, run.stderr
    assert b"no progress for" in run.stderr and b"workers.heartbeat_timeout=4" in run.stderr
    assert b"in.txt" in run.stderr and b"chunk " in run.stderr and run.stdout == b""
    assert 4.0 <= took < 40
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d", "in.txt", "scratch"]
    assert list(scratch.iterdir()) == []
    # The forkserver leaves once its parent is gone; the killed workers are gone already.
    wait_for(lambda: not _marked(mark), 10, 0.05, what="every process of the run to be gone")
