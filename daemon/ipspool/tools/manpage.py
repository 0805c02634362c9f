"""ipspool(8), written in roff from the same argparse parser as ``--help``.

``python -m ipspool.tools.manpage`` prints the page; the Debian package
installs it as /usr/share/man/man8/ipspool.8.gz. Commands and options come
from ``ipspool.cli.build_parser`` (so a new option cannot be missing from the
page), exit codes from ``ipspool.exitcodes``; the prose sections below say
what the parser cannot. ``describe`` is shared with
``ipspool.tools.completion``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass

from ipspool import __version__
from ipspool.config import DEFAULT_SPOOL
from ipspool.exitcodes import ExitCode

__all__ = ["Command", "Option", "describe", "render"]


@dataclass(frozen=True)
class Option:
    """One optional or positional argument of a (sub)command."""

    flags: tuple[str, ...]   # ("--config", "-c"); empty for a positional
    metavar: str | None      # "FILE"; None for a flag that takes no value
    help: str
    repeat: bool = False     # a positional that takes one or more values

    @property
    def takes_value(self) -> bool:
        return self.metavar is not None


@dataclass(frozen=True)
class Command:
    name: str
    help: str
    options: tuple[Option, ...]


def _option(action: argparse.Action) -> Option:
    metavar = action.metavar if isinstance(action.metavar, str) else None
    if action.nargs == 0:
        metavar = None
    elif metavar is None:
        metavar = action.dest.upper()
    help_text = action.help if action.help and action.help != argparse.SUPPRESS else ""
    if action.default not in (None, False, argparse.SUPPRESS) and action.option_strings and "default" not in help_text:
        help_text = f"{help_text} (default: {action.default})" if help_text else f"default: {action.default}"
    return Option(tuple(action.option_strings), metavar, help_text, repeat=action.nargs in ("+", "*"))


def describe(parser: argparse.ArgumentParser) -> tuple[tuple[Option, ...], tuple[Command, ...]]:
    """The global options and the subcommands of ``parser``, in --help order.

    argparse has no public API to walk a parser; ``_actions``,
    ``_choices_actions`` and ``_SubParsersAction`` are the attributes its own
    HelpFormatter reads, stable since Python 3.2.
    """
    options: list[Option] = []
    commands: list[Command] = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {choice.dest: choice.help or "" for choice in action._choices_actions}
            for name, sub in action.choices.items():
                # -h is the same everywhere; the page lists it once, under OPTIONS.
                sub_options = tuple(_option(a) for a in sub._actions if not isinstance(a, argparse._HelpAction))
                commands.append(Command(name, helps.get(name, sub.description or ""), sub_options))
        else:
            options.append(_option(action))
    return tuple(options), tuple(commands)


# -- roff -------------------------------------------------------------------


def _esc(text: str) -> str:
    """Escape text for roff: backslashes, hyphens of options, leading dots."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    return "\n".join("\\&" + line if line.startswith((".", "'")) else line for line in text.split("\n"))


def _usage(option: Option) -> str:
    """``[--config FILE]`` in roff: bold flag, italic value."""
    if not option.flags:
        return f".I {_esc(option.metavar or '')}" + (" ..." if option.repeat else "")
    flag = _esc(option.flags[0])
    if option.takes_value:
        return f".RB [ {flag}\n.IR {_esc(option.metavar or '')} ]"
    return f".RB [ {flag} ]"


def _option_item(option: Option) -> list[str]:
    if option.flags:
        names = ", ".join(
            f"\\fB{_esc(flag)}\\fR" + (f" \\fI{_esc(option.metavar)}\\fR" if option.metavar else "")
            for flag in option.flags
        )
    else:
        names = f"\\fI{_esc(option.metavar or '')}\\fR" + (" ..." if option.repeat else "")
    return [".TP", names, _esc(option.help or "")]


# Long forms of ipspool.exitcodes (docs/exit-codes.md says the same); a test
# checks that every ExitCode has one.
EXIT_CODES: dict[ExitCode, str] = {
    ExitCode.OK: "Success; for run, a graceful stop (first or second TERM or INT).",
    ExitCode.FAILURE: "submit \\-\\-wait: a file failed or timed out; reload: no verdict in time; "
                      "run \\-\\-daemonize: the pidfile is locked; process: an input is missing, unreadable "
                      "or corrupt (the reason is on standard error).",
    ExitCode.USAGE: "The command line is wrong.",
    ExitCode.WORKER_BOOT_ERROR: "run: workers cannot start (a stage fails to load in the worker, or workers die "
                                "before they are ready). The daemon halts instead of restarting them in a loop.",
    ExitCode.CONFIG_ERROR: "The configuration is invalid or a stage cannot be loaded.",
    ExitCode.SPOOL_ERROR: "run: the spool or results directory is missing, not a directory, a symbolic link, "
                          "or not writable.",
    ExitCode.TIMED_OUT: "process: no chunk made progress for workers.heartbeat_timeout seconds (a hung stage); "
                        "the worker processes are killed and no \\-o file is written.",
    ExitCode.NOT_RUNNING: "status, reload: no daemon answers on the stats socket of this configuration.",
    ExitCode.RELOAD_REJECTED: "reload: the daemon refused the new configuration and keeps running on the old one.",
    ExitCode.INTERNAL_ERROR: "An uncaught exception (a bug): logged first as one critical event "
                             "(daemon.crashed or thread.crashed) with its traceback.",
}

_SPOOL = _esc(DEFAULT_SPOOL)

