"""DNS wire format for the rdns engine: one question out, one answer in.

Only what reverse and forward lookups need, by hand and cheaply: a query
for one name and type (RFC 1035 section 4), and the reading of a reply into
the five outcomes of the rdns stage. A reply is accepted only if its id, its
QR bit and its question section match what was asked; anything else is not
an answer to us (``parse_reply`` returns None) and is ignored, never used.
CNAME chains in the answer are followed (RFC 2317 classless delegation), and
a negative answer's TTL is read from the SOA in the authority section
(RFC 2308 section 5).
"""

from __future__ import annotations

import re
import socket
import struct
from dataclasses import dataclass
from typing import Final

__all__ = [
    "AAAA",
    "PTR",
    "A",
    "Reply",
    "WireError",
    "encode_name",
    "parse_reply",
    "query_bytes",
    "question_bytes",
    "reverse_name",
]

A: Final = 1
CNAME: Final = 5
SOA: Final = 6
PTR: Final = 12
AAAA: Final = 28
_IN: Final = 1

NOERROR: Final = 0
FORMERR: Final = 1
SERVFAIL: Final = 2
NXDOMAIN: Final = 3

_HEADER = struct.Struct("!HHHHHH")
_RR = struct.Struct("!HHIH")
_TYPE_CLASS = struct.Struct("!HH")
_QUERY_FLAGS: Final = 0x0100  # a standard query, recursion desired
_QR: Final = 0x8000
_TC: Final = 0x0200
_MAX_CHAIN: Final = 16
_SAFE_LABEL = re.compile(rb"[A-Za-z0-9_*-]+")
_ESCAPED = frozenset(b'"().;\\@$')


class WireError(ValueError):
    """A reply to our question that cannot be read."""


@dataclass(frozen=True, slots=True)
class Reply:
    """What a matching reply says: its rcode, whether it was truncated, and
    the values of the asked type at the end of any CNAME chain."""

    rcode: int
    truncated: bool
    values: tuple[str, ...] = ()
    ttl: float = 0.0            # smallest TTL along the chain, when values
    negative_ttl: float | None = None  # min(SOA TTL, SOA MINIMUM), when an SOA came


def encode_name(text: str) -> bytes:
    """A domain name in wire form, lower-cased (names compare without case)."""
    out = bytearray()
    for label in text.rstrip(".").split("."):
        raw = label.lower().encode("ascii")
        if not 0 < len(raw) < 64:
            raise ValueError(f"bad label in {text!r}")
        out.append(len(raw))
        out += raw
    out.append(0)
    if len(out) > 255:
        raise ValueError(f"name too long: {text!r}")
    return bytes(out)


_V4_SUFFIX = b"\x07in-addr\x04arpa\x00"
_V6_SUFFIX = b"\x03ip6\x04arpa\x00"
_V4_MAPPED = b"\0" * 10 + b"\xff\xff"
_NIBBLE = [b"\x01" + f"{n:x}".encode() for n in range(16)]
_OCTET = [bytes([len(str(n))]) + str(n).encode() for n in range(256)]


def reverse_name(ip: str, version: int) -> bytes:
    """The wire name of an address's PTR question (in-addr.arpa or ip6.arpa)."""
    if version == 4:
        packed = socket.inet_pton(socket.AF_INET, ip)
        return b"".join(_OCTET[octet] for octet in reversed(packed)) + _V4_SUFFIX
    packed = socket.inet_pton(socket.AF_INET6, ip)
    if packed[:12] == _V4_MAPPED:
        # As dns.reversename does (and the stage did): an IPv4-mapped
        # address is asked about under in-addr.arpa.
        return b"".join(_OCTET[octet] for octet in reversed(packed[12:])) + _V4_SUFFIX
    parts = []
    for octet in reversed(packed):
        parts.append(_NIBBLE[octet & 15])
        parts.append(_NIBBLE[octet >> 4])
    return b"".join(parts) + _V6_SUFFIX


