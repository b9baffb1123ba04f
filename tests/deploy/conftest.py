"""Fixtures for the deployment checks (`make deploy-check`): the real helm, kubeconform and a real
kube-apiserver on etcd, installed by deploy/check/install-tools.sh and cached outside the repo.

A missing tool is a failure, not a skip: these tests are what proves the chart.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

# The session Kafka broker of the integration tests, for the image check (test_image.py).
from tests.integration.conftest import kafka_bootstrap, local_kafka  # noqa: F401

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy" / "helm" / "dknn-agent"
PRODUCTION_VALUES = CHART / "ci" / "production-values.yaml"
# A platform team's release: Strimzi mTLS, /metrics over TLS with basic auth, model code, overrides.
PLATFORM_VALUES = CHART / "ci" / "platform-values.yaml"
INSTALL_TOOLS = ROOT / "deploy" / "check" / "install-tools.sh"
KUBE_VERSION = "1.33.0"  # what helm renders for and kubeconform validates against
# The one value the chart cannot default: where the brokers are.
MINIMAL = ["--set", "kafka.bootstrapServers=kafka:9092"]


@dataclass(frozen=True)
class Tools:
    helm: str
    kubeconform: str
    kube_apiserver: str
    kubectl: str
    etcd: str
    schemas: Path
    crd_yaml: Path
    docker_compose: str

    def helm_run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run([self.helm, *args], capture_output=True, text=True, timeout=120, check=False)
        if check and proc.returncode != 0:
            raise AssertionError(f"helm {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}")
        return proc

    def template(self, *args: str, chart: Path | str = CHART, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.helm_run("template", "dknn-agent", str(chart), "--kube-version", KUBE_VERSION, *args, check=check)

    def render(self, *args: str, chart: Path | str = CHART) -> list[dict[str, Any]]:
        """The chart's manifests as dicts (helm template with these arguments)."""
        return [doc for doc in yaml.safe_load_all(self.template(*args, chart=chart).stdout) if doc]

    def validate(self, manifests: str) -> subprocess.CompletedProcess[str]:
        schemas = str(self.schemas)
        return subprocess.run(
            [
                self.kubeconform,
                "-strict",
                "-summary",
                "-output",
                "text",
                "-kubernetes-version",
                KUBE_VERSION,
                "-schema-location",
                schemas
                + "/{{.NormalizedKubernetesVersion}}-local{{.StrictSuffix}}/{{.ResourceKind}}{{.KindSuffix}}.json",
                "-schema-location",
                schemas + "/crd/{{.ResourceKind}}_{{.ResourceAPIVersion}}.json",
                "-",
            ],
            input=manifests,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )


@pytest.fixture(scope="session")
def tools() -> Tools:
    proc = subprocess.run(
        ["bash", str(INSTALL_TOOLS), "env"], capture_output=True, text=True, timeout=3600, check=False
    )
    assert proc.returncode == 0, f"deploy/check/install-tools.sh failed:\n{proc.stderr[-4000:]}"
    env = dict(line.split("=", 1) for line in proc.stdout.splitlines() if "=" in line)
    return Tools(
        helm=env["HELM"],
        kubeconform=env["KUBECONFORM"],
        kube_apiserver=env["KUBE_APISERVER"],
        kubectl=env["KUBECTL"],
        etcd=env["ETCD"],
        schemas=Path(env["KUBE_SCHEMAS"]),
        crd_yaml=Path(env["CRD_YAML"]),
        docker_compose=env["DOCKER_COMPOSE"],
    )


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [doc for doc in docs if doc["kind"] == kind]