_DESCRIPTION = r"""
.B ipspool
is a daemon for files of IP addresses, one address a line. Producers hand
files to a spool directory; a supervisor claims each file, splits it into
byte ranges and has a fixed set of worker processes validate, classify,
match against CIDR lists and enrich every address. Each input
.I NAME
gives one result file
.IR NAME .jsonl
with one JSON record per line, in input order.
.PP
The spool protocol: a producer writes into
.I tmp/
and renames the complete file into
.IR incoming/ ;
the daemon renames it into
.I active/
(the claim), writes the result to a temporary name, fsyncs and links it into
the results directory, and finally moves the input to
.I done/
(or deletes it). An input that cannot be processed goes to
.I failed/
beside a
.IR NAME .error.json
record. Whatever is left in
.I active/
after a crash is processed again at start\-up; no file is lost or processed
twice at the same time.
.PP
Under systemd, ipspool is a
.B Type=notify
service, driven with
.BR "systemctl start" ", " stop ", " reload " and " status .
It logs one JSON object a line (stable event names, documented in
.IR /usr/share/doc/ipspool/events.md );
under journald each line carries its syslog priority, so
.B "journalctl \-u ipspool \-p warning"
works.
"""

_SIGNALS = r"""
.TP
.BR SIGTERM ", " SIGINT
Graceful stop: stop claiming files, let the work in progress finish within
.BR workers.graceful_timeout ,
leave the rest in
.I active/
for the next start, and exit 0. A second TERM or INT stops at once.
.TP
.B SIGHUP
Reload: read and validate the configuration again and load every stage; if
anything is wrong, log
.B config.reload_failed
and keep running on the old configuration. Otherwise replace the workers
gracefully.
.B ipspool reload
(the unit's ExecReload=) sends this signal and waits for the verdict.
.TP
.B SIGUSR1
Reopen
.B log.file
(for log rotation with
.BR \-\-daemonize ).
.TP
.B SIGUSR2
Rescan
.I incoming/
as if inotify had overflowed (for testing).
"""

_FILES = rf"""
.TP
.I /etc/ipspool/ipspool.toml
The configuration read by the packaged service; every key, its default and
its meaning are in
.IR /usr/share/doc/ipspool/ipspool.toml.example .
.TP
.IR {_SPOOL}/tmp/ ", " {_SPOOL}/incoming/
Where producers write and hand in files (group
.BR ipspool\-submit ).
.TP
.IR {_SPOOL}/active/ ", " {_SPOOL}/done/ ", " {_SPOOL}/failed/
Files being processed, processed and failed; the daemon's alone.
.TP
.I {_SPOOL}/results/
.IR NAME .jsonl
result files (group
.BR ipspool ).
.TP
.IR /run/ipspool/stats.sock ", " /run/ipspool/authkey
The live counters that
.B ipspool status
and
.B ipspool reload
read; the key is readable by the service user and root only.
.TP
.I /lib/systemd/system/ipspool.service
The unit; local changes belong in a drop\-in
.RB ( "systemctl edit ipspool" ).
.TP
.IR /usr/lib/sysusers.d/ipspool.conf ", " /usr/lib/tmpfiles.d/ipspool.conf
The users, groups and spool directories the package creates.
"""  # noqa: S108 - names the spool's tmp/ directory; no temporary file is made

_SEE_ALSO = r"""
.BR systemctl (1),
.BR journalctl (1),
.BR systemd.exec (5),
.BR sysusers.d (5),
.BR tmpfiles.d (5);
the operator documentation in
.IR /usr/share/doc/ipspool/ .
"""


def _lower_first(text: str) -> str:
    return text[:1].lower() + text[1:]


def render(parser: argparse.ArgumentParser | None = None, when: float | None = None) -> str:
    """The whole page; ``when`` (default: $SOURCE_DATE_EPOCH or now) dates it."""
    if parser is None:
        from ipspool.cli import build_parser

        parser = build_parser()
    if when is None:
        when = float(os.environ.get("SOURCE_DATE_EPOCH", time.time()))
    date = time.strftime("%Y-%m-%d", time.gmtime(when))
    global_options, commands = describe(parser)
    out = [
        f'.TH IPSPOOL 8 "{date}" "ipspool {_esc(__version__)}" "System Administration"',
        ".nh",  # no hyphenation: paths and command names must stay whole
        ".SH NAME",
        f"ipspool \\- {_esc(_lower_first((parser.description or '').rstrip('.')))}",
        ".SH SYNOPSIS",
    ]
    for command in commands:
        out += [".B ipspool", f".B {_esc(command.name)}"]
        out += [_usage(o) for o in command.options if o.flags]
        out += [_usage(o) for o in command.options if not o.flags]
        out.append(".br")
    out += [".B ipspool", ".RB [ \\-\\-version ]", ".br", ".B ipspool", ".RB [ \\-h ]"]
    out += [".SH DESCRIPTION", _DESCRIPTION.strip()]
    out += [".SH COMMANDS"]
    for command in commands:
        out += [f".SS {_esc(command.name)}", _esc(command.help)]
        for option in command.options:
            out += _option_item(option)
    out += [".SH OPTIONS", "These come before the command:"]
    for option in global_options:
        out += _option_item(option)
    out += [".SH EXIT STATUS"]
    for code in ExitCode:
        out += [".TP", f"\\fB{int(code)}\\fR ({code.name})", EXIT_CODES[code]]
    out += [".SH SIGNALS", "The daemon (ipspool run) handles:", _SIGNALS.strip()]
    out += [".SH FILES", _FILES.strip()]
    out += [".SH SEE ALSO", _SEE_ALSO.strip()]
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    sys.stdout.write(render())
