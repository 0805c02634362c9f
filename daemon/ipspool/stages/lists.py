"""The ``lists`` stage: which named CIDR lists contain an address.

Every list is read into inclusive integer ranges, and all lists of one IP
version are folded into a single table of elementary intervals: sorted start
points, and for each interval the sorted names of the lists that cover it. One
bisect then answers every list at once, nested and overlapping prefixes
included, in a microsecond or so whatever the number of lists or prefixes
(bench/lists_bench.py measures it).

Accepted file formats (docs/enrichment.md): one address, CIDR or ``a-b`` range
per line; ``#`` and ``;`` start comments (FireHOL netsets, Spamhaus DROP text
files ``1.2.3.0/24 ; SBL123``); Spamhaus JSON lines (``{"cidr": ...}``);
IPv4 and IPv6 mixed. A bad line is logged as ``list.invalid_line`` and skipped;
it never sinks the list.
"""

from __future__ import annotations

import socket
import threading
from bisect import bisect_right
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
import structlog

from ipspool.address import Address
from ipspool.config import Config, ConfigError, ListConfig
from ipspool.stages._files import FileStamp, describe_os_error, open_regular, stamp_path

__all__ = [
    "InvalidLine",
    "ListTable",
    "ListsStage",
    "ParsedList",
    "build",
    "build_table",
    "parse_list",
    "read_list",
]

# One bad file (an HTML error page saved as a list) must not flood the log
# with a warning per line; the count of the rest is logged once.
MAX_INVALID_LOGGED = 20
_PREVIEW = 80  # characters of a bad line echoed in its event


@dataclass(frozen=True, slots=True)
class InvalidLine:
    """A list line that is neither blank, a comment nor an address entry."""

    line: int
    text: str
    reason: str


@dataclass(frozen=True, slots=True)
class ParsedList:
    """One list file's entries as inclusive integer ranges, per IP version."""

    v4: tuple[tuple[int, int], ...]
    v6: tuple[tuple[int, int], ...]
    invalid: tuple[InvalidLine, ...]
    stamp: FileStamp | None = None


_BUCKET_BITS = 16


class ListTable:
    """Elementary intervals of one IP version: ``names[i]`` covers
    ``starts[i]`` up to (not including) ``starts[i + 1]``.

    A bisect over 200,000 Python ints chases a pointer per step and misses the
    CPU cache on most of them; a first-level index by the top 16 bits of the
    address narrows each bisect to a few neighbouring entries, which cuts the
    cost per address by about a fifth (bench/lists_bench.py: 1.5 to 1.2 us).
    """

    __slots__ = ("_first", "_shift", "names", "starts")

    def __init__(self, bits: int, starts: Sequence[int], names: Sequence[tuple[str, ...]]) -> None:
        if not starts or starts[0] != 0 or len(starts) != len(names):
            raise ValueError("starts must begin at 0 and match names one to one")
        self.starts = tuple(starts)
        self.names = tuple(names)
        self._shift = bits - _BUCKET_BITS
        # _first[b]: the interval holding the first address of bucket b; an
        # address in bucket b lies in one of _first[b] .. _first[b + 1].
        self._first = (
            *(bisect_right(self.starts, b << self._shift) - 1 for b in range(1 << _BUCKET_BITS)),
            len(self.starts) - 1,
        )

    def lookup(self, value: int) -> tuple[str, ...]:
        bucket = value >> self._shift
        low = self._first[bucket]
        return self.names[bisect_right(self.starts, value, low, self._first[bucket + 1] + 1) - 1]


def _parse_ip(text: str) -> tuple[int, int]:
    """(version, integer) of one address; inet_pton is strict and fast.

    It refuses what ``ipaddress`` refuses (leading zeros, short forms such as
    ``10.1``, surrounding spaces) at a fraction of the cost, which matters
    for lists of hundreds of thousands of entries.
    """
    family, version = (socket.AF_INET6, 6) if ":" in text else (socket.AF_INET, 4)
    try:
        packed = socket.inet_pton(family, text)
    except OSError:
        raise ValueError(f"not an IPv{version} address: {text!r}") from None
    return version, int.from_bytes(packed, "big")


