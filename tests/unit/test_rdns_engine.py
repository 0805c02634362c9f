"""The rdns engine, batch resolution and the shared disk cache, against ``SlowDns`` on loopback.

Every query goes to a server this test starts on 127.0.0.1.
"""

from __future__ import annotations

import ipaddress
import itertools
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from ipspool.config import parse_config
from ipspool.fastip import ParsedAddress, fast_parse_classify
from ipspool.pipeline import load_pipeline, process_chunk
from ipspool.stages import dnswire
from ipspool.stages.rdns import RdnsStage, build
from ipspool.stages.rdnscache import DiskCache
from tests.support.slow_dns import SlowDns, expected_ptr


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def state(tmp_path: Path) -> Path:
    return tmp_path / "state"


def make_stage(server: SlowDns, state: Path | None = None, clock: Any = None, **rdns: Any) -> RdnsStage:
    settings = {"nameservers": [server.nameserver], "timeout": 0.5, "retries": 0, **rdns}
    if state is not None:
        settings["cache_dir"] = str(state)
    else:
        settings.setdefault("disk_cache_size", 0)
    config = parse_config({"rdns": settings, "workers": {"processes": 1}})
    return build(config, clock or time.time)


def parsed(*ips: str) -> list[ParsedAddress]:
    return [fast_parse_classify(ip) for ip in ips]


def addresses(count: int, base: str = "10.0.0.0") -> list[str]:
    start = int(ipaddress.IPv4Address(base))
    return [str(ipaddress.IPv4Address(start + i)) for i in range(count)]


@pytest.fixture
def stages() -> Iterator[list[RdnsStage]]:
    made: list[RdnsStage] = []
    yield made
    for stage in made:
        stage.close()


def keep(stages: list[RdnsStage], stage: RdnsStage) -> RdnsStage:
    stages.append(stage)
    return stage


# --- statuses ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "status"),
    [("ptr", "ok"), ("nxdomain", "nxdomain"), ("nodata", "nxdomain"), ("servfail", "servfail"),
     ("refused", "error"), ("silent", "timeout")],
)
def test_each_answer_kind_gives_its_status(mode: str, status: str, stages: list[RdnsStage]) -> None:
    """PTR, NXDOMAIN, NODATA, SERVFAIL, REFUSED and silence map to the five statuses."""
    with SlowDns(mode=mode) as server:
        stage = keep(stages, make_stage(server, timeout=0.2))
        for ip in ("192.0.2.7", "2001:db8::7"):
            ptr = expected_ptr(ip) if status == "ok" else None
            assert stage(ipaddress.ip_address(ip)) == {"ptr": ptr, "rdns": status}


def test_negative_answer_lives_for_the_soa_minimum(stages: list[RdnsStage]) -> None:
    """The engine reads the SOA's MINIMUM from a negative answer (RFC 2308)."""
    clock = FakeClock()
    with SlowDns(mode="nxdomain", negative_minimum=20) as server:
        stage = keep(stages, make_stage(server, clock=clock, negative_ttl=300.0))
        stage(ipaddress.ip_address("192.0.2.1"))
        clock.now += 19
        stage(ipaddress.ip_address("192.0.2.1"))
        assert server.count == 1
        clock.now += 2
        stage(ipaddress.ip_address("192.0.2.1"))
        assert server.count == 2


def test_truncated_udp_answer_is_asked_again_over_tcp(stages: list[RdnsStage]) -> None:
    """A reply with TC set is repeated over TCP, whose answer is used."""
    with SlowDns(mode="truncate") as server:
        stage = keep(stages, make_stage(server))
        assert stage(ipaddress.ip_address("192.0.2.9")) == {"ptr": expected_ptr("192.0.2.9"), "rdns": "ok"}
        assert server.tcp_count == 1


