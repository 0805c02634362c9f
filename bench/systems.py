"""The systems under test: the daemon end to end and the baselines.

Each system takes a ``Workload`` (input files on disk, the stages to run) and
an empty output directory, produces one result file per input, and returns
the seconds it took. Start-up (the daemon's workers, dramatiq's worker pool,
Redis) is never inside the clock; reading inputs and writing results is.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from bench.work import work_file, work_line

__all__ = [
    "BASELINES",
    "DaemonRunner",
    "DramatiqRunner",
    "Workload",
    "classic_recipe",
    "pool_imap",
    "redis_server",
    "single_loop",
]

REPO = Path(__file__).resolve().parent.parent
_FORK = multiprocessing.get_context("fork")  # what a user's script gets on Linux


@dataclass(frozen=True)
class Workload:
    """Input files and the per-address work to do on them."""

    name: str
    stages: tuple[str, ...]
    files: tuple[Path, ...]
    lines: int                # total input lines (the throughput unit)
    threads: int = 16         # thread-pool size for systems that have one
    per_file: bool = False    # the unit of work is a file (many small files)
    config: str = ""          # JSON of further config sections the stages need (bench.work.pipeline_for)

    def read_lines(self) -> list[bytes]:
        """Every line of a single-file workload, without newlines."""
        assert len(self.files) == 1
        return self.files[0].read_bytes().split(b"\n")[:-1]


def _result(out: Path, src: Path) -> Path:
    return out / (src.name + ".jsonl")


# ---------------------------------------------------------------------------
# 1. a single-process loop
# ---------------------------------------------------------------------------

def single_loop(w: Workload, out: Path) -> float:
    """Each file through ``process_chunk`` in one process, one after another."""
    start = time.perf_counter()
    for src in w.files:
        work_file(w.stages, src, _result(out, src), w.config)
    return time.perf_counter() - start


# ---------------------------------------------------------------------------
# 2. the classic recipe: cpu_count() slices, a Process each, a thread pool in each
# ---------------------------------------------------------------------------

def _classic_lines(stages: tuple[str, ...], config: str, threads: int, items: list[tuple[int, bytes]],
                   part: str) -> None:
    with ThreadPoolExecutor(threads) as pool:
        results = list(pool.map(partial(work_line, stages, config=config), items))
    Path(part).write_bytes(b"".join(results))


def _classic_files(stages: tuple[str, ...], config: str, threads: int, items: list[tuple[Path, Path]],
                   _part: str) -> None:
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(lambda pair: work_file(stages, *pair, config), items))


def classic_recipe(w: Workload, out: Path) -> float:
    """Split the list into cpu_count() slices; one Process per slice, each running a thread pool."""
    n = os.cpu_count() or 1
    start = time.perf_counter()
    items: list[Any]
    if w.per_file:
        items, target = [(src, _result(out, src)) for src in w.files], _classic_files
    else:
        items, target = list(enumerate(w.read_lines(), 1)), _classic_lines
    size = math.ceil(len(items) / n)
    parts = [str(out / f".slice{i}") for i in range(n)]
    procs = [_FORK.Process(target=target,
                           args=(w.stages, w.config, w.threads, items[i * size:(i + 1) * size], parts[i]))
             for i in range(n)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
        if p.exitcode != 0:
            raise RuntimeError(f"classic recipe: a slice process exited with {p.exitcode}")
    if not w.per_file:
        with open(_result(out, w.files[0]), "wb") as result:
            for part in parts:
                result.write(Path(part).read_bytes())
                os.unlink(part)
    return time.perf_counter() - start


# ---------------------------------------------------------------------------
# 3. multiprocessing.Pool.imap with a tuned chunksize
# ---------------------------------------------------------------------------

def _imap_file(stages: tuple[str, ...], config: str, pair: tuple[Path, Path]) -> int:
    return work_file(stages, *pair, config)


def pool_imap(w: Workload, out: Path, chunksize: int) -> float:
    """``Pool(cpu_count()).imap(work, items, chunksize)``; results written in order by the parent."""
    start = time.perf_counter()
    with _FORK.Pool(os.cpu_count()) as pool:
        if w.per_file:
            pairs = [(src, _result(out, src)) for src in w.files]
            for _ in pool.imap(partial(_imap_file, w.stages, w.config), pairs, chunksize):
                pass
        else:
            with open(_result(out, w.files[0]), "wb") as result:
                items = enumerate(w.read_lines(), 1)
                for record in pool.imap(partial(work_line, w.stages, config=w.config), items, chunksize):
                    result.write(record)
    return time.perf_counter() - start


def tune_chunksize(w: Workload, out: Path, candidates: tuple[int, ...] = (16, 128, 1024, 4096)) -> int:
    """The fastest chunksize for this workload, from one timed run of each candidate."""
    best, best_time = candidates[0], math.inf
    for size in candidates:
        if size > max(1, w.lines // (os.cpu_count() or 1)) and size != candidates[0]:
            break  # larger chunks than a process's share only idle a process
        took = pool_imap(w, out, size)
        for f in out.iterdir():
            f.unlink()
        if took < best_time:
            best, best_time = size, took
    return best


BASELINES: dict[str, Callable[..., float]] = {
    "single loop": single_loop,
    "classic recipe": classic_recipe,
    "Pool.imap": pool_imap,
}


# ---------------------------------------------------------------------------
# the daemon, end to end
# ---------------------------------------------------------------------------

def _bench_env() -> dict[str, str]:
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH", "")]))
    return {**os.environ, "PYTHONPATH": path, "PYTHONUNBUFFERED": "1"}


class DaemonRunner:
    """A real ``ipspool run`` on a temporary spool, fed through tmp/ + rename()."""

    def __init__(self, root: Path, stages: tuple[str, ...], processes: int, threads: int = 16,
                 extra: dict[str, Any] | None = None) -> None:
        self.root = root
        self.spool = root / "spool"
        self.results = self.spool / "results"
        self.log = root / "daemon.log"
        self.stages = stages
        self.processes = processes
        self.threads = threads
        self.extra = extra or {}
        self.proc: subprocess.Popen[bytes] | None = None
        self.runs = 0

    def config_text(self) -> str:
        sections: dict[str, Any] = {
            "spool": {"dir": str(self.spool)},
            "workers": {"processes": self.processes, "threads": self.threads},
            "pipeline": {"stages": list(self.stages)},
            "log": {"level": "info", "format": "json", "file": str(self.log)},
        }
        for section, body in self.extra.items():
            sections[section] = body if isinstance(body, list) else {**sections.get(section, {}), **body}

        def table(header: str, body: dict[str, Any]) -> str:
            return header + "\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in body.items())

        return "".join("".join(table(f"[[{name}]]", item) for item in body) if isinstance(body, list)
                       else table(f"[{name}]", body) for name, body in sections.items())

    def start(self, timeout: float = 60.0) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        config = self.root / "ipspool.toml"
        config.write_text(self.config_text())
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "ipspool", "run", "--config", str(config)],
            stdout=subprocess.DEVNULL, stderr=open(self.root / "stderr.log", "ab"),  # noqa: SIM115
            env=_bench_env(), start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while not self.ready():
            if self.proc.poll() is not None:
                raise RuntimeError(f"ipspool exited with {self.proc.returncode}: "
                                   f"{(self.root / 'stderr.log').read_text()[-2000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError("ipspool did not log daemon.ready in time")
            time.sleep(0.05)

    def ready(self) -> bool:
        return self.log.exists() and b'"daemon.ready"' in self.log.read_bytes()

    def pids(self) -> dict[str, list[int]]:
        """Processes of the daemon's session by role (from their titles)."""
        assert self.proc is not None
        roles: dict[str, list[int]] = {}
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                if os.getsid(int(entry)) != self.proc.pid:
                    continue
                title = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if title.startswith("ipspool: "):
                roles.setdefault(title.split()[1], []).append(int(entry))
        return roles

    def stage(self, srcs: tuple[Path, ...]) -> list[tuple[Path, Path, Path]]:
        """Copy inputs into tmp/ (outside the clock); (tmp, incoming, result) per file."""
        self.runs += 1
        moves = []
        for src in srcs:
            name = f"r{self.runs}-{src.name}"
            tmp = self.spool / "tmp" / name
            shutil.copyfile(src, tmp)  # a copy: the daemon refuses hard links
            moves.append((tmp, self.spool / "incoming" / name, self.results / f"{name}.jsonl"))
        return moves

    def run(self, w: Workload, out: Path | None = None, timeout: float = 900.0) -> float:
        """Drop every input, wait for every result; the daemon's seconds. With ``out``, the
        results are moved there afterwards (outside the clock) as ``NAME.jsonl``, to be checked."""
        moves = self.stage(w.files)
        start = time.perf_counter()
        for tmp, incoming, _ in moves:
            os.rename(tmp, incoming)
        pending = [result for _, _, result in moves]
        deadline = time.monotonic() + timeout
        at = 0
        while at < len(pending):
            if os.path.exists(pending[at]):
                at += 1
                continue
            if time.monotonic() > deadline or (self.proc is not None and self.proc.poll() is not None):
                raise RuntimeError(f"daemon: {len(pending) - at} results missing; see {self.log}")
            time.sleep(0.002)
        took = time.perf_counter() - start
        if out is not None:
            for (_, _, result), src in zip(moves, w.files, strict=True):
                os.rename(result, _result(out, src))
        self.clean()
        return took

    def clean(self) -> None:
        """Remove results and processed inputs between runs (they would fill the disk)."""
        for directory in (self.results, self.spool / "done"):
            with os.scandir(directory) as entries:
                for entry in entries:
                    if entry.is_file(follow_symlinks=False):
                        os.unlink(entry.path)

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        self.proc = None


