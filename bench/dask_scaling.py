"""``python -m bench.dask_scaling``: the Dask executor across simulated hosts, against the local one.

    python -m bench.dask_scaling [--repeats N] [--out DIR]

Needs root, iproute2 and taskset (util-linux), and the ``dask`` extra. Each
"host" is a network namespace (``ipsb-h1``, ``ipsb-h2``) joined to a bridge
in the root namespace by a veth pair; the bridge has 198.18.0.1/24, host N
198.18.0.1N (RFC 2544 benchmark addresses, no route anywhere else). The
scheduler listens on 198.18.0.1; one Dask worker runs in each namespace,
pinned to its own core with taskset. The daemon (supervisor) runs in the
root namespace, unpinned: with 2 cores it shares them with the workers.

Measured, in lines per second from the first rename into incoming/ to the
last result: ``bench.stages:cpu_1ms`` (1 ms of pure Python per address,
a worker of 1 thread) and ``bench.stages:sleep_10ms`` (a 10 ms blocking
call, 16 threads), on 1 and 2 hosts, and the local executor with 1 and 2
worker processes on the same machine. Also the supervisor's own CPU time
per chunk and per file (from /proc), for the model in docs/scaling.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bench.inputs import make_lines, write_file, write_files
from bench.procstat import cpu_seconds
from bench.systems import REPO, DaemonRunner, Workload, running_daemon

__all__ = ["main"]

BRIDGE = "ipsb-br0"
SCHEDULER_IP = "198.18.0.1"
PORT = 18786
OUT = Path(__file__).resolve().parent / "out"


def sh(*args: str, check: bool = True) -> None:
    subprocess.run(list(args), check=check, capture_output=True, timeout=30)


def host_ip(n: int) -> str:
    return f"198.18.0.{10 + n}"


def teardown_hosts(count: int = 2) -> None:
    """Remove what this benchmark creates (tolerates leftovers of a killed run)."""
    for n in range(1, count + 1):
        sh("ip", "link", "del", f"ipsb-v{n}a", check=False)
        sh("ip", "netns", "del", f"ipsb-h{n}", check=False)
    sh("ip", "link", "del", BRIDGE, check=False)


@contextmanager
def simulated_hosts(count: int) -> Iterator[list[str]]:
    """``count`` network namespaces on a bridge with 198.18.0.1/24; their names."""
    teardown_hosts()
    try:
        sh("ip", "link", "add", BRIDGE, "type", "bridge")
        sh("ip", "addr", "add", f"{SCHEDULER_IP}/24", "dev", BRIDGE)
        sh("ip", "link", "set", BRIDGE, "up")
        names = []
        for n in range(1, count + 1):
            ns, a, b = f"ipsb-h{n}", f"ipsb-v{n}a", f"ipsb-v{n}b"
            sh("ip", "netns", "add", ns)
            sh("ip", "link", "add", a, "type", "veth", "peer", "name", b)
            sh("ip", "link", "set", b, "netns", ns)
            sh("ip", "link", "set", a, "master", BRIDGE)
            sh("ip", "link", "set", a, "up")
            sh("ip", "-n", ns, "addr", "add", f"{host_ip(n)}/24", "dev", b)
            sh("ip", "-n", ns, "link", "set", b, "up")
            sh("ip", "-n", ns, "link", "set", "lo", "up")
            names.append(ns)
        yield names
    finally:
        teardown_hosts(count)


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}


@contextmanager
def dask_cluster(root: Path, hosts: list[str], threads: int) -> Iterator[str]:
    """A scheduler on the bridge and one pinned worker per namespace; the scheduler's address."""
    address = f"tcp://{SCHEDULER_IP}:{PORT}"
    procs: list[subprocess.Popen[bytes]] = []
    log = open(root / "cluster.log", "ab")  # noqa: SIM115 - closed in finally
    try:
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", SCHEDULER_IP, "--port", str(PORT),
             "--no-dashboard"], stdout=log, stderr=log, env=_env(), start_new_session=True))
        time.sleep(2.0)
        for n, ns in enumerate(hosts, 1):
            procs.append(subprocess.Popen(
                ["ip", "netns", "exec", ns, "taskset", "-c", str(n - 1), sys.executable, "-m",
                 "distributed.cli.dask_worker", address, "--host", host_ip(n), "--nthreads", str(threads),
                 "--nworkers", "1", "--no-nanny", "--no-dashboard", "--local-directory", str(root / ns)],
                stdout=log, stderr=log, env=_env(), start_new_session=True))
        wait_workers(address, len(hosts))
        yield address
    finally:
        for proc in reversed(procs):
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
        log.close()


