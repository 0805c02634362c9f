"""The rdns stage as it was before the engine (commit 11ad756), for the benchmark's "old" rows.

One blocking ``dns.query.udp_with_fallback`` per pool thread at a time, a
per-worker LRU. Loaded as the user stage ``bench.legacy_rdns:rdns``; its
nameserver comes from ``BENCH_RDNS_NAMESERVER`` (the benchmark sets it).

The original docstring follows.

The ``rdns`` stage: PTR names, with an optional forward confirmation.

Every lookup ends in one of five results, reported in the ``rdns`` field and
never as an exception: ``ok``, ``nxdomain`` (no PTR: NXDOMAIN or an empty
answer), ``timeout``, ``servfail`` and ``error`` (REFUSED, FORMERR, a
malformed reply, a socket error). docs/enrichment.md is the reference.

Queries go straight to the configured nameservers with ``dns.query`` rather
than through ``dns.resolver.Resolver``, so that ``timeout`` and ``retries``
mean exactly what they say (the Resolver has one lifetime for all attempts
and backs off between rounds) and SERVFAIL stays distinguishable from a
timeout. Answers are cached per worker, bounded, for their TTL.
"""

from __future__ import annotations

import ipaddress
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Final

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdatatype
import dns.resolver
import dns.reversename
import structlog

