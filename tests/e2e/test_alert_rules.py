"""The shipped Prometheus rules and Grafana dashboard: valid, tested, and about metrics that exist."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import urllib.request
from collections.abc import Callable
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.support.daemon import REPO, Daemon, wait_for

RULES = REPO / "packaging" / "prometheus" / "ipspool.rules.yml"
RULE_TESTS = REPO / "tests" / "prometheus" / "ipspool.rules.test.yml"
DASHBOARD = REPO / "packaging" / "grafana" / "ipspool-dashboard.json"
NAME = re.compile(r"\bipspool_[a-z0-9_]+\b")


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.skip("promtool is missing (apt-get install prometheus)")
    return path


def rule_expressions() -> dict[str, str]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return {rule["alert"]: rule["expr"] for group in groups for rule in group["rules"]}


def dashboard_expressions() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    exprs += [v["definition"] for v in dashboard["templating"]["list"] if "definition" in v]
    return exprs


def test_alert_rules_pass_promtool_check() -> None:
    """`promtool check rules` accepts the file: valid YAML, valid PromQL, valid templates."""
    checked = subprocess.run([promtool(), "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"SUCCESS: {len(rule_expressions())} rules found" in checked.stdout


def test_alert_rules_fire_on_the_series_they_are_for() -> None:
    """`promtool test rules`: each tested alert fires (labels, annotations) when it should, and not before."""
    tested = subprocess.run([promtool(), "test", "rules", str(RULE_TESTS)], capture_output=True, text=True,
                            timeout=60, cwd=RULE_TESTS.parent)
    assert tested.returncode == 0, tested.stdout + tested.stderr
    covered = set(re.findall(r"alertname: (\w+)", RULE_TESTS.read_text()))
    assert covered == set(rule_expressions()), "every rule has a promtool case"


def test_the_documented_rules_are_the_shipped_ones() -> None:
    """docs/alerting.md names every rule of the file."""
    text = (REPO / "docs" / "alerting.md").read_text()
    assert [name for name in rule_expressions() if name not in text] == []


def exported_names(make_daemon: Callable[..., Daemon]) -> set[str]:
    """Every sample name a real daemon exports over HTTP after a done (and listed) and a failed file."""
    d = make_daemon(metrics={"listen": "127.0.0.1:0", "interval": 0.2})
    (d.root / "drop.txt").write_text("192.0.2.0/24\n")
    d.write_config(pipeline={"stages": ["classify", "lists"]},
                   lists=[{"name": "drop", "path": str(d.root / "drop.txt")}])
    d.start()
    address = d.wait_event("metrics.listening")["listen"]
    d.drop("good.txt", "192.0.2.1\n")
    d.wait_result("good.txt")
    (d.spool / "incoming" / "link").symlink_to("/etc/hostname")
    d.await_rescan()
    d.wait_failed("link")

    def scraped() -> set[str] | None:
        with urllib.request.urlopen(f"http://{address}/metrics", timeout=10) as response:
            families = list(text_string_to_metric_families(response.read().decode()))
        names = {s.name for f in families for s in f.samples}
        return names if "ipspool_results_free_bytes" in names else None

    names: set[str] = wait_for(scraped, what="a full exposition")
    assert d.stop() == 0
    return names


def test_every_metric_the_rules_and_dashboard_use_is_exported(make_daemon: Callable[..., Daemon]) -> None:
    """No rule or panel is about a metric the daemon does not write (a typo would never fire)."""
    used: dict[str, Any] = {}
    for where, expr in [*rule_expressions().items(), *(("dashboard", e) for e in dashboard_expressions())]:
        for name in NAME.findall(expr):
            used.setdefault(name, where)
    assert len(used) > 20
    exported = exported_names(make_daemon)
    assert {name: where for name, where in used.items() if name not in exported} == {}


def test_the_dashboard_is_a_well_formed_grafana_dashboard() -> None:
    """Unique panel ids, panels inside the 24-column grid, one refId per query, the data source a variable."""
    dashboard = json.loads(DASHBOARD.read_text())
    panels = dashboard["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        refs = [t["refId"] for t in panel["targets"]]
        assert refs and len(set(refs)) == len(refs), panel["title"]
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
    names = [v["name"] for v in dashboard["templating"]["list"]]
    assert names == ["datasource", "instance"]
