"""The transfer saga end to end: TransferService and WalletService as real gRPC servers.

Both servers run in this process on ephemeral ports against one fresh database (each
test runs on SQLite and, when configured, PostgreSQL). The helpers here are reused by
the crash/replica tests in ``tests/e2e/test_saga_recovery.py``.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc
import pytest
from sqlalchemy import select

from saga_orchestrator import bootstrap as saga_bootstrap
from tests.eventually import eventually
from wallet.v1 import events_pb2, transfer_pb2, transfer_pb2_grpc, wallet_pb2, wallet_pb2_grpc
from wallet_platform import failpoints
from wallet_platform.config import Settings
from wallet_platform.messaging.events import decode
from wallet_platform.runtime import Runtime
from wallet_platform.server.builder import Component
from wallet_platform.server.process import RunningServer, start_server
from wallet_platform.server.status import error_reason
from wallet_platform.storage.database import Database
from wallet_platform.storage.schema import outbox, wallet_events
from wallet_service import bootstrap as wallet_bootstrap

COMPLETED = transfer_pb2.TRANSFER_STATE_COMPLETED
FAILED = transfer_pb2.TRANSFER_STATE_FAILED
COMPENSATED = transfer_pb2.TRANSFER_STATE_COMPENSATED
TERMINAL = {COMPLETED, FAILED, COMPENSATED}


def rid() -> str:
    return uuid.uuid4().hex


def saga_settings(database_url: str, wallet_target: str, **changes: object) -> Settings:
    """Quick retries and sweeps so recovery paths finish in test time."""
    base = Settings(
        database_url=database_url,
        db_pool_size=5,
        listen="127.0.0.1:0",
        log_format="console",
        wallet_service_target=wallet_target,
        transfer_wait_ms=5000,
        saga_lease_ms=5000,
        saga_sweep_interval_ms=200,
        saga_step_deadline_ms=3000,  # generous: a loaded CI machine is slow
        saga_retry_max_ms=300,
    )
    return base.replace(**changes)


def wallet_only(runtime: Runtime) -> list[Component]:
    """WalletService without its outbox relay: publishing events plays no part in the
    saga, and these tests keep the machine's load (and PostgreSQL connections) low."""
    return [
        component
        for component in wallet_bootstrap.build_components(runtime)
        if isinstance(component, wallet_bootstrap.WalletComponent)
    ]


async def start_wallet_service(
    database_url: str, listen: str = "127.0.0.1:0", pool_size: int = 5
) -> RunningServer:
    settings = Settings(
        database_url=database_url, listen=listen, log_format="console", db_pool_size=pool_size
    )
    return await start_server(settings, wallet_only, role="wallet-service")


async def start_orchestrator(settings: Settings) -> RunningServer:
    return await start_server(settings, saga_bootstrap.build_components, role="saga-orchestrator")


@dataclass
class Platform:
    """Stubs for both services plus direct database access for ledger checks."""

    wallet_server: RunningServer
    saga_server: RunningServer
    wallet_channel: grpc.aio.Channel
    saga_channel: grpc.aio.Channel
    db: Database

    @property
    def wallets(self) -> wallet_pb2_grpc.WalletServiceStub:
        return wallet_pb2_grpc.WalletServiceStub(self.wallet_channel)

    @property
    def transfers(self) -> transfer_pb2_grpc.TransferServiceStub:
        return transfer_pb2_grpc.TransferServiceStub(self.saga_channel)


async def new_wallet(
    stub: wallet_pb2_grpc.WalletServiceStub, balance: int = 0, currency: str = "USD"
) -> str:
    wallet_id = f"w-{uuid.uuid4().hex[:12]}"
    await stub.CreateWallet(
        wallet_pb2.CreateWalletRequest(wallet_id=wallet_id, currency=currency, request_id=rid())
    )
    if balance:
        await stub.Deposit(
            wallet_pb2.DepositRequest(wallet_id=wallet_id, amount=balance, request_id=rid())
        )
    return wallet_id


