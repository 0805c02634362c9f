"""The per-address pipeline and the pure heart of ipspool.

``process_chunk(data, first_line, pipeline)`` turns the bytes of one chunk
into result bytes and counts. It touches no file, socket or global state, so a
local worker, a test or a remote engine can all call it unchanged.

A *stage* is a callable taking the parsed address (an ``ipaddress`` object,
typed ``ipspool.address.Address``) and returning a mapping of fields to add
to that address's record, or None.
Stages are named in ``[pipeline] stages``: a built-in name or
``"module:callable"``. See docs/stages.md for the contract.
"""

from __future__ import annotations

import importlib
import pickle
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import orjson

from ipspool.address import Address, parse_address
from ipspool.classify import classify, classify_fields
from ipspool.config import Config, ConfigError
from ipspool.fastip import ParsedAddress, fast_parse_classify
from ipspool.protocol import Alert

__all__ = [
    "RESERVED_FIELDS",
    "Pipeline",
    "Stage",
    "error_record",
    "load_pipeline",
    "process_chunk",
    "process_lines",
    "split_lines",
]

Counts = Counter[str]

# Fields the framework writes; a stage may not return these.
RESERVED_FIELDS = frozenset({"line", "input", "ip", "error", "stage_errors"})
_BOM = b"\xef\xbb\xbf"
_INPUT_PREVIEW = 200  # characters of a bad line echoed back in its record
# Characters of a record's error message: the parser's messages quote the
# line (once or twice), so without a cap a record would grow with the line.
_ERROR_MAX = 256


@runtime_checkable
class Stage(Protocol):
    """What the pipeline calls for each address."""

    def __call__(self, address: Address, /) -> Mapping[str, Any] | None: ...


class _Classify:
    """Built-in stage: version, class and the ``global`` flag."""

    name = "classify"
    blocking = False

    def __call__(self, address: Address, /) -> Mapping[str, Any]:
        return classify(address)

    def from_parsed(self, parsed: ParsedAddress) -> Mapping[str, Any]:
        """The same fields from the fast parser's verdict, with no address object."""
        _, version, class_name, is_global = parsed
        return classify_fields(version, class_name, is_global)


def _build_classify(config: Config) -> Stage:
    return _Classify()


def _lazy(target: str) -> Callable[[Config], Stage]:
    """A built-in stage whose module is imported only when it is used."""

    def build(config: Config) -> Stage:
        module, _, attr = target.partition(":")
        factory: Callable[[Config], Stage] = getattr(importlib.import_module(module), attr)
        return factory(config)

    return build


BUILTIN_STAGES: dict[str, Callable[[Config], Stage]] = {
    "classify": _build_classify,
    "lists": _lazy("ipspool.stages.lists:build"),
    "rdns": _lazy("ipspool.stages.rdns:build"),
    "geoip": _lazy("ipspool.stages.geoip:build"),
}


def _checked(fields: object) -> Mapping[str, Any]:
    """A stage's return value, if it keeps the stage contract."""
    if not isinstance(fields, Mapping):
        raise TypeError(f"returned {type(fields).__name__}, expected a mapping or None")
    clash = RESERVED_FIELDS.intersection(fields)
    if clash:
        raise ValueError(f"returned reserved field(s) {sorted(clash)}")
    return fields


class _Subject:
    """One address as the stages see it: the fast parse, the object, or both."""

    __slots__ = ("_address", "_parsed", "_text")

    def __init__(self, text: str, parsed: ParsedAddress | None, address: Address | None) -> None:
        self._text = text
        self._parsed = parsed
        self._address = address

    def fields(self, stage: Stage, takes_parsed: bool = False) -> Mapping[str, Any] | None:
        if self._parsed is not None and takes_parsed:
            # A built-in that reads the fast parser's verdict (classify, rdns).
            return stage.from_parsed(self._parsed)  # type: ignore[attr-defined,no-any-return]
        if self._address is None:
            # User stages get the ipaddress object, built on first need from
            # text the fast parser already accepted, so this cannot fail.
            self._address = parse_address(self._text)
        return stage(self._address)


