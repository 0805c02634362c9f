"""``ipspool status``: the Manager's snapshot as a table an operator can read.

Everything shown comes from the daemon, and a file name is chosen by whoever
dropped the file: every control character (C0, DEL, C1) and every character
that reorders or breaks lines (Unicode line and paragraph separators, bidi
embeddings, overrides and isolates) is printed as an escape (``\\x1b``,
``\\u202e``), so no name can move the cursor, set the terminal title, ring
the bell or forge a row. Numbers that are not numbers are shown as ``?``.
"""

from __future__ import annotations

import math
import time
from typing import Any

__all__ = ["render_status", "terminal_safe"]

_UNSAFE = {
    **{c: f"\\x{c:02x}" for c in (*range(0x20), *range(0x7F, 0xA0))},
    **{c: f"\\u{c:04x}" for c in (0x2028, 0x2029, *range(0x202A, 0x202F), *range(0x2066, 0x206A))},
}


def terminal_safe(value: Any) -> str:
    """``value`` as text with nothing a terminal would act on (see the module docstring)."""
    return str(value).translate(_UNSAFE)


def _number(value: Any, default: float = 0) -> float:
    """A numeric field; ``default`` when it is not a finite number of a sane size."""
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and abs(value) < 1e12:
        return value
    return default


def _int(value: Any) -> str:
    """An integer field (pid, slot, count) as text; ``?`` when it is not one."""
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else "?"


def _age(seconds: float) -> str:
    seconds = int(seconds)
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes}min"
    if minutes:
        return f"{minutes}min {secs}s"
    return f"{secs}s"


def _mapping(value: Any) -> dict[Any, Any]:
    return value if isinstance(value, dict) else {}


def _worker_row(row: dict[str, Any], done: dict[str, Any]) -> str:
    state = "retiring" if row.get("retiring") else ("ready" if row.get("ready") else "starting")
    if row.get("inflight"):
        state = "busy" if not row.get("retiring") else state
    current = row.get("current")
    names = [terminal_safe(name) for name in current] if isinstance(current, list) else []
    host = f"  [{terminal_safe(row['host'])}]" if row.get("host") else ""
    return (
        f"  {_int(row.get('slot')):<7}{_int(row.get('pid')):>8}  {state:<9}{_age(_number(row.get('uptime'))):>8}"
        f"{_int(row.get('restarts', 0)):>10}{_int(row.get('inflight', 0)):>10}  "
        f"{_number(row.get('heartbeat_age')):>8.1f}s  {_int(done.get('chunks_done', 0)):>7}  "
        f"{_int(done.get('lines_done', 0)):>10}  {', '.join(names) or '-'}{host}"
    )


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _executor_lines(table: list[dict[str, Any]], census: dict[str, Any], totals: dict[str, Any]) -> list[str]:
    """The executor's line: its kind, workers and threads up, chunks in flight, retries (Dask: and more)."""
    summary = next((row for row in table if row.get("scheduler_state")), None)
    if summary is None:
        if not census:
            return []
        return [f"Executor: {terminal_safe(census.get('kind', '?'))}: {_int(census.get('workers'))} worker(s), "
                f"{_int(census.get('threads'))} thread(s), {_int(census.get('inflight'))} chunk(s) in flight, "
                f"{_int(totals.get('chunk_retries', 0))} chunk(s) retried"]
    hosts = [row for row in table if row is not summary]
    inflight = sum(_count(row.get("inflight", 0)) for row in table)
    return [f"Executor: dask {terminal_safe(summary.get('host', '?'))} ({terminal_safe(summary['scheduler_state'])}, "
            f"pipeline v{_int(summary.get('pipeline_version', 0))}): {len(hosts)} worker(s), "
            f"{sum(_count(row.get('threads', 0)) for row in hosts)} thread(s), {inflight} chunk(s) in flight "
            f"({_int(summary.get('inflight', 0))} not begun), "
            f"{sum(_count(row.get('restarts', 0)) for row in hosts)} worker deaths, "
            f"{_int(summary.get('retried', 0))} chunk(s) retried, "
            f"{_int(summary.get('resent', 0))} sent again uncharged"]


def render_status(snapshot: dict[str, Any]) -> str:
    daemon = _mapping(snapshot.get("daemon"))
    totals = _mapping(snapshot.get("totals"))
    progress = {row.get("pid"): row for row in _mapping(snapshot.get("workers")).values() if isinstance(row, dict)}
    now = time.time()
    started = _number(daemon.get("started"), now)
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started))
    config = terminal_safe(daemon.get("config") or "<defaults>")
    lines = [
        f"ipspool - {terminal_safe(daemon.get('spool', '?'))}",
        f"   State: {terminal_safe(daemon.get('state', '?'))} since {since} ({_age(now - started)} ago)",
        f"     PID: {_int(daemon.get('pid'))} (config {config}, generation {_int(daemon.get('generation', 0))})",
        f" Backlog: {_int(daemon.get('backlog', 0))} file(s) waiting, "
        f"oldest {_number(daemon.get('backlog_age')):.1f}s; {_int(daemon.get('active', 0))} in progress",
        f"    Rate: {_number(daemon.get('files_per_second')):.1f} files/s",
        f"  Totals: {_int(totals.get('files_done', 0))} files done, {_int(totals.get('files_failed', 0))} failed, "
        f"{_int(totals.get('lines', 0))} lines, {_int(totals.get('valid', 0))} valid, "
        f"{_int(totals.get('invalid', 0))} invalid, {_int(totals.get('worker_restarts', 0))} worker restarts",
    ]
    classes = {str(k).split(".", 1)[1]: v for k, v in totals.items() if str(k).startswith("class.")}
    if classes:
        lines.append(" Classes: " + ", ".join(f"{terminal_safe(k)} {_int(v)}" for k, v in sorted(classes.items())))
    reload = _mapping(daemon.get("last_reload"))
    if reload:
        problems = reload.get("problems")
        shown = "; ".join(map(terminal_safe, problems)) if isinstance(problems, list) else "?"
        verdict = "ok" if reload.get("ok") else "REFUSED: " + shown
        lines.append(f"  Reload: {verdict} ({_age(now - _number(reload.get('time')))} ago)")
    table = daemon.get("worker_table")
    rows = [row for row in table if isinstance(row, dict)] if isinstance(table, list) else []
    lines += _executor_lines(rows, _mapping(daemon.get("executor")), totals)
    lines.append("")
    header = (f"  {'WORKER':<7}{'PID':>8}  {'STATE':<9}{'UPTIME':>8}{'RESTARTS':>10}{'INFLIGHT':>10}  "
              f"{'HEARTBEAT':>9}  {'CHUNKS':>7}  {'LINES':>10}")
    lines.append(header + "  CURRENT")
    for row in rows:
        if row.get("scheduler_state"):
            continue  # the Dask executor's summary row: shown above
        done = row if "chunks_done" in row else _mapping(progress.get(row.get("pid")))
        lines.append(_worker_row(row, done))
    return "\n".join(lines) + "\n"
