"""The readers: from a chunk's bytes to units, and from a unit to records.

A *unit* is what one reader treats as one piece of input: a physical line
(JSON lines, free text, networks, plain with CSV output) or a record of a
delimited file (which may span lines). Work is batched by units, so a
pooled worker splits a chunk of any format exactly as it splits plain lines.
"""

from __future__ import annotations

import ipaddress
from collections import Counter
from collections.abc import Sequence
from typing import Any, Protocol

import orjson

from ipspool.fastip import fast_parse_classify
from ipspool.formats import delimited, networks, text
from ipspool.formats.records import INPUT_PREVIEW, address_record, count_address, error_fields, parse_text
from ipspool.formats.spec import Format
from ipspool.pipeline import Pipeline, process_lines
from ipspool.protocol import Alert

__all__ = ["Reader", "reader_for"]

_BOM = b"\xef\xbb\xbf"
Counts = Counter[str]


class Reader(Protocol):
    def units(self, data: bytes, first_line: int) -> Sequence[Any]: ...
    def addresses(self, unit: Any) -> list[str]: ...
    def records(self, unit: Any, pipeline: Pipeline, counts: Counts, alerts: list[Alert] | None
                ) -> list[dict[str, Any]]: ...


def _numbered(data: bytes, first_line: int) -> list[tuple[int, bytes]]:
    lines = data.split(b"\n")
    if lines and not lines[-1]:
        lines.pop()
    return list(enumerate(lines, first_line))


def _clean(line_no: int, raw: bytes) -> bytes:
    """A line without its BOM (first line), CR and surrounding whitespace."""
    if line_no == 1 and raw.startswith(_BOM):
        raw = raw[len(_BOM):]
    return raw.strip()


def _too_long(line_no: int, raw: bytes, limit: int, counts: Counts) -> list[dict[str, Any]] | None:
    if len(raw) <= limit:
        return None
    counts["invalid"] += 1
    return [error_fields({"line": line_no}, raw[:64].decode("utf-8", "backslashreplace"),
                         f"line too long: {len(raw)} bytes, limit {limit}")]


class PlainReader:
    """Plain lines whose records go out as CSV: process_lines, then the records as objects."""

    def __init__(self, fmt: Format) -> None:
        self.fmt = fmt

    def units(self, data: bytes, first_line: int) -> Sequence[Any]:
        return _numbered(data, first_line)

    def addresses(self, unit: tuple[int, bytes]) -> list[str]:
        raw = _clean(unit[0], unit[1].split(b"#", 1)[0])
        return [raw.decode("utf-8", "replace")] if raw else []

    def records(self, unit: tuple[int, bytes], pipeline: Pipeline, counts: Counts,
                alerts: list[Alert] | None) -> list[dict[str, Any]]:
        out = process_lines([unit[1]], unit[0], pipeline, counts, alerts)
        return [orjson.loads(out)] if out else []


