"""The rdns engine: many DNS questions in flight from one thread.

Each worker process has one ``Engine`` (one per rdns stage), started on first
use: a thread that owns a few non-blocking UDP sockets per nameserver and an
epoll loop. Callers on any thread hand it questions with ``resolve`` and wait
for the answers of the whole batch at once; the engine keeps up to
``max_in_flight`` queries outstanding, sends at most ``rate_limit`` queries a
second to each nameserver (a token bucket), and gives each lookup the
semantics of the blocking resolver it replaces: servers are asked one after
another (starting at a different one for each lookup, which spreads the load),
an answer ends the lookup, SERVFAIL or an error moves on for good, a timeout
moves on and is retried in the next of ``retries + 1`` rounds.

Safety: each socket is connected to its nameserver (the kernel drops
datagrams from anywhere else) and bound to a port the kernel picks at random;
each query gets an unpredictable id, unique among that socket's outstanding
queries; a reply is accepted only if its id and question match
(``dnswire.parse_reply``), otherwise it is ignored and the wait goes on. A
truncated reply is asked again over TCP (on a small thread pool: it is rare).
Concurrent lookups of the same question share one query (coalescing).
"""

from __future__ import annotations

import array
import os
import select
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Final

from ipspool.stages import dnswire

__all__ = ["Answer", "Engine", "Server"]

OK: Final = "ok"
NXDOMAIN: Final = "nxdomain"
TIMEOUT: Final = "timeout"
SERVFAIL: Final = "servfail"
ERROR: Final = "error"

_SOCKETS_PER_SERVER: Final = 4
_RECV_BURST: Final = 512
_TCP_THREADS: Final = 4
_BEAT_EVERY: Final = 1.0  # seconds between progress reports of a waiting resolve()


@dataclass(frozen=True, slots=True)
class Server:
    address: str
    port: int


@dataclass(frozen=True, slots=True)
class Answer:
    """How one question ended: a status, the values found, and how long it may be kept."""

    status: str
    values: tuple[str, ...] = ()
    # ok: the smallest TTL of the chain; nxdomain: min(SOA TTL, SOA MINIMUM),
    # None without an SOA; failures: None.
    ttl: float | None = None


class _Batch:
    """The answers one ``resolve`` call waits for; filled by the engine thread only."""

    __slots__ = ("answers", "done", "left")

    def __init__(self, size: int) -> None:
        self.answers: list[Answer | None] = [None] * size
        self.left = size
        self.done = threading.Event()

    def put(self, slot: int, answer: Answer) -> None:
        self.answers[slot] = answer
        self.left -= 1
        if self.left == 0:
            self.done.set()


Waiter = tuple[_Batch, int]


@dataclass(eq=False, slots=True)
class _Lookup:
    question: bytes
    waiters: list[Waiter]
    servers: list[int]
    rounds_left: int
    index: int = 0
    timed_out: list[int] = field(default_factory=list)
    failures: set[str] = field(default_factory=set)
    server: int = -1
    wire: bytes = b""  # the query after its id: flags, counts, question


class _Bucket:
    """A token bucket: ``rate`` tokens a second, at most ``burst`` saved up; rate 0: unlimited."""

    __slots__ = ("burst", "last", "rate", "tokens")

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.burst = max(1.0, rate / 50) if rate else 0.0
        self.tokens = self.burst
        self.last = time.monotonic()

    def take(self, now: float) -> bool:
        if not self.rate:
            return True
        if self.tokens < 1.0:
            self.tokens = min(self.burst, self.tokens + (now - self.last) * self.rate)
            self.last = now
            if self.tokens < 1.0:
                return False
        self.tokens -= 1.0
        return True

    def wait(self, now: float) -> float:
        """Seconds until a token is due."""
        if not self.rate:
            return 0.0
        missing = 1.0 - min(self.burst, self.tokens + (now - self.last) * self.rate)
        return max(0.0, missing / self.rate)


class _Ids:
    """Unpredictable 16-bit query ids, read from the kernel's CSPRNG in bulk."""

    def __init__(self) -> None:
        self._ids: list[int] = []

    def next(self) -> int:
        if not self._ids:
            self._ids = list(array.array("H", os.urandom(8192)))
        return self._ids.pop()