def question_bytes(name: bytes, rdtype: int) -> bytes:
    """The question section for ``name`` (wire form) and type, class IN."""
    return name + _TYPE_CLASS.pack(rdtype, _IN)


def query_bytes(qid: int, question: bytes) -> bytes:
    """A whole query: header with id ``qid`` and recursion desired, one question."""
    return _HEADER.pack(qid, _QUERY_FLAGS, 1, 0, 0, 0) + question


def _read_name(data: bytes, at: int) -> tuple[bytes, int]:
    """The name at ``at`` as dotted bytes (no final dot; case kept), and the
    offset after it in the record; compression pointers are followed."""
    labels: list[bytes] = []
    end = -1
    hops = 0
    size = len(data)
    while at < size:
        length = data[at]
        if length == 0:
            return b".".join(labels), (end if end >= 0 else at + 1)
        if length < 0x40:
            stop = at + 1 + length
            if stop > size:
                raise WireError("label runs past the end")
            labels.append(data[at + 1:stop])
            at = stop
            continue
        if length < 0xC0 or at + 1 >= size:
            raise WireError("unknown label type or truncated pointer")
        if end < 0:
            end = at + 2
        hops += 1
        if hops > 64:
            raise WireError("compression loop")
        at = ((length & 0x3F) << 8) | data[at + 1]
    raise WireError("name runs past the end")


def _label_text(label: bytes) -> str:
    if _SAFE_LABEL.fullmatch(label):
        return label.decode("ascii")
    out = []
    for byte in label:
        if byte in _ESCAPED:
            out.append("\\" + chr(byte))
        elif 0x20 < byte < 0x7F:
            out.append(chr(byte))
        else:
            out.append(f"\\{byte:03d}")
    return "".join(out)


def _name_text(dotted: bytes) -> str:
    return ".".join(_label_text(label) for label in dotted.split(b".")) if dotted else "."


def parse_reply(data: bytes, qid: int, question: bytes) -> Reply | None:  # noqa: PLR0911, PLR0912
    """The reply, if ``data`` answers query ``qid`` with ``question``; None if not ours.

    Raises WireError for a reply with our id that cannot be read.
    """
    if len(data) < 2 or (data[0] << 8 | data[1]) != qid:
        return None
    if len(data) < _HEADER.size:
        raise WireError(f"reply of {len(data)} bytes")
    _, flags, qdcount, ancount, nscount, _ = _HEADER.unpack_from(data)
    if not flags & _QR:
        return None  # a query, not a reply
    rcode = flags & 0xF
    truncated = bool(flags & _TC)
    end = _HEADER.size + len(question)
    if qdcount != 1 or data[_HEADER.size:end].lower() != question:
        if qdcount == 0 and rcode not in (NOERROR, NXDOMAIN) and not ancount:
            # FORMERR, REFUSED and the like may come without the question.
            return Reply(rcode, truncated)
        return None  # someone else's question: not an answer to us
    if truncated or rcode not in (NOERROR, NXDOMAIN):
        return Reply(rcode, truncated)
    if rcode == NOERROR and ancount and not nscount:
        fast = _simple_answer(data, end, ancount, question)
        if fast is not None:
            return fast
    rrsets: dict[tuple[bytes, int], tuple[list[bytes | str], int]] = {}
    at = end
    for _ in range(ancount):
        at = _read_rr(data, at, rrsets)
    negative: float | None = None
    for _ in range(nscount):
        name_end = _read_name(data, at)[1]
        rdtype, _cls, soa_ttl, length = _unpack_rr(data, name_end)
        start = name_end + _RR.size
        if rdtype == SOA:
            if length < 22 or start + length > len(data):
                raise WireError("short SOA")
            minimum = struct.unpack_from("!I", data, start + length - 4)[0]
            negative = float(min(soa_ttl, minimum))
        at = start + length
    if rcode == NXDOMAIN:
        return Reply(rcode, False, (), 0.0, negative)
    values, ttl = _follow(rrsets, question)
    return Reply(rcode, False, values, ttl, negative)