def _parse_entry(text: str) -> tuple[int, int, int]:
    """(version, first, last) of an address, CIDR or ``first-last`` range."""
    if "-" in text:
        left, _, right = text.partition("-")
        version, first = _parse_ip(left.strip())
        other, last = _parse_ip(right.strip())
        if other != version:
            raise ValueError("range mixes IPv4 and IPv6")
        if last < first:
            raise ValueError("range ends before it starts")
        return version, first, last
    address, slash, length_text = text.partition("/")
    version, value = _parse_ip(address)
    bits = 32 if version == 4 else 128
    length = bits
    if slash:
        if not (length_text.isascii() and length_text.isdigit()) or int(length_text) > bits:
            raise ValueError(f"prefix length must be 0 to {bits}, got {length_text!r}")
        length = int(length_text)
    # Host bits set ("10.1.2.3/8") mean the enclosing network, as ipset and
    # iptables read them; rejecting them would drop real entries of hand-made lists.
    host_bits = bits - length
    first = (value >> host_bits) << host_bits
    return version, first, first | ((1 << host_bits) - 1)


def _json_entry(text: str) -> str | None:
    """The ``cidr`` of a Spamhaus JSON line; None for its metadata line."""
    try:
        item = orjson.loads(text)
    except orjson.JSONDecodeError:
        raise ValueError("not valid JSON") from None
    cidr = item.get("cidr") if isinstance(item, dict) else None
    if isinstance(cidr, str):
        return cidr.strip()
    if isinstance(item, dict) and cidr is None and "type" in item:
        return None  # {"type": "metadata", "timestamp": ..., "records": ...}
    raise ValueError('expected a JSON object with a "cidr" string')


def _entry_text(line: str) -> str | None:
    """The entry on one line; None for a blank or comment line."""
    if line.lstrip().startswith("{"):
        return _json_entry(line)
    entry = line.split("#", 1)[0].split(";", 1)[0].strip()
    if not entry:
        return None
    if "-" not in entry and len(entry.split()) > 1:
        # DShield-style "start end count ..." columns are another format;
        # taking the first column would list one address of a whole block.
        raise ValueError("expected one address, CIDR or range per line")
    return entry


def parse_list(lines: Iterable[str]) -> ParsedList:
    """Parse the lines of one list file (without their newlines)."""
    v4: list[tuple[int, int]] = []
    v6: list[tuple[int, int]] = []
    invalid: list[InvalidLine] = []
    for number, line in enumerate(lines, 1):
        text = line.lstrip("\ufeff") if number == 1 else line
        try:
            entry = _entry_text(text)
            if entry is None:
                continue
            version, first, last = _parse_entry(entry)
        except ValueError as exc:
            invalid.append(InvalidLine(number, text.strip()[:_PREVIEW], str(exc)))
            continue
        (v4 if version == 4 else v6).append((first, last))
    return ParsedList(tuple(v4), tuple(v6), tuple(invalid))


def read_list(path: str) -> ParsedList:
    """Read and parse one list file; OSError if it cannot be read."""
    handle, stamp = open_regular(path)
    with handle:
        data = handle.read()
    # Undecodable bytes become U+FFFD and fail that line alone. Split on "\n"
    # only: str.splitlines() also splits on \x0c, \x1c and friends, which
    # would make the reported line numbers disagree with an editor's.
    lines = data.decode("utf-8", "replace").split("\n")
    parsed = parse_list(line.rstrip("\r") for line in lines)
    return ParsedList(parsed.v4, parsed.v6, parsed.invalid, stamp)