class Engine:
    """Resolve questions concurrently; thread-safe ``resolve`` and ``submit``."""

    def __init__(
        self,
        servers: Sequence[Server],
        timeout: float,
        retries: int,
        max_in_flight: int,
        rate_limit: float,
    ) -> None:
        self.servers = tuple(servers)
        self.timeout = timeout
        self.rounds = retries + 1
        self.max_in_flight = max_in_flight
        self.rate_limit = rate_limit
        self.sent = 0          # queries sent (UDP and TCP), read by the stats
        self.coalesced = 0     # questions that joined a lookup already in flight
        self.finished = 0      # lookups ended (answered, failed or timed out)
        self._inbox: deque[tuple[bytes, _Batch, int]] = deque()
        self._finished: deque[tuple[_Lookup, int, dnswire.Reply | None, str]] = deque()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._wake_fd = -1
        self._rotation = 0

    # -- the callers' side ---------------------------------------------------

    def resolve(self, questions: Sequence[bytes], beat: Callable[[], None] | None = None) -> list[Answer]:
        """Answers to every question (``dnswire.question_bytes``), in order; blocks.

        While it waits, ``beat`` is called every second in which the engine
        sent or finished something: a batch held up by the rate limit is
        progress, an engine that stopped moving is not.
        """
        if not questions:
            return []
        batch = _Batch(len(questions))
        self._inbox.extend((question, batch, slot) for slot, question in enumerate(questions))
        self._wake()
        moved = self.sent + self.finished
        while not batch.done.wait(_BEAT_EVERY):
            now_moved = self.sent + self.finished
            thread = self._thread
            if beat is not None and now_moved != moved and thread is not None and thread.is_alive():
                beat()
            moved = now_moved
        return [answer if answer is not None else Answer(ERROR) for answer in batch.answers]

    def _wake(self) -> None:
        self._start()
        try:
            os.eventfd_write(self._wake_fd, 1)
        except OSError:
            pass  # closed while stopping

    def _start(self) -> None:
        if self._thread is not None:
            return
        with self._lock:
            if self._thread is None:
                self._wake_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
                thread = threading.Thread(target=self._run, name="rdns-engine", daemon=True)
                thread.start()
                self._thread = thread

    def close(self) -> None:
        with self._lock:
            thread, self._thread = self._thread, None
            if thread is None:
                return
            self._stopping = True
            os.eventfd_write(self._wake_fd, 1)
        thread.join(10)
        os.close(self._wake_fd)

    # -- the engine thread -----------------------------------------------------

    def _run(self) -> None:
        loop = _Loop(self)
        try:
            loop.run()
        finally:
            loop.close()


def _open(server: Server) -> list[socket.socket]:
    family = socket.AF_INET6 if ":" in server.address else socket.AF_INET
    opened = []
    for _ in range(_SOCKETS_PER_SERVER):
        sock = socket.socket(family, socket.SOCK_DGRAM)
        sock.setblocking(False)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        except OSError:
            pass
        # Unbound: connect() binds it to a port the kernel picks at random
        # from the ephemeral range, and makes the kernel drop datagrams from
        # any other address or port.
        sock.connect((server.address, server.port))
        opened.append(sock)
    return opened


