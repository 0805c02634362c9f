"""``python -m bench.run``: the daemon against the baselines, same inputs, same work.

    python -m bench.run [--tiny] [--repeats N] [--out DIR] [--only WORKLOAD ...]

Prints a table of median throughput over the repeats with the ratio to the
single-process loop measured in the same run, and writes ``results.json``,
``results.md`` and ``performance.png`` to ``--out`` (default bench/out/).
``--tiny`` runs every system once at tiny sizes: it keeps the benchmark
working under ``make test`` and proves nothing about speed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
import zlib
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from bench import intelmq
from bench.enrich import check_enriched, config_json, geo_dbs, lists_file, pipeline_config, unique_file
from bench.inputs import make_lines, records_expected, write_file, write_files
from bench.rdns import nameserver
from bench.systems import (
    DramatiqRunner,
    Workload,
    classic_recipe,
    dramatiq_available,
    pool_imap,
    redis_server,
    running_daemon,
    single_loop,
    tune_chunksize,
)

__all__ = ["main"]

OUT = Path(__file__).resolve().parent / "out"
Runner = Callable[[Workload, Path], float]
GEO_NETWORKS = 262_144   # networks in each MaxMind DB of the enrichment workload
GEO_NETWORKS_TINY = 512


@dataclass(frozen=True)
class Size:
    """How many lines (or files) one workload uses, and per-system caps for slow systems."""

    lines: int
    files: int = 1
    caps: dict[str, int] = field(default_factory=dict)  # system -> lines (or files) it runs on


@dataclass(frozen=True)
class Spec:
    name: str
    stages: tuple[str, ...]
    threads: int
    per_file: bool
    full: Size
    tiny: Size
    latency_ms: float | None = None  # rdns: the delaying nameserver's latency; unique addresses every run
    enrich: bool = False             # the lists and geoip stages' data too

    @property
    def blocking(self) -> bool:
        return self.name == "sleep_10ms" or self.latency_ms is not None


def _rdns_spec(latency: float, full: Size, tiny: Size) -> Spec:
    return Spec(f"rdns_{latency:g}ms", ("classify", "rdns"), 16, False, full, tiny, latency_ms=latency)


ENRICH_STAGES = ("classify", "lists", "geoip", "rdns")


SPECS = (
    Spec("classify", ("classify",), 16, False,
         Size(1_000_000, caps={"dramatiq 1/msg": 20_000}),
         Size(20_000, caps={"dramatiq 1/msg": 2_000})),
    Spec("cpu_1ms", ("bench.stages:cpu_1ms",), 16, False,
         Size(4_000), Size(200)),
    Spec("sleep_10ms", ("bench.stages:sleep_10ms",), 16, False,
         Size(12_000, caps={"single loop": 300, "Pool.imap": 1_000, "dramatiq 1000/msg": 4_000}),
         Size(400, caps={"single loop": 30, "Pool.imap": 60})),
    Spec("small_files", ("classify",), 16, True,
         Size(100, files=1_000, caps={"dramatiq 1/msg": 100}),
         Size(100, files=40, caps={"dramatiq 1/msg": 10})),
    # Reverse DNS against the delaying nameserver on loopback, a file of unique
    # addresses per run: every lookup cold. Per-address systems wait for each
    # answer in turn, so they run on fewer lines (the size column).
    _rdns_spec(1, Size(50_000, caps={"classic recipe": 10_000, "Pool.imap": 1_000, "dramatiq 1/msg": 5_000}),
               Size(200, caps={"Pool.imap": 20, "dramatiq 1/msg": 50})),
    _rdns_spec(10, Size(50_000, caps={"classic recipe": 6_000, "Pool.imap": 300, "dramatiq 1/msg": 3_000}),
               Size(200, caps={"Pool.imap": 10, "dramatiq 1/msg": 50})),
    _rdns_spec(100, Size(50_000, caps={"classic recipe": 1_000, "Pool.imap": 60, "dramatiq 1/msg": 600}),
               Size(200, caps={"classic recipe": 100, "Pool.imap": 4, "dramatiq 1/msg": 32})),
    # The whole enrichment pipeline, rdns at 10 ms; IntelMQ's pipeline for the same job beside it.
    Spec("enrich", ENRICH_STAGES, 16, False,
         Size(50_000, caps={"classic recipe": 6_000, "Pool.imap": 300, "dramatiq 1/msg": 3_000, "IntelMQ": 1_500}),
         Size(200, caps={"Pool.imap": 10, "dramatiq 1/msg": 50, "IntelMQ": 20}), latency_ms=10, enrich=True),
)
SYSTEMS = ("single loop", "classic recipe", "Pool.imap", "dramatiq 1/msg", "dramatiq 1000/msg", "IntelMQ", "ipspool")
DRAMATIQ = ("dramatiq 1/msg", "dramatiq 1000/msg")


@dataclass
class Row:
    workload: str
    system: str
    lines: int
    files: int
    runs: list[float]                      # seconds per repeat
    note: str = ""
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def seconds(self) -> float:
        return statistics.median(self.runs) if self.runs else 0.0

    @property
    def lines_per_s(self) -> float:
        return self.lines / self.seconds if self.runs else 0.0

    @property
    def files_per_s(self) -> float:
        return self.files / self.seconds if self.runs else 0.0


class Inputs:
    """Generated input files, made once per (workload, size) and reused by every system."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.made: dict[tuple[str, int, int], Workload] = {}

    def workload(self, spec: Spec, size: Size, system: str) -> Workload:
        cap = size.caps.get(system)
        if spec.per_file:
            files, lines_each = min(cap or size.files, size.files), size.lines
        else:
            files, lines_each = 1, min(cap or size.lines, size.lines)
        key = (spec.name, files, lines_each)
        if key not in self.made:
            where = self.root / f"{spec.name}-{files}x{lines_each}"
            if spec.per_file:
                paths = tuple(write_files(where, files, lines_each))
            else:
                where.mkdir(parents=True)
                paths = (write_file(where / f"{spec.name}.txt", make_lines(lines_each)),)
            self.made[key] = Workload(spec.name, spec.stages, paths, files * lines_each, spec.threads, spec.per_file)
        return self.made[key]


