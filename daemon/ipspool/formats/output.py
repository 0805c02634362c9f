"""Writing records: JSON lines (one object a line) or CSV.

CSV columns come in a fixed, documented order per format (docs/results.md):
``line``, then where in the line (``column``, ``field`` or ``position``),
the address fields, the fields every built-in stage may add, the carried
``fields.NAME`` columns, ``source`` (the original object, JSON lines) and
``extra`` (anything else, such as a user stage's fields, as one JSON
object). A nested object is flattened into ``a.b`` columns where its keys
are known (``fields``, ``stage_errors``); a list is joined with ``;``;
``true``/``false`` for booleans and an empty cell for a missing value.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from typing import Any

import orjson

from ipspool.formats.spec import Format

__all__ = ["Output", "csv_columns"]

_WHERE = {"plain": (), "delimited": ("column",), "jsonl": ("field",), "text": ("position", "found"),
          "networks": ("network", "prefix", "addresses", "contained_in", "overlaps")}
_ADDRESS = ("input", "ip", "error", "version", "class", "global", "lists", "ptr", "rdns", "ptr_confirmed",
            "country", "asn", "as_org")


def csv_columns(fmt: Format, stage_names: Sequence[str]) -> list[str]:
    """The header row of a CSV result of this format and pipeline."""
    columns = ["line", *_WHERE[fmt.kind], *_ADDRESS]
    columns += [f"stage_errors.{name}" for name in stage_names]
    columns += [f"fields.{name}" for name, _ in fmt.carry]
    if fmt.kind == "jsonl":
        columns.append("source")
    columns.append("extra")
    return columns


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, list):
        return ";".join(_cell(item) for item in value)
    if isinstance(value, dict):
        return orjson.dumps(value).decode()
    return str(value)


class Output:
    """Serializes one chunk's records as its format's output says."""

    def __init__(self, fmt: Format, stage_names: Sequence[str]) -> None:
        self.csv = fmt.output == "csv"
        self.columns = csv_columns(fmt, stage_names)
        self.known = frozenset(self.columns) | {"fields", "stage_errors"}

    def header(self) -> bytes:
        return self._rows([self.columns]) if self.csv else b""

    def write(self, records: Sequence[dict[str, Any]]) -> bytes:
        if not self.csv:
            return b"".join(orjson.dumps(record) + b"\n" for record in records)
        return self._rows([self._row(record) for record in records])

    def _row(self, record: dict[str, Any]) -> list[str]:
        flat = dict(record)
        for nested in ("fields", "stage_errors"):
            inner = flat.pop(nested, None)
            if isinstance(inner, dict):
                flat.update({f"{nested}.{key}": value for key, value in inner.items()})
        extra = {key: value for key, value in flat.items() if key not in self.known}
        if extra:
            flat["extra"] = extra
        return [_cell(flat.get(column)) for column in self.columns]

    @staticmethod
    def _rows(rows: list[list[str]]) -> bytes:
        buffer = io.StringIO()
        csv.writer(buffer, lineterminator="\n").writerows(rows)
        return buffer.getvalue().encode()
