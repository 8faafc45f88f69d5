"""deploy/ checked against the code: Docker is not available here, so test what we can.

Every file parses; every command is a console script of pyproject; every WALLET_*
variable exists in ``wallet_platform.config.OPTIONS``; ports match the contract defaults
(and the code's own defaults); probes and Services point at the right ports; the
orchestrator and workers run two replicas; every metric the Grafana dashboard queries is
registered by the code.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import re
import tomllib
from pathlib import Path

import pytest
import yaml
from prometheus_client import REGISTRY

import wallet_platform.observability.metrics  # registers the platform's metrics
from wallet_platform.config import OPTIONS

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"

# CONTRACT.md: console script -> default listen port.
CONTRACT_PORTS = {
    "wallet-service": 50051,
    "saga-orchestrator": 50052,
    "analytics-worker": 50053,
    "fraud-worker": 50054,
}
SCALED_OUT = {"saga-orchestrator", "analytics-worker", "fraud-worker"}
ENV_NAMES = {option.env for option in OPTIONS}


def _scripts() -> dict[str, str]:
    with open(ROOT / "pyproject.toml", "rb") as handle:
        return tomllib.load(handle)["project"]["scripts"]


def _yaml_docs(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def _port(listen: str) -> int:
    return int(listen.rsplit(":", 1)[1])


def _wallet_env_names(mapping: dict) -> set[str]:
    return {name for name in mapping if name.startswith("WALLET_")}


@pytest.mark.parametrize("script", sorted(CONTRACT_PORTS))
def test_contract_ports_are_the_code_defaults(script):
    """The deploy tests trust CONTRACT_PORTS: check it against each main() first."""
    module_name = _scripts()[script].split(":")[0]
    source = Path(importlib.util.find_spec(module_name).origin).read_text()
    literal = re.search(r'default_listen="[^"]*:(\d+)"', source)
    if literal:
        port = int(literal.group(1))
    else:
        module = importlib.import_module(module_name)
        port = _port(module.DEFAULT_LISTEN)
    assert port == CONTRACT_PORTS[script]


def test_every_deploy_file_parses():
    files = sorted(p for p in DEPLOY.rglob("*") if p.suffix in (".yml", ".yaml", ".json"))
    assert len(files) >= 10
    for path in files:
        if path.suffix == ".json":
            json.loads(path.read_text())
        else:
            assert _yaml_docs(path), path


def test_dockerfile_builds_from_real_paths_and_runs_a_script():
    text = (DEPLOY / "Dockerfile").read_text()
    for source in re.findall(r"^COPY (?!--from)(\S+) ", text, flags=re.MULTILINE):
        assert (ROOT / source).exists() or source == "README.md", source
    cmd = json.loads(re.search(r"^CMD (\[.*\])$", text, flags=re.MULTILINE).group(1))
    assert cmd[0] in _scripts()
    exposed = {int(p) for p in re.search(r"^EXPOSE (.*)$", text, flags=re.MULTILINE)[1].split()}
    assert set(CONTRACT_PORTS.values()) <= exposed
    for name in re.findall(r"\b(WALLET_[A-Z_]+)=", text):
        assert name in ENV_NAMES, name
    assert "wallet_platform.server.healthcheck" in text


def test_dockerfile_installs_only_locked_packages_and_builds_in_its_own_stage():
    """Every pip step installs the hashed lock or this repository's wheels, nothing else.

    tests/e2e/test_docker_image_steps.py runs these steps; this checks their shape.
    """
    text = re.sub(r"\\\n\s*", " ", (DEPLOY / "Dockerfile").read_text())
    build, runtime = re.split(r"^FROM ", text, flags=re.MULTILINE)[1:]
    assert build.startswith("python:3.11-slim AS build") and runtime.startswith("python:3.11-")
    steps = [s.strip() for s in re.findall(r"^RUN (.*)$", text, re.MULTILINE)]
    pip_steps = [p.strip() for step in steps for p in step.split("&&") if "pip " in p]
    assert pip_steps.pop() == "pip uninstall --yes setuptools wheel"  # the base image's
    assert len(pip_steps) == 4
    for step in pip_steps:
        assert "--no-deps" in step, step
        if " -r " in step:
            assert "--require-hashes" in step, step
        else:  # this repository's two packages, built here or in the build stage
            assert step.endswith(("./clients/python .", "/wheels/*.whl")), step
    assert "-r requirements/build.txt" in build and "requirements/runtime.txt" not in build
    assert "-r /tmp/runtime.txt" in runtime and "build.txt" not in runtime
    # The runtime stage takes the runtime lock and the wheels, and no source or tool.
    copies = re.findall(r"^COPY (.*)$", runtime, re.MULTILINE)
    assert copies == ["requirements/runtime.txt /tmp/runtime.txt", "--from=build /wheels /wheels"]
    assert "grpc_tools" not in runtime and "grpcio-tools" not in runtime


def test_compose_services_commands_env_ports_and_health():
    compose = _yaml_docs(DEPLOY / "docker-compose.yml")[0]
    services = compose["services"]
    assert {"postgres", "rabbitmq", *CONTRACT_PORTS} <= set(services)
    scripts = _scripts()
    for name, port in CONTRACT_PORTS.items():
        service = services[name]
        assert service["command"][0] == name and name in scripts
        env = service["environment"]
        assert _wallet_env_names(env) <= ENV_NAMES, _wallet_env_names(env) - ENV_NAMES
        assert {"WALLET_DATABASE_URL", "WALLET_AMQP_URL", "WALLET_METRICS_PORT"} <= set(env)
        assert _port(env["WALLET_LISTEN"]) == port
        assert f"{port}:{port}" in service["ports"]
        health = service["healthcheck"]["test"]
        assert health[:4] == ["CMD", "python", "-m", "wallet_platform.server.healthcheck"]
        assert _port(health[4]) == port
        assert service["image"] == "wallet-platform:latest"
        assert service["build"]["dockerfile"] == "deploy/Dockerfile"
        for dependency, condition in service["depends_on"].items():
            assert dependency in services and condition["condition"] == "service_healthy"
        assert env["WALLET_DATABASE_URL"].startswith("postgresql+psycopg://")
        assert env["WALLET_AMQP_URL"].startswith("amqp://")
    orchestrator_env = services["saga-orchestrator"]["environment"]
    assert orchestrator_env["WALLET_SERVICE_TARGET"] == "wallet-service:50051"
    for infra in ("postgres", "rabbitmq"):
        assert "healthcheck" in services[infra]


def test_kubernetes_deployments_services_and_probes():
    kustomization = _yaml_docs(K8S / "kustomization.yaml")[0]
    docs = []
    for resource in kustomization["resources"]:
        docs.extend(_yaml_docs(K8S / resource))
    config = {d["metadata"]["name"]: d for d in docs if d["kind"] in ("ConfigMap", "Secret")}
    configured = set(config["wallet-config"]["data"]) | set(config["wallet-secrets"]["stringData"])
    assert configured <= ENV_NAMES, configured - ENV_NAMES
    assert config["wallet-config"]["data"]["WALLET_SERVICE_TARGET"] == "wallet-service:50051"
    deployments = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Deployment"}
    k8s_services = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Service"}
    assert set(deployments) == set(CONTRACT_PORTS) == set(k8s_services)
    metrics_port = int(config["wallet-config"]["data"]["WALLET_METRICS_PORT"])
    for name, port in CONTRACT_PORTS.items():
        deployment = deployments[name]
        if name in SCALED_OUT:
            assert deployment["spec"]["replicas"] == 2
        pod = deployment["spec"]["template"]
        assert pod["metadata"]["annotations"]["prometheus.io/port"] == str(metrics_port)
        (container,) = pod["spec"]["containers"]
        assert container["command"] == [name] and name in _scripts()
        env = {e["name"]: e["value"] for e in container["env"]}
        assert set(env) <= ENV_NAMES and _port(env["WALLET_LISTEN"]) == port
        refs = {next(iter(r.values()))["name"] for r in container["envFrom"]}
        assert refs == {"wallet-config", "wallet-secrets"}
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert ports == {"grpc": port, "metrics": metrics_port}
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert container[probe]["grpc"]["port"] == port, (name, probe)
        service = k8s_services[name]
        assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
        assert pod["metadata"]["labels"].items() >= service["spec"]["selector"].items()
        targets = {p["name"]: (p["port"], p["targetPort"]) for p in service["spec"]["ports"]}
        assert targets == {"grpc": (port, "grpc"), "metrics": (metrics_port, "metrics")}


def _registered_sample_names() -> set[str]:
    names = set()
    for family in REGISTRY.collect():
        if family.type == "counter":
            names.update({family.name + "_total", family.name + "_created"})
        elif family.type == "histogram":
            names.update(family.name + suffix for suffix in ("_bucket", "_count", "_sum"))
        else:
            names.add(family.name)
    return names


def test_dashboard_queries_only_registered_metrics():
    dashboard = json.loads((DEPLOY / "grafana/dashboards/wallet-platform.json").read_text())
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]
    assert len(exprs) >= 15
    used = {name for expr in exprs for name in re.findall(r"\b(wallet_[a-z0-9_]+)", expr)}
    registered = _registered_sample_names()
    assert used <= registered, used - registered
    assert used <= wallet_platform.observability.metrics.METRIC_NAMES
    # And every name in METRIC_NAMES (documented in docs/operations.md) is registered.
    ours = {name for name in registered if name.startswith("wallet_")}
    assert ours >= wallet_platform.observability.metrics.METRIC_NAMES
    # The dashboard covers every family the issue asks for.
    for needed in (
        "wallet_grpc_server_handled_total",
        "wallet_grpc_server_handling_seconds_bucket",
        "wallet_sagas",
        "wallet_saga_oldest_unfinished_age_seconds",
        "wallet_outbox_pending",
        "wallet_outbox_oldest_pending_age_seconds",
        "wallet_consumer_queue_messages",
        "wallet_dlq_messages",
    ):
        assert needed in used, needed


def test_prometheus_scrapes_the_compose_services_on_the_metrics_port():
    config = _yaml_docs(DEPLOY / "prometheus/prometheus.yml")[0]
    compose = _yaml_docs(DEPLOY / "docker-compose.yml")[0]["services"]
    (static_job,) = [j for j in config["scrape_configs"] if j["job_name"] == "wallet"]
    targets = {t for group in static_job["static_configs"] for t in group["targets"]}
    expected = {
        f"{name}:{compose[name]['environment']['WALLET_METRICS_PORT']}" for name in CONTRACT_PORTS
    }
    assert targets == expected
    grafana = compose["grafana"]["volumes"]
    for volume in grafana:
        assert (DEPLOY / volume.split(":")[0]).exists(), volume
