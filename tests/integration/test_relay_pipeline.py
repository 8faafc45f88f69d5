"""The outbox relay end to end: real deposits -> outbox -> bus -> both consumer queues.

- on every bus, the relay drains the outbox rows written by real deposits into both
  queues, nothing lost;
- a row whose transaction commits late (lower id, committed after a higher one was
  relayed) is still published (status column, not an id cursor);
- on every bus: a relay killed right after the bus confirmed (failpoint
  ``outbox.after_publish=exit``, a real subprocess) republishes on restart, so every
  event arrives at least once;
- RabbitMQ: while the broker is stopped deposits keep succeeding; afterwards the backlog
  drains, the consumers are consuming again (``rabbitmqctl list_queues``) and every
  event is applied.
"""

from __future__ import annotations

import asyncio
import os
import sys
import uuid
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import grpc
import pytest
from sqlalchemy import func, insert, select

from tests.eventually import eventually
from tests.rabbit import (
    BusUnderTest,
    broker_stopped,
    queue_consumers,
    requires_postgres,
    requires_rabbitmq,
)
from wallet.v1 import events_pb2, wallet_pb2_grpc
from wallet.v1 import wallet_pb2 as pb
from wallet_platform import topology
from wallet_platform.clock import utcnow
from wallet_platform.config import Settings
from wallet_platform.messaging.bus import Delivery, EventBus, PublishError
from wallet_platform.messaging.consumer import (
    ConsumerComponent,
    CoreInboxUnitOfWork,
    PipelineInboxUnitOfWork,
    Recorded,
    Translated,
)
from wallet_platform.messaging.outbox.relay import relay_batch
from wallet_platform.messaging.outbox.rows import outbox_row
from wallet_platform.messaging.rabbit import RabbitBus
from wallet_platform.runtime import Runtime
from wallet_platform.server.builder import Component
from wallet_platform.server.process import start_server
from wallet_platform.storage.database import Database
from wallet_platform.storage.schema import inbox, outbox, wallet_events
from wallet_service import bootstrap as wallet_bootstrap
from wallet_service.service import WalletService

VENV_BIN = Path(sys.executable).parent


class Collector:
    """Consumes both queues and counts the message ids each one received."""

    def __init__(self) -> None:
        self.received: dict[str, Counter[str]] = {q: Counter() for q in events_queues()}

    async def start(self, bus: EventBus) -> None:
        for queue in events_queues():

            async def handler(delivery: Delivery, queue: str = queue) -> None:
                self.received[queue][delivery.message_id] += 1

            await bus.consume(queue, handler)

    async def wait_for(self, ids: set[str], limit: float = 30.0) -> None:
        await eventually(
            lambda: all(set(got) >= ids for got in self.received.values()),
            what="every id in both queues",
            within=limit,
        )


def events_queues() -> list[str]:
    return [topology.ANALYTICS_QUEUE, topology.FRAUD_QUEUE]


async def event_ids(db: Database) -> set[str]:
    async with db.read() as conn:
        return {row[0] for row in await conn.execute(select(wallet_events.c.event_id))}


async def pending_count(db: Database) -> int:
    async with db.read() as conn:
        result = await conn.execute(
            select(func.count()).select_from(outbox).where(outbox.c.status == "pending")
        )
        return int(result.scalar_one())


async def eventually_no_pending(db: Database, limit: float = 30.0) -> None:
    async def drained() -> bool:
        return await pending_count(db) == 0

    await eventually(drained, what="an empty outbox backlog", within=limit)


def rid() -> str:
    return uuid.uuid4().hex


async def test_relay_drains_real_deposits_into_both_queues(
    bus_under_test: BusUnderTest,
) -> None:
    collector = Collector()
    await collector.start(bus_under_test.bus)
    running = await start_server(
        bus_under_test.settings, wallet_bootstrap.build_components, role="wallet-service"
    )
    try:
        async with grpc.aio.insecure_channel(running.target) as channel:
            stub = wallet_pb2_grpc.WalletServiceStub(channel)
            wallets = [f"relay-{i}-{rid()[:6]}" for i in range(4)]
            for wallet_id in wallets:
                await stub.CreateWallet(
                    pb.CreateWalletRequest(wallet_id=wallet_id, currency="USD", request_id=rid())
                )

            async def deposits(wallet_id: str) -> None:
                for amount in range(1, 16):
                    await stub.Deposit(
                        pb.DepositRequest(wallet_id=wallet_id, amount=amount, request_id=rid())
                    )

            await asyncio.gather(*(deposits(w) for w in wallets))
        want = await event_ids(bus_under_test.db)
        assert len(want) == 4 * 16
        await collector.wait_for(want)
        await eventually_no_pending(bus_under_test.db)
    finally:
        await running.stop(grace=1)
    for received in collector.received.values():
        assert set(received) == want  # nothing lost, nothing foreign


