"""The rdns stage against real DNS servers on loopback (issue 6).

Answers come from dnsmasq (tests skip if it is not installed); SERVFAIL,
REFUSED, garbage, silence and SOA-carrying negative answers come from
``dns_server.Responder``. Time is injected, so TTL tests never sleep.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import dns.message
import dns.rcode
import pytest
from structlog.testing import capture_logs

from ipspool.config import ConfigError, parse_config
from ipspool.pipeline import load_pipeline
from ipspool.stages import rdns
from ipspool.stages.rdns import DnsCache, Nameserver, RdnsStage, build, parse_nameserver
from tests.support.dns_server import DNSMASQ_MISSING, Dnsmasq, Responder, dnsmasq_binary, reply

RECORDS = (
    "host-record=host10.example.test,192.0.2.10,2001:db8::10",
    "ptr-record=11.2.0.192.in-addr.arpa,liar.example.test",
    "host-record=liar.example.test,192.0.2.99",
    "ptr-record=12.2.0.192.in-addr.arpa,ghost.example.test",
    "ptr-record=13.2.0.192.in-addr.arpa,b.example.test",
    "ptr-record=13.2.0.192.in-addr.arpa,a.example.test",
)
TTL = 300


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def dnsmasq(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dnsmasq]:
    if dnsmasq_binary() is None:
        pytest.skip(DNSMASQ_MISSING)
    with Dnsmasq(tmp_path_factory.mktemp("dnsmasq"), RECORDS, ttl=TTL) as server:
        yield server


def make_stage(*nameservers: str, clock: FakeClock | None = None, **rdns: Any) -> RdnsStage:
    # The on-disk cache shared by workers has tests of its own (test_rdns_engine.py).
    settings = {"nameservers": list(nameservers), "timeout": 0.5, "retries": 0, "disk_cache_size": 0, **rdns}
    config = parse_config({"rdns": settings, "pipeline": {"stages": ["rdns"]}})
    return build(config, clock or FakeClock())


def ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    return ipaddress.ip_address(text)


def ptr_answer(target: str, ttl: int = 60) -> Any:
    def handler(query: dns.message.Message) -> dns.message.Message:
        name = query.question[0].name.to_text()
        return reply(query, answer=[f"{name} {ttl} IN PTR {target}"])

    return handler


SOA = "example.test. 3600 IN SOA ns.example.test. admin.example.test. 1 7200 900 86400 {minimum}"


# --- answers from dnsmasq ----------------------------------------------------


def test_ipv4_ptr_is_returned_without_trailing_dot(dnsmasq: Dnsmasq) -> None:
    """A PTR answer gives its name without the final dot and rdns ok."""
    stage = make_stage(dnsmasq.nameserver)
    assert stage(ip("192.0.2.10")) == {"ptr": "host10.example.test", "rdns": "ok"}


def test_ipv6_ptr_is_looked_up_under_ip6_arpa(dnsmasq: Dnsmasq) -> None:
    """IPv6 addresses are reversed into ip6.arpa nibbles and resolve too."""
    stage = make_stage(dnsmasq.nameserver)
    assert stage(ip("2001:db8::10")) == {"ptr": "host10.example.test", "rdns": "ok"}


def test_address_without_ptr_is_nxdomain_with_null_ptr(dnsmasq: Dnsmasq) -> None:
    """An address nobody named gives ptr null and rdns nxdomain."""
    stage = make_stage(dnsmasq.nameserver)
    assert stage(ip("192.0.2.200")) == {"ptr": None, "rdns": "nxdomain"}


def test_several_ptr_records_give_the_first_in_sorted_order(dnsmasq: Dnsmasq) -> None:
    """With two PTR names the result is stable: the lower one sorts first."""
    stage = make_stage(dnsmasq.nameserver)
    assert stage(ip("192.0.2.13"))["ptr"] == "a.example.test"


def test_forward_confirm_true_when_name_resolves_back(dnsmasq: Dnsmasq) -> None:
    """ptr_confirmed is true when the PTR name's A record holds the address."""
    stage = make_stage(dnsmasq.nameserver, forward_confirm=True)
    assert stage(ip("192.0.2.10")) == {
        "ptr": "host10.example.test",
        "rdns": "ok",
        "ptr_confirmed": True,
    }
    assert stage(ip("2001:db8::10"))["ptr_confirmed"] is True


