"""The Dask executor inside the real daemon, against a real scheduler and workers on loopback."""

from __future__ import annotations

import functools
import json
import os
import shutil
import signal
import socket
import ssl
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from ipspool.exitcodes import ExitCode
from tests.e2e.test_metrics import samples
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
        prom = d.root / "ipspool.prom"
        d.write_config(**enrichment(d), **executor, metrics={"textfile": str(prom), "interval": 0.2})
        d.start()
        for file, content in inputs.items():
            d.drop(file, content)
        outputs.append(results_of(d, list(inputs)))
        if name == "dask":
            status = d.ipspool("status", "--config", str(d.config_path)).stdout
            assert "Executor: dask tcp://127.0.0.1" in status and "2 worker(s), 4 thread(s)" in status, status
            values = wait_for(functools.partial(executor_metrics, prom, "dask", cluster.address), what="dask metrics")
            assert values[("ipspool_executor_workers", ())] == 2  # the remote workers, not local CPUs
            assert values[("ipspool_executor_threads", ())] == 4
            assert values[("ipspool_executor_up", ())] == 1
        assert d.stop() == 0
        if name == "dask":
            assert d.events("dask.connected") and d.events("dask.pipeline_installed")
            chunks = [e for e in d.events("chunk.done") if e.get("file", "").startswith("big.txt")]
            assert len(chunks) > 5, "the big file was not split into chunks"
    assert outputs[0] == outputs[1]
    records = [json.loads(line) for line in outputs[1]["big.txt"].splitlines()]
    assert any(r.get("lists") == ["drop"] and r.get("asn") == 64500 for r in records)


def test_dask_results_of_every_format_are_byte_identical_to_the_local_executor(
        make_daemon: Callable[..., Daemon], cluster: DaskCluster) -> None:
    """A multi-chunk CSV with quoted newlines (JSON lines and CSV out), JSON lines, text: the same bytes."""
    from tests.e2e.test_formats_e2e import firewall_export

    cluster.start_worker(threads=2)
    export, _ = firewall_export(1500)
    inputs = {"fw.csv": export, "fw-out.csv": export, "h.jsonl": b'{"ip": "192.0.2.1"}\nnope\n',
              "a.log": b"from 192.0.2[.]9 and [2001:db8::1]:443\n"}
    rules = [{"match": "fw-out.csv", "output": "csv"}]
    outputs = []
    for name, executor in (("local", {}), ("dask", dask_settings(cluster))):
        d = make_daemon(name)
        d.write_config(inputs=rules, workers={"chunk_bytes": 4096}, **executor)  # type: ignore[arg-type]
        d.start()
        for file, content in inputs.items():
            d.drop(file, content)
        paths = [d.results / (f + (".csv" if f == "fw-out.csv" else ".jsonl")) for f in inputs]
        for path in paths:
            wait_for(path.exists, 90, what=str(path))
        outputs.append([path.read_bytes() for path in paths])
        assert d.stop() == 0
    assert outputs[0] == outputs[1]
    assert outputs[1][1].startswith(b"line,column,input,ip,")


def executor_metrics(prom: Path, kind: str, scheduler: str) -> dict[Any, float] | None:
    """The textfile's samples once it names this executor."""
    values = samples(prom.read_text()) if prom.exists() else {}
    return values if values.get(("ipspool_executor_info", (("kind", kind), ("scheduler", scheduler)))) == 1 else None


def lines_of(content: str) -> list[str]:
    return content.splitlines()


SLOW = {"pipeline": {"stages": ["classify", "tests.support.stagelib:sleepy"]}, "workers": {"chunk_bytes": 4096}}


def test_dask_worker_killed_mid_chunk_runs_again_elsewhere_once(make_daemon: Callable[..., Daemon],
                                                               cluster: DaskCluster) -> None:
    """SIGKILL of a Dask worker holding chunks: they run again, the file completes once, nothing duplicated."""
    from tests.support.spoolcheck import audit

    cluster.start_worker(threads=2)
    cluster.start_worker(threads=2)
    d = make_daemon()
    prom = d.root / "ipspool.prom"
    d.write_config(**SLOW, **dask_settings(cluster), metrics={"textfile": str(prom), "interval": 0.2})
    d.start()
    content = addresses(3000)
    d.drop("big.txt", content)
    d.wait_event("chunk.done", timeout=60)
    victims = cluster.worker_processes()
    assert len(victims) == 2
    os.kill(victims[0], signal.SIGKILL)
    lost = d.wait_event("dask.worker_lost", timeout=30)
    assert d.wait_event("chunk.retry", timeout=30)["cause"].startswith("dask worker")
    d.wait_result("big.txt", timeout=120)
    assert audit(d, {"big.txt": lines_of(content)}) == {}
    retries = len(d.events("chunk.retry"))

    def counted() -> dict[Any, float] | None:
        values = executor_metrics(prom, "dask", cluster.address)
        return values if values and values[("ipspool_chunk_retries_total", ())] == retries else None

    wait_for(counted, what="the retries in the metrics")
    assert lost["level"] == "error"
    assert d.stop() == 0


