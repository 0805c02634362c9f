"""The metrics exporter in-process: executor census, retries, build and reload metrics, mark_down, the endpoint."""

from __future__ import annotations

import http.client
import os
import platform
import select
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from ipspool import __version__, metrics_http
from ipspool.config import Config, ConfigError, parse_config, parse_listen
from ipspool.executor import Census
from ipspool.metrics import MAX_TEXTFILE_BYTES, Metrics, Snapshot, mark_down
from ipspool.metrics_http import MAX_REQUEST_BYTES, MetricsServer
from ipspool.protocol import Lost
from ipspool.status import render_status
from tests.unit.test_decisions_jobs import claim_one, make

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def samples(text: str) -> Samples:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def exposition(metrics: Metrics) -> Samples:
    return samples(generate_latest(metrics.registry).decode())


def test_the_fake_executors_census_reaches_metrics_status_line_and_status(tmp_path: Path) -> None:
    """kind, workers, threads and chunks in flight come from the executor, not from the local CPU count."""
    sup, _, executor = make(tmp_path, slots=3)
    executor.kind, executor.threads, executor.scheduler = "dask", 8, "tcp://127.0.0.1:8786"
    claim_one(sup, executor, "f", b"1.2.3.4\n")
    picture = sup.picture()
    assert picture.executor == Census("dask", 3, 24, 1, wanted=3, scheduler="tcp://127.0.0.1:8786")
    metrics = Metrics("")
    metrics.write(Snapshot(executor=picture.executor))
    values = exposition(metrics)
    assert values[("ipspool_executor_info", (("kind", "dask"), ("scheduler", "tcp://127.0.0.1:8786")))] == 1
    assert values[("ipspool_executor_workers", ())] == 3
    assert values[("ipspool_executor_threads", ())] == 24
    assert values[("ipspool_chunks_inflight", ())] == 1
    assert values[("ipspool_executor_up", ())] == 1
    assert sup.reporter.status_line(picture).startswith("running: 3/3 workers")


def test_a_cluster_census_without_a_wanted_count_says_what_the_cluster_has(tmp_path: Path) -> None:
    """STATUS= for Dask names remote workers and threads, not the local CPUs."""
    sup, _, _ = make(tmp_path)
    picture = sup.picture()
    remote = Census("dask", 2, 6, 0, scheduler="tcp://h:8786")
    line = sup.reporter.status_line(type(picture)(**{**picture.__dict__, "executor": remote}))
    assert line.startswith("running: dask 2 workers, 6 threads, backlog 0")


def test_a_chunk_sent_again_after_a_lost_worker_is_counted(tmp_path: Path) -> None:
    """chunk_retries counts each chunk.retry; a chunk lost before it began is no retry."""
    sup, _, executor = make(tmp_path, slots=1, max_attempts=5)
    claim_one(sup, executor, "f", b"1.2.3.4\n")
    chunk, _ = executor.submitted[0]
    executor.report(Lost(chunk, started=False, cause="signal 9"), chunk.key)
    sup.route_events()
    sup.fill()
    for _ in range(2):
        executor.report(Lost(chunk, started=True, cause="signal 9"), chunk.key)
        sup.route_events()
        sup.fill()
    assert sup.reporter.totals["chunk_retries"] == 2
    metrics = Metrics("")
    metrics.write(Snapshot(totals=dict(sup.reporter.totals)))
    assert exposition(metrics)[("ipspool_chunk_retries_total", ())] == 2


def test_build_start_and_reload_metrics_follow_the_reporter(tmp_path: Path) -> None:
    """build_info names this version and Python; a refused reload is 0 and keeps the last success time."""
    sup, clock, _ = make(tmp_path)
    reporter = sup.reporter
    reporter.metrics = Metrics(str(tmp_path / "m.prom"))
    reporter.write_metrics(sup.picture())
    values = samples((tmp_path / "m.prom").read_text())
    assert values[("ipspool_build_info", (("python", platform.python_version()), ("version", __version__)))] == 1
    assert values[("ipspool_start_time_seconds", ())] == clock.time()
    assert values[("ipspool_config_last_reload_successful", ())] == 1
    assert values[("ipspool_config_last_reload_success_timestamp_seconds", ())] == clock.time()
    clock.advance(60)
    reporter.publish_reload(ok=True, problems=[], generation=1)
    clock.advance(60)
    reporter.publish_reload(ok=False, problems=["bad"], generation=1)
    reporter.write_metrics(sup.picture())
    values = samples((tmp_path / "m.prom").read_text())
    assert values[("ipspool_config_last_reload_successful", ())] == 0
    assert values[("ipspool_config_last_reload_success_timestamp_seconds", ())] == clock.time() - 60
    assert values[("ipspool_start_time_seconds", ())] == clock.time() - 120