class _Loop:
    """The engine thread's state and its steps; only that thread touches it."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.servers = engine.servers
        self.timeout = engine.timeout
        self.epoll = select.epoll()
        self.epoll.register(engine._wake_fd, select.EPOLLIN)
        self.sockets = [_open(server) for server in self.servers]
        self.by_fd: dict[int, tuple[socket.socket, int]] = {}
        for index, group in enumerate(self.sockets):
            for sock in group:
                self.by_fd[sock.fileno()] = (sock, index)
                self.epoll.register(sock.fileno(), select.EPOLLIN)
        self.buckets = [_Bucket(engine.rate_limit) for _ in self.servers]
        self.queues: list[deque[_Lookup]] = [deque() for _ in self.servers]
        self.next_socket = [0] * len(self.servers)
        self.inflight: dict[bytes, _Lookup] = {}
        # (fd << 16 | query id) -> (lookup, attempt serial)
        self.pending: dict[int, tuple[_Lookup, int]] = {}
        # (deadline, key, serial) in send order: with one timeout, also deadline order
        self.deadlines: deque[tuple[float, int, int]] = deque()
        self.tcp_pool = ThreadPoolExecutor(_TCP_THREADS, thread_name_prefix="rdns-tcp")
        self.tcp_active = 0
        self.serial = 0
        self.ids = _Ids()

    def run(self) -> None:
        engine = self.engine
        while True:
            self.take_questions()
            self.take_tcp_results()
            now = time.monotonic()
            wait = self.send(now)
            if self.deadlines:
                due = max(0.0, self.deadlines[0][0] - now)
                wait = due if wait < 0 else min(wait, due)
            if engine._stopping:
                return
            if engine._inbox or engine._finished:
                wait = 0.0
            for fd, _ in self.epoll.poll(wait):
                if fd == engine._wake_fd:
                    try:
                        os.eventfd_read(engine._wake_fd)
                    except BlockingIOError:
                        pass
                else:
                    self.receive(fd)
            self.expire(time.monotonic())

    def take_questions(self) -> None:
        inbox = self.engine._inbox
        count = len(self.servers)
        while inbox:
            question, batch, slot = inbox.popleft()
            lookup = self.inflight.get(question)
            if lookup is not None:
                lookup.waiters.append((batch, slot))  # coalesced: one query for all who ask
                self.engine.coalesced += 1
                continue
            if count == 1:
                order = [0]
            else:
                start = self.engine._rotation % count
                self.engine._rotation += 1
                order = [(start + i) % count for i in range(count)]
            lookup = _Lookup(question, [(batch, slot)], order, self.engine.rounds)
            lookup.wire = dnswire.query_bytes(0, question)[2:]
            self.inflight[question] = lookup
            self.advance(lookup)

    def take_tcp_results(self) -> None:
        finished = self.engine._finished
        while finished:
            lookup, server, reply, failure = finished.popleft()
            self.tcp_active -= 1
            if reply is None and failure == TIMEOUT:
                lookup.timed_out.append(server)
                self.advance(lookup)
            else:
                self.answered(lookup, reply, failure)

    def send(self, now: float) -> float:
        """Send what the cap and the buckets allow; seconds until more may go (-1: no limit waits)."""
        wait = -1.0
        room = self.engine.max_in_flight - len(self.pending) - self.tcp_active
        for index, queue in enumerate(self.queues):
            bucket = self.buckets[index]
            group = self.sockets[index]
            while queue and room > 0:
                if not bucket.take(now):
                    due = bucket.wait(now)
                    wait = due if wait < 0 else min(wait, due)
                    break
                lookup = queue.popleft()
                sock = group[self.next_socket[index] % len(group)]
                self.next_socket[index] += 1
                fd = sock.fileno()
                qid = self.ids.next()
                while (fd << 16 | qid) in self.pending:
                    qid = self.ids.next()
                try:
                    sock.send(qid.to_bytes(2, "big") + lookup.wire)
                except BlockingIOError:
                    queue.appendleft(lookup)
                    bucket.tokens += 1.0
                    wait = 0.001 if wait < 0 else min(wait, 0.001)
                    break
                except OSError:
                    # Refused (an ICMP error from an earlier send) or unreachable.
                    self.answered(lookup, None, ERROR)
                    continue
                self.serial += 1
                self.engine.sent += 1
                key = fd << 16 | qid
                self.pending[key] = (lookup, self.serial)
                self.deadlines.append((now + self.timeout, key, self.serial))
                room -= 1
        return wait

    def receive(self, fd: int) -> None:
        sock, index = self.by_fd[fd]
        pending = self.pending
        for _ in range(_RECV_BURST):
            try:
                data = sock.recv(65535)
            except BlockingIOError:
                return
            except OSError:
                continue  # an ICMP error for some earlier query: its timeout will tell
            if len(data) < 2:
                continue
            key = fd << 16 | (data[0] << 8 | data[1])
            entry = pending.get(key)
            if entry is None:
                continue  # late, duplicated or forged: not for any query we wait on
            lookup = entry[0]
            try:
                reply = dnswire.parse_reply(data, key & 0xFFFF, lookup.question)
            except dnswire.WireError:
                del pending[key]
                self.answered(lookup, None, ERROR)
                continue
            if reply is None:
                continue  # our id, someone else's question: ignored, the wait goes on
            del pending[key]
            if reply.truncated:
                self.over_tcp(lookup, index)
            else:
                self.answered(lookup, reply, ERROR)

    def expire(self, now: float) -> None:
        deadlines = self.deadlines
        while deadlines and deadlines[0][0] <= now:
            _, key, attempt = deadlines.popleft()
            entry = self.pending.get(key)
            if entry is None or entry[1] != attempt:
                continue
            del self.pending[key]
            lookup = entry[0]
            lookup.timed_out.append(lookup.server)
            self.advance(lookup)

    def finish(self, lookup: _Lookup, answer: Answer) -> None:
        del self.inflight[lookup.question]
        self.engine.finished += 1
        for batch, slot in lookup.waiters:
            batch.put(slot, answer)

    def advance(self, lookup: _Lookup) -> None:
        """Queue the lookup for its next server, start its next round, or end it."""
        while True:
            if lookup.index < len(lookup.servers):
                lookup.server = lookup.servers[lookup.index]
                lookup.index += 1
                self.queues[lookup.server].append(lookup)
                return
            lookup.rounds_left -= 1
            if lookup.rounds_left > 0 and lookup.timed_out:
                lookup.servers, lookup.timed_out, lookup.index = lookup.timed_out, [], 0
                continue
            # SERVFAIL says the most about where to look, a timeout the least.
            for status in (SERVFAIL, ERROR):
                if status in lookup.failures:
                    self.finish(lookup, Answer(status))
                    return
            self.finish(lookup, Answer(TIMEOUT))
            return

    def answered(self, lookup: _Lookup, reply: dnswire.Reply | None, failure: str) -> None:
        if reply is None:
            lookup.failures.add(failure)
            self.advance(lookup)
        elif reply.rcode == dnswire.SERVFAIL:
            lookup.failures.add(SERVFAIL)
            self.advance(lookup)
        elif reply.rcode == dnswire.NXDOMAIN or (reply.rcode == dnswire.NOERROR and not reply.values):
            self.finish(lookup, Answer(NXDOMAIN, (), reply.negative_ttl))
        elif reply.rcode != dnswire.NOERROR:
            lookup.failures.add(ERROR)
            self.advance(lookup)
        else:
            self.finish(lookup, Answer(OK, reply.values, reply.ttl))

    def over_tcp(self, lookup: _Lookup, server: int) -> None:
        self.tcp_active += 1
        self.engine.sent += 1
        self.tcp_pool.submit(self._tcp, lookup, server, self.ids.next())

    def _tcp(self, lookup: _Lookup, server: int, qid: int) -> None:
        """On a TCP thread: ask, and hand the outcome back to the loop."""
        result: tuple[_Lookup, int, dnswire.Reply | None, str]
        try:
            reply = _tcp_query(self.servers[server], lookup.question, self.timeout, qid)
            result = (lookup, server, reply, ERROR if reply is not None else TIMEOUT)
        except (dnswire.WireError, OSError):
            result = (lookup, server, None, ERROR)
        self.engine._finished.append(result)
        try:
            os.eventfd_write(self.engine._wake_fd, 1)
        except OSError:
            pass

    def close(self) -> None:
        self.tcp_pool.shutdown(wait=True, cancel_futures=True)
        for group in self.sockets:
            for sock in group:
                sock.close()
        self.epoll.close()
        for lookup in list(self.inflight.values()):
            self.finish(lookup, Answer(ERROR))
        inbox = self.engine._inbox
        while inbox:
            _, batch, slot = inbox.popleft()
            batch.put(slot, Answer(ERROR))


def _recv_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionResetError("closed before a whole reply")
        data += chunk
    return data


def _tcp_query(server: Server, question: bytes, timeout: float, qid: int) -> dnswire.Reply | None:
    """The question over TCP (RFC 7766); None when it timed out."""
    query = dnswire.query_bytes(qid, question)
    deadline = time.monotonic() + timeout
    try:
        with socket.create_connection((server.address, server.port), timeout=timeout) as sock:
            sock.sendall(len(query).to_bytes(2, "big") + query)
            while True:
                sock.settimeout(max(0.001, deadline - time.monotonic()))
                size = int.from_bytes(_recv_exactly(sock, 2), "big")
                data = _recv_exactly(sock, size)
                reply = dnswire.parse_reply(data, qid, question)
                if reply is not None:
                    return reply
                # Not ours (cannot happen on a connection of our own): keep reading.
    except TimeoutError:
        return None