async def balance(stub: wallet_pb2_grpc.WalletServiceStub, wallet_id: str) -> int:
    response = await stub.GetWallet(wallet_pb2.GetWalletRequest(wallet_id=wallet_id))
    return int(response.wallet.balance)


async def transfer_events(db: Database, transfer_id: str) -> list[str]:
    """The ledger entry types a transfer produced, sorted (e.g. credited + debited)."""
    async with db.read() as conn:
        rows = (
            await conn.execute(
                select(wallet_events.c.type).where(wallet_events.c.transfer_id == transfer_id)
            )
        ).scalars()
        return sorted(rows)


async def wait_terminal(
    stub: transfer_pb2_grpc.TransferServiceStub, transfer_id: str, within: float = 30.0
) -> transfer_pb2.Transfer:
    async def current() -> transfer_pb2.Transfer:
        request = transfer_pb2.GetTransferRequest(transfer_id=transfer_id)
        return (await stub.GetTransfer(request)).transfer

    return await eventually(
        current,
        lambda transfer: transfer.state in TERMINAL,
        what=f"transfer {transfer_id} in a terminal state",
        within=within,
        interval=0.1,
    )


@pytest.fixture
async def platform(database_url: str) -> AsyncIterator[Platform]:
    wallet_server = await start_wallet_service(database_url)
    saga_server = await start_orchestrator(saga_settings(database_url, wallet_server.target))
    wallet_channel = grpc.aio.insecure_channel(wallet_server.target)
    saga_channel = grpc.aio.insecure_channel(saga_server.target)
    db = Database.from_settings(Settings(database_url=database_url))
    yield Platform(wallet_server, saga_server, wallet_channel, saga_channel, db)
    await wallet_channel.close()
    await saga_channel.close()
    await saga_server.stop(grace=1)
    await wallet_server.stop(grace=1)
    await db.dispose()


async def create(
    platform: Platform, source: str, target: str, amount: int, request_id: str | None = None
) -> transfer_pb2.CreateTransferResponse:
    return await platform.transfers.CreateTransfer(
        transfer_pb2.CreateTransferRequest(
            request_id=request_id or rid(),
            from_wallet_id=source,
            to_wallet_id=target,
            amount=amount,
        )
    )


async def test_happy_path_moves_money_once(platform: Platform) -> None:
    source = await new_wallet(platform.wallets, 1000)
    target = await new_wallet(platform.wallets)

    response = await create(platform, source, target, 300)

    transfer = response.transfer
    assert transfer.state == COMPLETED
    assert not response.replayed
    assert transfer.currency == "USD"
    assert [(s.name, s.outcome) for s in transfer.steps] == [
        ("debit", transfer_pb2.TRANSFER_STEP_OUTCOME_SUCCEEDED),
        ("credit", transfer_pb2.TRANSFER_STEP_OUTCOME_SUCCEEDED),
    ]
    assert await balance(platform.wallets, source) == 700
    assert await balance(platform.wallets, target) == 300
    assert await transfer_events(platform.db, transfer.transfer_id) == [
        "transfer_credited",
        "transfer_debited",
    ]
    # The milestone is in the outbox, written with the terminal state.
    async with platform.db.read() as conn:
        row = (
            await conn.execute(
                select(outbox).where(outbox.c.message_id == f"{transfer.transfer_id}:completed")
            )
        ).one()
    assert row.routing_key == "wallet.transfer_completed"
    message = decode(row.message_type, row.payload)
    assert isinstance(message, events_pb2.TransferCompleted)
    assert message.transfer.state == COMPLETED

    fetched = await platform.transfers.GetTransfer(
        transfer_pb2.GetTransferRequest(transfer_id=transfer.transfer_id)
    )
    assert fetched.transfer == transfer


