"""`ipspool submit` as a producer: progress in lines, file modes, and what it may not see."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest

from ipspool import submit
from ipspool.config import parse_config
from ipspool.progress import Progress
from ipspool.spool import Spool


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_counts_lines_and_files_in_plain_lines_when_not_on_a_terminal() -> None:
    """Off a terminal: one line per change, none for a repeat."""
    out = io.StringIO()
    progress = Progress(300, 3, stream=out)
    for lines, files in ((0, 0), (0, 0), (100, 1), (300, 3)):
        progress.update(lines, files)
    progress.close()
    assert out.getvalue().splitlines() == [
        "progress: 0/300 lines, 0/3 files done",
        "progress: 100/300 lines, 1/3 files done",
        "progress: 300/300 lines, 3/3 files done",
    ]


def test_progress_draws_a_bar_weighted_by_lines_on_a_terminal() -> None:
    """On a terminal: a carriage-return bar whose length follows the lines done."""
    out = _Tty()
    progress = Progress(400, 2, stream=out)
    progress.update(100, 1)
    progress.close()
    assert out.getvalue() == "\r[#######.......................] 100/400 lines, 1/2 files\n"


@pytest.fixture
def spool(tmp_path: Path) -> Path:
    Spool(tmp_path / "spool", tmp_path / "spool" / "results").create()
    return tmp_path / "spool"


def test_submit_counts_lines_and_leaves_a_group_readable_file(spool: Path) -> None:
    """Lines are counted while copying (a last line without newline counts); the file is 0640 under any umask."""
    config = parse_config({"spool": {"dir": str(spool)}})
    source = spool.parent / "in.txt"
    source.write_bytes(b"192.0.2.1\n198.51.100.1\n2001:db8::1")
    old = os.umask(0o077)
    try:
        item = submit.submit_one(config, str(source))
    finally:
        os.umask(old)
    assert (item.name, item.lines) == ("in.txt", 3)
    assert (spool / "incoming" / "in.txt").stat().st_mode & 0o777 == 0o640


def test_producer_without_access_to_results_chooses_names_by_incoming_and_cannot_wait(
    spool: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Where done/, failed/ and results/ cannot be searched, names are checked in incoming/ alone and --wait refuses."""
    config = parse_config({"spool": {"dir": str(spool)}})
    hidden = {spool / "active", spool / "done", spool / "failed", spool / "results"}
    monkeypatch.setattr(submit, "_searchable", lambda d: d not in hidden)
    (spool / "done" / "in.txt").write_text("")
    source = spool.parent / "in.txt"
    source.write_text("192.0.2.1\n")
    assert submit.submit_one(config, str(source)).name == "in.txt"
    assert submit.submit_one(config, str(source)).name == "in.txt.1"  # incoming/in.txt is visible
    assert submit.submit_files(config, [str(source)], wait=True, timeout=1) == 1
    assert "--wait cannot observe results" in capsys.readouterr().err
    assert sorted(p.name for p in (spool / "incoming").iterdir()) == ["in.txt", "in.txt.1"]
