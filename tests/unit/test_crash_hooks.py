"""The crash hooks of ipspool.logs: the last resort of a main thread, and a traceback that fits one line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from ipspool.exitcodes import ExitCode
from ipspool.logs import LogTarget, configure_logging, log_crash
from tests.support.daemon import python_path

_SCRIPT = """
from ipspool.logs import configure_logging, install_crash_hooks
configure_logging("info", "json", role="supervisor")
install_crash_hooks()
def deep(n):
    if n == 0:
        raise ValueError("nothing caught this")
    deep(n - 1)
deep(3)
"""


def test_an_exception_no_entry_point_caught_is_daemon_crashed_and_exit_70() -> None:
    """sys.excepthook: one critical daemon.crashed line on stdout, nothing on stderr, exit INTERNAL_ERROR."""
    out = subprocess.run([sys.executable, "-c", _SCRIPT], capture_output=True, text=True, timeout=60,
                         env={"PYTHONPATH": python_path(), "PATH": "/usr/bin:/bin"})
    assert out.returncode == ExitCode.INTERNAL_ERROR, out
    assert out.stderr == ""
    (line,) = out.stdout.splitlines()
    event = json.loads(line)
    assert event["event"] == "daemon.crashed" and event["level"] == "critical"
    assert event["exc_type"] == "ValueError" and event["exc"] == "nothing caught this"
    assert event["traceback"].count("in deep") == 4


def test_a_deep_traceback_keeps_its_innermost_frames_within_one_line(tmp_path: Path) -> None:
    """A 100-frame traceback is cut from the front; the JSON line stays under PIPE_BUF."""
    log = tmp_path / "log"
    configure_logging("info", "json", role="worker", target=LogTarget(str(log)))

    def ping(n: int) -> None:
        if n == 0:
            raise LookupError("at the bottom")
        pong(n - 1)

    def pong(n: int) -> None:  # alternating frames: Python cannot fold them into "repeated N times"
        ping(n - 1)

    try:
        ping(100)
    except LookupError as exc:
        log_crash("daemon.crashed", exc)
    raw = log.read_bytes()
    assert raw.endswith(b"\n") and raw.count(b"\n") == 1 and len(raw) < 4096
    event = json.loads(raw)
    assert event["traceback"].startswith("...[") and "characters cut]" in event["traceback"]
    assert event["traceback"].rstrip().endswith("LookupError: at the bottom")
    assert event["exc_type"] == "LookupError"
