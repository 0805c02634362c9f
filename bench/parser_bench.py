"""Per-address cost of parse + classify: ipaddress (slow path) against fastip.

Not a test: run it by hand to check issue 5's target (fast path >= 2x faster).

    python -m bench.parser_bench [--count 1000000] [--runs 5]   (from the repository root)

Both sides do what one record needs: parse the text, the normalized string,
version, class and ``global``. The inputs are a fixed-seed mix (see MIX).
"""

from __future__ import annotations

import argparse
import ipaddress
import random
import statistics
import time
from collections.abc import Callable

from bench.inputs import v4, v4_special, v6_global, v6_special
from ipspool.address import parse_address
from ipspool.classify import classify
from ipspool.fastip import fast_parse_classify


def _v4_mapped(rng: random.Random) -> str:
    return f"::ffff:{ipaddress.IPv4Address(rng.getrandbits(32))}"


def _zone_id(rng: random.Random) -> str:
    return f"fe80::{rng.getrandbits(16):x}%eth0"


def _invalid(rng: random.Random) -> str:
    return rng.choice(("010.1.1.1", "1.2.3", "hello", "1.2.3.256", "::1::"))


# (share of the inputs, what they are, how to make one)
MIX: tuple[tuple[float, str, Callable[[random.Random], str]], ...] = (
    (0.55, "random IPv4", v4),
    (0.10, "IPv4 in 10/8, 192.168/16, 100.64/10, 127/8", v4_special),
    (0.20, "random global unicast IPv6 (2000::/3), compressed", v6_global),
    (0.05, "IPv6 link-local, unique local, multicast", v6_special),
    (0.05, "IPv4-mapped ::ffff:a.b.c.d", _v4_mapped),
    (0.03, "IPv6 with a zone id (fe80::x%eth0)", _zone_id),
    (0.02, "invalid (leading zeros, three octets, words)", _invalid),
)


def make_inputs(count: int, seed: int = 5) -> list[str]:
    rng = random.Random(seed)
    makers = rng.choices([maker for _, _, maker in MIX], [share for share, _, _ in MIX], k=count)
    return [make(rng) for make in makers]


def slow(text: str) -> tuple[str, int, str, bool]:
    """What process_lines did before: parse_address, str() and the classify stage."""
    address = parse_address(text)
    fields = classify(address)
    return (str(address), fields["version"], fields["class"], fields["global"])


def _time_one(parse: Callable[[str], object], inputs: list[str]) -> float:
    """Microseconds per address for one pass over the inputs."""
    start = time.perf_counter()
    for text in inputs:
        # Not contextlib.suppress: its per-call cost would blur the figures.
        try:
            parse(text)
        except ValueError:
            pass
    return (time.perf_counter() - start) / len(inputs) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()

    inputs = make_inputs(args.count)
    mismatches = sum(
        1
        for text in inputs[:100_000]
        if _outcome(slow, text) != _outcome(fast_parse_classify, text)
    )
    assert mismatches == 0, f"{mismatches} inputs differ between the paths"

    slow_runs: list[float] = []
    fast_runs: list[float] = []
    for _ in range(args.runs):  # interleaved, so drift in the machine hits both
        slow_runs.append(_time_one(slow, inputs))
        fast_runs.append(_time_one(fast_parse_classify, inputs))
    slow_us, fast_us = statistics.median(slow_runs), statistics.median(fast_runs)
    print(f"{args.count} addresses, median of {args.runs} runs; mix:")
    for share, what, _ in MIX:
        print(f"  {share:4.0%} {what}")
    print(f"ipaddress + classify: {slow_us:.3f} us/address  runs {_rounded(slow_runs)}")
    print(f"fastip:               {fast_us:.3f} us/address  runs {_rounded(fast_runs)}")
    print(f"speed-up:             {slow_us / fast_us:.2f}x")


def _rounded(runs: list[float]) -> list[float]:
    return [round(run, 3) for run in runs]


def _outcome(parse: Callable[[str], object], text: str) -> object:
    try:
        return parse(text)
    except ValueError as exc:
        return (type(exc), str(exc))


if __name__ == "__main__":
    main()
