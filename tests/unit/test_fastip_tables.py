"""The fast parser's tables and checks, rebuilt now and held against ipaddress itself.

fastip builds its range tables and probes this libc and Python once, at
import. These tests run the same builders again and check what they produce
against ``ipaddress`` and the ``classify`` stage, so a builder that went wrong
shows here and not only in addresses that happen to hit the wrong range.
"""

from __future__ import annotations

import ipaddress
from itertools import pairwise

import pytest

from ipspool import fastip
from ipspool.classify import classify

V4 = ipaddress.IPv4Address
V6 = ipaddress.IPv6Address


def slow_verdict(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> tuple[int, str, bool]:
    fields = classify(address)
    return (fields["version"], fields["class"], fields["global"])


def test_the_constant_networks_are_every_network_ipaddress_consults() -> None:
    """Private, reserved, link-local... and single addresses (as /32 or /128) are all found."""
    v4 = set(fastip._constant_networks(V4))
    assert ipaddress.ip_network("10.0.0.0/8") in v4
    assert ipaddress.ip_network("169.254.0.0/16") in v4
    assert ipaddress.ip_network("255.255.255.255/32") in v4  # a single address in the constants
    v6 = set(fastip._constant_networks(V6))
    assert ipaddress.ip_network("fc00::/7") in v6 and ipaddress.ip_network("fe80::/10") in v6
    assert all(isinstance(n, ipaddress.IPv4Network) for n in v4)

    class NoConstants:
        pass

    assert list(fastip._constant_networks(NoConstants)) == []  # type: ignore[arg-type]


def test_the_edges_of_a_network_are_its_first_address_and_the_one_after_it() -> None:
    """10.0.0.0/8 contributes 10.0.0.0 and 11.0.0.0."""
    nets = [ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("192.168.1.7/32")]
    assert fastip._edges(nets) == {int(V4("10.0.0.0")), int(V4("11.0.0.0")), int(V4("192.168.1.7")),
                                   int(V4("192.168.1.8"))}


@pytest.mark.parametrize("bits", [32, 128])
def test_a_rebuilt_table_gives_each_range_the_verdict_of_its_edges(bits: int) -> None:
    """Starts are sorted, omit 0, and every range agrees with classify at its first and last address."""
    v4_edges = fastip._edges(fastip._constant_networks(V4)) | fastip._edges(
        n for n in fastip.NETWORKS if n.version == 4)
    edges = v4_edges if bits == 32 else fastip._v6_edges(v4_edges)
    starts, verdicts = fastip._build_table(edges, bits)
    assert (starts, verdicts) == ((fastip._V4_STARTS, fastip._V4_VERDICTS) if bits == 32
                                  else (fastip._V6_STARTS, fastip._V6_VERDICTS))
    numbers = [int.from_bytes(s, "big") for s in starts]
    assert numbers == sorted(set(numbers)) and numbers[0] > 0
    assert all(len(s) == bits // 8 for s in starts)
    assert len(verdicts) == len(starts) + 1
    make = V4 if bits == 32 else V6
    bounds = [0, *numbers, 1 << bits]
    for (first, end), verdict in zip(pairwise(bounds), verdicts, strict=True):
        if verdict is not None:
            assert slow_verdict(make(first)) == verdict == slow_verdict(make(end - 1)), make(first)


def test_a_range_whose_ends_disagree_is_left_to_the_slow_path() -> None:
    """A table over one edge-less span mixing classes records None for it."""
    starts, verdicts = fastip._build_table({int(V4("10.0.0.0")), int(V4("11.0.0.0"))}, 32)
    assert starts == [V4("10.0.0.0").packed, V4("11.0.0.0").packed]
    assert verdicts[1] == slow_verdict(V4("10.0.0.0"))
    assert verdicts[0] is None and verdicts[2] is None  # 0.0.0.0 is not 9.255.255.255's class


def test_ipv6_edges_include_the_integer_rules_and_every_embedded_ipv4_edge() -> None:
    """::, ::1 and ::2 are edges, and each IPv4 edge appears mapped, compatible and in 6to4."""
    edges = fastip._v6_edges({int(V4("10.0.0.0"))})
    assert {0, 1, 2} <= edges
    ten = int(V4("10.0.0.0"))
    assert (0xFFFF << 32) | ten in edges
    assert ten in edges
    assert (0x2002 << 112) | (ten << 80) in edges
    assert int(V6("fe80::")) in edges
    assert fastip._edges(n for n in fastip.NETWORKS if n.version == 6) <= fastip._v6_edges(set())


@pytest.mark.parametrize("n", [0, 1, 0xFFFF, 0x10000, 0x1020304, 0xFFFF0000, 0xFFFFFFFF, (0xFFFF << 32) | 0x1020304,
                               (0xFFFF << 32), (1 << 32) | 5, (1 << 47) | 0xABCD])
def test_low_ipv6_text_is_what_ipaddress_writes(n: int) -> None:
    """Under ::1:0:0:0 the text comes from arithmetic, and equals str(IPv6Address)."""
    assert fastip._low_v6_text(n.to_bytes(16, "big")) == str(V6(n))


def test_this_python_and_libc_take_the_fast_path() -> None:
    """On glibc with Python 3.11, 3.12 or 3.13 the checks hold, so the fast path is on (and stays honest)."""
    assert fastip._low_v6_text_agrees() is True
    assert fastip._inet_pton_is_strict() is True
    assert fastip._constants_found() is True
    assert fastip._FAST is True


# Networks every supported Python's ipaddress (3.11 to 3.13) consults for
# is_private, is_reserved, is_link_local, is_multicast or is_loopback,
# written out here rather than read from it.
SPECIAL = ("0.0.0.0/8", "10.0.0.0/8", "127.0.0.0/8", "169.254.0.0/16", "172.16.0.0/12", "192.0.2.0/24",
           "192.168.0.0/16", "198.18.0.0/15", "198.51.100.0/24", "203.0.113.0/24", "224.0.0.0/4", "240.0.0.0/4",
           "255.255.255.255/32", "::1/128", "::/128", "::ffff:0:0/96", "2001:db8::/32", "fc00::/7", "fe80::/10",
           "ff00::/8")


def test_ipaddress_still_keeps_its_networks_where_the_fast_parser_reads_them() -> None:
    """The tables come from the private IPv4Address._constants / IPv6Address._constants: fail loudly if they move.

    A Python whose ipaddress keeps these networks elsewhere would only turn
    the fast path off (``_constants_found``), not give wrong answers; this
    test makes such a release visible instead of silently slow.
    """
    for cls in (V4, V6):
        assert isinstance(getattr(cls, "_constants", None), type), (
            f"{cls.__name__}._constants is gone from this Python's ipaddress: fastip._constant_networks "
            "must read the networks from where this release keeps them")
    found = set(fastip._constant_networks(V4)) | set(fastip._constant_networks(V6))
    missing = [net for net in SPECIAL if ipaddress.ip_network(net) not in found]
    assert not missing, f"ipaddress's constants no longer name {missing}: see fastip._constant_networks"


def test_a_python_that_keeps_its_networks_elsewhere_turns_the_fast_path_off(monkeypatch: pytest.MonkeyPatch) -> None:
    """With nothing found in the constants, _constants_found says so (and _FAST is computed from it)."""
    monkeypatch.setattr(fastip, "_constant_networks", lambda cls: iter(()))
    assert fastip._constants_found() is False


@pytest.mark.parametrize(("dotted", "text"), [(True, "::ffff:1.2.3.4"), (False, "::ffff:102:304")])
def test_mapped_addresses_are_written_as_each_python_release_writes_them(dotted: bool, text: str) -> None:
    """3.13 writes a dotted tail for IPv4-mapped addresses, 3.11 and 3.12 hextets; both are known."""
    packed = ipaddress.IPv6Address("::ffff:1.2.3.4").packed
    assert fastip._low_v6_text(packed, mapped_dotted=dotted) == text
    assert fastip._low_v6_text(ipaddress.IPv6Address("::1.2.3.4").packed, mapped_dotted=dotted) == "::102:304"


@pytest.mark.parametrize(("family", "text"), [(fastip.socket.AF_INET, "1.2.3"), (fastip.socket.AF_INET6, "::00001")])
def test_a_libc_that_accepts_a_refused_form_is_not_strict(
    monkeypatch: pytest.MonkeyPatch, family: int, text: str
) -> None:
    """If inet_pton took e.g. "1.2.3" as IPv4 or "::00001" as IPv6, every address would go the slow way."""
    real = fastip.socket.inet_pton

    def lenient(asked: int, given: str) -> bytes:
        if (asked, given) == (family, text):
            return b"\x00" * (4 if family == fastip.socket.AF_INET else 16)
        return real(asked, given)

    monkeypatch.setattr(fastip.socket, "inet_pton", lenient)
    assert fastip._inet_pton_is_strict() is False


def test_a_python_that_writes_mapped_addresses_differently_is_detected(monkeypatch: pytest.MonkeyPatch) -> None:
    """Should str(IPv6Address) disagree with _low_v6_text on any probe, the low range goes slow."""
    monkeypatch.setattr(fastip, "_low_v6_text", lambda packed: "::")
    assert fastip._low_v6_text_agrees() is False


def _shape(n: int) -> tuple[str, int, int]:
    """Which branch of _low_v6_text an address under ::1:0:0:0 takes, and its hextets' digit counts."""
    top, high, low = n >> 32, n >> 16 & 0xFFFF, n & 0xFFFF
    kind = {0: "zero", 0xFFFF: "mapped"}.get(top, f"other, {len(f'{top:x}')} digits")
    return kind, len(f"{high:x}") if high else 0, len(f"{low:x}") if low else 0


def test_the_low_ipv6_check_probes_every_shape_of_text(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each branch of _low_v6_text with hextets of 0 to 4 hex digits is compared with ipaddress once."""
    probed: list[int] = []
    real = fastip._low_v6_text

    def recording(packed: bytes) -> str:
        probed.append(int.from_bytes(packed, "big"))
        return real(packed)
    monkeypatch.setattr(fastip, "_low_v6_text", recording)
    assert fastip._low_v6_text_agrees() is True
    kinds = ["zero", "mapped", *(f"other, {d} digits" for d in range(1, 5))]
    every = {(kind, high, low) for kind in kinds for high in range(5) for low in range(5)}
    assert sorted(_shape(n) for n in probed) == sorted(every)
    assert all(n < 1 << 48 for n in probed)


def test_one_shape_written_differently_is_enough_to_leave_the_low_range_slow(monkeypatch: pytest.MonkeyPatch) -> None:
    """A Python whose ipaddress writes only the last probed shape differently is caught too."""
    last = fastip._low_v6_probes()[-1]
    real = fastip._low_v6_text
    monkeypatch.setattr(fastip, "_low_v6_text",
                        lambda packed: "?" if int.from_bytes(packed, "big") == last else real(packed))
    assert fastip._low_v6_text_agrees() is False
