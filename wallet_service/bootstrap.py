"""Composition root of WalletService: one component named ``wallet``.

``wallet-service`` and ``wallet-stack`` both call :func:`build_components`; the
outbox relay (``wallet_platform.messaging.outbox.relay``, event pipeline) adds its own component.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import grpc

from wallet_platform.currency_policy import CurrencyPolicy
from wallet_platform.messaging.outbox.relay import relay_component
from wallet_platform.runtime import Runtime
from wallet_platform.server.builder import Component
from wallet_service.grpc_api import SERVICE_NAME, WalletServicer, add_to_server
from wallet_service.service import WalletService


class WalletComponent:
    """Registers the WalletService servicer; it has no background work of its own."""

    name = "wallet"

    def __init__(self, service: WalletService) -> None:
        self.service = service
        self.service_names: tuple[str, ...] = (SERVICE_NAME,)

    def add_to_server(self, server: grpc.aio.Server) -> Sequence[str]:
        add_to_server(WalletServicer(self.service), server)
        return self.service_names

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None


def build_components(runtime: Runtime) -> list[Component]:
    # Group commit (wallet_service.adapters.group_commit) is on unless WALLET_GROUP_COMMIT=0: the
    # switch exists for benchmarks (docs/benchmarks.md), not as a tuning knob.
    group_commit = os.environ.get("WALLET_GROUP_COMMIT", "1") != "0"
    try:
        currencies = CurrencyPolicy.from_setting(runtime.settings.currencies)
    except ValueError as error:
        raise SystemExit(str(error)) from None
    return [
        WalletComponent(
            WalletService(runtime.db, group_commit=group_commit, currencies=currencies)
        ),
        relay_component(runtime),
    ]
