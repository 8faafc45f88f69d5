"""Analytics projection against a real database (SQLite and PostgreSQL).

A scripted history goes through WalletService's service layer (so the events and
their outbox rows are exactly what production writes); the outbox rows are then fed
to the generic consumer runner, as the bus would. The projection must equal SQL
aggregates over ``wallet_events`` written independently here, and again after a
rebuild; a duplicate delivery changes nothing; GetWalletStats serves it over gRPC.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import UTC

import grpc
import pytest
import sqlalchemy as sa

from analytics_worker.bootstrap import build_components
from analytics_worker.domain import StatsDelta
from analytics_worker.projection import AnalyticsProjection
from analytics_worker.rebuild import compare_with_log, count_unapplied, rebuild_wallet_stats
from analytics_worker.store import CONSUMER_NAME, AnalyticsStore, StatsUnitOfWork
from wallet.v1 import analytics_pb2, analytics_pb2_grpc
from wallet_platform.config import Settings
from wallet_platform.messaging.bus import Delivery
from wallet_platform.messaging.consumer import ConsumerRunner, Recorded
from wallet_platform.server.process import start_server
from wallet_platform.server.status import error_reason
from wallet_platform.storage.database import Database
from wallet_platform.storage.schema import outbox
from wallet_service.domain import Movement
from wallet_service.service import WalletService

# Written independently of analytics_worker.domain.EFFECTS on purpose.
EXPECTED_SQL = """
SELECT wallet_id,
  SUM(CASE WHEN type = 'funds_deposited' THEN amount ELSE 0 END) AS total_deposited,
  SUM(CASE WHEN type = 'funds_withdrawn' THEN amount ELSE 0 END) AS total_withdrawn,
  SUM(CASE WHEN type = 'transfer_credited' THEN amount ELSE 0 END) AS total_transferred_in,
  SUM(CASE WHEN type = 'transfer_debited' THEN amount ELSE 0 END)
    - SUM(CASE WHEN type = 'transfer_refunded' THEN amount ELSE 0 END) AS total_transferred_out,
  SUM(CASE WHEN type = 'funds_deposited' THEN 1 ELSE 0 END) AS deposit_count,
  SUM(CASE WHEN type = 'funds_withdrawn' THEN 1 ELSE 0 END) AS withdrawal_count,
  SUM(CASE WHEN type = 'transfer_credited' THEN 1 ELSE 0 END) AS transfer_in_count,
  SUM(CASE WHEN type = 'transfer_debited' THEN 1 ELSE 0 END)
    - SUM(CASE WHEN type = 'transfer_refunded' THEN 1 ELSE 0 END) AS transfer_out_count,
  COUNT(*) AS events_applied
FROM wallet_events GROUP BY wallet_id ORDER BY wallet_id
"""
STATS_SQL = """
SELECT wallet_id, total_deposited, total_withdrawn, total_transferred_in,
  total_transferred_out, deposit_count, withdrawal_count, transfer_in_count,
  transfer_out_count, events_applied
