"""What a stage receives: ``Address``, and ``parse_address`` that makes one.

The fast parser (``ipspool.fastip``), the pipeline and the built-in stages
all take their address type and the reference parser from here, so none of
them has to import another for it. A user stage is typed the same way
(docs/stages.md).
"""

from __future__ import annotations

import ipaddress

__all__ = ["Address", "parse_address"]

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def parse_address(text: str) -> Address:
    """Parse one address, with an error message that says what is wrong."""
    if "/" in text:
        raise ValueError("CIDR notation is a network, not an address")
    if ":" in text:
        return ipaddress.IPv6Address(text)
    if "-" in text and text.count(".") > 3:
        raise ValueError("address ranges are not expanded")
    # IPv4Address refuses leading zeros ("010.1.1.1") rather than reading octal.
    return ipaddress.IPv4Address(text)
