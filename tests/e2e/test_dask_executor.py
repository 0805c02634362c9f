"""The Dask executor inside the real daemon, against a real scheduler and workers on loopback."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.daemon import Daemon, wait_for
from tests.support.dask_cluster import DaskCluster, need_distributed

pytestmark = pytest.mark.timeout(240)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[DaskCluster]:
    need_distributed()
    with DaskCluster(tmp_path / "cluster") as running:
        running.start_scheduler()
        yield running


def addresses(count: int, seed: int = 0) -> str:
    """Public, private, listed and bad lines, deterministic."""
    lines = []
    for i in range(count):
        n = (i * 2654435761 + seed) & 0xFFFFFFFF
        if i % 97 == 0:
            lines.append("not-an-address")
        elif i % 5 == 0:
            lines.append(f"192.0.2.{n % 256}")
        elif i % 7 == 0:
            lines.append(f"2001:db8::{n % 65536:x}")
        else:
            lines.append(f"{(n >> 24) % 223 + 1}.{(n >> 16) & 255}.{(n >> 8) & 255}.{n & 255}")
    return "\n".join(lines) + "\n"


def dask_settings(cluster: DaskCluster, **executor: Any) -> dict[str, Any]:
    return {"executor": {"kind": "dask", "scheduler": cluster.address, "connect_timeout": 3.0, **executor}}


def enrichment(d: Daemon) -> dict[str, Any]:
    from tests.support.geodb import asn_db, country_db

    lists = d.root / "drop.txt"
    lists.write_text("192.0.2.0/25 ; SBL1\n10.0.0.0/8\n2001:db8::/48\n")
    return {
        "pipeline": {"stages": ["classify", "lists", "geoip"]},
        "lists": [{"name": "drop", "path": str(lists), "alert": True}],
        "geoip": {"country_db": country_db(d.root / "c.mmdb"), "asn_db": asn_db(d.root / "a.mmdb")},
        "workers": {"chunk_bytes": 8192},
    }


def results_of(d: Daemon, names: list[str]) -> dict[str, bytes]:
    for name in names:
        wait_for(d.result_path(name).exists, 90, what=f"result of {name}")
    return {name: d.result_path(name).read_bytes() for name in names}


def test_dask_results_are_byte_identical_to_the_local_executor(make_daemon: Callable[..., Daemon],
                                                                 cluster: DaskCluster) -> None:
    """A multi-chunk file and many small files, classify+lists+geoip: the same bytes from both executors."""
    cluster.start_worker(threads=2)
    cluster.start_worker(threads=2)
    inputs = {"big.txt": addresses(6000), **{f"small-{i}.txt": addresses(7 + i, seed=i) for i in range(25)}}
    outputs = []
    for name, executor in (("local", {}), ("dask", dask_settings(cluster))):
        d = make_daemon(name)
        d.write_config(**enrichment(d), **executor)
        d.start()
        for file, content in inputs.items():
            d.drop(file, content)
        outputs.append(results_of(d, list(inputs)))
        assert d.stop() == 0
        if name == "dask":
            assert d.events("dask.connected") and d.events("dask.pipeline_installed")
            chunks = [e for e in d.events("chunk.done") if e.get("file", "").startswith("big.txt")]
            assert len(chunks) > 5, "the big file was not split into chunks"
    assert outputs[0] == outputs[1]
    records = [json.loads(line) for line in outputs[1]["big.txt"].splitlines()]
    assert any(r.get("lists") == ["drop"] and r.get("asn") == 64500 for r in records)
