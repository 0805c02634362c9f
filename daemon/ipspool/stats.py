"""Shared counters and the worker table, served by a multiprocessing Manager.

The Manager is a process of its own listening on a unix socket in the runtime
directory; its authkey sits beside it in a file only the service user (and
root) can read. Workers publish their rows of the worker table, the
supervisor publishes the totals, and ``ipspool status`` reads both.

Totals count *committed* work (a file's lines count once its result is
published), so they stay exact when a worker dies mid-chunk and its chunk is
processed again. The supervisor keeps the authoritative copy and re-seeds a
restarted Manager from it, which is why a Manager crash loses nothing.

Every update is one round trip carrying a batch (about 80 us each): workers
publish at most a few times a second, never per address.
"""

from __future__ import annotations

import os
import signal
import socket
import struct
import threading
import time
import traceback
from multiprocessing import connection
from multiprocessing.context import AuthenticationError, BaseContext
from multiprocessing.managers import BaseManager, BaseProxy, Server
from pathlib import Path
from typing import Any, cast

__all__ = ["Stats", "StatsClient", "StatsManager", "read_authkey", "start_manager"]

SOCKET_NAME = "stats.sock"
AUTHKEY_NAME = "authkey"
_HANDSHAKE_TIMEOUT = 5.0


class Stats:
    """The shared state, living in the Manager process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._totals: dict[str, int] = {}
        self._daemon: dict[str, Any] = {}
        self._workers: dict[int, dict[str, Any]] = {}

    def set_totals(self, totals: dict[str, int]) -> None:
        with self._lock:
            self._totals = dict(totals)

    def set_daemon(self, info: dict[str, Any]) -> None:
        with self._lock:
            self._daemon.update(info)

    def update_worker(self, slot: int, fields: dict[str, Any]) -> None:
        with self._lock:
            self._workers.setdefault(slot, {}).update(fields)

    def remove_worker(self, slot: int) -> None:
        with self._lock:
            self._workers.pop(slot, None)

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {
                "daemon": dict(self._daemon),
                "totals": dict(self._totals),
                "workers": {slot: dict(row) for slot, row in sorted(self._workers.items())},
            }


# The one Stats object of a Manager process. The registry below must name a
# top-level callable (it is pickled to start the server), so the instance is
# module-level; it exists in every process but is only used in the server.
_SERVED = Stats()


def _served_stats() -> Stats:
    return _SERVED


def _peer(conn: connection.Connection) -> dict[str, int]:
    """pid/uid/gid of the process at the other end of a unix socket."""
    sock = socket.socket(fileno=conn.fileno())
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    finally:
        sock.detach()
    pid, uid, gid = struct.unpack("3i", raw)
    return {"peer_pid": pid, "peer_uid": uid, "peer_gid": gid}


class _StatsServer(Server):
    """A Manager server that logs refused clients and bounds the handshake.

    The stock server answers a failed handshake with a traceback and says
    nothing. Operators want to know who knocked with the wrong key, and a
    client that never answers the challenge must not hold a thread forever,
    so the request handler is our own; past the handshake it does what the
    stock one does: one request, dispatched to a public Server method.
    """

    def _handle_request(self, c: connection.Connection) -> None:
        _set_recv_timeout(c, _HANDSHAKE_TIMEOUT)
        try:
            authkey: bytes = self.authkey  # type: ignore[attr-defined]  # set by Server.__init__
            connection.deliver_challenge(c, authkey)
            connection.answer_challenge(c, authkey)
        except (AuthenticationError, EOFError, OSError) as exc:
            from ipspool.logs import get_logger

            get_logger().warning("stats.client_refused", reason=str(exc) or type(exc).__name__, **_peer(c))
            c.close()
            return
        _set_recv_timeout(c, 0)  # an accepted client may stay connected
        try:
            _, funcname, args, kwds = c.recv()
            if funcname not in self.public:
                raise ValueError(f"{funcname!r} is not a manager request")
            result = getattr(self, funcname)(c, *args, **kwds)
        except Exception:  # noqa: BLE001 - the error is returned to the client
            msg: tuple[str, Any] = ("#TRACEBACK", traceback.format_exc())
        else:
            msg = ("#RETURN", result)
        try:
            c.send(msg)
        except OSError:
            pass


def _set_recv_timeout(conn: connection.Connection, seconds: float) -> None:
    sock = socket.socket(fileno=conn.fileno())
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", int(seconds), 0))
    finally:
        sock.detach()


class StatsManager(BaseManager):
    _Server = _StatsServer


StatsManager.register("stats", callable=_served_stats, exposed=(
    "set_totals", "set_daemon", "update_worker", "remove_worker", "snapshot",
))


def _serve_init(title: str, level: str, watch: connection.Connection, log_file: str = "") -> None:
    """Runs first in the Manager process."""
    # The Manager outlives neither signals sent to the process group (the
    # supervisor decides when it stops) nor the supervisor itself.
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2):
        signal.signal(signum, signal.SIG_IGN)
    os.umask(0o077)  # the socket is created after this: owner only
    try:
        from setproctitle import setproctitle

        setproctitle(title)
    except ImportError:
        pass
    from ipspool.logs import LogTarget, configure_logging

    # log.file too: stats.client_refused must reach the operator's log.
    configure_logging(level, "json", role="stats", target=LogTarget(log_file))

    def watch_parent() -> None:
        try:
            watch.recv()
        except (EOFError, OSError):
            pass
        os._exit(0)

    threading.Thread(target=watch_parent, name="parent-watch", daemon=True).start()


def ensure_authkey(runtime_dir: Path) -> bytes:
    """Create (once) and read the authkey file, mode 0600."""
    path = runtime_dir / AUTHKEY_NAME
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except FileExistsError:
        return read_authkey(runtime_dir)
    try:
        os.write(fd, os.urandom(32).hex().encode())
    finally:
        os.close(fd)
    return read_authkey(runtime_dir)


def read_authkey(runtime_dir: Path) -> bytes:
    with open(runtime_dir / AUTHKEY_NAME, "rb") as handle:
        return handle.read().strip()


def start_manager(
    ctx: BaseContext, runtime_dir: Path, authkey: bytes, level: str, title: str, log_file: str = ""
) -> tuple[StatsManager, connection.Connection]:
    """Start the Manager; the returned pipe end keeps it alive while held."""
    address = runtime_dir / SOCKET_NAME
    try:
        address.unlink()
    except FileNotFoundError:
        pass
    keep, watch = ctx.Pipe(duplex=False)
    manager = StatsManager(address=str(address), authkey=authkey, ctx=ctx)
    manager.start(_serve_init, (title, level, keep, log_file))
    keep.close()
    return manager, watch


class StatsClient:
    """A connection to a running Manager, reconnecting when it comes back."""

    def __init__(self, runtime_dir: Path, authkey: bytes | None = None) -> None:
        self.address = str(runtime_dir / SOCKET_NAME)
        self.runtime_dir = runtime_dir
        self._authkey = authkey
        self._stats: Any = None
        self._next_try = 0.0

    def connect(self) -> Any:
        authkey = self._authkey if self._authkey is not None else read_authkey(self.runtime_dir)
        manager = StatsManager(address=self.address, authkey=authkey)
        manager.connect()
        self._stats = cast(BaseProxy, manager.stats())  # type: ignore[attr-defined]
        return self._stats

    def call(self, method: str, *args: Any) -> Any:
        """Call a Stats method; on failure drop the connection and retry later."""
        now = time.monotonic()
        if self._stats is None:
            if now < self._next_try:
                return None
            try:
                self.connect()
            except (OSError, EOFError, AuthenticationError):
                self._next_try = now + 1.0
                return None
        try:
            return getattr(self._stats, method)(*args)
        except (OSError, EOFError):
            self._stats = None
            self._next_try = now + 1.0
            return None
