"""``ipspool run --daemonize``: for hosts without systemd.

python-daemon's DaemonContext is configured deliberately: its defaults would
close stdout/stderr (our log destination) and turn SIGTERM into SystemExit
(skipping the graceful drain), so logs go to a file, the signal map is left
empty for the supervisor to install its own handlers, and the pidfile is
locked while we run and removed at exit.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import Any

from ipspool.config import Config
from ipspool.exitcodes import ExitCode

__all__ = ["daemonize"]


def daemonize(config: Config, args: argparse.Namespace) -> int:
    # python-daemon's import name is "daemon", which is also the name of our
    # source directory: import it by name so type checkers run from the
    # repository root do not mistake one for the other.
    daemon: Any = importlib.import_module("daemon")
    importlib.import_module("daemon.pidfile")

    from ipspool.logs import LogTarget, configure_logging
    from ipspool.supervisor import Supervisor

    log_file = config.log.file or str(config.runtime_dir / "ipspool.log")
    pidfile = None
    if args.pidfile:
        pidfile = daemon.pidfile.TimeoutPIDLockFile(os.path.abspath(args.pidfile), acquire_timeout=0)
        if pidfile.is_locked():
            print(f"ipspool: {args.pidfile} is locked by pid {pidfile.read_pid()}; already running?", file=sys.stderr)
            return ExitCode.FAILURE
    os.makedirs(os.path.dirname(log_file) or ".", exist_ok=True)
    context = daemon.DaemonContext(
        working_directory="/",
        umask=0o027,
        pidfile=pidfile,
        signal_map={},          # the supervisor installs its own handlers
        stdin=None,
        stdout=None,
        stderr=None,
        detach_process=True,
    )
    with context:
        target = configure_logging(config.log.level, "json", role="supervisor", target=LogTarget(log_file))
        code = Supervisor(config, args.config, spool_override=args.spool, log_target=target).run()
    return code