FROM wallet_stats ORDER BY wallet_id
"""


async def rows(db: Database, sql: str) -> list[tuple[object, ...]]:
    async with db.read() as conn:
        return [
            tuple(int(v) if not isinstance(v, str) else v for v in row)
            for row in (await conn.execute(sa.text(sql))).all()
        ]


async def outbox_deliveries(db: Database) -> list[Delivery]:
    """Every outbox row as the bus would deliver it (first attempt)."""
    async with db.read() as conn:
        result = await conn.execute(sa.select(outbox).order_by(outbox.c.id))
        return [
            Delivery(r.message_id, r.routing_key, r.message_type, bytes(r.payload), 1)
            for r in result
        ]


async def scripted_history(service: WalletService) -> None:
    """Two wallets: deposits, withdrawals, a completed and a compensated transfer."""
    await service.create_wallet("alice", "USD", "c-alice")
    await service.create_wallet("bob", "USD", "c-bob")
    await service.deposit("alice", 1000, "d1")
    await service.deposit("alice", 2500, "d2")
    await service.deposit("bob", 300, "d3")
    await service.withdraw("alice", 400, "w1")
    # t1 completes: alice -700, bob +700.
    usd = {"currency": "USD"}
    await service.move(
        Movement.TRANSFER_DEBIT, "alice", 700, "", transfer_id="t1", to_wallet_id="bob", **usd
    )
    await service.move(Movement.TRANSFER_CREDIT, "bob", 700, "", transfer_id="t1", **usd)
    # t2 is compensated: alice -200, then the refund gives it back.
    await service.move(
        Movement.TRANSFER_DEBIT, "alice", 200, "", transfer_id="t2", to_wallet_id="bob", **usd
    )
    await service.move(Movement.TRANSFER_REFUND, "alice", 200, "", transfer_id="t2", **usd)
    await service.set_frozen("bob", "f1", freeze=True)
    await service.set_frozen("bob", "f2", freeze=False)
    await service.withdraw("bob", 100, "w2")


async def test_projection_equals_log_aggregates_and_survives_rebuild(database: Database) -> None:
    await scripted_history(WalletService(database))
    runner = ConsumerRunner(AnalyticsProjection(AnalyticsStore(database)))
    for delivery in await outbox_deliveries(database):
        await runner.handle(delivery)

    expected = await rows(database, EXPECTED_SQL)
    assert await rows(database, STATS_SQL) == expected
    alice = dict(
        zip(
            ["wallet_id", "dep", "wd", "tin", "tout", "depn", "wdn", "tinn", "toutn", "n"],
            expected[0],
            strict=True,
        )
    )
    assert alice == {
        "wallet_id": "alice",
        "dep": 3500,
        "wd": 400,
        "tin": 0,
        "tout": 700,
        "depn": 2,
        "wdn": 1,
        "tinn": 0,
        "toutn": 1,
        "n": 7,
    }
    assert await compare_with_log(database) == []
    assert await count_unapplied(database) == 0

    async with database.read() as conn:
        last_event = (
            await conn.execute(
                sa.text("SELECT max(occurred_at) FROM wallet_events WHERE wallet_id = 'bob'")
            )
        ).scalar_one()
    live = await stats_of(database, "bob")

    # Corrupt the projection: the drift check sees it, the rebuild repairs it.
    async with database.transaction() as conn:
        await conn.execute(
            sa.text("UPDATE wallet_stats SET total_deposited = 1 WHERE wallet_id = 'alice'")
        )
        await conn.execute(sa.text("DELETE FROM wallet_stats WHERE wallet_id = 'bob'"))
    drifts = await compare_with_log(database)
    assert [d.wallet_id for d in drifts] == ["alice", "bob"]
    assert drifts[0].differences() == {"total_deposited": (1, 3500)}
    assert drifts[1].projected is None

    assert await rebuild_wallet_stats(database) == 2
    assert await rows(database, STATS_SQL) == expected
    assert await compare_with_log(database) == []
    rebuilt = await stats_of(database, "bob")
    assert rebuilt == live
    assert str(last_event)[:19] in str(rebuilt.last_activity_at.replace(tzinfo=None))


async def stats_of(db: Database, wallet_id: str):
    from analytics_worker.service import AnalyticsService

    return await AnalyticsService(AnalyticsStore(db)).get_wallet_stats(wallet_id)


async def test_duplicate_delivery_applies_once(database: Database) -> None:
    service = WalletService(database)
    await service.create_wallet("w", "EUR", "c")
    await service.deposit("w", 50, "d")
    runner = ConsumerRunner(AnalyticsProjection(AnalyticsStore(database)))
    deliveries = await outbox_deliveries(database)
    for delivery in [*deliveries, *deliveries, deliveries[-1]]:
        await runner.handle(delivery)
    stats = await stats_of(database, "w")
    assert (stats.total_deposited, stats.deposit_count, stats.events_applied) == (50, 1, 2)


async def test_events_applied_out_of_order_give_the_same_stats(database: Database) -> None:
    await scripted_history(WalletService(database))
    runner = ConsumerRunner(AnalyticsProjection(AnalyticsStore(database)))
    for delivery in reversed(await outbox_deliveries(database)):
        await runner.handle(delivery)
    assert await rows(database, STATS_SQL) == await rows(database, EXPECTED_SQL)
    assert await compare_with_log(database) == []


async def test_unapplied_events_are_lag_not_drift(database: Database) -> None:
    """Half the log consumed: no drift, the rest shows as unapplied; a rebuild in the
    middle must not count the unconsumed half twice."""
    await scripted_history(WalletService(database))
    runner = ConsumerRunner(AnalyticsProjection(AnalyticsStore(database)))
    deliveries = [
        d for d in await outbox_deliveries(database) if d.routing_key != "wallet.transfer_completed"
    ]
    half = len(deliveries) // 2
    for delivery in deliveries[:half]:
        await runner.handle(delivery)
    assert await compare_with_log(database) == []
    assert await count_unapplied(database) == len(deliveries) - half
    await rebuild_wallet_stats(database)
    for delivery in deliveries[half:]:
        await runner.handle(delivery)
    assert await rows(database, STATS_SQL) == await rows(database, EXPECTED_SQL)


async def test_get_wallet_stats_over_grpc(settings: Settings) -> None:
    running = await start_server(settings, build_components, role="analytics-worker")
    try:
        db = running.runtime.db
        service = WalletService(db)
        await service.create_wallet("carol", "USD", "c")
        await service.deposit("carol", 123, "d")
        runner = ConsumerRunner(AnalyticsProjection(AnalyticsStore(db)))
        for delivery in await outbox_deliveries(db):
            await runner.handle(delivery)
        async with grpc.aio.insecure_channel(running.target) as channel:
            stub = analytics_pb2_grpc.AnalyticsServiceStub(channel)
            response = await stub.GetWalletStats(
                analytics_pb2.GetWalletStatsRequest(wallet_id="carol")
            )
            stats = response.stats
            assert (stats.wallet_id, stats.total_deposited, stats.deposit_count) == (
                "carol",
                123,
                1,
            )
            assert stats.events_applied == 2
            assert stats.last_activity_at.ToDatetime(tzinfo=UTC).year >= 2024
            with pytest.raises(grpc.aio.AioRpcError) as missing:
                await stub.GetWalletStats(analytics_pb2.GetWalletStatsRequest(wallet_id="nobody"))
            assert missing.value.code() == grpc.StatusCode.NOT_FOUND
            assert error_reason(missing.value) == "WALLET_STATS_NOT_FOUND"
            with pytest.raises(grpc.aio.AioRpcError) as bad:
                await stub.GetWalletStats(analytics_pb2.GetWalletStatsRequest(wallet_id="bad id!"))
            assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    finally:
        await running.stop()


async def whole_history_in_one_unit_of_work(database: Database, *, commit: bool) -> list[str]:
    """The scripted history's messages through the batch path (inbox rows and one
    upsert per wallet) in ONE unit of work, committed or not; returns the ids it
    reported new."""
    await scripted_history(WalletService(database))
    deliveries = await outbox_deliveries(database)
    store = AnalyticsStore(database)
    projection = AnalyticsProjection(store)
    ids = [d.message_id for d in deliveries]
    work = [projection.translate(d).work for d in deliveries]
    async with store.unit_of_work() as uow:
        recorded = await projection.record_and_apply(uow, CONSUMER_NAME, ids, work)
        if commit:
            await uow.commit()
    return sorted(await recorded.new_ids()) if commit else []


async def test_one_unit_of_work_for_the_whole_history_equals_the_log(database: Database) -> None:
    new = await whole_history_in_one_unit_of_work(database, commit=True)
    assert new == sorted(d.message_id for d in await outbox_deliveries(database))
    assert await rows(database, STATS_SQL) == await rows(database, EXPECTED_SQL)


async def test_an_uncommitted_unit_of_work_leaves_nothing(database: Database) -> None:
    """Leaving the block without commit rolls back: no inbox row, no stats."""
    await whole_history_in_one_unit_of_work(database, commit=False)
    assert await rows(database, STATS_SQL) == []
    wallet_events = [
        d for d in await outbox_deliveries(database) if d.routing_key != "wallet.transfer_completed"
    ]
    assert await count_unapplied(database) == len(wallet_events)


class CountingProjection(AnalyticsProjection):
    """Records each unit of work's size and how many new wallet events it applied."""

    def __init__(self, store: AnalyticsStore) -> None:
        super().__init__(store)
        self.batches: list[int] = []  # distinct message ids per unit of work
        self.applied = 0  # wallet events applied (new, with a stats change)

    async def record_and_apply(
        self,
        uow: StatsUnitOfWork,
        consumer: str,
        message_ids: Sequence[str],
        work: Sequence[StatsDelta | None],
    ) -> Recorded:
        recorded = await super().record_and_apply(uow, consumer, message_ids, work)
        new = await recorded.new_ids()
        self.batches.append(len(message_ids))
        self.applied += sum(
            1 for mid, delta in zip(message_ids, work, strict=True) if delta and mid in new
        )
        return recorded


