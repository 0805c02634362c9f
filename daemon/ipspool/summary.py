"""The per-file summary, ``RESULTS/JOB.summary.json``, built from a job's counts.

Workers count as they go (``pipeline.process_lines``: ``class.*``,
``list.*``, ``country.*``, ``asn.*``, ``error.*``), the job book merges the
counts of a job's chunks, and the committer writes this summary and links it
in just before the result, in the same commit (docs/durability.md): it
appears with the result or not at all. No record is read again.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

__all__ = ["PER_FILE_PREFIXES", "render_summary"]

# Count keys that describe one file only: a daemon's totals would grow with
# every country and AS ever seen, so they stay out of them (reporting.py).
PER_FILE_PREFIXES = ("country.", "asn.")
_DIMENSIONS = (("classes", "class."), ("lists", "list."), ("countries", "country."), ("asns", "asn."))


def _dimension(counts: Mapping[str, int], prefix: str, top: int, numeric: bool) -> dict[str, Any]:
    found = [(key[len(prefix):], n) for key, n in counts.items() if key.startswith(prefix) and n > 0]
    # Most frequent first; ties by value, so the same counts give the same bytes.
    found.sort(key=lambda item: (-item[1], int(item[0]) if numeric else 0, item[0]))
    return {
        "distinct": len(found),
        "top": [{"value": int(value) if numeric else value, "count": n} for value, n in found[:top]],
    }


def render_summary(job: str, file: str, counts: Mapping[str, int], top: int) -> bytes:
    """The summary's bytes (indented JSON, one trailing newline)."""
    summary: dict[str, Any] = {
        "job": job,
        "file": file,
        "lines": counts.get("lines", 0),
        "addresses": counts.get("valid", 0),
        "errors": counts.get("invalid", 0),
        "skipped": counts.get("skipped", 0),
        "stage_errors": counts.get("stage_errors", 0),
        "errors_by_kind": {key[6:]: n for key, n in sorted(counts.items()) if key.startswith("error.") and n},
        "top_n": top,
    }
    for name, prefix in _DIMENSIONS:
        summary[name] = _dimension(counts, prefix, top, numeric=prefix == "asn.")
    return orjson.dumps(summary, option=orjson.OPT_INDENT_2) + b"\n"
