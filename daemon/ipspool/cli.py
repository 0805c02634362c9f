"""The ``ipspool`` command: run, submit, status, reload, check-config, metrics-down.

Every command finds its configuration by the same rule (``--config``, else
``$IPSPOOL_CONFIG``, else /etc/ipspool/ipspool.toml when it exists, else the
built-in defaults: ``ipspool.configfiles``). Exit codes are listed in
``ipspool.exitcodes`` and docs/exit-codes.md.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from ipspool import __version__
from ipspool.config import Config, ConfigError, LoadedConfig, load_for, with_log_level
from ipspool.exitcodes import ExitCode
from ipspool.status import terminal_safe

if TYPE_CHECKING:
    from ipspool.statusfile import Snapshot

__all__ = ["build_parser", "main"]


def _discover(args: argparse.Namespace) -> LoadedConfig:
    """The configuration of this command by the discovery rule; ``args.config`` becomes the file found."""
    loaded = load_for(args.config, spool=getattr(args, "spool", None))
    args.config = str(loaded.found.path) if loaded.found.path is not None else None
    return loaded


def _load(args: argparse.Namespace) -> Config:
    return _discover(args).config


def _log_level(args: argparse.Namespace) -> str | None:
    """run's -v/-q/--log-level, or None to keep log.level."""
    if args.log_level:
        return str(args.log_level)
    if args.verbose:
        return "debug"
    return ("warning", "error")[min(args.quiet, 2) - 1] if args.quiet else None


def _print_problems(exc: ConfigError) -> None:
    print(f"ipspool: invalid configuration ({len(exc.problems)} problem(s)):", file=sys.stderr)
    for problem in exc.problems:
        print(f"  {exc.source}: {problem}", file=sys.stderr)


# -- run --------------------------------------------------------------------


def cmd_run(args: argparse.Namespace) -> int:
    from ipspool.logs import LogTarget, configure_logging

    loaded = _discover(args)
    args.log_level = _log_level(args)  # what -v/-q/--log-level come to: the daemon keeps it across reloads
    config = with_log_level(loaded.config, args.log_level)
    if args.daemonize:
        from ipspool.daemonize import daemonize

        return daemonize(config, args, loaded.ignored)
    try:
        log_target = LogTarget(config.log.file)
    except OSError as exc:
        raise ConfigError(args.config or "<defaults>", (f"log.file: cannot open {config.log.file}: {exc.strerror}",),
                          ) from None
    target = configure_logging(config.log.level, config.log.format, role="supervisor", target=log_target)
    from ipspool.supervisor import Supervisor

    return Supervisor(config, args.config, spool_override=args.spool, log_target=target,
                      log_level=args.log_level, ignored=loaded.ignored).run()


# -- submit -----------------------------------------------------------------


def cmd_submit(args: argparse.Namespace) -> int:
    from ipspool.submit import submit_files

    return submit_files(_load(args), args.files, wait=args.wait, timeout=args.timeout, as_json=args.json,
                        subdir=args.subdir)


# -- process ----------------------------------------------------------------


def cmd_process(args: argparse.Namespace) -> int:
    from ipspool.oneshot import process_files

    return process_files(_load(args), args.files, args.output, summary=args.summary)


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
        _print_json(snapshot.data)
    else:
        sys.stdout.write(render_status(snapshot.data))
    return ExitCode.OK


# -- metrics-down -------------------------------------------------------------


def cmd_metrics_down(args: argparse.Namespace) -> int:
    """For ExecStopPost=: the main process is gone (even by SIGKILL), so the textfile says up 0."""
    from ipspool.metrics import mark_down

    config = _load(args)
    path = config.metrics.textfile
    if not path:
        return ExitCode.OK
    running, _ = _snapshot(config, patience=0)
    if running is not None:
        print(f"ipspool: the daemon (pid {running.pid}) is running; {path} left as it is", file=sys.stderr)
        return ExitCode.FAILURE
    try:
        was_up = mark_down(path)
    except OSError as exc:
        print(f"ipspool: cannot write {path}: {exc.strerror or exc}", file=sys.stderr)
        return ExitCode.FAILURE
    print(f"{path}: ipspool_up 0" + (" (it said 1: the daemon did not stop cleanly)" if was_up else ""))
    return ExitCode.OK


# -- check-config and reload ------------------------------------------------


# Stages that never open a network socket; rdns does, and a user stage
# ("module:callable") may: the unit keeps the network for those.
LOCAL_STAGES = frozenset({"classify", "lists", "geoip"})


