"""Prometheus metrics for node_exporter's textfile collector.

The supervisor owns the numbers (the same exact, commit-time totals it
publishes to the Manager) and writes them every ``metrics.interval`` seconds
with prometheus_client's ``write_to_textfile``, which writes a temporary file
and renames it, so the collector never reads half a file.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Histogram, write_to_textfile
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

__all__ = ["Metrics", "Snapshot"]

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

    @staticmethod
    def _by_prefix(totals: Mapping[str, int], prefix: str, name: str, doc: str, label: str) -> Iterable[Metric]:
        family = CounterMetricFamily(name, doc, labels=[label])
        for key, value in sorted(totals.items()):
            if key.startswith(prefix):
                family.add_metric([key[len(prefix):]], value)
        yield family


class Metrics:
    """A private registry: our metrics only, nothing of the Python process."""

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
        write_to_textfile(self.path, self.registry)
