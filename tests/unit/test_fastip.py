"""The fast parser agrees with parse_address + classify on every input (issue 5).

The reference here is built from the slow path's public pieces directly, not
from ``fastip.slow_parse_classify``, so a mistake there would show too.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterator
from unittest import mock

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from ipspool import fastip
from ipspool.address import parse_address
from ipspool.classify import NETWORKS, classify
from ipspool.fastip import fast_parse_classify

Outcome = tuple[object, ...]

V4_MAX = (1 << 32) - 1
V6_MAX = (1 << 128) - 1
MAPPED = 0xFFFF << 32
SIX_TO_FOUR = 0x2002 << 112

HEX_TEXT = "0123456789abcdefABCDEF:.%/- \t"


def reference(text: str) -> Outcome:
    """What the slow path gives: the four values, or the error's type and message."""
    try:
        address = parse_address(text)
    except ValueError as exc:
        return ("error", type(exc), str(exc))
    fields = classify(address)
    return (str(address), fields["version"], fields["class"], fields["global"])


def fast(text: str) -> Outcome:
    """The fast path's result in the same shape as ``reference``."""
    try:
        return fast_parse_classify(text)
    except ValueError as exc:
        return ("error", type(exc), str(exc))


def assert_agrees(text: str) -> None:
    assert fast(text) == reference(text), text


