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

Operators never speak this protocol: multiprocessing's is pickle, and the
socket and its key belong to the service account, so a compromised service
could make a root ``ipspool status`` unpickle anything. The Manager process
writes its snapshot to ``RUNTIME/status.json`` instead (``SnapshotWriter``:
a temporary file, written whole, fsync'd, renamed in, mode 0640, when it
changed, at most four times a second, and every two seconds anyway so its
``written`` time shows it is alive); ``ipspool status`` and ``ipspool
reload`` read only that file (``ipspool.statusfile``). Workers and the
supervisor, the service account itself, keep using the Manager.

Nothing waits on the Manager for long: a stopped or hung Manager (kill -STOP,
a stuck thread) must not stop the supervisor or a worker. Every step of a
client's exchange (connect, handshake, request, reply) is bounded by a
socket timeout; on a timeout the connection is dropped and the call retried
later, the counters staying exact in the supervisor meanwhile. The clients
speak the Manager's protocol themselves rather than through BaseProxy, whose
connections (and the one each proxy opens to say goodbye) have no timeout.
"""

from __future__ import annotations

import os
import signal
import socket
import stat
import string
import struct
import threading
import time
import traceback
from multiprocessing import connection, process
from multiprocessing.context import AuthenticationError, BaseContext
from multiprocessing.managers import BaseManager, Server
from pathlib import Path
from typing import Any

from ipspool.fsops import write_all
from ipspool.spool import SpoolError, fsync_dir

__all__ = [
    "STATUS_NAME",
    "AuthkeyError",
    "SnapshotWriter",
    "Stats",
    "StatsClient",
    "StatsConnection",
    "StatsManager",
    "ensure_authkey",
    "read_authkey",
    "start_manager",
]

SOCKET_NAME = "stats.sock"
STATUS_NAME = "status.json"
STATUS_MODE = 0o640
_WRITE_EVERY = 0.25   # at most four snapshots a second
_REFRESH_EVERY = 2.0  # rewritten at least this often: its "written" time says the Manager lives
AUTHKEY_NAME = "authkey"
_HANDSHAKE_TIMEOUT = 5.0
CALL_TIMEOUT = 1.0  # seconds for each step of a client's exchange with the Manager
_RETRY_FIRST, _RETRY_MAX = 1.0, 8.0  # back-off after a failed call, doubling
_AUTHKEY_BYTES = 32  # written as 64 hex digits
_HEX = frozenset(string.hexdigits.encode())


class Stats:
    """The shared state, living in the Manager process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._totals: dict[str, int] = {}
        self._daemon: dict[str, Any] = {}
        self._workers: dict[int, dict[str, Any]] = {}
        self.version = 0  # bumped by every change (SnapshotWriter writes when it moved)

    def set_totals(self, totals: dict[str, int]) -> None:
        with self._lock:
            self._totals = dict(totals)
            self.version += 1

    def set_daemon(self, info: dict[str, Any]) -> None:
        with self._lock:
            self._daemon.update(info)
            self.version += 1

    def update_worker(self, slot: int, fields: dict[str, Any]) -> None:
        with self._lock:
            self._workers.setdefault(slot, {}).update(fields)
            self.version += 1

    def remove_worker(self, slot: int) -> None:
        with self._lock:
            self._workers.pop(slot, None)
            self.version += 1

    def versioned(self) -> tuple[int, dict[str, Any]]:
        with self._lock:
            return self.version, self.snapshot_locked()

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return self.snapshot_locked()

    def snapshot_locked(self) -> dict[str, Any]:
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
        except (EOFError, BrokenPipeError, ConnectionResetError) as exc:
            # The client closed first: one that timed out while this
            # process was stopped, whose connection waited in the backlog.
            from ipspool.logs import get_logger

            get_logger().debug("stats.client_left", reason=str(exc) or type(exc).__name__)
            c.close()
            return
        except (AuthenticationError, OSError) as exc:
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


