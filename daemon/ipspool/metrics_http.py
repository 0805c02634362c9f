"""The optional /metrics endpoint: the metrics registry over HTTP, without node_exporter.

``[metrics] listen = "HOST:PORT"`` (``[::1]:PORT`` for IPv6) starts it in a
thread of the supervisor, which owns the registry; it serves what the last
snapshot holds, the same numbers the textfile carries. Anyone who can reach
the port can read the counters, so it belongs on loopback or behind a
firewall, and it is bounded against clients that misbehave:

- one request at a time (no thread per client), each with ``TIMEOUT``
  seconds on the socket, so a client that sends nothing holds it that long;
- at most ``MAX_REQUEST_BYTES`` of request line and headers are read; past
  that the answer is 431;
- only ``GET`` (and ``HEAD``) of ``/metrics``; any other path is 404, any
  other method 405; a request body is never read.
"""

from __future__ import annotations

import io
import socket
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest

from ipspool.config import parse_listen

__all__ = ["MAX_REQUEST_BYTES", "TIMEOUT", "MetricsServer"]

TIMEOUT = 5.0             # seconds a client may take over its request
MAX_REQUEST_BYTES = 8192  # request line and headers together
# The text format generate_latest writes; named here because newer
# prometheus_client releases label it 1.0.0, which Prometheus before 3.0
# does not know (our names need none of 1.0.0's escaping: the bytes are the same).
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class _CappedReader:
    """The request's read side, ending after ``limit`` bytes: no request grows past it."""

    def __init__(self, raw: io.BufferedIOBase, limit: int) -> None:
        self.raw = raw
        self.left = limit
        self.exhausted = False

    def readline(self, size: int = -1) -> bytes:
        if self.left <= 0:
            self.exhausted = True
            return b""
        line = self.raw.readline(self.left if size < 0 else min(size, self.left))
        self.left -= len(line)
        if self.left <= 0 and not line.endswith(b"\n"):
            self.exhausted = True
        return line

    def read(self, size: int = -1) -> bytes:
        return b""  # bodies are never read

    def close(self) -> None:
        self.raw.close()


class _Handler(BaseHTTPRequestHandler):
    timeout = TIMEOUT
    server_version = "ipspool"
    sys_version = ""
    registry: CollectorRegistry  # set on the subclass each server makes

    def setup(self) -> None:
        super().setup()
        self.capped = _CappedReader(self.rfile, MAX_REQUEST_BYTES)
        self.rfile = self.capped  # type: ignore[assignment]

    def too_large(self) -> bool:
        if self.capped.exhausted:
            self.close_connection = True
            self.send_error(431, "Request Header Fields Too Large")
            return True
        return False

    def do_GET(self) -> None:
        self.answer(body=True)

    def do_HEAD(self) -> None:
        self.answer(body=False)

    def answer(self, body: bool) -> None:
        if self.too_large():
            return
        if self.path.split("?", 1)[0] != "/metrics":
            self.send_error(404, "Only /metrics is served here")
            return
        payload = generate_latest(self.registry)
        self.send_response(200)
        self.send_header("Content-Type", CONTENT_TYPE)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if body:
            self.wfile.write(payload)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        if code == 501:  # an unknown method: http.server says 501, we mean "not allowed here"
            code, message = 405, "Only GET /metrics"
        super().send_error(code, message, explain)

    def log_message(self, format: str, *args: Any) -> None:
        """Scrapes are not logged: one every few seconds would drown the journal."""


class _Server(HTTPServer):
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler]) -> None:
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        super().__init__(address, handler)


class MetricsServer:
    """The endpoint's socket and its one serving thread."""

    def __init__(self, listen: str, registry: CollectorRegistry) -> None:
        host, port = parse_listen(listen)
        handler = type("MetricsHandler", (_Handler,), {"registry": registry})
        self.server = _Server((host, port), handler)  # OSError (in use, no such address) goes to the caller
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.5},
                                       name="ipspool-metrics-http", daemon=True)
        self.thread.start()

    @property
    def address(self) -> str:
        host, port = str(self.server.server_address[0]), int(self.server.server_address[1])
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    def close(self) -> None:
        """Stop serving; a request being answered gets at most ``TIMEOUT`` to finish."""
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(TIMEOUT + 1.0)