def test_dask_chunk_that_kills_max_attempts_workers_is_poison(make_daemon: Callable[..., Daemon],
                                                              cluster: DaskCluster) -> None:
    """os.abort() in a stage on Dask workers: one Lost per death, poison after max_attempts; others complete."""
    from tests.support.spoolcheck import audit

    cluster.start_worker(threads=2)
    cluster.start_worker(threads=2)
    d = make_daemon()
    d.write_config(pipeline={"stages": ["classify", "tests.support.stagelib:crash"]},
                   workers={"max_attempts": 2}, **dask_settings(cluster))
    d.start()
    d.drop("abort.txt", "1.1.1.1\n6.6.6.6\n")
    others = {f"ok-{i}.txt": [f"10.0.0.{i}", "8.8.8.8"] for i in range(4)}
    for name, lines in others.items():
        d.drop(name, "\n".join(lines) + "\n")
    failure = d.wait_failed("abort.txt", timeout=120)
    assert failure["reason"] == "poison" and failure["attempts"] == 2
    assert "dask worker" in failure["detail"]
    for name in others:
        d.wait_result(name, timeout=60)
    assert len(d.events("dask.worker_lost")) >= 2
    wait_for((d.spool / "failed" / "abort.txt").exists, 10, what="the poison input in failed/")
    assert d.stop() == 0
    assert audit(d, {"abort.txt": [], **others}, allowed_failures=("poison",)) == {"abort.txt": "poison"}


def test_dask_scheduler_down_at_start_files_wait_then_flow(make_daemon: Callable[..., Daemon],
                                                           tmp_path: Path) -> None:
    """No scheduler yet: the daemon is up with dask.scheduler_unreachable, files wait in incoming/, then flow."""
    need_distributed()
    with DaskCluster(tmp_path / "late") as late:
        d = make_daemon()
        prom = d.root / "ipspool.prom"
        d.write_config(**dask_settings(late, connect_timeout=1.0), metrics={"textfile": str(prom), "interval": 0.2})
        d.start()
        event = d.wait_event("dask.scheduler_unreachable")
        assert event["level"] == "error" and event["scheduler"] == late.address
        # What IpspoolExecutorLost pages on: up, but nowhere to run chunks.
        values = wait_for(functools.partial(executor_metrics, prom, "dask", late.address), what="dask metrics")
        assert values[("ipspool_executor_up", ())] == 0 and values[("ipspool_executor_workers", ())] == 0
        assert values[("ipspool_up", ())] == 1
        d.drop("early.txt", "10.1.2.3\n8.8.8.8\n")
        time.sleep(2.0)
        assert (d.spool / "incoming" / "early.txt").exists()
        late.start_scheduler()
        late.start_worker(threads=2)
        records = d.wait_result("early.txt", timeout=90)
        assert [r["ip"] for r in records] == ["10.1.2.3", "8.8.8.8"]
        assert d.events("dask.connected")
        assert d.stop() == 0


def test_dask_scheduler_lost_mid_run_chunks_sent_again_when_back(make_daemon: Callable[..., Daemon],
                                                                 cluster: DaskCluster) -> None:
    """The scheduler dies with chunks in flight: they are sent again once it is back; nothing lost or doubled."""
    from tests.support.spoolcheck import audit

    cluster.start_worker(threads=2)
    d = make_daemon()
    d.write_config(**SLOW, **dask_settings(cluster, connect_timeout=2.0))
    d.start()
    content = addresses(2500)
    d.drop("big.txt", content)
    d.wait_event("chunk.done", timeout=60)
    cluster.kill_scheduler()
    lost = d.wait_event("dask.scheduler_lost", timeout=30)
    assert lost["level"] == "error"
    time.sleep(1.0)
    cluster.start_scheduler()
    d.wait_event("dask.scheduler_back", timeout=60)
    # A Dask worker exits when it loses its scheduler; its service manager starts it again.
    cluster.start_worker(threads=2)
    d.wait_result("big.txt", timeout=120)
    assert d.stop() == 0
    assert audit(d, {"big.txt": lines_of(content)}) == {}