def _timeval(seconds: float) -> bytes:
    return struct.pack("ll", int(seconds), int(seconds % 1 * 1_000_000))


def _set_recv_timeout(conn: connection.Connection, seconds: float) -> None:
    sock = socket.socket(fileno=conn.fileno())
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, _timeval(seconds))
    finally:
        sock.detach()


def _bounded_client(address: str, authkey: bytes | None = None, timeout: float = CALL_TIMEOUT) -> connection.Connection:
    """multiprocessing.connection.Client for a unix socket, every step bounded by ``timeout``.

    connect() waits at most ``timeout`` (a stopped server's full backlog
    would block it); then SO_RCVTIMEO/SO_SNDTIMEO make each read and write
    of the blocking socket fail with EAGAIN (BlockingIOError) instead of
    waiting forever (socket(7)). The handshake is the stock one.
    """
    key = bytes(process.current_process().authkey if authkey is None else authkey)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(address)
        sock.setblocking(True)  # Connection reads and writes the descriptor directly
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, _timeval(timeout))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, _timeval(timeout))
        conn = connection.Connection(sock.detach())
    try:
        connection.answer_challenge(conn, key)
        connection.deliver_challenge(conn, key)
    except BaseException:
        conn.close()
        raise
    return conn


class StatsManager(BaseManager):
    _Server = _StatsServer

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # BaseManager's shutdown (a finalizer run when the supervisor stops)
        # connects through this: bounded, a stopped Manager is then killed.
        self._Client = _bounded_client


StatsManager.register("stats", callable=_served_stats, exposed=(
    "set_totals", "set_daemon", "update_worker", "remove_worker", "snapshot",
))


def write_status(runtime_dir: Path, snapshot: dict[str, Any]) -> None:
    """Replace RUNTIME/status.json whole: a temporary file, written, fsync'd, renamed in (mode 0640)."""
    import orjson

    data = orjson.dumps(snapshot, option=orjson.OPT_NON_STR_KEYS)
    tmp = runtime_dir / f".{STATUS_NAME}.{os.getpid()}.tmp"
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, STATUS_MODE)
    try:
        os.fchmod(fd, STATUS_MODE)  # whatever the umask (the Manager's is 077)
        write_all(fd, data)
        os.fsync(fd)
        os.close(fd)
        fd = -1
        os.rename(tmp, runtime_dir / STATUS_NAME)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        tmp.unlink(missing_ok=True)
        raise


class SnapshotWriter:
    """The Manager's thread that keeps RUNTIME/status.json current (see the module docstring)."""

    def __init__(self, stats: Stats, runtime_dir: Path) -> None:
        self.stats = stats
        self.runtime_dir = runtime_dir
        self.failing = False

    def write_once(self, last_version: int, last_write: float) -> tuple[int, float]:
        version, snapshot = self.stats.versioned()
        now = time.time()
        if version == last_version and now - last_write < _REFRESH_EVERY:
            return last_version, last_write
        snapshot["written"] = now
        snapshot["stats_pid"] = os.getpid()
        try:
            write_status(self.runtime_dir, snapshot)
        except OSError as exc:
            if not self.failing:
                from ipspool.logs import get_logger

                get_logger().error("stats.status_write_failed", path=str(self.runtime_dir / STATUS_NAME),
                                   error=exc.strerror or str(exc))
            self.failing = True
            return last_version, now
        self.failing = False
        return version, now

    def run(self) -> None:
        version, written = -1, 0.0
        while True:
            version, written = self.write_once(version, written)
            time.sleep(_WRITE_EVERY)


