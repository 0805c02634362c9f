"""``python -m bench.rdns``: PTR lookups through the real daemon, today's stage against the old one.

    python -m bench.rdns [--latencies 1 10 100] [--repeats 3] [--lines N] [--old-lines N ...] [--out DIR]

For each latency a nameserver on 127.0.0.1 (``tests.support.slow_dns``, in a
process of its own) answers every query after that many milliseconds, with a
PTR name derived from the address. Two daemons run side by side with default
settings but for ``[rdns] nameservers``: one with the ``rdns`` stage, one
with the stage as it was before the engine (``bench.legacy_rdns:rdns``).
Each repeat feeds each daemon a file of addresses it has never seen (cold:
nothing in any cache) and then the same file again (warm). Every record is
checked: the run fails unless each address got its own PTR name.

Figures are lookups a second (one per line: every line is a unique global
IPv4 address), the median of the repeats; the old stage runs on fewer lines
at high latency (it would take minutes otherwise). Nothing is sent anywhere
but the loopback server this script starts.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import orjson

from bench.procstat import cpu_seconds
from bench.systems import DaemonRunner, _bench_env, running_daemon

__all__ = ["main"]

OUT = Path(__file__).resolve().parent / "out"
SYSTEMS = {"old": ("classify", "bench.legacy_rdns:rdns"), "new": ("classify", "rdns")}


@contextmanager
def nameserver(delay_ms: float) -> Iterator[tuple[str, int]]:
    """The delaying nameserver in a subprocess; its "127.0.0.1:port" and pid."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.support.slow_dns", "--delay", str(delay_ms / 1000)],
        stdout=subprocess.PIPE, env=_bench_env(), start_new_session=True,
    )
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline())
        yield f"127.0.0.1:{port}", proc.pid
    finally:
        proc.terminate()
        proc.wait(10)


def unique_addresses(count: int, seed: int) -> list[str]:
    """``count`` distinct global unicast IPv4 addresses (1.0.0.0-223.255.255.255, no special blocks)."""
    rng = random.Random(seed)
    seen: set[int] = set()
    out: list[str] = []
    while len(out) < count:
        value = rng.randrange(1 << 24, 224 << 24)
        if value in seen:
            continue
        address = ipaddress.IPv4Address(value)
        if not address.is_global:
            continue
        seen.add(value)
        out.append(str(address))
    return out


def expected(ip: str) -> str:
    return "host-" + ip.replace(".", "-") + ".example.test"


def daemon_cpu(daemon: DaemonRunner) -> float:
    """CPU seconds used so far by every process of the daemon (supervisor, workers, stats)."""
    assert daemon.proc is not None
    total = 0.0
    for pid in [daemon.proc.pid, *(p for pids in daemon.pids().values() for p in pids)]:
        try:
            total += cpu_seconds(pid)
        except OSError:
            continue
    return total


def run_file(daemon: DaemonRunner, src: Path, ips: list[str], timeout: float = 900.0) -> float:
    """Drop one file, wait for its result, check every record; the seconds it took."""
    [(tmp, incoming, result)] = daemon.stage((src,))
    start = time.perf_counter()
    os.rename(tmp, incoming)
    deadline = time.monotonic() + timeout
    while not os.path.exists(result):
        if time.monotonic() > deadline:
            raise RuntimeError(f"no result for {src} after {timeout}s; see {daemon.log}")
        time.sleep(0.002)
    took = time.perf_counter() - start
    records = [orjson.loads(line) for line in Path(result).read_bytes().splitlines()]
    if len(records) != len(ips):
        raise RuntimeError(f"{len(records)} records for {len(ips)} addresses")
    wrong = [r for r, ip in zip(records, ips, strict=True)
             if r.get("ip") != ip or r.get("rdns") != "ok" or r.get("ptr") != expected(ip)]
    if wrong:
        raise RuntimeError(f"{len(wrong)} wrong records, the first: {wrong[0]}")
    daemon.clean()
    return took