def test_dask_term_with_remote_work_in_flight_is_graceful(make_daemon: Callable[..., Daemon],
                                                          cluster: DaskCluster) -> None:
    """TERM: in-flight remote chunks finish within graceful_timeout; a hung one stays in active/; exit 0."""
    cluster.start_worker(threads=2)
    d = make_daemon()
    d.write_config(pipeline={"stages": ["classify", "tests.support.stagelib:hang",
                                        "tests.support.stagelib:sleepy"]},
                   workers={"graceful_timeout": 4.0, "heartbeat_timeout": 30.0}, **dask_settings(cluster))
    d.start()
    d.drop("hang.txt", "6.6.6.6\n")
    d.drop("short.txt", "\n".join(f"10.0.1.{i}" for i in range(150)) + "\n")  # about 0.75 s of work
    wait_for(lambda: not list((d.spool / "incoming").iterdir()), 20, what="both files claimed")
    time.sleep(0.2)
    began = time.monotonic()
    d.signal(signal.SIGTERM)
    assert d.stop(timeout=30) == 0
    assert time.monotonic() - began < 4.0 + 6.0
    assert d.result_path("short.txt").exists()
    assert [p.name for p in (d.spool / "active").iterdir()] == ["hang.txt"]
    assert d.events("daemon.stop_timeout")


def test_dask_hung_stage_is_lost_after_heartbeat_timeout_and_poison(make_daemon: Callable[..., Daemon],
                                                                    cluster: DaskCluster) -> None:
    """A remote stage that never returns: after heartbeat_timeout it is Lost (worker restarted); poison; others flow."""
    from tests.support.spoolcheck import audit

    cluster.start_worker(threads=2)
    cluster.start_worker(threads=2)
    d = make_daemon()
    d.write_config(pipeline={"stages": ["classify", "tests.support.stagelib:hang"]},
                   workers={"heartbeat_timeout": 3.0, "max_attempts": 2}, **dask_settings(cluster))
    d.start()
    d.drop("hang.txt", "6.6.6.6\n")
    timeout = d.wait_event("dask.chunk_timeout", timeout=30)
    assert timeout["level"] == "error" and timeout["age"] >= 3.0
    others = {f"ok-{i}.txt": [f"10.0.0.{i}"] for i in range(3)}
    for name, lines in others.items():
        d.drop(name, "\n".join(lines) + "\n")
    failure = d.wait_failed("hang.txt", timeout=90)
    assert failure["reason"] == "poison" and "heartbeat_timeout" in failure["detail"]
    for name in others:
        d.wait_result(name, timeout=60)
    assert d.wait_event("dask.worker_restarted", timeout=30)
    wait_for((d.spool / "failed" / "hang.txt").exists, 10, what="the poison input in failed/")
    assert d.stop() == 0
    assert audit(d, {"hang.txt": [], **others}, allowed_failures=("poison",)) == {"hang.txt": "poison"}


def refused_without_certificate(ca: str, port: int) -> bool:
    """A TLS client that trusts the CA but shows no certificate gets no answer from the scheduler."""
    context = ssl.create_default_context(cafile=ca)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        try:
            with context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
                tls.sendall(b"\0" * 16)
                return tls.recv(1) == b""
        except (ssl.SSLError, ConnectionResetError):
            return True


