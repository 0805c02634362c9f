"""``make demo`` / ``python -m ipspool.tools.demo``: the whole loop on a demo spool.

Creates ./demo (a spool, a CIDR list, two small MaxMind DB files built on
the spot), starts the real daemon, submits a sample file the way a producer
would, prints a summary of the results, and stops the daemon cleanly.
Nothing leaves the machine: rDNS is off unless you configure a resolver.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from ipspool.config import load_config
from ipspool.submit import submit_bytes

__all__ = ["main"]

# Demo geography: real country codes, documentation AS numbers (RFC 5398).
_GEO = [
    ("198.51.100.0/24", "DE", 64500, "Demo Hosting GmbH"),
    ("203.0.113.0/24", "US", 64501, "Demo Cloud Inc"),
    ("45.0.0.0/8", "BR", 64502, "Demo Telecom SA"),
    ("81.0.0.0/8", "FR", 64503, "Demo Reseau SARL"),
    ("2001:db8::/32", "JP", 64504, "Demo Net KK"),
]
_LISTED = ["203.0.113.0/25", "45.33.0.0/16", "2001:db8:bad::/48"]


def _sample(rng: random.Random, n: int) -> list[str]:
    lines = ["# sample export: firewall denies, honeypot hits, a few broken lines"]
    for i in range(n):
        roll = rng.random()
        if i % 97 == 13:
            lines.append(rng.choice(["not-an-ip", "010.1.2.3", "10.0.0.0/8", "999.1.1.1", "host.example"]))
        elif roll < 0.25:
            lines.append(f"45.33.{rng.randrange(256)}.{rng.randrange(1, 255)}")
        elif roll < 0.45:
            lines.append(f"81.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(1, 255)}")
        elif roll < 0.6:
            lines.append(f"203.0.113.{rng.randrange(1, 255)}")
        elif roll < 0.7:
            lines.append(f"2001:db8:{rng.choice(['bad', 'cafe'])}::{rng.randrange(1, 65535):x}")
        elif roll < 0.85:
            lines.append(f"10.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(1, 255)}")
        else:
            lines.append(rng.choice(["127.0.0.1", "::1", "169.254.10.1", "100.64.1.1", "224.0.0.251", "fe80::1"]))
    return lines


def _build_mmdb(base: Path) -> tuple[str, str]:
    """Country and ASN databases with the demo data (mmdb-writer, a test extra)."""
    try:
        from mmdb_writer import MMDBWriter
        from netaddr import IPSet
    except ImportError:
        return "", ""
    country = MMDBWriter(ip_version=6, database_type="GeoLite2-Country", ipv4_compatible=True)
    asn = MMDBWriter(ip_version=6, database_type="GeoLite2-ASN", ipv4_compatible=True)
    for net, cc, number, org in _GEO:
        country.insert_network(IPSet([net]), {"country": {"iso_code": cc}})
        asn.insert_network(IPSet([net]), {"autonomous_system_number": number, "autonomous_system_organization": org})
    country_path, asn_path = base / "demo-country.mmdb", base / "demo-asn.mmdb"
    country.to_db_file(str(country_path))
    asn.to_db_file(str(asn_path))
    return str(country_path), str(asn_path)


def _write_config(base: Path, country_db: str, asn_db: str) -> Path:
    stages = ["classify", "lists"] + (["geoip"] if country_db else [])
    lists = base / "lists"
    lists.mkdir(exist_ok=True)
    drop = "".join(f"{net} ; demo-sbl-{i}\n" for i, net in enumerate(_LISTED))
    (lists / "drop.txt").write_text("; demo DROP list\n" + drop)
    (lists / "customers.txt").write_text("# demo customer ranges\n81.0.0.0/8\n")
    config = base / "ipspool.toml"
    config.write_text(
        f'[spool]\ndir = "{base / "spool"}"\n\n'
        "[workers]\nprocesses = 2\nthreads = 4\nchunk_bytes = 65536\n\n"
        f"[pipeline]\nstages = {json.dumps(stages)}\n\n"
        f'[log]\nlevel = "info"\nformat = "json"\nfile = "{base / "daemon.log"}"\n\n'
        f'[[lists]]\nname = "drop"\npath = "{lists / "drop.txt"}"\nalert = true\n\n'
        f'[[lists]]\nname = "customers"\npath = "{lists / "customers.txt"}"\nalert = false\n\n'
        f'[geoip]\ncountry_db = "{country_db}"\nasn_db = "{asn_db}"\n\n'
        "[alerts]\nlisted_per_file = 5\n"
    )
    return config


def _events(log: Path) -> list[dict[str, Any]]:
    if not log.exists():
        return []
    return [json.loads(line) for line in log.read_bytes().splitlines() if line.startswith(b"{")]


def _wait(predicate: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise SystemExit(f"demo: timed out waiting for {what}")


def _summary(records: list[dict[str, Any]], events: list[dict[str, Any]]) -> str:
    classes = Counter(r.get("class", "error") for r in records)
    listed = Counter(name for r in records for name in r.get("lists", []))
    countries = Counter(r["country"] for r in records if r.get("country"))
    asns = Counter(f"AS{r['asn']} {r.get('as_org') or ''}".strip() for r in records if r.get("asn"))
    errors = [r for r in records if "error" in r]
    alerts = [e for e in events if e["event"] == "ip.listed"]
    suppressed = sum(e.get("suppressed", 0) for e in events if e["event"] == "ip.listed.suppressed")
    out = [
        f"records: {len(records)} ({len(records) - len(errors)} addresses, {len(errors)} errors)",
        "classes: " + ", ".join(f"{k} {v}" for k, v in classes.most_common()),
        "lists:   " + (", ".join(f"{k} {v}" for k, v in listed.most_common()) or "none"),
        "country: " + (", ".join(f"{k} {v}" for k, v in countries.most_common()) or "(geoip off)"),
        "ASN:     " + (", ".join(f"{k} ({v})" for k, v in asns.most_common(3)) or "(geoip off)"),
        f"alerts:  {len(alerts)} ip.listed warnings logged, {suppressed} more suppressed",
        "errors, for example:",
        *(f"  line {r['line']}: {r['input']!r}: {r['error']}" for r in errors[:3]),
        "a record:",
        "  " + json.dumps(next((r for r in records if r.get("lists")), records[0])),
    ]
    return "\n".join(out)


def _files_done(config_path: Path) -> int:
    out = subprocess.run([sys.executable, "-m", "ipspool", "status", "--json", "--config", str(config_path)],
                         capture_output=True, text=True, check=False)
    return int(json.loads(out.stdout)["totals"].get("files_done", 0)) if out.returncode == 0 else 0


def main() -> int:
    base = Path(os.environ.get("IPSPOOL_DEMO_DIR", "demo")).absolute()
    base.mkdir(exist_ok=True)
    log = base / "daemon.log"
    log.unlink(missing_ok=True)
    country_db, asn_db = _build_mmdb(base)
    config_path = _write_config(base, country_db, asn_db)
    print(f"demo: spool {base / 'spool'}, config {config_path}")
    proc = subprocess.Popen([sys.executable, "-m", "ipspool", "run", "--config", str(config_path)],
                            stdout=subprocess.DEVNULL)
    try:
        _wait(lambda: any(e["event"] == "daemon.ready" for e in _events(log)) or proc.poll() is not None,
              60, "the daemon to be ready")
        if proc.poll() is not None:
            print(log.read_text() if log.exists() else "", file=sys.stderr)
            raise SystemExit(f"demo: the daemon exited with {proc.returncode}")
        config = load_config(config_path)
        sample = "\n".join(_sample(random.Random(7), 3000)) + "\n"  # noqa: S311 - sample data, not secrets
        r, w = os.pipe()
        os.write(w, sample.encode())
        os.close(w)
        started = time.monotonic()
        name = submit_bytes(config, r, "demo-sample.txt")
        os.close(r)
        result = config.results_dir / f"{name}.jsonl"
        _wait(result.exists, 60, f"{result}")
        took = time.monotonic() - started
        records = [json.loads(line) for line in result.read_bytes().splitlines()]
        _wait(lambda: _files_done(config_path) >= 1, 10, "the counters to be published")
        print(f"demo: submitted incoming/{name}; result {result} in {took * 1000:.0f} ms\n")
        print(_summary(records, _events(log)))
        status = subprocess.run([sys.executable, "-m", "ipspool", "status", "--config", str(config_path)],
                                capture_output=True, text=True, check=False)
        print("\n$ ipspool status\n" + status.stdout.rstrip())
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        code = proc.wait(60)
    print(f"\ndemo: daemon stopped (exit {code}); logs in {log}")
    return 0 if code == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
