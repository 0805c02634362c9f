"""Producers' side of the protocol: write in tmp/, fsync, rename into incoming/.

The name a file gets in incoming/ is chosen free everywhere the daemon looks
(incoming/, active/, done/, failed/, results/), so the daemon claims it under
the same name and ``--wait`` knows which result to wait for.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass

from ipspool.config import Config
from ipspool.exitcodes import ExitCode
from ipspool.fsops import rename_noreplace
from ipspool.spool import ERROR_SUFFIX, RESULT_SUFFIX

__all__ = ["Submitted", "submit_bytes", "submit_files"]

_COPY_BLOCK = 1 << 20


@dataclass(frozen=True)
class Submitted:
    source: str
    name: str


def _taken(config: Config, name: str) -> bool:
    spool = config.spool_dir
    return any(
        os.path.lexists(path)
        for path in (
            spool / "incoming" / name, spool / "active" / name, spool / "done" / name,
            spool / "failed" / name, config.results_dir / (name + RESULT_SUFFIX),
        )
    )


def _free_name(config: Config, wanted: str) -> str:
    wanted = wanted.lstrip(".") or "input"
    if not _taken(config, wanted):
        return wanted
    n = 1
    while _taken(config, f"{wanted}.{n}"):
        n += 1
    return f"{wanted}.{n}"


def _write_tmp(config: Config, source: int) -> str:
    tmp_dir = config.spool_dir / "tmp"
    tmp = str(tmp_dir / f".submit.{os.getpid()}.{time.monotonic_ns()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o640)
    try:
        while block := os.read(source, _COPY_BLOCK):
            view = memoryview(block)
            while view:
                view = view[os.write(fd, view):]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        os.unlink(tmp)
        raise
    os.close(fd)
    return tmp


def _publish(config: Config, tmp: str, wanted: str) -> str:
    incoming = config.spool_dir / "incoming"
    while True:
        name = _free_name(config, wanted)
        try:
            rename_noreplace(tmp, str(incoming / name))
        except FileExistsError:
            continue  # another producer took the name first
        break
    dir_fd = os.open(incoming, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return name


def submit_bytes(config: Config, source_fd: int, wanted: str) -> str:
    return _publish(config, _write_tmp(config, source_fd), wanted)


def submit_one(config: Config, path: str) -> Submitted:
    if path == "-":
        name = submit_bytes(config, sys.stdin.fileno(), f"stdin-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}")
        return Submitted("-", name)
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return Submitted(path, submit_bytes(config, fd, os.path.basename(path)))
    finally:
        os.close(fd)


def _outcome(config: Config, name: str) -> tuple[str, str] | None:
    result = config.results_dir / (name + RESULT_SUFFIX)
    error = config.spool_dir / "failed" / (name + ERROR_SUFFIX)
    if result.exists():
        return "done", str(result)
    if error.exists():
        return "failed", str(error)
    return None


def wait_for(config: Config, names: Sequence[str], timeout: float) -> dict[str, tuple[str, str]]:
    from ipspool.progress import Progress

    outcomes: dict[str, tuple[str, str]] = {}
    deadline = time.monotonic() + timeout if timeout > 0 else float("inf")
    progress = Progress(len(names))
    while len(outcomes) < len(names) and time.monotonic() < deadline:
        for name in names:
            if name not in outcomes and (found := _outcome(config, name)) is not None:
                outcomes[name] = found
        progress.update(len(outcomes))
        if len(outcomes) < len(names):
            time.sleep(0.05)
    progress.close()
    return outcomes


def submit_files(config: Config, paths: Sequence[str], *, wait: bool, timeout: float) -> int:
    submitted: list[Submitted] = []
    for path in paths:
        try:
            submitted.append(submit_one(config, path))
        except OSError as exc:
            print(f"ipspool: cannot submit {path}: {exc.strerror or exc}", file=sys.stderr)
            return ExitCode.FAILURE
    for item in submitted:
        print(f"submitted {item.source} as incoming/{item.name}")
    if not wait:
        return ExitCode.OK
    outcomes = wait_for(config, [s.name for s in submitted], timeout)
    code = ExitCode.OK
    for item in submitted:
        state, where = outcomes.get(item.name, ("pending", "no result yet"))
        print(f"{item.name}: {state} {where}")
        if state != "done":
            code = ExitCode.FAILURE
    return code