def test_dask_over_tls_works_and_a_client_without_certificates_is_refused(make_daemon: Callable[..., Daemon],
                                                                          tmp_path: Path) -> None:
    """tls:// scheduler and worker with a test CA: the daemon processes; a client without certificates cannot join."""
    need_distributed()
    from distributed import Client

    from tests.support.certs import OPENSSL_MISSING, make_tls

    if shutil.which("openssl") is None:
        pytest.skip(OPENSSL_MISSING)
    ca, cert, key = make_tls(tmp_path / "tls")
    with DaskCluster(tmp_path / "tls-cluster", tls=(ca, cert, key)) as secure:
        secure.start_scheduler()
        secure.start_worker(threads=2)
        with pytest.raises((OSError, TimeoutError)):
            Client(secure.address.replace("tls://", "tcp://"), timeout=3)
        assert refused_without_certificate(ca, secure.port)
        d = make_daemon()
        d.write_config(**dask_settings(secure, tls_ca_file=ca, tls_cert_file=cert, tls_key_file=key))
        def check() -> bool:
            checked = d.ipspool("check-config", "--config", str(d.config_path))
            assert checked.returncode == 0, checked.stderr
            return "1 worker(s), 2 thread(s)" in checked.stdout

        wait_for(check, 60, 0.5, what="check-config to see the TLS worker")
        d.start()
        d.drop("secure.txt", "10.9.8.7\n")
        assert [r["ip"] for r in d.wait_result("secure.txt", 60)] == ["10.9.8.7"]
        assert d.stop() == 0


def test_check_config_says_when_the_dask_scheduler_does_not_answer(make_daemon: Callable[..., Daemon],
                                                                   tmp_path: Path) -> None:
    """check-config with kind = "dask": CONFIG_ERROR naming executor.scheduler when nothing answers there."""
    need_distributed()
    d = make_daemon()
    silent = DaskCluster(tmp_path / "silent")
    d.write_config(**dask_settings(silent, connect_timeout=1.0))
    checked = d.ipspool("check-config", "--config", str(d.config_path))
    assert checked.returncode == ExitCode.CONFIG_ERROR
    assert f"executor.scheduler: {silent.address} does not answer" in checked.stderr


def test_dask_list_change_installs_a_new_pipeline_version_that_late_workers_get(
        make_daemon: Callable[..., Daemon], cluster: DaskCluster) -> None:
    """A replaced list file: a new pipeline version on the cluster; a worker that joins later has it too."""
    first = cluster.start_worker(threads=2, name="first")
    d = make_daemon()
    lists = d.root / "customers.txt"
    lists.write_text("10.0.0.0/8\n")
    d.write_config(pipeline={"stages": ["classify", "lists"]},
                   lists=[{"name": "customers", "path": str(lists), "alert": False}], **dask_settings(cluster))
    d.start()
    d.drop("before.txt", "10.1.1.1\n172.16.0.1\n")
    assert [r["lists"] for r in d.wait_result("before.txt")] == [["customers"], []]
    replacement = d.root / "customers.new"
    replacement.write_text("10.0.0.0/8\n172.16.0.0/12\n")
    replacement.rename(lists)
    d.signal(signal.SIGHUP)
    assert d.wait_event("config.reloaded")["mode"] == "refresh"
    d.wait_event("dask.pipeline_installed", where=lambda e: e["version"] >= 2)
    cluster.start_worker(threads=2, name="late")
    d.wait_event("dask.worker_joined", where=lambda e: len(d.events("dask.worker_joined")) >= 2)
    os.killpg(first.pid, signal.SIGKILL)  # only the late worker is left
    d.wait_event("dask.worker_left")
    d.drop("after.txt", "10.1.1.1\n172.16.0.1\n")
    assert [r["lists"] for r in d.wait_result("after.txt")] == [["customers"], ["customers"]]
    assert d.stop() == 0


def test_dask_reload_with_new_stages_runs_no_chunk_on_the_old_pipeline(make_daemon: Callable[..., Daemon],
                                                                       cluster: DaskCluster) -> None:
    """HUP with changed stages: a new pipeline version is installed before config.reloaded; new files use it."""
    cluster.start_worker(threads=2)
    d = make_daemon()
    d.write_config(**dask_settings(cluster))
    d.start()
    d.drop("before.txt", "10.1.1.1\n")
    assert "tagged" not in d.wait_result("before.txt")[0]
    d.write_config(pipeline={"stages": ["classify", "tests.support.stagelib:tag"]}, **dask_settings(cluster))
    d.signal(signal.SIGHUP)
    reloaded = d.wait_event("config.reloaded")
    assert reloaded["mode"] == "replace"
    installed = [e for e in d.events("dask.pipeline_installed") if e["version"] >= 2]
    assert installed and installed[0]["stages"] == ["classify", "tests.support.stagelib:tag"]
    d.drop("after.txt", "10.1.1.1\n")
    assert d.wait_result("after.txt")[0]["tagged"] == 4
    assert d.stop() == 0
