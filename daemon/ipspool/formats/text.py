"""Addresses in free text: prose, logs, e-mail, defanged indicators.

What users expect, and what is taken:

- ``192.0.2.1``, also defanged as ``192.0.2[.]1``, ``192.0.2(.)1``, and IPv6
  with ``[:]`` for ``:``; the record's ``input`` is the address as read
  (refanged), ``found`` the text as written when it differs;
- an address inside a larger token: ``1.2.3.4:8080``, ``[2001:db8::1]:443``,
  ``host-1.2.3.4``, ``(1.2.3.4)``, ``ip=1.2.3.4,``, a sentence's final dot.

What only looks like an address is not taken: a version number (``1.2.3``,
``1.2.3.4.5``), an address glued to letters or digits (``v1.2.3.4``,
``1.2.3.4a``), a network (``10.0.0.0/8``: use format "networks"), a time
(``10:20:30``) or a MAC address, which the strict parser refuses, and
octets over 255 or with leading zeros.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["Found", "find_addresses"]

_DOT = r"(?:\.|\[\.\]|\(\.\))"
# No lookbehind: a pattern that starts with a character class is scanned
# for in C, one that starts with a lookbehind is tried at every position
# (three times slower). What may precede a match is checked in _glued.
_V4 = re.compile(
    rf"\d{{1,3}}{_DOT}\d{{1,3}}{_DOT}\d{{1,3}}{_DOT}\d{{1,3}}"
    rf"(?!\w|{_DOT}\d|/\d)"             # not followed by more of a word or a dotted run, or a prefix length
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
_AFTER_V6 = re.compile(r"[\w:]|/\d")
_REFANG = str.maketrans({"[": "", "]": "", "(": "", ")": ""})


@dataclass(frozen=True, slots=True)
class Found:
    position: int   # 1-based character column of the first character
    shown: str      # as written
    address: str    # with defanging undone


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


def find_addresses(line: str) -> list[Found]:
    """Candidate addresses of one line in order (the caller parses each strictly)."""
    found: list[Found] = []
    v6_spans: list[tuple[int, int]] = []
    if ":" in line:
        for m in _V6.finditer(line):
            shown = m.group()
            if shown.count(":") + shown.count("[:]") < 2 or _glued_v6(line, m.start()) or \
                    _AFTER_V6.match(line, m.end()):
                continue
            address = _refang(shown)
            if any(c in "0123456789abcdefABCDEF" for c in address):
                found.append(Found(m.start() + 1, shown, address))
                v6_spans.append(m.span())
    if "." in line:
        # An IPv4 tail of an IPv6 address (::ffff:1.2.3.4) is part of that address.
        found += [Found(m.start() + 1, m.group(), _refang(m.group())) for m in _V4.finditer(line)
                  if not _glued_v4(line, m.start()) and not any(start <= m.start() < end for start, end in v6_spans)]
    if len(found) > 1:
        found.sort(key=lambda f: f.position)
    return found
