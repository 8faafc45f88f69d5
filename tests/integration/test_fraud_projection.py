"""Fraud worker against a real database (SQLite and PostgreSQL).

Withdrawals reach the projection through the generic consumer runner (inbox, one
transaction), either as synthetic ``FundsWithdrawn`` messages with explicit event
times (window edges, arrival order) or from WalletService's own outbox rows. Alerts
are read back through FraudService over gRPC.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import grpc
import pytest
import sqlalchemy as sa
from google.protobuf.timestamp_pb2 import Timestamp

from fraud_worker.bootstrap import build_components
from fraud_worker.projection import FraudProjection
from fraud_worker.rules import FraudRules, Withdrawal
from fraud_worker.store import FraudStore, FraudUnitOfWork
from tests.eventually import eventually
from wallet.v1 import events_pb2, fraud_pb2, fraud_pb2_grpc, wallet_pb2
from wallet_platform.config import Settings
from wallet_platform.messaging import events as messages
from wallet_platform.messaging.bus import Delivery
from wallet_platform.messaging.consumer import ConsumerRunner, Recorded
from wallet_platform.server.process import start_server
from wallet_platform.storage.database import Database
from wallet_platform.storage.schema import fraud_alerts, outbox
from wallet_service.domain import Movement
from wallet_service.service import WalletService

T0 = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)
RULES = FraudRules(large_withdrawal=1_000, rapid_count=3, rapid_window=timedelta(seconds=60))


class FixedClock:
    """Detection time for ``created_at``; advanced by hand so ordering is explicit."""

    def __init__(self) -> None:
        self.now = datetime(2026, 3, 2, tzinfo=UTC)

    def __call__(self) -> datetime:
        self.now += timedelta(milliseconds=1)
        return self.now


def withdrawal(wallet_id: str, seconds: float, amount: int = 10) -> Delivery:
    stamp = Timestamp()
    stamp.FromDatetime(T0 + timedelta(seconds=seconds))
    event = wallet_pb2.WalletEvent(
        event_id=str(uuid.uuid4()),
        wallet_id=wallet_id,
        sequence=1,
        type=wallet_pb2.WALLET_EVENT_TYPE_FUNDS_WITHDRAWN,
        amount=amount,
        balance_after=0,
        request_id=f"r-{seconds}",
        occurred_at=stamp,
        currency="USD",
    )
    message = events_pb2.FundsWithdrawn(event=event)
    kind = messages.KIND_BY_NAME["funds_withdrawn"]
    return Delivery(
        event.event_id, kind.routing_key, kind.message_type, message.SerializeToString(), 1
    )


async def alerts(db: Database, wallet_id: str | None = None) -> list[tuple[str, list[str]]]:
    import json

    query = sa.select(fraud_alerts.c.rule, fraud_alerts.c.event_ids).order_by(
        fraud_alerts.c.created_at
    )
    if wallet_id:
        query = query.where(fraud_alerts.c.wallet_id == wallet_id)
    async with db.read() as conn:
        return [(rule, json.loads(ids)) for rule, ids in await conn.execute(query)]


def projection(db: Database) -> FraudProjection:
    return FraudProjection(FraudStore(db), RULES, FixedClock())


async def judge_alone(db: Database, deliveries: list[Delivery]) -> None:
    """Judge withdrawals in one unit of work without the inbox (as a replayed copy)."""
    again = projection(db)
    work = [w for w in (again.translate(d).work for d in deliveries) if w is not None]
    async with again.unit_of_work() as uow:
        await again.apply(uow, work)
        await uow.commit()


@pytest.fixture
def runner(database: Database) -> ConsumerRunner:
    return ConsumerRunner(projection(database))


async def feed(runner: ConsumerRunner, deliveries: list[Delivery]) -> None:
    for delivery in deliveries:
        await runner.handle(delivery)


async def test_three_quick_withdrawals_one_alert_then_no_storm(
    database: Database, runner: ConsumerRunner
) -> None:
    burst = [withdrawal("w", s) for s in (0, 1, 2)]
    await feed(runner, burst)
    assert await alerts(database) == [("RAPID_WITHDRAWALS", [d.message_id for d in burst])]
    await feed(runner, [withdrawal("w", 3), withdrawal("w", 4)])
    assert len(await alerts(database)) == 1


async def test_two_withdrawals_raise_nothing(database: Database, runner: ConsumerRunner) -> None:
    await feed(runner, [withdrawal("w", 0), withdrawal("w", 1)])
    assert await alerts(database) == []


async def test_large_withdrawal_threshold(database: Database, runner: ConsumerRunner) -> None:
    at = withdrawal("a", 0, amount=1_000)
    await feed(runner, [at, withdrawal("b", 0, amount=999)])
    assert await alerts(database) == [("LARGE_WITHDRAWAL", [at.message_id])]


async def test_window_edges_by_event_time(database: Database, runner: ConsumerRunner) -> None:
    # Exactly one window apart: not rapid.
    await feed(runner, [withdrawal("edge", s) for s in (0, 30, 60)])
    assert await alerts(database, "edge") == []
    # Just inside: rapid.
    await feed(runner, [withdrawal("inside", s) for s in (0, 30, 59.999)])
    assert [rule for rule, _ in await alerts(database, "inside")] == ["RAPID_WITHDRAWALS"]


async def test_out_of_order_arrival_uses_event_time(
    database: Database, runner: ConsumerRunner
) -> None:
    late, *rest = [withdrawal("w", s) for s in (0, 100, 110, 200)]
    await feed(runner, [*rest, late])  # arrival order has three within seconds...
    assert await alerts(database) == []  # ...but by event time no three fit in 60 s
    one_more = withdrawal("w", 105)
    await feed(runner, [one_more])
    [(rule, ids)] = await alerts(database)
    assert rule == "RAPID_WITHDRAWALS" and set(ids) == {
        rest[0].message_id,
        rest[1].message_id,
        one_more.message_id,
    }


async def test_duplicate_delivery_raises_no_second_alert(
    database: Database, runner: ConsumerRunner
) -> None:
    burst = [withdrawal("w", s, amount=5_000) for s in (0, 1, 2)]
    await feed(runner, [*burst, *burst])
    # Judged again without the inbox's help (a replayed copy): still nothing new.
    await judge_alone(database, burst)
    got = await alerts(database)
    assert sorted(rule for rule, _ in got) == ["LARGE_WITHDRAWAL"] * 3 + ["RAPID_WITHDRAWALS"]
    async with database.read() as conn:
        published = (
            await conn.execute(
                sa.select(outbox.c.message_id, outbox.c.routing_key, outbox.c.payload).where(
                    outbox.c.routing_key == "wallet.fraud_alert_raised"
                )
            )
        ).all()
        ids = {row.alert_id for row in await conn.execute(sa.select(fraud_alerts.c.alert_id))}
    assert {row.message_id for row in published} == ids
    decoded = messages.decode("wallet.v1.FraudAlertRaised", bytes(published[0].payload))
    assert isinstance(decoded, events_pb2.FraudAlertRaised)
    assert decoded.alert.alert_id in ids and decoded.alert.wallet_id == "w"


async def test_other_messages_are_ignored(database: Database, runner: ConsumerRunner) -> None:
    service = WalletService(database)
    await service.create_wallet("x", "USD", "c")
    await service.deposit("x", 10_000, "d")
    await service.move(
        Movement.TRANSFER_DEBIT, "x", 5_000, "", transfer_id="t", currency="USD", to_wallet_id="y"
    )
    async with database.read() as conn:
        rows = (await conn.execute(sa.select(outbox).order_by(outbox.c.id))).all()
    await feed(
        runner,
        [Delivery(r.message_id, r.routing_key, r.message_type, bytes(r.payload), 1) for r in rows],
    )
    assert await alerts(database) == []  # a large transfer debit is not a withdrawal


async def test_real_withdrawals_and_list_over_grpc(settings: Settings) -> None:
    settings = settings.replace(fraud_large_withdrawal=1_000)
    running = await start_server(settings, build_components, role="fraud-worker")
    try:
        db = running.runtime.db
        service = WalletService(db)
        await service.create_wallet("quick", "USD", "c1")
        await service.create_wallet("big", "USD", "c2")
        await service.deposit("quick", 10_000, "d1")
        await service.deposit("big", 10_000, "d2")
        for n in range(5):
            await service.withdraw("quick", 10, f"wq{n}")
        await service.withdraw("big", 1_000, "wb")
        await service.withdraw("big", 999, "wb2")
        rules = FraudRules.from_settings(settings)
        runner = ConsumerRunner(FraudProjection(FraudStore(db), rules))
        async with db.read() as conn:
            rows = (await conn.execute(sa.select(outbox).order_by(outbox.c.id))).all()
        await feed(
            runner,
            [
                Delivery(r.message_id, r.routing_key, r.message_type, bytes(r.payload), 1)
                for r in rows
            ],
        )
        async with grpc.aio.insecure_channel(running.target) as channel:
            stub = fraud_pb2_grpc.FraudServiceStub(channel)
            quick = await stub.ListFraudAlerts(fraud_pb2.ListFraudAlertsRequest(wallet_id="quick"))
            assert [a.rule for a in quick.alerts] == [fraud_pb2.FRAUD_RULE_RAPID_WITHDRAWALS]
            assert len(quick.alerts[0].event_ids) == 3
            big = await stub.ListFraudAlerts(fraud_pb2.ListFraudAlertsRequest(wallet_id="big"))
            assert [a.rule for a in big.alerts] == [fraud_pb2.FRAUD_RULE_LARGE_WITHDRAWAL]
            # All wallets, one per page, newest first, until the cursor runs out.
            seen, token = [], ""
            while True:
                page = await stub.ListFraudAlerts(
                    fraud_pb2.ListFraudAlertsRequest(page_size=1, page_token=token)
                )
                seen.extend(page.alerts)
                token = page.next_page_token
                if not token:
                    break
            assert [a.alert_id for a in seen] == [
                a.alert_id
                for a in sorted(
                    seen, key=lambda a: (a.created_at.ToDatetime(), a.alert_id), reverse=True
                )
            ]
            assert {a.wallet_id for a in seen} == {"quick", "big"} and len(seen) == 2
            with pytest.raises(grpc.aio.AioRpcError) as bad:
                await stub.ListFraudAlerts(fraud_pb2.ListFraudAlertsRequest(page_token="garbage!"))
            assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            none = await stub.ListFraudAlerts(fraud_pb2.ListFraudAlertsRequest(wallet_id="nobody"))
            assert list(none.alerts) == [] and none.next_page_token == ""
    finally:
        await running.stop()


async def test_batched_apply_judges_in_order(database: Database) -> None:
    """Several withdrawals in one unit of work give the same verdicts as one by one."""
    burst = [withdrawal("w", s) for s in (0, 1, 2, 3)]
    await judge_alone(database, burst)
    assert await alerts(database) == [("RAPID_WITHDRAWALS", [d.message_id for d in burst[:3]])]


async def test_concurrent_workers_raise_one_alert_per_burst(database: Database) -> None:
    """Two runners (as two worker processes: no shared in-process lock) judge one
    wallet's burst at the same time; the per-wallet database lock keeps it to one alert."""
    import asyncio

    first = ConsumerRunner(projection(database))
    second = ConsumerRunner(projection(database))
    burst = [withdrawal("w", s) for s in range(8)]
    await asyncio.gather(
        *(runner.handle(d) for runner, d in zip([first, second] * 4, burst, strict=True))
    )
    assert [rule for rule, _ in await alerts(database)] == ["RAPID_WITHDRAWALS"]