def needs_network(config: Config) -> bool:
    """Does the service need the network: a stage (rdns, or a user stage that might), the Dask executor,
    or the metrics endpoint? (Under PrivateNetwork=yes even 127.0.0.1 is not the host's loopback.)"""
    return (any(stage not in LOCAL_STAGES for stage in config.pipeline.stages)
            or config.executor.kind == "dask" or bool(config.metrics.listen))


def cmd_check_config(args: argparse.Namespace) -> int:
    try:
        return _check_config(args)
    except ConfigError as exc:
        if not args.json:
            raise
        _print_json({"ok": False, "config": exc.source, "problems": list(exc.problems)})
        return ExitCode.CONFIG_ERROR


def _check_config(args: argparse.Namespace) -> int:
    from ipspool.formats.select import subdir_notes
    from ipspool.pipeline import load_pipeline
    from ipspool.spool import path_problems

    if args.schema:
        from ipspool.config import json_schema

        _print_json(json_schema())
        return ExitCode.OK
    loaded = _discover(args)
    config, source = loaded.config, loaded.source
    if args.needs_network:
        # For systemd/ipspool-generator: one word, no stage is loaded.
        print("network" if needs_network(config) else "no-network")
        return ExitCode.OK
    if args.show:
        return _show(loaded, as_json=args.json)
    load_pipeline(config, source).close()
    problems = path_problems(config.spool_dir, config.results_dir, config.runtime_dir, config.log.file)
    if problems:
        raise ConfigError(source, tuple(problems))
    executor = f"{config.process_count} worker(s) x {config.workers.threads} threads"
    if config.executor.kind == "dask":
        executor = f"dask at {config.executor.scheduler}: {_check_scheduler(config, source)}"
    verdict = _sources(loaded)
    notes = subdir_notes(config)
    if args.json:
        _print_json({"ok": True, **verdict, "stages": list(config.pipeline.stages), "executor": executor,
                     "spool": str(config.spool_dir), "notes": notes})
        return ExitCode.OK
    print(f"{source}: OK ({len(config.pipeline.stages)} stage(s), {executor}, spool {config.spool_dir})")
    print(f"  configuration: {source} (found by {loaded.found.origin})")
    for path in loaded.files[1:]:
        print(f"  drop-in: {path}")
    for item in verdict["ignored"]:
        print(f"  ignored: {item['file']} ({item['reason']})", file=sys.stderr)
    for note in notes:
        print(f"  note: {note}", file=sys.stderr)
    return ExitCode.OK


def _sources(loaded: LoadedConfig) -> dict[str, Any]:
    """The files a configuration was read from, as check-config --json reports them."""
    return {
        "config": str(loaded.found.path) if loaded.found.path is not None else None,
        "found_by": loaded.found.origin,
        "files": [str(path) for path in loaded.files],
        "ignored": [{"file": str(item.path), "reason": item.reason} for item in loaded.ignored],
    }


def _show(loaded: LoadedConfig, *, as_json: bool) -> int:
    """check-config --show: the merged, validated settings (every key, defaults included)."""
    from ipspool.configfiles import dump_toml

    settings = loaded.config.model_dump(mode="json")
    if as_json:
        _print_json(settings)
    else:
        files = ", ".join(str(path) for path in loaded.files) or "built-in defaults"
        sys.stdout.write(f"# ipspool check-config --show: {files}\n" + dump_toml(settings))
    return ExitCode.OK


def _print_json(data: object) -> None:
    import orjson

    sys.stdout.write(orjson.dumps(data, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS).decode() + "\n")


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

    loaded = _discover(args)
    config = loaded.config
    load_pipeline(config, loaded.source).close()
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