def test_forged_replies_are_ignored_and_the_real_answer_used(stages: list[RdnsStage]) -> None:
    """A reply with the wrong id, and one with our id for another question, are both ignored."""
    with SlowDns(mode="spoof", delay=0.05) as server:
        stage = keep(stages, make_stage(server))
        ips = addresses(50)
        stage.prefetch(parsed(*ips))
        for ip in ips:
            assert stage(ipaddress.ip_address(ip))["ptr"] == expected_ptr(ip)


def test_forged_replies_alone_are_never_accepted(stages: list[RdnsStage]) -> None:
    """Only forged replies: the lookup times out rather than take one."""
    with SlowDns(mode="spoof_only") as server:
        stage = keep(stages, make_stage(server, timeout=0.2))
        assert stage(ipaddress.ip_address("192.0.2.3")) == {"ptr": None, "rdns": "timeout"}


def test_forward_confirm_goes_through_the_engine(stages: list[RdnsStage]) -> None:
    """The A/AAAA questions of forward_confirm are batched through the same engine."""
    with SlowDns() as server:
        stage = keep(stages, make_stage(server, forward_confirm=True))
        stage.prefetch(parsed("192.0.2.5", "2001:db8::5"))
        assert server.count == 4
        for ip in ("192.0.2.5", "2001:db8::5"):
            assert stage(ipaddress.ip_address(ip)) == {"ptr": expected_ptr(ip), "rdns": "ok", "ptr_confirmed": True}
        assert server.count == 4


# --- concurrency, politeness ---------------------------------------------------


def test_a_batch_is_resolved_concurrently(stages: list[RdnsStage]) -> None:
    """500 lookups against a 100 ms server take a few round trips, not 500."""
    with SlowDns(delay=0.1) as server:
        stage = keep(stages, make_stage(server))
        ips = addresses(500)
        started = time.monotonic()
        counts = stage.prefetch(parsed(*ips))
        took = time.monotonic() - started
        assert counts == Counter({"rdns.lookups": 500, "rdns.cache_hits": 0})
        assert took < 2.0
        assert [stage(ipaddress.ip_address(ip))["ptr"] for ip in ips] == [expected_ptr(ip) for ip in ips]
        assert server.count == 500


def test_max_in_flight_caps_outstanding_queries(stages: list[RdnsStage]) -> None:
    """With at most 10 queries outstanding, 100 answers of 50 ms take at least 10 round trips."""
    with SlowDns(delay=0.05) as server:
        stage = keep(stages, make_stage(server, max_in_flight=10))
        started = time.monotonic()
        stage.prefetch(parsed(*addresses(100)))
        assert time.monotonic() - started >= 0.45
        assert server.count == 100


def test_rate_limit_is_obeyed_at_the_server(stages: list[RdnsStage]) -> None:
    """rate_limit = 100 queries/s: the server never sees much more than 100 in any second."""
    with SlowDns() as server:
        stage = keep(stages, make_stage(server, rate_limit=100.0))
        started = time.monotonic()
        stage.prefetch(parsed(*addresses(250)))
        took = time.monotonic() - started
        assert server.count == 250
        assert took >= 2.0
        # The bucket holds 2 tokens at most (its burst); the rest of the margin
        # is the server thread's own delays on a busy machine, which bunch
        # arrival times together.
        assert server.max_qps(1.0) <= 115


def test_rate_limit_is_shared_among_worker_processes(stages: list[RdnsStage]) -> None:
    """Each of N workers sends rate_limit / N queries a second."""
    with SlowDns() as server:
        config = parse_config({"rdns": {"nameservers": [server.nameserver], "rate_limit": 1000.0,
                                        "disk_cache_size": 0}, "workers": {"processes": 4}})
        stage = keep(stages, build(config))
        assert stage.engine.rate_limit == 250.0


def test_lookups_are_spread_over_the_nameservers(stages: list[RdnsStage]) -> None:
    """Each lookup starts at the next nameserver: two servers share the load."""
    with SlowDns() as first, SlowDns() as second:
        settings = {"nameservers": [first.nameserver, second.nameserver], "disk_cache_size": 0}
        stage = keep(stages, build(parse_config({"rdns": settings})))
        stage.prefetch(parsed(*addresses(100)))
        assert first.count == 50 and second.count == 50