async def test_old_withdrawals_are_pruned_alerts_kept(
    database: Database, runner: ConsumerRunner
) -> None:

    from fraud_worker.housekeeping import WithdrawalPruner, prune_withdrawals
    from wallet_platform.storage.schema import fraud_withdrawals

    async def remembered() -> int:
        async with database.read() as conn:
            query = sa.select(sa.func.count()).select_from(fraud_withdrawals)
            return int((await conn.execute(query)).scalar_one())

    await feed(runner, [withdrawal("w", s) for s in (0, 1, 2, 100)])
    assert await prune_withdrawals(database, T0 + timedelta(seconds=50), batch=2) == 3
    assert await remembered() == 1
    # The component prunes by wall clock minus the retention (1 day here).
    pruner = WithdrawalPruner(
        database, RULES, interval=0.01, clock=lambda: T0 + timedelta(days=1, seconds=101)
    )
    await pruner.start()
    try:
        await eventually(
            remembered, lambda left: left == 0, what="every withdrawal pruned", within=10
        )
    finally:
        await pruner.stop()
    assert [rule for rule, _ in await alerts(database)] == ["RAPID_WITHDRAWALS"]


def deposit_delivery(wallet_id: str) -> Delivery:
    event = wallet_pb2.WalletEvent(
        event_id=str(uuid.uuid4()),
        wallet_id=wallet_id,
        sequence=1,
        type=wallet_pb2.WALLET_EVENT_TYPE_FUNDS_DEPOSITED,
        amount=5,
        balance_after=5,
        request_id=uuid.uuid4().hex,
        currency="USD",
    )
    event.occurred_at.FromDatetime(T0)
    kind = messages.KIND_BY_NAME["funds_deposited"]
    body = events_pb2.FundsDeposited(event=event).SerializeToString()
    return Delivery(event.event_id, kind.routing_key, kind.message_type, body, 1)


