"""IntelMQ as a benchmark system: its file collector feeding its reverse-DNS and MaxMind experts.

    python -m bench.intelmq --setup     # build/intelmq-venv: pip install intelmq geoip2 (from PyPI)
    python -m bench.intelmq --check     # one small file through the pipeline; prints lines/s

The pipeline an operator would set up for this job with IntelMQ (3.x):

    file collector -> generic CSV parser (one column: source.ip) -> reverse DNS expert
        -> MaxMind GeoIP expert -> file output

one process per bot, each started as IntelMQ's own ``Bot.run`` through
``bench/intelmq_bot.py`` (no intelmqctl: it would manage processes itself),
with Debian's redis-server on loopback, a free port and a private directory
as the message broker, the statistics store and the reverse-DNS expert's
cache. Configuration is written as ``runtime.yaml`` under a private
``INTELMQ_ROOT_DIR`` (the package's own ``harmonization.conf`` copied
beside it). The reverse-DNS expert asks the benchmark's delaying nameserver
on loopback and the GeoIP expert reads the same MMDB file as ipspool's
``geoip`` stage.

The clock runs from the rename of the input file into the collector's
directory until the file output holds one event per address. The collector
looks at its directory once a second (``rate_limit`` 1), so up to a second
of pick-up is inside the clock. Every event is checked: its own PTR name and
a country code, or the run fails.

IntelMQ lives in its own venv under build/ (never committed): it pins its own
redis and dnspython versions, and the daemon's venv stays as it is.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from bench.enrich import countries
from bench.rdns import expected
from bench.systems import REPO, Workload, redis_server

__all__ = ["VENV", "IntelmqPipeline", "available", "running", "setup"]

VENV = REPO / "build" / "intelmq-venv"
PYTHON = VENV / "bin" / "python"
PACKAGES = ("intelmq==3.5.0", "geoip2")
LAUNCHER = Path(__file__).resolve().parent / "intelmq_bot.py"
START_TIMEOUT = 60.0


def setup() -> None:
    """Create the venv and install IntelMQ and the GeoIP expert's geoip2 into it."""
    if not PYTHON.exists():
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True, timeout=300)
    subprocess.run([str(PYTHON), "-m", "pip", "install", "-q", *PACKAGES], check=True, timeout=900)


def available() -> str | None:
    """Why the IntelMQ row cannot run here, or None when it can."""
    if shutil.which("redis-server") is None:
        return "redis-server is not installed (apt-get install redis-server)"
    if not PYTHON.exists():
        return f"no IntelMQ venv at {VENV} (python -m bench.intelmq --setup)"
    done = subprocess.run([str(PYTHON), "-c", "import intelmq, geoip2, dns.resolver"],
                          capture_output=True, text=True, timeout=60, check=False)
    if done.returncode != 0:
        return f"IntelMQ venv incomplete: {done.stderr.strip().splitlines()[-1:]} (python -m bench.intelmq --setup)"
    return None


def _package_dir() -> Path:
    done = subprocess.run([str(PYTHON), "-c", "import intelmq, os; print(os.path.dirname(intelmq.__file__))"],
                          capture_output=True, text=True, timeout=60, check=True)
    return Path(done.stdout.strip())


def _version() -> str:
    done = subprocess.run([str(PYTHON), "-c", "import intelmq; print(intelmq.__version__)"],
                          capture_output=True, text=True, timeout=60, check=True)
    return done.stdout.strip()