def test_forward_confirm_false_when_name_points_elsewhere(dnsmasq: Dnsmasq) -> None:
    """A PTR name whose A record is another address is not confirmed."""
    stage = make_stage(dnsmasq.nameserver, forward_confirm=True)
    fields = stage(ip("192.0.2.11"))
    assert fields == {"ptr": "liar.example.test", "rdns": "ok", "ptr_confirmed": False}


def test_forward_confirm_false_when_name_does_not_exist(dnsmasq: Dnsmasq) -> None:
    """A PTR name with no A record at all is not confirmed."""
    stage = make_stage(dnsmasq.nameserver, forward_confirm=True)
    assert stage(ip("192.0.2.12"))["ptr_confirmed"] is False


def test_forward_confirm_false_when_there_is_no_ptr(dnsmasq: Dnsmasq) -> None:
    """Without a PTR name there is nothing to confirm: false, ptr null."""
    stage = make_stage(dnsmasq.nameserver, forward_confirm=True)
    assert stage(ip("192.0.2.200")) == {"ptr": None, "rdns": "nxdomain", "ptr_confirmed": False}


def test_ptr_confirmed_absent_when_forward_confirm_is_off(dnsmasq: Dnsmasq) -> None:
    """The ptr_confirmed field exists only when rdns.forward_confirm is set."""
    stage = make_stage(dnsmasq.nameserver)
    assert "ptr_confirmed" not in stage(ip("192.0.2.10"))


def test_next_nameserver_answers_when_first_is_silent(dnsmasq: Dnsmasq) -> None:
    """A silent first server costs one timeout, then the second answers."""
    with Responder(lambda query: None) as silent:
        stage = make_stage(silent.nameserver, dnsmasq.nameserver, timeout=0.2)
        assert stage(ip("192.0.2.10"))["rdns"] == "ok"
        assert silent.wait_count(1) == 1


def test_concurrent_lookups_from_a_thread_pool_all_answer(dnsmasq: Dnsmasq) -> None:
    """Sixteen threads sharing one stage and cache all get correct answers."""
    stage = make_stage(dnsmasq.nameserver, cache_size=8)
    addresses = [ip("192.0.2.10"), ip("192.0.2.200"), ip("2001:db8::10"), ip("192.0.2.13")]
    expected = {address: dict(make_stage(dnsmasq.nameserver)(address)) for address in addresses}
    work = addresses * 50
    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(stage, work))
    assert [dict(result) for result in results] == [expected[address] for address in work]


# --- failures ------------------------------------------------------------------


def test_silent_server_times_out_after_configured_retries() -> None:
    """No reply: rdns timeout, ptr null, after exactly 1 + retries queries."""
    with Responder(lambda query: None) as silent:
        stage = make_stage(silent.nameserver, timeout=0.1, retries=2)
        assert stage(ip("192.0.2.1")) == {"ptr": None, "rdns": "timeout"}
        assert silent.wait_count(3) == 3


def test_servfail_answer_is_reported_as_servfail() -> None:
    """A SERVFAIL reply gives rdns servfail, and is not retried at that server."""
    with Responder(lambda query: reply(query, dns.rcode.SERVFAIL)) as server:
        stage = make_stage(server.nameserver, retries=3)
        assert stage(ip("192.0.2.1")) == {"ptr": None, "rdns": "servfail"}
        assert server.count == 1


def test_refused_answer_is_reported_as_error() -> None:
    """REFUSED is neither an answer nor a timeout: rdns error."""
    with Responder(lambda query: reply(query, dns.rcode.REFUSED)) as server:
        stage = make_stage(server.nameserver)
        assert stage(ip("192.0.2.1")) == {"ptr": None, "rdns": "error"}


def test_garbage_reply_is_reported_as_error() -> None:
    """A datagram that is not a DNS message is an error, not an exception."""
    with Responder(lambda query: query.id.to_bytes(2, "big") + b"\xff" * 9) as server:
        stage = make_stage(server.nameserver)
        assert stage(ip("192.0.2.1")) == {"ptr": None, "rdns": "error"}


