"""Parse and classify an address without building an ``ipaddress`` object.

``fast_parse_classify(text)`` returns what ``parse_address`` followed by the
``classify`` stage would give - the normalized address, its version, class and
``global`` flag - in a fraction of the time (issue 5: ``ipaddress`` and its
``is_*`` properties took most of the per-line budget).

How it stays identical to the slow path:

* Validation is ``socket.inet_pton``. On glibc it accepts a strict subset of
  what ``ipaddress`` accepts, with the same value: dotted quads need four
  decimal octets without leading zeros, hextets at most four digits, and an
  embedded IPv4 tail follows the same rules. The one form ``ipaddress``
  accepts and ``inet_pton`` refuses is an IPv6 zone id (``fe80::1%eth0``).
  Whatever ``inet_pton`` refuses goes to the slow path, which either accepts
  it (zone ids) or raises the slow path's own error, so messages match.
* Classification is a lookup in sorted range tables built once, at import,
  by asking this Python's ``ipaddress`` (and ``classify``) about one address
  per range. The ranges are cut at the edge of every network ``ipaddress``
  and ``classify`` test membership of, read from their own constants, so the
  tables follow the running Python's idea of "private" and "global" rather
  than a copy of it. A range whose first, middle and last addresses disagree
  (a rule not based on those networks) is left to the slow path.
* The text of an IPv4 address that ``inet_pton`` accepted is already
  normalized; IPv6 text comes from ``inet_ntop``, except in ``::/96`` and
  ``::ffff:0:0/96`` where glibc writes a dotted tail and ``ipaddress`` does
  not (see ``_low_v6_text``).
"""

from __future__ import annotations

import ipaddress
import socket
from bisect import bisect_right
from collections.abc import Iterable, Iterator
from itertools import pairwise

from ipspool.address import Address, parse_address
from ipspool.classify import NETWORKS, classify

__all__ = ["ParsedAddress", "fast_parse_classify", "slow_parse_classify"]

# (normalized address, version, class, global): what a record's "ip",
# "version", "class" and "global" fields hold.
ParsedAddress = tuple[str, int, str, bool]
_Verdict = tuple[int, str, bool]
_Network = ipaddress.IPv4Network | ipaddress.IPv6Network

_V4_BITS = 32
_V6_BITS = 128
_MAPPED_PREFIX = 0xFFFF << 32  # ::ffff:0:0/96, IPv4-mapped (RFC 4291 2.5.5.2)
# Regions of IPv6 whose meaning ipaddress may take from an embedded IPv4
# address, as (prefix, shift of the IPv4 bits). IPv4 range edges are copied
# into each, so a rule that delegates to the IPv4 tables (as is_private does
# for mapped addresses) is honoured; a copy that no rule uses costs nothing.
_EMBEDDED_V4 = (
    (_MAPPED_PREFIX, 0),
    (0, 0),  # ::/96, IPv4-compatible (deprecated, RFC 4291 2.5.5.1)
    (0x2002 << 112, 80),  # 2002::/16, 6to4 (RFC 3056)
)


def slow_parse_classify(text: str) -> ParsedAddress:
    """The reference: ``parse_address`` and the ``classify`` stage's values."""
    address = parse_address(text)
    return (str(address), *_verdict(address))


def _verdict(address: Address) -> _Verdict:
    """What the ``classify`` stage reports for an address, after "ip"."""
    # Ask the stage itself, so the tables follow any change to it.
    fields = classify(address)
    return (fields["version"], fields["class"], fields["global"])


def _constant_networks(
    cls: type[ipaddress.IPv4Address | ipaddress.IPv6Address],
) -> Iterator[_Network]:
    """Every network and address in the constants ``ipaddress``'s properties consult."""
    # _constants is private, but it is exactly what is_private, is_global and
    # the rest read (Lib/ipaddress.py, _IPv4Constants/_IPv6Constants); its
    # attributes are networks, addresses or lists of networks, and their
    # names change between releases, so take every value of those types.
    constants = getattr(cls, "_constants", None)
    for value in vars(constants).values() if constants is not None else ():
        for item in value if isinstance(value, list | tuple) else (value,):
            if isinstance(item, ipaddress.IPv4Network | ipaddress.IPv6Network):
                yield item
            elif isinstance(item, ipaddress.IPv4Address | ipaddress.IPv6Address):
                yield ipaddress.ip_network(item)