@dataclass
class Pipeline:
    """The loaded stages, in order, with their names."""

    names: tuple[str, ...]
    stages: tuple[Stage, ...]
    max_line_bytes: int = 4096
    alert_cap: int = 20  # ip.listed alerts kept per chunk (alerts.listed_per_file)
    blocking: bool = field(init=False)
    # Names of lists whose matches are alerts (from the lists stage, if any).
    alert_lists: frozenset[str] = field(init=False)
    # Every stage is a built-in the fast parser's verdict covers (issue 5), so
    # records need no ipaddress object at all.
    parsed_only: bool = field(init=False)

    def __post_init__(self) -> None:
        # A stage is assumed to block (network, disk) unless it says otherwise;
        # a pipeline of non-blocking stages runs inline, skipping the pool.
        self.blocking = any(getattr(stage, "blocking", True) for stage in self.stages)
        self.parsed_only = all(isinstance(stage, _Classify) for stage in self.stages)
        self.alert_lists = frozenset().union(*(getattr(s, "alert_lists", frozenset()) for s in self.stages))
        self._takes_parsed = tuple(isinstance(s, _Classify) or getattr(s, "takes_parsed", False) is True
                                   for s in self.stages)
        # Stages that resolve a whole batch at once before the per-address calls (rdns).
        self._prefetchers = tuple(s for s in self.stages if callable(getattr(s, "prefetch", None))
                                  and getattr(s, "takes_parsed", False) is True)

    def run(self, address: Address) -> dict[str, Any]:
        """Every stage's fields for one address."""
        return self._collect(_Subject("", None, address))

    def run_parsed(self, text: str, parsed: ParsedAddress) -> dict[str, Any]:
        """Every stage's fields for text the fast parser accepted.

        An ipaddress object is built from ``text`` only if a stage other than
        a fast-path built-in needs one, and then once for all such stages.
        """
        if self.parsed_only:
            # Built-ins that cannot fail or clash: skip the checks below.
            record: dict[str, Any] = {}
            for stage in self.stages:
                if isinstance(stage, _Classify):  # always, when parsed_only
                    record.update(stage.from_parsed(parsed))
            return record
        return self._collect(_Subject(text, parsed, None))

    def _collect(self, subject: _Subject) -> dict[str, Any]:
        record: dict[str, Any] = {}
        errors: dict[str, str] = {}
        for name, stage, takes_parsed in zip(self.names, self.stages, self._takes_parsed, strict=True):
            try:
                fields = subject.fields(stage, takes_parsed)
                if fields is not None:
                    # The fast-path built-ins return fixed, non-reserved fields.
                    record.update(fields if takes_parsed else _checked(fields))
            except Exception as exc:  # noqa: BLE001 - one address's failure must not sink the file
                errors[name] = f"{type(exc).__name__}: {exc}"[:_INPUT_PREVIEW]
        if errors:
            record["stage_errors"] = errors
        return record

    def close(self) -> None:
        for stage in self.stages:
            closer = getattr(stage, "close", None)
            if callable(closer):
                closer()

    @property
    def prefetches(self) -> bool:
        """A stage resolves batches of addresses ahead (``prefetch`` has work to do)."""
        return bool(self._prefetchers)

    def prefetch(self, lines: Sequence[bytes], first_line: int, counts: Counts,
                 beat: Callable[[], None] | None = None) -> None:
        """Let batch stages resolve the addresses of these lines at once, before
        ``process_lines`` asks for them one by one (on this same thread).
        ``beat`` reports progress while a stage waits (the worker's heartbeat)."""
        if not self._prefetchers:
            return
        self.prefetch_parsed(valid_addresses(lines, first_line, self.max_line_bytes), counts, beat)

    def prefetch_parsed(self, addresses: list[ParsedAddress], counts: Counts,
                        beat: Callable[[], None] | None = None) -> None:
        """``prefetch`` for addresses some reader already found and parsed."""
        for stage in self._prefetchers:
            try:
                counts.update(stage.prefetch(addresses, beat))  # type: ignore[attr-defined]
            except Exception:  # noqa: BLE001, S110 - the per-address calls will still answer
                pass

    def release(self) -> None:
        """The batch is written: prefetched answers may go."""
        for stage in self._prefetchers:
            stage.release()  # type: ignore[attr-defined]

    def stats(self) -> dict[str, Any]:
        """Stage counters for the worker's row in ``ipspool status``."""
        fields: dict[str, Any] = {}
        for stage in self.stages:
            stats = getattr(stage, "stats", None)
            if callable(stats) and getattr(stage, "takes_parsed", False) is True:
                fields.update(stats())
        return fields

    def refresh(self) -> None:
        """Let stages pick up changed data files (lists, databases)."""
        for stage in self.stages:
            refresher = getattr(stage, "refresh", None)
            if callable(refresher):
                refresher()


