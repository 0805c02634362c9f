"""Under journald (JOURNAL_STREAM names stdout) every line carries its <N> priority."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

from tests.support.daemon import REPO, wait_for, write_toml

_PRIORITY = {"debug": 7, "info": 6, "warning": 4, "error": 3, "critical": 2}
_LINE = re.compile(rb"^<(\d)>(\{.*\})$")


def _run_on_pipe(tmp_path: Path, journal_stream: bool) -> list[bytes]:
    """Run the daemon with stdout on a pipe, provoke a warning and an error, stop it; return its lines."""
    spool = tmp_path / "spool"
    config = tmp_path / "ipspool.toml"
    settings = {
        "spool": {"dir": str(spool), "rescan_interval": 1.0},
        "workers": {"processes": 2, "threads": 2},
        "log": {"level": "debug", "format": "json"},
    }
    write_toml(config, settings)
    read_end, write_end = os.pipe()
    st = os.fstat(write_end)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("JOURNAL_STREAM", None)
    if journal_stream:
        env["JOURNAL_STREAM"] = f"{st.st_dev}:{st.st_ino}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "ipspool", "run", "--config", str(config)],
        stdout=write_end, stderr=subprocess.DEVNULL, env=env, start_new_session=True,
    )
    os.close(write_end)
    chunks: list[bytes] = []
    reader = threading.Thread(target=lambda: chunks.extend(iter(lambda: os.read(read_end, 65536), b"")))
    reader.start()
    try:
        wait_for(lambda: b"daemon.ready" in b"".join(chunks), 30, what="daemon.ready")
        (spool / "incoming" / "link.txt").symlink_to("/etc/hostname")      # file.rejected: a warning
        (spool / "tmp" / "ok").write_text("192.0.2.1\nnot-an-ip\n")
        os.rename(spool / "tmp" / "ok", spool / "incoming" / "ok.txt")     # file.done: info
        wait_for(lambda: b"file.done" in b"".join(chunks) and b"file.rejected" in b"".join(chunks), 30,
                 what="file.done and file.rejected")
        config.write_text(config.read_text() + "\n[nonsense]\n")
        proc.send_signal(signal.SIGHUP)                                     # config.reload_failed: an error
        wait_for(lambda: b"config.reload_failed" in b"".join(chunks), 30, what="config.reload_failed")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        reader.join(10)
        os.close(read_end)
    return b"".join(chunks).splitlines()


def test_journal_stream_prefixes_each_json_line_with_its_priority(tmp_path: Path) -> None:
    """Every line of every process is <N> + intact JSON, N matching the level; all levels occur."""
    lines = _run_on_pipe(tmp_path, journal_stream=True)
    seen: dict[str, set[str]] = {}
    for line in lines:
        match = _LINE.match(line)
        assert match, f"not <N>{{json}}: {line[:200]!r}"
        event = json.loads(match.group(2))
        assert int(match.group(1)) == _PRIORITY[event["level"]], event
        seen.setdefault(event["level"], set()).add(event["role"])
    assert {"debug", "info", "warning", "error"} <= set(seen)
    assert {"supervisor", "worker"} <= set().union(*seen.values())


def test_without_journal_stream_lines_are_plain_json(tmp_path: Path) -> None:
    """A pipe that is not the journal gets JSON lines with no prefix (shippers parse them as-is)."""
    lines = _run_on_pipe(tmp_path, journal_stream=False)
    assert lines
    for line in lines:
        assert json.loads(line)["event"]
