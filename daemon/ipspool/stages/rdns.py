"""The ``rdns`` stage: PTR names, with an optional forward confirmation.

Every lookup ends in one of five results, reported in the ``rdns`` field and
never as an exception: ``ok``, ``nxdomain`` (no PTR: NXDOMAIN or an empty
answer), ``timeout``, ``servfail`` and ``error`` (REFUSED, FORMERR, a
malformed reply, a socket error). docs/enrichment.md is the reference.

Queries go out through ``dnsengine.Engine``, one per worker: a thread with
many queries in flight on non-blocking sockets, so a batch of addresses is
resolved at once (``prefetch``, called by the worker for each batch before
the per-address calls, which then find their answers waiting). ``timeout``
and ``retries`` keep the meaning they had with one blocking query at a time:
``timeout`` is one attempt at one server, ``retries`` further rounds for the
servers that timed out.

Answers are cached at three levels: the batch being processed (per thread),
a bounded LRU per worker, and a SQLite file all workers share that survives
restarts (``rdnscache``); each entry lives for its TTL.
"""

from __future__ import annotations

import ipaddress
import sqlite3
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final

import dns.resolver
import structlog

from ipspool.address import Address
from ipspool.config import Config, ConfigError, RdnsConfig
from ipspool.fastip import ParsedAddress
from ipspool.stages import dnswire
from ipspool.stages.dnsengine import Answer, Engine, Server
from ipspool.stages.rdnscache import DiskCache, open_cache

__all__ = [
    "FAILURE_TTL",
    "MAX_TTL",
    "RESOLV_CONF",
    "DnsCache",
    "Lookup",
    "Nameserver",
    "RdnsStage",
    "build",
    "parse_nameserver",
]

OK: Final = "ok"
NXDOMAIN: Final = "nxdomain"
TIMEOUT: Final = "timeout"
SERVFAIL: Final = "servfail"
ERROR: Final = "error"

# RFC 9520 section 3.2: resolution failures are to be cached for at least
# one second and at most five minutes, so that one address repeated across a
# file does not wait out a dead server's timeout every time.
FAILURE_TTL = 30.0
# Stale names are worse than a repeated query; like common resolvers'
# max-cache-ttl, no answer is kept longer than a day whatever its TTL says.
MAX_TTL = 86400.0
RESOLV_CONF = "/etc/resolv.conf"
STATE_SUBDIR = ".state"
_WRITE_ROWS = 4096    # answers queued for the disk cache before a write
_WRITE_EVERY = 1.0    # seconds an answer may wait for its write


@dataclass(frozen=True, slots=True)
class Nameserver:
    """One ``rdns.nameservers`` entry."""

    address: str
    port: int = 53


