"""Helpers for the fault, hostile-input and load tests: inputs and the final audit.

The audit is the durability promise of docs/durability.md in code: every
input ends as exactly one complete result (one record per non-blank,
non-comment line, in order) or in failed/ with a reason, and the spool holds
nothing half-done.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tests.support.daemon import REPO, Daemon, python_path, wait_for


def mixed_lines(n: int, seed: int) -> list[str]:
    """``n`` lines: IPv4, IPv6, a few bad lines; no blanks or comments (one record each)."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        if i % 37 == 5:
            out.append(f"bad-{i}")
        elif i % 4 == 0:
            out.append(f"2001:db8::{rng.getrandbits(16):x}")
        else:
            out.append(".".join(str(rng.randrange(1, 224)) for _ in range(4)))
    return out


def mixed_inputs(count: int, seed: int = 7, big_every: int = 10, big_lines: int = 3000) -> dict[str, list[str]]:
    """``count`` files of mixed sizes: mostly 1-200 lines, every ``big_every``-th one large."""
    rng = random.Random(seed)
    return {
        f"in-{i:03d}.txt": mixed_lines(big_lines if i % big_every == 3 else rng.randrange(1, 200), seed + i)
        for i in range(count)
    }


def records_of(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_bytes().splitlines()]


def audit(d: Daemon, inputs: dict[str, list[str]], allowed_failures: tuple[str, ...] = ()) -> dict[str, str]:
    """Check the promise for every input; return {name: failure reason} for those in failed/.

    - exactly one result, named after the input, whose records match the
      input's lines one for one and in order; or failed/NAME.error.json with a
      reason from ``allowed_failures`` (and the input beside it);
    - nothing left in incoming/ or active/, no part or temporary file, no
      result that belongs to no input.
    """
    failures: dict[str, str] = {}
    for name, lines in inputs.items():
        result = d.result_path(name)
        error = d.spool / "failed" / f"{name}.error.json"
        if error.exists():
            assert not result.exists(), f"{name}: both a result and a failure"
            reason = json.loads(error.read_text())["reason"]
            assert reason in allowed_failures, f"{name}: failed with {reason!r}"
            assert (d.spool / "failed" / name).exists(), f"{name}: failure record without its input"
            failures[name] = reason
            continue
        assert result.exists(), f"{name}: neither a result nor a failure"
        records = records_of(result)
        assert [r["line"] for r in records] == list(range(1, len(lines) + 1)), f"{name}: records out of order"
        assert [r["input"] for r in records] == lines, f"{name}: records do not match the input"
    expected = {f"{name}{suffix}" for name in inputs if name not in failures for suffix in (".jsonl", ".summary.json")}
    present = {p.name for p in d.results.iterdir() if p.is_file() or p.is_symlink()}
    assert present == expected, f"unexpected results: {sorted(present ^ expected)[:10]}"
    assert not list((d.spool / "active").iterdir()), "left in active/"
    assert not list((d.spool / "incoming").iterdir()), "left in incoming/"
    # Only files count: a running daemon keeps its (empty) run folder in .parts/.
    assert not [p for p in (d.results / ".parts").rglob("*") if not p.is_dir()], "part files left behind"
    assert not [p for p in (d.spool / "failed").iterdir() if p.name.endswith(".tmp")], "temporary files left"
    return failures


def start_under(d: Daemon, prefix: list[str], env: dict[str, str] | None = None, python: str = "") -> None:
    """Like ``Daemon.start(wait_ready=False)``, with a command prefix (strace, setpriv)."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": python_path(), **(env or {})}
    d.proc = subprocess.Popen(
        [*prefix, python or sys.executable, "-m", "ipspool", "run", "--config", str(d.config_path)],
        stdout=subprocess.DEVNULL, stderr=open(d.root / "stderr.log", "ab"),  # noqa: SIM115
        env=full_env, start_new_session=True, cwd="/",
    )


def wait_ready(d: Daemon, pid: int | None = None, timeout: float = 30.0) -> dict[str, Any]:
    """Wait for the daemon.ready of process ``pid`` (default: the one started last)."""
    assert d.proc is not None
    want = pid or d.proc.pid
    return d.wait_event("daemon.ready", timeout, after_start=True, where=lambda e: e["pid"] == want)


def crash_supervisor(d: Daemon) -> None:
    """kill -9 the supervisor, then clean up its cgroup as systemd does before a restart.

    Workers and the Manager notice the closed pipes and exit by themselves;
    whatever is still there after a few seconds is killed, like systemd's
    final SIGKILL of the unit's control group.
    """
    assert d.proc is not None
    os.kill(d.proc.pid, signal.SIGKILL)
    d.proc.wait(10)
    deadline = time.monotonic() + 5
    while d.session_pids() and time.monotonic() < deadline:
        time.sleep(0.05)
    for pid in d.session_pids():
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    wait_for(lambda: not d.session_pids(), 10, what="the old daemon's processes to exit")
    d.proc = None


def vm_hwm_kib(pid: int) -> int:
    """Peak resident set size of a process (VmHWM), in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmHWM for {pid}")


def install_for_nobody(dest: Path) -> tuple[str, dict[str, str]]:
    """A copy of ipspool and its dependencies in ``dest`` (world-readable); the interpreter and environment.

    The checkout and its virtualenv may sit in a directory only root can
    enter (CI clones into ``mktemp -d``, mode 0700), so the unprivileged user
    cannot run them in place. The distributions ipspool requires (found
    through their metadata, recursively) are copied file by file with
    ``daemon/ipspool`` beside them, and the system interpreter of the same
    version runs them with ``PYTHONPATH`` pointing there.
    """
    import shutil
    from importlib import metadata

    from packaging.requirements import Requirement

    seen: set[str] = set()
    todo = [Requirement(r) for r in metadata.distribution("ipspool").requires or []]
    todo = [r for r in todo if r.marker is None]
    while todo:
        req = todo.pop()
        key = req.name.lower().replace("_", "-")
        if key in seen:
            continue
        seen.add(key)
        dist = metadata.distribution(req.name)
        for file in dist.files or []:
            source = Path(str(dist.locate_file(file))).resolve()
            if ".." in file.parts or not source.is_file() or "__pycache__" in file.parts:
                continue
            (dest / file).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / file)
        extras = req.extras or {""}
        for sub in dist.requires or []:
            need = Requirement(sub)
            if need.marker is None or any(need.marker.evaluate({"extra": e}) for e in extras):
                todo.append(need)
    shutil.copytree(REPO / "daemon" / "ipspool", dest / "ipspool", ignore=shutil.ignore_patterns("__pycache__"))
    for path in [dest, *dest.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    # The system interpreter of the same version: the one this virtualenv was
    # made from may live under /root (pyenv), where nobody cannot reach it.
    system = Path(f"/usr/bin/python{sys.version_info.major}.{sys.version_info.minor}")
    python = str(system) if system.exists() else os.path.realpath(sys.executable)
    return python, {"PYTHONPATH": str(dest), "PYTHONNOUSERSITE": "1"}
