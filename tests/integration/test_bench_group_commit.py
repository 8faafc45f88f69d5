"""Group commit (PostgreSQL): batched requests keep their own outcome and idempotency.

One burst mixes everything a batch can meet: many wallets, the same wallet many times,
identical retries, a debit without funds, a frozen wallet, an unknown wallet, a reused
key. Each request must get exactly the answer it gets alone, and the ledger invariants
must hold; the burst must really have been batched.
"""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import func, select

from tests.conftest import requires_postgres
from tests.integration.test_wallet_service import check_invariants
from wallet_platform.config import Settings
from wallet_platform.errors import (
    HoldNotFoundError,
    IdempotencyKeyReusedError,
    InsufficientFundsError,
    WalletFrozenError,
    WalletNotFoundError,
)
from wallet_platform.storage.database import Database
from wallet_platform.storage.schema import idempotency_records, wallet_events
from wallet_service.domain import Movement
from wallet_service.service import WalletService

pytestmark = requires_postgres


@pytest.fixture
async def pg_service(pg_database_url_fresh):
    db = Database.from_settings(Settings(database_url=pg_database_url_fresh))
    yield WalletService(db), db
    await db.dispose()


async def test_a_mixed_burst_is_batched_and_every_request_keeps_its_outcome(pg_service):
    service, db = pg_service
    assert service.store.group is not None
    for name in ("rich", "frozen", "same", "src", *(f"w{i}" for i in range(40))):
        await service.create_wallet(name, "USD", f"create-{name}")
    await service.deposit("rich", 100, "fund-rich")
    await service.deposit("src", 4, "fund-src")
    await service.move(
        Movement.TRANSFER_DEBIT, "src", 4, "", transfer_id="t1", currency="USD", to_wallet_id="w3"
    )
    await service.set_frozen("frozen", "freeze", freeze=True)
    await service.deposit("w0", 5, "reused-key")
    batches_before = service.store.group.batches

    async def attempt(coroutine):
        try:
            return await coroutine
        except Exception as error:  # the outcome under test
            return error

    calls = [
        *(service.deposit(f"w{i}", 10 + i, f"dep-{i}") for i in range(40)),
        *(service.deposit("same", 1, f"same-{n}") for n in range(15)),
        *(service.deposit("w1", 7, "retry-me") for _ in range(6)),
        service.withdraw("rich", 500, "too-much"),
        service.withdraw("rich", 60, "fits"),
        service.deposit("frozen", 5, "into-frozen"),
        service.deposit("ghost", 5, "no-such-wallet"),
        service.deposit("w2", 999, "reused-key"),
        service.move(
            Movement.TRANSFER_CREDIT, "w3", 4, "t1:credit", transfer_id="t1", currency="USD"
        ),
        service.move(Movement.TRANSFER_CREDIT, "w4", 9, "", transfer_id="made-up", currency="USD"),
    ]
    outcomes = await asyncio.gather(*(attempt(c) for c in calls))

    assert service.store.group.batches > batches_before
    assert service.store.group.batched_requests >= 40
    deposits, same, retries = outcomes[:40], outcomes[40:55], outcomes[55:61]
    too_much, fits, frozen, ghost, reused, credit, minted = outcomes[61:]
    for i, response in enumerate(deposits):
        assert not isinstance(response, Exception), response
        assert response.event.amount == 10 + i and not response.replayed
    assert sorted(r.wallet.version for r in same) == list(range(2, 17))
    assert sum(not r.replayed for r in retries) == 1
    assert len({r.event.event_id for r in retries}) == 1
    assert isinstance(too_much, InsufficientFundsError)
    assert fits.wallet.balance == 40
    assert isinstance(frozen, WalletFrozenError)
    assert isinstance(ghost, WalletNotFoundError)
    assert isinstance(reused, IdempotencyKeyReusedError)
    assert credit.event.transfer_id == "t1" and credit.wallet.balance in (4, 4 + 13)
    assert isinstance(minted, HoldNotFoundError)

    # Rejections were recorded exactly like the single path records them.
    again = await attempt(service.withdraw("rich", 500, "too-much"))
    assert getattr(again, "error_reason", None) == too_much.error_reason
    replay = await service.deposit("w5", 15, "dep-5")
    assert replay.replayed and replay.event.event_id == deposits[5].event.event_id
    async with db.read() as conn:
        pending = (
            await conn.execute(
                select(func.count())
                .select_from(idempotency_records)
                .where(idempotency_records.c.status_code == "PENDING")
            )
        ).scalar()
        retried = (
            await conn.execute(
                select(func.count())
                .select_from(wallet_events)
                .where(wallet_events.c.request_id == "retry-me")
            )
        ).scalar()
    assert pending == 0
    assert retried == 1
    for name in ("rich", "frozen", "same", "src", *(f"w{i}" for i in range(40))):
        await check_invariants(db, name)


async def test_group_commit_can_be_switched_off(pg_database_url_fresh):
    db = Database.from_settings(Settings(database_url=pg_database_url_fresh))
    try:
        service = WalletService(db, group_commit=False)
        assert service.store.group is None
        await service.create_wallet("solo", "USD", "c")
        assert (await service.deposit("solo", 5, "d")).wallet.balance == 5
    finally:
        await db.dispose()


async def test_a_committed_batch_wakes_the_outbox_listeners(pg_service):
    """Group commit writes on the driver's connection (no engine events): after a batch
    that queued outbox rows it must call Database.outbox_committed (the relay's wake-up);
    a batch that queued nothing (every request rejected) must not."""
    service, db = pg_service
    await service.create_wallet("wake", "USD", "create-wake")
    calls: list[int] = []
    db.outbox_listeners.append(lambda: calls.append(1))
    await service.move(Movement.DEPOSIT, "wake", 5, "dep-wake")
    assert len(calls) == 1
    with pytest.raises(WalletNotFoundError):
        await service.move(Movement.DEPOSIT, "nobody", 5, "dep-nobody")
    assert len(calls) == 1


async def test_a_failed_pipelined_transaction_commits_nothing_and_leaves_the_pool_clean(
    pg_service,
):
    """Database.pipeline_transaction (group commit, relay): an error in the block or in
    a statement rolls everything back, and the connection goes back to the pool idle."""
    import psycopg

    _, db = pg_service
    insert = (
        "INSERT INTO idempotency_records (scope, request_id, fingerprint, status_code,"
        " created_at) VALUES ('test', %(key)s, 'f', 'PENDING', now())"
    )
    with pytest.raises(RuntimeError):
        async with db.pipeline_transaction() as conn:
            await conn.execute(insert, {"key": "pt-python-error"})
            raise RuntimeError("boom")
    with pytest.raises(psycopg.Error):
        async with db.pipeline_transaction() as conn:
            await conn.execute(insert, {"key": "pt-sql-error"})
            await conn.execute("SELECT 1 / 0")
    for n in range(20):  # more than the pool: every connection is reused at least once
        async with db.pipeline_transaction() as conn:
            await conn.execute(insert, {"key": f"pt-ok-{n}"})
            assert conn.info.transaction_status != psycopg.pq.TransactionStatus.INERROR
    async with db.read() as conn:
        keys = set(
            (
                await conn.execute(
                    select(idempotency_records.c.request_id).where(
                        idempotency_records.c.scope == "test"
                    )
                )
            ).scalars()
        )
    assert keys == {f"pt-ok-{n}" for n in range(20)}
