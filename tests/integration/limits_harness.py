"""Helpers of the resource-limit tests: many watch streams against a real orchestrator."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.eventually import eventually
from tests.integration.test_saga_transfers import start_orchestrator
from wallet.v1 import transfer_pb2, transfer_pb2_grpc
from wallet_platform.config import Settings
from wallet_platform.server.call_limits import CallLimiter
from wallet_platform.server.plumbing import CALL_LIMITER
from wallet_platform.server.process import RunningServer
from wallet_platform.server.status import error_reason


async def separate_channel(target: str) -> grpc.aio.Channel:
    """A connected channel with its own HTTP/2 connection (grpc shares them by default).

    Connected first, with a health check: a client that bursts more streams than the
    server's HTTP/2 limit (``WALLET_MAX_CONCURRENT_STREAMS``) before the server's
    SETTINGS frame reached it has the excess refused by HTTP/2 (REFUSED_STREAM, seen as
    UNAVAILABLE); after it, the client queues them itself.
    """
    channel = grpc.aio.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)])
    await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
    return channel


def limiter_of(server: RunningServer) -> CallLimiter:
    """The server's stream and call counters."""
    limiter: CallLimiter = server.runtime.extras[CALL_LIMITER]
    return limiter


@contextlib.asynccontextmanager
async def orchestrator(
    settings: Settings, connections: int
) -> AsyncIterator[tuple[RunningServer, CallLimiter, list[grpc.aio.Channel]]]:
    """A running orchestrator, its limiter and ``connections`` separate channels to it."""
    saga = await start_orchestrator(settings)
    channels: list[grpc.aio.Channel] = []
    try:
        channels = [await separate_channel(saga.target) for _ in range(connections)]
        yield saga, limiter_of(saga), channels
    finally:
        for channel in channels:
            await channel.close()
        await saga.stop(grace=1)


class Watches:
    """Watch streams opened round-robin over ``channels``, each read by its own task."""

    def __init__(self, channels: Sequence[grpc.aio.Channel], count: int, **call: object) -> None:
        self.calls = [
            transfer_pb2_grpc.TransferServiceStub(channels[n % len(channels)]).WatchTransfers(
                transfer_pb2.WatchTransfersRequest(), **call
            )
            for n in range(count)
        ]
        self.received: list[list[transfer_pb2.Transfer]] = [[] for _ in self.calls]
        self.readers = [asyncio.create_task(self._read(n)) for n in range(count)]

    async def _read(self, n: int) -> grpc.aio.AioRpcError | None:
        try:
            async for change in self.calls[n]:
                self.received[n].append(change.transfer)
        except grpc.aio.AioRpcError as error:
            return error
        return None

    def ended(self) -> list[grpc.aio.AioRpcError | None]:
        return [task.result() for task in self.readers if task.done()]

    def open_calls(self) -> list[grpc.aio.UnaryStreamCall]:
        return [
            call for call, task in zip(self.calls, self.readers, strict=True) if not task.done()
        ]

    async def wait_ended(self, count: int, within: float = 60.0) -> None:
        await eventually(
            lambda: sum(task.done() for task in self.readers),
            lambda ended: ended >= count,
            what=f"{count} streams ended",
            within=within,
        )

    def refusals(self) -> list[tuple[grpc.StatusCode, str | None, str]]:
        return [
            (error.code(), error_reason(error), error.details() or "")
            for error in self.ended()
            if error is not None
        ]

    async def cancel(self) -> None:
        for call in self.calls:
            call.cancel()
        await asyncio.gather(*self.readers, return_exceptions=True)
