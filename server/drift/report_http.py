"""The drift service's HTTP endpoint: reports as JSON and Prometheus metrics.

A stdlib ThreadingHTTPServer in a daemon thread: the service stays free of web frameworks, and
its event loop never waits on a slow reader. Routes: /reports, /reports/<model>,
/reports/<model>/history, /metrics, /healthz. With a `ServerTlsContext` it serves HTTPS (mTLS when
the context requires client certificates); the handshake runs on the connection's own thread.
"""

from __future__ import annotations

import logging
import socket
import ssl
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from ..tls import ServerTlsContext
from .reports import ReportBook

__all__ = ["ReportServer"]


logger = logging.getLogger(__name__)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    timeout = 30  # seconds a connection may sit idle (or mid-handshake) before it is closed

    def setup(self) -> None:
        super().setup()
        if isinstance(self.request, ssl.SSLSocket):
            self.request.do_handshake()

    def do_GET(self) -> None:
        parts = [p for p in self.path.split("?", 1)[0].split("/") if p]
        book = self.server.reports
        if parts == ["healthz"]:
            self._send(HTTPStatus.OK, b"ok", "text/plain")
        elif parts == ["metrics"]:
            self._send(HTTPStatus.OK, generate_latest(self.server.registry), CONTENT_TYPE_LATEST)
        elif parts == ["reports"]:
            self._json(HTTPStatus.OK, book.latest())
        elif len(parts) == 2 and parts[0] == "reports":
            self._found(book.latest(parts[1]), parts[1])
        elif len(parts) == 3 and parts[0] == "reports" and parts[2] == "history":
            self._found(book.history(parts[1]), parts[1])
        else:
            self._json(HTTPStatus.NOT_FOUND, {"error": f"no route {self.path}"})

    def _found(self, body: Any, model: str) -> None:
        if body is None:
            self._json(HTTPStatus.NOT_FOUND, {"error": f"no drift report for model '{model}'"})
        else:
            self._json(HTTPStatus.OK, body)

    def _json(self, status: HTTPStatus, body: Any) -> None:
        self._send(status, orjson.dumps(body), "application/json")

    def _send(self, status: HTTPStatus, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # quiet: metrics scrapes are frequent
        return


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], reports: ReportBook, registry: CollectorRegistry,
                 tls: ServerTlsContext | None) -> None:
        super().__init__(address, _Handler)
        self.reports = reports
        self.registry = registry
        self.tls = tls

    def get_request(self) -> tuple[socket.socket, Any]:
        sock, address = super().get_request()
        if self.tls is None:
            return sock, address
        self.tls.refresh_every(5.0)  # rotated certificate files take effect for new connections
        return self.tls.context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False), address

    def handle_error(self, request: Any, client_address: Any) -> None:
        logger.debug("drift HTTP connection from %s failed", client_address, exc_info=True)


class ReportServer:
    """Serves reports and metrics on host:port (0 picks a free port; read `port` after start)."""

    def __init__(self, reports: ReportBook, registry: CollectorRegistry, host: str = "0.0.0.0",
                 port: int = 0, tls: ServerTlsContext | None = None) -> None:
        self._server = _Server((host, port), reports, registry, tls)
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever, name="drift-http", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