def wait_workers(address: str, count: int, timeout: float = 60.0) -> None:
    from distributed import Client

    with Client(address, timeout=20, set_as_default=False) as client:
        client.wait_for_workers(count, timeout=timeout)


def workload(root: Path, stage: str, lines: int) -> Workload:
    path = write_file(root / f"{stage.split(':')[1]}-{lines}.txt", make_lines(lines))
    return Workload(stage, ("classify", stage), (path,), lines)


def timed(daemon: DaemonRunner, w: Workload, repeats: int) -> float:
    return statistics.median(w.lines / daemon.run(w) for _ in range(repeats))


def measure(root: Path, repeats: int) -> dict[str, Any]:
    cases = {"cpu_1ms": ("bench.stages:cpu_1ms", 1, 6000, 16384),
             "sleep_10ms": ("bench.stages:sleep_10ms", 16, 24000, 4096)}
    figures: dict[str, Any] = {}
    for name, (stage, threads, lines, chunk) in cases.items():
        w = workload(root, stage, lines)
        row: dict[str, float] = {}
        for n in (1, 2):
            extra = {"workers": {"chunk_bytes": chunk}}
            with running_daemon(root / f"local-{name}-{n}", w.stages, n, threads, extra) as local:
                row[f"local_{n}"] = timed(local, w, repeats)
            with simulated_hosts(n) as hosts, dask_cluster(root, hosts, threads) as address:
                dask = {**extra, "executor": {"kind": "dask", "scheduler": address}}
                with running_daemon(root / f"dask-{name}-{n}", w.stages, 1, threads, dask) as remote:
                    row[f"dask_{n}"] = timed(remote, w, repeats)
            print(name, n, {k: round(v) for k, v in row.items()}, flush=True)
        row["dask_scaling"] = row["dask_2"] / row["dask_1"]
        figures[name] = row
    figures["supervisor"] = supervisor_cost(root)
    return figures


def supervisor_cost(root: Path) -> dict[str, float]:
    """Supervisor CPU seconds per chunk (one big file, classify) and per file (many one-line files)."""
    big = write_file(root / "classify-200k.txt", make_lines(200_000))
    small = tuple(write_files(root / "small", 2000, 1))
    result: dict[str, float] = {}
    with simulated_hosts(2) as hosts, dask_cluster(root, hosts, 2) as address:
        extra = {"workers": {"chunk_bytes": 65536}, "executor": {"kind": "dask", "scheduler": address}}
        with running_daemon(root / "dask-cost", ("classify",), 1, 16, extra) as d:
            supervisor = d.pids()["supervisor"][0]
            for label, w in (("chunk", Workload("big", ("classify",), (big,), 200_000)),
                             ("file", Workload("small", ("classify",), small, 2000, per_file=True))):
                before = cpu_seconds(supervisor)
                seconds = d.run(w)
                used = cpu_seconds(supervisor) - before
                units = (big.stat().st_size // 65536 + 1) if label == "chunk" else len(small)
                result[f"per_{label}_ms"] = 1000 * used / units
                result[f"{label}_run_seconds"] = seconds
                result[f"{label}_units"] = units
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.dask_scaling", description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("bench.dask_scaling needs root (network namespaces)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="ipspool-dask-bench-") as tmp:
        figures = measure(Path(tmp), args.repeats)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "dask_scaling.json").write_text(json.dumps(figures, indent=2) + "\n")
    print(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
