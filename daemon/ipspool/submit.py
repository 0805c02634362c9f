"""Producers' side of the protocol: write in tmp/, fsync, rename into incoming/.

The name a file gets in incoming/ is chosen free everywhere the daemon looks
(incoming/ and every entry of ``spool.job_entries``: active/, done/, failed/,
failed/NAME.error.json, results/), by the daemon's own rule
(``spool.job_name_candidates``), so the daemon claims it under the same name
and ``--wait`` knows which result to wait for.

Durability: the file is fsync'd in tmp/, renamed into incoming/, then
incoming/ and tmp/ are fsync'd, in that order (the destination first, as the
daemon does), so after a power cut the file is in incoming/ and only there.

``--subdir SUB`` renames into the producer subdirectory incoming/SUB/
instead (it must exist: ``spool.subdirs`` makes it); the job is then
``SUB~NAME``, and the name is chosen free by the same rule.

A producer that is only in the producer group (ipspool-submit in the Debian
package, docs/packaging.md) may not look into active/, done/, failed/ or the
results: it chooses a name free in incoming/ alone (the daemon's claim still
makes the final name unique), and ``--wait`` refuses before submitting,
because it could never see the outcome.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ipspool.config import Config
from ipspool.exitcodes import ExitCode
from ipspool.fsops import rename_noreplace
from ipspool.spool import (
    ERROR_SUFFIX,
    RESULT_SUFFIXES,
    SUBDIR_SEP,
    fsync_dir,
    job_base,
    job_entries,
    job_name_candidates,
    job_stem,
    producer_subdir,
)

__all__ = ["Submitted", "submit_bytes", "submit_files"]

_COPY_BLOCK = 1 << 20


@dataclass(frozen=True)
class Submitted:
    source: str
    name: str  # the job's name: its result is RESULTS/NAME.jsonl
    lines: int
    where: str = ""  # its path under incoming/, when not NAME itself (incoming/SUB/ENTRY)

    @property
    def path(self) -> str:
        return self.where or self.name


def _searchable(directory: Path) -> bool:
    """May we look names up in ``directory``? (os.path.lexists says False when not.)"""
    return os.access(directory, os.X_OK)


def _taken(config: Config, name: str, subdir: str) -> bool:
    spool = config.spool_dir
    places = [(spool / "incoming", _entry(name, subdir))] + [
        (config.results_dir if where == "results" else spool / where, entry) for where, entry in job_entries(name)
    ]
    return any(os.path.lexists(d / n) for d, n in places if _searchable(d))


def _entry(job: str, subdir: str) -> str:
    """Where in incoming/ the file of job ``job`` goes: SUB/ENTRY for job SUB~ENTRY."""
    return f"{subdir}/{job[len(subdir) + len(SUBDIR_SEP):]}" if subdir else job


def unobservable(config: Config) -> list[Path]:
    """The directories ``--wait`` needs to see outcomes in but may not search."""
    return [d for d in (config.results_dir, config.spool_dir / "failed") if not _searchable(d)]


def _free_name(config: Config, wanted: str, subdir: str) -> str:
    """The job name, free everywhere, that the daemon will give ``wanted`` (from incoming/ or incoming/SUBDIR/)."""
    stem = wanted.lstrip(".") or "input"
    for name in job_name_candidates(job_base(job_stem(f"{subdir}/{stem}" if subdir else stem))):
        if not _taken(config, name, subdir):
            return name
    raise FileExistsError(f"no free name in incoming/ for {wanted!r}")


def _write_tmp(config: Config, source: int) -> tuple[str, int]:
    """Copy ``source`` into tmp/; the temporary path and the number of lines."""
    tmp_dir = config.spool_dir / "tmp"
    tmp = str(tmp_dir / f".submit.{os.getpid()}.{time.monotonic_ns()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o640)
    lines, last = 0, b"\n"
    try:
        # 0640 whatever the producer's umask: the daemon reads the file
        # through the group (the setgid tmp/ makes it the producer group).
        os.fchmod(fd, 0o640)
        while block := os.read(source, _COPY_BLOCK):
            lines += block.count(b"\n")
            last = block[-1:]
            view = memoryview(block)
            while view:
                view = view[os.write(fd, view):]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        os.unlink(tmp)
        raise
    os.close(fd)
    return tmp, lines + (last != b"\n")


def _publish(config: Config, tmp: str, wanted: str, subdir: str) -> str:
    incoming = config.spool_dir / "incoming"
    while True:
        name = _free_name(config, wanted, subdir)
        try:
            rename_noreplace(tmp, str(incoming / _entry(name, subdir)))
        except FileExistsError:
            continue  # another producer took the name first
        break
    for directory in (incoming / subdir, config.spool_dir / "tmp"):
        dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            fsync_dir(dir_fd)
        finally:
            os.close(dir_fd)
    return name


def _submit_fd(config: Config, source_fd: int, source: str, wanted: str, subdir: str = "") -> Submitted:
    tmp, lines = _write_tmp(config, source_fd)
    name = _publish(config, tmp, wanted, subdir)
    return Submitted(source, name, lines, _entry(name, subdir) if subdir else "")


def submit_bytes(config: Config, source_fd: int, wanted: str) -> str:
    return _submit_fd(config, source_fd, wanted, wanted).name


def submit_one(config: Config, path: str, subdir: str = "") -> Submitted:
    if path == "-":
        return _submit_fd(config, sys.stdin.fileno(), "-", f"stdin-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}",
                          subdir)
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return _submit_fd(config, fd, path, os.path.basename(path), subdir)
    finally:
        os.close(fd)


def subdir_problem(config: Config, subdir: str) -> str | None:
    """Why ``--subdir`` cannot be used as given, or None."""
    if not producer_subdir(subdir):
        return (f"--subdir {subdir!r}: not a subdirectory name (1 to 64 of A-Z a-z 0-9 _ . -, "
                "not starting with . or -)")
    path = config.spool_dir / "incoming" / subdir
    if path.is_symlink() or not path.is_dir():
        return f"--subdir {subdir}: {path} is not a directory (spool.subdirs makes it when the daemon starts)"
    return None


def _outcome(config: Config, name: str) -> tuple[str, str] | None:
    error = config.spool_dir / "failed" / (name + ERROR_SUFFIX)
    for suffix in RESULT_SUFFIXES:  # JSON lines, or CSV when a rule asks for it
        result = config.results_dir / (name + suffix)
        if result.exists():
            return "done", str(result)
    if error.exists():
        return "failed", str(error)
    return None


def wait_for(config: Config, submitted: Sequence[Submitted], timeout: float) -> dict[str, tuple[str, str]]:
    from ipspool.progress import Progress

    outcomes: dict[str, tuple[str, str]] = {}
    deadline = time.monotonic() + timeout if timeout > 0 else float("inf")
    progress = Progress(sum(s.lines for s in submitted), len(submitted))
    while len(outcomes) < len(submitted) and time.monotonic() < deadline:
        for item in submitted:
            if item.name not in outcomes and (found := _outcome(config, item.name)) is not None:
                outcomes[item.name] = found
        progress.update(sum(s.lines for s in submitted if s.name in outcomes), len(outcomes))
        if len(outcomes) < len(submitted):
            time.sleep(0.05)
    progress.close()
    return outcomes


def submit_files(config: Config, paths: Sequence[str], *, wait: bool, timeout: float, as_json: bool = False,
                 subdir: str = "") -> int:
    """Hand ``paths`` in (into incoming/``subdir``/ if given); with ``wait``, exit FAILURE unless every one is
    done. ``as_json``: one JSON object."""
    if subdir and (problem := subdir_problem(config, subdir)):
        print(f"ipspool: {problem}; nothing was submitted", file=sys.stderr)
        return ExitCode.USAGE
    if wait and (hidden := unobservable(config)):
        print(f"ipspool: --wait cannot observe results: no permission to look into {', '.join(map(str, hidden))} "
              f"(members of the daemon's group can; docs/packaging.md). Nothing was submitted; "
              f"submit without --wait.", file=sys.stderr)
        return ExitCode.FAILURE
    submitted: list[Submitted] = []
    for path in paths:
        try:
            submitted.append(submit_one(config, path, subdir))
        except OSError as exc:
            print(f"ipspool: cannot submit {path}: {exc.strerror or exc}", file=sys.stderr)
            if as_json:
                _report_json(submitted, {}, wait=False)
            return ExitCode.FAILURE
    if not as_json:
        for item in submitted:
            print(f"submitted {item.source} as incoming/{item.path}")
    outcomes = wait_for(config, submitted, timeout) if wait else {}
    if as_json:
        return _report_json(submitted, outcomes, wait=wait)
    code = ExitCode.OK
    for item in submitted:
        state, where = outcomes.get(item.name, ("pending", "no result yet"))
        if wait:
            print(f"{item.name}: {state} {where}")
        if wait and state != "done":
            code = ExitCode.FAILURE
    return code


def _report_json(submitted: Sequence[Submitted], outcomes: dict[str, tuple[str, str]], *, wait: bool) -> int:
    """submit --json: ``{"ok", "files": [{"source", "name", "lines", "state", "where"}]}`` (docs/exit-codes.md)."""
    import orjson

    files = []
    for item in submitted:
        state, where = outcomes.get(item.name, ("pending", "")) if wait else ("submitted", f"incoming/{item.path}")
        files.append({"source": item.source, "name": item.name, "lines": item.lines, "state": state, "where": where})
    ok = all(f["state"] in ("done", "submitted") for f in files)
    sys.stdout.write(orjson.dumps({"ok": ok, "files": files}, option=orjson.OPT_INDENT_2).decode() + "\n")
    return ExitCode.OK if ok else ExitCode.FAILURE
