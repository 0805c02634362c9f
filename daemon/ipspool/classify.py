"""Address classes: a small, documented vocabulary (docs/results.md).

The order of the checks is the contract: the first that matches names the
class. ``global`` is exactly ``ipaddress``'s ``is_global`` for the running
Python, reported beside the class rather than folded into it.
"""

from __future__ import annotations

import ipaddress
from typing import Any

__all__ = ["CLASSES", "NETWORKS", "address_class", "classify", "classify_fields"]

CLASSES = (
    "unspecified",
    "loopback",
    "link_local",
    "multicast",
    "shared",
    "private",
    "reserved",
    "global",
)

_SHARED = ipaddress.IPv4Network("100.64.0.0/10")  # RFC 6598 carrier-grade NAT
_PRIVATE_V4 = (
    ipaddress.IPv4Network("10.0.0.0/8"),
    ipaddress.IPv4Network("172.16.0.0/12"),
    ipaddress.IPv4Network("192.168.0.0/16"),
)  # RFC 1918
_PRIVATE_V6 = ipaddress.IPv6Network("fc00::/7")  # RFC 4193 unique local

# Every network this module tests membership of. The fast parser (fastip.py)
# splits its range tables at their edges, so a network added here must be
# listed here too or the fast path cannot see it.
NETWORKS: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = (
    _SHARED,
    *_PRIVATE_V4,
    _PRIVATE_V6,
)


# One return per class, in check order, reads as the documented list.
def address_class(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:  # noqa: PLR0911
    """The first class in check order that the address belongs to."""
    if address.is_unspecified:
        return "unspecified"
    if address.is_loopback:
        return "loopback"
    if address.is_link_local:
        return "link_local"
    if address.is_multicast:
        return "multicast"
    if isinstance(address, ipaddress.IPv4Address):
        if address in _SHARED:
            return "shared"
        if any(address in net for net in _PRIVATE_V4):
            return "private"
    elif address in _PRIVATE_V6:
        return "private"
    return "global" if address.is_global else "reserved"


def classify(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> dict[str, Any]:
    """The fields the built-in ``classify`` stage adds to a record."""
    return classify_fields(address.version, address_class(address), address.is_global)


def classify_fields(version: int, class_name: str, is_global: bool) -> dict[str, Any]:
    """The ``classify`` fields from values already worked out (by the fast parser)."""
    return {"version": version, "class": class_name, "global": is_global}
