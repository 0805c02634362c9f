"""The stage contract as the pipeline enforces it: loading, checking, closing and refreshing stages."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from ipspool.config import ConfigError, parse_config
from ipspool.pipeline import Pipeline, load_pipeline, process_chunk


def problem_for(spec: str) -> str:
    with pytest.raises(ConfigError) as info:
        load_pipeline(parse_config({"pipeline": {"stages": [spec]}}))
    (problem,) = info.value.problems
    prefix = f"pipeline.stages[0] ({spec}): "
    assert problem.startswith(prefix), problem
    return problem[len(prefix):]


def test_a_built_in_enrichment_stage_is_loaded_from_its_module_with_the_config(tmp_path: Path) -> None:
    """"lists" builds the lists stage from the [[lists]] tables; it matches what the list names."""
    listed = tmp_path / "bad.txt"
    listed.write_text("192.0.2.0/24\n")
    config = parse_config({"pipeline": {"stages": ["classify", "lists"]},
                           "lists": [{"name": "bad", "path": str(listed), "alert": True}]})
    pipeline = load_pipeline(config)
    assert type(pipeline.stages[1]).__module__ == "ipspool.stages.lists"
    assert pipeline.alert_lists == frozenset({"bad"})
    out, counts = process_chunk(b"192.0.2.7\n198.51.100.1\n", 1, pipeline)
    assert b'"lists":["bad"]' in out.splitlines()[0]
    assert counts["list.bad"] == 1 and counts["listed_alerts"] == 1


@pytest.mark.parametrize(("spec", "message"), [
    (":boom", 'expected a built-in name [\'classify\', \'geoip\', \'lists\', \'rdns\'] or "module:callable"'),
    ("tests.support.stagelib:", 'expected a built-in name [\'classify\', \'geoip\', \'lists\', \'rdns\'] or '
                                '"module:callable"'),
    ("tests.support.stagelib:boom:x", "module 'tests.support.stagelib' has no attribute 'boom:x'"),
    ("nosuch_module_q:f", "cannot import module 'nosuch_module_q': ModuleNotFoundError: No module named "
                          "'nosuch_module_q'"),
    ("tests.support.stagelib:not_callable", "'not_callable' is a int, not a callable"),
])
def test_a_stage_that_cannot_be_loaded_is_explained(spec: str, message: str) -> None:
    """Each way a "module:callable" can be wrong has its own message, naming what was given."""
    assert problem_for(spec) == message


def test_a_stage_that_cannot_be_pickled_says_why_and_what_to_do() -> None:
    """The pickling error's type is named, with the fix."""
    message = problem_for("tests.support.stagelib:holder.method")
    assert message.startswith("cannot be sent to worker processes (TypeError: ")
    assert message.endswith("); define the stage as a top-level function or a module-level instance "
                            "whose state can be pickled")


def returns_a_list(address: Any, /) -> Any:
    return ["x"]


def returns_reserved(address: Any, /) -> Mapping[str, Any]:
    return {"ip": "spoofed", "fine": 1}


def returns_extra(address: Any, /) -> Mapping[str, Any]:
    return {"extra": str(address)}


def test_a_stage_breaking_the_contract_is_a_stage_error_not_a_crash() -> None:
    """A non-mapping or a reserved field becomes stage_errors on that record; other stages still run."""
    pipeline = Pipeline(("bad_type", "reserved", "extra"), (returns_a_list, returns_reserved, returns_extra))
    record = pipeline.run(ipaddress.ip_address("192.0.2.1"))
    assert record == {
        "extra": "192.0.2.1",
        "stage_errors": {"bad_type": "TypeError: returned list, expected a mapping or None",
                         "reserved": "ValueError: returned reserved field(s) ['ip']"},
    }


class Managed:
    """A stage with data files: it can be refreshed and closed."""

    blocking = False

    def __init__(self) -> None:
        self.calls: list[str] = []

    def __call__(self, address: Any, /) -> None:
        return None

    def refresh(self) -> None:
        self.calls.append("refresh")

    def close(self) -> None:
        self.calls.append("close")


class NotCallableHooks:
    blocking = False
    refresh = "not a method"
    close = None

    def __call__(self, address: Any, /) -> None:
        return None


