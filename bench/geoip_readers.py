"""``python -m bench.geoip_readers``: the geoip stage with each MaxMind DB reader, same files, same addresses.

    python -m bench.geoip_readers [--networks N] [--lookups N] [--rounds N]

Builds the ``geoip`` stage (daemon/ipspool/stages/geoip.py) on a City-type
and an ASN database of ``--networks`` networks each (bench/enrich.py, kept
in build/bench-data/), once with each reader in ``READERS`` (maxminddb-rust,
the maxminddb C extension), and calls it on ``--lookups`` unique global IPv4
addresses as ``ipaddress`` objects, as the daemon does. Rounds alternate the
readers (rust, C, rust, C ...) so a burst of load on the shared machine
slows both alike; the figures are the medians of the rounds, the ratio that
of the two medians, and beside it the median of the round-by-round ratios. Before timing, every address's fields are
compared between the readers: the run fails on the first difference.
"""

from __future__ import annotations

import argparse
import ipaddress
import statistics
import sys
import time
from typing import Any

from bench.enrich import geo_dbs
from bench.rdns import unique_addresses
from ipspool.config import parse_config
from ipspool.stages import geoip

__all__ = ["main"]


def stages(networks: int) -> dict[str, geoip.GeoipStage]:
    city, asn = geo_dbs(networks)
    config = parse_config({"geoip": {"country_db": str(city), "asn_db": str(asn)}})
    return {name: geoip.build(config, name) for name in geoip.READERS}


def timed(stage: geoip.GeoipStage, addresses: list[Any]) -> float:
    start = time.perf_counter()
    for address in addresses:
        stage(address)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.geoip_readers", description=__doc__.split("\n\n")[0])
    parser.add_argument("--networks", type=int, default=262_144, help="networks in each database")
    parser.add_argument("--lookups", type=int, default=200_000, help="addresses per round")
    parser.add_argument("--rounds", type=int, default=7, help="rounds per reader (>= 5 for a median)")
    args = parser.parse_args(argv)
    built = stages(args.networks)
    if len(built) < 2:
        print("maxminddb-rust is not installed (a dependency: pip install -e .): one reader only", file=sys.stderr)
    addresses = [ipaddress.ip_address(ip) for ip in unique_addresses(args.lookups, seed=2014)]
    first, *others = built.values()
    for address in addresses:
        want = first(address)
        for stage in others:
            if stage(address) != want:
                raise RuntimeError(f"{address}: readers differ: {want} vs {stage(address)}")
    found = sum(1 for a in addresses if first(a)["country"] is not None)
    runs: dict[str, list[float]] = {name: [] for name in built}
    for rnd in range(args.rounds):
        for name, stage in built.items():
            runs[name].append(args.lookups / timed(stage, addresses))
            print(f"  round {rnd + 1} {name:<15} {runs[name][-1]:>12,.0f} lookups/s", file=sys.stderr, flush=True)
    medians = {name: statistics.median(r) for name, r in runs.items()}
    base = medians["maxminddb"]
    print(f"{args.lookups:,} addresses ({found:,} in the databases), {args.networks:,} networks per database, "
          f"{args.rounds} rounds, identical fields from every reader\n")
    print("| reader | median lookups/s (stage: country + ASN) | min | max | x maxminddb C ext |")
    print("|---|---:|---:|---:|---:|")
    for name, median in medians.items():
        print(f"| {name} | {median:,.0f} | {min(runs[name]):,.0f} | {max(runs[name]):,.0f} | {median / base:.2f} |")
    for name in medians:
        if name != "maxminddb":
            ratios = [a / b for a, b in zip(runs[name], runs["maxminddb"], strict=True)]
            print(f"\n{name} / maxminddb, round by round: median {statistics.median(ratios):.2f}, "
                  f"range {min(ratios):.2f}-{max(ratios):.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
