"""`ipspool status` prints nothing a terminal acts on: no name can forge a row or retitle the window."""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable

from ipspool.status import render_status
from tests.support.daemon import Daemon, wait_for

_ACTED_ON = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
HOSTILE = "x\x1b]0;owned\x07\x1b[2J\x1b[1;1H\nFAKE  0  ready\r\x9b31m\x7f\u202egnp.exe"


def test_every_control_character_is_escaped() -> None:
    """C0, DEL, C1 and the bidi and line-separator characters come out as escapes; the rest as is."""
    from ipspool.status import terminal_safe

    everything = "".join(map(chr, range(0xA0))) + "\u2028\u2029\u202a\u202e\u2066\u2069\u00e9\u4e2d"
    shown = terminal_safe(everything)
    assert not _ACTED_ON.search(shown) and "\n" not in shown
    assert "\\x1b" in shown and "\\x9b" in shown and "\\x7f" in shown and "\\u202e" in shown
    assert "abc" in shown and "\u00e9\u4e2d" in shown


def test_status_of_a_hostile_snapshot_has_one_line_per_row_and_no_escapes() -> None:
    """Names, spool, config, reload problems and odd types from the Manager: escaped, never a crash."""
    snapshot = {
        "daemon": {
            "spool": "/s\x1b[31m", "state": "running\n  fake", "config": "c\x07", "pid": "12\n34",
            "started": time.time() - 5, "backlog": 2, "backlog_age": "soon", "active": 1,
            "last_reload": {"ok": False, "problems": ["bad\x1b]0;t\x07"], "time": time.time()},
            "worker_table": [
                {"slot": 0, "pid": 101, "ready": True, "inflight": 1, "uptime": 3.0, "heartbeat_age": 0.1,
                 "current": [HOSTILE, "b\n"]},
                {"slot": "1\n", "pid": None, "ready": True, "uptime": float("inf"), "current": "not a list"},
            ],
        },
        "totals": {"files_done": 3, "class.x\x1b": 1},
        "workers": {101: {"pid": 101, "chunks_done": 2, "lines_done": "many"}},
    }
    text = render_status(snapshot)
    assert not _ACTED_ON.search(text)
    lines = text.splitlines()
    assert len(lines) == 10 + 2  # 6 summary lines, classes, reload, blank, header; then the 2 rows
    assert lines[-2].startswith("  0") and "\\x1b]0;owned\\x07" in lines[-2] and "\\x0aFAKE" in lines[-2]
    assert lines[-1].startswith("  ?")


def test_status_of_the_real_daemon_escapes_a_hostile_file_name(make_daemon: Callable[..., Daemon]) -> None:
    """A file named with OSC, CSI, BEL, CR and LF in progress: the worker table shows it escaped, on one row."""
    d = make_daemon(workers={"threads": 2}, pipeline={"stages": ["classify", "tests.support.stagelib:sleepy"]})
    d.start()
    tmp = d.spool / "tmp" / "hostile"
    tmp.write_text("".join(f"10.5.{i // 250}.{i % 250}\n" for i in range(1500)))
    os.rename(tmp, d.spool / "incoming" / HOSTILE)
    seen = ""

    def shows_it() -> bool:
        nonlocal seen
        out = d.ipspool("status", "--config", str(d.config_path))
        assert out.returncode == 0, out.stderr
        seen = out.stdout
        return "FAKE" in out.stdout

    wait_for(shows_it, timeout=30, interval=0.1, what="the file in the worker table")
    assert not _ACTED_ON.search(seen)
    rows = [line for line in seen.splitlines() if line.startswith("  ") and "FAKE" in line]
    assert len(rows) >= 1 and all("\\x1b]0;owned\\x07" in row and "\\x0aFAKE" in row for row in rows)
    assert not any(line.startswith("FAKE") for line in seen.splitlines())
    assert d.stop() == 0