@contextmanager
def running_daemon(root: Path, stages: tuple[str, ...], processes: int, threads: int = 16,
                   extra: dict[str, Any] | None = None) -> Iterator[DaemonRunner]:
    daemon = DaemonRunner(root, stages, processes, threads, extra)
    try:
        daemon.start()
        yield daemon
    finally:
        daemon.stop()


# ---------------------------------------------------------------------------
# 4. dramatiq with Redis
# ---------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def redis_server(root: Path) -> Iterator[str]:
    """Debian's redis-server on loopback and a free port, no persistence; its URL."""
    port = free_port()
    proc = subprocess.Popen(
        ["redis-server", "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no",
         "--dir", str(root), "--daemonize", "no", "--loglevel", "warning"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        break
            except OSError:
                pass
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError("redis-server did not start")
            time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(10)


class DramatiqRunner:
    """``dramatiq bench.dq_tasks`` with a worker process pool, and the producing side."""

    def __init__(self, root: Path, url: str, processes: int, threads: int) -> None:
        self.root = root
        self.url = url
        self.processes = processes
        self.threads = threads
        self.proc: subprocess.Popen[bytes] | None = None
        self.runs = 0

    def start(self, timeout: float = 60.0) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        log = self.root / f"dramatiq-{self.processes}x{self.threads}.log"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "dramatiq", "bench.dq_tasks", "--processes", str(self.processes),
             "--threads", str(self.threads), "--queues", "ipspool-bench"],
            stdout=subprocess.DEVNULL, stderr=open(log, "wb"),  # noqa: SIM115
            env={**_bench_env(), "BENCH_REDIS_URL": self.url}, start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while log.read_bytes().count(b"Worker process is ready for action") < self.processes:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"dramatiq workers did not start: {log.read_text()[-2000:]}")
            time.sleep(0.05)

    def run(self, w: Workload, out: Path, batch: int) -> float:
        """Enqueue ``batch`` lines per message (1: one per address); wait; write results in order."""
        os.environ["BENCH_REDIS_URL"] = self.url  # read when bench.dq_tasks is imported
        import redis

        from bench import dq_tasks

        client = redis.Redis.from_url(self.url)
        self.runs += 1
        run = f"run{self.runs}"
        stages = list(w.stages)
        start = time.perf_counter()
        total = 0
        for file_no, src in enumerate(w.files):
            lines = src.read_bytes().decode().split("\n")[:-1]
            for at in range(0, len(lines), batch):
                dq_tasks.process_batch.send(run, file_no, at + 1, lines[at:at + batch], stages, w.config)
            total += len(lines)
        while int(client.get(f"{run}:done") or 0) < total:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError("dramatiq workers died")
            time.sleep(0.002)
        for file_no, src in enumerate(w.files):
            key = f"{run}:res:{file_no}"
            parts = client.hgetall(key)
            ordered = sorted(parts.items(), key=lambda kv: int(kv[0]))
            _result(out, src).write_bytes(b"".join(v for _, v in ordered))
        took = time.perf_counter() - start
        client.flushdb()
        return took

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        self.proc = None


def dramatiq_available() -> str | None:
    """Why the dramatiq rows cannot run here, or None when they can."""
    if shutil.which("redis-server") is None:
        return "redis-server is not installed (apt-get install redis-server)"
    try:
        import dramatiq  # noqa: F401
        import redis  # noqa: F401
    except ImportError:
        return "dramatiq[redis] is not installed (pip install -e '.[bench]')"
    return None