class IntelmqPipeline:
    """The five bots on a private Redis; ``run(workload, out)`` times one file through them."""

    BOTS = ("collector", "parser", "rdns", "geoip", "output")

    def __init__(self, root: Path, redis_port: int, nameserver: str, city_db: Path) -> None:
        self.root = root
        self.port = redis_port
        self.nameserver = nameserver
        self.city_db = city_db
        self.collect = root / "collect"
        self.events = root / "output" / "events.txt"
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.version = ""

    def runtime(self) -> dict[str, Any]:
        """runtime.yaml (JSON is YAML): the broker, the five bots and their queues."""
        redis = {"host": "127.0.0.1", "port": self.port}
        common = {f"{side}_pipeline_{k}": v for side in ("source", "destination") for k, v in
                  {"broker": "redis", **redis, "db": 2}.items()}
        glob = {**common, "statistics_host": "127.0.0.1", "statistics_port": self.port, "statistics_database": 3,
                "logging_path": str(self.root / "var" / "log") + "/", "logging_level": "INFO",
                "error_procedure": "pass", "error_dump_message": True, "process_manager": "intelmq"}

        def bot(module: str, after: str | None, **parameters: Any) -> dict[str, Any]:
            if after is not None:
                parameters["destination_queues"] = {"_default": [f"{after}-queue"]}
            return {"module": module, "enabled": True, "run_mode": "continuous", "parameters": parameters}

        return {
            "global": glob,
            "collector": bot("intelmq.bots.collectors.file.collector_file", "parser", path=str(self.collect),
                             postfix=".txt", delete_file=True, rate_limit=1, name="bench", provider="ipspool"),
            "parser": bot("intelmq.bots.parsers.generic.parser_csv", "rdns", columns=["source.ip"],
                          delimiter=",", type="unknown"),
            "rdns": bot("intelmq.bots.experts.reverse_dns.expert", "geoip", redis_cache_host="127.0.0.1",
                        redis_cache_port=self.port, redis_cache_db=7, redis_cache_ttl=86400),
            "geoip": bot("intelmq.bots.experts.maxmind_geoip.expert", "output", database=str(self.city_db),
                         license_key="", autoupdate_cached_database=False),
            "output": bot("intelmq.bots.outputs.file.output", None, file=str(self.events)),
        }

    def settings(self) -> dict[str, Any]:
        return {"processes": len(self.BOTS), "intelmq": self.version}

    def start(self) -> None:
        etc = self.root / "etc"
        for directory in (etc, self.root / "var" / "log", self.root / "var" / "lib" / "bots", self.collect,
                          self.events.parent):
            directory.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(_package_dir() / "etc" / "harmonization.conf", etc / "harmonization.conf")
        (etc / "runtime.yaml").write_text(json.dumps(self.runtime(), indent=1) + "\n")
        self.version = _version()
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "INTELMQ_ROOT_DIR": str(self.root) + "/",
               "BENCH_DNS": self.nameserver, "LANG": "C.UTF-8"}
        for bot_id in reversed(self.BOTS):  # consumers first
            self.procs[bot_id] = subprocess.Popen(
                [str(PYTHON), "-P", str(LAUNCHER), bot_id, self.runtime()[bot_id]["module"]],
                stdout=subprocess.DEVNULL, stderr=open(self.root / f"{bot_id}.stderr", "wb"),  # noqa: SIM115
                env=env, start_new_session=True, cwd=self.root,
            )
        deadline = time.monotonic() + START_TIMEOUT
        for bot_id in self.BOTS:
            log = self.root / "var" / "log" / f"{bot_id}.log"
            while not (log.exists() and b"Bot initialization completed." in log.read_bytes()):
                self._alive()
                if time.monotonic() > deadline:
                    raise RuntimeError(f"IntelMQ bot {bot_id} did not start in {START_TIMEOUT:g}s; see {log}")
                time.sleep(0.05)

    def _alive(self) -> None:
        for bot_id, proc in self.procs.items():
            if proc.poll() is not None:
                stderr = (self.root / f"{bot_id}.stderr").read_text(errors="replace")[-2000:]
                log = self.root / "var" / "log" / f"{bot_id}.log"
                tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
                raise RuntimeError(f"IntelMQ bot {bot_id} exited with {proc.returncode}: {stderr}{tail}")

    def run(self, w: Workload, out: Path, timeout: float | None = None) -> float:
        """One file through the pipeline; the seconds until every event is written. Checks every event."""
        [src] = w.files
        ips = src.read_text().split()
        staged = self.collect / f".{src.name}.tmp"  # not *.txt: the collector ignores it
        shutil.copyfile(src, staged)
        limit = timeout if timeout is not None else 120.0 + len(ips)
        start = time.perf_counter()
        os.rename(staged, self.collect / src.name)
        deadline = time.monotonic() + limit
        seen = 0
        with open(self.events, "rb") as events:
            while True:
                seen += events.read().count(b"\n")  # only what was appended since the last look
                if seen >= len(ips):
                    break
                self._alive()
                if time.monotonic() > deadline:
                    raise RuntimeError(f"IntelMQ: {seen} of {len(ips)} events after {limit:g}s; see {self.root}")
                time.sleep(0.005)
        took = time.perf_counter() - start
        data = self.events.read_bytes()
        os.truncate(self.events, 0)  # the output bot appends (O_APPEND): its next write lands at 0
        (out / f"{src.name}.jsonl").write_bytes(data)
        check_events(data, ips, self.city_db)
        return took

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
        self.procs = {}


