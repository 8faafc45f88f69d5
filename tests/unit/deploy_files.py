"""What the deploy tests share: where deploy/ is, how to read it, and the facts of the
code the manifests must agree with (console scripts, settings, ports, metric names)."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import yaml
from prometheus_client import REGISTRY

import wallet_platform.observability.metrics  # noqa: F401  (registers the platform's metrics)
from wallet_platform.config import OPTIONS
from wallet_platform.observability import tracing

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
COMPOSE_FILE = DEPLOY / "docker-compose.yml"

# console script -> default listen port (checked against each main() by a test).
CONTRACT_PORTS = {
    "wallet-service": 50051,
    "saga-orchestrator": 50052,
    "analytics-worker": 50053,
    "fraud-worker": 50054,
}
# The settings, and the OpenTelemetry variables tracing is configured by.
ENV_NAMES = {option.env for option in OPTIONS} | set(tracing.VARIABLES)
# Variables that carry secret values: never a literal in a manifest.
SECRET_ENV = {"WALLET_DATABASE_URL", "WALLET_AMQP_URL", "WALLET_AUTH_TOKENS", "WALLET_AUTH_TOKEN"}
INSECURE_ENV = "WALLET_ALLOW_INSECURE"


def scripts() -> dict[str, str]:
    with open(ROOT / "pyproject.toml", "rb") as handle:
        return dict(tomllib.load(handle)["project"]["scripts"])


def yaml_docs(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def compose_services(path: Path = COMPOSE_FILE) -> dict[str, dict[str, Any]]:
    return dict(yaml_docs(path)[0]["services"])


def port_of(listen: str) -> int:
    return int(listen.rsplit(":", 1)[1])


def registered_sample_names() -> set[str]:
    """Every sample name the platform's metrics produce (``_total``, ``_bucket`` ...)."""
    names = set()
    for family in REGISTRY.collect():
        if family.type == "counter":
            names.update({family.name + "_total", family.name + "_created"})
        elif family.type == "histogram":
            names.update(family.name + suffix for suffix in ("_bucket", "_count", "_sum"))
        else:
            names.add(family.name)
    return names
