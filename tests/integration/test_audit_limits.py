"""The audit trail under attack: refused calls cannot fill the table or the memory.

A real WalletService with tokens on. Refused calls (no token, bad input) are recorded
without their bodies; while the database is slow (PostgreSQL: the ``audit_log`` table
locked by another session) the backlog stays within its bytes, refused-call records
are dropped and counted, and write calls are refused up front once it is full,
without losing a single accepted write's record.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator

import grpc
import psycopg
import pytest
from sqlalchemy import func, select
from sqlalchemy.engine import make_url

from wallet.v1 import wallet_pb2, wallet_pb2_grpc
from wallet_client.errors import server_retry_delay
from wallet_platform.channels import make_channel
from wallet_platform.config import Settings
from wallet_platform.observability.audit import AuditWriter
from wallet_platform.observability.audit_backlog import REFUSED_SHARE
from wallet_platform.server.audit_calls import AuditBacklogFullError
from wallet_platform.server.plumbing import AUDIT_WRITER, MIN_AUDIT_BACKLOG_BYTES
from wallet_platform.server.process import RunningServer, start_server
from wallet_platform.server.status import error_reason
from wallet_platform.storage.database import Database
from wallet_platform.storage.schema import audit_log
from wallet_service.bootstrap import build_components

TOKENS = "t-write=writer@teller"
BODY = "x" * 32_768  # a caller-chosen 32 KiB in every refused request


def writer_of(server: RunningServer) -> AuditWriter:
    writer: AuditWriter = server.runtime.extras[AUDIT_WRITER]
    return writer


async def refused_deposit(stub: wallet_pb2_grpc.WalletServiceStub, n: int) -> grpc.StatusCode:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stub.Deposit(
            wallet_pb2.DepositRequest(wallet_id=BODY, amount=1, request_id=f"flood-{n}")
        )
    return refused.value.code()


async def flood(stub: wallet_pb2_grpc.WalletServiceStub, count: int) -> set[grpc.StatusCode]:
    codes: set[grpc.StatusCode] = set()
    for start in range(0, count, 100):
        batch = range(start, min(count, start + 100))
        codes |= set(await asyncio.gather(*(refused_deposit(stub, n) for n in batch)))
    return codes


async def audit_sizes(db: Database) -> tuple[int, int, int]:
    """(rows, longest request_json, longest error_message) in ``audit_log``."""
    async with db.read() as conn:
        rows, longest, message = (
            await conn.execute(
                select(
                    func.count(),
                    func.max(func.length(audit_log.c.request_json)),
                    func.max(func.length(audit_log.c.error_message)),
                )
            )
        ).one()
    return int(rows), int(longest or 0), int(message or 0)


@pytest.fixture
async def guarded(settings: Settings) -> AsyncIterator[RunningServer]:
    server = await start_server(
        settings.replace(auth_tokens=TOKENS), build_components, role="wallet-service"
    )
    yield server
    await server.stop()


async def test_refused_calls_are_recorded_without_their_bodies(
    guarded: RunningServer, database: Database
) -> None:
    """2,000 refused calls with 32 KiB bodies: 2,000 rows of a few hundred bytes each."""
    writer = writer_of(guarded)
    peak = 0

    async def watch_backlog() -> None:
        nonlocal peak
        while True:
            peak = max(peak, writer.backlog.bytes)
            await asyncio.sleep(0.005)

    sampler = asyncio.create_task(watch_backlog())
    async with grpc.aio.insecure_channel(guarded.target) as anonymous:
        assert await flood(wallet_pb2_grpc.WalletServiceStub(anonymous), 1000) == {
            grpc.StatusCode.UNAUTHENTICATED
        }
    async with make_channel(guarded.target, Settings(auth_token="t-write")) as teller:
        assert await flood(wallet_pb2_grpc.WalletServiceStub(teller), 1000) == {
            grpc.StatusCode.INVALID_ARGUMENT
        }
    await writer.flush()
    sampler.cancel()
    rows, longest, message = await audit_sizes(database)
    assert rows == 2000  # the database kept up: every refused call is on record
    assert longest <= 200 and message <= 256  # 32 KiB bodies, none of them stored
    assert writer.backlog.bytes == 0 and writer.backlog.dropped == 0
    assert peak <= writer.backlog.max_bytes * REFUSED_SHARE
    async with database.read() as conn:
        sample = (
            await conn.execute(select(audit_log.c.request_json, audit_log.c.status_code).limit(1))
        ).one()
    summary = json.loads(sample.request_json)
    assert summary["omitted"] == "refused call" and summary["wallet_id"] == "[invalid]"
    assert summary["request_bytes"] > len(BODY)


def _libpq_url(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


@pytest.mark.slow
async def test_a_slow_database_bounds_the_backlog_and_keeps_every_write_record(
    pg_database_url_fresh: str, caplog: pytest.LogCaptureFixture
) -> None:
    settings = Settings(
        database_url=pg_database_url_fresh,
        listen="127.0.0.1:0",
        log_format="console",
        auth_tokens=TOKENS,
        audit_backlog_bytes=MIN_AUDIT_BACKLOG_BYTES,
    )
    server = await start_server(settings, build_components, role="wallet-service")
    writer = writer_of(server)
    blocker = await psycopg.AsyncConnection.connect(_libpq_url(pg_database_url_fresh))
    try:
        async with make_channel(server.target, Settings(auth_token="t-write")) as teller:
            stub = wallet_pb2_grpc.WalletServiceStub(teller)
            await stub.CreateWallet(
                wallet_pb2.CreateWalletRequest(wallet_id="w", currency="USD", request_id="c")
            )
            await writer.flush()
            # The database turns slow for the audit writer: its table is locked.
            await blocker.execute("BEGIN")
            await blocker.execute("LOCK TABLE audit_log IN ACCESS EXCLUSIVE MODE")

            caplog.set_level(logging.WARNING)
            async with grpc.aio.insecure_channel(server.target) as anonymous:
                await flood(wallet_pb2_grpc.WalletServiceStub(anonymous), 3000)
            share = writer.backlog.max_bytes * REFUSED_SHARE
            assert writer.backlog.bytes <= share  # the flood's share, and no more
            stored_refusals = len(writer.backlog)
            assert writer.backlog.dropped == 3000 - stored_refusals
            assert writer.backlog.dropped > 1000
            assert "audit records of refused calls dropped" in caplog.text

            # Writes still get in (the other half), until the backlog is full: then
            # they are refused before changing anything.
            accepted = 0
            full: grpc.aio.AioRpcError | None = None
            while full is None:
                assert accepted < 5000, "the backlog never filled up"
                results = await asyncio.gather(
                    *(
                        stub.Deposit(
                            wallet_pb2.DepositRequest(
                                wallet_id="w", amount=1, request_id=f"d-{accepted + n}"
                            )
                        )
                        for n in range(50)
                    ),
                    return_exceptions=True,
                )
                for result in results:
                    if isinstance(result, grpc.aio.AioRpcError):
                        full = result
                    else:
                        assert isinstance(result, wallet_pb2.DepositResponse)
                        accepted += 1
            assert full.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert error_reason(full) == "AUDIT_BACKLOG_FULL"
            assert server_retry_delay(full) == AuditBacklogFullError.retry_after == 2.0
            # Full means at most max_bytes plus the rows of the calls that were running.
            assert writer.backlog.bytes <= writer.backlog.max_bytes + 50 * 1024
            balance = await stub.GetWallet(wallet_pb2.GetWalletRequest(wallet_id="w"))
            assert balance.wallet.balance == accepted  # the refused deposits moved nothing

            await blocker.execute("ROLLBACK")  # the database recovers
            await writer.flush(within=60)
            assert writer.backlog.bytes == 0
            await stub.Deposit(wallet_pb2.DepositRequest(wallet_id="w", amount=1, request_id="z"))
            await writer.flush()
        async with server.runtime.db.read() as conn:
            by_status: dict[str, int] = dict(
                (
                    await conn.execute(
                        select(audit_log.c.status_code, func.count()).group_by(
                            audit_log.c.status_code
                        )
                    )
                ).all()
            )
        # Every accepted write is on record; refusals as far as their share allowed.
        assert by_status["OK"] == 1 + accepted + 1
        assert by_status["UNAUTHENTICATED"] == stored_refusals
    finally:
        await blocker.close()
        await server.stop()
