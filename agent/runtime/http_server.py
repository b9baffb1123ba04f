"""The agent's HTTP endpoint: /metrics for Prometheus, /healthz for liveness, /readyz for readiness.

Separate from `agent.runtime.telemetry` (what is measured) because serving is a different job:
threads, sockets and binding. Readiness means the bundle is loaded and partitions are assigned.

The endpoint faces a network, so it is bounded (docs/security.md):

- at most `max_connections` requests are served at once; one more is closed unanswered, so a flood
  of clients cannot take a thread each;
- every connection has `timeout_s` to send its request and take the answer (HTTP/1.0: one request
  per connection, then closed), so an idle or slow socket is dropped instead of held for ever;
- optional TLS (`certfile`, `keyfile`; the handshake runs in the request's thread, under the same
  timeout) and optional HTTP basic auth on /metrics (the probes stay open: a kubelet cannot log in).

It binds `metrics.host`, 0.0.0.0 by default because Prometheus scrapes a pod from outside it; bind
127.0.0.1 where only a local scraper or sidecar needs it.
"""

from __future__ import annotations

import base64
import hmac
import socket
import ssl
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from agent.errors import ConfigError
from agent.runtime.telemetry import Telemetry


@dataclass(frozen=True)
class EndpointSecurity:
    """TLS files and basic-auth credentials for /metrics; all optional."""

    certfile: Path | None = None
    keyfile: Path | None = None
    username: str | None = None
    password: str | None = None
    max_connections: int = 16
    timeout_s: float = 5.0


class _Handler(BaseHTTPRequestHandler):
    telemetry: Telemetry  # set on the per-server subclass
    expected_authorization: bytes | None  # "Basic <base64(user:password)>", or None for no auth

    def do_GET(self) -> None:
        path = urlsplit(self.path).path
        if path == "/metrics":
            if not self._authorised():
                self._reply(401, b"unauthorised\n", extra=[("WWW-Authenticate", 'Basic realm="dknn-agent"')])
                return
            self._reply(200, *self.telemetry.exposition())
        elif path == "/healthz":
            self._reply(200, b"ok\n")
        elif path == "/readyz":
            ready = self.telemetry.ready
            self._reply(200 if ready else 503, b"ready\n" if ready else b"not ready\n")
        else:
            self._reply(404, b"not found\n")

    def _authorised(self) -> bool:
        if self.expected_authorization is None:
            return True
        given = (self.headers.get("Authorization") or "").encode("latin-1", "replace")
        return hmac.compare_digest(given, self.expected_authorization)

    def _reply(
        self,
        status: int,
        body: bytes,
        content_type: str = "text/plain; charset=utf-8",
        extra: list[tuple[str, str]] | None = None,
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in extra or []:
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # scrapes every 15 s are not news
        pass


class _BoundedServer(ThreadingHTTPServer):
    """A thread per request, but never more than `slots` at once; the rest are closed unanswered."""

    daemon_threads = True
    slots: threading.BoundedSemaphore

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self.slots.acquire(blocking=False):
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self.slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()


class MetricsServer:
    """/metrics, /healthz, /readyz on a daemon thread; port 0 picks a free port (see `.port`)."""

    def __init__(
        self, telemetry: Telemetry, host: str = "0.0.0.0", port: int = 9108, security: EndpointSecurity | None = None
    ) -> None:
        security = security or EndpointSecurity()
        authorization = None
        if security.username is not None and security.password is not None:
            token = base64.b64encode(f"{security.username}:{security.password}".encode()).decode("ascii")
            authorization = f"Basic {token}".encode("latin-1")
        handler = type(
            "Handler",
            (_Handler,),
            {"telemetry": telemetry, "expected_authorization": authorization, "timeout": security.timeout_s},
        )
        family = socket.AF_INET6 if ":" in host else socket.AF_INET  # ":" marks an IPv6 literal such as "::"
        server_cls = type(
            "Server",
            (_BoundedServer,),
            {"address_family": family, "slots": threading.BoundedSemaphore(security.max_connections)},
        )
        try:
            self._server = server_cls((host, port), handler)
        except OSError as exc:  # in use, no such address, unresolvable name
            raise ConfigError(f"cannot serve metrics on {host}:{port}: {exc.strerror or exc}") from None
        if security.certfile is not None:
            self._server.socket = _tls_context(security).wrap_socket(
                self._server.socket, server_side=True, do_handshake_on_connect=False
            )
        self.scheme = "https" if security.certfile is not None else "http"
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


def _tls_context(security: EndpointSecurity) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(str(security.certfile), str(security.keyfile) if security.keyfile else None)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot load the metrics TLS certificate {security.certfile}: {exc}") from None
    return context
