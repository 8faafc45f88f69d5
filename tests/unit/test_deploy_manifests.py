"""deploy/ checked against the code: Docker is not available here, so test what we can.

Every file parses; every command is a console script of pyproject; every WALLET_*
variable exists in ``wallet_platform.config.OPTIONS``; ports match the contract defaults
(and the code's own defaults); the dashboard queries only registered metrics. The
Compose file is secure by default: nothing published beyond 127.0.0.1, no fixed
password or token anywhere in it, every platform server with TLS and a token table
from the generated secrets, the orchestrator with its own token, migrations before the
services. Kubernetes: test_deploy_kubernetes.py; alerts: test_deploy_alerts.py; the
generated secrets used for real: tests/integration/test_deploy_compose_secrets.py.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import re
from pathlib import Path
from typing import Any

import pytest

import wallet_platform.observability.metrics as metrics
from tests.unit.deploy_files import (
    COMPOSE_FILE,
    CONTRACT_PORTS,
    DEPLOY,
    ENV_NAMES,
    INSECURE_ENV,
    SECRET_ENV,
    compose_services,
    port_of,
    registered_sample_names,
    scripts,
    yaml_docs,
)
from walletctl.cli import build_parser

SECRETS_MOUNT = "/run/wallet-secrets"
WRAPPER = DEPLOY / "compose" / "with-secrets.sh"
INIT = DEPLOY / "compose" / "init-secrets.sh"
ADMIN_OVERRIDE = DEPLOY / "docker-compose.admin.yml"


def _search(pattern: str, text: str) -> re.Match[str]:
    """The first match of ``pattern`` (multi-line) in ``text``, which must have one."""
    match = re.search(pattern, text, flags=re.MULTILINE)
    assert match is not None, pattern
    return match


@pytest.mark.parametrize("script", sorted(CONTRACT_PORTS))
def test_contract_ports_are_the_code_defaults(script):
    """The deploy tests trust CONTRACT_PORTS: check it against each main() first."""
    module_name = scripts()[script].split(":")[0]
    spec = importlib.util.find_spec(module_name)
    assert spec is not None and spec.origin is not None, module_name
    source = Path(spec.origin).read_text()
    literal = re.search(r'default_listen="[^"]*:(\d+)"', source)
    if literal:
        port = int(literal.group(1))
    else:
        module = importlib.import_module(module_name)
        port = port_of(module.DEFAULT_LISTEN)
    assert port == CONTRACT_PORTS[script]


def test_every_deploy_file_parses():
    files = sorted(p for p in DEPLOY.rglob("*") if p.suffix in (".yml", ".yaml", ".json"))
    assert len(files) >= 20
    for path in files:
        if path.suffix == ".json":
            json.loads(path.read_text())
        else:
            assert yaml_docs(path), path


def test_dockerfile_builds_from_real_paths_and_runs_a_script():
    text = (DEPLOY / "Dockerfile").read_text()
    for source in re.findall(r"^COPY (?!--from)(\S+) ", text, flags=re.MULTILINE):
        assert (DEPLOY.parent / source).exists() or source == "README.md", source
    cmd = json.loads(_search(r"^CMD (\[.*\])$", text).group(1))
    assert cmd[0] in scripts()
    exposed = {int(p) for p in _search(r"^EXPOSE (.*)$", text)[1].split()}
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


# --- Compose ------------------------------------------------------------------------


def _published(service: dict[str, Any]) -> list[tuple[str, str]]:
    """(host address, container port) of every published port, short or long syntax."""
    found = []
    for entry in service.get("ports", []):
        if isinstance(entry, dict):
            found.append((str(entry.get("host_ip", "")), str(entry["target"])))
            continue
        parts = str(entry).split(":")
        host = parts[0] if len(parts) == 3 else ""  # "HOST:PUB:TARGET" or "PUB:TARGET"
        found.append((host, parts[-1].split("/")[0]))
    return found


def _generated_files() -> set[str]:
    """The files init-secrets.sh writes into the secrets volume."""
    text = INIT.read_text()
    names = set(re.findall(r"^(?:keep|derive) ([\w.-]+) ", text, flags=re.MULTILINE))
    names |= set(re.findall(r'"\$out/([\w.-]+)"', text))
    return names


def test_compose_publishes_nothing_beyond_loopback():
    for path in (COMPOSE_FILE, ADMIN_OVERRIDE):
        for name, service in compose_services(path).items():
            for host, target in _published(service):
                assert host == "127.0.0.1", f"{path.name}: {name} publishes :{target} on {host!r}"
    services = compose_services()
    for infra in ("postgres", "rabbitmq"):
        assert not services[infra].get("ports"), f"{infra} is published by default"
    published = {name: _published(s) for name, s in services.items() if s.get("ports")}
    for name, port in CONTRACT_PORTS.items():
        assert published[name] == [("127.0.0.1", str(port))]
    # The admin override publishes exactly PostgreSQL and the RabbitMQ management UI.
    admin = {name: _published(s) for name, s in compose_services(ADMIN_OVERRIDE).items()}
    assert admin == {"postgres": [("127.0.0.1", "5432")], "rabbitmq": [("127.0.0.1", "15672")]}


def _all_env(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {str(k): str(v) for k, v in env.items()}


def test_compose_holds_no_password_token_or_insecure_switch():
    text = COMPOSE_FILE.read_text()
    assert INSECURE_ENV not in text
    assert not re.search(r"://[^/\s:@$]+:[^@\s$]+@", text), "a URL with a literal password"
    assert not re.search(r"\b[0-9a-f]{32,}\b", text), "something that looks like a key"
    services = compose_services()
    for name, service in services.items():
        env = _all_env(service)
        assert not SECRET_ENV & set(env), f"{name} sets {SECRET_ENV & set(env)} literally"
        for key, value in env.items():
            if re.search(r"PASS|SECRET|TOKEN", key):
                assert key.endswith(("_FILE", "_DIR")), f"{name}: {key} is set literally"
            if key.endswith("_FILE"):  # a file of the secrets volume, by path or by name
                path = value if "/" in value else f"{SECRETS_MOUNT}/{value}"
                assert path.startswith(SECRETS_MOUNT + "/"), (name, key, value)
                assert path.rsplit("/", 1)[1] in _generated_files(), (name, key, value)
    assert _all_env(services["postgres"])["POSTGRES_PASSWORD_FILE"].endswith("/postgres-password")
    rabbit = services["rabbitmq"]
    assert "RABBITMQ_DEFAULT_PASS" not in _all_env(rabbit)
    assert f"{SECRETS_MOUNT}/rabbitmq-password" in " ".join(rabbit["entrypoint"])
    grafana = _all_env(services["grafana"])
    assert grafana["GF_SECURITY_ADMIN_PASSWORD__FILE"].endswith("/grafana-admin-password")


def test_compose_servers_run_with_tls_and_their_own_tokens():
    services = compose_services()
    generated = _generated_files()
    wrapper = WRAPPER.read_text()
    init = INIT.read_text()
    for name, port in CONTRACT_PORTS.items():
        service = services[name]
        assert service["command"] == [name] and name in scripts()
        assert service["image"] == "wallet-platform:latest"
        assert service["build"]["dockerfile"] == "deploy/Dockerfile"
        env = _all_env(service)
        wallet_names = {k for k in env if k.startswith("WALLET_")}
        assert wallet_names <= ENV_NAMES, wallet_names - ENV_NAMES
        assert port_of(env["WALLET_LISTEN"]) == port
        for variable, file in (
            ("WALLET_TLS_CERT", "server.crt"),
            ("WALLET_TLS_KEY", "server.key"),
            ("WALLET_TLS_CA", "ca.crt"),
        ):
            assert env[variable] == f"{SECRETS_MOUNT}/{file}" and file in generated
        # The wrapper turns the token table named here into WALLET_AUTH_TOKENS.
        assert service["entrypoint"] == ["/bin/sh", "/opt/wallet/with-secrets.sh"]
        assert "./compose/with-secrets.sh:/opt/wallet/with-secrets.sh:ro" in service["volumes"]
        assert f"wallet-secrets:{SECRETS_MOUNT}:ro" in service["volumes"]
        assert env["SERVER_TOKENS_FILE"] in generated
        assert service["read_only"] is True and service["cap_drop"] == ["ALL"]
        health = service["healthcheck"]["test"]
        assert health[:4] == ["CMD", "python", "-m", "wallet_platform.server.healthcheck"]
        assert port_of(health[4]) == port
        assert set(service["depends_on"]) <= set(services)
        assert service["depends_on"]["migrate"] == {"condition": "service_completed_successfully"}
        expected_client_token = "orchestrator.token" if name == "saga-orchestrator" else None
        assert env.get("CLIENT_TOKEN_FILE") == expected_client_token, name
    for variable in ("WALLET_DATABASE_URL", "WALLET_AMQP_URL", "WALLET_AUTH_TOKENS"):
        assert f"{variable}=$(secret" in wrapper
    assert 'WALLET_AUTH_TOKEN=$(secret "$CLIENT_TOKEN_FILE")' in wrapper
    # Only WalletService accepts the orchestrator's token (its table is the only one with it).
    assert services["wallet-service"]["environment"]["SERVER_TOKENS_FILE"] == "wallet-service.auth"
    assert "$orchestrator=orchestrator@" in init.split("derive wallet-service.auth")[1]
    assert "$orchestrator" not in init.split("derive services.auth")[1].split("\n")[0]
    # The orchestrator dials a name its TLS certificate carries.
    target = _all_env(services["saga-orchestrator"])["WALLET_SERVICE_TARGET"]
    assert target == "wallet-service:50051"
    names = _search(r"server_names=\$\{SERVER_NAMES:-([^}]*)\}", init)[1].split()
    assert set(CONTRACT_PORTS) <= set(names)


def test_compose_order_secrets_then_infrastructure_then_migrations_then_servers():
    services = compose_services()
    done = {"condition": "service_completed_successfully"}
    for name in ("postgres", "rabbitmq", "migrate", "grafana"):
        assert services[name]["depends_on"]["secrets"] == done, name
    secrets = services["secrets"]
    assert secrets["command"] == ["/bin/sh", "/opt/wallet/init-secrets.sh"]
    assert "wallet-ca:/run/wallet-ca" in secrets["volumes"]
    for name, service in services.items():
        if name != "secrets":  # the CA key stays with the service that signs
            assert "wallet-ca" not in " ".join(service.get("volumes", [])), name
    migrate = services["migrate"]
    assert migrate["command"] == ["walletctl", "db", "upgrade"]
    assert build_parser().parse_args(migrate["command"][1:]).handler.__name__ == "upgrade"
    assert migrate["depends_on"]["postgres"] == {"condition": "service_healthy"}
    assert migrate["restart"] == "no"


def test_dashboard_queries_only_registered_metrics():
    dashboard = json.loads((DEPLOY / "grafana/dashboards/wallet-platform.json").read_text())
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]
    assert len(exprs) >= 15
    used = {name for expr in exprs for name in re.findall(r"\b(wallet_[a-z0-9_]+)", expr)}
    registered = registered_sample_names()
    assert used <= registered, used - registered
    assert used <= metrics.METRIC_NAMES
    # And every name in METRIC_NAMES (documented in docs/operations.md) is registered.
    ours = {name for name in registered if name.startswith("wallet_")}
    assert ours >= metrics.METRIC_NAMES
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


def test_prometheus_scrapes_the_compose_services_and_loads_the_alerts():
    config = yaml_docs(DEPLOY / "prometheus/prometheus.yml")[0]
    compose = compose_services()
    (static_job,) = [j for j in config["scrape_configs"] if j["job_name"] == "wallet"]
    targets = {t for group in static_job["static_configs"] for t in group["targets"]}
    expected = {
        f"{name}:{compose[name]['environment']['WALLET_METRICS_PORT']}" for name in CONTRACT_PORTS
    }
    assert targets == expected
    for volume in compose["grafana"]["volumes"] + compose["prometheus"]["volumes"]:
        source = volume.split(":")[0]
        assert source.startswith("wallet-") or (DEPLOY / source).exists(), volume
    # rule_files are relative to the config file: Compose mounts both side by side.
    mounts = dict(v.split(":")[:2][::-1] for v in compose["prometheus"]["volumes"])
    config_dir = Path("/etc/prometheus/prometheus.yml").parent
    assert config["rule_files"] == ["alerts.yml"]
    assert mounts[str(config_dir / "alerts.yml")] == "./prometheus/alerts.yml"
    assert compose["prometheus"]["profiles"] == ["monitoring"]


def test_the_monitoring_profile_collects_traces_when_asked() -> None:
    """Jaeger runs with the monitoring profile (UI on loopback); every service sends its
    spans there once OTEL_TRACES_EXPORTER=otlp is given, and none by default."""
    compose = compose_services()
    assert compose["jaeger"]["profiles"] == ["monitoring"]
    assert compose["jaeger"]["ports"] == ["127.0.0.1:16686:16686"]
    for name in CONTRACT_PORTS:
        env = compose[name]["environment"]
        assert env["OTEL_TRACES_EXPORTER"] == "${OTEL_TRACES_EXPORTER:-none}"
        assert env["OTEL_EXPORTER_OTLP_ENDPOINT"].endswith("http://jaeger:4317}")
