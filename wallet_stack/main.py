"""``wallet-stack``: every service of the platform in one process (``make run``)."""

from __future__ import annotations

import importlib
from collections.abc import Sequence

from wallet_platform.runtime import Runtime
from wallet_platform.server.builder import Component
from wallet_platform.server.process import run_server

# Each module exposes ``build_components(runtime) -> Sequence[Component]``.
STACK_MODULES: tuple[str, ...] = (
    "wallet_service.bootstrap",
    "saga_orchestrator.bootstrap",
    "analytics_worker.bootstrap",
    "fraud_worker.bootstrap",
)


def build_stack(runtime: Runtime) -> Sequence[Component]:
    components: list[Component] = []
    for module_name in STACK_MODULES:
        module = importlib.import_module(module_name)
        components.extend(module.build_components(runtime))
    return components


def stack_main(argv: Sequence[str] | None = None) -> None:
    run_server(
        "wallet-stack: every wallet platform service in one process",
        role="stack",
        default_listen="127.0.0.1:50051",
        build_components=build_stack,
        argv=argv,
    )
