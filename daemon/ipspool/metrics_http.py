"""The optional /metrics endpoint: the metrics registry over HTTP, without node_exporter.

``[metrics] listen = "HOST:PORT"`` (``[::1]:PORT`` for IPv6) starts it in a
thread of the supervisor, which owns the registry; it serves what the last
snapshot holds, the same numbers the textfile carries. Anyone who can reach
the port can read the counters, so it belongs on loopback or behind a
firewall, and it is bounded against clients that misbehave:

- one request at a time (no thread per client), one per connection, and a
  client gets ``TIMEOUT`` seconds in all to send its request line and
  headers (408 after that), however slowly it drips them;
- at most ``MAX_REQUEST_BYTES`` of request line and headers are read; past
  that the answer is 431;
- only ``GET`` (and ``HEAD``) of ``/metrics``; any other path is 404, any
  other method 405; a request body is never read.
"""

from __future__ import annotations

import io
import socket
import threading
import time
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


class _Handler(BaseHTTPRequestHandler):
    timeout = TIMEOUT
    server_version = "ipspool"
    sys_version = ""
    registry: CollectorRegistry  # set on the subclass each server makes

    def setup(self) -> None:
        """Read the request line and headers whole, within TIMEOUT and MAX_REQUEST_BYTES, before parsing.

        The socket timeout alone bounds each read, not the request: a client
        sending a byte a second would hold the endpoint for hours.
        """
        super().setup()
        self.refusal = 0
        data = b""
        deadline = time.monotonic() + self.timeout
        while b"\r\n\r\n" not in data and b"\n\n" not in data and len(data) <= MAX_REQUEST_BYTES:
            left = deadline - time.monotonic()
            if left <= 0:
                self.refusal = 408
                break
            self.connection.settimeout(left)
            try:
                block = self.connection.recv(4096)
            except TimeoutError:
                self.refusal = 408
                break
            except OSError:
                break
            if not block:
                break
            data += block
        if len(data) > MAX_REQUEST_BYTES:
            self.refusal = 431  # the last read brought the end of the headers, and too much
        self.connection.settimeout(self.timeout)  # for the answer
        self.rfile = io.BytesIO(data[:MAX_REQUEST_BYTES])

    def refused(self) -> bool:
        if self.refusal == 431:
            self.send_error(431, "Request Header Fields Too Large")
        elif self.refusal == 408:
            self.send_error(408, "Request Timeout")
        return bool(self.refusal)

    def do_GET(self) -> None:
        self.answer(body=True)

    def do_HEAD(self) -> None:
        self.answer(body=False)

    def answer(self, body: bool) -> None:
        if self.refused():
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