_SAFE_NAME = re.compile(rb"[A-Za-z0-9_*-]+(?:\.[A-Za-z0-9_*-]+)*")
_POINTER_TO_QUESTION = b"\xc0\x0c"


def _simple_answer(data: bytes, at: int, ancount: int, question: bytes) -> Reply | None:
    """The common reply read fast: every answer record is of the asked type and
    owned by the question's name through a pointer to it (offset 12). None:
    anything else (a CNAME, another owner), for the general reader."""
    rdtype = question[-4] << 8 | question[-3]
    values: list[str] = []
    ttl = 0x7FFFFFFF
    size = len(data)
    for _ in range(ancount):
        if data[at:at + 2] != _POINTER_TO_QUESTION or at + 12 > size:
            return None
        rr_type, _cls, rr_ttl, length = _RR.unpack_from(data, at + 2)
        start = at + 12
        at = start + length
        if rr_type != rdtype or at > size:
            return None
        ttl = min(ttl, rr_ttl & 0x7FFFFFFF)
        if rdtype == PTR:
            dotted, _ = _read_name(data, start)
            values.append(dotted.decode("ascii") if _SAFE_NAME.fullmatch(dotted) else _name_text(dotted))
        elif rdtype == A and length == 4:
            values.append(socket.inet_ntop(socket.AF_INET, data[start:at]))
        elif rdtype == AAAA and length == 16:
            values.append(socket.inet_ntop(socket.AF_INET6, data[start:at]))
        else:
            return None
    if rdtype == PTR:
        values.sort()
    return Reply(NOERROR, False, tuple(values), float(ttl), None)


def _unpack_rr(data: bytes, at: int) -> tuple[int, int, int, int]:
    if at + _RR.size > len(data):
        raise WireError("record header runs past the end")
    rdtype, rdclass, ttl, length = _RR.unpack_from(data, at)
    return rdtype, rdclass, ttl & 0x7FFFFFFF, length


def _read_rr(data: bytes, at: int, rrsets: dict[tuple[bytes, int], tuple[list[bytes | str], int]]) -> int:
    owner, at = _read_name(data, at)
    rdtype, _cls, ttl, length = _unpack_rr(data, at)
    start = at + _RR.size
    stop = start + length
    if stop > len(data):
        raise WireError("record data runs past the end")
    value: bytes | str
    if rdtype in (PTR, CNAME):
        value = _read_name(data, start)[0]
    elif rdtype == A and length == 4:
        value = socket.inet_ntop(socket.AF_INET, data[start:stop])
    elif rdtype == AAAA and length == 16:
        value = socket.inet_ntop(socket.AF_INET6, data[start:stop])
    else:
        return stop
    key = (owner.lower(), rdtype)
    values, old_ttl = rrsets.get(key, ([], ttl))
    values.append(value)
    rrsets[key] = (values, min(old_ttl, ttl))
    return stop


def _follow(
    rrsets: dict[tuple[bytes, int], tuple[list[bytes | str], int]], question: bytes
) -> tuple[tuple[str, ...], float]:
    """The asked type's values at the end of the CNAME chain, and the chain's smallest TTL."""
    rdtype = _TYPE_CLASS.unpack_from(question, len(question) - 4)[0]
    dotted, _ = _read_name(question, 0)
    name = dotted.lower()
    ttl: float | None = None
    for _ in range(_MAX_CHAIN):
        found = rrsets.get((name, rdtype))
        if found is not None:
            values, rr_ttl = found
            ttl = rr_ttl if ttl is None else min(ttl, rr_ttl)
            if rdtype == PTR:
                names = sorted(_name_text(v) for v in values if isinstance(v, bytes))
                return tuple(names), float(ttl)
            return tuple(v for v in values if isinstance(v, str)), float(ttl)
        alias = rrsets.get((name, CNAME))
        if alias is None:
            break
        target, rr_ttl = alias
        ttl = rr_ttl if ttl is None else min(ttl, rr_ttl)
        first = target[0]
        assert isinstance(first, bytes)
        name = first.lower()
    return (), 0.0
