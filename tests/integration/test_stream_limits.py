"""Stream and call caps against real servers: floods are refused, unary calls answer.

A saga orchestrator (and, where a transfer is made, a WalletService) run in this
process on ephemeral ports; the watch streams come from real gRPC channels, some
sharing one HTTP/2 connection, some on separate ones. The server's own counters
(``CallLimiter``) show when slots are held and released.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.eventually import eventually
from tests.integration.limits_harness import Watches, limiter_of, orchestrator
from tests.integration.test_saga_transfers import (
    new_wallet,
    saga_settings,
    start_wallet_service,
)
from wallet.v1 import transfer_pb2, transfer_pb2_grpc, wallet_pb2, wallet_pb2_grpc
from wallet_client.errors import server_retry_delay
from wallet_platform import failpoints
from wallet_platform.config import Settings
from wallet_platform.server.call_limits import TooManyCallsError, TooManyStreamsError
from wallet_platform.server.process import RunningServer, start_server
from wallet_platform.server.status import error_reason
from wallet_service.bootstrap import build_components as wallet_components

RESOURCE_EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED


async def unary_calls_answer(channel: grpc.aio.Channel) -> None:
    """A read, a list and a health check on ``channel`` all answer, within 10 s."""
    stub = transfer_pb2_grpc.TransferServiceStub(channel)
    await stub.GetTransferSummary(transfer_pb2.GetTransferSummaryRequest(), timeout=10)
    await stub.ListTransfers(transfer_pb2.ListTransfersRequest(page_size=5), timeout=10)
    health = health_pb2_grpc.HealthStub(channel)
    checked = await health.Check(health_pb2.HealthCheckRequest(), timeout=10)
    assert checked.status == health_pb2.HealthCheckResponse.SERVING


@pytest.fixture
async def wallet_server(database_url: str) -> AsyncIterator[RunningServer]:
    server = await start_wallet_service(database_url)
    yield server
    await server.stop(grace=1)


async def test_streams_past_the_server_cap_are_refused_and_unary_calls_answer(
    database_url: str, wallet_server: RunningServer
) -> None:
    """500 streams over five connections against a cap of 50: 450 refused at once, the
    50 open ones still get changes, unary calls answer; closed slots can be reused."""
    settings = saga_settings(database_url, wallet_server.target, max_streams=50)
    async with orchestrator(settings, connections=5) as (_saga, limiter, channels):
        first = Watches(channels, 5)  # one per channel: five connections, five peers
        await asyncio.gather(*(call.initial_metadata() for call in first.calls))
        assert len(limiter._streams_by_peer) == 5
        watches = Watches(channels, 495)
        await watches.wait_ended(450)
        await asyncio.gather(*(call.initial_metadata() for call in watches.open_calls()))
        assert limiter.open_streams == 50 and len(watches.open_calls()) == 45
        refusals = watches.refusals()
        assert len(refusals) == 450
        assert {(code, reason) for code, reason, _ in refusals} == {
            (RESOURCE_EXHAUSTED, "TOO_MANY_STREAMS")
        }
        assert "(WALLET_MAX_STREAMS)" in refusals[0][2]
        delays = {server_retry_delay(error) for error in watches.ended() if error is not None}
        assert delays == {TooManyStreamsError.retry_after} == {5.0}
        for channel in channels:
            await unary_calls_answer(channel)

        # The 50 open streams still work: a transfer reaches every one of them.
        async with grpc.aio.insecure_channel(wallet_server.target) as wallet_channel:
            wallets = wallet_pb2_grpc.WalletServiceStub(wallet_channel)
            source = await new_wallet(wallets, 100)
            target = await new_wallet(wallets)
        made = await transfer_pb2_grpc.TransferServiceStub(channels[0]).CreateTransfer(
            transfer_pb2.CreateTransferRequest(
                request_id="limits-1", from_wallet_id=source, to_wallet_id=target, amount=5
            )
        )
        assert made.transfer.state == transfer_pb2.TRANSFER_STATE_COMPLETED
        open_indexes = [n for n, task in enumerate(watches.readers) if not task.done()]
        await eventually(
            lambda: [
                any(t.state == transfer_pb2.TRANSFER_STATE_COMPLETED for t in watches.received[n])
                for n in open_indexes
            ],
            all,
            what="the completed transfer on every open stream",
        )

        # Closing the streams frees their slots: the cap is available again, exactly.
        await first.cancel()
        await watches.cancel()
        await eventually(lambda: limiter.open_streams, lambda n: n == 0, what="open_streams == 0")
        again = Watches(channels, 51)
        await again.wait_ended(1)
        await asyncio.gather(*(call.initial_metadata() for call in again.open_calls()))
        assert limiter.open_streams == 50
        assert [code for code, _, _ in again.refusals()] == [RESOURCE_EXHAUSTED]
        await again.cancel()
        await eventually(lambda: limiter.open_streams, lambda n: n == 0, what="open_streams == 0")


async def test_one_connection_cannot_take_more_than_its_share(
    database_url: str, wallet_server: RunningServer
) -> None:
    """500 streams on ONE connection against a per-connection cap of 50: 450 refused,
    unary calls on that same connection answer, another connection still gets streams."""
    settings = saga_settings(
        database_url, wallet_server.target, max_streams=1000, max_streams_per_connection=50
    )
    async with orchestrator(settings, connections=2) as (_saga, limiter, (crowded, other)):
        watches = Watches([crowded], 500)
        await watches.wait_ended(450)
        await asyncio.gather(*(call.initial_metadata() for call in watches.open_calls()))
        assert limiter.open_streams == 50
        refusals = watches.refusals()
        assert len(refusals) == 450
        assert {(code, reason) for code, reason, _ in refusals} == {
            (RESOURCE_EXHAUSTED, "TOO_MANY_STREAMS")
        }
        assert "WALLET_MAX_STREAMS_PER_CONNECTION" in refusals[0][2]
        await unary_calls_answer(crowded)
        elsewhere = Watches([other], 10)
        await asyncio.gather(*(call.initial_metadata() for call in elsewhere.calls))
        assert limiter.open_streams == 60 and not elsewhere.ended()
        await elsewhere.cancel()
        await watches.cancel()
        await eventually(lambda: limiter.open_streams, lambda n: n == 0, what="open_streams == 0")


async def test_deadline_and_server_stop_release_stream_slots(
    database_url: str, wallet_server: RunningServer
) -> None:
    settings = saga_settings(database_url, wallet_server.target, max_streams=20)
    async with orchestrator(settings, connections=1) as (saga, limiter, (channel,)):
        # A deadline ends the streams on the server too: the slots come back.
        expiring = Watches([channel], 20, timeout=1.5)
        await asyncio.gather(*(call.initial_metadata() for call in expiring.calls))
        assert limiter.open_streams == 20
        await expiring.wait_ended(20)
        assert {code for code, _, _ in expiring.refusals()} == {grpc.StatusCode.DEADLINE_EXCEEDED}
        await eventually(lambda: limiter.open_streams, lambda n: n == 0, what="open_streams == 0")

        # A server stop ends open streams (UNAVAILABLE: resubscribe) and frees them.
        staying = Watches([channel], 20)
        await asyncio.gather(*(call.initial_metadata() for call in staying.calls))
        assert limiter.open_streams == 20
        await saga.stop(grace=5)
        await staying.wait_ended(20, within=10)
        assert {code for code, _, _ in staying.refusals()} == {grpc.StatusCode.UNAVAILABLE}
        assert limiter.open_streams == 0


async def test_the_default_caps_hold_against_a_flood(tmp_path: Path) -> None:
    """The defaults: 100 streams per connection, 1,000 per server; unary calls answer.
    (One backend: the caps do not touch the database; no transfer is made.)"""
    database_url = f"sqlite:///{tmp_path / 'wallet.db'}"
    settings = saga_settings(database_url, "127.0.0.1:1")
    async with orchestrator(settings, connections=11) as (_saga, limiter, channels):
        assert limiter.limits.max_streams == 1000
        assert limiter.limits.max_streams_per_connection == 100
        one_connection = Watches(channels[:1], 500)
        await one_connection.wait_ended(400)
        assert limiter.open_streams == 100
        many = Watches(channels[1:], 1000)  # 100 on each of ten more connections
        await many.wait_ended(100)
        assert limiter.open_streams == 1000
        assert {c for c, _, _ in [*one_connection.refusals(), *many.refusals()]} == {
            RESOURCE_EXHAUSTED
        }
        await unary_calls_answer(channels[0])
        await unary_calls_answer(channels[-1])
        await one_connection.cancel()
        await many.cancel()
        await eventually(lambda: limiter.open_streams, lambda n: n == 0, what="open_streams == 0")


async def test_unary_calls_past_their_cap_are_refused_but_health_answers(
    settings: Settings,
) -> None:
    """Three slow deposits fill a unary cap of 3: more calls are refused at once with
    TOO_MANY_CALLS, the health check still answers, and the slots come back."""
    server = await start_server(
        settings.replace(max_unary_calls=3, failpoints="wallet.after_commit=sleep(1500)"),
        wallet_components,
        role="wallet-service",
    )
    limiter = limiter_of(server)
    try:
        async with grpc.aio.insecure_channel(server.target) as channel:
            stub = wallet_pb2_grpc.WalletServiceStub(channel)
            await stub.CreateWallet(
                wallet_pb2.CreateWalletRequest(wallet_id="cap", currency="USD", request_id="c")
            )

            async def deposit(n: int) -> wallet_pb2.DepositResponse:
                request = wallet_pb2.DepositRequest(wallet_id="cap", amount=1, request_id=f"d{n}")
                return await stub.Deposit(request)

            # Each deposit sleeps 1.5 s after its commit (the failpoint), holding its slot.
            slow = [asyncio.create_task(deposit(n)) for n in range(3)]
            await eventually(
                lambda: limiter.unary_in_flight, lambda n: n == 3, what="unary_in_flight == 3"
            )
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.GetWallet(wallet_pb2.GetWalletRequest(wallet_id="cap"), timeout=5)
            assert refused.value.code() == RESOURCE_EXHAUSTED
            assert error_reason(refused.value) == "TOO_MANY_CALLS"
            assert server_retry_delay(refused.value) == TooManyCallsError.retry_after == 0.5
            assert "WALLET_MAX_UNARY_CALLS" in (refused.value.details() or "")
            health = health_pb2_grpc.HealthStub(channel)
            checked = await health.Check(health_pb2.HealthCheckRequest(), timeout=5)
            assert checked.status == health_pb2.HealthCheckResponse.SERVING
            await asyncio.gather(*slow)
            failpoints.configure("")
            await eventually(
                lambda: limiter.unary_in_flight, lambda n: n == 0, what="unary_in_flight == 0"
            )
            got = await stub.GetWallet(wallet_pb2.GetWalletRequest(wallet_id="cap"))
            assert got.wallet.balance == 3
    finally:
        failpoints.configure("")
        await server.stop(grace=1)


async def test_an_aged_connection_is_closed_and_the_client_reconnects(tmp_path: Path) -> None:
    """WALLET_MAX_CONNECTION_AGE_MS: a stream outliving age + grace is cut (UNAVAILABLE,
    its slot freed); the client's next calls go over a new connection."""
    database_url = f"sqlite:///{tmp_path / 'wallet.db'}"
    settings = saga_settings(
        database_url, "127.0.0.1:1", max_connection_age_ms=500, max_connection_age_grace_ms=500
    )
    async with orchestrator(settings, connections=1) as (_saga, limiter, (channel,)):
        watch = Watches([channel], 1)
        await watch.calls[0].initial_metadata()
        first_peer = next(iter(limiter._streams_by_peer))
        await watch.wait_ended(1, within=15)
        assert [code for code, _, _ in watch.refusals()] == [grpc.StatusCode.UNAVAILABLE]
        await eventually(lambda: limiter.open_streams, lambda n: n == 0, what="open_streams == 0")
        await unary_calls_answer(channel)
        again = Watches([channel], 1)
        await again.calls[0].initial_metadata()
        assert next(iter(limiter._streams_by_peer)) != first_peer  # a new connection
        await again.cancel()


