"""Addresses in free text: prose, logs, e-mail, defanged indicators.

What users expect, and what is taken:

- ``192.0.2.1``, also defanged as ``192.0.2[.]1``, ``192.0.2(.)1``, and IPv6
  with ``[:]`` for ``:``; the record's ``input`` is the address as read
  (refanged), ``found`` the text as written when it differs;
- an address inside a larger token: ``1.2.3.4:8080``, ``[2001:db8::1]:443``,
  ``host-1.2.3.4``, ``(1.2.3.4)``, ``ip=1.2.3.4,``, a sentence's final dot;
- a network in CIDR notation, ``block 198.51.100.0/24 now``, ``2001:db8::/32``
  (defanged too): one network record, as format "networks" makes it. A ``/``
  followed by anything but a prefix length the address can have (``/33``,
  ``/2026``, ``/024``, ``/x``) is a path, as in a URL: the address alone is
  taken. ``192.0.2.5/24`` (host bits set) is an interface's address written
  with its prefix: the address is taken, ``found`` shows the prefix.

What only looks like an address is not taken: a version number (``1.2.3``,
``1.2.3.4.5``), an address glued to letters or digits (``v1.2.3.4``,
``1.2.3.4a``), a time (``10:20:30``) or a MAC address, which the strict
parser refuses, and octets over 255 or with leading zeros.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import NamedTuple

__all__ = ["Found", "cannot_be_an_address", "find_addresses"]

_DOT = r"(?:\.|\[\.\]|\(\.\))"
# No lookbehind: a pattern that starts with a character class is scanned
# for in C, one that starts with a lookbehind is tried at every position
# (three times slower). What may precede a match is checked in _glued.
_V4 = re.compile(
    rf"\d{{1,3}}{_DOT}\d{{1,3}}{_DOT}\d{{1,3}}{_DOT}\d{{1,3}}"
    rf"(?!\w|{_DOT}\d)"                 # not followed by more of a word or a dotted run
)
_COLON = r"(?::|\[:\])"
# A whole run of hextets, colons and dots, taken possessively and never
# given back: a pattern that could backtrack (or a trailing lookahead that
# fails at the run's end) would try every start inside a long run of
# colons or hex digits, quadratic in the line. What may follow the run is
# checked in find_addresses.
_V6 = re.compile(
    rf"(?:[0-9A-Fa-f]|{_COLON}|\.(?=\d))++"  # hextets, colons, a dotted IPv4 tail
    r"(?:%[0-9A-Za-z_.\-]++)?+"              # a zone id
)
# Every character a _V6 match can hold (a zone id's included). A match with
# a colon lies inside a stretch of these around a colon: only those
# stretches are scanned (a log line's words and numbers are not).
_STRETCH = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz_.-%:[]"
_IN_STRETCH = frozenset(_STRETCH)
_STRETCH_FROM = re.compile(r"[0-9A-Za-z_.\-%:\[\]]*+")
_AFTER_V6 = re.compile(r"[\w:]")
_HEX_DIGIT = re.compile(r"[0-9A-Fa-f]")
# A prefix length: digits that end the token (``/24.`` ends a sentence, ``/24.5`` does not).
_PREFIX = re.compile(rf"/(0|[1-9]\d{{0,2}})(?![\w/]|{_DOT}\d)")
_MAX_PREFIX = {False: 32, True: 128}  # by "is IPv6"
_REFANG = str.maketrans({"[": "", "]": "", "(": "", ")": ""})


class Found(NamedTuple):
    """One candidate (a tuple: made for every address of every line, and cheaper than a frozen dataclass)."""

    position: int   # 1-based character column of the first character
    shown: str      # as written (with its prefix for a network)
    address: str    # with defanging undone, without a prefix
    prefix: int | None = None  # written as a network: address/prefix


def _word(char: str) -> bool:
    return char.isalnum() or char == "_"


def _glued_v4(line: str, at: int) -> bool:
    """The IPv4 match at ``at`` continues a word (v1.2.3.4) or a dotted run (1.2.3.4.5 seen from 2)."""
    if at == 0:
        return False
    before = line[at - 1]
    return _word(before) or (before == "." and at >= 2 and (_word(line[at - 2]) or line[at - 2] in ".-"))


def _glued_v6(line: str, at: int) -> bool:
    return at > 0 and (_word(line[at - 1]) or line[at - 1] in ":.")


def _refang(shown: str) -> str:
    return shown.replace("[.]", ".").replace("(.)", ".").replace("[:]", ":") if "[" in shown or "(" in shown \
        else shown


def _found(line: str, start: int, end: int, v6: bool) -> Found:
    """The candidate at ``line[start:end]``, with the prefix length written after it if there is one."""
    shown = line[start:end]
    if end < len(line) and line[end] == "/":
        prefix = _PREFIX.match(line, end)
        if prefix is not None and int(prefix.group(1)) <= _MAX_PREFIX[v6]:
            return Found(start + 1, line[start:prefix.end()], _refang(shown), int(prefix.group(1)))
    return Found(start + 1, shown, _refang(shown))


def _v6_runs(line: str) -> Iterator[re.Match[str]]:
    """The matches of ``_V6.finditer(line)`` that can be a candidate (two colons, a [:] counting twice), and
    maybe some that cannot (the caller filters), found faster.

    A log line has a dozen runs of hex digits (``Dec``, ``1``, ``Failed``...)
    and few colons: each colon's stretch is scanned from where it begins. The
    character before a stretch cannot be in a match, so ``finditer`` over the
    stretch alone finds the very matches it finds over the whole line.
    """
    pos = 0
    while (colon := line.find(":", pos)) >= 0:
        start = colon
        while start > pos and line[start - 1] in _IN_STRETCH:
            start -= 1
        end = _STRETCH_FROM.match(line, colon).end()  # type: ignore[union-attr]  # * matches empty
        # A candidate needs two colons (find_addresses counts a [:] twice): a
        # stretch with fewer (``sshd[42]:``, ``key:``) has none.
        if line.count(":", start, end) + line.count("[:]", start, end) >= 2:
            for m in _V6.finditer(line, start, end):
                if ":" in m.group():
                    yield m
        pos = end


def cannot_be_an_address(address: str) -> bool:
    """True for an IPv6 candidate the strict parser must refuse, told without asking it: no ``::``, no
    dotted tail and not eight hextets (``10:20:30``, the time on every log line, which it refuses slowly)."""
    return "::" not in address and "." not in address and address.count(":") != 7


def find_addresses(line: str) -> list[Found]:
    """Candidate addresses and networks of one line in order (the caller parses each strictly)."""
    found: list[Found] = []
    v6_spans: list[tuple[int, int]] = []
    if ":" in line:
        for m in _v6_runs(line):
            shown = m.group()
            if shown.count(":") + shown.count("[:]") < 2 or _glued_v6(line, m.start()) or \
                    _AFTER_V6.match(line, m.end()):
                continue
            if _HEX_DIGIT.search(shown):
                found.append(_found(line, m.start(), m.end(), True))
                v6_spans.append(m.span())
    if "." in line:
        # An IPv4 tail of an IPv6 address (::ffff:1.2.3.4) is part of that address.
        for m in _V4.finditer(line):
            at = m.start()
            if not _glued_v4(line, at) and not (v6_spans and any(start <= at < end for start, end in v6_spans)):
                found.append(_found(line, at, m.end(), False))
    if len(found) > 1:
        found.sort(key=lambda f: f.position)
    return found
