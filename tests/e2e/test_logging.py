"""Structured logs: JSON lines that stay whole when several processes share a pipe."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

from ipspool.logs import configure_logging, get_logger
from tests.support.daemon import REPO, wait_for, write_toml


def test_lines_from_all_processes_never_interleave_under_load(tmp_path: Path) -> None:
    """With debug logging to one stdout pipe, every line of a busy run is one whole JSON object."""
    spool = tmp_path / "spool"
    config = write_toml(tmp_path / "c.toml", {
        "spool": {"dir": str(spool), "rescan_interval": 1.0},
        "workers": {"processes": 2, "threads": 4, "chunk_bytes": 4096},
        "log": {"level": "debug", "format": "json"},
    })
    proc = subprocess.Popen([sys.executable, "-m", "ipspool", "run", "--config", str(config)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    lines: list[bytes] = []
    assert proc.stdout is not None
    stdout = proc.stdout
    reader = threading.Thread(target=lambda: lines.extend(iter(stdout.readline, b"")), daemon=True)
    reader.start()
    try:
        wait_for(lambda: any(b'"daemon.ready"' in line for line in list(lines)), what="daemon.ready")
        for i in range(300):
            body = "".join(f"10.{i % 250}.{j % 250}.{j % 200 + 1}\n" for j in range(200 if i % 10 else 3000))
            tmp = spool / "tmp" / f".f{i}"
            tmp.write_text(body)
            os.rename(tmp, spool / "incoming" / f"f{i:03d}.txt")
        wait_for(lambda: len(list((spool / "results").glob("*.jsonl"))) == 300, timeout=120, what="300 results")
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
        reader.join(10)
    events = [json.loads(line) for line in lines]  # raises on any torn or interleaved line
    roles = {e["role"] for e in events}
    assert roles >= {"supervisor", "worker"}
    assert sum(1 for e in events if e["event"] == "chunk.done") > 300
    for event in events:
        assert list(event)[:4] == ["timestamp", "level", "event", "pid"]
        assert event["timestamp"].endswith("Z")


def test_oversized_event_is_shortened_not_split(tmp_path: Path) -> None:
    """An event with huge fields becomes one line under 4,000 bytes."""
    path = tmp_path / "log.jsonl"
    from ipspool.logs import LogTarget

    configure_logging("info", "json", role="test", target=LogTarget(str(path)))
    get_logger().info("test.big", blob="x" * 100_000, items=list(range(5000)))
    line = path.read_bytes()
    assert line.count(b"\n") == 1 and len(line) < 4000
    event = json.loads(line)
    assert event["event"] == "test.big" and event["blob"].endswith("[truncated]")
