"""Structured logs: one JSON object a line, the same in every process.

Keys: ``timestamp`` (ISO-8601 UTC), ``level``, ``event`` (a stable dotted
name from docs/events.md), ``pid``, ``role``, and ``worker`` in workers, then
the event's fields. Each line goes out in a single write(2) of well under
PIPE_BUF bytes, which is what keeps lines from different processes whole when
they share one pipe, file or journal stream.

Under journald (JOURNAL_STREAM names our stdout) each line starts with the
``<N>`` syslog priority, so ``journalctl -p warning`` works and the JSON after
the prefix stays intact. On a terminal a readable renderer is used instead.

An exception nothing caught (a bug) is one ``critical`` event with
``exc_type``, ``exc`` and ``traceback`` fields, never a bare traceback on
stderr (which journald files at info priority): ``daemon.crashed`` for the
main thread of a process, ``thread.crashed`` for any other thread, and
``command.crashed`` for a one-shot command; the process then exits
INTERNAL_ERROR (70).
"""

from __future__ import annotations

import os
import sys
import threading
import traceback
from collections.abc import Callable, MutableMapping
from types import TracebackType
from typing import Any

import orjson
import structlog

from ipspool.exitcodes import ExitCode

__all__ = [
    "LogTarget",
    "configure_logging",
    "crash_fields",
    "exit_internal_error",
    "get_logger",
    "install_crash_hooks",
    "journal_stream_is_stdout",
    "log_crash",
]

_LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40, "critical": 50}
_PRIORITY = {"debug": 7, "info": 6, "warning": 4, "error": 3, "critical": 2}
_MAX_LINE = 4000  # below PIPE_BUF (4096): one write, never split
_FIRST_KEYS = ("timestamp", "level", "event", "pid", "role", "worker")
_MAX_TRACEBACK = 2400  # characters kept (the innermost frames): the line stays below _MAX_LINE

EventDict = MutableMapping[str, Any]


class LogTarget:
    """Where lines go: stdout, or a file that logrotate may move (reopen())."""

    def __init__(self, path: str = "", fd: int | None = None) -> None:
        self.path = path
        self._lock = threading.Lock()
        self.fd = self._open() if path else (sys.stdout.fileno() if fd is None else fd)

    def _open(self) -> int:
        return os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)

    def reopen(self) -> None:
        if not self.path:
            return
        with self._lock:
            try:
                new = self._open()
            except OSError:
                return  # keep writing to the old file rather than crash on logrotate
            old, self.fd = self.fd, new
            os.close(old)

    def close(self) -> None:
        """Close a log file (never stdout)."""
        if self.path:
            with self._lock:
                os.close(self.fd)
                self.fd = os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC)

    def write(self, line: bytes) -> None:
        try:
            os.write(self.fd, line)
        except OSError:
            # A full pipe or disk, a closed reader, an I/O error: losing a
            # log line beats stalling or crashing the daemon (and with it the
            # files in flight).
            pass


class _FdLogger:
    """The structlog 'logger' at the end of the chain: one write per line."""

    def __init__(self, target: LogTarget) -> None:
        self._target = target

    def msg(self, message: bytes | str) -> None:
        data = message.encode("utf-8", "backslashreplace") if isinstance(message, str) else message
        self._target.write(data + b"\n")

    log = debug = info = warning = warn = error = critical = exception = fatal = msg


def journal_stream_is_stdout() -> bool:
    """True when stdout is connected to journald (see systemd.exec(5), JOURNAL_STREAM)."""
    value = os.environ.get("JOURNAL_STREAM", "")
    dev, _, ino = value.partition(":")
    if not dev or not ino:
        return False
    try:
        st = os.fstat(sys.stdout.fileno())
    except (OSError, ValueError):
        return False
    return f"{st.st_dev}:{st.st_ino}" == value


def _static(fields: dict[str, Any]) -> Callable[[Any, str, EventDict], EventDict]:
    def add(_: Any, __: str, event_dict: EventDict) -> EventDict:
        event_dict["pid"] = os.getpid()
        for key, value in fields.items():
            event_dict.setdefault(key, value)
        return event_dict

    return add


def _ordered(_: Any, __: str, event_dict: EventDict) -> EventDict:
    front = {key: event_dict.pop(key) for key in _FIRST_KEYS if key in event_dict}
    front.update(event_dict)
    return front


def _shorten(value: Any) -> Any:
    if isinstance(value, str) and len(value) > 400:
        return value[:400] + "...[truncated]"
    if isinstance(value, list | tuple) and len(value) > 20:
        return [*value[:20], f"...[{len(value) - 20} more]"]
    return value