def _merge(ranges: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """Sorted, non-overlapping, non-adjacent ranges covering the same set."""
    merged: list[tuple[int, int]] = []
    for first, last in sorted(ranges):
        if merged and first <= merged[-1][1] + 1:
            if last > merged[-1][1]:
                merged[-1] = (merged[-1][0], last)
        else:
            merged.append((first, last))
    return merged


def build_table(bits: int, lists: Sequence[tuple[str, Iterable[tuple[int, int]]]]) -> ListTable:
    """Fold named range lists into one table of elementary intervals."""
    # After merging, a list covers each point at most once, so a plain set of
    # active names is enough; no per-list counters are needed.
    changes: dict[int, list[tuple[bool, str]]] = {}
    for name, ranges in lists:
        for first, last in _merge(ranges):
            changes.setdefault(first, []).append((True, name))
            changes.setdefault(last + 1, []).append((False, name))
    starts: list[int] = [0]
    names: list[tuple[str, ...]] = [()]
    interned: dict[frozenset[str], tuple[str, ...]] = {frozenset(): ()}
    active: set[str] = set()
    for point in sorted(changes):
        for starting, name in changes[point]:
            if starting:
                active.add(name)
            else:
                active.discard(name)
        key = frozenset(active)
        value = interned.get(key)
        if value is None:
            value = interned[key] = tuple(sorted(key))
        if value is names[-1]:
            continue  # same lists as the interval before: extend it
        if point == starts[-1]:
            names[-1] = value
        else:
            starts.append(point)
            names.append(value)
    return ListTable(bits, starts, names)


@dataclass(frozen=True, slots=True)
class _Tables:
    v4: ListTable
    v6: ListTable


class ListsStage:
    """Adds ``lists``: the sorted names of every list containing the address."""

    name = "lists"
    blocking = False

    def __init__(self, lists: Sequence[ListConfig], loaded: Mapping[str, ParsedList]) -> None:
        self.alert_lists: frozenset[str] = frozenset(item.name for item in lists if item.alert)
        self._configs = tuple(lists)
        self._loaded = dict(loaded)
        # The stamp a failed reload saw, so one broken file logs one error,
        # not one every refresh, and is retried when it changes again.
        self._failed: dict[str, FileStamp | None] = {}
        self._refresh_lock = threading.Lock()
        self._tables = self._build_tables()

    def __call__(self, address: Address, /) -> Mapping[str, Any]:
        # One read of one reference: a concurrent refresh() swaps whole tables.
        tables = self._tables
        table = tables.v4 if address.version == 4 else tables.v6
        return {"lists": list(table.lookup(int(address)))}

    def overlap(self, version: int, first: int, last: int) -> tuple[list[str], list[str]]:
        """Lists holding all of [first, last], and those holding only part of it (the networks format)."""
        table = self._tables.v4 if version == 4 else self._tables.v6
        low = bisect_right(table.starts, first) - 1
        high = bisect_right(table.starts, last) - 1
        segments = table.names[low:high + 1]
        within = set(segments[0]).intersection(*segments[1:])
        anywhere = set().union(*segments)
        return sorted(within), sorted(anywhere - within)

    def _build_tables(self) -> _Tables:
        entries = [(item.name, self._loaded[item.name]) for item in self._configs]
        return _Tables(
            build_table(32, [(name, parsed.v4) for name, parsed in entries]),
            build_table(128, [(name, parsed.v6) for name, parsed in entries]),
        )

    def refresh(self) -> None:
        """Reload the lists whose file changed, then swap in new tables."""
        with self._refresh_lock:
            changed = False
            for item in self._configs:
                current = stamp_path(item.path)
                if current == self._loaded[item.name].stamp:
                    continue
                if item.name in self._failed and self._failed[item.name] == current:
                    continue
                try:
                    parsed = read_list(item.path)
                except OSError as exc:
                    self._failed[item.name] = current
                    structlog.get_logger().error(
                        "list.reload_failed",
                        list=item.name,
                        file=item.path,
                        error=describe_os_error(exc),
                        action="keeping the entries loaded before",
                    )
                    continue
                self._failed.pop(item.name, None)
                self._loaded[item.name] = parsed
                _log_loaded(item, parsed, reload=True)
                changed = True
            if changed:
                self._tables = self._build_tables()

    def close(self) -> None:
        """Nothing to release: the tables are plain memory."""


def _log_loaded(item: ListConfig, parsed: ParsedList, *, reload: bool) -> None:
    log = structlog.get_logger()
    for bad in parsed.invalid[:MAX_INVALID_LOGGED]:
        log.warning(
            "list.invalid_line",
            list=item.name,
            file=item.path,
            line=bad.line,
            text=bad.text,
            reason=bad.reason,
        )
    if len(parsed.invalid) > MAX_INVALID_LOGGED:
        log.warning(
            "list.invalid_lines_suppressed",
            list=item.name,
            file=item.path,
            count=len(parsed.invalid) - MAX_INVALID_LOGGED,
        )
    log.info(
        "list.loaded",
        list=item.name,
        file=item.path,
        ipv4_entries=len(parsed.v4),
        ipv6_entries=len(parsed.v6),
        invalid_lines=len(parsed.invalid),
        reload=reload,
    )


def build(config: Config) -> ListsStage:
    """Load every ``[[lists]]`` file, or raise ConfigError naming each bad one."""
    problems: list[str] = []
    loaded: dict[str, ParsedList] = {}
    first_index: dict[str, int] = {}
    for index, item in enumerate(config.lists):
        if item.name in first_index:
            other = first_index[item.name]
            problems.append(f"lists[{index}].name: {item.name!r} is already used by lists[{other}]")
            continue
        first_index[item.name] = index
        try:
            loaded[item.name] = read_list(item.path)
        except OSError as exc:
            reason = describe_os_error(exc)
            problems.append(f"lists[{index}].path: cannot read {item.path}: {reason}")
    if problems:
        raise ConfigError("[[lists]]", tuple(problems))
    for item in config.lists:
        _log_loaded(item, loaded[item.name], reload=False)
    return ListsStage(config.lists, loaded)