async def test_a_batch_judges_like_one_by_one(database: Database) -> None:
    """The runner's batch path (one inbox statement; the batch's wallets locked at
    once; withdrawals judged in arrival order) raises exactly the alerts of one by one
    (the in-memory twin ``replay``), with a repeated and a redelivered withdrawal,
    out-of-order event times, a large withdrawal and deposits mixed in."""
    import asyncio

    from fraud_worker.projection import withdrawal_of
    from fraud_worker.rules import replay

    class Counting(FraudProjection):
        batches: list[int] = []

        async def record_and_apply(
            self,
            uow: FraudUnitOfWork,
            consumer: str,
            message_ids: Sequence[str],
            work: Sequence[Withdrawal | None],
        ) -> Recorded:
            Counting.batches.append(len(message_ids))
            return await super().record_and_apply(uow, consumer, message_ids, work)

    runner = ConsumerRunner(Counting(FraudStore(database), RULES, FixedClock()))
    early = withdrawal("a", 0)
    await runner.handle(early)  # applied before the batch, redelivered inside it
    a_rest = [withdrawal("a", s) for s in (30, 1, 50)]
    b_all = [withdrawal("b", s) for s in (5, 200, 6, 7, 8)]
    big = withdrawal("c", 0, amount=5_000)
    burst = [
        deposit_delivery("a"),
        a_rest[0],
        b_all[0],
        early,
        a_rest[1],
        b_all[1],
        b_all[2],
        deposit_delivery("b"),
        a_rest[1],
        big,
        b_all[3],
        a_rest[2],
        b_all[4],
    ]
    await asyncio.gather(*(runner.handle(d) for d in burst))
    # One unit of work for the burst, its repeats dropped (no fallback to one by one).
    assert Counting.batches == [1, len({d.message_id for d in burst})]

    arrivals = []
    for delivery in [early, *burst]:
        found = withdrawal_of(delivery).work
        if found is not None:
            arrivals.append(found)
    expected = sorted(  # replay's bursts are not per wallet: one wallet at a time
        (d.rule, list(d.event_ids))
        for wallet in ("a", "b", "c")
        for d in replay(RULES, [w for w in arrivals if w.wallet_id == wallet])
    )
    assert sorted(await alerts(database)) == expected
    assert len(expected) == 3  # a's burst, b's burst, c's large withdrawal
    async with database.read() as conn:
        query = sa.select(sa.func.count()).select_from(outbox)
        assert (await conn.execute(query)).scalar_one() == 3
        inbox_rows = sa.text("SELECT count(*) FROM inbox WHERE consumer = 'fraud'")
        assert (await conn.execute(inbox_rows)).scalar_one() == len({d.message_id for d in burst})
