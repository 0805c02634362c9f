"""Prometheus textfile metrics, checked with prometheus_client's own parser."""

from __future__ import annotations

import http.client
import json
import os
import platform
import signal
import socket
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from ipspool import __version__
from ipspool.exitcodes import ExitCode
from tests.support.daemon import Daemon, wait_for

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def samples(text: str) -> Samples:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_metrics_file_matches_a_run_with_known_input(make_daemon: Callable[..., Daemon]) -> None:
    """After known files, the .prom file carries exactly their counts."""
    d = make_daemon(metrics={"interval": 0.2})
    prom = d.root / "ipspool.prom"
    d.write_config(metrics={"textfile": str(prom), "interval": 0.2})
    d.start()
    d.drop("a.txt", "8.8.8.8\n10.0.0.1\nbad\n# comment\n")
    d.drop("b.txt", "1.1.1.1\n::1\n")
    d.wait_result("a.txt")
    d.wait_result("b.txt")

    def both_counted() -> dict[tuple[str, tuple[tuple[str, str], ...]], float] | None:
        if not prom.exists():
            return None
        values = samples(prom.read_text())
        return values if values.get(("ipspool_files_total", (("outcome", "done"),))) == 2 else None

    values = wait_for(both_counted, what="metrics for two files")
    assert values[("ipspool_lines_total", (("outcome", "valid"),))] == 4
    assert values[("ipspool_lines_total", (("outcome", "invalid"),))] == 1
    assert values[("ipspool_lines_total", (("outcome", "skipped"),))] == 1
    assert values[("ipspool_addresses_total", (("class", "global"),))] == 2
    assert values[("ipspool_addresses_total", (("class", "private"),))] == 1
    assert values[("ipspool_addresses_total", (("class", "loopback"),))] == 1
    assert values[("ipspool_file_processing_seconds_count", ())] == 2
    assert values[("ipspool_workers_alive", ())] == 2
    assert values[("ipspool_up", ())] == 1
    assert values[("ipspool_worker_restarts_total", ())] == 0
    assert d.stop() == 0
    assert samples(prom.read_text())[("ipspool_up", ())] == 0


def wait_metrics(read: Callable[[], str | None], check: Callable[[Samples], bool], what: str) -> Samples:
    """The exposition once ``check`` holds for it (the daemon rewrites it every metrics.interval)."""
    def ready() -> Samples | None:
        text = read()
        values = samples(text) if text else None
        return values if values is not None and check(values) else None

    return wait_for(ready, what=what)  # type: ignore[no-any-return]


def textfile(path: Path) -> Callable[[], str | None]:
    return lambda: path.read_text() if path.exists() else None


def scrape(address: str) -> str:
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=10) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        return str(response.read().decode())


RELOAD_OK = ("ipspool_config_last_reload_successful", ())
RELOAD_AT = ("ipspool_config_last_reload_success_timestamp_seconds", ())