def _serve_init(title: str, level: str, watch: connection.Connection, log_file: str = "",
                runtime_dir: str = "") -> None:
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
    from ipspool.logs import LogTarget, configure_logging, install_crash_hooks

    # log.file too: stats.client_refused must reach the operator's log.
    configure_logging(level, "json", role="stats", target=LogTarget(log_file))
    # A thread of the Manager that dies (the status writer, the parent watch)
    # is one critical event, then the Manager ends: the supervisor starts a
    # new one and seeds it, as after any death of the Manager.
    install_crash_hooks()

    def watch_parent() -> None:
        try:
            watch.recv()
        except (EOFError, OSError):
            pass
        os._exit(0)

    threading.Thread(target=watch_parent, name="parent-watch", daemon=True).start()
    if runtime_dir:
        writer = SnapshotWriter(_SERVED, Path(runtime_dir))
        threading.Thread(target=writer.run, name="status-writer", daemon=True).start()


class AuthkeyError(Exception):
    """The authkey file holds no usable key (empty, short, not hex)."""


def _valid_key(data: bytes) -> bytes | None:
    key = data.strip()
    if len(key) == 2 * _AUTHKEY_BYTES and set(key) <= _HEX:
        return key
    return None


def _own_authkey(path: Path) -> tuple[bytes | None, str]:
    """The key in ``path`` if the daemon can trust it, else None and why not.

    Trusted: a regular file (not followed if a link), the service user's,
    mode 0600, holding 64 hex digits. Anything else (an empty file left by a
    start that ran out of space, a file another user could have read or
    written) is replaced.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return None, "missing"
    except OSError as exc:
        return None, f"cannot be opened: {exc.strerror}"
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return None, "not a regular file"
        if st.st_uid != os.geteuid():
            return None, f"owned by uid {st.st_uid}, not {os.geteuid()}"
        if stat.S_IMODE(st.st_mode) != 0o600:
            return None, f"mode {stat.S_IMODE(st.st_mode):04o}, not 0600"
        data = os.read(fd, 4096)
    finally:
        os.close(fd)
    key = _valid_key(data)
    return (key, "") if key else (None, f"holds no key ({len(data)} bytes, want {2 * _AUTHKEY_BYTES} hex digits)")


def _write_authkey(runtime_dir: Path, key: bytes) -> None:
    """Write the key whole: a temporary file, written, fsync'd, renamed in, the directory fsync'd."""
    tmp = runtime_dir / f".{AUTHKEY_NAME}.{os.getpid()}.tmp"
    try:
        tmp.unlink()  # left by a start that failed; ours (never followed)
    except FileNotFoundError:
        pass
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        write_all(fd, key)
        os.fsync(fd)
        os.close(fd)
        fd = -1
        os.rename(tmp, runtime_dir / AUTHKEY_NAME)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    dir_fd = os.open(runtime_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fsync_dir(dir_fd)
    finally:
        os.close(dir_fd)


def ensure_authkey(runtime_dir: Path) -> bytes:
    """The Manager's authkey: the one in the file if it can be trusted, else a new one written whole.

    Never empty. Raises SpoolError (ExitCode.SPOOL_ERROR) when a new key cannot be written.
    """
    path = runtime_dir / AUTHKEY_NAME
    key, why = _own_authkey(path)
    if key is not None:
        return key
    if why != "missing":
        from ipspool.logs import get_logger

        get_logger().warning("stats.authkey_replaced", path=str(path), reason=why)
    key = os.urandom(_AUTHKEY_BYTES).hex().encode()
    try:
        _write_authkey(runtime_dir, key)
    except OSError as exc:
        raise SpoolError(f"spool.runtime_dir: {path}: cannot write the stats authkey: "
                         f"{exc.strerror or exc}") from None
    return key


def read_authkey(runtime_dir: Path) -> bytes:
    """The key a client (``ipspool status``) presents; AuthkeyError if the file holds none."""
    path = runtime_dir / AUTHKEY_NAME
    with open(path, "rb") as handle:
        data = handle.read(4096)
    key = _valid_key(data)
    if key is None:
        raise AuthkeyError(f"{path} holds no valid key ({len(data)} bytes); restart the daemon to replace it")
    return key


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
    manager.start(_serve_init, (title, level, keep, log_file, str(runtime_dir)))
    keep.close()
    return manager, watch


class StatsConnection:
    """One connection to the Manager's Stats object; each request bounded by the socket timeout."""

    def __init__(self, conn: connection.Connection, ident: str) -> None:
        self._conn = conn
        self._ident = ident

    @classmethod
    def open(cls, address: str, authkey: bytes, timeout: float = CALL_TIMEOUT) -> StatsConnection:
        """Find the Stats object (a "create" request), then hold a connection it serves."""
        with _bounded_client(address, authkey, timeout) as conn:
            # The Manager counts a reference for this and is never told to
            # drop it: the Stats object lives as long as the Manager anyway.
            ident, _ = _dispatch(conn, (None, "create", ("stats",), {}))
        conn = _bounded_client(address, authkey, timeout)
        try:
            _dispatch(conn, (None, "accept_connection", ("stats-client",), {}))
        except BaseException:
            conn.close()
            raise
        return cls(conn, ident)

    def request(self, method: str, *args: Any) -> Any:
        return _dispatch(self._conn, (self._ident, method, args, {}))

    def snapshot(self) -> dict[str, Any]:
        return self.request("snapshot")  # type: ignore[no-any-return]

    def close(self) -> None:
        self._conn.close()


