"""Networks and ranges, one a line: ``10.0.0.0/8``, ``192.0.2.1-192.0.2.9``, ``192.0.2.0 255.255.255.0``.

Each network becomes one record: its prefix, how many addresses it holds,
its class (the class of its first and last address, or ``mixed`` when they
differ) and, with the ``lists`` stage, the lists that hold all of it
(``contained_in``) and those that hold only part of it (``overlaps``). A
range that is not one CIDR block is cut into the fewest blocks that cover
it exactly, one record each. A bare address is an ordinary address record.
With ``expand_cap``, a network of at most that many addresses is followed
by one address record per address (each carrying its ``network``).
"""

from __future__ import annotations

import ipaddress
from collections import Counter
from typing import Any

from ipspool.fastip import fast_parse_classify
from ipspool.formats.records import address_record, error_fields
from ipspool.pipeline import Pipeline
from ipspool.protocol import Alert

__all__ = ["Network", "line_records", "network_record", "parse_networks"]

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
# orjson writes integers up to 2**64 - 1; an IPv6 network of /64 or wider
# holds more addresses than that, and its count is written as a string.
_MAX_JSON_INT = (1 << 64) - 1


def parse_networks(text: str) -> list[Network] | None:
    """The networks a line names (None: it is a bare address); ValueError says why it is neither."""
    parts = text.split()
    if len(parts) == 2 and "/" not in text and "-" not in text:  # address and netmask
        return [ipaddress.ip_network(f"{parts[0]}/{parts[1]}")]
    if len(parts) > 1 and "-" not in text:
        raise ValueError("expected one network, range or address a line")
    if "/" in text:
        return [ipaddress.ip_network(text.replace(" ", ""))]
    if "-" in text:
        first_text, _, last_text = text.partition("-")
        first = ipaddress.ip_address(first_text.strip())
        last = ipaddress.ip_address(last_text.strip())
        if first.version != last.version:
            raise ValueError("a range's ends must both be IPv4 or both IPv6")
        if int(last) < int(first):
            raise ValueError(f"the range ends ({last}) before it starts ({first})")
        return list(ipaddress.summarize_address_range(first, last))
    return None


def _class(network: Network) -> str:
    first = fast_parse_classify(str(network.network_address))[2]
    last = fast_parse_classify(str(network.broadcast_address))[2]
    return first if first == last else "mixed"


def _count(network: Network) -> int | str:
    n = network.num_addresses
    return n if n <= _MAX_JSON_INT else str(n)


def network_record(where: dict[str, Any], text: str, network: Network, pipeline: Pipeline) -> dict[str, Any]:
    """``where`` (``line`` first, then a position) completed for the network ``text`` names."""
    record: dict[str, Any] = {
        **where, "input": text, "network": str(network), "version": network.version,
        "prefix": network.prefixlen, "addresses": _count(network), "class": _class(network),
    }
    for stage in pipeline.stages:
        overlap = getattr(stage, "overlap", None)
        if callable(overlap):
            within, partly = overlap(network.version, int(network.network_address),
                                     int(network.broadcast_address))
            record["contained_in"] = within
            record["overlaps"] = partly
    return record


def line_records(line_no: int, text: str, expand_cap: int, pipeline: Pipeline, counts: Counter[str],
                 alerts: list[Alert] | None) -> list[dict[str, Any]]:
    """The records of one non-blank line of a networks file."""
    try:
        found = parse_networks(text)
    except ValueError as exc:
        counts["invalid"] += 1
        return [error_fields({"line": line_no}, text, f"not a network, range or address: {exc}")]
    if found is None:
        return [address_record({"line": line_no}, text, pipeline, counts, alerts)]
    out = []
    for network in found:
        counts["networks"] += 1
        out.append(network_record({"line": line_no}, text, network, pipeline))
        if 0 < network.num_addresses <= expand_cap:
            for address in network:
                out.append(address_record({"line": line_no, "network": str(network)}, str(address),
                                          pipeline, counts, alerts))
    return out