def test_metrics_show_executor_build_start_and_reloads_in_the_file_and_over_http(
        make_daemon: Callable[..., Daemon]) -> None:
    """The local executor's census, build info, start time; a good reload moves the success time, a bad one says 0."""
    d = make_daemon()
    prom = d.root / "ipspool.prom"
    settings = {"textfile": str(prom), "interval": 0.2, "listen": "127.0.0.1:0"}
    d.write_config(metrics=settings)
    before = time.time()
    d.start()
    address = d.wait_event("metrics.listening")["listen"]
    assert address.startswith("127.0.0.1:") and not address.endswith(":0")
    d.drop("a.txt", "192.0.2.1\n")
    d.wait_result("a.txt")
    for read in (textfile(prom), lambda: scrape(address)):
        values = wait_metrics(read, lambda v: v.get(("ipspool_files_total", (("outcome", "done"),))) == 1,
                              "a file counted")
        assert values[("ipspool_executor_info", (("kind", "local"), ("scheduler", "")))] == 1
        assert values[("ipspool_executor_workers", ())] == 2
        assert values[("ipspool_executor_threads", ())] == 8  # 2 workers x 4 threads
        assert values[("ipspool_executor_up", ())] == 1
        assert values[("ipspool_chunks_inflight", ())] == 0
        assert values[("ipspool_chunk_retries_total", ())] == 0
        assert values[("ipspool_build_info", (("python", platform.python_version()), ("version", __version__)))] == 1
        started = values[("ipspool_start_time_seconds", ())]
        assert before <= started <= time.time()
        assert values[RELOAD_OK] == 1 and values[RELOAD_AT] == started

    status = json.loads(d.ipspool("status", "--json", "--config", str(d.config_path)).stdout)
    assert status["daemon"]["executor"] == {"kind": "local", "scheduler": "", "connected": True, "workers": 2,
                                            "threads": 8, "inflight": 0, "wanted": 2}
    text = d.ipspool("status", "--config", str(d.config_path)).stdout
    assert "Executor: local: 2 worker(s), 8 thread(s), 0 chunk(s) in flight, 0 chunk(s) retried" in text

    d.write_config(metrics=settings, workers={"threads": 2})
    d.signal(signal.SIGHUP)
    d.wait_event("config.reloaded")
    values = wait_metrics(textfile(prom), lambda v: v[RELOAD_AT] > started and v[RELOAD_OK] == 1, "the reload's time")
    good_at = values[RELOAD_AT]
    assert values[("ipspool_executor_threads", ())] == 4  # the new workers' pools
    (d.config_path).write_text("[workers]\nthreads = 'many'\n")
    d.signal(signal.SIGHUP)
    d.wait_event("config.reload_failed")
    for read in (textfile(prom), lambda: scrape(address)):
        values = wait_metrics(read, lambda v: v[RELOAD_OK] == 0, "the refused reload")
        assert values[RELOAD_AT] == good_at
    assert d.stop() == 0
    assert samples(prom.read_text())[("ipspool_up", ())] == 0