def test_identical_addresses_in_a_batch_make_one_query(stages: list[RdnsStage]) -> None:
    """N copies of one address in a batch: one query."""
    with SlowDns(delay=0.05) as server:
        stage = keep(stages, make_stage(server, cache_size=0))
        stage.prefetch(parsed(*["192.0.2.44"] * 100))
        assert server.count == 1


def test_concurrent_lookups_of_one_address_share_a_query(stages: list[RdnsStage]) -> None:
    """16 threads asking for the same address at once (no cache at all): one query."""
    with SlowDns(delay=0.2) as server:
        stage = keep(stages, make_stage(server, cache_size=0))
        barrier = threading.Barrier(16)

        def ask(_: int) -> Any:
            barrier.wait()
            return stage(ipaddress.ip_address("192.0.2.45"))

        with ThreadPoolExecutor(16) as pool:
            results = list(pool.map(ask, range(16)))
        assert {r["ptr"] for r in results} == {expected_ptr("192.0.2.45")}
        assert server.count == 1
        assert stage.engine.coalesced == 15


def test_query_ids_are_unpredictable(stages: list[RdnsStage]) -> None:
    """Query ids are random: 200 queries do not count up, and few ids repeat."""
    ids: list[int] = []
    with SlowDns() as server:
        original = server.answer

        def spy(query: bytes, tcp: bool = False) -> list[bytes]:
            ids.append(query[0] << 8 | query[1])
            return original(query, tcp)

        server.answer = spy  # type: ignore[method-assign]
        stage = keep(stages, make_stage(server))
        stage.prefetch(parsed(*addresses(200)))
    assert len(set(ids)) > 190
    assert sum(1 for a, b in itertools.pairwise(ids) if b == a + 1) < 5


# --- the batch hook in the pipeline -----------------------------------------------


def test_process_chunk_prefetches_and_keeps_input_order(state: Path) -> None:
    """Through the pure heart: every record in input order with its own PTR, counts per file."""
    with SlowDns(delay=0.01) as server:
        config = parse_config({"pipeline": {"stages": ["classify", "rdns"]},
                               "rdns": {"nameservers": [server.nameserver], "cache_dir": str(state)}})
        pipeline = load_pipeline(config)
        try:
            ips = [*addresses(300), "2001:db8::1", "not an address", "10.0.0.1"]
            out, counts = process_chunk(("\n".join(ips) + "\n").encode(), 1, pipeline)
        finally:
            pipeline.close()
    import orjson

    records = [orjson.loads(line) for line in out.splitlines()]
    assert [r["line"] for r in records] == list(range(1, len(ips) + 1))
    for ip, record in zip(ips, records, strict=True):
        if ip == "not an address":
            assert "error" in record
        else:
            assert record["ptr"] == expected_ptr(ip) and record["rdns"] == "ok"
    assert counts["rdns.lookups"] == 301 and counts["rdns.cache_hits"] == 0
    assert server.count == 301


# --- the disk cache -----------------------------------------------------------------


def test_disk_cache_survives_a_restart(state: Path, stages: list[RdnsStage]) -> None:
    """A new stage (a restarted worker) answers from the shared file: no query at all."""
    ips = [*addresses(200), "2001:db8::99"]
    with SlowDns() as server:
        first = make_stage(server, state)
        first.prefetch(parsed(*ips))
        first.close()
        assert server.count == len(ips)
        second = keep(stages, make_stage(server, state))
        counts = second.prefetch(parsed(*ips))
        assert counts["rdns.cache_hits"] == len(ips) and counts["rdns.lookups"] == 0
        assert server.count == len(ips)
        assert second(ipaddress.ip_address("2001:db8::99"))["ptr"] == expected_ptr("2001:db8::99")


