"""Shared fixtures: a real ``ipspool run`` process on a temporary spool."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.daemon import Daemon


@pytest.fixture
def make_daemon(tmp_path: Path) -> Iterator[Callable[..., Daemon]]:
    """Build (not start) daemons on temporary spools; all are killed at the end."""
    made: list[Daemon] = []

    def factory(name: str = "d", **settings: Any) -> Daemon:
        root = tmp_path / name
        root.mkdir()
        daemon = Daemon(root, settings)
        made.append(daemon)
        return daemon

    yield factory
    for daemon in made:
        if daemon.proc is not None:
            daemon.kill_all()


@pytest.fixture
def daemon(make_daemon: Callable[..., Daemon]) -> Iterator[Daemon]:
    """A started daemon with the default test settings."""
    d = make_daemon()
    d.start()
    yield d
    if d.proc is not None:
        d.stop()