def test_metrics_endpoint_that_cannot_listen_is_logged_and_processing_goes_on(
        make_daemon: Callable[..., Daemon]) -> None:
    """A port already taken: metrics.listen_failed, files are still processed; a reload to a free port serves."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        d = make_daemon(metrics={"listen": f"127.0.0.1:{port}"})
        d.start()
        failed = d.wait_event("metrics.listen_failed")
        assert failed["listen"] == f"127.0.0.1:{port}" and failed["level"] == "error"
        d.drop("a.txt", "192.0.2.1\n")
        assert d.wait_result("a.txt")[0]["ip"] == "192.0.2.1"
        d.write_config(metrics={"listen": "127.0.0.1:0"})  # fixed by a reload
        d.signal(signal.SIGHUP)
        address = d.wait_event("metrics.listening")["listen"]
        wait_metrics(lambda: scrape(address), lambda v: v[("ipspool_files_total", (("outcome", "done"),))] == 1,
                     "the count over HTTP")
        assert d.stop() == 0


def test_metrics_endpoint_of_the_real_daemon_refuses_what_it_does_not_serve(
        make_daemon: Callable[..., Daemon]) -> None:
    """Other paths 404, other methods 405, an oversized request 431; a silent client gets 408, scrapes go on."""
    d = make_daemon(metrics={"listen": "127.0.0.1:0"})
    d.start()
    host, port = d.wait_event("metrics.listening")["listen"].rsplit(":", 1)

    def status_of(method: str, path: str, headers: dict[str, str] | None = None) -> int:
        conn = http.client.HTTPConnection(host, int(port), timeout=10)
        try:
            conn.request(method, path, headers=headers or {})
            return conn.getresponse().status
        finally:
            conn.close()

    with socket.create_connection((host, int(port)), timeout=30) as silent:
        silent.sendall(b"GET /metrics HTTP/1.1\r\n")  # never finished: dropped after the request timeout
        assert status_of("GET", "/metrics") == 200
        assert silent.recv(100).startswith(b"HTTP/1.0 408 ")
    assert status_of("GET", "/") == 404
    assert status_of("GET", "/status.json") == 404
    assert status_of("PUT", "/metrics") == 405
    assert status_of("GET", "/metrics", {"X-Pad": "a" * 20000}) == 431
    assert status_of("GET", "/metrics") == 200
    assert d.stop() == 0


def test_metrics_down_after_kill_9_says_up_0_and_refuses_while_the_daemon_runs(
        make_daemon: Callable[..., Daemon]) -> None:
    """The ExecStopPost= command: a SIGKILLed supervisor left up 1; metrics-down makes it 0, keeping the counts."""
    d = make_daemon()
    prom = d.root / "ipspool.prom"
    d.write_config(metrics={"textfile": str(prom), "interval": 0.2})
    d.start()
    d.drop("a.txt", "192.0.2.1\n")
    d.wait_result("a.txt")
    wait_metrics(textfile(prom), lambda v: v.get(("ipspool_files_total", (("outcome", "done"),))) == 1, "a count")
    config = ("--config", str(d.config_path))
    refused = d.ipspool("metrics-down", *config)
    assert refused.returncode == ExitCode.FAILURE and "is running" in refused.stderr
    assert samples(prom.read_text())[("ipspool_up", ())] == 1
    assert d.proc is not None
    os.kill(d.proc.pid, signal.SIGKILL)  # the supervisor alone, as the OOM killer would
    d.proc.wait(10)
    assert samples(prom.read_text())[("ipspool_up", ())] == 1  # what a crash leaves
    down = d.ipspool("metrics-down", *config)
    assert down.returncode == ExitCode.OK, down.stderr
    assert "did not stop cleanly" in down.stdout
    values = samples(prom.read_text())
    assert values[("ipspool_up", ())] == 0
    assert values[("ipspool_files_total", (("outcome", "done"),))] == 1


def test_metrics_down_without_a_textfile_does_nothing(make_daemon: Callable[..., Daemon]) -> None:
    """No [metrics] textfile: exit 0, nothing written (the unit runs it on every stop)."""
    d = make_daemon()
    done = d.ipspool("metrics-down", "--config", str(d.config_path))
    assert (done.returncode, done.stdout, done.stderr) == (ExitCode.OK, "", "")
    assert not list(d.root.glob("*.prom"))


def test_local_worker_deaths_count_as_chunk_retries_and_restarts(make_daemon: Callable[..., Daemon]) -> None:
    """A chunk that kills its worker each time: each resend is a chunk retry, each death a restart, until poison."""
    d = make_daemon(workers={"max_attempts": 3}, pipeline={"stages": ["classify", "tests.support.stagelib:crash"]})
    prom = d.root / "ipspool.prom"
    d.write_config(metrics={"textfile": str(prom), "interval": 0.2})
    d.start()
    d.drop("abort.txt", "6.6.6.6\n")
    assert d.wait_failed("abort.txt")["reason"] == "poison"
    retries = len(d.events("chunk.retry"))
    assert retries == 2  # attempts 2 and 3
    values = wait_metrics(textfile(prom), lambda v: v[("ipspool_files_total", (("outcome", "failed"),))] == 1,
                          "the poison file counted")
    assert values[("ipspool_chunk_retries_total", ())] == retries
    assert values[("ipspool_worker_restarts_total", ())] == len(d.events("worker.died"))
    assert values[("ipspool_executor_info", (("kind", "local"), ("scheduler", "")))] == 1

    def status_says() -> str | None:
        text = d.ipspool("status", "--config", str(d.config_path)).stdout
        return text if f"{retries} chunk(s) retried" in text else None

    assert "Executor: local: " in wait_for(status_says, what="the retries in ipspool status")
    assert d.stop() == 0