def test_disk_cache_keeps_negative_answers_for_their_ttl(state: Path, stages: list[RdnsStage]) -> None:
    """An NXDOMAIN on disk expires with its SOA minimum, across stages."""
    clock = FakeClock()
    with SlowDns(mode="nxdomain", negative_minimum=20) as server:
        first = make_stage(server, state, clock)
        first.prefetch(parsed("192.0.2.1"))
        first.close()  # a worker writes what it holds when it stops
        clock.now += 19
        assert keep(stages, make_stage(server, state, clock)).prefetch(parsed("192.0.2.1"))["rdns.lookups"] == 0
        clock.now += 2
        assert keep(stages, make_stage(server, state, clock)).prefetch(parsed("192.0.2.1"))["rdns.lookups"] == 1
        assert server.count == 2


def test_disk_cache_is_bounded(tmp_path: Path) -> None:
    """Past max_entries the soonest-expiring entries go; the table stays under the bound."""
    cache = DiskCache(tmp_path, 100, time.time)
    for round_ in range(5):
        cache.put_many((f"10.0.{round_}.{i}", "x", "ok", None, 60.0 + round_) for i in range(100))
        assert len(cache) <= 100
    newest = cache.get_many([f"10.0.4.{i}" for i in range(100)])
    assert len(newest) >= 80 and not cache.get_many([f"10.0.0.{i}" for i in range(100)])
    cache.close()


def test_several_writers_share_the_disk_cache(tmp_path: Path) -> None:
    """Two connections (two workers) writing at once lose nothing and raise nothing."""
    caches = [DiskCache(tmp_path, 100_000, time.time) for _ in range(2)]

    def write(index: int) -> None:
        for batch in range(20):
            caches[index].put_many((f"10.{index}.{batch}.{i}", "x", "ok", None, 60.0) for i in range(100))

    with ThreadPoolExecutor(2) as pool:
        list(pool.map(write, range(2)))
    assert len(caches[0]) == 4000
    found = caches[1].get_many([f"10.0.{b}.{i}" for b in range(20) for i in range(100)])
    assert len(found) == 2000
    for cache in caches:
        cache.close()


def test_unwritable_cache_dir_falls_back_to_memory(tmp_path: Path, stages: list[RdnsStage]) -> None:
    """A cache directory that cannot be made: a warning, and lookups still answer."""
    from structlog.testing import capture_logs

    blocker = tmp_path / "file"
    blocker.write_text("")
    with SlowDns() as server:
        stage = keep(stages, make_stage(server, blocker / "state"))
        with capture_logs() as logs:
            assert stage(ipaddress.ip_address("192.0.2.1"))["rdns"] == "ok"
    assert [e["event"] for e in logs] == ["rdns.cache_unavailable"]


# --- wire format --------------------------------------------------------------------


def test_reverse_names_match_dnspython() -> None:
    """The hand-built PTR question names are those of dns.reversename."""
    import dns.reversename

    for ip in ("192.0.2.1", "10.20.30.40", "2001:db8::1", "::ffff:192.0.2.1"):
        version = ipaddress.ip_address(ip).version
        ours = dnswire.reverse_name(ip, version)
        assert ours == dns.reversename.from_address(ip).to_wire()


def test_a_rate_limited_batch_reports_progress_but_a_silent_wait_does_not(stages: list[RdnsStage]) -> None:
    """The worker's heartbeat: beat while queries keep going out, not while nothing moves."""
    beats: list[float] = []
    with SlowDns() as server:
        stage = keep(stages, make_stage(server, rate_limit=20.0))
        stage.prefetch(parsed(*addresses(50)), lambda: beats.append(time.monotonic()))
        assert len(beats) >= 1
    beats.clear()
    with SlowDns(mode="silent") as silent:
        stage = keep(stages, make_stage(silent, timeout=2.5))
        stage.prefetch(parsed("192.0.2.1"), lambda: beats.append(time.monotonic()))
        assert len(beats) <= 1  # the send, then 2.5 s of nothing