async def test_insufficient_funds_fails_and_moves_nothing(platform: Platform) -> None:
    source = await new_wallet(platform.wallets, 100)
    target = await new_wallet(platform.wallets)

    transfer = (await create(platform, source, target, 101)).transfer

    assert transfer.state == FAILED
    assert transfer.failure_code == "FAILED_PRECONDITION"
    assert "INSUFFICIENT_FUNDS" in transfer.failure_reason
    assert [(s.name, s.outcome) for s in transfer.steps] == [
        ("debit", transfer_pb2.TRANSFER_STEP_OUTCOME_REJECTED)
    ]
    assert await balance(platform.wallets, source) == 100
    assert await balance(platform.wallets, target) == 0
    assert await transfer_events(platform.db, transfer.transfer_id) == []


async def test_frozen_destination_is_compensated(platform: Platform) -> None:
    source = await new_wallet(platform.wallets, 500)
    target = await new_wallet(platform.wallets)
    await platform.wallets.FreezeWallet(
        wallet_pb2.FreezeWalletRequest(wallet_id=target, request_id=rid())
    )

    transfer = (await create(platform, source, target, 200)).transfer

    assert transfer.state == COMPENSATED
    assert "WALLET_FROZEN" in transfer.failure_reason
    assert [(s.name, s.outcome) for s in transfer.steps] == [
        ("debit", transfer_pb2.TRANSFER_STEP_OUTCOME_SUCCEEDED),
        ("credit", transfer_pb2.TRANSFER_STEP_OUTCOME_REJECTED),
        ("refund", transfer_pb2.TRANSFER_STEP_OUTCOME_SUCCEEDED),
    ]
    assert await balance(platform.wallets, source) == 500
    assert await balance(platform.wallets, target) == 0
    assert await transfer_events(platform.db, transfer.transfer_id) == [
        "transfer_debited",
        "transfer_refunded",
    ]


