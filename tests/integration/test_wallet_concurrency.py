"""Concurrent writes: no lost update, one application per request_id, no deadlock.

The money cases run on both backends (SQLite serialises writers, PostgreSQL really
runs them in parallel on separate connections); the deadlock case and the append-only
trigger are PostgreSQL-only.
"""

from __future__ import annotations

import asyncio
import uuid

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.exc import DBAPIError

from tests.conftest import requires_postgres
from tests.integration.test_wallet_service import check_invariants
from wallet_platform.config import Settings
from wallet_platform.errors import InsufficientFundsError, UnavailableError
from wallet_platform.storage.database import Database
from wallet_platform.storage.schema import idempotency_records, outbox, wallet_events
from wallet_service.domain import Movement
from wallet_service.service import WalletService


@pytest.fixture
def service(database):
    return WalletService(database)


async def test_50_concurrent_withdrawals_of_100_from_2000_exactly_20_succeed(service, database):
    await service.create_wallet("pool", "USD", "c")
    await service.deposit("pool", 2_000, "d")

    async def withdraw(n: int) -> bool:
        try:
            await service.withdraw("pool", 100, f"wd-{n}")
        except InsufficientFundsError:
            return False
        return True

    results = await asyncio.gather(*(withdraw(n) for n in range(50)))
    assert results.count(True) == 20
    wallet = await service.get_wallet("pool")
    assert wallet.balance == 0
    assert wallet.version == 2 + 20
    await check_invariants(database, "pool")


async def test_20_concurrent_identical_deposits_apply_once(service, database):
    await service.create_wallet("once", "USD", "c")
    responses = await asyncio.gather(
        *(service.deposit("once", 250, "same-request") for _ in range(20))
    )
    assert sum(not r.replayed for r in responses) == 1
    assert sum(r.replayed for r in responses) == 19
    assert len({r.event.event_id for r in responses}) == 1
    assert (await service.get_wallet("once")).balance == 250
    async with database.read() as conn:
        deposits = (
            await conn.execute(
                select(func.count())
                .select_from(wallet_events)
                .where(wallet_events.c.request_id == "same-request")
            )
        ).scalar()
    assert deposits == 1
    await check_invariants(database, "once")


async def test_20_concurrent_identical_rejections_are_all_the_same_error(service):
    await service.create_wallet("poor", "USD", "c")
    outcomes = await asyncio.gather(
        *(service.withdraw("poor", 5, "too-much") for _ in range(20)), return_exceptions=True
    )
    assert all(getattr(o, "error_reason", None) == "INSUFFICIENT_FUNDS" for o in outcomes)


@requires_postgres
async def test_opposite_transfer_steps_between_two_wallets_never_deadlock(pg_database_url_fresh):
    database = Database.from_settings(Settings(database_url=pg_database_url_fresh, db_pool_size=10))
    service = WalletService(database)
    try:
        await service.create_wallet("a", "USD", "ca")
        await service.create_wallet("b", "USD", "cb")
        await service.deposit("a", 10_000, "da")
        await service.deposit("b", 10_000, "db")

        async def transfer(n: int, source: str, target: str) -> None:
            transfer_id = f"t{n}"
            await service.move(
                Movement.TRANSFER_DEBIT,
                source,
                10,
                f"{transfer_id}:debit",
                transfer_id=transfer_id,
                currency="USD",
                to_wallet_id=target,
            )
            await service.move(
                Movement.TRANSFER_CREDIT,
                target,
                10,
                f"{transfer_id}:credit",
                transfer_id=transfer_id,
                currency="USD",
            )

        await asyncio.wait_for(
            asyncio.gather(
                *(transfer(n, *(("a", "b") if n % 2 else ("b", "a"))) for n in range(100))
            ),
            timeout=60,
        )
        assert (await service.get_wallet("a")).balance == 10_000
        assert (await service.get_wallet("b")).balance == 10_000
        await check_invariants(database, "a")
        await check_invariants(database, "b")
    finally:
        await database.dispose()


@requires_postgres
async def test_the_event_log_is_append_only_in_postgresql(pg_database_url_fresh):
    database = Database.from_settings(Settings(database_url=pg_database_url_fresh))
    service = WalletService(database)
    try:
        await service.create_wallet("fixed", "USD", "c")
        await service.deposit("fixed", 5, "d")
        for statement in (
            "UPDATE wallet_events SET amount = 500 WHERE wallet_id = 'fixed'",
            "DELETE FROM wallet_events WHERE wallet_id = 'fixed'",
            "TRUNCATE wallet_events CASCADE",
        ):
            with pytest.raises(DBAPIError, match="append-only"):
                async with database.transaction() as conn:
                    await conn.execute(text(statement))
        events, _ = await service.list_events("fixed")
        assert [e.amount for e in events] == [5, 0]
    finally:
        await database.dispose()


async def test_many_mixed_concurrent_writes_keep_every_invariant(service, database):
    wallet_ids = [f"m{n}" for n in range(4)]
    for wallet_id in wallet_ids:
        await service.create_wallet(wallet_id, "USD", f"c-{wallet_id}")

    async def work(n: int) -> None:
        wallet_id = wallet_ids[n % 4]
        key = uuid.uuid4().hex
        try:
            if n % 3 == 0:
                await service.withdraw(wallet_id, 7, key)
            else:
                await service.deposit(wallet_id, 5, key)
            if n % 5 == 0:  # an immediate retry of the same request
                await (
                    service.withdraw(wallet_id, 7, key)
                    if n % 3 == 0
                    else service.deposit(wallet_id, 5, key)
                )
        except Exception as error:  # a rejection must be a clean business error
            assert getattr(error, "error_reason", "") == "INSUFFICIENT_FUNDS"

    await asyncio.gather(*(work(n) for n in range(80)))
    for wallet_id in wallet_ids:
        await check_invariants(database, wallet_id)
    async with database.read() as conn:
        events = (await conn.execute(select(func.count()).select_from(wallet_events))).scalar()
        queued = (await conn.execute(select(func.count()).select_from(outbox))).scalar()
        pending = (
            await conn.execute(
                select(func.count())
                .select_from(idempotency_records)
                .where(idempotency_records.c.status_code == "PENDING")
            )
        ).scalar()
    assert events == queued
    assert pending == 0


@requires_postgres
async def test_a_lock_timeout_is_unavailable_and_the_retry_applies_once(pg_database_url_fresh):
    database = Database.from_settings(
        Settings(database_url=pg_database_url_fresh, db_lock_timeout_ms=200)
    )
    service = WalletService(database)
    try:
        await service.create_wallet("busy", "USD", "c")
        async with database.transaction() as blocker:
            # Another session holds the wallet row: our deposit waits, then times out.
            await blocker.execute(text("SELECT 1 FROM wallets WHERE wallet_id = 'busy' FOR UPDATE"))
            with pytest.raises(UnavailableError):
                await service.deposit("busy", 9, "dep-busy")
        retried = await service.deposit("busy", 9, "dep-busy")
        assert not retried.replayed  # the timed-out attempt left nothing behind
        assert (await service.deposit("busy", 9, "dep-busy")).replayed
        assert (await service.get_wallet("busy")).balance == 9
        await check_invariants(database, "busy")
    finally:
        await database.dispose()