def _edges(networks: Iterable[_Network]) -> set[int]:
    """The first address of each network and the one just past its end."""
    edges: set[int] = set()
    for net in networks:
        edges.add(int(net.network_address))
        edges.add(int(net.broadcast_address) + 1)
    return edges


def _build_table(edges: set[int], bits: int) -> tuple[list[bytes], list[_Verdict | None]]:
    """Sorted range starts (packed, as inet_pton gives) and each range's verdict.

    ``starts`` omits the first range's start (0), so ``bisect_right(starts,
    packed)`` is directly the index of the range holding ``packed``.
    """
    make = ipaddress.IPv4Address if bits == _V4_BITS else ipaddress.IPv6Address
    bounds = sorted(edge for edge in edges | {0, 1 << bits} if 0 <= edge <= 1 << bits)
    starts: list[bytes] = []
    verdicts: list[_Verdict | None] = []
    for first, end in pairwise(bounds):
        last = end - 1
        probes = {_verdict(make(n)) for n in (first, (first + last) // 2, last)}
        verdicts.append(probes.pop() if len(probes) == 1 else None)
        if first:
            starts.append(first.to_bytes(bits // 8, "big"))
    return starts, verdicts


def _v6_edges(v4_edges: set[int]) -> set[int]:
    edges = _edges(_constant_networks(ipaddress.IPv6Address))
    edges |= _edges(net for net in NETWORKS if net.version == 6)
    # is_unspecified and is_loopback compare the integer (_ip == 0, == 1)
    # rather than consult a constant.
    edges |= {0, 1, 2}
    for prefix, shift in _EMBEDDED_V4:
        edges |= {prefix | (edge << shift) for edge in v4_edges}
    return edges


_V4_EDGES = _edges(_constant_networks(ipaddress.IPv4Address))
_V4_EDGES |= _edges(net for net in NETWORKS if net.version == 4)
_V4_STARTS, _V4_VERDICTS = _build_table(_V4_EDGES, _V4_BITS)
_V6_STARTS, _V6_VERDICTS = _build_table(_v6_edges(_V4_EDGES), _V6_BITS)

# Below ::1:0:0:0 sit ::/96 and ::ffff:0:0/96, the only ranges where glibc's
# inet_ntop writes a dotted IPv4 tail ("::ffff:1.2.3.4", "::1.2.3.4") and
# ipaddress writes hextets ("::102:304"; "::ffff:102:304" before 3.13).
_LOW_V6_END = (1 << 48).to_bytes(16, "big")


# Python 3.13 writes IPv4-mapped addresses with a dotted tail
# ("::ffff:1.2.3.4", gh-87799); 3.11 and 3.12 write hextets ("::ffff:102:304").
_MAPPED_DOTTED = str(ipaddress.IPv6Address(_MAPPED_PREFIX | 0x01020304)) == "::ffff:1.2.3.4"


def _low_v6_text(packed: bytes, mapped_dotted: bool = _MAPPED_DOTTED) -> str:
    """Text for an address under ::1:0:0:0, as this Python's ipaddress writes it."""
    n = int.from_bytes(packed, "big")
    high, low = n >> 16 & 0xFFFF, n & 0xFFFF
    if n >> 32 == 0xFFFF:
        # Five leading zero hextets always make the longest run.
        if mapped_dotted:
            return "::ffff:" + socket.inet_ntop(socket.AF_INET, packed[12:])
        return f"::ffff:{high:x}:{low:x}"
    if n >> 32 == 0:
        if high:
            return f"::{high:x}:{low:x}"
        return f"::{low:x}" if low else "::"
    return socket.inet_ntop(socket.AF_INET6, packed)


def _low_v6_text_agrees() -> bool:
    """Whether ``_low_v6_text`` writes what this Python's ipaddress writes."""
    # str() of IPv4-mapped addresses differs between Python releases
    # (gh-87799 moved to a dotted tail); rather than guess at each release's
    # format, check, and leave the range to the slow path on a mismatch.
    return all(_low_v6_text(n.to_bytes(16, "big")) == str(ipaddress.IPv6Address(n)) for n in _low_v6_probes())


# An address under ::1:0:0:0 is three hextets, top:high:low. Its text depends
# on which branch of _low_v6_text it takes (top 0, top 0xffff, any other top)
# and on how many hex digits each hextet has (0 to 4): the probes take every
# such shape once, each hextet at the largest value of its digit count.
_HEXTET_SHAPES = (0, 0xF, 0xFF, 0xFFF, 0xFFFF)
_TOP_SHAPES = (0, 0xF, 0xFF, 0xFFF, 0xFFFE, 0xFFFF)


def _low_v6_probes() -> list[int]:
    """One address of every shape of text under ::1:0:0:0 (150 of them)."""
    return [top << 32 | high << 16 | low for top in _TOP_SHAPES for high in _HEXTET_SHAPES for low in _HEXTET_SHAPES]


_LOW_V6_TEXT_AGREES = _low_v6_text_agrees()

# Forms ipaddress refuses, each of which some inet_pton implementation takes
# (BSD and old glibc allow "::00001"; inet_aton-style parsers take "1.2.3",
# "0x1.1.1.1" and octal "010.1.1.1", the last being bpo-36384).
_REFUSED = (
    "010.1.1.1",
    "1.2.3",
    "1",
    "0x1.1.1.1",
    " 1.2.3.4",
    "1.2.3.4 ",
    "1.2.3.256",
    "::00001",
    "::ffff:01.2.3.4",
    "::1.2.3",
    "1:2:3:4:5:6:7:8:9",
    "1::2::3",
    ":1::",
    "1::%",
)


def _inet_pton_is_strict() -> bool:
    """Whether this libc's inet_pton refuses what ipaddress refuses, as glibc does."""
    for text in _REFUSED:
        family = socket.AF_INET6 if ":" in text else socket.AF_INET
        try:
            socket.inet_pton(family, text)
        except OSError:
            continue
        return False
    return True


def _constants_found() -> bool:
    """Whether this Python's ipaddress still keeps its networks where ``_constant_networks`` looks.

    ``_constants`` is private: a release that renames or removes it would
    leave the tables cut only at classify's own networks, and a range could
    then hide a network ipaddress treats differently. So the fast path needs
    each family's constants to name at least its private networks
    (tests/unit/test_fastip_tables.py checks the full set for each Python).
    """
    found = set(_constant_networks(ipaddress.IPv4Address)) | set(_constant_networks(ipaddress.IPv6Address))
    return {ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("fc00::/7")} <= found


# On a libc that accepts more than glibc, or a Python whose ipaddress keeps
# its networks elsewhere, every address takes the slow path.
_FAST = _inet_pton_is_strict() and _constants_found()

# Bound once: these run for every line.
_inet_pton = socket.inet_pton
_inet_ntop = socket.inet_ntop
_AF_INET = socket.AF_INET
_AF_INET6 = socket.AF_INET6


def fast_parse_classify(text: str) -> ParsedAddress:
    """``slow_parse_classify(text)``, without ipaddress objects where possible.

    Raises the slow path's ValueError, message and all, for invalid text.
    """
    parsed = _decide(text) if _FAST else None
    return parsed if parsed is not None else slow_parse_classify(text)


def _decide(text: str) -> ParsedAddress | None:
    """The fast path's answer, or None to leave the text to the slow path."""
    # The same dispatch as parse_address: a colon means IPv6.
    v6 = ":" in text
    try:
        packed = _inet_pton(_AF_INET6 if v6 else _AF_INET, text)
    except (OSError, ValueError):
        # OSError: refused (a zone id, or invalid text). ValueError: a NUL or
        # a lone surrogate, which never reaches the C call.
        return None
    if v6:
        verdict = _V6_VERDICTS[bisect_right(_V6_STARTS, packed)]
        if packed >= _LOW_V6_END:
            ip = _inet_ntop(_AF_INET6, packed)
        elif _LOW_V6_TEXT_AGREES:
            ip = _low_v6_text(packed)
        else:
            return None
    else:
        verdict = _V4_VERDICTS[bisect_right(_V4_STARTS, packed)]
        # inet_pton took only a canonical dotted quad, so text is normalized.
        ip = text
    return None if verdict is None else (ip, *verdict)
