"""``python -m bench.formats``: each input format against plain, same addresses, same daemon.

    python -m bench.formats [--lines 1000000] [--rounds 3] [--processes N] [--out DIR]

The same ``--lines`` addresses (bench/inputs.py's mix) are written as a
plain file, a CSV firewall export (with a header, a few quoted fields and
CRLF), JSON lines (one object per event) and free text (a log line per
address); one daemon running ``classify`` reads each by its default rule
(the extension). Each round runs every format once, the order rotated so a
burst of load from others slows every format alike. Prints lines/s (median
of the rounds) and the ratio to plain measured in the same run, and writes
``formats.json`` to ``--out`` (default bench/out/).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

from bench.inputs import make_lines
from bench.systems import DaemonRunner, Workload, running_daemon
from ipspool.config import usable_cpus
from ipspool.formats.records import parse_text
from ipspool.formats.text import find_addresses

__all__ = ["main"]

OUT = Path(__file__).resolve().parent / "out"
FORMATS = ("plain", "csv", "jsonl", "text")


def _addresses(count: int) -> list[str]:
    """``count`` address lines of the usual mix, comments and blanks left out (every format has all)."""
    lines = [line.split("#", 1)[0].strip() for line in make_lines(count * 2)]
    return [line for line in lines if line][:count]


def write_inputs(directory: Path, count: int) -> dict[str, Path]:
    """The same addresses in each format; one file per format."""
    addresses = _addresses(count)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow(["time", "src_ip", "dst_port", "action", "rule"])
    for n, address in enumerate(addresses):
        writer.writerow([f"2026-12-01T10:{n % 60:02d}:00Z", address, 443, "deny" if n % 3 else "allow",
                         "block, then log" if n % 10 == 0 else f"r{n % 97}"])
    paths = {
        "plain": ("export.txt", "".join(a + "\n" for a in addresses).encode()),
        "csv": ("export.csv", buffer.getvalue().encode()),
        "jsonl": ("export.jsonl", b"".join(
            orjson.dumps({"ts": n, "src_ip": a, "dst_port": 22, "proto": "tcp"}) + b"\n"
            for n, a in enumerate(addresses))),
        "text": ("export.log", "".join(
            f"Dec  1 10:00:{n % 60:02d} gw sshd[{n % 9000}]: Failed password for root from {a} port 22 ssh2\n"
            for n, a in enumerate(addresses)).encode()),
    }
    directory.mkdir(parents=True, exist_ok=True)
    found = {}
    for kind, (name, data) in paths.items():
        found[kind] = directory / name
        found[kind].write_bytes(data)
    return found


def check(daemon: DaemonRunner, inputs: dict[str, Path], count: int, timeout: float = 900.0) -> None:
    """One untimed round: a record per line (an error record for a bad one), in free text a record per
    address found (a fast wrong answer is no result)."""
    # In free text an invalid line may hold an address (fe80::1%% holds fe80::1), or none.
    valid = sum(1 for line in _addresses(count) for found in find_addresses(line)
                if not isinstance(parse_text(found.address), str))
    expected = {kind: valid if kind == "text" else count for kind in inputs}
    moves = daemon.stage(tuple(inputs.values()))
    for tmp, incoming, _ in moves:
        os.rename(tmp, incoming)
    deadline = time.monotonic() + timeout
    for kind, (_, _, result) in zip(inputs, moves, strict=True):
        while not result.exists():
            if time.monotonic() > deadline:
                raise RuntimeError(f"no result {result}")
            time.sleep(0.01)
        records = result.read_bytes().count(b"\n")
        if records != expected[kind]:
            raise RuntimeError(f"{result.name}: {records} records, expected {expected[kind]}")
    daemon.clean()


def run(count: int, rounds: int, processes: int, work: Path) -> dict[str, Any]:
    inputs = write_inputs(work / "inputs", count)
    seconds: dict[str, list[float]] = {kind: [] for kind in FORMATS}
    with running_daemon(work / "daemon", ("classify",), processes) as daemon:
        check(daemon, inputs, count)
        for r in range(rounds):
            order = FORMATS[r % len(FORMATS):] + FORMATS[:r % len(FORMATS)]
            for kind in order:
                w = Workload(kind, ("classify",), (inputs[kind],), count, 16, False)
                seconds[kind].append(daemon.run(w))
                print(f"  round {r + 1} {kind:<6} {count / seconds[kind][-1]:>12,.0f} lines/s",
                      file=sys.stderr, flush=True)
    plain = count / statistics.median(seconds["plain"])
    rows = {kind: {"runs": runs, "lines_per_s": count / statistics.median(runs),
                   "vs_plain": count / statistics.median(runs) / plain} for kind, runs in seconds.items()}
    return {"lines": count, "rounds": rounds, "processes": processes, "formats": rows}


def table(data: dict[str, Any]) -> str:
    out = [f"{data['lines']:,} addresses, {data['processes']} workers, median of {data['rounds']} rounds", "",
           "| format | lines/s | vs plain |", "| --- | ---: | ---: |"]
    for kind, row in data["formats"].items():
        out.append(f"| {kind} | {row['lines_per_s']:,.0f} | {row['vs_plain']:.2f} |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.formats", description=__doc__.split("\n\n")[0])
    parser.add_argument("--lines", type=int, default=1_000_000, help="addresses per file")
    parser.add_argument("--rounds", type=int, default=3, help="runs of every format")
    parser.add_argument("--processes", type=int, default=0, help="daemon workers (default: usable CPUs)")
    parser.add_argument("--out", type=Path, default=OUT, help="where formats.json goes")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="ipspool-formats-") as work:
        data = run(args.lines, args.rounds, args.processes or usable_cpus(), Path(work))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "formats.json").write_text(json.dumps(data, indent=2) + "\n")
    print(table(data))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
