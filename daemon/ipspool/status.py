"""``ipspool status``: the Manager's snapshot as a table an operator can read."""

from __future__ import annotations

import time
from typing import Any

__all__ = ["render_status"]


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


def _executor_lines(table: list[dict[str, Any]]) -> list[str]:
    """The Dask executor's line: scheduler, its state, workers and threads, chunks in flight."""
    summary = next((row for row in table if row.get("scheduler_state")), None)
    if summary is None:
        return []
    hosts = [row for row in table if row is not summary]
    inflight = sum(row.get("inflight", 0) for row in table)
    return [f"Executor: dask {summary.get('host', '?')} ({summary['scheduler_state']}, pipeline "
            f"v{summary.get('pipeline_version', 0)}): {len(hosts)} worker(s), "
            f"{sum(row.get('threads', 0) for row in hosts)} thread(s), {inflight} chunk(s) in flight "
            f"({summary.get('inflight', 0)} not begun), {sum(row.get('restarts', 0) for row in hosts)} worker deaths, "
            f"{summary.get('retried', 0)} chunk(s) retried, {summary.get('resent', 0)} sent again uncharged"]


def render_status(snapshot: dict[str, Any]) -> str:
    daemon = snapshot.get("daemon", {})
    totals = snapshot.get("totals", {})
    progress = {row.get("pid"): row for row in snapshot.get("workers", {}).values()}
    started = daemon.get("started", time.time())
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started))
    config = daemon.get("config") or "<defaults>"
    lines = [
        f"ipspool - {daemon.get('spool', '?')}",
        f"   State: {daemon.get('state', '?')} since {since} ({_age(time.time() - started)} ago)",
        f"     PID: {daemon.get('pid', '?')} (config {config}, generation {daemon.get('generation', 0)})",
        f" Backlog: {daemon.get('backlog', 0)} file(s) waiting, oldest {daemon.get('backlog_age', 0):.1f}s; "
        f"{daemon.get('active', 0)} in progress",
        f"    Rate: {daemon.get('files_per_second', 0):.1f} files/s",
        f"  Totals: {totals.get('files_done', 0)} files done, {totals.get('files_failed', 0)} failed, "
        f"{totals.get('lines', 0)} lines, {totals.get('valid', 0)} valid, {totals.get('invalid', 0)} invalid, "
        f"{totals.get('worker_restarts', 0)} worker restarts",
    ]
    classes = {k.split(".", 1)[1]: v for k, v in totals.items() if k.startswith("class.")}
    if classes:
        lines.append(" Classes: " + ", ".join(f"{k} {v}" for k, v in sorted(classes.items())))
    reload = daemon.get("last_reload")
    if reload:
        verdict = "ok" if reload.get("ok") else "REFUSED: " + "; ".join(reload.get("problems", []))
        lines.append(f"  Reload: {verdict} ({_age(time.time() - reload.get('time', 0))} ago)")
    table = daemon.get("worker_table", [])
    lines += _executor_lines(table)
    lines.append("")
    header = (f"  {'WORKER':<7}{'PID':>8}  {'STATE':<9}{'UPTIME':>8}{'RESTARTS':>10}{'INFLIGHT':>10}  "
              f"{'HEARTBEAT':>9}  {'CHUNKS':>7}  {'LINES':>10}")
    lines.append(header + "  CURRENT")
    for row in table:
        if row.get("scheduler_state"):
            continue  # the Dask executor's summary row: shown above
        state = "retiring" if row.get("retiring") else ("ready" if row.get("ready") else "starting")
        if row.get("inflight"):
            state = "busy" if not row.get("retiring") else state
        done = row if "chunks_done" in row else progress.get(row.get("pid"), {})
        lines.append(
            f"  {row.get('slot', '?'):<7}{row.get('pid', '?'):>8}  {state:<9}{_age(row.get('uptime', 0)):>8}"
            f"{row.get('restarts', 0):>10}{row.get('inflight', 0):>10}  "
            f"{row.get('heartbeat_age', 0):>8.1f}s  {done.get('chunks_done', 0):>7}  {done.get('lines_done', 0):>10}  "
            f"{', '.join(row.get('current', [])) or '-'}" + (f"  [{row['host']}]" if row.get("host") else "")
        )
    return "\n".join(lines) + "\n"
