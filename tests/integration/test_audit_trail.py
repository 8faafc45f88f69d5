"""The audit trail against a real WalletService server, on every database backend.

Every write call (accepted or refused) leaves one ``audit_log`` row; the audit id comes
back as trailing metadata ``x-audit-id`` and is stamped on the ledger events the call
produced; reads are not audited; a clean shutdown writes every pending row.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import time
import uuid

import grpc
import pytest
from sqlalchemy import select

from wallet.v1 import wallet_pb2, wallet_pb2_grpc
from wallet_platform.channels import AUDIT_ID_HEADER
from wallet_platform.config import Settings
from wallet_platform.server.plumbing import AUDIT_WRITER
from wallet_platform.server.process import RunningServer, start_server
from wallet_platform.storage.database import Database
from wallet_platform.storage.schema import audit_log, wallet_events
from wallet_service.bootstrap import build_components

WALLET = "/wallet.v1.WalletService/"


async def _trailer(call_or_error, key: str = AUDIT_ID_HEADER) -> str | None:
    metadata = call_or_error.trailing_metadata()
    if inspect.isawaitable(metadata):  # a grpc.aio call (an AioRpcError answers at once)
        metadata = await metadata
    for k, v in metadata or ():
        if k == key:
            return v
    return None


async def _audit_rows(db: Database) -> list[dict]:
    async with db.read() as conn:
        rows = (await conn.execute(select(audit_log).order_by(audit_log.c.started_at))).all()
    return [dict(row._mapping) for row in rows]


@pytest.fixture
async def server(settings: Settings):
    running = await start_server(settings, build_components, role="wallet-service")
    yield running
    await running.stop()


async def _flush(running: RunningServer) -> None:
    await running.runtime.extras[AUDIT_WRITER].flush()


async def test_write_calls_are_audited_and_stamp_their_events(server, database):
    async with grpc.aio.insecure_channel(server.target) as channel:
        stub = wallet_pb2_grpc.WalletServiceStub(channel)
        await stub.CreateWallet(
            wallet_pb2.CreateWalletRequest(wallet_id="alice", currency="USD", request_id="c1")
        )
        started = time.perf_counter()
        call = stub.Deposit(
            wallet_pb2.DepositRequest(wallet_id="alice", amount=500, request_id="d1")
        )
        response = await call
        deposit_ms = (time.perf_counter() - started) * 1000  # the server's share is less
        deposit_audit_id = await _trailer(call)
        assert deposit_audit_id and uuid.UUID(deposit_audit_id)
        assert response.event.audit_id == deposit_audit_id

        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.Withdraw(
                wallet_pb2.WithdrawRequest(wallet_id="alice", amount=10_000, request_id="w1")
            )
        assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        refused_audit_id = await _trailer(refused.value)
        assert refused_audit_id and refused_audit_id != deposit_audit_id
        # The rich error details survive next to the audit id.
        assert await _trailer(refused.value, "grpc-status-details-bin") is not None

        with pytest.raises(grpc.aio.AioRpcError) as invalid:
            await stub.Deposit(wallet_pb2.DepositRequest(wallet_id="alice", amount=-1))
        assert invalid.value.code() == grpc.StatusCode.INVALID_ARGUMENT

        await stub.GetWallet(wallet_pb2.GetWalletRequest(wallet_id="alice"))  # a read

    await _flush(server)
    rows = await _audit_rows(database)
    by_method = [(r["method"].rsplit("/", 1)[-1], r["status_code"]) for r in rows]
    assert by_method == [
        ("CreateWallet", "OK"),
        ("Deposit", "OK"),
        ("Withdraw", "FAILED_PRECONDITION"),
        ("Deposit", "INVALID_ARGUMENT"),
    ]
    deposit = next(r for r in rows if r["audit_id"] == deposit_audit_id)
    assert json.loads(deposit["request_json"]) == {
        "wallet_id": "alice",
        "amount": "500",
        "request_id": "d1",
    }
    assert deposit["caller"] == "anonymous"
    assert deposit["peer"].startswith(("ipv4:127.0.0.1:", "ipv6:"))
    assert 0 <= deposit["duration_ms"] <= deposit_ms and deposit["error_message"] is None
    withdraw = next(r for r in rows if r["audit_id"] == refused_audit_id)
    assert "10000" in withdraw["error_message"]

    async with database.read() as conn:
        stamped = (
            await conn.execute(
                select(wallet_events.c.type, wallet_events.c.audit_id).where(
                    wallet_events.c.wallet_id == "alice"
                )
            )
        ).all()
    ok = [r for r in rows if r["status_code"] == "OK"]
    audit_ids = {r["method"].rsplit("/", 1)[-1]: r["audit_id"] for r in ok}
    assert dict(stamped) == {
        "wallet_created": audit_ids["CreateWallet"],
        "funds_deposited": deposit_audit_id,
    }


async def test_step_call_stamps_the_incoming_audit_id(server, database):
    """The orchestrator's step calls carry the CreateTransfer audit id to the ledger."""
    parent = str(uuid.uuid4())
    async with grpc.aio.insecure_channel(server.target) as channel:
        stub = wallet_pb2_grpc.WalletServiceStub(channel)
        await stub.CreateWallet(
            wallet_pb2.CreateWalletRequest(wallet_id="bob", currency="USD", request_id="c1")
        )
        await stub.Deposit(wallet_pb2.DepositRequest(wallet_id="bob", amount=50, request_id="d"))
        call = stub.DebitForTransfer(
            wallet_pb2.DebitForTransferRequest(
                wallet_id="bob",
                amount=20,
                transfer_id="t-1",
                request_id="t-1:debit",
                currency="USD",
                to_wallet_id="carol",
            ),
            metadata=((AUDIT_ID_HEADER, parent),),
        )
        response = await call
        own = await _trailer(call)
    assert own and own != parent
    assert response.event.audit_id == parent
    await _flush(server)
    rows = {r["audit_id"]: r for r in await _audit_rows(database)}
    assert rows[own]["method"] == WALLET + "DebitForTransfer"
    assert json.loads(rows[own]["request_json"])["transfer_id"] == "t-1"


