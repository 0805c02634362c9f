"""A nameserver on loopback that answers after a set delay: ``SlowDns``.

UDP and TCP on 127.0.0.1 and one free port. Every PTR answer is derived from
the address asked about (``expected_ptr``), so a test or benchmark can check
every record of a large file without a zone; A and AAAA questions for those
names answer the address back (forward confirmation). Replies wait ``delay``
seconds (a FIFO: the delay is the same for all), as a far-away server would.

Modes (``mode=``): ``ptr`` (the default), ``nxdomain`` (NXDOMAIN with an SOA
whose MINIMUM is ``negative_minimum``), ``nodata``, ``servfail``, ``refused``,
``silent`` (never answers), ``truncate`` (UDP replies are empty and
truncated, TCP gives the answer), ``spoof`` (each query first gets, at once,
a reply with the wrong id and one with the right id for another question, both
naming ``evil.example.test``; then, after the delay, the real answer) and
``spoof_only`` (the two forged replies, never the real one).

It counts queries (``count``, ``tcp_count``, ``names``) and keeps their
arrival times, so ``max_qps(window)`` tells the busiest second.

Written by hand on raw sockets, so that one thread answers tens of thousands
of queries a second: the benchmark runs it as ``python -m tests.support.slow_dns``.
"""

from __future__ import annotations

import argparse
import ipaddress
import select
import socket
import struct
import sys
import threading
import time
from collections import Counter, deque
from types import TracebackType

__all__ = ["SlowDns", "expected_ptr", "main"]

LOOPBACK = "127.0.0.1"
TTL = 3600
MODES = ("ptr", "nxdomain", "nodata", "servfail", "refused", "silent", "truncate", "spoof", "spoof_only")
_HEADER = struct.Struct("!HHHHHH")
_A, _PTR, _AAAA, _SOA = 1, 12, 28, 6


def expected_ptr(ip: str) -> str:
    """The PTR name SlowDns gives an address."""
    address = ipaddress.ip_address(ip)
    if address.version == 4:
        return "host-" + str(address).replace(".", "-") + ".example.test"
    return "host-" + address.packed.hex() + ".example.test"


def _encode(name: str) -> bytes:
    return b"".join(bytes([len(label)]) + label.encode() for label in name.split(".")) + b"\0"


_EXAMPLE_TEST = b"\x07example\x04test\x00"


def _labels(data: bytes, at: int) -> tuple[list[bytes], int]:
    labels = []
    while True:
        length = data[at]
        if length == 0:
            return labels, at + 1
        labels.append(data[at + 1:at + 1 + length])
        at += 1 + length


def _ptr_for(labels: list[bytes]) -> bytes | None:
    """The wire-form PTR target for a reverse name's labels."""
    if len(labels) == 6 and labels[5].lower() == b"arpa" and labels[4].lower() == b"in-addr":
        host = b"host-" + b"-".join((labels[3], labels[2], labels[1], labels[0]))
        return bytes([len(host)]) + host + _EXAMPLE_TEST
    lowered = [label.lower() for label in labels]
    if lowered[-2:] == [b"ip6", b"arpa"] and len(lowered) == 34:
        nibbles = "".join(label.decode() for label in reversed(lowered[:32]))
        return _encode(expected_ptr(str(ipaddress.IPv6Address(int(nibbles, 16)))))
    return None


def _address_for(labels: list[bytes], rdtype: int) -> bytes | None:
    """The address a host-... name stands for, packed, if it is of the asked type."""
    if len(labels) != 3 or not labels[0].lower().startswith(b"host-"):
        return None
    body = labels[0][5:].decode()
    if rdtype == _A and body.count("-") == 3:
        return socket.inet_aton(body.replace("-", "."))
    if rdtype == _AAAA and len(body) == 32:
        return bytes.fromhex(body)
    return None