def _load_user_stage(spec: str) -> Stage:
    module_name, sep, qualname = spec.partition(":")
    if not sep or not module_name or not qualname:
        raise ValueError(f'expected a built-in name {sorted(BUILTIN_STAGES)} or "module:callable"')
    try:
        target: Any = importlib.import_module(module_name)
    except Exception as exc:
        raise ValueError(f"cannot import module {module_name!r}: {type(exc).__name__}: {exc}") from exc
    for part in qualname.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise ValueError(f"module {module_name!r} has no attribute {qualname!r}") from None
    if not callable(target):
        raise TypeError(f"{qualname!r} is a {type(target).__name__}, not a callable")
    # Stages must be able to cross a process boundary by reference. A lambda,
    # a closure or a method of an object holding a lock or socket cannot, and
    # the bare PicklingError would not say which stage or why.
    try:
        pickle.dumps(target)
    except Exception as exc:
        raise ValueError(
            f"cannot be sent to worker processes ({type(exc).__name__}: {exc}); "
            "define the stage as a top-level function or a module-level instance "
            "whose state can be pickled"
        ) from exc
    return target  # type: ignore[no-any-return]


def load_pipeline(config: Config, source: str = "<config>") -> Pipeline:
    """Load every configured stage, or raise ConfigError naming each bad one."""
    stages: list[Stage] = []
    problems: list[str] = []
    for index, spec in enumerate(config.pipeline.stages):
        try:
            builtin = BUILTIN_STAGES.get(spec)
            stages.append(builtin(config) if builtin else _load_user_stage(spec))
        except ConfigError as exc:
            problems.extend(f"pipeline.stages[{index}] ({spec}): {p}" for p in exc.problems)
        except Exception as exc:  # noqa: BLE001 - report, do not crash on a bad stage
            problems.append(f"pipeline.stages[{index}] ({spec}): {exc}")
    if problems:
        raise ConfigError(source, tuple(problems))
    return Pipeline(config.pipeline.stages, tuple(stages), config.spool.max_line_bytes,
                    config.alerts.listed_per_file)


def split_lines(data: bytes) -> list[bytes]:
    """Physical lines of a chunk, without their newlines."""
    lines = data.split(b"\n")
    if lines and not lines[-1]:
        lines.pop()
    return lines


def valid_addresses(lines: Sequence[bytes], first_line: int, limit: int) -> list[ParsedAddress]:
    """The fast parser's verdict for each line that ``process_lines`` will
    turn into an address record (the same skipping rules, no records)."""
    found: list[ParsedAddress] = []
    for line_no, physical in enumerate(lines, first_line):
        raw = physical
        if len(raw) > limit:
            continue
        if line_no == 1 and raw.startswith(_BOM):
            raw = raw[len(_BOM):]
        hash_at = raw.find(b"#")
        if hash_at >= 0:
            raw = raw[:hash_at]
        raw = raw.strip()
        if not raw:
            continue
        try:
            text = raw.decode("utf-8")
            if "\x00" not in text:
                found.append(fast_parse_classify(text))
        except ValueError:  # UnicodeDecodeError included
            continue
    return found


