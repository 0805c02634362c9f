"""Prometheus textfile metrics, checked with prometheus_client's own parser."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client.parser import text_string_to_metric_families

from tests.support.daemon import Daemon, wait_for


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
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
