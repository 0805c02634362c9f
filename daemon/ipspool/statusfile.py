"""What ``ipspool status`` and ``ipspool reload`` know of the daemon: RUNTIME/status.json, nothing else.

The operator running these is often root; the runtime directory, the file
in it and the stats socket belong to the service account. The stats
Manager's protocol is pickle, which runs code, so operators never connect
to the socket: they read the JSON snapshot the Manager writes
(``stats.SnapshotWriter``), which carries no code. The file is read as
data an untrusted party wrote:

- opened without following a link and without blocking (a FIFO), and only
  if it is a regular file with one link, owned by the owner of the runtime
  directory (or root), so a link to a file only root may read cannot be
  shown to root; at most ``MAX_BYTES`` of it are read;
- only JSON (orjson), and only an object; everything shown from it goes
  through ``status.terminal_safe``.

A snapshot is current when it was written less than ``STALE_AFTER``
seconds ago (the Manager rewrites it every two seconds at least) and the
daemon pid in it is alive; otherwise the daemon is "not running", and the
reason says which.
"""

from __future__ import annotations

import errno
import os
import stat
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ipspool.stats import STATUS_NAME

__all__ = ["MAX_BYTES", "STALE_AFTER", "Snapshot", "StatusUnavailable", "process_owner", "read_snapshot"]

STALE_AFTER = 10.0  # seconds; the Manager rewrites the file every 2 s at least
MAX_BYTES = 16 << 20


class StatusUnavailable(Exception):
    """No current snapshot: the daemon is not running (or not answering), and why."""


@dataclass(frozen=True)
class Snapshot:
    data: dict[str, Any]
    owner: int  # uid of the file's owner: the service account
    path: Path

    @property
    def daemon(self) -> dict[str, Any]:
        value = self.data.get("daemon")
        return value if isinstance(value, dict) else {}

    @property
    def pid(self) -> int | None:
        pid = self.daemon.get("pid")
        return pid if isinstance(pid, int) and not isinstance(pid, bool) and pid > 1 else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def process_owner(pid: int) -> int | None:
    """The real uid of process ``pid``, None when it is gone."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as handle:
            for line in handle:
                if line.startswith("Uid:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def _read(path: Path, allowed: set[int]) -> tuple[bytes, int]:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    except FileNotFoundError:
        raise StatusUnavailable(f"no {path}") from None
    except PermissionError:
        raise SystemExit(f"ipspool: cannot read {path}: permission denied; run as the service user, "
                         f"a member of its group, or root") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise StatusUnavailable(f"{path} is a symbolic link; not followed") from None
        raise StatusUnavailable(f"{path}: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise StatusUnavailable(f"{path} is not a regular file")
        if st.st_nlink != 1:
            raise StatusUnavailable(f"{path} has {st.st_nlink} links; not read")
        if st.st_uid not in allowed:
            raise StatusUnavailable(f"{path} is owned by uid {st.st_uid}, not by the runtime directory's owner")
        if st.st_size > MAX_BYTES:
            raise StatusUnavailable(f"{path} is {st.st_size} bytes, more than a snapshot ever is")
        chunks, left = [], MAX_BYTES + 1
        while left > 0 and (block := os.read(fd, min(left, 1 << 20))):
            chunks.append(block)
            left -= len(block)
        return b"".join(chunks), st.st_uid
    finally:
        os.close(fd)


def read_snapshot(runtime_dir: Path, now: float | None = None) -> Snapshot:
    """The daemon's current snapshot, or StatusUnavailable saying why there is none."""
    import orjson

    path = runtime_dir / STATUS_NAME
    try:
        dir_owner = os.stat(runtime_dir).st_uid
    except FileNotFoundError:
        raise StatusUnavailable(f"no runtime directory {runtime_dir}") from None
    except OSError as exc:
        raise StatusUnavailable(f"{runtime_dir}: {exc.strerror}") from None
    data, owner = _read(path, {dir_owner, 0})
    if len(data) > MAX_BYTES:
        raise StatusUnavailable(f"{path} is larger than a snapshot ever is")
    try:
        parsed = orjson.loads(data)
    except orjson.JSONDecodeError:
        raise StatusUnavailable(f"{path} is not a JSON snapshot (being replaced, or damaged)") from None
    if not isinstance(parsed, dict):
        raise StatusUnavailable(f"{path} is not a JSON object")
    snapshot = Snapshot(parsed, owner, path)
    written = parsed.get("written")
    now = time.time() if now is None else now
    if not isinstance(written, int | float) or isinstance(written, bool):
        raise StatusUnavailable(f"{path} carries no time")
    if now - written > STALE_AFTER:
        raise StatusUnavailable(f"the snapshot is {now - written:.0f}s old (the stats process is stopped or gone)")
    pid = snapshot.pid
    if pid is None:
        raise StatusUnavailable("the snapshot names no daemon pid (the daemon is starting)")
    if not _alive(pid):
        raise StatusUnavailable(f"daemon pid {pid} is gone")
    return snapshot