async def test_health_watch_is_served_and_counts_as_a_stream(tmp_path: Path) -> None:
    """grpc's health Watch (written with context.write, not yielded) passes every layer
    and holds a stream slot like any other stream: with a cap of 3, the fourth stream
    is refused until one of the three ends."""
    settings = saga_settings(f"sqlite:///{tmp_path / 'wallet.db'}", "127.0.0.1:1", max_streams=3)
    async with orchestrator(settings, connections=1) as (_saga, limiter, (channel,)):
        health = health_pb2_grpc.HealthStub(channel)
        watches = [health.Watch(health_pb2.HealthCheckRequest()) for _ in range(3)]
        for watch in watches:
            first = await asyncio.wait_for(watch.read(), 10)
            assert first.status == health_pb2.HealthCheckResponse.SERVING
        assert limiter.open_streams == 3
        refused = Watches([channel], 1)
        await refused.wait_ended(1)
        assert [reason for _, reason, _ in refused.refusals()] == ["TOO_MANY_STREAMS"]
        watches[0].cancel()
        await eventually(lambda: limiter.open_streams, lambda n: n == 2, what="open_streams == 2")
        accepted = Watches([channel], 1)
        await accepted.calls[0].initial_metadata()
        assert limiter.open_streams == 3
        await accepted.cancel()
        for watch in watches[1:]:
            watch.cancel()
        await eventually(lambda: limiter.open_streams, lambda n: n == 0, what="open_streams == 0")