from ipspool.address import Address
from ipspool.config import Config, ConfigError, RdnsConfig

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

    def __init__(self, size: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.size = size
        self._clock = clock
        self._lock = threading.Lock()
        self._entries: OrderedDict[Address, tuple[float, Mapping[str, Any]]] = OrderedDict()

    def get(self, key: Address) -> Mapping[str, Any] | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            if entry[0] <= self._clock():
                del self._entries[key]
                return None
            self._entries.move_to_end(key)
            return entry[1]

    def put(self, key: Address, value: Mapping[str, Any], ttl: float) -> None:
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


def _negative_ttl(response: dns.message.Message, cap: float) -> float:
    """RFC 2308 section 5: the SOA's TTL or its MINIMUM, whichever is lower;
    without an SOA, the configured negative_ttl, which also caps it."""
    for rrset in response.authority:
        if rrset.rdtype == dns.rdatatype.SOA and len(rrset) > 0:
            return float(min(rrset.ttl, rrset[0].minimum, cap))
    return cap


class _Resolver:
    """Sends one question to the nameservers in turn, ``retries`` rounds."""

    def __init__(self, nameservers: Sequence[Nameserver], settings: RdnsConfig) -> None:
        self.nameservers = tuple(nameservers)
        self.timeout = settings.timeout
        self.rounds = settings.retries + 1
        self.negative_ttl = settings.negative_ttl

    def query(self, name: dns.name.Name, rdtype: dns.rdatatype.RdataType) -> Lookup:
        query = dns.message.make_query(name, rdtype)
        failures: set[str] = set()
        waiting = list(self.nameservers)  # servers worth asking again
        for _ in range(self.rounds):
            timed_out: list[Nameserver] = []
            for server in waiting:
                try:
                    # ignore_unexpected: a stray datagram from elsewhere is
                    # dropped and the wait goes on, instead of ending the attempt.
                    response, _tcp = dns.query.udp_with_fallback(
                        query,
                        server.address,
                        timeout=self.timeout,
                        port=server.port,
                        ignore_unexpected=True,
                    )
                except dns.exception.Timeout:
                    timed_out.append(server)
                    continue
                except (dns.exception.DNSException, OSError, ValueError):
                    # A reply that does not parse or match, or a socket error
                    # (unreachable, refused): ask the next server.
                    failures.add(ERROR)
                    continue
                result = self._interpret(response, rdtype)
                if result.status in (OK, NXDOMAIN):
                    return result
                failures.add(result.status)
            waiting = timed_out
            if not waiting:
                break
        # SERVFAIL says the most about where to look, a timeout the least.
        for status in (SERVFAIL, ERROR):
            if status in failures:
                return Lookup(status)
        return Lookup(TIMEOUT)

    def _interpret(self, response: dns.message.Message, rdtype: dns.rdatatype.RdataType) -> Lookup:
        rcode = response.rcode()
        if rcode == dns.rcode.SERVFAIL:
            return Lookup(SERVFAIL)
        if rcode == dns.rcode.NXDOMAIN:
            return Lookup(NXDOMAIN, (), _negative_ttl(response, self.negative_ttl))
        if rcode != dns.rcode.NOERROR or not isinstance(response, dns.message.QueryMessage):
            return Lookup(ERROR)
        # resolve_chaining() follows CNAMEs in the answer, as RFC 2317
        # classless reverse delegation puts them in in-addr.arpa.
        try:
            chain = response.resolve_chaining()
        except dns.exception.DNSException:
            return Lookup(ERROR)
        if chain.answer is None or len(chain.answer) == 0:
            return Lookup(NXDOMAIN, (), _negative_ttl(response, self.negative_ttl))
        if rdtype == dns.rdatatype.PTR:
            names = (rdata.target.to_text(omit_final_dot=True) for rdata in chain.answer)
            values = tuple(sorted(names))
        else:
            values = tuple(rdata.address for rdata in chain.answer)
        return Lookup(OK, values, float(chain.minimum_ttl))


class RdnsStage:
    """Adds ``ptr``, ``rdns`` and, with forward_confirm, ``ptr_confirmed``."""

    name = "rdns"
    blocking = True

    def __init__(
        self,
        nameservers: Sequence[Nameserver],
        settings: RdnsConfig,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.nameservers = tuple(nameservers)
        self.forward_confirm = settings.forward_confirm
        self._resolver = _Resolver(nameservers, settings)
        self.cache = DnsCache(settings.cache_size, clock)

    def __call__(self, address: Address, /) -> Mapping[str, Any]:
        cached = self.cache.get(address)
        if cached is not None:
            return cached
        try:
            fields, ttl = self._lookup(address)
        except Exception as exc:
            structlog.get_logger().warning(
                "rdns.lookup_failed", ip=str(address), error=f"{type(exc).__name__}: {exc}"
            )
            fields, ttl = self._fields(None, ERROR, False), FAILURE_TTL
        self.cache.put(address, fields, ttl)
        return fields

    def _fields(self, ptr: str | None, status: str, confirmed: bool) -> Mapping[str, Any]:
        fields: dict[str, Any] = {"ptr": ptr, "rdns": status}
        if self.forward_confirm:
            fields["ptr_confirmed"] = confirmed
        # Read-only: the same cached mapping is handed to every caller.
        return MappingProxyType(fields)

    def _lookup(self, address: Address) -> tuple[Mapping[str, Any], float]:
        question = dns.reversename.from_address(str(address))
        reverse = self._resolver.query(question, dns.rdatatype.PTR)
        if reverse.status != OK:
            return self._fields(None, reverse.status, False), reverse.ttl
        # Several PTR records are rare but legal; the first in sorted order
        # keeps the field the same from run to run.
        ptr = reverse.values[0]
        if not self.forward_confirm:
            return self._fields(ptr, OK, False), reverse.ttl
        confirmed, ttl = self._confirm(ptr, address)
        return self._fields(ptr, OK, confirmed), min(reverse.ttl, ttl)

    def _confirm(self, ptr: str, address: Address) -> tuple[bool, float]:
        """Whether the PTR name's A (or AAAA) records include the address."""
        try:
            name = dns.name.from_text(ptr)
        except dns.exception.DNSException:
            return False, FAILURE_TTL
        rdtype = dns.rdatatype.A if address.version == 4 else dns.rdatatype.AAAA
        forward = self._resolver.query(name, rdtype)
        if forward.status == NXDOMAIN:
            return False, forward.ttl
        if forward.status != OK:
            # Unconfirmed for now, and soon asked again: a timeout is not a "no".
            return False, FAILURE_TTL
        return any(ipaddress.ip_address(value) == address for value in forward.values), forward.ttl

    def close(self) -> None:
        self.cache.clear()


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


def build(config: Config, clock: Callable[[], float] = time.monotonic) -> RdnsStage:
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
    return RdnsStage(nameservers or _system_nameservers(), settings, clock)


_STAGE: list[RdnsStage] = []
_BUILDING = threading.Lock()


def rdns(address: Address, /) -> Mapping[str, Any]:
    """The old stage with default settings and the benchmark's nameserver."""
    if not _STAGE:
        import os

        from ipspool.config import parse_config

        with _BUILDING:
            if not _STAGE:
                config = parse_config({"rdns": {"nameservers": [os.environ["BENCH_RDNS_NAMESERVER"]]}})
                _STAGE.append(build(config))
    return _STAGE[0](address)
