"""The ``ipspool`` command: run, submit, status, reload, check-config.

Exit codes are listed in ``ipspool.exitcodes`` and docs/exit-codes.md.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ipspool import __version__
from ipspool.config import Config, ConfigError, load_config
from ipspool.exitcodes import ExitCode
from ipspool.status import terminal_safe

if TYPE_CHECKING:
    from ipspool.statusfile import Snapshot

__all__ = ["build_parser", "main"]


def _load(args: argparse.Namespace) -> Config:
    return load_config(args.config, spool=getattr(args, "spool", None))


def _print_problems(exc: ConfigError) -> None:
    print(f"ipspool: invalid configuration ({len(exc.problems)} problem(s)):", file=sys.stderr)
    for problem in exc.problems:
        print(f"  {exc.source}: {problem}", file=sys.stderr)


# -- run --------------------------------------------------------------------


def cmd_run(args: argparse.Namespace) -> int:
    from ipspool.logs import LogTarget, configure_logging

    config = _load(args)
    if args.daemonize:
        from ipspool.daemonize import daemonize

        return daemonize(config, args)
    try:
        log_target = LogTarget(config.log.file)
    except OSError as exc:
        raise ConfigError(args.config or "<defaults>", (f"log.file: cannot open {config.log.file}: {exc.strerror}",),
                          ) from None
    target = configure_logging(config.log.level, config.log.format, role="supervisor", target=log_target)
    from ipspool.supervisor import Supervisor

    return Supervisor(config, args.config, spool_override=args.spool, log_target=target).run()


# -- submit -----------------------------------------------------------------


def cmd_submit(args: argparse.Namespace) -> int:
    from ipspool.submit import submit_files

    return submit_files(_load(args), args.files, wait=args.wait, timeout=args.timeout)


# -- process ----------------------------------------------------------------


def cmd_process(args: argparse.Namespace) -> int:
    from ipspool.oneshot import process_files

    return process_files(_load(args), args.files, args.output)


# -- status -----------------------------------------------------------------

_PATIENCE = 1.0  # seconds to wait for a first snapshot (the Manager writes within 0.25 s of a change)


def _snapshot(config: Config, patience: float = _PATIENCE) -> tuple[Snapshot | None, str]:
    """RUNTIME/status.json, or None and why not (``ipspool.statusfile``: never the pickle socket)."""
    from ipspool.statusfile import StatusUnavailable, read_snapshot

    deadline = time.monotonic() + patience
    while True:
        try:
            return read_snapshot(config.runtime_dir), ""
        except StatusUnavailable as exc:
            if time.monotonic() >= deadline:
                return None, str(exc)
        time.sleep(0.1)


def cmd_status(args: argparse.Namespace) -> int:
    from ipspool.status import render_status

    config = _load(args)
    snapshot, why = _snapshot(config)
    if snapshot is None:
        print(f"ipspool is not running ({why})", file=sys.stderr)
        return ExitCode.NOT_RUNNING
    if args.json:
        import orjson

        sys.stdout.write(orjson.dumps(snapshot.data, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS).decode()
                         + "\n")
    else:
        sys.stdout.write(render_status(snapshot.data))
    return ExitCode.OK


# -- check-config and reload ------------------------------------------------


# Stages that never open a network socket; rdns does, and a user stage
# ("module:callable") may: the unit keeps the network for those.
LOCAL_STAGES = frozenset({"classify", "lists", "geoip"})


def needs_network(config: Config) -> bool:
    """Does any configured stage need the network (rdns, or a user stage that might)?"""
    return any(stage not in LOCAL_STAGES for stage in config.pipeline.stages)


def cmd_check_config(args: argparse.Namespace) -> int:
    from ipspool.pipeline import load_pipeline
    from ipspool.spool import path_problems

    config = _load(args)
    if args.needs_network:
        # For systemd/ipspool-generator: one word, no stage is loaded.
        print("network" if needs_network(config) else "no-network")
        return ExitCode.OK
    load_pipeline(config, args.config or "<defaults>").close()
    problems = path_problems(config.spool_dir, config.results_dir, config.runtime_dir, config.log.file)
    if problems:
        raise ConfigError(args.config or "<defaults>", tuple(problems))
    executor = f"{config.process_count} worker(s) x {config.workers.threads} threads"
    if config.executor.kind == "dask":
        executor = f"dask at {config.executor.scheduler}: {_check_scheduler(config, args.config or '<defaults>')}"
    print(f"{args.config or '<defaults>'}: OK ({len(config.pipeline.stages)} stage(s), "
          f"{executor}, spool {config.spool_dir})")
    return ExitCode.OK


def _check_scheduler(config: Config, source: str) -> str:
    """The Dask scheduler answers (a summary of its cluster), or a ConfigError saying why not."""
    try:
        from ipspool.dask_link import check_scheduler
    except ImportError:
        raise ConfigError(source, ('executor.kind = "dask" needs the distributed package: '
                                   "pip install 'ipspool[dask]'",)) from None
    try:
        return check_scheduler(config.executor)
    except ConnectionError as exc:
        problem = f"executor.scheduler: {config.executor.scheduler} does not answer: {exc}"
        raise ConfigError(source, (problem,)) from None


def _reload_time(daemon: dict[str, Any]) -> float:
    last = daemon.get("last_reload")
    value = last.get("time") if isinstance(last, dict) else None
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0.0


def cmd_reload(args: argparse.Namespace) -> int:
    """Validate, signal, and wait for the daemon to confirm (for ExecReload=)."""
    from ipspool.pipeline import load_pipeline

    config = _load(args)
    load_pipeline(config, args.config or "<defaults>").close()
    before, why = _snapshot(config)
    if before is None:
        print(f"ipspool is not running ({why})", file=sys.stderr)
        return ExitCode.NOT_RUNNING
    previous = _reload_time(before.daemon)
    if args.pid:
        pid = int(args.pid)
    else:
        # The pid comes from a file the service account wrote: signal it only
        # if it is a process of that account (root must not HUP pid 1 on its word).
        from ipspool.statusfile import process_owner

        pid = before.pid or 0
        if not pid or process_owner(pid) != before.owner:
            print(f"ipspool: the snapshot's daemon pid {pid} is not a process of uid {before.owner}; "
                  f"not signalled (pass --pid)", file=sys.stderr)
            return ExitCode.FAILURE
    os.kill(pid, signal.SIGHUP)
    deadline = time.monotonic() + args.timeout
    while time.monotonic() < deadline:
        time.sleep(0.1)
        now, _ = _snapshot(config, patience=0)
        last = now.daemon.get("last_reload") if now is not None else None
        if isinstance(last, dict) and _reload_time(now.daemon if now else {}) > previous:
            problems = last.get("problems")
            if last.get("ok") is True:
                print(f"ipspool reloaded (generation {terminal_safe(last.get('generation'))})")
                return ExitCode.OK
            print("ipspool refused the new configuration and keeps running on the old one:", file=sys.stderr)
            for problem in problems if isinstance(problems, list) else ["(no reason given)"]:
                print(f"  {terminal_safe(problem)}", file=sys.stderr)
            return ExitCode.RELOAD_REJECTED
    print(f"ipspool did not confirm the reload within {args.timeout}s", file=sys.stderr)
    return ExitCode.FAILURE


# -- parser -----------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ipspool",
        description="Validate, classify and enrich files of IP addresses dropped into a spool directory.",
        epilog="Exit codes: 0 ok, 1 failure, 2 usage, 3 workers cannot start, 4 bad configuration, "
               "5 spool unusable, 6 not running, 7 reload refused.",
    )
    parser.add_argument("--version", action="version", version=f"ipspool {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("--config", "-c", metavar="FILE", help="TOML configuration (default: built-in defaults)")
        return p

    run = command("run", "Run the daemon in the foreground (or --daemonize).")
    run.add_argument("--spool", metavar="DIR", help="spool directory (overrides spool.dir)")
    run.add_argument("--daemonize", action="store_true", help="detach (for hosts without systemd)")
    run.add_argument("--pidfile", metavar="FILE", help="with --daemonize: a locked pidfile")
    run.set_defaults(func=cmd_run)

    submit = command("submit", "Hand files to the spool safely (tmp/, fsync, rename into incoming/).")
    submit.add_argument("--spool", metavar="DIR", help="spool directory (overrides spool.dir)")
    submit.add_argument("--wait", action="store_true", help="wait for each result; exit 1 if any file failed")
    submit.add_argument("--timeout", type=float, default=0.0, metavar="SECONDS",
                        help="with --wait: give up after this long (0: never)")
    submit.add_argument("files", nargs="+", metavar="FILE", help="files to submit; - reads standard input")
    submit.set_defaults(func=cmd_submit)

    process = command("process", "Run the pipeline on files now, without the daemon; records to standard output.")
    process.add_argument("--output", "-o", metavar="FILE",
                         help="write the records to FILE (a temporary name, renamed when whole)")
    process.add_argument("files", nargs="+", metavar="FILE",
                         help="inputs, plain or gzip/bzip2/xz/zstd (known by content); - reads standard input")
    process.set_defaults(func=cmd_process)

    status = command("status", "Show live counters and the worker table of the running daemon.")
    status.add_argument("--spool", metavar="DIR", help="spool directory (overrides spool.dir)")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.set_defaults(func=cmd_status)

    check = command("check-config", "Validate the configuration and load every stage.")
    check.add_argument("--spool", metavar="DIR", help="spool directory (overrides spool.dir)")
    check.add_argument("--needs-network", action="store_true",
                       help="only say whether a stage needs the network: prints network or no-network")
    check.set_defaults(func=cmd_check_config)

    reload = command("reload", "Validate the configuration, send SIGHUP, wait for the daemon's verdict.")
    reload.add_argument("--spool", metavar="DIR", help="spool directory (overrides spool.dir)")
    reload.add_argument("--pid", type=int, help="daemon pid (default: as the daemon reports it)")
    reload.add_argument("--timeout", type=float, default=30.0, metavar="SECONDS")
    reload.set_defaults(func=cmd_reload)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.config is not None:
        args.config = str(Path(args.config).absolute())
    try:
        return int(args.func(args))
    except ConfigError as exc:
        _print_problems(exc)
        return ExitCode.CONFIG_ERROR
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