class SlowDns:
    """The server thread (or ``serve_forever`` in a process of its own)."""

    def __init__(self, delay: float = 0.0, mode: str = "ptr", negative_minimum: int = 60,
                 port: int = 0, keep: bool = True) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}")
        self.delay = delay
        self.mode = mode
        self.negative_minimum = negative_minimum
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.udp.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self.udp.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
        self.udp.bind((LOOPBACK, port))
        self.port: int = self.udp.getsockname()[1]
        self.tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.tcp.bind((LOOPBACK, self.port))
        self.tcp.listen(64)
        self.udp.setblocking(False)
        self.tcp.setblocking(False)
        self.keep = keep  # names and arrival times, for tests; a benchmark's server keeps counts only
        self.count = 0
        self.tcp_count = 0
        self.names: Counter[str] = Counter()
        self.arrivals: list[float] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self.serve_forever, name="slow-dns", daemon=True)

    @property
    def nameserver(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    # -- answers ---------------------------------------------------------------

    def _record(self, labels: list[bytes]) -> None:
        with self._lock:
            self.count += 1
            if self.keep:
                self.names[b".".join(labels).decode(errors="replace").lower()] += 1
                self.arrivals.append(time.monotonic())

    def answer(self, query: bytes, tcp: bool = False) -> list[bytes]:  # noqa: PLR0911
        """The datagrams to send for ``query``, the real reply last ([] for none)."""
        if len(query) < 17:
            return []
        qid = query[0] << 8 | query[1]
        labels, end = _labels(query, 12)
        question = query[12:end + 4]
        rdtype = query[end] << 8 | query[end + 1]
        self._record(labels)
        mode = self.mode
        if mode == "silent":
            return []
        forged = []
        if mode in ("spoof", "spoof_only"):
            evil = _encode("evil.example.test")
            rr = b"\xc0\x0c" + struct.pack("!HHIH", _PTR, 1, TTL, len(evil)) + evil
            forged.append(_HEADER.pack(qid ^ 0x5A5A, 0x8180, 1, 1, 0, 0) + question + rr)
            other = _encode("9.9.9.9.in-addr.arpa") + struct.pack("!HH", _PTR, 1)
            forged.append(_HEADER.pack(qid, 0x8180, 1, 1, 0, 0) + other + rr)
            if mode == "spoof_only":
                return forged
        if mode == "servfail":
            return [_HEADER.pack(qid, 0x8182, 1, 0, 0, 0) + question]
        if mode == "refused":
            return [_HEADER.pack(qid, 0x8185, 1, 0, 0, 0) + question]
        if mode == "truncate" and not tcp:
            return [_HEADER.pack(qid, 0x8380, 1, 0, 0, 0) + question]
        if mode in ("nxdomain", "nodata"):
            soa = (_encode("ns.example.test") + _encode("admin.example.test")
                   + struct.pack("!IIIII", 1, 7200, 900, 86400, self.negative_minimum))
            rr = _encode("example.test") + struct.pack("!HHIH", _SOA, 1, 3600, len(soa)) + soa
            rcode = 3 if mode == "nxdomain" else 0
            return [_HEADER.pack(qid, 0x8180 | rcode, 1, 0, 1, 0) + question + rr]
        if rdtype == _PTR:
            data = _ptr_for(labels)
        elif rdtype in (_A, _AAAA):
            data = _address_for(labels, rdtype)
        else:
            data = None
        if data is None:
            return [*forged, _HEADER.pack(qid, 0x8183, 1, 0, 0, 0) + question]
        rr = b"\xc0\x0c" + struct.pack("!HHIH", rdtype, 1, TTL, len(data)) + data
        return [*forged, _HEADER.pack(qid, 0x8180, 1, 1, 0, 0) + question + rr]

    # -- serving ---------------------------------------------------------------

    def serve_forever(self) -> None:
        poller = select.epoll()
        poller.register(self.udp.fileno(), select.EPOLLIN)
        poller.register(self.tcp.fileno(), select.EPOLLIN)
        due: deque[tuple[float, bytes, tuple[str, int]]] = deque()
        udp = self.udp
        delay = self.delay
        try:
            while not self._stop.is_set():
                wait = 0.05
                if due:
                    wait = max(0.0, min(wait, due[0][0] - time.monotonic()))
                for fd, _ in poller.poll(wait):
                    if fd == self.tcp.fileno():
                        self._accept()
                        continue
                    for _ in range(1024):
                        try:
                            query, peer = udp.recvfrom(4096)
                        except BlockingIOError:
                            break
                        datagrams = self.answer(query)
                        if not datagrams:
                            continue
                        *forged, real = datagrams
                        for datagram in forged:
                            udp.sendto(datagram, peer)
                        if self.mode == "spoof_only":
                            continue
                        due.append((time.monotonic() + delay, real, peer))
                now = time.monotonic()
                while due and due[0][0] <= now:
                    _, datagram, peer = due.popleft()
                    try:
                        udp.sendto(datagram, peer)
                    except OSError:
                        pass
        finally:
            poller.close()

    def _accept(self) -> None:
        try:
            conn, _ = self.tcp.accept()
        except BlockingIOError:
            return
        threading.Thread(target=self._serve_tcp, args=(conn,), daemon=True).start()

    def _serve_tcp(self, conn: socket.socket) -> None:
        conn.setblocking(True)
        conn.settimeout(5)
        with conn:
            try:
                size = int.from_bytes(conn.recv(2), "big")
                query = b""
                while len(query) < size:
                    part = conn.recv(size - len(query))
                    if not part:
                        return
                    query += part
                with self._lock:
                    self.tcp_count += 1
                datagrams = self.answer(query, tcp=True)
                time.sleep(self.delay)
                if datagrams and self.mode != "spoof_only":
                    conn.sendall(len(datagrams[-1]).to_bytes(2, "big") + datagrams[-1])
            except OSError:
                return

    # -- measuring -------------------------------------------------------------

    def max_qps(self, window: float = 1.0) -> int:
        """The most queries that arrived within any ``window`` seconds."""
        with self._lock:
            times = list(self.arrivals)
        best = 0
        first = 0
        for last, at in enumerate(times):
            while at - times[first] >= window:
                first += 1
            best = max(best, last - first + 1)
        return best

    def __enter__(self) -> SlowDns:
        self._thread.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        self._thread.join(5)
        self.udp.close()
        self.tcp.close()


def main(argv: list[str] | None = None) -> int:
    """``python -m tests.support.slow_dns --delay 0.01``: serve until killed; prints the port."""
    parser = argparse.ArgumentParser(prog="python -m tests.support.slow_dns")
    parser.add_argument("--delay", type=float, default=0.01, help="seconds before each answer")
    parser.add_argument("--mode", choices=MODES, default="ptr")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    server = SlowDns(args.delay, args.mode, port=args.port, keep=False)
    print(server.port, flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