async def test_a_batch_with_repeats_and_redeliveries_equals_one_by_one(
    database: Database,
) -> None:
    """The batch path (one inbox statement, one projection statement) gives exactly the
    one-by-one result: a message repeated inside the batch, and one applied before the
    batch (redelivered), each count once; non-wallet messages change nothing."""
    await scripted_history(WalletService(database))
    deliveries = await outbox_deliveries(database)
    projection = CountingProjection(AnalyticsStore(database))
    runner = ConsumerRunner(projection)
    # Applied before (each alone): the burst sees their inbox rows and must skip them.
    await runner.handle(deliveries[0])
    await runner.handle(deliveries[3])
    redelivered = [deliveries[0], deliveries[3]]
    repeated = [deliveries[5], deliveries[5], deliveries[-1]]
    burst = [*deliveries[1:], *redelivered, *repeated]
    await asyncio.gather(*(runner.handle(d) for d in burst))
    # One unit of work for the burst, its repeats dropped (no fallback to one by one).
    assert projection.batches == [1, 1, len({d.message_id for d in burst})]
    wallet_events = sum(1 for d in deliveries if d.routing_key != "wallet.transfer_completed")
    assert projection.applied == wallet_events  # each wallet event exactly once
    assert await rows(database, STATS_SQL) == await rows(database, EXPECTED_SQL)
    assert await compare_with_log(database) == []
    assert await count_unapplied(database) == 0
    # The same burst again (everything redelivered): nothing changes.
    before = await rows(database, STATS_SQL)
    await asyncio.gather(*(runner.handle(d) for d in burst))
    assert await rows(database, STATS_SQL) == before
    # And the last-activity times equal the one-by-one path's (same wallet's last event).
    one_by_one = await stats_of(database, "bob")
    assert one_by_one is not None and one_by_one.last_activity_at is not None
    async with database.read() as conn:
        last = (
            await conn.execute(
                sa.text("SELECT max(occurred_at) FROM wallet_events WHERE wallet_id = 'bob'")
            )
        ).scalar_one()
    assert str(last)[:19] in str(one_by_one.last_activity_at.replace(tzinfo=None))


async def test_a_failing_batch_falls_back_to_one_by_one(database: Database) -> None:
    """A batch whose statement fails is applied event by event, with the same result."""

    class FailingBatch(CountingProjection):
        async def record_and_apply(
            self,
            uow: StatsUnitOfWork,
            consumer: str,
            message_ids: Sequence[str],
            work: Sequence[StatsDelta | None],
        ) -> Recorded:
            if len(message_ids) > 1:
                raise RuntimeError("batch statement failed")
            return await super().record_and_apply(uow, consumer, message_ids, work)

    await scripted_history(WalletService(database))
    deliveries = await outbox_deliveries(database)
    projection = FailingBatch(AnalyticsStore(database))
    runner = ConsumerRunner(projection)
    await asyncio.gather(*(runner.handle(d) for d in [*deliveries, deliveries[2]]))
    assert projection.batches == [1] * (len(deliveries) + 1)  # each alone, the repeat too
    wallet_events = sum(1 for d in deliveries if d.routing_key != "wallet.transfer_completed")
    assert projection.applied == wallet_events  # the repeat was skipped by the inbox
    assert await rows(database, STATS_SQL) == await rows(database, EXPECTED_SQL)
    assert await count_unapplied(database) == 0