def parse_nameserver(text: str) -> Nameserver:
    """``"addr"``, ``"addr:port"``, ``"v6addr"`` or ``"[v6addr]:port"``."""
    host, port_text = text.strip(), ""
    if host.startswith("["):
        host, bracket, rest = host[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise ValueError('expected "[IPv6]:port"')
        port_text = rest[1:]
    elif host.count(":") == 1:
        host, _, port_text = host.partition(":")
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(
            f"{host!r} is not an IP address (a nameserver's own name cannot be resolved)"
        ) from None
    port = 53
    if port_text or text.strip().endswith(":"):
        if not (port_text.isascii() and port_text.isdigit()) or not 0 < int(port_text) < 65536:
            raise ValueError(f"port must be 1 to 65535, got {port_text!r}")
        port = int(port_text)
    return Nameserver(str(address), port)


@dataclass(frozen=True, slots=True)
class Lookup:
    """One lookup's outcome: a status, and the names or addresses found."""

    status: str
    values: tuple[str, ...] = ()
    ttl: float = FAILURE_TTL


class DnsCache:
    """A thread-safe LRU cache whose entries expire.

    ``clock`` is injected so tests can expire entries without sleeping.
    """

    def __init__(self, size: int, clock: Callable[[], float] = time.time) -> None:
        self.size = size
        self._clock = clock
        self._lock = threading.Lock()
        self._entries: OrderedDict[Hashable, tuple[float, Mapping[str, Any]]] = OrderedDict()

    def get(self, key: Hashable) -> Mapping[str, Any] | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            if entry[0] <= self._clock():
                del self._entries[key]
                return None
            self._entries.move_to_end(key)
            return entry[1]

    def put(self, key: Hashable, value: Mapping[str, Any], ttl: float) -> None:
        if self.size == 0 or ttl <= 0:
            return
        with self._lock:
            self._entries[key] = (self._clock() + min(ttl, MAX_TTL), value)
            self._entries.move_to_end(key)
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


Fields = Mapping[str, Any]


class RdnsStage:
    """Adds ``ptr``, ``rdns`` and, with forward_confirm, ``ptr_confirmed``.

    ``share`` is the number of worker processes: each worker's engine sends
    its share of ``rate_limit``. ``cache_dir`` None: no disk cache.
    """

    name = "rdns"
    blocking = True
    takes_parsed = True  # from_parsed() serves the fast parser's verdict, no ipaddress object

    def __init__(
        self,
        nameservers: Sequence[Nameserver],
        settings: RdnsConfig,
        clock: Callable[[], float] = time.time,
        cache_dir: Path | None = None,
        share: int = 1,
    ) -> None:
        self.nameservers = tuple(nameservers)
        self.forward_confirm = settings.forward_confirm
        self.negative_ttl = settings.negative_ttl
        self.engine = Engine([Server(n.address, n.port) for n in self.nameservers], settings.timeout,
                             settings.retries, settings.max_in_flight, settings.rate_limit / max(1, share))
        self.cache = DnsCache(settings.cache_size, clock)
        self._clock = clock
        self._disk_dir = cache_dir if settings.disk_cache_size > 0 else None
        self._disk_size = settings.disk_cache_size
        self._disk: DiskCache | None = None
        self._disk_lock = threading.Lock()
        self._local = threading.local()
        self._write_lock = threading.Lock()
        self._unwritten: list[tuple[str, str | None, str, bool | None, float]] = []
        self._written = time.monotonic()
        self._counts_lock = threading.Lock()
        self.counts: Counter[str] = Counter()

    # -- per address -------------------------------------------------------------

    def __call__(self, address: Address, /) -> Fields:
        return self._fields_for(str(address), address.version)

    def from_parsed(self, parsed: ParsedAddress) -> Fields:
        return self._fields_for(parsed[0], parsed[1])

    def _fields_for(self, ip: str, version: int) -> Fields:
        batch: dict[str, Fields] | None = getattr(self._local, "batch", None)
        if batch is not None:
            found = batch.get(ip)
            if found is not None:
                return found
        cached = self.cache.get(ip)
        if cached is None:
            on_disk = self._disk_get([ip])
            cached = on_disk.get(ip)
        if cached is not None:
            self._count(hits=1)
            return cached
        self._count(lookups=1)
        try:
            fields, ttl = self._lookup(ip, version)
        except Exception as exc:  # noqa: BLE001 - the contract: a result, never an exception
            structlog.get_logger().warning("rdns.lookup_failed", ip=ip, error=f"{type(exc).__name__}: {exc}")
            fields, ttl = self._fields(None, ERROR, False), FAILURE_TTL
        self.cache.put(ip, fields, ttl)
        self._disk_put([(ip, fields, ttl)])
        return fields

    # -- per batch ---------------------------------------------------------------

    def prefetch(self, parsed: Sequence[ParsedAddress], beat: Callable[[], None] | None = None) -> Counter[str]:
        """Resolve a batch's addresses at once; the per-address calls that follow
        on this thread find them waiting. Returns the batch's cache counts.
        ``beat`` is called now and then while the engine makes progress on them."""
        wanted = {p[0]: p[1] for p in parsed}
        results: dict[str, Fields] = {}
        missing: list[str] = []
        for ip in wanted:
            cached = self.cache.get(ip)
            if cached is None:
                missing.append(ip)
            else:
                results[ip] = cached
        if missing:
            on_disk = self._disk_get(missing)
            results.update(on_disk)
            missing = [ip for ip in missing if ip not in on_disk]
        if missing:
            try:
                resolved = self._resolve_many([(ip, wanted[ip]) for ip in missing], beat)
            except Exception as exc:  # noqa: BLE001 - a result, never an exception
                structlog.get_logger().warning("rdns.lookup_failed", ip=missing[0],
                                               error=f"{type(exc).__name__}: {exc}")
                resolved = [(self._fields(None, ERROR, False), FAILURE_TTL)] * len(missing)
            for ip, (fields, ttl) in zip(missing, resolved, strict=True):
                self.cache.put(ip, fields, ttl)
                results[ip] = fields
            self._disk_put([(ip, fields, ttl) for ip, (fields, ttl) in zip(missing, resolved, strict=True)])
        self._local.batch = results
        counts = Counter({"rdns.cache_hits": len(wanted) - len(missing), "rdns.lookups": len(missing)})
        self._count(hits=len(wanted) - len(missing), lookups=len(missing))
        return counts

    def release(self) -> None:
        """The batch is done: forget this thread's prefetched answers."""
        self._local.batch = None

    def _count(self, hits: int = 0, lookups: int = 0) -> None:
        with self._counts_lock:
            self.counts["hits"] += hits
            self.counts["lookups"] += lookups

    def stats(self) -> dict[str, int]:
        """For the worker's row in ``ipspool status``."""
        with self._counts_lock:
            hits, lookups = self.counts["hits"], self.counts["lookups"]
        return {"rdns_cache_hits": hits, "rdns_lookups": lookups, "rdns_queries": self.engine.sent,
                "rdns_coalesced": self.engine.coalesced}

    # -- resolution ----------------------------------------------------------------

    def _fields(self, ptr: str | None, status: str, confirmed: bool) -> Fields:
        fields: dict[str, Any] = {"ptr": ptr, "rdns": status}
        if self.forward_confirm:
            fields["ptr_confirmed"] = confirmed
        # Read-only: the same cached mapping is handed to every caller.
        return MappingProxyType(fields)

    def _lookup(self, ip: str, version: int) -> tuple[Fields, float]:
        return self._resolve_many([(ip, version)])[0]

    def _ttl(self, answer: Answer) -> float:
        if answer.status == OK:
            return answer.ttl if answer.ttl is not None else FAILURE_TTL
        if answer.status == NXDOMAIN:
            # RFC 2308 section 5: the SOA's TTL or MINIMUM, capped by negative_ttl;
            # negative_ttl itself when no SOA came.
            return self.negative_ttl if answer.ttl is None else min(answer.ttl, self.negative_ttl)
        return FAILURE_TTL

    def _resolve_many(
        self, items: Sequence[tuple[str, int]], beat: Callable[[], None] | None = None
    ) -> list[tuple[Fields, float]]:
        questions = [dnswire.question_bytes(dnswire.reverse_name(ip, version), dnswire.PTR)
                     for ip, version in items]
        answers = self.engine.resolve(questions, beat)
        out: list[tuple[Fields, float]] = []
        confirm: list[tuple[int, bytes]] = []  # (index in out, forward question)
        for (_ip, version), answer in zip(items, answers, strict=True):
            ttl = self._ttl(answer)
            if answer.status != OK:
                out.append((self._fields(None, answer.status, False), ttl))
                continue
            # Several PTR records are rare but legal; the first in sorted order
            # keeps the field the same from run to run.
            ptr = answer.values[0]
            out.append((self._fields(ptr, OK, False), ttl))
            if self.forward_confirm:
                try:
                    name = dnswire.encode_name(ptr)
                except ValueError:
                    out[-1] = (out[-1][0], min(ttl, FAILURE_TTL))
                    continue
                rdtype = dnswire.A if version == 4 else dnswire.AAAA
                confirm.append((len(out) - 1, dnswire.question_bytes(name, rdtype)))
        if confirm:
            forward = self.engine.resolve([question for _, question in confirm], beat)
            for (index, _), answer in zip(confirm, forward, strict=True):
                fields, ttl = out[index]
                confirmed, forward_ttl = self._confirmed(items[index][0], answer)
                out[index] = (self._fields(fields["ptr"], OK, confirmed), min(ttl, forward_ttl))
        return out

    def _confirmed(self, ip: str, forward: Answer) -> tuple[bool, float]:
        """Whether the PTR name's A (or AAAA) records include the address."""
        if forward.status == NXDOMAIN:
            return False, self._ttl(forward)
        if forward.status != OK:
            # Unconfirmed for now, and soon asked again: a timeout is not a "no".
            return False, FAILURE_TTL
        address = ipaddress.ip_address(ip)
        return any(ipaddress.ip_address(value) == address for value in forward.values), self._ttl(forward)

    # -- the disk cache ------------------------------------------------------------

    def _disk_cache(self) -> DiskCache | None:
        if self._disk is not None or self._disk_dir is None:
            return self._disk
        with self._disk_lock:
            if self._disk is None and self._disk_dir is not None:
                try:
                    self._disk = open_cache(self._disk_dir, self._disk_size, self._clock)
                except (OSError, sqlite3.Error) as exc:
                    self._disk_failed(exc)
        return self._disk

    def _disk_failed(self, exc: BaseException) -> None:
        structlog.get_logger().warning(
            "rdns.cache_unavailable", path=str(self._disk_dir), error=f"{type(exc).__name__}: {exc}",
            action="memory cache only until the stage is rebuilt")
        self._disk_dir = None
        disk, self._disk = self._disk, None
        if disk is not None:
            try:
                disk.close()
            except sqlite3.Error:
                pass

    def _disk_get(self, ips: Sequence[str]) -> dict[str, Fields]:
        disk = self._disk_cache()
        if disk is None:
            return {}
        try:
            entries = disk.get_many(ips)
        except sqlite3.Error as exc:
            with self._disk_lock:
                self._disk_failed(exc)
            return {}
        now = self._clock()
        found: dict[str, Fields] = {}
        for ip, (ptr, status, confirmed, expires) in entries.items():
            if self.forward_confirm and status == OK and confirmed is None:
                continue  # stored before forward_confirm was on: not the answer we need
            fields = self._fields(ptr, status, bool(confirmed))
            self.cache.put(ip, fields, expires - now)
            found[ip] = fields
        return found

    def _disk_put(self, rows: Sequence[tuple[str, Fields, float]]) -> None:
        """Queue answers for the disk; written in transactions of many batches
        (one write per batch costs twice as much), or after a second."""
        if self._disk_dir is None and self._disk is None:
            return
        confirm = self.forward_confirm
        with self._write_lock:
            self._unwritten.extend(
                (ip, fields["ptr"], fields["rdns"], fields.get("ptr_confirmed") if confirm else None,
                 min(ttl, MAX_TTL)) for ip, fields, ttl in rows)
            due = len(self._unwritten) >= _WRITE_ROWS or time.monotonic() - self._written >= _WRITE_EVERY
        if due:
            self.flush()

    def flush(self) -> None:
        """Write the queued answers to the disk cache now."""
        with self._write_lock:
            rows, self._unwritten = self._unwritten, []
            self._written = time.monotonic()
        disk = self._disk_cache() if rows else None
        if disk is None:
            return
        try:
            disk.put_many(rows)
        except sqlite3.Error as exc:
            with self._disk_lock:
                self._disk_failed(exc)

    def refresh(self) -> None:
        """Called by the worker every few seconds: queued answers reach the disk even when idle."""
        self.flush()

    def close(self) -> None:
        self.engine.close()
        self.flush()
        self.cache.clear()
        with self._disk_lock:
            disk, self._disk = self._disk, None
        if disk is not None:
            disk.close()


def _system_nameservers() -> tuple[Nameserver, ...]:
    """The nameservers of resolv.conf(5), as the system resolver uses them."""
    try:
        resolver = dns.resolver.Resolver(filename=RESOLV_CONF)
    except dns.resolver.NoResolverConfiguration as exc:
        raise ConfigError(
            "[rdns]",
            (f"rdns.nameservers is empty and {RESOLV_CONF} names no nameserver: {exc}",),
        ) from None
    return tuple(parse_nameserver(str(server)) for server in resolver.nameservers)


def build(config: Config, clock: Callable[[], float] = time.time) -> RdnsStage:
    """The stage for ``[rdns]``, or ConfigError naming each bad nameserver."""
    settings = config.rdns
    problems: list[str] = []
    nameservers: list[Nameserver] = []
    for index, text in enumerate(settings.nameservers):
        try:
            nameservers.append(parse_nameserver(text))
        except ValueError as exc:
            problems.append(f"rdns.nameservers[{index}]: {text!r}: {exc}")
    if problems:
        raise ConfigError("[rdns]", tuple(problems))
    cache_dir = Path(settings.cache_dir) if settings.cache_dir else config.spool_dir / STATE_SUBDIR
    return RdnsStage(nameservers or _system_nameservers(), settings, clock, cache_dir, config.process_count)
