"""The stubs the load generator calls, spread over several connections.

A gRPC channel is one HTTP/2 connection, and a server started with ``--workers N``
shares its port between processes with SO_REUSEPORT: the kernel spreads
*connections*, not requests. So the bench opens ``connections`` channels per target
(each with a distinct channel argument, which stops gRPC from sharing one subchannel
between them) and deals requests over them round-robin.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import grpc

from wallet.v1 import (
    analytics_pb2_grpc,
    transfer_pb2_grpc,
    wallet_pb2_grpc,
)
from wallet_platform.channels import make_channel

DEFAULT_CONNECTIONS = 8


@dataclass(frozen=True)
class Targets:
    """Where each service is; a ``wallet-stack`` serves all three on one address."""

    wallet: str
    transfer: str
    analytics: str

    @classmethod
    def single(cls, target: str) -> Targets:
        return cls(wallet=target, transfer=target, analytics=target)


def _open(target: str, index: int, settings: Any) -> grpc.aio.Channel:
    options = [("wallet_bench.connection", index), ("grpc.use_local_subchannel_pool", 1)]
    needs_helper = bool(
        getattr(settings, "tls_ca", "")
        or getattr(settings, "tls_client_cert", "")
        or getattr(settings, "auth_token", "")
    )
    if needs_helper:
        return make_channel(target, settings, options=options)
    # Plaintext without a token: a bare channel, no client interceptor on the hot path.
    return grpc.aio.insecure_channel(target, options=options)


class Clients:
    """Round-robin stubs for the three services the bench talks to."""

    def __init__(self, targets: Targets, settings: Any, connections: int = DEFAULT_CONNECTIONS):
        self.targets = targets
        self._channels: list[grpc.aio.Channel] = []
        self._wallet = self._stubs(targets.wallet, connections, settings, wallet_pb2_grpc)
        self._transfer = self._stubs(targets.transfer, connections, settings, transfer_pb2_grpc)
        # Load goes to the first two; analytics is only read by the checks at the end.
        self._load_channels = len(self._channels)
        self._analytics = self._stubs(targets.analytics, 1, settings, analytics_pb2_grpc)

    def _stubs(self, target: str, count: int, settings: Any, module: Any) -> Iterator[Any]:
        stub_class = {
            wallet_pb2_grpc: "WalletServiceStub",
            transfer_pb2_grpc: "TransferServiceStub",
            analytics_pb2_grpc: "AnalyticsServiceStub",
        }[module]
        stubs = []
        for index in range(max(1, count)):
            channel = _open(target, index, settings)
            self._channels.append(channel)
            stubs.append(getattr(module, stub_class)(channel))
        return itertools.cycle(stubs)

    @property
    def wallet(self) -> wallet_pb2_grpc.WalletServiceStub:
        return next(self._wallet)

    @property
    def transfer(self) -> transfer_pb2_grpc.TransferServiceStub:
        return next(self._transfer)

    @property
    def analytics(self) -> analytics_pb2_grpc.AnalyticsServiceStub:
        return next(self._analytics)

    async def wait_ready(self, timeout_s: float = 30.0) -> None:
        for channel in self._channels[: self._load_channels]:
            await asyncio.wait_for(channel.channel_ready(), timeout_s)

    async def close(self) -> None:
        for channel in self._channels:
            await channel.close()
