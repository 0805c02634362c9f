"""``python -m bench.memory``: peak RSS of workers on a 1 GB input, of the
supervisor with 100,000 files waiting (issue 5's targets: under 80 MB each),
and the growth of both while a 50 MB line is refused (target: under 16 MiB).

    python -m bench.memory [--gigabytes 1.0] [--waiting 100000] [--json FILE]

The 1 GB input is generated on disk in a temporary directory (a fixed-seed
block of lines, repeated) and deleted afterwards, with its results.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.inputs import make_lines
from bench.procstat import memory_kb
from bench.systems import DaemonRunner, Workload, running_daemon

__all__ = ["main"]


def big_input(path: Path, size: int) -> int:
    """Write about ``size`` bytes of whole lines to ``path``; the number of lines."""
    block_lines = make_lines(200_000)
    block = "".join(line + "\n" for line in block_lines).encode()
    written = lines = 0
    with open(path, "wb") as out:
        while written + len(block) <= size:
            out.write(block)
            written += len(block)
            lines += len(block_lines)
        rest = block[:size - written]
        rest = rest[:rest.rfind(b"\n") + 1]
        out.write(rest)
        lines += rest.count(b"\n")
    return lines


def peaks(daemon: DaemonRunner) -> dict[str, int]:
    """Largest VmHWM by role, in KiB."""
    result: dict[str, int] = {}
    for role, pids in daemon.pids().items():
        for pid in pids:
            try:
                hwm = memory_kb(pid)["VmHWM"]
            except (OSError, KeyError):
                continue
            result[role] = max(result.get(role, 0), hwm)
    return result


def big_file(root: Path, gigabytes: float) -> dict[str, Any]:
    src_dir = root / "input"
    src_dir.mkdir()
    src = src_dir / "big.txt"
    size = int(gigabytes * 1e9)
    print(f"writing {size:,} bytes ...", file=sys.stderr)
    lines = big_input(src, size)
    w = Workload("big", ("classify",), (src,), lines)
    with running_daemon(root / "daemon", ("classify",), 0) as daemon:
        print("processing ...", file=sys.stderr)
        start = time.perf_counter()
        daemon.run(w, timeout=3600)  # removes the result afterwards
        took = time.perf_counter() - start
        found = peaks(daemon)
        workers = [memory_kb(pid)["VmHWM"] for pid in daemon.pids().get("worker", [])]
    src.unlink()
    return {"input_bytes": size, "lines": lines, "seconds": took, "lines_per_s": lines / took,
            "worker_peak_rss_mb": [round(kb / 1024, 1) for kb in workers],
            "supervisor_peak_rss_mb": round(found.get("supervisor", 0) / 1024, 1)}


def waiting_files(root: Path, count: int, watch_seconds: float) -> dict[str, Any]:
    daemon = DaemonRunner(root / "daemon", ("classify",), 0)
    incoming = daemon.spool / "incoming"
    incoming.mkdir(parents=True)
    content = "".join(line + "\n" for line in make_lines(10)).encode()
    print(f"writing {count:,} files ...", file=sys.stderr)
    for i in range(count):
        (incoming / f"wait-{i:06d}.txt").write_bytes(content)
    old = time.time() - 60  # older than the rescan's settle time: all offered at start
    for entry in os.scandir(incoming):
        os.utime(entry.path, (old, old))
    daemon.start()
    try:
        supervisor = daemon.pids()["supervisor"][0]
        rss = 0
        deadline = time.monotonic() + watch_seconds
        while time.monotonic() < deadline:
            rss = max(rss, memory_kb(supervisor)["VmRSS"])
            time.sleep(0.1)
        hwm = memory_kb(supervisor)["VmHWM"]
        left = sum(1 for _ in os.scandir(incoming))
    finally:
        daemon.stop()
    return {"files": count, "still_waiting_at_end": left, "watched_s": watch_seconds,
            "supervisor_rss_mb": round(rss / 1024, 1), "supervisor_peak_rss_mb": round(hwm / 1024, 1)}


def long_line(root: Path, megabytes: int = 50) -> dict[str, Any]:
    """VmHWM growth of workers and supervisor while a file with one huge line (and one without a
    newline at all) is processed: the line is refused unread, so neither should grow by its size."""
    w_dir = root / "input"
    w_dir.mkdir()
    huge = b"7" * (megabytes * 1_000_000)
    long_file, no_newline = w_dir / "long-line.txt", w_dir / "no-newline.txt"
    long_file.write_bytes(b"1.1.1.1\n" + huge + b"\n2.2.2.2\n")
    no_newline.write_bytes(b"3.3.3.3\n" + huge)
    with running_daemon(root / "daemon", ("classify",), 2) as daemon:
        before = peaks(daemon)
        daemon.run(Workload("long line", ("classify",), (long_file, no_newline), 5), timeout=600)
        after = peaks(daemon)
    return {"line_mb": megabytes,
            "worker_growth_mb": round((after.get("worker", 0) - before.get("worker", 0)) / 1024, 1),
            "supervisor_growth_mb": round((after.get("supervisor", 0) - before.get("supervisor", 0)) / 1024, 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.memory", description=__doc__.split("\n\n")[0])
    parser.add_argument("--gigabytes", type=float, default=1.0)
    parser.add_argument("--waiting", type=int, default=100_000)
    parser.add_argument("--watch", type=float, default=10.0, help="seconds to watch the supervisor's RSS")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    result: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="ipspool-memory-", dir="/var/tmp") as tmp:
        root = Path(tmp)
        (root / "a").mkdir()
        result["big_file"] = big_file(root / "a", args.gigabytes)
        (root / "b").mkdir()
        result["waiting_files"] = waiting_files(root / "b", args.waiting, args.watch)
        (root / "c").mkdir()
        result["long_line"] = long_line(root / "c")
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