async def test_clean_shutdown_writes_every_pending_row(settings: Settings, database):
    running = await start_server(settings, build_components, role="wallet-service")
    async with grpc.aio.insecure_channel(running.target) as channel:
        stub = wallet_pb2_grpc.WalletServiceStub(channel)
        await stub.CreateWallet(
            wallet_pb2.CreateWalletRequest(wallet_id="carol", currency="USD", request_id="c")
        )
        await asyncio.gather(
            *(
                stub.Deposit(
                    wallet_pb2.DepositRequest(wallet_id="carol", amount=1, request_id=f"d{i}")
                )
                for i in range(40)
            )
        )
    await running.stop()  # no flush first: stop() must drain the writer
    rows = await _audit_rows(database)
    assert len(rows) == 41
    assert {r["status_code"] for r in rows} == {"OK"}


async def test_a_batch_written_twice_is_stored_once_with_every_column(database):
    """The writer's batch insert (PostgreSQL: one unnest() statement in autocommit)
    stores every column as given, and a batch retried after an unknown commit outcome
    (same audit ids) adds nothing on PostgreSQL."""
    from datetime import UTC, datetime

    from wallet_platform.observability.audit import AuditWriter

    started = datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)
    batch = [
        {
            "audit_id": str(uuid.UUID(int=n + 1)),
            "method": WALLET + "Deposit",
            "request_json": json.dumps({"n": n}),
            "caller": "anonymous" if n else None,
            "peer": "ipv4:127.0.0.1:1",
            "status_code": "OK" if n else "NOT_FOUND",
            "error_message": None if n else "wallet 'x' not found",
            "started_at": started,
            "duration_ms": n,
        }
        for n in range(3)
    ]
    writer = AuditWriter(database)
    await writer._write(batch)
    if database.is_postgres:
        await writer._write(batch)
    rows = sorted(await _audit_rows(database), key=lambda r: r["audit_id"])
    for row in rows:
        row["started_at"] = row["started_at"].replace(tzinfo=UTC)
    assert rows == batch