def test_status_shows_the_local_executor_line_with_retries() -> None:
    """The text status has the executor's kind, workers, threads, chunks in flight and chunk retries."""
    text = render_status({
        "daemon": {"pid": 5, "state": "running", "worker_table": [],
                   "executor": {"kind": "local", "workers": 2, "threads": 32, "inflight": 3}},
        "totals": {"chunk_retries": 4},
    })
    assert "Executor: local: 2 worker(s), 32 thread(s), 3 chunk(s) in flight, 4 chunk(s) retried" in text


# -- mark_down ------------------------------------------------------------------------


def test_mark_down_turns_up_to_zero_and_keeps_the_other_samples(tmp_path: Path) -> None:
    """The last counters stay for the dashboards; only ipspool_up changes; True: it said up."""
    path = tmp_path / "m.prom"
    metrics = Metrics(str(path))
    metrics.write(Snapshot(totals={"files_done": 7}, up=True))
    assert mark_down(str(path)) is True
    values = samples(path.read_text())
    assert values[("ipspool_up", ())] == 0
    assert values[("ipspool_files_total", (("outcome", "done"),))] == 7
    assert mark_down(str(path)) is False  # already down: nothing to say
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.prom"]


@pytest.mark.parametrize("content", [None, b"", b"garbage\n", b"x" * (MAX_TEXTFILE_BYTES + 1)])
def test_mark_down_of_a_missing_or_foreign_file_writes_the_one_sample(tmp_path: Path, content: bytes | None) -> None:
    """No file, an empty or foreign one, or one larger than a textfile ever is: replaced by up 0 alone."""
    path = tmp_path / "m.prom"
    if content is not None:
        path.write_bytes(content)
    assert mark_down(str(path)) is False
    assert samples(path.read_text()) == {("ipspool_up", ()): 0}


@pytest.mark.parametrize("kind", ["symlink", "fifo"])
def test_mark_down_replaces_a_link_or_fifo_without_following_or_blocking(tmp_path: Path, kind: str) -> None:
    """A symbolic link is not followed (its target stays as it was), a FIFO is not waited on."""
    path, target = tmp_path / "m.prom", tmp_path / "target"
    target.write_text("ipspool_up 1\n")
    if kind == "symlink":
        path.symlink_to(target)
    else:
        os.mkfifo(path)
    assert mark_down(str(path)) is False
    assert not path.is_symlink() and samples(path.read_text()) == {("ipspool_up", ()): 0}
    assert target.read_text() == "ipspool_up 1\n"


def test_mark_down_into_a_missing_directory_raises_and_leaves_no_temporary(tmp_path: Path) -> None:
    """The caller (ipspool metrics-down) reports the error; nothing is left behind."""
    with pytest.raises(OSError):
        mark_down(str(tmp_path / "nowhere" / "m.prom"))
    assert list(tmp_path.iterdir()) == []


# -- metrics.listen -----------------------------------------------------------------------


@pytest.mark.parametrize(("value", "parsed"), [
    ("127.0.0.1:9464", ("127.0.0.1", 9464)),
    ("[::1]:9464", ("::1", 9464)),
    ("localhost:0", ("localhost", 0)),
    ("0.0.0.0:65535", ("0.0.0.0", 65535)),
])
def test_listen_addresses_that_are_taken(value: str, parsed: tuple[str, int]) -> None:
    """HOST:PORT and [IPV6]:PORT; port 0 asks the system for a free one."""
    assert parse_listen(value) == parsed
    assert parse_config({"metrics": {"listen": value}}).metrics.listen == value


@pytest.mark.parametrize(("value", "says"), [
    ("9464", "HOST:PORT"),
    (":9464", "HOST:PORT"),
    ("::1:9464", "in brackets"),
    ("[::1:9464", "in brackets"),
    ("[127.0.0.1]:9464", "not an IPv6 address"),
    ("127.0.0.1:http", "must be a number"),
    ("127.0.0.1:", "must be a number"),
    ("127.0.0.1:-1", "must be a number"),
    ("127.0.0.1:65536", "0..65535"),
    ("127.0.0.1:٩٤٦٤", "must be a number"),
])
def test_listen_addresses_that_are_refused_name_the_key(value: str, says: str) -> None:
    """Each refusal names metrics.listen and says what was expected."""
    with pytest.raises(ConfigError) as info:
        parse_config({"metrics": {"listen": value}}, "x.toml")
    (problem,) = info.value.problems
    assert problem.startswith("metrics.listen: ") and says in problem, problem


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[MetricsServer]:
    monkeypatch.setattr(metrics_http._Handler, "timeout", 0.5)  # a silent client is dropped sooner
    metrics = Metrics("")
    metrics.write(Snapshot(totals={"files_done": 3}))
    served = MetricsServer("127.0.0.1:0", metrics.registry)
    yield served
    served.close()