def bench_latency(work: Path, delay_ms: float, sizes: dict[str, int], repeats: int) -> list[dict[str, Any]]:
    rows: dict[tuple[str, str], list[float]] = {}
    cpu: dict[tuple[str, str], list[tuple[float, float]]] = {}  # (daemon, server) CPU us per lookup
    load = os.getloadavg()[0]
    with ExitStack() as stack:
        ns, server_pid = stack.enter_context(nameserver(delay_ms))
        os.environ["BENCH_RDNS_NAMESERVER"] = ns  # read by bench.legacy_rdns in the old daemon's workers
        daemons = {}
        for system, stages in SYSTEMS.items():
            root = work / f"{system}-{delay_ms:g}ms"
            shutil.rmtree(root, ignore_errors=True)
            daemons[system] = stack.enter_context(
                running_daemon(root, stages, 0, 16, extra={"rdns": {"nameservers": [ns]}}))
        for rep in range(repeats):
            for system, daemon in daemons.items():
                ips = unique_addresses(sizes[system], seed=hash((delay_ms, rep, system)) & 0xFFFFFFFF)
                src = work / f"{system}-{delay_ms:g}ms-{rep}.txt"
                src.write_text("".join(ip + "\n" for ip in ips))
                for phase in ("cold", "warm"):
                    before = daemon_cpu(daemon), cpu_seconds(server_pid)
                    took = run_file(daemon, src, ips)
                    after = daemon_cpu(daemon), cpu_seconds(server_pid)
                    rows.setdefault((system, phase), []).append(took)
                    cpu.setdefault((system, phase), []).append(
                        ((after[0] - before[0]) * 1e6 / len(ips), (after[1] - before[1]) * 1e6 / len(ips)))
                    print(f"  {delay_ms:>5g} ms {system} {phase} run {rep + 1}: {len(ips) / took:>10,.0f} lookups/s",
                          file=sys.stderr, flush=True)
    return [{"latency_ms": delay_ms, "system": system, "phase": phase, "lines": sizes[system],
             "runs": runs, "median_s": statistics.median(runs),
             "lookups_per_s": sizes[system] / statistics.median(runs),
             "daemon_cpu_us": statistics.median(c[0] for c in cpu[(system, phase)]),
             "server_cpu_us": statistics.median(c[1] for c in cpu[(system, phase)]),
             "load_before": load}
            for (system, phase), runs in rows.items()]


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| latency | stage | lines | cold lookups/s | warm lookups/s | cold CPU us/lookup: daemon + server "
             "| warm CPU us/lookup: daemon |", "|---:|---|---:|---:|---:|---:|---:|"]
    seen: dict[tuple[float, str], dict[str, Any]] = {}
    for r in rows:
        seen.setdefault((r["latency_ms"], r["system"]), {"lines": r["lines"]})[r["phase"]] = r
    for (latency, system), r in sorted(seen.items(), key=lambda kv: (kv[0][0], kv[0][1] != "old")):
        name = "old (blocking)" if system == "old" else "new (engine)"
        cold, warm = r["cold"], r["warm"]
        lines.append(f"| {latency:g} ms | {name} | {r['lines']:,} | {cold['lookups_per_s']:,.0f} | "
                     f"{warm['lookups_per_s']:,.0f} | {cold['daemon_cpu_us']:.0f} + {cold['server_cpu_us']:.0f} | "
                     f"{warm['daemon_cpu_us']:.0f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.rdns", description=__doc__.split("\n\n")[0])
    parser.add_argument("--latencies", type=float, nargs="*", default=[1.0, 10.0, 100.0], help="ms")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--lines", type=int, default=100_000, help="addresses per file for the new stage")
    parser.add_argument("--old-lines", type=int, nargs="*", default=[20_000, 10_000, 2_000],
                        help="addresses per file for the old stage, one per latency")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="ipspool-bench-rdns-") as tmp:
        for index, latency in enumerate(args.latencies):
            old = args.old_lines[min(index, len(args.old_lines) - 1)]
            print(f"{latency:g} ms:", file=sys.stderr, flush=True)
            rows += bench_latency(Path(tmp), latency, {"old": old, "new": args.lines}, args.repeats)
    md = table(rows)
    print(md)
    args.out.mkdir(parents=True, exist_ok=True)
    command = "python -m bench.rdns " + " ".join(sys.argv[1:] if argv is None else argv)
    (args.out / "rdns.json").write_text(json.dumps({"command": command, "rows": rows}, indent=2) + "\n")
    (args.out / "rdns.md").write_text(f"Command: `{command}`; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}\n\n"
                                      + md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