def _text(value: Any) -> Any:
    """Strings (also in lists and dicts) with lone surrogates as \\xNN escapes.

    File names that are not UTF-8 reach us as surrogate-escaped str, which
    orjson refuses: a producer must not be able to crash a process by naming
    a file (issue 4).
    """
    if isinstance(value, str):
        try:
            return value.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
        except UnicodeEncodeError:  # a surrogate that no byte stands for
            return value.encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(value, list | tuple):
        return [_text(v) for v in value]
    if isinstance(value, dict):
        return {_text(k): _text(v) for k, v in value.items()}
    return value


def _json(_: Any, __: str, event_dict: EventDict) -> bytes:
    try:
        line = orjson.dumps(event_dict, default=str)
    except TypeError:
        event_dict = {k: _text(v) for k, v in event_dict.items()}
        line = orjson.dumps(event_dict, default=str)
    if len(line) > _MAX_LINE:
        line = orjson.dumps({k: v if k == "traceback" else _shorten(v) for k, v in event_dict.items()},
                            default=str)
        if len(line) > _MAX_LINE:
            keep = {k: event_dict[k] for k in _FIRST_KEYS if k in event_dict}
            keep["truncated"] = True
            line = orjson.dumps(keep, default=str)
    return line


def _journal_prefix(_: Any, method: str, line: bytes) -> bytes:
    level = method if method in _PRIORITY else "info"
    return b"<%d>" % _PRIORITY[level] + line


def configure_logging(
    level: str = "info",
    fmt: str = "auto",
    *,
    role: str,
    target: LogTarget | None = None,
    **fields: Any,
) -> LogTarget:
    """Configure structlog for this process; returns the target for reopen()."""
    target = target or LogTarget()
    if fmt == "auto":
        fmt = "console" if not target.path and os.isatty(target.fd) else "json"
    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True, key="timestamp"),
        _static({"role": role, **fields}),
    ]
    if fmt == "console":
        processors += [structlog.dev.ConsoleRenderer(colors=False)]
    else:
        processors += [structlog.processors.dict_tracebacks, _ordered, _json]
        if not target.path and journal_stream_is_stdout():
            processors.append(_journal_prefix)
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=lambda *_: _FdLogger(target),
        cache_logger_on_first_use=False,
    )
    return target


def get_logger() -> Any:
    return structlog.get_logger()


def crash_fields(exc: BaseException) -> dict[str, str]:
    """``exc_type``, ``exc`` and ``traceback`` (its last _MAX_TRACEBACK characters) of an uncaught exception."""
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    if len(text) > _MAX_TRACEBACK:
        text = f"...[{len(text) - _MAX_TRACEBACK} characters cut]\n" + text[-_MAX_TRACEBACK:]
    kind = type(exc)
    name = kind.__qualname__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"
    return {"exc_type": name, "exc": str(exc)[:400], "traceback": text}


def log_crash(event: str, exc: BaseException, **fields: Any) -> None:
    """Log ``exc`` as one critical event (``daemon.crashed``, ``thread.crashed``, ``command.crashed``)."""
    get_logger().critical(event, **crash_fields(exc), **fields)


def exit_internal_error() -> None:
    """End this process now with INTERNAL_ERROR (from any thread; buffered output is flushed first)."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError, AttributeError):
            pass  # closed or gone: nothing left to lose
    os._exit(ExitCode.INTERNAL_ERROR)


def install_crash_hooks(on_thread_crash: Callable[[], None] = exit_internal_error) -> None:
    """Route uncaught exceptions of this process into critical events (sys.excepthook, threading.excepthook).

    A crashed thread is logged, then ``on_thread_crash`` runs on that thread:
    by default the process ends with INTERNAL_ERROR, since a thread that died
    leaves it unable to keep its promises (the supervisor instead stops its
    loop in order). The main thread's last resort logs and ends the process
    the same way; entry points catch first where they can clean up.
    """

    def thread_hook(args: threading.ExceptHookArgs) -> None:
        if args.exc_type is SystemExit or args.exc_value is None:
            return
        log_crash("thread.crashed", args.exc_value, thread=args.thread.name if args.thread else "")
        on_thread_crash()

    def main_hook(_type: type[BaseException], exc: BaseException, _tb: TracebackType | None) -> None:
        if isinstance(exc, KeyboardInterrupt):
            sys.__excepthook__(_type, exc, _tb)
            return
        log_crash("daemon.crashed", exc)
        exit_internal_error()

    threading.excepthook = thread_hook
    sys.excepthook = main_hook