def one(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = by_kind(docs, kind)
    assert len(found) == 1, f"expected one {kind}, got {len(found)}"
    return found[0]


# -- a real API server ------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class ApiServer:
    kubeconfig: Path
    kubectl_path: str

    def kubectl(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [self.kubectl_path, "--kubeconfig", str(self.kubeconfig), *args],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="session")
def apiserver(tools: Tools, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiServer]:
    """etcd and kube-apiserver on loopback (free ports, a static admin token), with the KEDA and
    prometheus-operator CRDs applied; no controller-manager, no scheduler, no nodes."""
    work = tmp_path_factory.mktemp("apiserver")
    etcd_port, etcd_peer, api_port = free_port(), free_port(), free_port()
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    (work / "sa.key").write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    (work / "tokens.csv").write_text("deploy-check-token,admin,admin,system:masters\n")
    logs = {name: (work / f"{name}.log").open("wb") for name in ("etcd", "apiserver")}
    etcd = subprocess.Popen(
        [
            tools.etcd,
            "--data-dir",
            str(work / "etcd"),
            "--listen-client-urls",
            f"http://127.0.0.1:{etcd_port}",
            "--advertise-client-urls",
            f"http://127.0.0.1:{etcd_port}",
            "--listen-peer-urls",
            f"http://127.0.0.1:{etcd_peer}",
            "--initial-advertise-peer-urls",
            f"http://127.0.0.1:{etcd_peer}",
            "--initial-cluster",
            f"default=http://127.0.0.1:{etcd_peer}",
        ],
        stdout=logs["etcd"],
        stderr=subprocess.STDOUT,
    )
    api = subprocess.Popen(
        [
            tools.kube_apiserver,
            f"--etcd-servers=http://127.0.0.1:{etcd_port}",
            "--bind-address=127.0.0.1",
            f"--secure-port={api_port}",
            f"--cert-dir={work / 'certs'}",
            f"--token-auth-file={work / 'tokens.csv'}",
            "--authorization-mode=RBAC",
            "--service-cluster-ip-range=10.96.0.0/16",
            "--service-account-issuer=https://kubernetes.default.svc",
            f"--service-account-key-file={work / 'sa.key'}",
            f"--service-account-signing-key-file={work / 'sa.key'}",
            "--enable-priority-and-fairness=false",
        ],
        stdout=logs["apiserver"],
        stderr=subprocess.STDOUT,
    )
    kubeconfig = work / "kubeconfig"
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [
                    {
                        "name": "local",
                        "cluster": {"server": f"https://127.0.0.1:{api_port}", "insecure-skip-tls-verify": True},
                    }
                ],
                "users": [{"name": "admin", "user": {"token": "deploy-check-token"}}],
                "contexts": [{"name": "local", "context": {"cluster": "local", "user": "admin"}}],
                "current-context": "local",
            }
        )
    )
    server = ApiServer(kubeconfig=kubeconfig, kubectl_path=tools.kubectl)
    try:
        deadline = time.monotonic() + 120
        while True:
            probe = server.kubectl("get", "--raw", "/readyz")
            if probe.returncode == 0 and probe.stdout.strip() == "ok":
                break
            if api.poll() is not None or etcd.poll() is not None or time.monotonic() > deadline:
                log = (work / "apiserver.log").read_text(errors="replace")[-4000:]
                raise AssertionError(f"kube-apiserver did not become ready:\n{log}")
            time.sleep(0.5)
        # Pods (in Deployments) are admitted only when their service account exists; no
        # controller-manager runs here to create `default`.
        deadline = time.monotonic() + 60
        while server.kubectl("get", "namespace", "default").returncode != 0:
            assert time.monotonic() < deadline, "the default namespace never appeared"
            time.sleep(0.5)
        server.kubectl("create", "serviceaccount", "default")
        crds = server.kubectl("apply", "--server-side", "-f", str(tools.crd_yaml))
        assert crds.returncode == 0, crds.stderr
        established = server.kubectl("wait", "--for=condition=Established", "crd", "--all", "--timeout=60s")
        assert established.returncode == 0, established.stderr
        yield server
    finally:
        _stop(api)
        _stop(etcd)
        for log in logs.values():
            log.close()
        shutil.rmtree(work, ignore_errors=True)