@requires_postgres
async def test_late_commit_is_not_skipped(pg_bus_under_test: BusUnderTest) -> None:
    """Row A gets the lower id but commits after row B was relayed: A is still sent."""
    db, bus = pg_bus_under_test.db, pg_bus_under_test.bus
    collector = Collector()
    await collector.start(bus)

    def row(message_id: str) -> dict:
        message = events_pb2.TransferCompleted()
        return outbox_row(message_id, "wallet.transfer_completed", message, utcnow())

    late_id, early_id = f"late-{rid()}", f"early-{rid()}"
    async with db.transaction() as late:
        await late.execute(insert(outbox).values(row(late_id)))  # lower id, not committed
        async with db.transaction() as early:
            await early.execute(insert(outbox).values(row(early_id)))
        assert await relay_batch(db, bus) == 1  # only the committed one
    assert await relay_batch(db, bus) == 1  # the late one, now committed
    await collector.wait_for({late_id, early_id})
    async with db.read() as conn:
        ids = [r[0] for r in await conn.execute(select(outbox.c.id).order_by(outbox.c.id))]
        statuses = {r[0] for r in await conn.execute(select(outbox.c.status))}
    assert len(ids) == 2 and statuses == {"published"}


def service_env(settings, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        WALLET_DATABASE_URL=settings.database_url,
        WALLET_AMQP_URL=settings.amqp_url,
        WALLET_AMQP_QUEUE_TYPE=settings.amqp_queue_type,
        WALLET_LISTEN="127.0.0.1:0",
        WALLET_LOG_FORMAT="console",
        WALLET_LOG_LEVEL="WARNING",
        WALLET_FAILPOINTS="",
    )
    env.update(extra)
    return env