def error_record(line_no: int, shown: str, message: str) -> bytes:
    if len(message) > _ERROR_MAX:
        message = message[:_ERROR_MAX - 3] + "..."
    return orjson.dumps({"line": line_no, "input": shown[:_INPUT_PREVIEW], "error": message}) + b"\n"



def process_lines(  # noqa: PLR0912, PLR0915 - the per-line hot loop, kept inline for speed
    lines: Sequence[bytes], first_line: int, pipeline: Pipeline, counts: Counts,
    alerts: list[Alert] | None = None,
) -> bytes:
    """Result records for consecutive lines numbered from ``first_line``.

    Matches in alerting lists are counted in ``counts["listed_alerts"]``; the
    first ``pipeline.alert_cap`` of them are appended to ``alerts``.
    """
    out: list[bytes] = []
    limit = pipeline.max_line_bytes
    for line_no, physical in enumerate(lines, first_line):
        raw = physical
        if len(raw) > limit:
            counts["invalid"] += 1
            counts["error.line_too_long"] += 1
            shown = raw[:64].decode("utf-8", "backslashreplace")
            message = f"line too long: {len(raw)} bytes, limit {limit}"
            out.append(error_record(line_no, shown, message))
            continue
        if line_no == 1 and raw.startswith(_BOM):
            raw = raw[len(_BOM):]
        hash_at = raw.find(b"#")
        if hash_at >= 0:
            raw = raw[:hash_at]
        raw = raw.strip()
        if not raw:
            counts["skipped"] += 1
            continue
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            counts["invalid"] += 1
            counts["error.not_utf8"] += 1
            shown = raw.decode("utf-8", "backslashreplace")
            out.append(error_record(line_no, shown, "not valid UTF-8"))
            continue
        if "\x00" in text:
            counts["invalid"] += 1
            counts["error.nul_byte"] += 1
            out.append(error_record(line_no, text.replace("\x00", "\\x00"), "contains a NUL byte"))
            continue
        try:
            # The fast parser raises parse_address's own errors (fastip.py).
            parsed = fast_parse_classify(text)
        except ValueError as exc:
            counts["invalid"] += 1
            counts["error.not_an_address"] += 1
            out.append(error_record(line_no, text, f"not an IP address: {exc}"))
            continue
        record: dict[str, Any] = {"line": line_no, "input": text, "ip": parsed[0]}
        record.update(pipeline.run_parsed(text, parsed))
        counts["valid"] += 1
        cls = record.get("class")
        if isinstance(cls, str):
            counts["class." + cls] += 1
        if "stage_errors" in record:
            counts["stage_errors"] += 1
        # Per-file only (the summary beside the result): never in the daemon's totals.
        country = record.get("country")
        if isinstance(country, str):
            counts["country." + country] += 1
        asn = record.get("asn")
        if isinstance(asn, int):
            counts["asn." + str(asn)] += 1
        listed = record.get("lists")
        if listed:
            for name in listed:
                counts["list." + name] += 1
            alerting = [name for name in listed if name in pipeline.alert_lists]
            if alerting:
                counts["listed_alerts"] += 1
                if alerts is not None and len(alerts) < pipeline.alert_cap:
                    alerts.append((line_no, parsed[0], alerting))
        out.append(orjson.dumps(record) + b"\n")
    counts["lines"] += len(lines)
    return b"".join(out)


def process_chunk(
    data: bytes, first_line: int, pipeline: Pipeline, alerts: list[Alert] | None = None
) -> tuple[bytes, Counts]:
    """The pure heart: one chunk's bytes in, its result bytes and counts out."""
    counts: Counts = Counter()
    lines = split_lines(data)
    pipeline.prefetch(lines, first_line, counts)
    try:
        return process_lines(lines, first_line, pipeline, counts, alerts), counts
    finally:
        pipeline.release()

