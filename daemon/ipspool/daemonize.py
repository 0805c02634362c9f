"""``ipspool run --daemonize``: for hosts without systemd.

python-daemon's DaemonContext is configured deliberately: its defaults would
send stdout/stderr to /dev/null and turn SIGTERM into SystemExit (skipping
the graceful drain), so logs go to a file (stdout and stderr too, so worker
lines and tracebacks are kept), the signal map is left empty for the
supervisor to install its own handlers, and the pidfile is held with
flock(2) while we run and removed at exit.
"""

from __future__ import annotations

import argparse
import fcntl
import importlib
import os
import sys
from typing import Any

from ipspool.config import Config, load_config, with_log_level
from ipspool.configfiles import Ignored
from ipspool.exitcodes import ExitCode

__all__ = ["LockedPidfile", "daemonize"]


class LockedPidfile:
    """A pidfile held with flock(2) for the daemon's lifetime.

    The lock, not the file's existence, says "running", so a pidfile left
    behind by a killed daemon does not block the next start (python-daemon's
    lockfile-based PIDLockFile refuses until someone deletes it). The lock is
    taken before detaching, so a second start fails on the terminal; the
    descriptor survives DaemonContext's close-all (files_preserve), and the
    pid written on entry is the detached daemon's.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self.fd = -1

    def acquire(self) -> str | None:
        """Take the lock; on failure, return what the holder wrote (its pid)."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 64).decode(errors="replace").strip()
            os.close(fd)
            return holder or "?"
        self.fd = fd
        return None

    def __enter__(self) -> LockedPidfile:
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, f"{os.getpid()}\n".encode(), 0)
        return self

    def __exit__(self, *_exc: object) -> None:
        try:
            os.unlink(self.path)  # while still locked: nobody can take over a file about to vanish
        except FileNotFoundError:
            pass
        os.close(self.fd)


def daemonize(config: Config, args: argparse.Namespace, ignored: tuple[Ignored, ...] = ()) -> int:
    # python-daemon's import name is "daemon", which is also the name of our
    # source directory: import it by name so type checkers run from the
    # repository root do not mistake one for the other.
    daemon: Any = importlib.import_module("daemon")

    from ipspool.logs import LogTarget, configure_logging
    from ipspool.spool import SpoolError, ensure_runtime_dir
    from ipspool.supervisor import Supervisor

    # The working directory becomes "/": resolve relative paths first.
    log_file = os.path.abspath(config.log.file or str(config.runtime_dir / "ipspool.log"))
    spool = os.path.abspath(args.spool) if args.spool else None
    if spool is not None:
        config = with_log_level(load_config(args.config, spool=spool), args.log_level)
    # Every process (workers and the stats Manager too) then opens the file
    # itself and reopens it on SIGUSR1, so logrotate's rename loses nothing.
    config = config.model_copy(update={"log": config.log.model_copy(update={"file": log_file})})
    # The log goes to the runtime directory by default: create that first,
    # with its own mode (0750, like the supervisor), not makedirs' 0777 & ~umask.
    try:
        ensure_runtime_dir(config.runtime_dir)
        os.makedirs(os.path.dirname(log_file), mode=0o750, exist_ok=True)
    except SpoolError as exc:
        print(f"ipspool: {exc}", file=sys.stderr)
        return ExitCode.SPOOL_ERROR
    except OSError as exc:
        print(f"ipspool: log.file: cannot create {os.path.dirname(log_file)}: {exc.strerror}", file=sys.stderr)
        return ExitCode.CONFIG_ERROR
    pidfile = None
    if args.pidfile:
        pidfile = LockedPidfile(os.path.abspath(args.pidfile))
        holder = pidfile.acquire()
        if holder is not None:
            print(f"ipspool: {args.pidfile} is locked by pid {holder}; already running?", file=sys.stderr)
            return ExitCode.FAILURE
    # Workers, the stats process and tracebacks write to stdout/stderr.
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
    stream = os.fdopen(os.open(log_file, flags, 0o640), "ab", buffering=0)  # DaemonContext dup2()s it onto 1, 2
    context = daemon.DaemonContext(
        working_directory="/",
        umask=0o027,
        pidfile=pidfile,
        files_preserve=[pidfile.fd] if pidfile else [],
        signal_map={},          # the supervisor installs its own handlers
        stdin=None,
        stdout=stream,
        stderr=stream,
        detach_process=True,
    )
    with context:
        target = configure_logging(config.log.level, "json", role="supervisor", target=LogTarget(log_file))
        code = Supervisor(config, args.config, spool_override=spool, log_target=target, log_level=args.log_level,
                          ignored=ignored).run()
    return code
