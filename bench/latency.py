"""``python -m bench.latency``: pick-up latency of an idle daemon for a 10-line file.

Each sample renames a 10-line file from tmp/ into incoming/ and measures the
time until results/NAME.jsonl exists. The waiting side blocks on inotify (no
polling, so it takes no CPU from the daemon on a small machine); samples are
spaced out so the daemon is idle when each file arrives.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import json
import os
import select
import statistics
import struct
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.inputs import make_lines
from bench.systems import running_daemon

__all__ = ["main", "measure"]

_IN_CREATE = 0x100
_IN_MOVED_TO = 0x80
_EVENT = struct.Struct("iIII")


class Inotify:
    """Just enough inotify(7) to block until a name appears in one directory."""

    def __init__(self, directory: Path) -> None:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        self.fd = libc.inotify_init1(os.O_CLOEXEC | os.O_NONBLOCK)
        if self.fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1")
        if libc.inotify_add_watch(self.fd, str(directory).encode(), _IN_CREATE | _IN_MOVED_TO) < 0:
            raise OSError(ctypes.get_errno(), "inotify_add_watch")
        self.seen: set[str] = set()

    def wait_for(self, name: str, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while name not in self.seen:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.fd], [], [], left)[0]:
                return False
            data = os.read(self.fd, 65536)
            at = 0
            while at < len(data):
                _wd, _mask, _cookie, length = _EVENT.unpack_from(data, at)
                raw = data[at + _EVENT.size:at + _EVENT.size + length]
                self.seen.add(raw.rstrip(b"\0").decode())
                at += _EVENT.size + length
        return True

    def close(self) -> None:
        os.close(self.fd)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def measure(root: Path, samples: int, gap: float, processes: int) -> dict[str, Any]:
    content = "".join(line + "\n" for line in make_lines(10))
    latencies: list[float] = []
    with running_daemon(root, ("classify",), processes) as daemon:
        watch = Inotify(daemon.results)
        try:
            time.sleep(1.0)  # let start-up settle: the first files are not special
            for i in range(samples):
                name = f"lat-{i:05d}.txt"
                tmp = daemon.spool / "tmp" / name
                tmp.write_text(content)
                start = time.perf_counter()
                os.rename(tmp, daemon.spool / "incoming" / name)
                if not watch.wait_for(name + ".jsonl", 30.0):
                    raise RuntimeError(f"no result for {name} within 30 s")
                latencies.append(time.perf_counter() - start)
                time.sleep(gap)
        finally:
            watch.close()
    ms = [x * 1000 for x in latencies]
    return {
        "samples": len(ms), "gap_s": gap, "processes": processes,
        "median_ms": statistics.median(ms), "p90_ms": percentile(ms, 90), "p99_ms": percentile(ms, 99),
        "min_ms": min(ms), "max_ms": max(ms), "mean_ms": statistics.fmean(ms),
        "histogram_ms": histogram(ms),
    }


def histogram(ms: list[float]) -> dict[str, int]:
    edges = [1, 2, 3, 5, 10, 20, 50, 100, 1000]
    counts: dict[str, int] = {}
    low = 0.0
    for edge in edges:
        counts[f"{low:g}-{edge:g}"] = sum(1 for x in ms if low <= x < edge)
        low = edge
    counts[f">={low:g}"] = sum(1 for x in ms if x >= low)
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.latency", description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=500)
    parser.add_argument("--gap", type=float, default=0.05, help="seconds of idleness between samples")
    parser.add_argument("--processes", type=int, default=0, help="worker processes (0: one per CPU)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="ipspool-latency-") as tmp:
        result = measure(Path(tmp), args.samples, args.gap, args.processes)
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
