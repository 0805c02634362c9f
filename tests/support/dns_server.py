"""DNS servers on loopback for the rdns tests: real dnsmasq and tiny fakes.

``Dnsmasq`` runs Debian's dnsmasq (package dnsmasq-base) on 127.0.0.1 and a
free port, serving only records the test wrote into its configuration file:
no upstream servers, no /etc/hosts, and every domain ``local`` so a name it
does not know is answered NXDOMAIN instead of being forwarded anywhere.

``Responder`` is a UDP server thread that answers through a handler built
with dnspython's message API: SERVFAIL, REFUSED, garbage, an SOA in a
negative answer, or (handler returning None) nothing at all, which is how a
server that never answers is played.
"""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType

import dns.exception
import dns.message
import dns.query
import dns.rcode
import dns.rrset

__all__ = [
    "DNSMASQ_MISSING",
    "Dnsmasq",
    "Responder",
    "dnsmasq_binary",
    "reply",
]

DNSMASQ_MISSING = (
    "dnsmasq is not installed (apt-get install dnsmasq-base); the rdns tests need "
    "a real DNS server on loopback"
)
LOOPBACK = "127.0.0.1"

Handler = Callable[[dns.message.Message], dns.message.Message | bytes | None]


def dnsmasq_binary() -> str | None:
    """The dnsmasq executable; /usr/sbin is not on a normal user's PATH."""
    return shutil.which("dnsmasq") or shutil.which("dnsmasq", path="/usr/sbin:/sbin")


def _free_port() -> int:
    """A port free for both UDP and TCP on loopback (dnsmasq binds both)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind((LOOPBACK, 0))
            port: int = udp.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
                try:
                    tcp.bind((LOOPBACK, port))
                except OSError:
                    continue
                return port
    raise RuntimeError("no free loopback port for both UDP and TCP")


class Dnsmasq:
    """dnsmasq in the foreground, answering only from ``records``.

    ``records`` are dnsmasq configuration lines such as
    ``host-record=host.test,192.0.2.1`` or
    ``ptr-record=2.2.0.192.in-addr.arpa,other.test``.
    """

    def __init__(self, directory: Path, records: Sequence[str], ttl: int = 300) -> None:
        binary = dnsmasq_binary()
        if binary is None:
            raise FileNotFoundError(DNSMASQ_MISSING)
        self.binary = binary
        self.directory = directory
        self.records = tuple(records)
        self.ttl = ttl
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None

    def _write_config(self) -> Path:
        user = pwd.getpwuid(os.getuid()).pw_name
        group = grp.getgrgid(os.getgid()).gr_name
        lines = [
            f"port={self.port}",
            f"listen-address={LOOPBACK}",
            "bind-interfaces",
            # Never forward: no resolv.conf, no server= lines, and every
            # domain answered from local data only ("#" matches all).
            "no-resolv",
            "no-poll",
            "local=/#/",
            "no-hosts",
            f"local-ttl={self.ttl}",
            # Stay the invoking user: when run as root dnsmasq would switch to
            # "nobody", which cannot read pytest's private temporary dirs.
            f"user={user}",
            f"group={group}",
            "pid-file=",
            "log-facility=-",
            "log-queries",
            *self.records,
        ]
        path = self.directory / "dnsmasq.conf"
        path.write_text("\n".join(lines) + "\n")
        return path

    def start(self) -> Dnsmasq:
        for _ in range(3):
            self.port = _free_port()
            config = self._write_config()
            log = (self.directory / "dnsmasq.log").open("wb")
            self.process = subprocess.Popen(
                [self.binary, "--no-daemon", f"--conf-file={config}"],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            log.close()
            if self._wait_ready():
                return self
            self.stop()  # lost the port to a race, most likely: try another
        raise RuntimeError(f"dnsmasq did not start: {self.log()}")

    def _wait_ready(self, deadline: float = 10.0) -> bool:
        """Ask until it answers: there is no readiness signal to wait on."""
        assert self.process is not None
        query = dns.message.make_query("ready.probe.", "A")
        give_up = time.monotonic() + deadline
        while time.monotonic() < give_up:
            if self.process.poll() is not None:
                return False
            try:
                dns.query.udp(query, LOOPBACK, port=self.port, timeout=0.1)
            except (dns.exception.Timeout, OSError):
                continue
            return True
        return False

    def log(self) -> str:
        path = self.directory / "dnsmasq.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    @property
    def nameserver(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    def __enter__(self) -> Dnsmasq:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def reply(
    query: dns.message.Message,
    rcode: dns.rcode.Rcode = dns.rcode.NOERROR,
    answer: Sequence[str] = (),
    authority: Sequence[str] = (),
) -> dns.message.Message:
    """A response to ``query``; records as zone-file text "name ttl IN type data"."""
    response = dns.message.make_response(query)
    response.set_rcode(rcode)
    for text in answer:
        response.answer.append(_rrset(text))
    for text in authority:
        response.authority.append(_rrset(text))
    return response


def _rrset(text: str) -> dns.rrset.RRset:
    name, ttl, rdclass, rdtype, *data = text.split()
    return dns.rrset.from_text(name, int(ttl), rdclass, rdtype, " ".join(data))


class Responder:
    """A UDP DNS server thread on loopback; ``handler`` decides each reply."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.queries: list[dns.message.Message] = []
        self._received = threading.Condition()
        self._stop = threading.Event()
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((LOOPBACK, 0))
        self.sock.settimeout(0.05)
        self.port: int = self.sock.getsockname()[1]
        self._thread = threading.Thread(target=self._serve, name="dns-responder", daemon=True)

    @property
    def nameserver(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    @property
    def count(self) -> int:
        with self._received:
            return len(self.queries)

    def wait_count(self, expected: int, timeout: float = 5.0) -> int:
        """The query count once it reaches ``expected`` (or the timeout passes).

        A silent server's last query may still be on its way to this thread
        when the stage gives up waiting for the answer.
        """
        with self._received:
            self._received.wait_for(lambda: len(self.queries) >= expected, timeout)
            return len(self.queries)

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                data, peer = self.sock.recvfrom(65535)
            except TimeoutError:
                continue
            except OSError:
                return  # closed
            try:
                query = dns.message.from_wire(data)
            except dns.exception.DNSException:
                continue
            with self._received:
                self.queries.append(query)
                self._received.notify_all()
            response = self.handler(query)
            if response is None:
                continue
            wire = response if isinstance(response, bytes) else response.to_wire()
            self.sock.sendto(wire, peer)

    def __enter__(self) -> Responder:
        self._thread.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()