def test_servfail_wins_over_timeout_when_all_servers_fail() -> None:
    """One server silent, one SERVFAIL: servfail says more, so it is reported."""
    with (
        Responder(lambda query: None) as silent,
        Responder(lambda query: reply(query, dns.rcode.SERVFAIL)) as failing,
    ):
        stage = make_stage(silent.nameserver, failing.nameserver, timeout=0.1)
        assert stage(ip("192.0.2.1"))["rdns"] == "servfail"


def test_unexpected_exception_becomes_error_and_a_log_event(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A bug inside a lookup is contained: rdns error plus rdns.lookup_failed."""
    stage = make_stage("127.0.0.1:9")

    def explode(*args: object) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(stage, "_lookup", explode)
    with capture_logs() as logs:
        assert stage(ip("192.0.2.1")) == {"ptr": None, "rdns": "error"}
    assert [event["event"] for event in logs] == ["rdns.lookup_failed"]
    assert "boom" in logs[0]["error"]


# --- chains and caching --------------------------------------------------------


def test_cname_chain_of_classless_delegation_is_followed() -> None:
    """RFC 2317: a CNAME in in-addr.arpa leading to the PTR is followed."""

    def handler(query: dns.message.Message) -> dns.message.Message:
        return reply(
            query,
            answer=[
                "5.2.0.192.in-addr.arpa. 600 IN CNAME 5.0-25.2.0.192.in-addr.arpa.",
                "5.0-25.2.0.192.in-addr.arpa. 600 IN PTR delegated.example.test.",
            ],
        )

    with Responder(handler) as server:
        stage = make_stage(server.nameserver)
        assert stage(ip("192.0.2.5")) == {"ptr": "delegated.example.test", "rdns": "ok"}


def test_answer_is_cached_until_its_ttl_expires() -> None:
    """A repeated address is answered from cache until the record's TTL passes."""
    clock = FakeClock()
    with Responder(ptr_answer("cached.example.test.", ttl=60)) as server:
        stage = make_stage(server.nameserver, clock=clock)
        for _ in range(5):
            assert stage(ip("192.0.2.1"))["ptr"] == "cached.example.test"
        assert server.count == 1
        clock.now += 59
        stage(ip("192.0.2.1"))
        assert server.count == 1
        clock.now += 2
        stage(ip("192.0.2.1"))
        assert server.count == 2


def test_nxdomain_is_cached_for_the_soa_minimum() -> None:
    """RFC 2308: a negative answer lives min(SOA TTL, SOA minimum) seconds."""
    clock = FakeClock()

    def handler(query: dns.message.Message) -> dns.message.Message:
        return reply(query, dns.rcode.NXDOMAIN, authority=[SOA.format(minimum=20)])

    with Responder(handler) as server:
        stage = make_stage(server.nameserver, clock=clock, negative_ttl=300.0)
        assert stage(ip("192.0.2.1"))["rdns"] == "nxdomain"
        clock.now += 19
        stage(ip("192.0.2.1"))
        assert server.count == 1
        clock.now += 2
        stage(ip("192.0.2.1"))
        assert server.count == 2


def test_negative_ttl_caps_the_soa_minimum_and_applies_without_soa() -> None:
    """rdns.negative_ttl bounds a long SOA minimum and stands in for a missing SOA."""
    for authority in ([SOA.format(minimum=86400)], []):
        clock = FakeClock()

        def handler(query: dns.message.Message, authority: list[str] = authority) -> Any:
            return reply(query, dns.rcode.NXDOMAIN, authority=authority)

        with Responder(handler) as server:
            stage = make_stage(server.nameserver, clock=clock, negative_ttl=10.0)
            stage(ip("192.0.2.1"))
            clock.now += 9
            stage(ip("192.0.2.1"))
            assert server.count == 1
            clock.now += 2
            stage(ip("192.0.2.1"))
            assert server.count == 2


def test_failures_are_cached_briefly() -> None:
    """A timed-out address is not asked again at once (RFC 9520), but later is."""
    clock = FakeClock()
    with Responder(lambda query: None) as silent:
        stage = make_stage(silent.nameserver, clock=clock, timeout=0.1)
        stage(ip("192.0.2.1"))
        stage(ip("192.0.2.1"))
        assert silent.wait_count(1) == 1
        clock.now += 31
        stage(ip("192.0.2.1"))
        assert silent.wait_count(2) == 2


def test_cache_size_zero_disables_caching() -> None:
    """With cache_size 0 every lookup goes to the server."""
    with Responder(ptr_answer("x.example.test.")) as server:
        stage = make_stage(server.nameserver, cache_size=0)
        stage(ip("192.0.2.1"))
        stage(ip("192.0.2.1"))
        assert server.count == 2


def test_cache_evicts_least_recently_used_beyond_its_size() -> None:
    """The cache never holds more than its size; the oldest-used entry goes."""
    cache = DnsCache(2, FakeClock())
    a, b, c = ip("192.0.2.1"), ip("192.0.2.2"), ip("192.0.2.3")
    cache.put(a, {"ptr": "a"}, 60)
    cache.put(b, {"ptr": "b"}, 60)
    assert cache.get(a) == {"ptr": "a"}  # a is now the most recent
    cache.put(c, {"ptr": "c"}, 60)
    assert len(cache) == 2
    assert cache.get(b) is None
    assert cache.get(a) == {"ptr": "a"}


def test_zero_ttl_answer_is_not_cached() -> None:
    """A record with TTL 0 is used once and asked for again next time."""
    with Responder(ptr_answer("x.example.test.", ttl=0)) as server:
        stage = make_stage(server.nameserver)
        stage(ip("192.0.2.1"))
        stage(ip("192.0.2.1"))
        assert server.count == 2


# --- configuration ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("192.0.2.53", Nameserver("192.0.2.53", 53)),
        ("127.0.0.1:5353", Nameserver("127.0.0.1", 5353)),
        ("::1", Nameserver("::1", 53)),
        ("[::1]:5353", Nameserver("::1", 5353)),
        ("[2001:db8::1]", Nameserver("2001:db8::1", 53)),
    ],
)
def test_nameserver_forms_are_parsed(text: str, expected: Nameserver) -> None:
    """addr, addr:port, bare IPv6 and [IPv6]:port are all accepted."""
    assert parse_nameserver(text) == expected