def request(server: MetricsServer, method: str, path: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    port = int(server.address.rsplit(":", 1)[1])
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, path, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def test_the_endpoint_serves_metrics_and_nothing_else(server: MetricsServer) -> None:
    """GET /metrics is the registry; another path is 404, another method 405."""
    status, body = request(server, "GET", "/metrics")
    assert status == 200
    assert samples(body.decode())[("ipspool_files_total", (("outcome", "done"),))] == 3
    assert request(server, "HEAD", "/metrics") == (200, b"")
    assert request(server, "GET", "/")[0] == 404
    assert request(server, "GET", "/metrics/../etc/passwd")[0] == 404
    assert request(server, "POST", "/metrics")[0] == 405
    assert request(server, "DELETE", "/metrics")[0] == 405


def test_the_endpoint_refuses_a_request_larger_than_its_limit(server: MetricsServer) -> None:
    """Headers past MAX_REQUEST_BYTES get 431; the next client is served."""
    status, _ = request(server, "GET", "/metrics", {"X-Pad": "a" * MAX_REQUEST_BYTES})
    assert status == 431
    assert request(server, "GET", "/metrics")[0] == 200


def until_closed(sock: socket.socket) -> bytes:
    data = b""
    while block := sock.recv(4096):
        data += block
    return data


def test_a_client_that_sends_half_a_request_is_dropped_and_the_next_one_served(server: MetricsServer) -> None:
    """One request at a time, each bounded in time: a silent client gets 408, not the endpoint."""
    port = int(server.address.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as silent:
        silent.sendall(b"GET /metrics HTTP/1.1\r\n")  # and nothing more
        assert request(server, "GET", "/metrics")[0] == 200
        assert until_closed(silent).startswith(b"HTTP/1.0 408 ")


def test_a_client_dripping_its_request_is_cut_off_by_the_total_deadline(server: MetricsServer) -> None:
    """A byte at a time, each well within the socket timeout: the request as a whole still has its bound."""
    port = int(server.address.rsplit(":", 1)[1])
    sent, answered = 0, False
    with socket.create_connection(("127.0.0.1", port), timeout=10) as drip:
        drip.sendall(b"GET /metrics HTTP/1.1\r\nX-Slow: ")
        while not answered and sent < 400:  # 400 x 0.1 s: 80 times the (patched) 0.5 s deadline
            drip.sendall(b"a")
            sent += 1
            answered = bool(select.select([drip], [], [], 0.1)[0])
        assert answered, "the endpoint waited for the whole drip"
        assert until_closed(drip).startswith(b"HTTP/1.0 408 ")


def test_the_endpoint_on_ipv6_loopback() -> None:
    """[::1]:0 listens on IPv6 and says so in brackets."""
    served = MetricsServer("[::1]:0", Metrics("").registry)
    try:
        assert served.address.startswith("[::1]:")
        conn = http.client.HTTPConnection("::1", int(served.address.rsplit(":", 1)[1]), timeout=10)
        conn.request("GET", "/metrics")
        assert conn.getresponse().status == 200
        conn.close()
    finally:
        served.close()


def test_a_reload_that_moves_the_metrics_keeps_the_last_numbers_and_downs_the_old_file(tmp_path: Path) -> None:
    """New textfile or listen: the old file says up 0; the new registry starts from the last snapshot, not zeros."""
    sup, _, _ = make(tmp_path)
    reporter = sup.reporter

    def with_metrics(**metrics: str) -> Config:
        return sup.config.model_copy(update={"metrics": sup.config.metrics.model_copy(update=metrics)})

    reporter.reconfigure(with_metrics(textfile=str(tmp_path / "a.prom")))
    reporter.totals["files_done"] = 3
    reporter.write_metrics(sup.picture())
    reporter.reconfigure(with_metrics(textfile=str(tmp_path / "b.prom"), listen="127.0.0.1:0"))
    try:
        assert samples((tmp_path / "a.prom").read_text())[("ipspool_up", ())] == 0
        assert reporter.metrics is not None and reporter.server is not None
        values = exposition(reporter.metrics)
        assert values[("ipspool_files_total", (("outcome", "done"),))] == 3
        assert values[("ipspool_up", ())] == 1
    finally:
        reporter.close_server()
