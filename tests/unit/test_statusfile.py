"""RUNTIME/status.json: written whole and private, read as untrusted data, stale when old or its daemon is gone."""

from __future__ import annotations

import os
import stat
import subprocess
import time
from pathlib import Path

import pytest

from ipspool.cli import needs_network
from ipspool.config import load_config
from ipspool.stats import STATUS_NAME, SnapshotWriter, Stats, write_status
from ipspool.statusfile import STALE_AFTER, StatusUnavailable, read_snapshot


def test_write_status_is_0640_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o077)
    try:
        write_status(tmp_path, {"written": time.time(), "daemon": {"pid": os.getpid()}})
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / STATUS_NAME).stat().st_mode) == 0o640
    assert [p.name for p in tmp_path.iterdir()] == [STATUS_NAME]  # no temporary file left


def test_writer_writes_on_change_and_refreshes_when_idle(tmp_path: Path) -> None:
    stats = Stats()
    writer = SnapshotWriter(stats, tmp_path)
    version, written = writer.write_once(-1, 0.0)
    assert (tmp_path / STATUS_NAME).exists()
    assert writer.write_once(version, written) == (version, written)  # unchanged, fresh: not rewritten
    stats.set_daemon({"pid": os.getpid()})
    version2, _ = writer.write_once(version, written)
    assert version2 == version + 1
    assert read_snapshot(tmp_path).pid == os.getpid()


def test_a_stale_snapshot_or_a_gone_pid_is_not_running(tmp_path: Path) -> None:
    write_status(tmp_path, {"written": time.time() - STALE_AFTER - 1, "daemon": {"pid": os.getpid()}})
    with pytest.raises(StatusUnavailable, match="old"):
        read_snapshot(tmp_path)
    gone = subprocess.Popen(["true"])
    gone.wait()
    write_status(tmp_path, {"written": time.time(), "daemon": {"pid": gone.pid}})
    with pytest.raises(StatusUnavailable, match="gone"):
        read_snapshot(tmp_path)
    (tmp_path / STATUS_NAME).write_text("[1, 2")
    with pytest.raises(StatusUnavailable, match="not a JSON"):
        read_snapshot(tmp_path)


@pytest.mark.parametrize(("stages", "network"), [
    (["classify"], False),
    (["classify", "lists", "geoip"], False),
    (["classify", "rdns"], True),
    (["classify", "tests.support.stagelib:tag"], True),
])
def test_needs_network(tmp_path: Path, stages: list[str], network: bool) -> None:
    config = tmp_path / "c.toml"
    config.write_text("[pipeline]\nstages = [" + ", ".join(f'"{s}"' for s in stages) + "]\n")
    assert needs_network(load_config(str(config))) is network


@pytest.mark.parametrize(("extra", "network"), [
    ('[metrics]\nlisten = "127.0.0.1:9464"\n', True),
    ('[metrics]\ntextfile = "/tmp/x.prom"\n', False),
    ('[executor]\nkind = "dask"\nscheduler = "tcp://127.0.0.1:8786"\n', True),
])
def test_the_metrics_endpoint_and_a_cluster_need_the_network(tmp_path: Path, extra: str, network: bool) -> None:
    """Under PrivateNetwork=yes even loopback is the service's own: an endpoint or a scheduler keeps the network."""
    config = tmp_path / "c.toml"
    config.write_text('[pipeline]\nstages = ["classify"]\n' + extra)
    assert needs_network(load_config(str(config))) is network
