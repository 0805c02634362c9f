"""A real Dask scheduler and nanny-supervised workers on loopback, for the e2e tests.

Processes are started with ``python -m distributed.cli.dask_scheduler`` /
``dask_worker`` on 127.0.0.1 and a free port, with the repository on
PYTHONPATH so workers import test stages (``tests.support.stagelib:NAME``).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.support.daemon import python_path, wait_for

__all__ = ["DISTRIBUTED_MISSING", "DaskCluster", "free_port", "need_distributed"]

DISTRIBUTED_MISSING = "distributed is not installed (pip install 'ipspool[dask]'); the Dask executor tests need it"


def need_distributed() -> None:
    try:
        import distributed  # noqa: F401
    except ImportError:
        pytest.skip(DISTRIBUTED_MISSING)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def children(pid: int) -> list[int]:
    found: list[int] = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            found += [int(c) for c in Path(f"/proc/{pid}/task/{task}/children").read_text().split()]
    except OSError:
        pass
    return found


class DaskCluster:
    """One scheduler and some workers; ``tls``: (ca, cert, key) files for every process."""

    def __init__(self, root: Path, tls: tuple[str, str, str] | None = None) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.tls = tls
        self.scheduler: subprocess.Popen[bytes] | None = None
        self.workers: list[subprocess.Popen[bytes]] = []

    @property
    def address(self) -> str:
        return f"{'tls' if self.tls else 'tcp'}://127.0.0.1:{self.port}"

    def _tls_args(self) -> list[str]:
        if self.tls is None:
            return []
        ca, cert, key = self.tls
        return ["--tls-ca-file", ca, "--tls-cert", cert, "--tls-key", key]

    def _spawn(self, args: list[str], log: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        full_env = {**os.environ, "PYTHONPATH": python_path(), "PYTHONUNBUFFERED": "1",
                    "DASK_DISTRIBUTED__WORKER__DAEMON": "False", **(env or {})}
        with open(self.root / log, "ab") as out:
            return subprocess.Popen([sys.executable, "-m", *args], stdout=out, stderr=subprocess.STDOUT,
                                    env=full_env, start_new_session=True)

    def start_scheduler(self) -> None:
        self.scheduler = self._spawn(
            ["distributed.cli.dask_scheduler", "--host", "127.0.0.1", "--port", str(self.port),
             "--no-dashboard", *self._tls_args()], "scheduler.log")
        wait_for(self._answers, 30, 0.1, what=f"the scheduler on port {self.port}")

    def _answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                return True
        except OSError:
            return False

    def start_worker(self, threads: int = 2, name: str = "") -> subprocess.Popen[bytes]:
        name = name or f"w{len(self.workers)}"
        worker = self._spawn(
            ["distributed.cli.dask_worker", self.address, "--host", "127.0.0.1", "--nthreads", str(threads),
             "--nworkers", "1", "--name", name, "--no-dashboard", "--death-timeout", "60",
             "--local-directory", str(self.root / name), *self._tls_args()], f"worker-{name}.log")
        self.workers.append(worker)
        return worker

    def worker_processes(self) -> list[int]:
        """Pids of the worker processes proper (the nanny's child titled "dask worker")."""
        found = []
        for nanny in self.workers:
            for child in children(nanny.pid) if nanny.poll() is None else []:
                try:
                    if Path(f"/proc/{child}/cmdline").read_bytes().startswith(b"dask worker"):
                        found.append(child)
                except OSError:
                    continue
        return found

    def kill_scheduler(self) -> None:
        if self.scheduler is not None:
            self.scheduler.send_signal(signal.SIGKILL)
            self.scheduler.wait(10)
            self.scheduler = None

    def stop(self) -> None:
        for proc in [*self.workers, self.scheduler]:
            if proc is not None and proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait(10)
        self.workers = []
        self.scheduler = None

    def __enter__(self) -> DaskCluster:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()
