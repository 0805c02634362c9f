"""``python -m bench.ab``: two source trees of ipspool, alternated on the same inputs.

    python -m bench.ab --before DIR --after DIR [--rounds 5] [--files 1000] [--lines 100]
                       [--after-set SECTION.KEY=JSON ...]

For a change to the daemon itself, the honest comparison on a shared
machine: each round runs both trees on ``small_files`` (``--files`` files of
``--lines`` lines) and on ``classify`` (one file of files x lines x 10
lines), the order flipped every round so that a burst of load from others
slows both alike. ``DIR`` is a checkout's ``daemon/`` folder (its ipspool is
put first on PYTHONPATH; e.g. a ``git worktree`` of the old commit). Prints
every run, then per workload the median seconds of each tree and their
ratio (after / before: below 1 is faster). ``--after-set`` changes a setting
for the "after" runs only, to weigh a setting on one tree
(``--before daemon --after daemon --after-set spool.summaries=false``).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from tests.support.daemon import Daemon

__all__ = ["main"]


def make_files(count: int, lines: int, seed: int = 5) -> list[bytes]:
    rng = random.Random(seed)

    def address() -> str:
        return f"{rng.randrange(1, 224)}.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(256)}"

    return ["".join(address() + "\n" for _ in range(lines)).encode() for _ in range(count)]


def run_once(source: Path, workload: str, files: list[bytes],
             extra: dict[str, dict[str, object]] | None = None) -> float:
    """Seconds from the first drop to the last result, on a fresh spool (``extra``: more settings)."""
    os.environ["PYTHONPATH"] = str(source)
    root = Path(tempfile.mkdtemp(prefix="ipspool-ab-"))
    settings: dict[str, dict[str, object]] = {
        "workers": {"processes": 2, "threads": 16}, "pipeline": {"stages": ["classify"]},
        "log": {"level": "info", "format": "json", "file": str(root / "daemon.log")}}
    for section, values in (extra or {}).items():
        settings[section] = {**settings.get(section, {}), **values}
    daemon = Daemon(root, settings)
    try:
        daemon.start()
        began = time.monotonic()
        if workload == "small_files":
            for i, data in enumerate(files):
                daemon.drop(f"f{i}.txt", data)
            wanted = len(files)
        else:
            daemon.drop("big.txt", b"".join(files) * 10)
            wanted = 1
        while sum(1 for name in os.listdir(daemon.results) if name.endswith(".jsonl")) < wanted:
            time.sleep(0.01)
        took = time.monotonic() - began
        daemon.stop()
        return took
    finally:
        daemon.kill_all()
        shutil.rmtree(root, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.ab", description=__doc__.splitlines()[0])
    parser.add_argument("--before", type=Path, required=True, help="the old tree's daemon/ folder")
    parser.add_argument("--after", type=Path, required=True, help="the new tree's daemon/ folder")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--files", type=int, default=1000)
    parser.add_argument("--lines", type=int, default=100)
    parser.add_argument("--after-set", action="append", default=[], metavar="SECTION.KEY=JSON",
                        help="a setting for the after runs only (e.g. spool.summaries=false)")
    args = parser.parse_args(argv)
    extra: dict[str, dict[str, object]] = {}
    for item in args.after_set:
        key, _, value = item.partition("=")
        section, _, name = key.partition(".")
        extra.setdefault(section, {})[name] = json.loads(value)
    files = make_files(args.files, args.lines)
    trees = {"before": args.before.resolve(), "after": args.after.resolve()}
    times: dict[tuple[str, str], list[float]] = {}
    for round_no in range(args.rounds):
        order = ("before", "after") if round_no % 2 == 0 else ("after", "before")
        for workload in ("small_files", "classify"):
            for which in order:
                took = run_once(trees[which], workload, files, extra if which == "after" else None)
                times.setdefault((workload, which), []).append(took)
                print(f"round {round_no}  {workload:<12} {which:<7} {took:7.2f} s", flush=True)
    for workload in ("small_files", "classify"):
        before = statistics.median(times[(workload, "before")])
        after = statistics.median(times[(workload, "after")])
        print(f"{workload}: before {before:.2f} s, after {after:.2f} s (medians of {args.rounds}); "
              f"after/before {after / before:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
