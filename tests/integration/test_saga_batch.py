"""BatchCreateTransfers over gRPC: each item answered exactly as the single call.

Both servers run in this process (``test_saga_transfers`` helpers) on SQLite and, when
configured, PostgreSQL.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import AsyncIterator

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status
from sqlalchemy import func, select

from saga_orchestrator.batch import MAX_BATCH_TRANSFERS
from saga_orchestrator.bootstrap import SagaComponent
from saga_orchestrator.group_commit import SagaWrite
from tests.conftest import requires_postgres
from tests.integration.test_saga_transfers import (
    COMPLETED,
    FAILED,
    TERMINAL,
    Platform,
    balance,
    new_wallet,
    rid,
    saga_settings,
    start_orchestrator,
    start_wallet_service,
    wait_terminal,
)
from wallet.v1 import transfer_pb2, transfer_pb2_grpc, wallet_pb2, wallet_pb2_grpc
from wallet_platform import failpoints
from wallet_platform.channels import make_channel
from wallet_platform.config import Settings
from wallet_platform.server.plumbing import AUDIT_WRITER
from wallet_platform.storage.database import Database
from wallet_platform.storage.schema import audit_log, transfers


def item(
    source: str, target: str, amount: int, request_id: str | None = None
) -> transfer_pb2.CreateTransferRequest:
    return transfer_pb2.CreateTransferRequest(
        request_id=request_id or rid(), from_wallet_id=source, to_wallet_id=target, amount=amount
    )


async def batch(
    stub: transfer_pb2_grpc.TransferServiceStub, items: list[transfer_pb2.CreateTransferRequest]
) -> list[transfer_pb2.BatchCreateTransfersResult]:
    response = await stub.BatchCreateTransfers(
        transfer_pb2.BatchCreateTransfersRequest(requests=items)
    )
    return list(response.results)


async def transfer_count(db: Database) -> int:
    async with db.read() as conn:
        return int((await conn.execute(select(func.count()).select_from(transfers))).scalar_one())


async def single_call_status(
    stub: transfer_pb2_grpc.TransferServiceStub, request: transfer_pb2.CreateTransferRequest
) -> status_pb2.Status:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.CreateTransfer(request)
    status = rpc_status.from_call(caught.value)
    assert status is not None
    return status


def error_info(status: status_pb2.Status) -> error_details_pb2.ErrorInfo:
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return info
    raise AssertionError(f"no ErrorInfo in {status}")


@contextlib.asynccontextmanager
async def running(database_url: str) -> AsyncIterator[Platform]:
    wallet_server = await start_wallet_service(database_url)
    saga_server = await start_orchestrator(saga_settings(database_url, wallet_server.target))
    wallet_channel = grpc.aio.insecure_channel(wallet_server.target)
    saga_channel = grpc.aio.insecure_channel(saga_server.target)
    db = Database.from_settings(Settings(database_url=database_url))
    try:
        yield Platform(wallet_server, saga_server, wallet_channel, saga_channel, db)
    finally:
        await wallet_channel.close()
        await saga_channel.close()
        await saga_server.stop(grace=1)
        await wallet_server.stop(grace=1)
        await db.dispose()


@pytest.fixture
async def platform(database_url: str) -> AsyncIterator[Platform]:
    async with running(database_url) as started:
        yield started


async def test_each_item_is_answered_as_the_single_call_in_request_order(
    platform: Platform,
) -> None:
    source = await new_wallet(platform.wallets, 1000)
    target = await new_wallet(platform.wallets)
    euros = await new_wallet(platform.wallets, currency="EUR")
    used = rid()
    first = await platform.transfers.CreateTransfer(item(source, target, 100, used))
    refused = [
        item(source, "w-does-not-exist", 5),  # NOT_FOUND / WALLET_NOT_FOUND
        item(source, source, 5),  # INVALID_ARGUMENT (same wallet)
        item(source, target, -1),  # INVALID_ARGUMENT (amount)
        item(source, euros, 5),  # FAILED_PRECONDITION / CURRENCY_MISMATCH
        item(source, target, 999, used),  # ALREADY_EXISTS / REQUEST_ID_REUSED
        transfer_pb2.CreateTransferRequest(from_wallet_id=source, to_wallet_id=target, amount=1),
    ]
    items = [
        item(source, target, 200),
        refused[0],
        item(source, target, 100, used),  # a replay of the single call above
        refused[1],
        item(source, target, 5000),  # accepted; its saga FAILS (insufficient funds)
        refused[2],
        refused[3],
        refused[4],
        refused[5],
        item(source, target, 50),
    ]

    results = await batch(platform.transfers, items)

    assert len(results) == len(items)
    assert [r.WhichOneof("result") for r in results] == [
        "response",
        "error",
        "response",
        "error",
        "response",
        "error",
        "error",
        "error",
        "error",
        "response",
    ]
    for request, result in zip(items, results, strict=True):
        if result.WhichOneof("result") == "response":
            assert result.response.transfer.request_id == request.request_id
    ok, replay, poor, last = (results[i].response for i in (0, 2, 4, 9))
    assert (ok.replayed, replay.replayed, poor.replayed, last.replayed) == (
        False,
        True,
        False,
        False,
    )
    assert replay.transfer.transfer_id == first.transfer.transfer_id
    assert ok.transfer.state == COMPLETED and last.transfer.state == COMPLETED
    assert poor.transfer.state == FAILED
    # Every refused item carries what the single call ends with: code, message, details.
    errors = [results[i].error for i in (1, 3, 5, 6, 7, 8)]
    for request, status in zip(refused, errors, strict=True):
        assert status == await single_call_status(platform.transfers, request)
    reasons = [error_info(status).reason for status in errors]
    assert reasons == [
        "WALLET_NOT_FOUND",
        "INVALID_ARGUMENT",
        "INVALID_ARGUMENT",
        "CURRENCY_MISMATCH",
        "REQUEST_ID_REUSED",
        "INVALID_ARGUMENT",
    ]
    assert errors[0].code == grpc.StatusCode.NOT_FOUND.value[0]
    assert await balance(platform.wallets, source) == 1000 - 100 - 200 - 50
    assert await balance(platform.wallets, target) == 350


async def test_a_batch_that_is_empty_or_too_big_is_refused_whole(platform: Platform) -> None:
    source = await new_wallet(platform.wallets, 10_000)
    target = await new_wallet(platform.wallets)
    before = await transfer_count(platform.db)
    for size in (0, MAX_BATCH_TRANSFERS + 1):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await batch(platform.transfers, [item(source, target, 1) for _ in range(size)])
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        status = rpc_status.from_call(caught.value)
        assert status is not None and error_info(status).metadata["field"] == "requests"
    assert await transfer_count(platform.db) == before
    assert await balance(platform.wallets, source) == 10_000


async def test_a_retried_batch_replays_every_item_and_moves_money_once(
    platform: Platform,
) -> None:
    wallets = [await new_wallet(platform.wallets, 1_000) for _ in range(4)]
    items = [item(wallets[i % 4], wallets[(i + 1) % 4], 1 + i % 7) for i in range(60)]
    # The same request_id twice in one batch: one transfer, the other item its replay.
    items.append(item(wallets[0], wallets[1], 3, items[0].request_id))
    items[0] = item(wallets[0], wallets[1], 3, items[0].request_id)

    first = await batch(platform.transfers, items)
    again = await batch(platform.transfers, items)

    assert all(r.WhichOneof("result") == "response" for r in first + again)
    assert sum(r.response.replayed for r in first) == 1
    assert all(r.response.replayed for r in again)
    ids = [r.response.transfer.transfer_id for r in first]
    assert ids[0] == ids[-1] and len(set(ids)) == 60
    assert [r.response.transfer.transfer_id for r in again] == ids
    for transfer_id in ids:
        assert (await wait_terminal(platform.transfers, transfer_id)).state == COMPLETED
    net = [0, 0, 0, 0]
    for request in items[:-1]:
        net[wallets.index(request.from_wallet_id)] -= request.amount
        net[wallets.index(request.to_wallet_id)] += request.amount
    assert [await balance(platform.wallets, w) for w in wallets] == [1_000 + n for n in net]


async def test_the_wait_is_shared_by_the_batch(database_url: str) -> None:
    """Slow sagas: the batch answers after one wait, not one wait per item; every
    accepted transfer still finishes."""
    wallet_server = await start_wallet_service(database_url)
    settings = saga_settings(database_url, wallet_server.target, transfer_wait_ms=300)
    saga_server = await start_orchestrator(settings)
    failpoints.configure("saga.before_credit=sleep(4000)")
    try:
        async with (
            grpc.aio.insecure_channel(wallet_server.target) as wallet_channel,
            grpc.aio.insecure_channel(saga_server.target) as saga_channel,
        ):
            wallets = wallet_pb2_grpc.WalletServiceStub(wallet_channel)
            stub = transfer_pb2_grpc.TransferServiceStub(saga_channel)
            source = await new_wallet(wallets, 1000)
            target = await new_wallet(wallets)
            started = time.monotonic()
            results = await batch(stub, [item(source, target, 10) for _ in range(20)])
            took = time.monotonic() - started
            failpoints.configure("")
            # 20 waits one after another would be 6 s; the sagas themselves need 4 s (less
            # than the 5 s lease, so no other driver takes them over meanwhile).
            assert took < 3.5, took
            states = {r.response.transfer.state for r in results}
            assert not states & TERMINAL
            for result in results:
                done = await wait_terminal(stub, result.response.transfer.transfer_id)
                assert done.state == COMPLETED
            assert await balance(wallets, source) == 800
            assert await balance(wallets, target) == 200
    finally:
        failpoints.configure("")
        await saga_server.stop(grace=1)
        await wallet_server.stop(grace=1)


@requires_postgres
async def test_the_inserts_of_a_batch_share_statements(pg_database_url_fresh: str) -> None:
    """The group commit is PostgreSQL's: a batch's inserts leave in few statements."""
    async with running(pg_database_url_fresh) as platform:
        await check_inserts_share_statements(platform)


async def check_inserts_share_statements(platform: Platform) -> None:
    saga = platform.saga_server.components[0]
    assert isinstance(saga, SagaComponent)
    group = saga.service.repository.group
    assert group is not None  # PostgreSQL: saga writes are group-committed
    source = await new_wallet(platform.wallets, 100_000)
    target = await new_wallet(platform.wallets)
    await platform.transfers.CreateTransfer(item(source, target, 1))  # wallets cached
    inserts_per_statement: list[int] = []
    execute = group._execute

    async def counted(batch: list[SagaWrite]) -> set[str]:
        inserts = sum(w.insert_row is not None for w in batch)
        if inserts:
            inserts_per_statement.append(inserts)
        return await execute(batch)

    group._execute = counted  # type: ignore[method-assign]  # counts what it executes

    results = await batch(platform.transfers, [item(source, target, 1) for _ in range(200)])

    assert all(r.WhichOneof("result") == "response" for r in results)
    assert sum(inserts_per_statement) == 200
    # A statement takes at most 64 writes: 200 inserts need 4, a lone first one aside.
    assert len(inserts_per_statement) <= 6, inserts_per_statement


async def test_a_tenant_must_own_every_wallet_of_every_item(database_url: str) -> None:
    """One foreign wallet id refuses the whole call before any item starts."""
    wallet_server = await start_wallet_service(database_url)
    settings = saga_settings(
        database_url, wallet_server.target, auth_tokens="t-acme=writer[acme-];t-all=writer"
    )
    saga_server = await start_orchestrator(settings)
    db = Database.from_settings(Settings(database_url=database_url))
    try:
        async with grpc.aio.insecure_channel(wallet_server.target) as wallet_channel:
            wallets = wallet_pb2_grpc.WalletServiceStub(wallet_channel)
            mine = [f"acme-{uuid.uuid4().hex[:8]}" for _ in range(2)]
            for wallet_id in mine:
                await wallets.CreateWallet(
                    wallet_pb2.CreateWalletRequest(
                        wallet_id=wallet_id, currency="USD", request_id=rid()
                    )
                )
            await wallets.Deposit(
                wallet_pb2.DepositRequest(wallet_id=mine[0], amount=100, request_id=rid())
            )
            foreign = await new_wallet(wallets, 100)
            async with make_channel(saga_server.target, Settings(auth_token="t-acme")) as channel:
                stub = transfer_pb2_grpc.TransferServiceStub(channel)
                before = await transfer_count(db)
                for bad in (item(mine[0], foreign, 1), item(foreign, mine[0], 1)):
                    with pytest.raises(grpc.aio.AioRpcError) as caught:
                        await batch(stub, [item(mine[0], mine[1], 1), bad])
                    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
                    assert "requests[1]." in (caught.value.details() or "")
                assert await transfer_count(db) == before
                results = await batch(stub, [item(mine[0], mine[1], 7)])
                assert results[0].response.transfer.state == COMPLETED
            assert await balance(wallets, foreign) == 100
            assert await balance(wallets, mine[1]) == 7
    finally:
        await db.dispose()
        await saga_server.stop(grace=1)
        await wallet_server.stop(grace=1)


async def test_batch_call_is_audited_once_with_its_id_on_every_transfer(
    platform: Platform,
) -> None:
    source = await new_wallet(platform.wallets, 100)
    target = await new_wallet(platform.wallets)
    items = [item(source, target, 1) for _ in range(3)]
    items += [item(source, "w-nobody", 1), item(source, source, 1), item(source, "w-nobody", 2)]
    call = platform.transfers.BatchCreateTransfers(
        transfer_pb2.BatchCreateTransfersRequest(requests=items)
    )
    response = await call
    audit_id = dict(await call.trailing_metadata())["x-audit-id"]
    ids = [r.response.transfer.transfer_id for r in response.results[:3]]
    writer = platform.saga_server.runtime.extras[AUDIT_WRITER]
    await writer.flush()
    async with platform.db.read() as conn:
        stamped = (
            await conn.execute(select(transfers.c.audit_id).where(transfers.c.transfer_id.in_(ids)))
        ).scalars()
        assert set(stamped) == {audit_id}
        rows = (await conn.execute(select(audit_log).where(audit_log.c.audit_id == audit_id))).all()
    assert len(rows) == 1
    row = rows[0]
    assert row.method == "/wallet.v1.TransferService/BatchCreateTransfers"
    assert row.status_code == "OK"
    # The call succeeded; the row still says which items were refused, and why.
    assert row.error_message == "3 of 6 items refused: INVALID_ARGUMENT x1, WALLET_NOT_FOUND x2"
