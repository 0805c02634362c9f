"""``python -m bench.profile``: what one address costs, and where the time goes.

    python -m bench.profile [--lines 200000] [--runs 5] [--daemon-lines 1000000] [--json FILE]

1. In one process, the pure heart (``process_chunk``) per address: with no
   stage at all (the framework: split, parse, record, JSON), with ``classify``,
   and with a user stage that does nothing (which adds the ipaddress object
   user stages receive).
2. The daemon end to end: CPU seconds of every daemon process (supervisor,
   workers, stats) per address, for the same pipelines, on one large file.
   CPU time, unlike wall time, hardly moves when the machine is shared.
3. A pyinstrument profile of ``process_chunk`` with ``classify``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.inputs import make_lines, write_file
from bench.procstat import cpu_seconds
from bench.systems import Workload, running_daemon
from bench.work import pipeline_for
from ipspool.pipeline import process_chunk

__all__ = ["main"]

PIPELINES: dict[str, tuple[str, ...]] = {
    "no stage (framework only)": (),
    "classify": ("classify",),
    "no-op user stage": ("bench.stages:noop",),
}


def heart(data: bytes, lines: int, runs: int) -> dict[str, float]:
    costs: dict[str, float] = {}
    for name, stages in PIPELINES.items():
        pipeline = pipeline_for(stages)
        times = []
        for _ in range(runs):
            start = time.process_time()
            process_chunk(data, 1, pipeline)
            times.append(time.process_time() - start)
        costs[name] = statistics.median(times) / lines * 1e6
    return costs


def daemon_cost(root: Path, src: Path, lines: int) -> dict[str, dict[str, float]]:
    costs: dict[str, dict[str, float]] = {}
    for name, stages in PIPELINES.items():
        workdir = root / name.split()[0]
        with running_daemon(workdir, stages, 0) as daemon:
            daemon.run(Workload(name, stages, (src,), lines))  # warm up
            pids = daemon.pids()
            before = {role: sum(cpu_seconds(p) for p in ps) for role, ps in pids.items()}
            took = daemon.run(Workload(name, stages, (src,), lines))
            after = {role: sum(cpu_seconds(p) for p in ps) for role, ps in pids.items()}
        per = {role: (after[role] - before[role]) / lines * 1e6 for role in before}
        per["total"] = sum(per.values())
        per["wall_lines_per_s"] = lines / took
        costs[name] = {k: round(v, 3) for k, v in per.items()}
    return costs


def profile_text(data: bytes) -> str:
    try:
        from pyinstrument import Profiler
    except ImportError:
        return "pyinstrument is not installed (pip install -e '.[bench]')"
    pipeline = pipeline_for(("classify",))
    profiler = Profiler(interval=0.0005)
    profiler.start()
    process_chunk(data, 1, pipeline)
    profiler.stop()
    return str(profiler.output_text(unicode=False, color=False, show_all=False))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__.split("\n\n")[0])
    parser.add_argument("--lines", type=int, default=200_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--daemon-lines", type=int, default=1_000_000)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    data = "".join(line + "\n" for line in make_lines(args.lines)).encode()
    result: dict[str, Any] = {"heart_us_per_line": heart(data, args.lines, args.runs)}
    with tempfile.TemporaryDirectory(prefix="ipspool-profile-") as tmp:
        root = Path(tmp)
        (root / "in").mkdir()
        src = write_file(root / "in" / "big.txt", make_lines(args.daemon_lines))
        result["daemon_cpu_us_per_line"] = daemon_cost(root, src, args.daemon_lines)
    result["profile"] = profile_text(data)
    print(json.dumps({k: v for k, v in result.items() if k != "profile"}, indent=2))
    print(result["profile"])
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