def test_refresh_and_close_reach_every_stage_that_has_them() -> None:
    """Stages without the hooks, or with non-callable attributes of those names, are left alone."""
    first, second = Managed(), Managed()
    pipeline = Pipeline(("a", "plain", "odd", "b"), (first, returns_extra, NotCallableHooks(), second))
    pipeline.refresh()
    assert first.calls == second.calls == ["refresh"]
    pipeline.close()
    assert first.calls == second.calls == ["refresh", "close"]


def test_a_pipeline_blocks_unless_every_stage_says_it_does_not() -> None:
    """A stage without a blocking attribute is assumed to block (it may do I/O)."""
    assert not Pipeline(("m",), (Managed(),)).blocking
    assert Pipeline(("m", "f"), (Managed(), returns_extra)).blocking


def test_a_lazy_built_in_imports_its_module_when_built_and_passes_the_config(tmp_path: Path) -> None:
    """The builder made at import time resolves "module:callable" only when called, with the config given."""
    from ipspool.pipeline import _lazy

    config = parse_config({"pipeline": {"stages": ["classify"]}})
    stage = _lazy("tests.support.stagelib_factory:build")(config)
    assert stage.config is config  # type: ignore[attr-defined]


def test_line_edges_in_the_parser() -> None:
    """A line of exactly max_line_bytes is read; a longer one with bad UTF-8 is shown escaped; # starts a comment."""
    pipeline = load_pipeline(parse_config({"spool": {"max_line_bytes": 7}}))
    out, counts = process_chunk(b"1.2.3.4\n\xff\xfe34567890\n", 1, pipeline)
    first, second = out.splitlines()
    assert first.startswith(b'{"line":1,"input":"1.2.3.4","ip":"1.2.3.4"')
    assert second == b'{"line":2,"input":"\\\\xff\\\\xfe34567890","error":"line too long: 10 bytes, limit 7"}'
    assert counts["valid"] == 1 and counts["invalid"] == 1
    out, _ = process_chunk(b"1.2.3.5 # a # b\n", 3, load_pipeline(parse_config({})))
    assert out.startswith(b'{"line":3,"input":"1.2.3.5","ip":"1.2.3.5"')


def test_a_pipeline_takes_its_limits_from_the_config_and_names_its_source() -> None:
    """max_line_bytes and alerts.listed_per_file reach the pipeline; errors default to the source <config>."""
    config = parse_config({"spool": {"max_line_bytes": 50}, "alerts": {"listed_per_file": 3}})
    pipeline = load_pipeline(config)
    assert (pipeline.max_line_bytes, pipeline.alert_cap) == (50, 3)
    with pytest.raises(ConfigError) as info:
        load_pipeline(parse_config({"pipeline": {"stages": ["nocolon"]}}))
    assert str(info.value).startswith("<config>: pipeline.stages[0] (nocolon): ")


def test_alert_matches_are_counted_and_the_first_few_kept_across_batches(tmp_path: Path) -> None:
    """counts add up over calls sharing them; alerts keep (line, ip, lists) up to alert_cap."""
    from collections import Counter

    from ipspool.pipeline import process_lines

    listed = tmp_path / "bad.txt"
    listed.write_text("192.0.2.0/24\n")
    config = parse_config({"pipeline": {"stages": ["classify", "lists"]}, "alerts": {"listed_per_file": 2},
                           "lists": [{"name": "bad", "path": str(listed), "alert": True}]})
    pipeline = load_pipeline(config)
    alerts: list[Any] = []
    process_chunk(b"192.0.2.1\n", 1, pipeline, alerts)
    assert alerts == [(1, "192.0.2.1", ["bad"])]
    counts: Counter[str] = Counter()
    alerts = []
    process_lines([b"192.0.2.7", b"198.51.100.1"], 1, pipeline, counts, alerts)
    process_lines([b"192.0.2.8", b"192.0.2.9"], 3, pipeline, counts, alerts)
    assert alerts == [(1, "192.0.2.7", ["bad"]), (3, "192.0.2.8", ["bad"])]
    assert (counts["lines"], counts["list.bad"], counts["listed_alerts"]) == (4, 3, 3)
