"""The agent's HTTP endpoint: /metrics for Prometheus, /healthz for liveness, /readyz for readiness.

Separate from `agent.runtime.telemetry` (what is measured) because serving is a different job:
threads, sockets and binding. Readiness means the bundle is loaded and partitions are assigned.
"""

from __future__ import annotations

import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

from agent.runtime.telemetry import Telemetry


class _Handler(BaseHTTPRequestHandler):
    telemetry: Telemetry  # set on the per-server subclass

    def do_GET(self) -> None:
        path = urlsplit(self.path).path
        if path == "/metrics":
            self._reply(200, *self.telemetry.exposition())
        elif path == "/healthz":
            self._reply(200, b"ok\n")
        elif path == "/readyz":
            ready = self.telemetry.ready
            self._reply(200 if ready else 503, b"ready\n" if ready else b"not ready\n")
        else:
            self._reply(404, b"not found\n")

    def _reply(self, status: int, body: bytes, content_type: str = "text/plain; charset=utf-8") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # scrapes every 15 s are not news
        pass


class MetricsServer:
    """/metrics, /healthz, /readyz on a daemon thread; port 0 picks a free port (see `.port`)."""

    def __init__(self, telemetry: Telemetry, host: str = "0.0.0.0", port: int = 9108) -> None:
        handler = type("Handler", (_Handler,), {"telemetry": telemetry})
        family = socket.AF_INET6 if ":" in host else socket.AF_INET  # ":" marks an IPv6 literal such as "::"
        server_cls = type("Server", (ThreadingHTTPServer,), {"daemon_threads": True, "address_family": family})
        self._server = server_cls((host, port), handler)
        self._thread = threading.Thread(  # short poll interval: close() waits at most that long
            target=self._server.serve_forever, kwargs={"poll_interval": 0.1}, name="metrics-http", daemon=True
        )
        self._thread.start()

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> MetricsServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