@pytest.mark.parametrize(
    "text", ["dns.example.test", "127.0.0.1:0", "127.0.0.1:65536", "127.0.0.1:", "[::1]x", "1.2.3"]
)
def test_bad_nameserver_is_a_config_error_naming_the_key(text: str) -> None:
    """A bad rdns.nameservers entry fails the build with the key and the value."""
    config = parse_config({"rdns": {"nameservers": ["127.0.0.1", text]}})
    with pytest.raises(ConfigError) as raised:
        build(config)
    assert len(raised.value.problems) == 1
    assert raised.value.problems[0].startswith(f"rdns.nameservers[1]: {text!r}: ")


def test_load_pipeline_reports_bad_nameserver_with_file_and_stage(tmp_path: Path) -> None:
    """check-config's path: the problem names the config file, stage and key."""
    config = parse_config(
        {"pipeline": {"stages": ["rdns"]}, "rdns": {"nameservers": ["resolver.test:53"]}}
    )
    with pytest.raises(ConfigError) as raised:
        load_pipeline(config, "/etc/ipspool.toml")
    message = str(raised.value)
    assert message.startswith("/etc/ipspool.toml: pipeline.stages[0] (rdns): rdns.nameservers[0]")
    assert "not an IP address" in message


def test_empty_nameservers_use_the_system_resolver_configuration(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No nameservers configured: those of resolv.conf are used, port 53."""
    resolv_conf = tmp_path / "resolv.conf"
    resolv_conf.write_text("search example.test\nnameserver 127.0.0.53\nnameserver ::1\n")
    monkeypatch.setattr(rdns, "RESOLV_CONF", str(resolv_conf))
    assert make_stage().nameservers == (Nameserver("127.0.0.53", 53), Nameserver("::1", 53))


def test_empty_nameservers_and_empty_resolv_conf_is_a_config_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With nowhere to send queries the build fails, naming the key and file."""
    resolv_conf = tmp_path / "resolv.conf"
    resolv_conf.write_text("# nothing\n")
    monkeypatch.setattr(rdns, "RESOLV_CONF", str(resolv_conf))
    with pytest.raises(ConfigError, match=r"rdns.nameservers is empty and .*resolv.conf"):
        make_stage()
