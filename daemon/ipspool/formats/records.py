"""Records for one address found by a reader, counted as ``process_lines`` counts.

``process_lines`` (pipeline.py) keeps its own copy of this logic inline: it
is the plain hot loop and a function call per line would slow it down. Every
other reader builds its records here, so their counts and alerts mean what
the plain ones mean.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from ipspool.fastip import ParsedAddress, fast_parse_classify
from ipspool.pipeline import Pipeline
from ipspool.protocol import Alert

__all__ = ["INPUT_PREVIEW", "address_record", "error_fields", "parse_text", "shown"]

INPUT_PREVIEW = 200  # characters of a bad input echoed back (as pipeline.py)
_ERROR_MAX = 256


def shown(text: str) -> str:
    """An input as a record shows it: bounded, NULs escaped."""
    return text[:INPUT_PREVIEW].replace("\x00", "\\x00")


def error_fields(record: dict[str, Any], text: str, message: str) -> dict[str, Any]:
    """``record`` (line and position so far) completed as an error record."""
    if len(message) > _ERROR_MAX:
        message = message[:_ERROR_MAX - 3] + "..."
    record["input"] = shown(text)
    record["error"] = message
    return record


def parse_text(text: str) -> ParsedAddress | str:
    """The fast parser's verdict on an address field, or the error message."""
    text = text.strip()
    if not text:
        return "empty address"
    if "\x00" in text:
        return "contains a NUL byte"
    try:
        return fast_parse_classify(text)
    except ValueError as exc:
        return f"not an IP address: {exc}"


def address_record(
    where: dict[str, Any], text: str, pipeline: Pipeline, counts: Counter[str], alerts: list[Alert] | None,
) -> dict[str, Any]:
    """``where`` (``line`` first, then the column, field or position) completed for the address ``text``."""
    text = text.strip()
    try:
        if not text or "\x00" in text:
            raise ValueError
        verdict = fast_parse_classify(text)
    except ValueError:  # the message comes from parse_text, off the common path
        counts["invalid"] += 1
        message = parse_text(text)
        return error_fields(where, text, message if isinstance(message, str) else "not an IP address")
    where["input"] = text
    where["ip"] = verdict[0]
    where.update(pipeline.run_parsed(text, verdict))
    counts["valid"] += 1
    cls = where.get("class")
    if isinstance(cls, str):
        counts["class." + cls] += 1
    if "stage_errors" in where or "lists" in where:
        count_address(where, pipeline, counts, alerts)
    return where


def count_address(record: dict[str, Any], pipeline: Pipeline, counts: Counter[str],
                  alerts: list[Alert] | None) -> None:
    """The stage-error, list and alert counters of one address record (as process_lines keeps them)."""
    if "stage_errors" in record:
        counts["stage_errors"] += 1
    listed = record.get("lists")
    if listed:
        for name in listed:
            counts["list." + name] += 1
        alerting = [name for name in listed if name in pipeline.alert_lists]
        if alerting:
            counts["listed_alerts"] += 1
            if alerts is not None and len(alerts) < pipeline.alert_cap:
                alerts.append((record["line"], record["ip"], alerting))
