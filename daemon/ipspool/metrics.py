"""Prometheus metrics: node_exporter's textfile collector, and an optional /metrics endpoint.

The supervisor owns the numbers (the same exact, commit-time totals it
publishes to the Manager) and takes a ``Snapshot`` of them every
``metrics.interval`` seconds. The textfile is written with
prometheus_client's ``write_to_textfile``, which writes a temporary file and
renames it, so the collector never reads half a file; the HTTP endpoint
(``ipspool.metrics_http``) serves the same registry, so both always show the
same numbers. ``mark_down`` is what ``ipspool metrics-down`` runs after the
main process is gone (ExecStopPost=): a crash must not leave ``ipspool_up 1``.
"""

from __future__ import annotations

import errno
import os
import platform
import re
import stat
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Histogram, write_to_textfile
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ipspool import __version__
from ipspool.executor import Census

__all__ = ["MAX_TEXTFILE_BYTES", "Metrics", "Snapshot", "mark_down"]

MAX_TEXTFILE_BYTES = 16 << 20  # mark_down reads no more of a textfile than this

# Seconds from claim to published result; small files take milliseconds,
# a 1 GB file a minute.
_FILE_SECONDS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)


@dataclass
class Snapshot:
    """What the supervisor knows at one moment."""

    totals: Mapping[str, int] = field(default_factory=dict)
    backlog_files: int = 0
    backlog_age: float = 0.0
    workers_alive: int = 0
    workers_configured: int = 0
    active_files: int = 0
    up: bool = True
    executor: Census | None = None
    start_time: float = 0.0
    reload_ok: bool = True           # the last reload (or the start) took its configuration
    reload_success_at: float = 0.0   # when a configuration was last taken (the start counts)
    results_free_bytes: int = -1     # -1: not looked at yet
    disk_low_bytes: int = 0          # alerts.disk_low_bytes


class _Collector(Collector):
    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        s = self.metrics.snapshot
        t = s.totals
        files = CounterMetricFamily("ipspool_files", "Input files finished, by outcome.", labels=["outcome"])
        files.add_metric(["done"], t.get("files_done", 0))
        files.add_metric(["failed"], t.get("files_failed", 0))
        yield files
        lines = CounterMetricFamily("ipspool_lines", "Input lines in finished files, by outcome.", labels=["outcome"])
        for outcome in ("valid", "invalid", "skipped"):
            lines.add_metric([outcome], t.get(outcome, 0))
        yield lines
        yield from self._by_prefix(t, "class.", "ipspool_addresses", "Valid addresses by class.", "class")
        yield from self._by_prefix(t, "list.", "ipspool_listed_addresses", "Addresses found in each list.", "list")
        yield CounterMetricFamily("ipspool_input_bytes", "Bytes of finished input files.", value=t.get("bytes", 0))
        yield CounterMetricFamily("ipspool_stage_errors", "Addresses on which a stage raised.",
                                  value=t.get("stage_errors", 0))
        yield CounterMetricFamily("ipspool_listed_alerts", "Matches in lists with alert = true.",
                                  value=t.get("listed_alerts", 0))
        yield CounterMetricFamily("ipspool_worker_restarts", "Workers that died and were replaced.",
                                  value=t.get("worker_restarts", 0))
        yield GaugeMetricFamily("ipspool_backlog_files", "Files waiting in incoming/.", value=s.backlog_files)
        yield GaugeMetricFamily("ipspool_backlog_age_seconds", "Age of the oldest waiting file.", value=s.backlog_age)
        yield GaugeMetricFamily("ipspool_active_files", "Files claimed and in progress.", value=s.active_files)
        yield GaugeMetricFamily("ipspool_workers_alive", "Workers ready to take work.", value=s.workers_alive)
        yield GaugeMetricFamily("ipspool_workers_configured", "Workers the configuration asks for.",
                                value=s.workers_configured)
        yield GaugeMetricFamily("ipspool_up", "1 while the daemon runs normally, 0 while it stops.",
                                value=1 if s.up else 0)
        yield CounterMetricFamily("ipspool_chunk_retries", "Chunks sent again after the worker holding them was lost.",
                                  value=t.get("chunk_retries", 0))
        yield from self._process(s)
        if s.results_free_bytes >= 0:
            yield GaugeMetricFamily("ipspool_results_free_bytes", "Free space on the results filesystem.",
                                    value=s.results_free_bytes)
        yield GaugeMetricFamily("ipspool_results_low_bytes", "alerts.disk_low_bytes: disk.low warns below this.",
                                value=s.disk_low_bytes)
        if s.executor is not None:
            yield from self._executor(s.executor)

    @staticmethod
    def _process(s: Snapshot) -> Iterable[Metric]:
        build = GaugeMetricFamily("ipspool_build_info", "Always 1; the labels say which ipspool and Python run.",
                                  labels=["version", "python"])
        build.add_metric([__version__, platform.python_version()], 1)
        yield build
        yield GaugeMetricFamily("ipspool_start_time_seconds", "When the daemon started, in seconds since the epoch.",
                                value=s.start_time)
        yield GaugeMetricFamily("ipspool_config_last_reload_successful",
                                "1 if the last reload (or the start) took its configuration, 0 if it was refused.",
                                value=1 if s.reload_ok else 0)
        yield GaugeMetricFamily("ipspool_config_last_reload_success_timestamp_seconds",
                                "When a configuration was last taken (the start counts), seconds since the epoch.",
                                value=s.reload_success_at)

    @staticmethod
    def _executor(c: Census) -> Iterable[Metric]:
        info = GaugeMetricFamily("ipspool_executor_info", "Always 1; the labels say where chunks run.",
                                 labels=["kind", "scheduler"])
        info.add_metric([c.kind, c.scheduler], 1)
        yield info
        yield GaugeMetricFamily("ipspool_executor_up",
                                "1 while the executor can run chunks (Dask: the scheduler answers).",
                                value=1 if c.connected else 0)
        yield GaugeMetricFamily("ipspool_executor_workers",
                                "Worker processes up: forked here (local) or remote (Dask).", value=c.workers)
        yield GaugeMetricFamily("ipspool_executor_threads", "Threads across the workers that are up.",
                                value=c.threads)
        yield GaugeMetricFamily("ipspool_chunks_inflight", "Chunks handed to the executor and not yet reported.",
                                value=c.inflight)

    @staticmethod
    def _by_prefix(totals: Mapping[str, int], prefix: str, name: str, doc: str, label: str) -> Iterable[Metric]:
        family = CounterMetricFamily(name, doc, labels=[label])
        for key, value in sorted(totals.items()):
            if key.startswith(prefix):
                family.add_metric([key[len(prefix):]], value)
        yield family


