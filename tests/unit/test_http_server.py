"""The metrics endpoint faces a network: bounded connections and time, optional TLS and basic auth."""

from __future__ import annotations

import base64
import socket
import ssl
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import trustme

from agent.errors import ConfigError
from agent.runtime.http_server import EndpointSecurity, MetricsServer
from agent.runtime.telemetry import Telemetry


@pytest.fixture
def telemetry() -> Telemetry:
    telemetry = Telemetry()
    telemetry.consumed(3)
    return telemetry


def get(url: str, headers: dict[str, str] | None = None, context: ssl.SSLContext | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10, context=context) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def test_idle_connections_are_bounded_and_dropped_after_the_timeout(telemetry: Telemetry) -> None:
    security = EndpointSecurity(max_connections=4, timeout_s=0.5)
    with MetricsServer(telemetry, "127.0.0.1", 0, security) as server:
        idle = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(4)]
        time.sleep(0.2)
        extra = socket.create_connection(("127.0.0.1", server.port))
        extra.settimeout(5)
        extra.sendall(b"GET /healthz HTTP/1.0\r\n\r\n")
        assert extra.recv(100) == b"", "a fifth connection must be closed unanswered while four are held"
        for sock in idle:  # the server gives up on each idle socket after the timeout
            sock.settimeout(5)
            assert sock.recv(100) == b""
            sock.close()
        assert get(f"http://127.0.0.1:{server.port}/healthz") == (200, b"ok\n")  # the slots are free again


def test_basic_auth_guards_metrics_but_not_the_probes(telemetry: Telemetry) -> None:
    security = EndpointSecurity(username="prometheus", password="s3cret")
    with MetricsServer(telemetry, "127.0.0.1", 0, security) as server:
        base = f"http://127.0.0.1:{server.port}"
        assert get(f"{base}/metrics")[0] == 401
        wrong = base64.b64encode(b"prometheus:guess").decode()
        assert get(f"{base}/metrics", {"Authorization": f"Basic {wrong}"})[0] == 401
        right = base64.b64encode(b"prometheus:s3cret").decode()
        status, body = get(f"{base}/metrics", {"Authorization": f"Basic {right}"})
        assert status == 200 and b"dknn_events_consumed_total 3.0" in body
        assert get(f"{base}/healthz")[0] == 200 and get(f"{base}/readyz")[0] == 503


def test_tls(telemetry: Telemetry, tmp_path: Path) -> None:
    authority = trustme.CA()
    certificate = authority.issue_cert("127.0.0.1")
    certificate.cert_chain_pems[0].write_to_path(str(tmp_path / "cert.pem"))
    certificate.private_key_pem.write_to_path(str(tmp_path / "key.pem"))
    security = EndpointSecurity(certfile=tmp_path / "cert.pem", keyfile=tmp_path / "key.pem")
    with MetricsServer(telemetry, "127.0.0.1", 0, security) as server:
        assert server.scheme == "https"
        client = ssl.create_default_context()
        authority.configure_trust(client)
        status, body = get(f"https://127.0.0.1:{server.port}/metrics", context=client)
        assert status == 200 and b"dknn_events_consumed_total" in body
        with pytest.raises(urllib.error.URLError):  # a client that does not trust the CA is refused
            get(f"https://127.0.0.1:{server.port}/metrics", context=ssl.create_default_context())


@pytest.mark.parametrize(
    ("host", "fragment"), [("no-such-host.invalid", "cannot serve metrics on no-such-host.invalid")]
)
def test_unusable_addresses_are_one_config_error(telemetry: Telemetry, host: str, fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        MetricsServer(telemetry, host, 0)


def test_a_port_in_use_is_one_config_error(telemetry: Telemetry) -> None:
    with MetricsServer(telemetry, "127.0.0.1", 0) as first, pytest.raises(ConfigError, match="cannot serve metrics"):
        MetricsServer(telemetry, "127.0.0.1", first.port)


def test_a_bad_certificate_is_one_config_error(telemetry: Telemetry, tmp_path: Path) -> None:
    (tmp_path / "cert.pem").write_text("not a certificate")
    with pytest.raises(ConfigError, match="cannot load the metrics TLS certificate"):
        MetricsServer(
            telemetry, "127.0.0.1", 0, EndpointSecurity(certfile=tmp_path / "cert.pem", keyfile=tmp_path / "cert.pem")
        )