async def test_unknown_wallets_and_bad_input_are_rejected_up_front(platform: Platform) -> None:
    source = await new_wallet(platform.wallets, 500)
    euros = await new_wallet(platform.wallets, 0, currency="EUR")

    cases = [
        (source, "w-does-not-exist", 10, grpc.StatusCode.NOT_FOUND, "WALLET_NOT_FOUND"),
        ("w-nobody", source, 10, grpc.StatusCode.NOT_FOUND, "WALLET_NOT_FOUND"),
        (source, source, 10, grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT"),
        (source, euros, 0, grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT"),
        (source, euros, -5, grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT"),
        (source, "bad id!", 10, grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT"),
        (source, euros, 10, grpc.StatusCode.FAILED_PRECONDITION, "CURRENCY_MISMATCH"),
    ]
    for from_id, to_id, amount, code, reason in cases:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await create(platform, from_id, to_id, amount)
        assert caught.value.code() == code, (from_id, to_id, amount)
        assert error_reason(caught.value) == reason
    with pytest.raises(grpc.aio.AioRpcError) as missing_id:
        await platform.transfers.CreateTransfer(
            transfer_pb2.CreateTransferRequest(from_wallet_id=source, to_wallet_id=euros, amount=1)
        )
    assert missing_id.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.aio.AioRpcError) as unknown:
        await platform.transfers.GetTransfer(transfer_pb2.GetTransferRequest(transfer_id="nope"))
    assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
    assert await balance(platform.wallets, source) == 500


async def test_request_id_replay_and_mismatch(platform: Platform) -> None:
    source = await new_wallet(platform.wallets, 1000)
    target = await new_wallet(platform.wallets)
    request_id = rid()

    first = await create(platform, source, target, 250, request_id)
    again = await create(platform, source, target, 250, request_id)

    assert not first.replayed and again.replayed
    assert again.transfer.transfer_id == first.transfer.transfer_id
    assert again.transfer.state == COMPLETED
    assert await balance(platform.wallets, source) == 750

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await create(platform, source, target, 251, request_id)
    assert caught.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert error_reason(caught.value) == "REQUEST_ID_REUSED"
    # A used request_id wins over what the new wallets would say (unknown, another
    # currency): the key is checked as if it were looked up before the wallets.
    euros = await new_wallet(platform.wallets, currency="EUR")
    for other_source, other_target in [(source, "w-does-not-exist"), (source, euros)]:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await create(platform, other_source, other_target, 250, request_id)
        assert caught.value.code() == grpc.StatusCode.ALREADY_EXISTS
        assert error_reason(caught.value) == "REQUEST_ID_REUSED"

    # The same request sent concurrently still makes exactly one transfer.
    request_id = rid()
    responses = await asyncio.gather(
        *(create(platform, source, target, 10, request_id) for _ in range(5))
    )
    assert len({r.transfer.transfer_id for r in responses}) == 1
    assert sum(not r.replayed for r in responses) == 1
    assert await balance(platform.wallets, source) == 740


async def test_list_summary_and_watch(platform: Platform) -> None:
    source = await new_wallet(platform.wallets, 1000)
    target = await new_wallet(platform.wallets)
    other = await new_wallet(platform.wallets, 50)

    watch = platform.transfers.WatchTransfers(transfer_pb2.WatchTransfersRequest(wallet_id=source))
    seen: list[tuple[str, int]] = []

    async def read_watch() -> None:
        async for change in watch:
            seen.append((change.transfer.transfer_id, change.transfer.state))
            if sum(state == COMPLETED for _, state in seen) == 5:
                return

    await watch.initial_metadata()  # the server's "subscribed": later changes reach us
    reader = asyncio.create_task(read_watch())
    ids = [(await create(platform, source, target, 10)).transfer.transfer_id for _ in range(5)]
    failed = (await create(platform, other, target, 500)).transfer
    assert failed.state == FAILED

    page1 = await platform.transfers.ListTransfers(
        transfer_pb2.ListTransfersRequest(wallet_id=source, page_size=3)
    )
    page2 = await platform.transfers.ListTransfers(
        transfer_pb2.ListTransfersRequest(
            wallet_id=source, page_size=3, page_token=page1.next_page_token
        )
    )
    listed = [t.transfer_id for t in [*page1.transfers, *page2.transfers]]
    assert listed == list(reversed(ids))
    assert page2.next_page_token == ""
    only_failed = await platform.transfers.ListTransfers(
        transfer_pb2.ListTransfersRequest(state=FAILED)
    )
    assert [t.transfer_id for t in only_failed.transfers] == [failed.transfer_id]

    summary = await platform.transfers.GetTransferSummary(transfer_pb2.GetTransferSummaryRequest())
    assert {c.state: c.count for c in summary.counts} == {COMPLETED: 5, FAILED: 1}
    assert summary.unfinished == 0
    assert summary.oldest_unfinished_transfer_id == ""

    await asyncio.wait_for(reader, 5)
    watch.cancel()
    assert {tid for tid, state in seen if state == COMPLETED} == set(ids)
    assert failed.transfer_id not in {tid for tid, _ in seen}
    for transfer_id in ids:  # every change once, in order
        states = [state for tid, state in seen if tid == transfer_id]
        assert states == sorted(states) and len(states) == len(set(states))


async def test_watch_shows_changes_made_by_another_replica(
    platform: Platform, database_url: str
) -> None:
    other = await start_orchestrator(saga_settings(database_url, platform.wallet_server.target))
    try:
        async with grpc.aio.insecure_channel(other.target) as channel:
            source = await new_wallet(platform.wallets, 100)
            target = await new_wallet(platform.wallets)
            watch = platform.transfers.WatchTransfers(
                transfer_pb2.WatchTransfersRequest(wallet_id=target)
            )

            async def first_completed() -> transfer_pb2.Transfer:
                async for change in watch:
                    if change.transfer.state == COMPLETED:
                        return change.transfer
                raise AssertionError("stream ended")

            await watch.initial_metadata()  # subscribed: the next change reaches us
            reader = asyncio.create_task(first_completed())
            made = await transfer_pb2_grpc.TransferServiceStub(channel).CreateTransfer(
                transfer_pb2.CreateTransferRequest(
                    request_id=rid(), from_wallet_id=source, to_wallet_id=target, amount=7
                )
            )
            seen = await asyncio.wait_for(reader, 10)
            watch.cancel()
            assert seen.transfer_id == made.transfer.transfer_id
    finally:
        await other.stop(grace=1)


async def summary_entry(
    stub: transfer_pb2_grpc.TransferServiceStub, transfer_id: str
) -> transfer_pb2.RetryingTransfer | None:
    summary = await stub.GetTransferSummary(transfer_pb2.GetTransferSummaryRequest())
    return next((r for r in summary.retrying if r.transfer_id == transfer_id), None)


async def wait_retrying(
    stub: transfer_pb2_grpc.TransferServiceStub, transfer_id: str, text: str, attempts: int = 2
) -> transfer_pb2.RetryingTransfer:
    """Until the summary lists the saga as retrying with ``text`` in its last error."""
    entry = await eventually(
        lambda: summary_entry(stub, transfer_id),
        lambda entry: entry is not None and text in entry.last_error and entry.attempts >= attempts,
        what=f"saga {transfer_id} retrying with {text!r} in its last error",
        within=15,
        interval=0.1,
    )
    assert entry is not None
    return entry


@pytest.mark.slow
async def test_wallet_service_outage_is_retried(database_url: str, unused_tcp_port: int) -> None:
    """WalletService down mid-transfer: the saga retries, shows it, and completes later."""
    listen = f"127.0.0.1:{unused_tcp_port}"
    wallet_server = await start_wallet_service(database_url, listen)
    # The credit call waits a moment, so the transfer is in flight when the service stops.
    saga_server = await start_orchestrator(
        saga_settings(
            database_url, listen, transfer_wait_ms=100, failpoints="saga.before_credit=sleep(1000)"
        )
    )
    db = Database.from_settings(Settings(database_url=database_url))
    try:
        async with (
            grpc.aio.insecure_channel(listen) as wallet_channel,
            grpc.aio.insecure_channel(saga_server.target) as saga_channel,
        ):
            wallets_stub = wallet_pb2_grpc.WalletServiceStub(wallet_channel)
            transfers_stub = transfer_pb2_grpc.TransferServiceStub(saga_channel)
            source = await new_wallet(wallets_stub, 1000)
            target = await new_wallet(wallets_stub)

            started = await transfers_stub.CreateTransfer(
                transfer_pb2.CreateTransferRequest(
                    request_id=rid(), from_wallet_id=source, to_wallet_id=target, amount=400
                )
            )
            transfer_id = started.transfer.transfer_id
            assert started.transfer.state == transfer_pb2.TRANSFER_STATE_DEBITED
            await wallet_server.stop(grace=0)
            failpoints.configure("")  # only the credit call already waiting still sleeps

            entry = await wait_retrying(transfers_stub, transfer_id, "UNAVAILABLE")
            assert entry.state == transfer_pb2.TRANSFER_STATE_DEBITED
            # While WalletService is down, a wallet never seen cannot be checked: retry
            # later. Wallets already checked (their currency is fixed) are accepted, and
            # the saga waits for WalletService like the first one.
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await transfers_stub.CreateTransfer(
                    transfer_pb2.CreateTransferRequest(
                        request_id=rid(), from_wallet_id=source, to_wallet_id="w-unseen", amount=1
                    )
                )
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
            queued = await transfers_stub.CreateTransfer(
                transfer_pb2.CreateTransferRequest(
                    request_id=rid(), from_wallet_id=source, to_wallet_id=target, amount=1
                )
            )
            assert queued.transfer.state == transfer_pb2.TRANSFER_STATE_PENDING

            wallet_server = await start_wallet_service(database_url, listen)  # failpoints off
            done = await wait_terminal(transfers_stub, transfer_id)
            assert done.state == COMPLETED
            credit = next(s for s in done.steps if s.name == "credit")
            assert credit.attempts >= 2 and "UNAVAILABLE" in credit.error
            later = await wait_terminal(transfers_stub, queued.transfer.transfer_id)
            assert later.state == COMPLETED
            assert await balance(wallets_stub, source) == 599
            assert await balance(wallets_stub, target) == 401
            assert await transfer_events(db, transfer_id) == [
                "transfer_credited",
                "transfer_debited",
            ]
            assert await summary_entry(transfers_stub, transfer_id) is None
    finally:
        await saga_server.stop(grace=1)
        await wallet_server.stop(grace=1)
        await db.dispose()


@pytest.mark.slow
async def test_failing_compensation_stays_visible_until_it_succeeds(
    database_url: str, unused_tcp_port: int
) -> None:
    """A refund that keeps failing (fault, then WalletService down) is retried, shown in
    the summary, and completes once the cause is gone."""
    listen = f"127.0.0.1:{unused_tcp_port}"
    wallet_server = await start_wallet_service(database_url, listen)
    saga_server = await start_orchestrator(
        saga_settings(
            database_url, listen, transfer_wait_ms=300, failpoints="saga.before_refund=error"
        )
    )
    db = Database.from_settings(Settings(database_url=database_url))
    try:
        async with (
            grpc.aio.insecure_channel(listen) as wallet_channel,
            grpc.aio.insecure_channel(saga_server.target) as saga_channel,
        ):
            wallets_stub = wallet_pb2_grpc.WalletServiceStub(wallet_channel)
            transfers_stub = transfer_pb2_grpc.TransferServiceStub(saga_channel)
            source = await new_wallet(wallets_stub, 800)
            target = await new_wallet(wallets_stub)
            await wallets_stub.FreezeWallet(
                wallet_pb2.FreezeWalletRequest(wallet_id=target, request_id=rid())
            )

            started = await transfers_stub.CreateTransfer(
                transfer_pb2.CreateTransferRequest(
                    request_id=rid(), from_wallet_id=source, to_wallet_id=target, amount=300
                )
            )
            transfer_id = started.transfer.transfer_id
            assert started.transfer.state == transfer_pb2.TRANSFER_STATE_COMPENSATING

            entry = await wait_retrying(transfers_stub, transfer_id, "failpoint", attempts=3)
            assert entry.state == transfer_pb2.TRANSFER_STATE_COMPENSATING
            summary = await transfers_stub.GetTransferSummary(
                transfer_pb2.GetTransferSummaryRequest()
            )
            assert summary.unfinished == 1
            assert summary.oldest_unfinished_transfer_id == transfer_id
            assert summary.oldest_unfinished_age_seconds > 0
            assert await balance(wallets_stub, source) == 500  # still out, for now

            # Second cause: WalletService down while the refund is due.
            await wallet_server.stop(grace=0)
            failpoints.configure("")
            await wait_retrying(transfers_stub, transfer_id, "UNAVAILABLE", attempts=5)

            wallet_server = await start_wallet_service(database_url, listen)
            done = await wait_terminal(transfers_stub, transfer_id)
            assert done.state == COMPENSATED
            assert "WALLET_FROZEN" in done.failure_reason
            assert await balance(wallets_stub, source) == 800
            assert await transfer_events(db, transfer_id) == [
                "transfer_debited",
                "transfer_refunded",
            ]
            summary = await transfers_stub.GetTransferSummary(
                transfer_pb2.GetTransferSummaryRequest()
            )
            assert summary.unfinished == 0 and not summary.retrying
    finally:
        failpoints.configure("")
        await saga_server.stop(grace=1)
        await wallet_server.stop(grace=1)
        await db.dispose()