@pytest.mark.slow
async def test_relay_killed_after_publish_republishes_on_restart(
    bus_under_test: BusUnderTest,
) -> None:
    db = bus_under_test.db
    service = WalletService(db)
    wallet_id = f"crash-{rid()[:8]}"
    await service.create_wallet(wallet_id, "USD", rid())
    for amount in range(1, 31):
        await service.deposit(wallet_id, amount, rid())
    want = await event_ids(db)
    assert len(want) == 31 and await pending_count(db) == 31

    process = await asyncio.create_subprocess_exec(
        str(VENV_BIN / "wallet-service"),
        env=service_env(bus_under_test.settings, WALLET_FAILPOINTS="outbox.after_publish=exit"),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(60):
            _, stderr = await process.communicate()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode == 137, stderr.decode()[-2000:]
    assert b"failpoint outbox.after_publish: exit" in stderr
    assert await pending_count(db) == 31  # published and confirmed, but never marked

    collector = Collector()
    await collector.start(bus_under_test.bus)
    await collector.wait_for(want)  # the dead relay's messages did reach the queues
    running = await start_server(
        bus_under_test.settings, wallet_bootstrap.build_components, role="wallet-service"
    )
    try:
        await eventually_no_pending(db)
    finally:
        await running.stop(grace=1)

    await eventually(
        lambda: all(
            all(count >= 2 for count in received.values()) and set(received) == want
            for received in collector.received.values()
        ),
        what="every event twice in each queue (before and after the crash)",
    )


class InboxOnly:
    """A projection with no tables of its own: the inbox row is the evidence."""

    def __init__(self, db: Database, queue: str, name: str) -> None:
        self.db, self.queue, self.consumer_name = db, queue, name

    def translate(self, delivery: Delivery) -> Translated[None]:
        return Translated(None)

    def unit_of_work(self) -> CoreInboxUnitOfWork | PipelineInboxUnitOfWork:
        if self.db.is_postgres:
            return PipelineInboxUnitOfWork(self.db)
        return CoreInboxUnitOfWork(self.db)

    async def record_and_apply(self, uow, consumer, message_ids, work) -> Recorded:
        return await uow.record_inbox(consumer, message_ids)


def stack_with_consumers(runtime: Runtime) -> Sequence[Component]:
    db = runtime.db
    return [
        *wallet_bootstrap.build_components(runtime),
        ConsumerComponent(runtime, InboxOnly(db, topology.ANALYTICS_QUEUE, "outage-a"), "outage-a"),
        ConsumerComponent(runtime, InboxOnly(db, topology.FRAUD_QUEUE, "outage-f"), "outage-f"),
    ]


async def inbox_ids(db: Database, consumer: str) -> set[str]:
    async with db.read() as conn:
        rows = await conn.execute(select(inbox.c.message_id).where(inbox.c.consumer == consumer))
        return {row[0] for row in rows}


@pytest.mark.slow
@requires_rabbitmq
async def test_broker_outage_loses_nothing_and_consumers_come_back(
    rabbit_bus_under_test: BusUnderTest,
) -> None:
    """Stops RabbitMQ for a few seconds (the whole broker: keep it short)."""
    bus_under_test = rabbit_bus_under_test
    assert bus_under_test.vhost is not None
    db = bus_under_test.db
    running = await start_server(bus_under_test.settings, stack_with_consumers, role="stack")
    failures: list[str] = []
    done = 0
    stop = asyncio.Event()
    try:
        async with grpc.aio.insecure_channel(running.target) as channel:
            stub = wallet_pb2_grpc.WalletServiceStub(channel)
            wallets = [f"outage-{i}-{rid()[:6]}" for i in range(3)]
            for wallet_id in wallets:
                await stub.CreateWallet(
                    pb.CreateWalletRequest(wallet_id=wallet_id, currency="USD", request_id=rid())
                )

            async def keep_depositing(wallet_id: str) -> None:
                nonlocal done
                while not stop.is_set():
                    try:
                        await stub.Deposit(
                            pb.DepositRequest(wallet_id=wallet_id, amount=7, request_id=rid()),
                            timeout=10,
                        )
                        done += 1
                    except grpc.aio.AioRpcError as error:
                        failures.append(f"{error.code()}: {error.details()}")
                    await asyncio.sleep(0.01)

            writers = [asyncio.create_task(keep_depositing(w)) for w in wallets]
            await asyncio.sleep(1.0)
            before_outage = done

            def outage() -> None:
                with broker_stopped():
                    import time

                    time.sleep(3)

            await asyncio.to_thread(outage)
            during_outage = done - before_outage
            await asyncio.sleep(2.0)
            stop.set()
            await asyncio.gather(*writers)
        assert failures == []
        assert during_outage > 0  # writes kept working while the broker was down

        want = await event_ids(db)

        async def all_applied() -> bool:
            return (
                await inbox_ids(db, "outage-a") >= want and await inbox_ids(db, "outage-f") >= want
            )

        await eventually(
            all_applied, what="every event applied by both consumers", within=90, interval=0.2
        )
        await eventually_no_pending(db)
        vhost = bus_under_test.vhost

        async def consuming() -> bool:
            consumers = await asyncio.to_thread(queue_consumers, vhost)
            return all(consumers.get(q, 0) >= 1 for q in events_queues())

        await eventually(
            consuming, what="a consumer on each queue (rabbitmqctl)", within=30, interval=0.5
        )
    finally:
        stop.set()
        await running.stop(grace=1)


async def test_unreachable_broker_keeps_rows_pending(database: Database) -> None:
    """No broker at all: deposits commit, the relay fails politely, rows stay pending."""
    bus = RabbitBus("amqp://guest:guest@127.0.0.1:1/", start_wait=0.2)  # nothing listens
    await bus.start()
    try:
        service = WalletService(database)
        wallet_id = f"nobroker-{rid()[:8]}"
        await service.create_wallet(wallet_id, "USD", rid())
        await service.deposit(wallet_id, 10, rid())
        with pytest.raises(PublishError):
            await relay_batch(database, bus)
        async with database.read() as conn:
            rows = (
                await conn.execute(select(outbox.c.status, outbox.c.attempts, outbox.c.last_error))
            ).all()
        assert len(rows) == 2
        assert all(r.status == "pending" and r.attempts == 1 for r in rows)
        assert all("not connected" in r.last_error for r in rows)
    finally:
        await bus.close()


class _RecordingBus:
    """Records the size of every publish call (one call per relay round)."""

    def __init__(self) -> None:
        self.rounds: list[int] = []

    async def publish(self, messages: Sequence[object]) -> None:
        self.rounds.append(len(messages))


async def test_commits_during_a_round_interval_share_the_next_round(
    database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under load the relay starts at most one round per MIN_ROUND_SECONDS: commits
    that wake it meanwhile are published together in the next round, not one each.
    (A long interval here so that the burst surely fits in it.)"""
    from wallet_platform.messaging.outbox import relay as relay_module

    monkeypatch.setattr(relay_module, "MIN_ROUND_SECONDS", 2.0)
    service = WalletService(database)
    await service.create_wallet("burst", "USD", rid())
    bus = _RecordingBus()
    while await relay_batch(database, bus):  # type: ignore[arg-type]  # only publishes
        pass
    bus.rounds.clear()
    runtime = Runtime(settings=Settings(), db=database)  # the relay reads only the db
    relay = relay_module.OutboxRelay(runtime)
    relay._loop = asyncio.get_running_loop()
    relay._install_commit_hook()
    task = asyncio.create_task(relay._run(bus))  # type: ignore[arg-type]  # only publishes
    try:
        await service.deposit("burst", 1, rid())
        await eventually(
            lambda: sum(bus.rounds) == 1, what="the first deposit published", within=10
        )
        for _ in range(5):  # each commit wakes the relay, inside the interval
            await service.deposit("burst", 1, rid())
        await eventually(lambda: sum(bus.rounds) == 6, what="every deposit published", within=10)
        assert bus.rounds == [1, 5]
    finally:
        relay._stopping = True
        relay._wakeup.set()
        await task
        relay._remove_commit_hook()
