"""The rendered chart against Kubernetes itself: kubeconform with the API's JSON schemas and the KEDA
and prometheus-operator CRD schemas (strict: unknown fields fail), then a real kube-apiserver's
server-side dry run, which also runs its defaulting, validation and admission. Broken manifests
must be rejected by both, or the checks prove nothing."""

from __future__ import annotations

import copy

import pytest
import yaml

from tests.deploy.conftest import MINIMAL, PLATFORM_VALUES, PRODUCTION_VALUES, ApiServer, Tools, one

RENDERINGS = {
    "default": MINIMAL,
    "production": ["-f", str(PRODUCTION_VALUES)],
    "hpa-everything": [
        *MINIMAL,
        "--set",
        "autoscaling.mode=hpa,serviceMonitor.enabled=true,prometheusRule.enabled=true,grafanaDashboards.enabled=true",
        "--set",
        "kafka.securityProtocol=SASL_PLAINTEXT,kafka.sasl.mechanism=PLAIN,kafka.sasl.username=u,kafka.sasl.password=p",
    ],
    # Strimzi mTLS from separate Secrets, /metrics over TLS with basic auth scraped by a
    # ServiceMonitor, extra init container, volumes, mounts and env, commonLabels, fullnameOverride,
    # thresholds of its own, KEDA with the client certificate.
    "platform": ["-f", str(PLATFORM_VALUES)],
    # The other variants: nameOverride, one Secret for mutual TLS, the ServiceMonitor's CA from a
    # ConfigMap, insecureSkipVerify with basic auth only on another rendering.
    "overrides-keda-mtls": [
        *MINIMAL,
        "--set",
        "nameOverride=fraud-agent,commonLabels.team=fraud-ml,autoscaling.mode=keda,kafka.securityProtocol=SSL,"
        "kafka.tls.existingSecret=kafka-tls,kafka.tls.certKey=tls.crt,kafka.tls.keyKey=tls.key,"
        "metrics.tls.enabled=true,metrics.tls.existingSecret=agent-tls,serviceMonitor.enabled=true,"
        "serviceMonitor.tlsConfig.ca.configMap=trust-bundle,serviceMonitor.tlsConfig.serverName=agent.example.com",
    ],
    # The review console beside the agent: users from values (the chart's Secret), its ServiceMonitor
    # and a NetworkPolicy admitting one namespace; and with production's SASL_SSL, a token Secret.
    "console": [
        *MINIMAL,
        "--set",
        "console.enabled=true,serviceMonitor.enabled=true",
        "--set-json",
        'console.auth.users=["ana:pw"]',
        "--set-json",
        'console.networkPolicy.from=[{"namespaceSelector":{"matchLabels":{"kubernetes.io/metadata.name":"ingress"}}}]',
    ],
    "console-production": [
        "-f",
        str(PRODUCTION_VALUES),
        "--set",
        "console.enabled=true,console.auth.type=token,console.auth.existingSecret=review-token",
    ],
    "insecure-basic-auth": [
        *MINIMAL,
        "--set",
        "metrics.tls.enabled=true,metrics.tls.existingSecret=agent-tls,serviceMonitor.enabled=true,"
        "serviceMonitor.tlsConfig.insecureSkipVerify=true,metrics.basicAuth.enabled=true,"
        "metrics.basicAuth.existingSecret=agent-metrics-auth",
    ],
}


def _broken(tools: Tools) -> dict[str, str]:
    """Manifests with one mistake each, of the kinds a template change could make."""
    docs = tools.render(*RENDERINGS["production"])
    deployment, scaler = one(docs, "Deployment"), one(docs, "ScaledObject")
    wrong_type = copy.deepcopy(deployment)
    wrong_type["spec"]["replicas"] = "two"
    unknown_field = copy.deepcopy(deployment)
    unknown_field["spec"]["template"]["spec"]["containers"][0]["livenessProbes"] = {}
    bad_crd = copy.deepcopy(scaler)
    bad_crd["spec"]["maxReplicaCount"] = "twelve"
    # The scrape settings of /metrics over TLS: a misspelt field of the ServiceMonitor's tlsConfig.
    monitor = copy.deepcopy(one(tools.render(*RENDERINGS["platform"]), "ServiceMonitor"))
    monitor["spec"]["endpoints"][0]["tlsConfig"]["servername"] = "agent.example.com"
    return {
        name: yaml.safe_dump(doc)
        for name, doc in (
            ("wrong-type", wrong_type),
            ("unknown-field", unknown_field),
            ("crd-wrong-type", bad_crd),
            ("crd-unknown-field", monitor),
        )
    }


@pytest.mark.parametrize("name", sorted(RENDERINGS))
def test_kubeconform_strict_accepts_every_rendering(tools: Tools, name: str) -> None:
    rendered = tools.template(*RENDERINGS[name]).stdout
    proc = tools.validate(rendered)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Invalid: 0, Errors: 0, Skipped: 0" in proc.stdout, proc.stdout


def test_kubeconform_rejects_broken_manifests(tools: Tools) -> None:
    for name, manifest in _broken(tools).items():
        proc = tools.validate(manifest)
        assert proc.returncode != 0, f"kubeconform accepted the {name} manifest"
        assert "Invalid: 1" in proc.stdout, proc.stdout


@pytest.mark.parametrize("name", sorted(RENDERINGS))
def test_apiserver_dry_run_accepts_every_rendering(tools: Tools, apiserver: ApiServer, name: str) -> None:
    rendered = tools.template(*RENDERINGS[name]).stdout
    proc = apiserver.kubectl("apply", "--dry-run=server", "--validate=strict", "-f", "-", stdin=rendered)
    assert proc.returncode == 0, proc.stderr
    kinds = {doc["kind"] for doc in yaml.safe_load_all(rendered) if doc}
    assert proc.stdout.count("(server dry run)") == sum(1 for doc in yaml.safe_load_all(rendered) if doc), proc.stdout
    assert "Deployment" in kinds


def test_apiserver_rejects_broken_manifests(tools: Tools, apiserver: ApiServer) -> None:
    expected = {
        "wrong-type": "spec.replicas",
        "unknown-field": 'unknown field "spec.template.spec.containers[0].livenessProbes"',
        "crd-wrong-type": "spec.maxReplicaCount",
        "crd-unknown-field": 'unknown field "spec.endpoints[0].tlsConfig.servername"',
    }
    for name, manifest in _broken(tools).items():
        proc = apiserver.kubectl("apply", "--dry-run=server", "--validate=strict", "-f", "-", stdin=manifest)
        assert proc.returncode != 0, f"the API server accepted the {name} manifest"
        assert expected[name] in proc.stderr, proc.stderr
        print(f"\n{name}: {proc.stderr.strip()}")