def check_events(data: bytes, ips: list[str], city_db: Path) -> None:
    """One event per address, each with its own PTR name and the country the database holds; else RuntimeError."""
    events = [json.loads(line) for line in data.splitlines()]
    by_ip = {e.get("source.ip"): e for e in events}
    if len(events) != len(ips) or set(by_ip) != set(ips):
        raise RuntimeError(f"IntelMQ: {len(events)} events for {len(ips)} addresses")
    country = countries(city_db, ips)
    for ip in ips:
        event = by_ip[ip]
        if event.get("source.reverse_dns", "").rstrip(".") != expected(ip):
            raise RuntimeError(f"IntelMQ: wrong reverse DNS for {ip}: {event}")
        if event.get("source.geolocation.cc") != country[ip]:
            raise RuntimeError(f"IntelMQ: country {country[ip]} expected for {ip}: {event}")


@contextmanager
def running(root: Path, nameserver: str, city_db: Path) -> Iterator[IntelmqPipeline]:
    """Redis and the five bots, started before the clock and stopped after."""
    root.mkdir(parents=True, exist_ok=True)
    with ExitStack() as stack:
        url = stack.enter_context(redis_server(root))
        pipeline = IntelmqPipeline(root, int(url.rsplit(":", 1)[1].split("/")[0]), nameserver, city_db)
        stack.callback(pipeline.stop)
        pipeline.start()
        yield pipeline


def _check(lines: int) -> int:
    from bench.enrich import geo_dbs, unique_file
    from bench.rdns import nameserver

    with tempfile.TemporaryDirectory(prefix="ipspool-bench-intelmq-") as tmp, ExitStack() as stack:
        ns, _ = stack.enter_context(nameserver(1.0))
        city, _ = geo_dbs(512)
        pipeline = stack.enter_context(running(Path(tmp) / "intelmq", ns, city))
        src = Path(tmp) / "check.txt"
        unique_file(src, lines, seed=14)
        out = Path(tmp) / "out"
        out.mkdir()
        took = pipeline.run(Workload("check", (), (src,), lines), out)
        print(f"IntelMQ {pipeline.version}: {lines} addresses in {took:.2f}s, {lines / took:,.0f} lines/s")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.intelmq", description=__doc__.split("\n\n")[0])
    parser.add_argument("--setup", action="store_true", help=f"create {VENV} and pip install {' '.join(PACKAGES)}")
    parser.add_argument("--check", type=int, nargs="?", const=100, metavar="LINES",
                        help="one file of LINES unique addresses through the pipeline (default 100)")
    args = parser.parse_args(argv)
    if args.setup:
        setup()
    if args.check:
        return _check(args.check)
    reason = available()
    print(reason or f"IntelMQ ready in {VENV}")
    return 1 if reason else 0


if __name__ == "__main__":
    raise SystemExit(main())
