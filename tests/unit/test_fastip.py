"""The fast parser agrees with parse_address + classify on every input (issue 5).

The reference here is built from the slow path's public pieces directly, not
from ``fastip.slow_parse_classify``, so a mistake there would show too.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Iterator
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


def decided(text: str) -> Outcome | None:
    """The fast path's own answer (not its fall-back to the slow path), or None when it leaves the text."""
    return fastip._decide(text)


def assert_fast_answer_agrees(text: str) -> None:
    """Whatever the fast path decides by itself is what the slow path says; the rest falls back."""
    answer = decided(text)
    if answer is not None:
        assert answer == reference(text), text
    assert fast(text) == reference(text), text


def share(strategy: st.SearchStrategy[str], holds: Callable[[str], bool], examples: int = 300) -> float:
    """The share of ``examples`` drawn from ``strategy`` for which ``holds`` is true."""
    seen: list[bool] = []

    @settings(max_examples=examples, database=None, deadline=None, derandomize=True)
    @given(strategy)
    def draw(text: str) -> None:
        seen.append(holds(text))

    draw()
    return sum(seen) / len(seen)


# Weighted coins (hypothesis favours the ends of an integer range, so
# ``integers(0, 29) == 0`` would come up far more often than one time in 30).
RARELY = st.sampled_from([False] * 29 + [True])
SOMETIMES = st.sampled_from([False] * 4 + [True])


def _hextet(draw: st.DrawFn) -> str:
    """One to four hex digits in either case; now and then five (too many)."""
    size = 5 if draw(RARELY) else draw(st.integers(1, 4))
    return draw(st.text(alphabet="0123456789abcdefABCDEF", min_size=size, max_size=size))


@st.composite
def dotted_quads(draw: st.DrawFn) -> str:
    """Four octets, now and then zero-padded or out of range, or a part short or long."""
    count = draw(st.sampled_from([4] * 18 + [3, 5]))
    octets = [draw(st.integers(256, 999)) if draw(RARELY) else draw(st.integers(0, 255))
              for _ in range(count)]
    return ".".join(("0" if draw(RARELY) else "") + str(octet) for octet in octets)


@st.composite
def address_shaped(draw: st.DrawFn) -> str:
    """IPv4 and IPv6 text built the way addresses are written, so that most of it is valid.

    IPv6: one to eight hextets of one to five digits in either case, a ``::``
    at any place or none, an optional dotted tail; now and then one character
    of an address inserted anywhere, for near misses.
    """
    if draw(st.booleans()):
        text = draw(dotted_quads())
    else:
        groups = [_hextet(draw) for _ in range(draw(st.integers(1, 8)))]
        if draw(SOMETIMES):
            groups[-1] = draw(dotted_quads())
        cut = draw(st.integers(0, len(groups)))
        if len(groups) < 8 or draw(SOMETIMES):
            text = ":".join(groups[:cut]) + "::" + ":".join(groups[cut:])
        else:
            text = ":".join(groups)
    if draw(SOMETIMES):
        at = draw(st.integers(0, len(text)))
        text = text[:at] + draw(st.sampled_from(HEX_TEXT)) + text[at:]
    return text


@st.composite
def spliced_addresses(draw: st.DrawFn, junk: st.SearchStrategy[str]) -> str:
    """A valid address with ``junk`` put in at some place; half the time the junk is empty."""
    address = draw(st.one_of(st.integers(0, V4_MAX).map(lambda n: str(ipaddress.IPv4Address(n))),
                             st.integers(0, V6_MAX).map(lambda n: str(ipaddress.IPv6Address(n)))))
    extra = draw(st.one_of(st.just(""), junk))
    at = draw(st.integers(0, len(address)))
    return address[:at] + extra + address[at:]


def inet_pton_accepts(text: str) -> bool:
    try:
        socket.inet_pton(socket.AF_INET6 if ":" in text else socket.AF_INET, text)
    except (OSError, ValueError):
        return False
    return True


RANDOM_TEXT = spliced_addresses(st.text(min_size=1, max_size=4))
RANDOM_BYTES_TEXT = spliced_addresses(
    st.tuples(st.binary(min_size=1, max_size=4), st.sampled_from(["latin-1", "surrogateescape", "replace"]))
    .map(lambda pair: pair[0].decode("latin-1") if pair[1] == "latin-1" else pair[0].decode("utf-8", pair[1]))
)


@given(RANDOM_TEXT)
def test_random_text_agrees(text: str) -> None:
    """Addresses with random Unicode text spliced in: what the fast path decides itself agrees."""
    assert_fast_answer_agrees(text)


@given(RANDOM_BYTES_TEXT)
def test_random_bytes_decoded_agree(text: str) -> None:
    """Addresses with random bytes spliced in (decoded latin-1, or UTF-8 keeping bad bytes) agree."""
    assert_fast_answer_agrees(text)


@settings(max_examples=3000)
@given(address_shaped())
def test_random_address_like_text_agrees(text: str) -> None:
    """Address-shaped text, valid or a near miss: the fast path's own answers agree."""
    assert_fast_answer_agrees(text)


@settings(max_examples=3000)
@given(address_shaped())
def test_inet_pton_accepts_nothing_ipaddress_refuses(text: str) -> None:
    """What inet_pton accepts, ipaddress accepts with the same value."""
    family = socket.AF_INET6 if ":" in text else socket.AF_INET
    try:
        packed = socket.inet_pton(family, text)
    except (OSError, ValueError):
        return
    assert parse_address(text).packed == packed


def test_the_generators_reach_the_fast_path_in_most_examples() -> None:
    """The properties above compare the fast path's own answers, not the slow path with itself.

    Address-shaped text is accepted by inet_pton (so the assert of the
    inet_pton property is reached) in most examples, and the fast path
    decides by itself on a good share of the spliced random text too.
    """
    assert share(address_shaped(), inet_pton_accepts) > 0.5
    assert share(address_shaped(), lambda text: decided(text) is not None) > 0.4
    assert share(RANDOM_TEXT, lambda text: decided(text) is not None) > 0.3
    assert share(RANDOM_BYTES_TEXT, lambda text: decided(text) is not None) > 0.3


def test_zone_id_is_accepted_by_ipaddress_only() -> None:
    """The known difference: inet_pton refuses zone ids that ipaddress accepts."""
    with pytest.raises(OSError, match="illegal IP address"):
        socket.inet_pton(socket.AF_INET6, "fe80::1%eth0")
    assert fast_parse_classify("fe80::1%eth0") == ("fe80::1%eth0", 6, "link_local", False)
