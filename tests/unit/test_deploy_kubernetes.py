"""deploy/k8s checked without a cluster: parsed, built with ``kubectl kustomize`` when
kubectl is installed, and held to the secure-by-default rules.

Every Deployment reads its database URL and token table from Secrets the operator
creates (docs/operations.md lists the same Secret keys the manifests use) and its TLS
material from a mounted Secret; no Secret value lives in the repository; every Service
is behind a NetworkPolicy, checked by asking who may reach what (tests/unit/k8s_network);
every multi-replica Deployment has a PodDisruptionBudget; the orchestrator balances
over a headless Service; the migration Job runs ``walletctl db upgrade``.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.unit.deploy_files import (
    CONTRACT_PORTS,
    DEPLOY,
    ENV_NAMES,
    INSECURE_ENV,
    K8S,
    SECRET_ENV,
    port_of,
    scripts,
    yaml_docs,
)
from tests.unit.k8s_network import Pod, allowed, egress_outside, selects
from wallet_platform.channels import ROUND_ROBIN
from walletctl.cli import build_parser

OPERATIONS_DOC = DEPLOY.parent / "docs" / "operations.md"
METRICS_PORT = 9100
CLIENT_LABEL = {"wallet.example/client": "true"}


def _resources(directory: Path) -> list[dict[str, Any]]:
    """The documents a kustomization directory builds (resources and components)."""
    kustomization = yaml_docs(directory / "kustomization.yaml")[0]
    docs: list[dict[str, Any]] = []
    for entry in [*kustomization.get("resources", []), *kustomization.get("components", [])]:
        path = (directory / entry).resolve()
        docs.extend(_resources(path) if path.is_dir() else yaml_docs(path))
    return docs


def _by_kind(docs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


BASE = _resources(K8S)
FULL = _resources(K8S / "with-operators")
DEPLOYMENTS = _by_kind(BASE, "Deployment")
SERVICES = _by_kind(BASE, "Service")
POLICIES = list(_by_kind(BASE, "NetworkPolicy").values())
CONFIG = _by_kind(BASE, "ConfigMap")["wallet-config"]["data"]


def _container(workload: dict[str, Any]) -> dict[str, Any]:
    (container,) = workload["spec"]["template"]["spec"]["containers"]
    return container


def _pod_labels(workload: dict[str, Any]) -> dict[str, str]:
    return dict(workload["spec"]["template"]["metadata"]["labels"])


def _secret_refs(container: dict[str, Any]) -> dict[str, tuple[str, str]]:
    return {
        e["name"]: (e["valueFrom"]["secretKeyRef"]["name"], e["valueFrom"]["secretKeyRef"]["key"])
        for e in container.get("env", [])
        if "secretKeyRef" in e.get("valueFrom", {})
    }


def test_every_manifest_is_part_of_a_build_and_nothing_is_duplicated():
    listed = {
        (K8S / "base" / r).resolve()
        for r in yaml_docs(K8S / "base/kustomization.yaml")[0]["resources"]
    }
    assert listed == {p.resolve() for p in (K8S / "base").glob("*.yaml")} - {
        (K8S / "base/kustomization.yaml").resolve()
    }
    for component in (K8S / "components").iterdir():
        assert (
            str(component.relative_to(K8S))
            in (K8S / "with-operators/kustomization.yaml").read_text()
        )
    names = Counter((d["kind"], d["metadata"]["name"]) for d in FULL)
    assert not [key for key, count in names.items() if count > 1]
    assert {d["metadata"].get("namespace", "wallet") for d in FULL} == {"wallet"}


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="needs kubectl (kustomize)")
@pytest.mark.parametrize("directory", [K8S, K8S / "with-operators"])
def test_kubectl_kustomize_builds_what_the_tests_read(directory: Path):
    built = subprocess.run(
        ["kubectl", "kustomize", str(directory)], capture_output=True, text=True, timeout=60
    )
    assert built.returncode == 0, built.stderr
    docs = [d for d in yaml.safe_load_all(built.stdout) if d]
    ours = BASE if directory == K8S else FULL
    assert Counter((d["kind"], d["metadata"]["name"]) for d in docs) == Counter(
        (d["kind"], d["metadata"]["name"]) for d in ours
    )


def test_no_secret_value_in_the_repository():
    for path in sorted(K8S.rglob("*.yaml")):
        text = path.read_text()
        assert "CHANGE-ME" not in text and INSECURE_ENV not in text, path
        assert not re.search(r"://[^/\s:@]+:[^@\s]+@", text), f"{path}: a URL with a password"
        for doc in yaml_docs(path):
            assert doc["kind"] != "Secret", f"{path}: Secrets are created by the operator"
    for name in SECRET_ENV:
        assert name not in CONFIG, f"{name} in the ConfigMap"
    for workload in [*DEPLOYMENTS.values(), *_by_kind(BASE, "Job").values()]:
        container = _container(workload)
        literal = {e["name"] for e in container.get("env", []) if "value" in e}
        assert not literal & SECRET_ENV, (workload["metadata"]["name"], literal & SECRET_ENV)
        assert {"configMapRef": {"name": "wallet-config"}} in container.get("envFrom", []) or (
            workload["kind"] == "Job"
        )
        assert not any("secretRef" in ref for ref in container.get("envFrom", []))


def test_every_deployment_authenticates_and_serves_tls_from_secrets():
    assert set(DEPLOYMENTS) == set(CONTRACT_PORTS)
    tls_dir = {
        Path(CONFIG[v]).parent for v in ("WALLET_TLS_CERT", "WALLET_TLS_KEY", "WALLET_TLS_CA")
    }
    assert len(tls_dir) == 1
    for name, deployment in DEPLOYMENTS.items():
        container = _container(deployment)
        refs = _secret_refs(container)
        assert refs["WALLET_AUTH_TOKENS"][0] == "wallet-auth", name
        assert refs["WALLET_DATABASE_URL"] == ("wallet-secrets", "WALLET_DATABASE_URL"), name
        mounts = {m["name"]: m for m in container["volumeMounts"]}
        volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
        tls = [
            n for n, v in volumes.items() if v.get("secret", {}).get("secretName") == "wallet-tls"
        ]
        assert tls and Path(mounts[tls[0]]["mountPath"]) in tls_dir and mounts[tls[0]]["readOnly"]
        expected_table = "wallet-service.auth" if name == "wallet-service" else "services.auth"
        assert refs["WALLET_AUTH_TOKENS"][1] == expected_table, name
        if name == "saga-orchestrator":  # its own token, and no broker credentials it does not use
            assert refs["WALLET_AUTH_TOKEN"] == ("wallet-auth", "orchestrator.token")
            assert "WALLET_AMQP_URL" not in refs
        else:
            assert "WALLET_AUTH_TOKEN" not in refs
            assert refs["WALLET_AMQP_URL"] == ("wallet-secrets", "WALLET_AMQP_URL")
        pod_spec = deployment["spec"]["template"]["spec"]
        assert pod_spec["securityContext"]["runAsNonRoot"] is True
        assert pod_spec["automountServiceAccountToken"] is False
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        names = {e["name"] for e in container["env"]} | set(CONFIG)
        assert names <= ENV_NAMES, names - ENV_NAMES


def test_documented_secret_commands_create_exactly_the_keys_the_manifests_read():
    used = {ref for d in [*DEPLOYMENTS.values(), *_by_kind(BASE, "Job").values()]
            for ref in _secret_refs(_container(d)).values()}  # fmt: skip
    text = OPERATIONS_DOC.read_text()
    documented = set()
    for secret, options in re.findall(
        r"create secret generic ([\w-]+)((?:\s*\\\n\s*--from-(?:literal|file)=\S+)+)", text
    ):
        for key in re.findall(r"--from-(?:literal|file)=([\w.-]+)", options):
            documented.add((secret, key))
    tls = {k for s, k in documented if s == "wallet-tls"}
    assert tls == {"tls.crt", "tls.key", "ca.crt"}
    assert {(s, k) for s, k in documented if s != "wallet-tls"} == used


def test_probes_use_the_tls_aware_health_check_on_the_service_port():
    for name, port in CONTRACT_PORTS.items():
        container = _container(DEPLOYMENTS[name])
        assert container["command"] == [name] and name in scripts()
        listen = next(e["value"] for e in container["env"] if e["name"] == "WALLET_LISTEN")
        assert port_of(listen) == port
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert ports == {"grpc": port, "metrics": int(CONFIG["WALLET_METRICS_PORT"])}
        # Readiness follows dependencies (service ""); startup and liveness ask for
        # the service that does not, so an outage never restarts pods.
        probe_services = {
            "startupProbe": ["liveness"],
            "readinessProbe": [],
            "livenessProbe": ["liveness"],
        }
        for probe, service_args in probe_services.items():
            command = container[probe]["exec"]["command"]
            assert command == [
                "python",
                "-m",
                "wallet_platform.server.healthcheck",
                f"127.0.0.1:{port}",
                *service_args,
            ]
        service = SERVICES[name]
        assert service["spec"]["selector"] == DEPLOYMENTS[name]["spec"]["selector"]["matchLabels"]
        targets = {p["name"]: (p["port"], p["targetPort"]) for p in service["spec"]["ports"]}
        assert targets == {"grpc": (port, "grpc"), "metrics": (METRICS_PORT, "metrics")}
    certificate = _by_kind(FULL, "Certificate")["wallet-tls"]["spec"]
    assert "127.0.0.1" in certificate["ipAddresses"]  # what the probes dial


def test_every_service_is_behind_network_policies():
    (deny,) = [p for p in POLICIES if p["metadata"]["name"] == "default-deny"]
    assert deny["spec"]["podSelector"] == {} and set(deny["spec"]["policyTypes"]) == {
        "Ingress",
        "Egress",
    }
    for service in SERVICES.values():
        selecting = [
            p for p in POLICIES
            if "Ingress" in p["spec"]["policyTypes"] and p["spec"].get("ingress")
            and selects(p["spec"]["podSelector"], service["spec"]["selector"])
        ]  # fmt: skip
        assert selecting, f"no ingress policy for Service {service['metadata']['name']}"


def _pod(name: str) -> Pod:
    workload = DEPLOYMENTS.get(name) or _by_kind(BASE, "Job")[name]
    return Pod(_pod_labels(workload))


def test_who_may_reach_whom():
    client_here = Pod(CLIENT_LABEL)
    client_there = Pod(CLIENT_LABEL, "payments", CLIENT_LABEL)
    undeclared_namespace = Pod(CLIENT_LABEL, "other")
    unlabelled = Pod({"app": "curious"})
    prometheus = Pod({"app.kubernetes.io/name": "prometheus"}, "monitoring")
    for name, port in CONTRACT_PORTS.items():
        server = _pod(name)
        assert allowed(POLICIES, client_here, server, port), name
        assert allowed(POLICIES, client_there, server, port), name
        assert not allowed(POLICIES, undeclared_namespace, server, port), name
        assert not allowed(POLICIES, unlabelled, server, port), name
        assert allowed(POLICIES, prometheus, server, METRICS_PORT), name
        assert not allowed(POLICIES, prometheus, server, port), name
        assert not allowed(POLICIES, client_here, server, METRICS_PORT), name
    wallet = _pod("wallet-service")
    assert allowed(POLICIES, _pod("saga-orchestrator"), wallet, 50051)
    for other in ("analytics-worker", "fraud-worker"):
        assert not allowed(POLICIES, _pod(other), wallet, 50051), other
        assert not allowed(POLICIES, _pod(other), _pod("saga-orchestrator"), 50052), other


def test_egress_dns_database_and_broker_as_each_process_needs():
    dns = Pod({"k8s-app": "kube-dns"}, "kube-system")
    uses_broker = {
        n for n, d in DEPLOYMENTS.items() if "WALLET_AMQP_URL" in _secret_refs(_container(d))
    }
    assert uses_broker == {"wallet-service", "analytics-worker", "fraud-worker"}
    for name in [*CONTRACT_PORTS, "wallet-migrate"]:
        pod = _pod(name)
        assert allowed(POLICIES, pod, dns, 53), name
        assert egress_outside(POLICIES, pod, 5432), name
        assert egress_outside(POLICIES, pod, 5672) == (name in uses_broker), name
        assert not egress_outside(POLICIES, pod, 443), name  # nothing else leaves
    assert not allowed(POLICIES, _pod("wallet-migrate"), _pod("wallet-service"), 50051)


def test_pod_disruption_budget_for_every_multi_replica_deployment():
    budgets = list(_by_kind(BASE, "PodDisruptionBudget").values())
    for name, deployment in DEPLOYMENTS.items():
        replicas = deployment["spec"]["replicas"]
        assert replicas >= 2, name
        labels = _pod_labels(deployment)
        (budget,) = [b for b in budgets if selects(b["spec"]["selector"], labels)]
        assert 1 <= budget["spec"]["minAvailable"] < replicas, name


def test_orchestrator_balances_round_robin_over_a_headless_service():
    target = CONFIG["WALLET_SERVICE_TARGET"]
    match = re.fullmatch(r"dns:///([\w-]+)\.(\w+)\.svc\.cluster\.local:(\d+)", target)
    assert match, target
    headless = SERVICES[match[1]]
    assert headless["spec"]["clusterIP"] == "None" and match[2] == "wallet"
    assert (
        headless["spec"]["selector"]
        == DEPLOYMENTS["wallet-service"]["spec"]["selector"]["matchLabels"]
    )
    assert int(match[3]) in {p["port"] for p in headless["spec"]["ports"]} == {50051}
    assert "round_robin" in ROUND_ROBIN[1]
    # TLS: the certificate names the headless host and every Service a client dials.
    names = set(_by_kind(FULL, "Certificate")["wallet-tls"]["spec"]["dnsNames"])
    assert target.removeprefix("dns:///").rsplit(":", 1)[0] in names
    for name in CONTRACT_PORTS:
        assert {name, f"{name}.wallet.svc", f"{name}.wallet.svc.cluster.local"} <= names


def test_migration_job_runs_walletctl_db_upgrade_first():
    job = _by_kind(BASE, "Job")["wallet-migrate"]
    container = _container(job)
    assert container["command"][0] == "walletctl" and "walletctl" in scripts()
    assert container["command"][1:] == ["db", "upgrade"]
    assert build_parser().parse_args(container["command"][1:]).handler.__name__ == "upgrade"
    assert _secret_refs(container) == {
        "WALLET_DATABASE_URL": ("wallet-secrets", "WALLET_DATABASE_URL")
    }
    assert job["spec"]["template"]["spec"]["restartPolicy"] == "Never"
    assert job["metadata"]["annotations"]["argocd.argoproj.io/hook"] == "PreSync"
    assert job["metadata"]["labels"]["app.kubernetes.io/component"] == "migration"


def test_service_monitor_scrapes_each_service_once():
    (monitor,) = _by_kind(FULL, "ServiceMonitor").values()
    spec = monitor["spec"]
    scraped = [
        s for s in SERVICES.values()
        if selects(spec["selector"], s["metadata"]["labels"])
        and any(p["name"] == spec["endpoints"][0]["port"] for p in s["spec"]["ports"])
    ]  # fmt: skip
    assert sorted(s["metadata"]["name"] for s in scraped) == sorted(CONTRACT_PORTS)
    assert spec["namespaceSelector"]["matchNames"] == ["wallet"]