def _dispatch(conn: connection.Connection, message: tuple[Any, ...]) -> Any:
    """Send one request, return its result (multiprocessing.managers.dispatch, with our errors)."""
    conn.send(message)
    kind, result = conn.recv()
    if kind == "#RETURN":
        return result
    if kind == "#ERROR" and isinstance(result, BaseException):
        raise result
    raise RuntimeError(f"the stats Manager failed a request ({kind}): {result}")


class StatsClient:
    """A connection to a running Manager, reconnecting when it comes back.

    A call that fails (the Manager gone, stopped or too slow: each step of the
    exchange waits at most ``timeout``) drops the connection and returns
    None; calls in the next second (doubling to 8 s while failures go on)
    return None at once, so a stopped Manager costs the caller at most one
    timeout per retry.
    """

    def __init__(self, runtime_dir: Path, authkey: bytes | None = None, timeout: float = CALL_TIMEOUT) -> None:
        self.address = str(runtime_dir / SOCKET_NAME)
        self.runtime_dir = runtime_dir
        self.timeout = timeout
        self._authkey = authkey
        self._conn: StatsConnection | None = None
        self._next_try = 0.0
        self._delay = _RETRY_FIRST

    def connect(self) -> StatsConnection:
        if self._authkey is not None and not self._authkey:
            raise AuthkeyError("an empty authkey is never used")
        authkey = self._authkey if self._authkey is not None else read_authkey(self.runtime_dir)
        self.close()
        self._conn = StatsConnection.open(self.address, authkey, self.timeout)
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def call(self, method: str, *args: Any) -> Any:
        """Call a Stats method; on failure drop the connection and retry later."""
        if self._conn is None:
            if time.monotonic() < self._next_try:
                return None
            try:
                self.connect()
            except (OSError, EOFError, AuthenticationError, AuthkeyError) as exc:
                self._failed("connect", exc)
                return None
        assert self._conn is not None
        try:
            result = self._conn.request(method, *args)
        except (OSError, EOFError) as exc:  # BlockingIOError on a timeout
            self._failed(method, exc)
            return None
        self._delay = _RETRY_FIRST
        return result

    def _failed(self, step: str, exc: BaseException) -> None:
        from ipspool.logs import get_logger

        self.close()
        self._next_try = time.monotonic() + self._delay
        get_logger().debug("stats.call_failed", step=step, error=str(exc) or type(exc).__name__,
                           retry_in=self._delay)
        self._delay = min(self._delay * 2, _RETRY_MAX)