_CONFIG_HELP = ("TOML configuration (default: $IPSPOOL_CONFIG, else /etc/ipspool/ipspool.toml if it exists, "
                "else built-in defaults); conf.d/*.toml beside it are merged in")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ipspool",
        description="Validate, classify and enrich files of IP addresses dropped into a spool directory.",
        epilog="Exit codes: 0 ok, 1 failure, 2 usage, 65 reload refused, 69 not running, 70 internal error, "
               "71 workers cannot start, 73 spool unusable, 78 bad configuration.",
    )
    parser.add_argument("--version", action="version", version=f"ipspool {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, help_text, add_options, func in _COMMANDS:
        command = sub.add_parser(name, help=help_text, description=help_text)
        command.add_argument("--config", "-c", metavar="FILE", help=_CONFIG_HELP)
        command.add_argument("--spool", metavar="DIR", help="spool directory (overrides spool.dir)")
        add_options(command)
        command.set_defaults(func=func)
    return parser


def _run_options(run: argparse.ArgumentParser) -> None:
    run.add_argument("--daemonize", action="store_true", help="detach (for hosts without systemd)")
    run.add_argument("--pidfile", metavar="FILE", help="with --daemonize: a locked pidfile")
    verbosity = run.add_mutually_exclusive_group()
    verbosity.add_argument("--log-level", choices=("debug", "info", "warning", "error"),
                           help="lowest level logged (overrides log.level, also across reloads)")
    verbosity.add_argument("--verbose", "-v", action="count", default=0, help="log debug events too")
    verbosity.add_argument("--quiet", "-q", action="count", default=0,
                           help="log warnings and worse only (twice: errors only)")


def _submit_options(submit: argparse.ArgumentParser) -> None:
    submit.add_argument("--wait", action="store_true", help="wait for each result; exit 1 if any file failed")
    submit.add_argument("--timeout", type=float, default=0.0, metavar="SECONDS",
                        help="with --wait: give up after this long (0: never)")
    submit.add_argument("--json", action="store_true",
                        help="print one JSON object (submitted files and, with --wait, their outcomes)")
    submit.add_argument("--subdir", default="", metavar="SUB",
                        help="rename into the producer subdirectory incoming/SUB/ (its rules apply; the job is "
                             "SUB~NAME)")
    submit.add_argument("files", nargs="+", metavar="FILE", help="files to submit; - reads standard input")



def _process_options(process: argparse.ArgumentParser) -> None:
    process.add_argument("--output", "-o", metavar="FILE",
                         help="write the records to FILE (a temporary name, renamed when whole)")
    process.add_argument("--summary", metavar="FILE",
                         help="after the output is whole, write the run's summary (as RESULTS/JOB.summary.json) "
                              "to FILE")
    process.add_argument("files", nargs="+", metavar="FILE",
                         help="inputs, plain or gzip/bzip2/xz/zstd (known by content); - reads standard input")


def _status_options(status: argparse.ArgumentParser) -> None:
    status.add_argument("--json", action="store_true", help="machine-readable output")


def _check_options(check: argparse.ArgumentParser) -> None:
    check.add_argument("--needs-network", action="store_true",
                       help="only say whether the service needs the network (a stage, the Dask executor, "
                            "metrics.listen): prints network or no-network")
    check.add_argument("--show", action="store_true",
                       help="print the merged settings (main file, drop-ins, defaults) as TOML; no stage is loaded")
    check.add_argument("--json", action="store_true", help="machine-readable output (with --show: the settings)")
    check.add_argument("--schema", action="store_true",
                       help="print the JSON Schema of the configuration (for editors) and read no file")


def _metrics_down_options(down: argparse.ArgumentParser) -> None:
    del down  # the common options (--config, --spool) are all it takes


def _reload_options(reload: argparse.ArgumentParser) -> None:
    reload.add_argument("--pid", type=int, help="daemon pid (default: as the daemon reports it)")
    reload.add_argument("--timeout", type=float, default=30.0, metavar="SECONDS")


_COMMANDS: tuple[tuple[str, str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]],
                 ...] = (
    ("run", "Run the daemon in the foreground (or --daemonize).", _run_options, cmd_run),
    ("submit", "Hand files to the spool safely (tmp/, fsync, rename into incoming/).", _submit_options, cmd_submit),
    ("process", "Run the pipeline on files now, without the daemon; records to standard output.",
     _process_options, cmd_process),
    ("status", "Show live counters and the worker table of the running daemon.", _status_options, cmd_status),
    ("check-config", "Validate the configuration and load every stage.", _check_options, cmd_check_config),
    ("reload", "Validate the configuration, send SIGHUP, wait for the daemon's verdict.", _reload_options,
     cmd_reload),
    ("metrics-down", "Make the metrics textfile say ipspool_up 0 (ExecStopPost=: after any exit).",
     _metrics_down_options, cmd_metrics_down),
)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except ConfigError as exc:
        _print_problems(exc)
        return ExitCode.CONFIG_ERROR
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # noqa: BLE001 - a bug: one critical event and INTERNAL_ERROR, not a bare traceback
        _report_crash(args.command, exc)
        return ExitCode.INTERNAL_ERROR


def _report_crash(command: str, exc: Exception) -> None:
    """daemon.crashed into the daemon's own log (run), or command.crashed as one JSON line on stderr."""
    import structlog

    from ipspool.logs import LogTarget, configure_logging, log_crash

    if command == "run" and structlog.is_configured():
        log_crash("daemon.crashed", exc)
        return
    configure_logging("info", "json", role="command", target=LogTarget(fd=sys.stderr.fileno()))
    log_crash("command.crashed", exc, command=command)


if __name__ == "__main__":
    raise SystemExit(main())