class DelimitedReader:
    def __init__(self, fmt: Format) -> None:
        self.fmt = fmt

    def batch(self, units: Sequence[tuple[int, int, list[str] | None, str, bytes]], pipeline: Pipeline,
              counts: Counts, alerts: list[Alert] | None) -> list[dict[str, Any]]:
        """``records`` of many units, with the common case (a field that is an address) inline for speed."""
        out: list[dict[str, Any]] = []
        at, column, carry = self.fmt.address, self.fmt.address + 1, self.fmt.carry
        lines = valid = 0
        classes: Counts = Counter()
        for unit in units:
            fields = unit[2]
            value = fields[at].strip() if fields is not None and at < len(fields) else ""
            try:
                if not value or "\x00" in value:
                    raise ValueError
                parsed = fast_parse_classify(value)
            except ValueError:
                out += self.records(unit, pipeline, counts, alerts)  # blank, short or bad: the full rules
                continue
            assert fields is not None
            lines += unit[1]
            record: dict[str, Any] = {"line": unit[0], "column": column, "input": value, "ip": parsed[0]}
            record.update(pipeline.run_parsed(value, parsed))
            valid += 1
            cls = record.get("class")
            if isinstance(cls, str):
                classes["class." + cls] += 1
            if "stage_errors" in record or "lists" in record:
                count_address(record, pipeline, counts, alerts)
            if carry:
                record["fields"] = {name: fields[i] if i < len(fields) else None for name, i in carry}
            out.append(record)
        counts["lines"] += lines
        counts["valid"] += valid
        counts.update(classes)
        return out

    def units(self, data: bytes, first_line: int) -> Sequence[Any]:
        """(line, physical lines, fields or None, error, the record's first bytes) per record."""
        quick = delimited.quote_free_rows(data, self.fmt.delimiter, self.fmt.max_record_bytes)
        if quick is not None:
            return [(line_no, 1, fields, "", b"") for line_no, fields in enumerate(quick, first_line)]
        parsed = delimited.csv_rows(data, self.fmt.delimiter, self.fmt.max_record_bytes)
        if parsed is not None:
            return [(first_line + before, lines, fields, "", b"") for before, lines, fields in parsed]
        found = []
        start = 0
        for before, lines, end, fields, error in delimited.records(
                delimited.split_lines_kept(data), self.fmt.delimiter, self.fmt.max_record_bytes):
            head = data[start:min(end, start + INPUT_PREVIEW)] if error else b""  # the record's own bytes only
            found.append((first_line + before, lines, fields, error, head))
            start = end
        return found

    def addresses(self, unit: tuple[int, int, list[str] | None, str, bytes]) -> list[str]:
        fields = unit[2]
        at = self.fmt.address
        return [fields[at]] if fields is not None and at < len(fields) else []

    def records(self, unit: tuple[int, int, list[str] | None, str, bytes], pipeline: Pipeline, counts: Counts,
                alerts: list[Alert] | None) -> list[dict[str, Any]]:
        line_no, lines, fields, error, head = unit
        counts["lines"] += lines
        if fields is None:
            counts["invalid"] += 1
            if error == delimited.too_long_error(self.fmt.max_record_bytes):
                counts["error.line_too_long"] += 1
            return [error_fields({"line": line_no}, head.decode("utf-8", "backslashreplace"), error)]
        at = self.fmt.address
        if (at >= len(fields) or not fields[at].strip()) and not any(field.strip() for field in fields):
            counts["skipped"] += 1
            return []
        where: dict[str, Any] = {"line": line_no, "column": at + 1}
        if at >= len(fields):
            counts["invalid"] += 1
            record = error_fields(where, self.fmt.delimiter.join(fields),
                                  f"no column {at + 1} ({self.fmt.header[at]}): the record has {len(fields)}")
        else:
            record = address_record(where, fields[at], pipeline, counts, alerts)
        if self.fmt.carry:
            record["fields"] = {name: fields[i] if i < len(fields) else None for name, i in self.fmt.carry}
        return [record]


class JsonReader:
    def __init__(self, fmt: Format) -> None:
        self.fmt = fmt
        self.paths = [(path, path.split(".")) for path in fmt.paths]

    def units(self, data: bytes, first_line: int) -> Sequence[Any]:
        return _numbered(data, first_line)

    def _find(self, obj: dict[str, Any]) -> tuple[str, Any] | None:
        for path, parts in self.paths:
            if path in obj:
                return path, obj[path]
            value: Any = obj
            for part in parts:
                if not isinstance(value, dict) or part not in value:
                    break
                value = value[part]
            else:
                return path, value
        return None

    def _load(self, line_no: int, raw: bytes) -> dict[str, Any] | str | None:
        raw = _clean(line_no, raw)
        if not raw:
            return None
        try:
            obj = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            return f"not JSON: {exc}"
        return obj if isinstance(obj, dict) else f"not a JSON object but {type(obj).__name__}"

    def addresses(self, unit: tuple[int, bytes]) -> list[str]:
        obj = self._load(*unit)
        found = self._find(obj) if isinstance(obj, dict) else None
        return [found[1]] if found is not None and isinstance(found[1], str) else []

    def records(self, unit: tuple[int, bytes], pipeline: Pipeline, counts: Counts,
                alerts: list[Alert] | None) -> list[dict[str, Any]]:
        line_no, raw = unit
        counts["lines"] += 1
        long = _too_long(line_no, raw, self.fmt.max_record_bytes, counts)
        if long is not None:
            return long
        obj = self._load(line_no, raw)
        if obj is None:
            counts["skipped"] += 1
            return []
        if isinstance(obj, str):
            counts["invalid"] += 1
            return [error_fields({"line": line_no}, _clean(line_no, raw).decode("utf-8", "backslashreplace"), obj)]
        found = self._find(obj)
        if found is None:
            counts["invalid"] += 1
            ours = error_fields({"line": line_no}, "", f"no address field (looked for {', '.join(self.fmt.paths)})")
            del ours["input"]
        elif not isinstance(found[1], str):
            counts["invalid"] += 1
            ours = error_fields({"line": line_no, "field": found[0]}, orjson.dumps(found[1]).decode(),
                                f"the address field is {type(found[1]).__name__}, not a string")
        else:
            ours = address_record({"line": line_no, "field": found[0]}, found[1], pipeline, counts, alerts)
        if self.fmt.mode == "wrap" or self.fmt.output == "csv":
            ours["source"] = obj
            return [ours]
        obj["ipspool"] = ours
        return [obj]