def check(w: Workload, out: Path) -> None:
    """Every system must produce every record: a fast wrong answer is no result."""
    got = sum(p.read_bytes().count(b"\n") for p in out.iterdir() if p.name.endswith(".jsonl"))
    want = sum(records_expected(p.read_text().split("\n")[:-1]) for p in w.files)
    if got != want:
        raise RuntimeError(f"{w.name}: {got} result records, expected {want}")


def fresh(directory: Path) -> Path:
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    return directory


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Enrichment:
    """What the rdns and enrichment workloads run against: the nameserver, the list, the databases."""

    nameserver: str
    daemon: dict[str, Any]  # config sections for the daemon (its rdns cache is under its spool)
    baseline: str           # the same as JSON for bench.work.pipeline_for, with a cache directory
    dbs: tuple[Path, Path] | None


class Bench:
    def __init__(self, tiny: bool, repeats: int, work: Path, only: tuple[str, ...]) -> None:
        self.tiny = tiny
        self.repeats = repeats
        self.work = work
        self.inputs = Inputs(work / "inputs")
        self.specs = [s for s in SPECS if not only or s.name in only]
        self.cores = len(os.sched_getaffinity(0))
        self.rows: list[Row] = []
        self.scaling: list[Row] = []
        self.skipped: dict[str, str] = {}
        self.addresses: dict[Path, list[str]] = {}  # unique-address inputs and what they hold

    def size(self, spec: Spec) -> Size:
        return spec.tiny if self.tiny else spec.full

    def run(self) -> None:
        reason = dramatiq_available()
        if reason:
            self.skipped = {s: reason for s in DRAMATIQ}
            progress(f"dramatiq rows skipped: {reason}")
        if any(s.enrich for s in self.specs):
            why = intelmq.available()
            if why:
                self.skipped["IntelMQ"] = why
                progress(f"IntelMQ row skipped: {why}")
        with ExitStack() as stack:
            url = None if reason else stack.enter_context(redis_server(self.work))
            for spec in self.specs:
                progress(f"{spec.name}:")
                self.run_workload(spec, url)

    def run_workload(self, spec: Spec, url: str | None) -> None:
        """Every system on one workload, interleaved: repeat r runs each system once.

        The machine is shared: a burst of someone else's load then slows one
        round of every system rather than all runs of one system, so the
        ratios measured in the same round stay meaningful.
        """
        with ExitStack() as stack:
            env = self.enrichment(spec, stack)
            rows = []
            for system, run, settings in self.entrants(spec, url, stack, env):
                w = self.workload_for(spec, system.split(" x")[0], 0, env)
                rows.append((Row(spec.name, system.split(" x")[0], w.lines, len(w.files), [], settings=settings),
                             run))
            for rep in range(self.repeats):
                for row, run in rows:
                    w = self.workload_for(spec, row.system, rep, env)
                    out = fresh(self.work / "out")
                    row.runs.append(run(w, out))
                    self.verify(spec, w, out, rep, row.system, env)
                    progress(f"  {spec.name:<12} {row.system:<18} {row.settings.get('processes', '')!s:>2} "
                             f"run {rep + 1}: {w.lines / row.runs[-1]:>12,.0f} lines/s")
        for row, _ in rows:
            if row.system != "ipspool" or row.settings["processes"] == self.cores:
                self.rows.append(row)
            if row.system == "ipspool":
                self.scaling.append(row)

    def enrichment(self, spec: Spec, stack: ExitStack) -> Enrichment | None:
        """For the rdns workloads: the delaying nameserver (started on ``stack``), the list and databases."""
        if spec.latency_ms is None:
            return None
        ns, _ = stack.enter_context(nameserver(spec.latency_ms))
        lists = dbs = None
        if spec.enrich:
            lists = self.work / "bench-list.txt"
            if not lists.exists():
                lists_file(lists, 200 if self.tiny else 20_000)
            dbs = geo_dbs(GEO_NETWORKS_TINY if self.tiny else GEO_NETWORKS)
        return Enrichment(ns, pipeline_config(ns, None, lists, dbs),
                          config_json(pipeline_config(ns, self.work / "baseline-cache", lists, dbs)), dbs)

    def workload_for(self, spec: Spec, system: str, rep: int, env: Enrichment | None) -> Workload:
        """The input of one run; for the rdns workloads, addresses no system has seen before."""
        size = self.size(spec)
        if env is None:
            return self.inputs.workload(spec, size, system)
        lines = min(size.caps.get(system, size.lines), size.lines)
        path = self.work / "inputs" / f"{spec.name}-{system.replace(' ', '_').replace('/', '_')}-{rep}.txt"
        if path not in self.addresses:
            path.parent.mkdir(parents=True, exist_ok=True)
            self.addresses[path] = unique_file(path, lines, zlib.crc32(f"{spec.name}/{system}/{rep}".encode()))
        return Workload(spec.name, spec.stages, (path,), lines, spec.threads, False, config=env.baseline)

    def verify(self, spec: Spec, w: Workload, out: Path, rep: int, system: str, env: Enrichment | None) -> None:
        """Every record of every rdns run (IntelMQ's runner checks its own); the others' counts once."""
        if env is None:
            if rep == 0:
                check(w, out)
        elif system != "IntelMQ":
            check_enriched(out / f"{w.files[0].name}.jsonl", self.addresses[w.files[0]], env.dbs)

    def entrants(self, spec: Spec, url: str | None, stack: ExitStack,
                 env: Enrichment | None) -> list[tuple[str, Runner, dict[str, Any]]]:
        """(system, how to run it, its settings), with any servers it needs started on ``stack``."""
        found: list[tuple[str, Runner, dict[str, Any]]] = [
            ("single loop", single_loop, {}),
            ("classic recipe", classic_recipe, {"threads": spec.threads}),
        ]
        if env is None:
            w = self.inputs.workload(spec, self.size(spec), "Pool.imap")
            sample = w if self.tiny or w.lines <= 50_000 else self.inputs.workload(
                spec, Size(50_000 // (self.size(spec).lines if spec.per_file else 1)), "Pool.imap")
            chunksize = tune_chunksize(sample, fresh(self.work / "out"))
        else:
            chunksize = 1  # each process waits for one answer at a time whatever the chunk
        found.append(("Pool.imap", partial(pool_imap, chunksize=chunksize), {"chunksize": chunksize}))
        if url is not None:
            # Threads: as many as the daemon's pool for the blocking stages; few
            # for CPU-bound work, where more threads only contend for the GIL.
            threads = spec.threads if spec.blocking else 2
            runner = DramatiqRunner(self.work, url, self.cores, threads)
            runner.start()
            stack.callback(runner.stop)
            for system, batch in (("dramatiq 1/msg", 1), ("dramatiq 1000/msg", 1000)):
                found.append((system, partial(runner.run, batch=batch), {"processes": self.cores, "threads": threads}))
        if spec.enrich and env is not None and env.dbs is not None and "IntelMQ" not in self.skipped:
            pipeline = stack.enter_context(intelmq.running(self.work / "intelmq", env.nameserver, env.dbs[0]))
            found.append(("IntelMQ", pipeline.run, pipeline.settings()))
        # The worker-count sweep (1..cores) is for the CPU-bound workloads.
        sweep = range(self.cores, 0, -1) if spec.name in ("classify", "cpu_1ms") else [self.cores]
        for processes in sweep:
            root = fresh(self.work / f"daemon-{spec.name}-{processes}")
            daemon = stack.enter_context(running_daemon(root, spec.stages, processes, spec.threads,
                                                        env.daemon if env else None))
            found.append((f"ipspool x{processes}", daemon.run, {"processes": processes, "threads": spec.threads}))
        return found


# ---------------------------------------------------------------------------
# reporting
# ---------------------------------------------------------------------------

def machine() -> dict[str, Any]:
    model = "unknown"
    with open("/proc/cpuinfo") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {"nproc": len(os.sched_getaffinity(0)), "cpu": model, "python": platform.python_version(),
            "kernel": platform.release(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


def baseline_of(rows: list[Row], workload: str) -> float:
    return next((r.lines_per_s for r in rows if r.workload == workload and r.system == "single loop"), 0.0)


def to_json(bench: Bench, args: argparse.Namespace) -> dict[str, Any]:
    def row(r: Row) -> dict[str, Any]:
        base = baseline_of(bench.rows, r.workload)
        return {**asdict(r), "seconds": r.seconds, "lines_per_s": r.lines_per_s, "files_per_s": r.files_per_s,
                "ratio": r.lines_per_s / base if base else None}

    return {
        "machine": machine(), "tiny": bench.tiny, "repeats": bench.repeats,
        "command": "python -m bench.run " + " ".join(args.argv),
        "rows": [row(r) for r in bench.rows], "scaling": [row(r) for r in bench.scaling],
        "skipped": bench.skipped,
    }


def table(data: dict[str, Any]) -> str:
    lines = ["| workload | system | size | median lines/s | files/s | x single loop | settings |",
             "|---|---|---:|---:|---:|---:|---|"]
    for r in data["rows"]:
        size = f"{r['files']} x {r['lines'] // r['files']}" if r["files"] > 1 else f"{r['lines']:,}"
        files = f"{r['files_per_s']:,.0f}" if r["files"] > 1 else ""
        settings = ", ".join(f"{k}={v}" for k, v in r["settings"].items())
        lines.append(f"| {r['workload']} | {r['system']} | {size} | {r['lines_per_s']:,.0f} | {files} | "
                     f"{r['ratio']:.2f} | {settings} |")
    for system, reason in data["skipped"].items():
        lines.append(f"| all | {system} | - | skipped | | | {reason} |")
    lines += ["", "Daemon throughput against worker processes:", "",
              "| workload | processes | median lines/s | x single loop |", "|---|---:|---:|---:|"]
    for r in sorted(data["scaling"], key=lambda r: (r["workload"], r["settings"]["processes"])):
        lines.append(f"| {r['workload']} | {r['settings']['processes']} | {r['lines_per_s']:,.0f} | "
                     f"{r['ratio']:.2f} |")
    return "\n".join(lines) + "\n"


def chart(data: dict[str, Any], path: Path) -> None:
    try:
        import matplotlib
    except ImportError:
        progress("chart skipped: matplotlib is not installed (pip install -e '.[bench]')")
        return

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    workloads = list(dict.fromkeys(r["workload"] for r in data["rows"]))
    systems = [s for s in SYSTEMS if any(r["system"] == s for r in data["rows"])]
    fig, (bars, scale) = plt.subplots(1, 2, figsize=(11, 4), gridspec_kw={"width_ratios": [3, 1.2]}, dpi=80)
    width = 0.8 / max(1, len(systems))
    for i, system in enumerate(systems):
        ratios = [next((r["ratio"] for r in data["rows"] if r["workload"] == w and r["system"] == system), 0)
                  for w in workloads]
        bars.bar([x + i * width for x in range(len(workloads))], ratios, width, label=system)
    bars.set_xticks([x + width * (len(systems) - 1) / 2 for x in range(len(workloads))], workloads)
    bars.set_ylabel("throughput, x single-process loop")
    bars.set_yscale("log")
    bars.axhline(1, color="grey", linewidth=0.5)
    bars.legend(fontsize=7)
    bars.set_title(f"median of {data['repeats']} runs, {data['machine']['nproc']} cores")
    for w in dict.fromkeys(r["workload"] for r in data["scaling"]):
        pts = sorted((r["settings"]["processes"], r["lines_per_s"]) for r in data["scaling"] if r["workload"] == w)
        if len(pts) < 2:
            continue  # measured at one worker count only
        scale.plot([p for p, _ in pts], [t / pts[0][1] for _, t in pts], marker="o", label=w)
    cores = data["machine"]["nproc"]
    scale.plot([1, cores], [1, cores], linestyle=":", color="grey", label="linear")
    scale.set_xlabel("worker processes")
    scale.set_ylabel("daemon throughput, x 1 process")
    scale.set_xticks(range(1, cores + 1))
    scale.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="every system once at tiny sizes")
    parser.add_argument("--repeats", type=int, default=None, help="runs per system (default 3; 1 with --tiny)")
    parser.add_argument("--out", type=Path, default=OUT, help="where results.{json,md} and the chart go")
    parser.add_argument("--only", nargs="*", default=[], help="workloads to run (default: all)")
    args = parser.parse_args(argv)
    args.argv = sys.argv[1:] if argv is None else argv
    repeats = args.repeats or (1 if args.tiny else 3)
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="ipspool-bench-") as tmp:
        bench = Bench(args.tiny, repeats, Path(tmp), tuple(args.only))
        bench.run()
        data = to_json(bench, args)
    md = table(data)
    print(md)
    (args.out / "results.json").write_text(json.dumps(data, indent=2) + "\n")
    m = data["machine"]
    (args.out / "results.md").write_text(
        f"Machine: {m['nproc']} cores, {m['cpu']}, Python {m['python']}, Linux {m['kernel']}; {m['date']}.\n"
        f"Command: `{data['command']}`\n\n" + md)
    chart(data, args.out / "performance.png")
    return 0




if __name__ == "__main__":
    raise SystemExit(main())