class Metrics:
    """A private registry: our metrics only, nothing of the Python process.

    ``path``: the textfile written at each snapshot; empty when only the
    HTTP endpoint serves the registry.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self.snapshot = Snapshot()
        self.registry = CollectorRegistry(auto_describe=False)
        self.file_seconds = Histogram(
            "ipspool_file_processing_seconds", "Seconds from claim to published result, per file.",
            buckets=_FILE_SECONDS_BUCKETS, registry=self.registry,
        )
        self.registry.register(_Collector(self))

    def observe_file(self, seconds: float) -> None:
        self.file_seconds.observe(seconds)

    def write(self, snapshot: Snapshot, **_: Any) -> None:
        self.snapshot = snapshot
        if self.path:
            write_to_textfile(self.path, self.registry)


_UP = re.compile(rb"^ipspool_up(?:\{\})? \S+$", re.MULTILINE)
_UP_DOWN = (b"# HELP ipspool_up 1 while the daemon runs normally, 0 while it stops.\n"
            b"# TYPE ipspool_up gauge\n")


def mark_down(path: str) -> bool:
    """Rewrite the textfile at ``path`` to say ``ipspool_up 0``, keeping its other samples.

    For ExecStopPost=, after the main process exited for any reason (a
    SIGKILL or an OOM kill leaves no chance to write it). The file is
    replaced as the daemon replaces it (temporary file, rename); a missing
    one, or one that is not a textfile of ours (no ``ipspool_up`` sample, not
    a regular file, a symbolic link, larger than ``MAX_TEXTFILE_BYTES``), is
    replaced by a file with the one sample. It is opened without following
    a link and without blocking (a FIFO there cannot hang the stop). True
    when the file said up before.
    """
    text = _read_textfile(path)
    if len(text) > MAX_TEXTFILE_BYTES or not _UP.search(text):
        was_up, text = False, _UP_DOWN + b"ipspool_up 0.0\n"
    else:
        was_up = any(m.group().split()[-1] not in (b"0", b"0.0") for m in _UP.finditer(text))
        text = _UP.sub(b"ipspool_up 0.0", text)
    tmp = f"{path}.{os.getpid()}.down"
    try:
        with open(tmp, "wb") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except OSError:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return was_up


def _read_textfile(path: str) -> bytes:
    """The textfile's bytes (at most one more than MAX_TEXTFILE_BYTES); empty when there is none to trust."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ELOOP):
            return b""
        raise
    with os.fdopen(fd, "rb") as handle:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return b""
        return handle.read(MAX_TEXTFILE_BYTES + 1)
