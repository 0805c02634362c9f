"""Configuration upper bounds: every number has a sane ceiling, written out here by hand."""

from __future__ import annotations

import math
from typing import get_args

import pytest

from ipspool.config import Config, ConfigError, parse_config

DAY = 86_400.0

# (section, key, the largest value accepted, the smallest refused). Written
# out rather than read from config.py, so a bound changed there by mistake
# fails here.
BOUNDS: list[tuple[str, str, int | float, int | float]] = [
    ("spool", "max_file_bytes", 1 << 40, (1 << 40) + 1),
    ("spool", "max_line_bytes", 1 << 30, (1 << 30) + 1),
    ("spool", "max_decompressed_bytes", 1 << 40, (1 << 40) + 1),
    ("spool", "summary_top", 1000, 1001),
    ("spool", "rescan_interval", DAY, DAY + 0.5),
    ("spool", "max_output_ratio", 10_000, 10_001),
    ("spool", "max_subdirs", 100, 101),
    ("workers", "processes", 1024, 1025),
    ("workers", "threads", 4096, 4097),
    ("workers", "chunk_bytes", 1 << 30, (1 << 30) + 1),
    ("workers", "max_attempts", 100, 101),
    ("workers", "graceful_timeout", DAY, DAY + 0.5),
    ("workers", "heartbeat_timeout", DAY, DAY + 0.5),
    ("workers", "max_inflight", 8192, 8193),
    ("rdns", "timeout", 60.0, 60.5),
    ("rdns", "retries", 10, 11),
    ("rdns", "cache_size", 1 << 24, (1 << 24) + 1),
    ("rdns", "negative_ttl", DAY, DAY + 0.5),
    ("alerts", "listed_per_file", 1_000_000, 1_000_001),
    ("alerts", "backlog_files", 100_000_000, 100_000_001),
    ("alerts", "backlog_age", DAY, DAY + 0.5),
    ("alerts", "disk_low_bytes", 1 << 50, (1 << 50) + 1),
    ("metrics", "interval", 3600.0, 3600.5),
    ("rdns", "max_in_flight", 65_536, 65_537),
    ("rdns", "rate_limit", 10_000_000.0, 10_000_000.5),
    ("rdns", "disk_cache_size", 1 << 30, (1 << 30) + 1),
    ("executor", "max_inflight", 1 << 20, (1 << 20) + 1),
    ("executor", "connect_timeout", DAY, DAY + 0.5),
    ("inputs", "expand_cap", 1 << 16, (1 << 16) + 1),
]


TABLES = {"inputs": {"format": "networks"}}  # arrays of tables: one table, with what its keys need


def problems(section: str, key: str, value: object) -> tuple[str, ...]:
    data: dict[str, object] = ({section: [{**TABLES[section], key: value}]} if section in TABLES
                               else {section: {key: value}})
    try:
        parse_config(data, "x.toml")
    except ConfigError as exc:
        # A table of an array is named by its index (inputs.0.key): shown here as its section's key.
        return tuple(p.replace(f"{section}.0.", f"{section}.", 1) for p in exc.problems)
    return ()


@pytest.mark.parametrize(("section", "key", "largest", "refused"), BOUNDS)
def test_each_number_is_accepted_up_to_its_bound_and_refused_past_it(
    section: str, key: str, largest: float, refused: float
) -> None:
    """The bound itself is valid; one step past it is an error naming the key and the bound."""
    assert problems(section, key, largest) == ()
    (problem,) = problems(section, key, refused)
    shown = int(largest) if float(largest).is_integer() else largest  # pydantic writes 3600.0 as 3600
    assert problem.startswith(f"{section}.{key}: Input should be less than or equal to {shown}"), problem
    assert problem.endswith(f"got {refused!r}"), problem


@pytest.mark.parametrize(("section", "key"), [(s, k) for s, k, largest, _ in BOUNDS if isinstance(largest, float)])
@pytest.mark.parametrize("value", [math.inf, math.nan])
def test_no_timeout_or_interval_may_be_infinite_or_nan(section: str, key: str, value: float) -> None:
    """inf (a timeout that never fires) and nan (which compares false with everything) are refused."""
    (problem,) = problems(section, key, value)
    assert problem.startswith(f"{section}.{key}: "), problem


def test_the_issue_examples_are_refused_with_the_bound_named() -> None:
    """A million processes and a billion threads are refused; the message says the limit."""
    with pytest.raises(ConfigError) as info:
        parse_config({"workers": {"processes": 1_000_000, "threads": 1_000_000_000}}, "ipspool.toml")
    assert str(info.value).splitlines() == [
        "ipspool.toml: workers.processes: Input should be less than or equal to 1024, got 1000000",
        "ipspool.toml: workers.threads: Input should be less than or equal to 4096, got 1000000000",
    ]


def test_every_numeric_key_has_a_bound_listed_here() -> None:
    """A new integer or float key cannot arrive without a ceiling (and a row in BOUNDS)."""
    listed = {(section, key) for section, key, _, _ in BOUNDS}
    numeric = set()
    for section, field in Config.model_fields.items():
        model = get_args(field.annotation)[0] if section in ("lists", *TABLES) else field.annotation
        for key, inner in getattr(model, "model_fields", {}).items():
            if inner.annotation in (int, float):
                numeric.add((section, key))
    assert numeric == listed
