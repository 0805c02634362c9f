"""The watch of incoming/ and of its producer subdirectories, on real inotify: names out, nothing deeper."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ipspool.watcher import SUBDIR, IncomingWatcher


@pytest.fixture
def watcher(tmp_path: Path) -> Iterator[IncomingWatcher]:
    (tmp_path / "incoming").mkdir()
    (tmp_path / "tmp").mkdir()
    w = IncomingWatcher(tmp_path / "incoming")
    w.start()
    yield w
    w.stop()


def _names(w: IncomingWatcher, until: str, timeout: float = 10.0) -> list[str]:
    """Names drained until ``until`` came: a sentinel renamed in last, into the same directory as the
    names it vouches for (each watched directory has an inotify instance and a thread of its own, so
    events of two directories may come in either order)."""
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while until not in seen:
        assert time.monotonic() < deadline, f"{until} never reported; saw {seen}"
        seen += w.drain()
        time.sleep(0.01)
    return seen


def _rename_in(tmp_path: Path, relative: str) -> None:
    part = tmp_path / "tmp" / "part"
    part.write_text("192.0.2.1\n")
    os.rename(part, tmp_path / "incoming" / relative)


def test_files_of_a_followed_subdirectory_come_as_sub_slash_name_and_deeper_ones_not_at_all(
        watcher: IncomingWatcher, tmp_path: Path) -> None:
    incoming = tmp_path / "incoming"
    (incoming / "fw" / "deeper").mkdir(parents=True)
    assert watcher.follow({"fw": 1}) == []
    assert watcher.watched == ["fw"]
    _rename_in(tmp_path, "fw/a.csv")
    _rename_in(tmp_path, "fw/.hidden")
    _rename_in(tmp_path, "fw/deeper/b.csv")
    _rename_in(tmp_path, "fw/sentinel")
    seen = _names(watcher, "fw/sentinel")
    assert [n for n in seen if n != SUBDIR] == ["fw/a.csv", "fw/sentinel"]


def test_a_directory_made_or_moved_into_incoming_asks_for_a_scan(watcher: IncomingWatcher,
                                                                 tmp_path: Path) -> None:
    (tmp_path / "incoming" / "made").mkdir()
    (tmp_path / "tmp" / "moved").mkdir()
    os.rename(tmp_path / "tmp" / "moved", tmp_path / "incoming" / "moved")
    _rename_in(tmp_path, "sentinel")
    assert _names(watcher, "sentinel") == [SUBDIR, SUBDIR, "sentinel"]


def test_follow_drops_the_watches_of_subdirectories_no_longer_read(watcher: IncomingWatcher,
                                                                    tmp_path: Path) -> None:
    for sub in ("a", "b"):
        (tmp_path / "incoming" / sub).mkdir()
    watcher.drain()
    assert watcher.follow({"a": 1, "b": 2}) == []
    assert watcher.follow({"b": 2}) == []
    assert watcher.watched == ["b"]
    _rename_in(tmp_path, "a/x")  # a/ has no watch any more: nothing can report it, early or late
    _rename_in(tmp_path, "b/y")
    _rename_in(tmp_path, "b/sentinel")
    assert [n for n in _names(watcher, "b/sentinel") if n != SUBDIR] == ["b/y", "b/sentinel"]


def test_a_subdirectory_that_cannot_be_watched_is_named_and_the_others_are_kept(
        watcher: IncomingWatcher, tmp_path: Path) -> None:
    (tmp_path / "incoming" / "ok").mkdir()
    assert watcher.follow({"ok": 1, "missing": 2}) == ["missing"]
    assert watcher.watched == ["ok"]


def test_a_subdirectory_replaced_by_another_of_its_name_gets_a_new_watch(watcher: IncomingWatcher,
                                                                        tmp_path: Path) -> None:
    """inotify watches the directory, not the name: rmdir + mkdir needs a new watch, which a new identity asks for."""
    fw = tmp_path / "incoming" / "fw"
    fw.mkdir()
    assert watcher.follow({"fw": "first"}) == []
    fw.rmdir()
    fw.mkdir()
    assert watcher.follow({"fw": "first"}) == []  # same identity: the stale watch stays, and hears nothing
    _rename_in(tmp_path, "fw/lost")
    _rename_in(tmp_path, "sentinel")
    assert "fw/lost" not in _names(watcher, "sentinel")
    assert watcher.follow({"fw": "second"}) == []
    _rename_in(tmp_path, "fw/heard")
    assert "fw/heard" in _names(watcher, "fw/heard")