def special_networks() -> Iterator[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    """Every network this Python's ipaddress and our classify test membership of."""
    for cls in (ipaddress.IPv4Address, ipaddress.IPv6Address):
        for value in vars(cls._constants).values():  # type: ignore[union-attr]
            for item in value if isinstance(value, list) else [value]:
                if isinstance(item, ipaddress.IPv4Network | ipaddress.IPv6Network):
                    yield item
                elif isinstance(item, ipaddress.IPv4Address | ipaddress.IPv6Address):
                    yield ipaddress.ip_network(item)
    yield from NETWORKS


def edge_integers(net: ipaddress.IPv4Network | ipaddress.IPv6Network) -> set[int]:
    """A network's first and last address and the neighbours just outside."""
    top = V4_MAX if net.version == 4 else V6_MAX
    first, last = int(net.network_address), int(net.broadcast_address)
    return {n for n in (first - 1, first, last, last + 1) if 0 <= n <= top}


def v6_texts(n: int) -> list[str]:
    """The ways an IPv6 integer can be written: compressed, exploded, upper case."""
    address = ipaddress.IPv6Address(n)
    return [address.compressed, address.exploded, address.exploded.upper()]


def test_special_networks_found_for_this_python() -> None:
    """The block list the edge tests use is not silently empty."""
    versions = {net.version for net in special_networks()}
    assert versions == {4, 6}
    assert ipaddress.IPv4Network("192.168.0.0/16") in set(special_networks())


def test_every_special_block_edge_agrees() -> None:
    """First, last and just-outside addresses of every special block agree."""
    for net in special_networks():
        for n in edge_integers(net):
            if net.version == 4:
                assert_agrees(str(ipaddress.IPv4Address(n)))
                # The same edges seen through IPv4-mapped and 6to4 addresses.
                assert_agrees(f"::ffff:{ipaddress.IPv4Address(n)}")
                for text in v6_texts(MAPPED | n) + v6_texts(SIX_TO_FOUR | n << 80):
                    assert_agrees(text)
            else:
                for text in v6_texts(n):
                    assert_agrees(text)


def test_fast_path_covers_every_range_on_this_python() -> None:
    """No range of the tables is left to the slow path here, so it stays fast."""
    with mock.patch.object(fastip, "slow_parse_classify", side_effect=AssertionError):
        for net in special_networks():
            for n in edge_integers(net):
                if net.version == 4:
                    fast_parse_classify(str(ipaddress.IPv4Address(n)))
                    fast_parse_classify(str(ipaddress.IPv6Address(MAPPED | n)))
                else:
                    fast_parse_classify(str(ipaddress.IPv6Address(n)))


@given(st.integers(0, V4_MAX))
def test_random_ipv4_integers_agree(n: int) -> None:
    """Any IPv4 address, in its dotted form, agrees."""
    assert_agrees(str(ipaddress.IPv4Address(n)))


@given(st.integers(0, V6_MAX))
@example(0)
@example(1)
@example(0xFFFF)
@example(0x10000)
def test_random_ipv6_integers_agree(n: int) -> None:
    """Any IPv6 address, compressed, exploded or in upper case, agrees."""
    for text in v6_texts(n):
        assert_agrees(text)


@given(
    st.one_of(
        st.integers(0, V4_MAX),
        st.integers(0, V4_MAX).map(lambda n: MAPPED | n),
        st.integers(0, (1 << 48) - 1),
    )
)
def test_low_ipv6_addresses_agree(n: int) -> None:
    """Addresses under ::1:0:0:0, where glibc writes a dotted tail, agree."""
    for text in v6_texts(n):
        assert_agrees(text)


@given(st.integers(0, V4_MAX))
def test_ipv4_mapped_and_compatible_forms_agree(n: int) -> None:
    """::ffff:a.b.c.d, ::a.b.c.d and their hextet spellings agree."""
    dotted = str(ipaddress.IPv4Address(n))
    for text in (
        f"::ffff:{dotted}",
        f"::FFFF:{dotted}",
        f"0:0:0:0:0:ffff:{dotted}",
        f"::{dotted}",
        f"::ffff:{n >> 16:x}:{n & 0xFFFF:x}",
        *v6_texts(MAPPED | n),
    ):
        assert_agrees(text)


@given(st.integers(0, V4_MAX), st.integers(0, (1 << 80) - 1))
def test_6to4_addresses_agree(v4: int, rest: int) -> None:
    """2002::/16 addresses embedding any IPv4 address agree."""
    for text in v6_texts(SIX_TO_FOUR | v4 << 80 | rest):
        assert_agrees(text)


@given(st.integers(0, V6_MAX), st.text(min_size=0, max_size=6))
@example(0xFE80 << 112 | 1, "eth0")
@example(1, "")
@example(1, "a%b")
def test_zone_ids_agree(n: int, zone: str) -> None:
    """Zone ids (fe80::1%eth0), empty or odd ones included, agree."""
    assert_agrees(f"{ipaddress.IPv6Address(n)}%{zone}")


@given(
    st.lists(st.integers(0, 255), min_size=4, max_size=4),
    st.lists(st.integers(0, 2), min_size=4, max_size=4),
)
def test_zero_padded_octets_agree(octets: list[int], pads: list[int]) -> None:
    """Leading zeros in an octet are an error, never octal, in both forms."""
    dotted = ".".join("0" * pad + str(octet) for octet, pad in zip(octets, pads, strict=True))
    assert_agrees(dotted)
    assert_agrees(f"::ffff:{dotted}")


@pytest.mark.parametrize(
    "text", ["010.1.1.1", "1.2.3.01", "00.0.0.0", "::ffff:010.1.1.1", "0001.2.3.4", "::00001"]
)
def test_leading_zeros_are_the_slow_paths_error(text: str) -> None:
    """Leading zeros raise exactly the slow path's ValueError."""
    outcome = fast(text)
    assert outcome[0] == "error"
    assert outcome == reference(text)


@given(
    st.sampled_from(["1.2.3.4", "::1", "fe80::1%eth0", "::ffff:1.2.3.4", "2001:db8::"]),
    st.sampled_from([" ", "\t", "\n", "\r", "\x0b", "\x0c", "\xa0", "\u2003", "\u3000", ""]),
    st.sampled_from([" ", "\t", "\n", "\x0c", "\xa0", "\u2028", ""]),
)
def test_whitespace_agrees(address: str, before: str, after: str) -> None:
    """ASCII and Unicode whitespace around an address are refused alike."""
    assert_agrees(before + address + after)


@pytest.mark.parametrize(
    "text",
    [
        "",
        ".",
        ":",
        "::",
        ":::",
        "1.2.3",
        "1.2.3.4.5",
        "1.2.3.4.",
        "0x1.1.1.1",
        "1",
        "1.2.3.256",
        "1.2.3.4/32",
        "::/0",
        "10.0.0.1-10.0.0.9",
        "1:2:3:4:5:6:7:8:9",
        "1:2:3:4:5:6:7::",
        "::2:3:4:5:6:7:8",
        "1:2:3:4:5:6:1.2.3.4",
        "1:2:3:4:5:6:7:1.2.3.4",
        "1::2::3",
        ":1::",
        "1::%",
        "1.2.3.4::",
        "::1.2.3.4:1",
        "\u0661.2.3.4",
        "\uff11.2.3.4",
        "1.2.3.4\x00",
        "::1\x00",
        "\udcff::1",
        "1.2.3.\udcff",
    ],
)
def test_edge_case_text_agrees(text: str) -> None:
    """Hand-picked forms where inet_pton and ipaddress could differ agree."""
    assert_agrees(text)


@given(st.text(alphabet=HEX_TEXT, max_size=45))
@settings(max_examples=3000)
def test_random_address_like_text_agrees(text: str) -> None:
    """Random text over the characters of addresses agrees."""
    assert_agrees(text)


@given(st.text(max_size=45))
def test_random_text_agrees(text: str) -> None:
    """Random Unicode text agrees."""
    assert_agrees(text)


@given(st.binary(max_size=45), st.sampled_from(["latin-1", "surrogateescape", "replace"]))
def test_random_bytes_decoded_agree(data: bytes, how: str) -> None:
    """Random bytes, decoded as latin-1 or as UTF-8 keeping bad bytes, agree."""
    text = data.decode("latin-1") if how == "latin-1" else data.decode("utf-8", how)
    assert_agrees(text)


@given(st.text(alphabet=HEX_TEXT, max_size=45))
@settings(max_examples=3000)
def test_inet_pton_accepts_nothing_ipaddress_refuses(text: str) -> None:
    """What inet_pton accepts, ipaddress accepts with the same value."""
    family = socket.AF_INET6 if ":" in text else socket.AF_INET
    try:
        packed = socket.inet_pton(family, text)
    except (OSError, ValueError):
        return
    assert parse_address(text).packed == packed


def test_zone_id_is_accepted_by_ipaddress_only() -> None:
    """The known difference: inet_pton refuses zone ids that ipaddress accepts."""
    with pytest.raises(OSError, match="illegal IP address"):
        socket.inet_pton(socket.AF_INET6, "fe80::1%eth0")
    assert fast_parse_classify("fe80::1%eth0") == ("fe80::1%eth0", 6, "link_local", False)
