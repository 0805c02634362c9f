"""A real ``ipspool run`` process on a temporary spool (``Daemon``), and the
helpers every kind of test shares: ``REPO``, ``wait_for``, ``write_toml``."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]

__all__ = ["REPO", "Daemon", "python_path", "wait_for", "write_toml"]


def python_path() -> str:
    """PYTHONPATH for an ``ipspool`` subprocess: the repository root first, so
    that workers can import test stages by name (``tests.support.stagelib:slow``)."""
    return os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH", "")]))


def wait_for(predicate: Callable[[], Any], timeout: float = 30.0, interval: float = 0.02, what: str = "") -> Any:
    """Poll ``predicate`` until it returns something truthy; fail with ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")
        time.sleep(interval)


def write_toml(path: Path, data: dict[str, Any]) -> Path:
    """Write a small TOML file (tables of scalars and lists are enough here)."""

    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, str):
            return json.dumps(v)
        if isinstance(v, list | tuple):
            return "[" + ", ".join(value(x) for x in v) + "]"
        return repr(v)

    lines: list[str] = []
    for section, body in data.items():
        if isinstance(body, list):
            for item in body:
                lines.append(f"[[{section}]]")
                lines.extend(f"{k} = {value(v)}" for k, v in item.items())
        else:
            lines.append(f"[{section}]")
            lines.extend(f"{k} = {value(v)}" for k, v in body.items())
    path.write_text("\n".join(lines) + "\n")
    return path


class Daemon:
    """A running ``ipspool run`` and the spool it serves."""

    def __init__(self, root: Path, settings: dict[str, Any]) -> None:
        self.root = root
        self.spool = root / "spool"
        self.results = self.spool / "results"
        self.log_path = root / "daemon.log"
        self.settings = settings
        self.config_path = root / "ipspool.toml"
        self.proc: subprocess.Popen[bytes] | None = None
        self._log_offset = 0
        self._events: list[dict[str, Any]] = []
        self._markers = 0
        self.write_config()

    # -- configuration ------------------------------------------------------

    def write_config(self, **overrides: dict[str, Any]) -> None:
        data: dict[str, Any] = {
            "spool": {"dir": str(self.spool), "rescan_interval": 1.0},
            "workers": {"processes": 2, "threads": 4, "heartbeat_timeout": 10.0, "graceful_timeout": 20.0},
            "log": {"level": "debug", "format": "json", "file": str(self.log_path)},
        }
        for section, body in {**self.settings, **overrides}.items():
            if isinstance(body, dict):
                data[section] = {**data.get(section, {}), **body}
            else:
                data[section] = body
        write_toml(self.config_path, data)

    # -- process ------------------------------------------------------------

    def start(self, wait_ready: bool = True, env: dict[str, str] | None = None,
              args: Sequence[str] | None = None, module: str = "ipspool") -> None:
        """``ipspool run --config FILE``, or ``ipspool ARGS...`` (e.g. run without --config, or with -v);
        ``module``: a driver that runs ipspool (tests.support.crashinject)."""
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": python_path(), **(env or {})}
        argv = list(args) if args is not None else ["run", "--config", str(self.config_path)]
        self.proc = subprocess.Popen(
            [sys.executable, "-m", module, *argv],
            stdout=subprocess.DEVNULL, stderr=open(self.root / "stderr.log", "ab"),  # noqa: SIM115
            env=full_env, start_new_session=True,
        )
        if wait_ready:
            self.wait_event("daemon.ready", after_start=True)

    def signal(self, signum: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    def stop(self, timeout: float = 60.0) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill_all()
            raise
        self.proc = None
        return code

    def kill_all(self) -> None:
        """SIGKILL every process of the daemon's session (test cleanup)."""
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        for pid in self.session_pids():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait(10)
        self.proc = None

    def session_pids(self) -> list[int]:
        if self.proc is None:
            return []
        pids = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                if os.getsid(int(entry)) == self.proc.pid:
                    pids.append(int(entry))
            except (ProcessLookupError, PermissionError):
                continue
        return pids

    def pids_titled(self, prefix: str) -> list[int]:
        found = []
        for pid in self.session_pids():
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
            except OSError:
                continue
            if cmdline.startswith(prefix):
                found.append(pid)
        return found

    def worker_pids(self) -> list[int]:
        return self.pids_titled("ipspool: worker")

    # -- logs ---------------------------------------------------------------

    def events(self, name: str | None = None) -> list[dict[str, Any]]:
        if self.log_path.exists():
            with open(self.log_path, "rb") as handle:
                handle.seek(self._log_offset)
                data = handle.read()
            complete = data.rfind(b"\n") + 1
            self._log_offset += complete
            for line in data[:complete].splitlines():
                self._events.append(json.loads(line))
        return [e for e in self._events if name is None or e["event"] == name]

    def wait_event(self, name: str, timeout: float = 30.0, after_start: bool = False,
                   where: Callable[[dict[str, Any]], bool] | None = None) -> dict[str, Any]:
        def find() -> dict[str, Any] | None:
            if after_start and self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"daemon exited with {self.proc.returncode}; stderr: "
                                     f"{(self.root / 'stderr.log').read_text()[-3000:]}")
            for event in self.events(name):
                if where is None or where(event):
                    return event
            return None

        return wait_for(find, timeout, what=f"log event {name}")  # type: ignore[no-any-return]

    # -- files --------------------------------------------------------------

    def drop(self, name: str, content: bytes | str) -> Path:
        """Submit as a producer does: write in tmp/, then rename into incoming/."""
        data = content.encode() if isinstance(content, str) else content
        tmp = self.spool / "tmp" / f".{name}.part"
        tmp.write_bytes(data)
        target = self.spool / "incoming" / name
        os.rename(tmp, target)
        return target

    def await_rescan(self, timeout: float = 30.0) -> None:
        """Return once a periodic scan of incoming/ has run since the call.

        A marker is linked into incoming/ (IN_CREATE only, which the watch
        does not act on) with an mtime long past, so only a scan offers it;
        its claim is the proof that a scan passed (its result stays).
        """
        self._markers += 1
        name = f"rescan-marker-{self._markers}"
        tmp = self.spool / "tmp" / f".{name}"
        tmp.write_text("192.0.2.255\n")
        os.utime(tmp, (time.time() - 3600, time.time() - 3600))
        os.link(tmp, self.spool / "incoming" / name)
        tmp.unlink()
        self.wait_event("file.claimed", timeout, where=lambda e: e["file"] == name)

    def result_path(self, name: str) -> Path:
        return self.results / f"{name}.jsonl"

    def wait_result(self, name: str, timeout: float = 60.0) -> list[dict[str, Any]]:
        path = self.result_path(name)
        wait_for(path.exists, timeout, what=f"result {path}")
        return [json.loads(line) for line in path.read_bytes().splitlines()]

    def wait_failed(self, name: str, timeout: float = 30.0) -> dict[str, Any]:
        path = self.spool / "failed" / f"{name}.error.json"
        wait_for(path.exists, timeout, what=f"failure record {path}")
        return json.loads(path.read_text())  # type: ignore[no-any-return]

    def ipspool(self, *args: str, timeout: float = 60.0,
                env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "ipspool", *args], capture_output=True, text=True, timeout=timeout,
            env={**os.environ, "PYTHONPATH": python_path(), **(env or {})},
        )

