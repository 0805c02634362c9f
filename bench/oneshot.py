"""``python -m bench.oneshot``: gzip input and ``ipspool process`` against the daemon on plain input.

    python -m bench.oneshot [--lines N] [--rounds R] [--processes P] [--json FILE]

Same input in every row (``bench.inputs``, fixed seed, classify only), all
rows in every round, each round starting at a different row, medians of
``--rounds`` (at least 3):

- *daemon, plain*: drop the file, wait for its result (the daemon is running);
- *daemon, gzip*: the same lines gzip-compressed (level 6);
- *decompression alone*: ``compression.expand`` of that gzip file into a
  file, fsync'd: what the daemon's copy costs at least;
- *process, plain* / *process, gzip*: ``python -m ipspool process -o FILE``,
  start-up of its worker processes included.

"gzip cost" is daemon gzip minus daemon plain, to compare with decompression
alone.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.inputs import make_lines, write_file
from bench.systems import Workload, _bench_env, running_daemon

__all__ = ["main"]


def timed_process(config: Path, src: Path, out: Path) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "ipspool", "process", "--config", str(config), "-o", str(out), str(src)],
                   check=True, env=_bench_env(), stdout=subprocess.DEVNULL)
    took = time.perf_counter() - start
    out.unlink()
    return took


def timed_expand(src: Path, out: Path) -> float:
    from ipspool.compression import expand

    fd = os.open(src, os.O_RDONLY)
    try:
        start = time.perf_counter()
        expand("gzip", fd, str(out), limit=1 << 40)
        took = time.perf_counter() - start
    finally:
        os.close(fd)
    out.unlink()
    return took


def measure(root: Path, lines: int, rounds: int, processes: int) -> dict[str, float]:
    plain = write_file(root / "plain.txt", make_lines(lines))
    packed = root / "packed.gz"
    packed.write_bytes(gzip.compress(plain.read_bytes(), compresslevel=6, mtime=0))
    times: dict[str, list[float]] = {k: [] for k in ("daemon, plain", "daemon, gzip", "decompression alone",
                                                     "process, plain", "process, gzip")}
    with running_daemon(root / "daemon", ("classify",), processes) as daemon:
        config = root / "daemon" / "ipspool.toml"
        rows = {
            "daemon, plain": lambda: daemon.run(Workload("plain", ("classify",), (plain,), lines)),
            "daemon, gzip": lambda: daemon.run(Workload("gzip", ("classify",), (packed,), lines)),
            "decompression alone": lambda: timed_expand(packed, root / "expanded"),
            "process, plain": lambda: timed_process(config, plain, root / "out.jsonl"),
            "process, gzip": lambda: timed_process(config, packed, root / "out.jsonl"),
        }
        order = list(rows)
        for n in range(rounds):
            # Each round in another order: no row always runs right after the same one.
            for name in order[n % len(order):] + order[:n % len(order)]:
                times[name].append(rows[name]())
    medians = {k: statistics.median(v) for k, v in times.items()}
    return {
        "lines": lines, "rounds": rounds, "processes": processes,
        "plain_bytes": plain.stat().st_size, "gzip_bytes": packed.stat().st_size,
        **{f"{k} s": round(v, 3) for k, v in medians.items()},
        **{f"{k} lines/s": round(lines / v) for k, v in medians.items() if k != "decompression alone"},
        "gzip cost s": round(medians["daemon, gzip"] - medians["daemon, plain"], 3),
        "load average": round(os.getloadavg()[0], 2),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.oneshot", description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--processes", type=int, default=0, help="worker processes (0: one per CPU)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    if args.rounds < 3:
        parser.error("--rounds must be at least 3 (a median of fewer says little)")
    with tempfile.TemporaryDirectory(prefix="ipspool-bench-oneshot-") as tmp:
        figures = measure(Path(tmp), args.lines, args.rounds, args.processes)
    for key, value in figures.items():
        print(f"{key:32} {value}")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