class TextReader:
    def __init__(self, fmt: Format) -> None:
        self.fmt = fmt

    def units(self, data: bytes, first_line: int) -> Sequence[Any]:
        return _numbered(data, first_line)

    def addresses(self, unit: tuple[int, bytes]) -> list[str]:
        line = _clean(unit[0], unit[1]).decode("utf-8", "replace")
        return [found.address for found in text.find_addresses(line) if _network(found) is None]

    def records(self, unit: tuple[int, bytes], pipeline: Pipeline, counts: Counts,
                alerts: list[Alert] | None) -> list[dict[str, Any]]:
        line_no, raw = unit
        counts["lines"] += 1
        long = _too_long(line_no, raw, self.fmt.max_record_bytes, counts)
        if long is not None:
            return long
        if line_no == 1 and raw.startswith(_BOM):
            raw = raw[len(_BOM):]
        line = raw.decode("utf-8", "replace")
        out = []
        for found in text.find_addresses(line):
            if ":" in found.address and text.cannot_be_an_address(found.address):
                continue
            verdict = parse_text(found.address)
            if isinstance(verdict, str):
                continue  # looked like one, is not (an octet over 255): not taken
            network = _network(found)
            if network is not None:
                record = networks.network_record({"line": line_no, "position": found.position},
                                                 f"{found.address}/{found.prefix}", network, pipeline)
                if self.fmt.skip_reserved and record["class"] not in ("global", "mixed"):
                    counts["skipped_reserved"] += 1
                    continue
                counts["networks"] += 1
            elif self.fmt.skip_reserved and not verdict[3]:
                counts["skipped_reserved"] += 1
                continue
            else:
                record = address_record({"line": line_no, "position": found.position}, found.address,
                                        pipeline, counts, alerts)
            if found.shown != record["input"]:
                record["found"] = found.shown
            out.append(record)
        if not out:
            counts["skipped"] += 1
        return out


def _network(found: text.Found) -> networks.Network | None:
    """The network a candidate is written as; None for an address, or an address with host bits set
    (``192.0.2.5/24``: an interface's address and its prefix; the address is what is taken)."""
    if found.prefix is None:
        return None
    try:
        return ipaddress.ip_network(f"{found.address}/{found.prefix}")
    except ValueError:
        return None


class NetworksReader:
    def __init__(self, fmt: Format) -> None:
        self.fmt = fmt

    def units(self, data: bytes, first_line: int) -> Sequence[Any]:
        return _numbered(data, first_line)

    def addresses(self, unit: tuple[int, bytes]) -> list[str]:
        return []  # networks are looked up whole; expansions are few (expand_cap)

    def records(self, unit: tuple[int, bytes], pipeline: Pipeline, counts: Counts,
                alerts: list[Alert] | None) -> list[dict[str, Any]]:
        line_no, raw = unit
        counts["lines"] += 1
        long = _too_long(line_no, raw, self.fmt.max_record_bytes, counts)
        if long is not None:
            return long
        line = _clean(line_no, raw.split(b"#", 1)[0]).decode("utf-8", "backslashreplace")
        if not line:
            counts["skipped"] += 1
            return []
        return networks.line_records(line_no, line, self.fmt.expand_cap, pipeline, counts, alerts)


def reader_for(fmt: Format) -> Reader:
    readers: dict[str, type[Any]] = {"plain": PlainReader, "delimited": DelimitedReader, "jsonl": JsonReader,
                                     "text": TextReader, "networks": NetworksReader}
    reader: Reader = readers[fmt.kind](fmt)
    return reader
