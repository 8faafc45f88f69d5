"""The consumer runner on every bus: inbox dedup, poison, retries, the after-apply crash.

A test projection records which events it applied; the inbox rows (same transaction)
are the durable evidence that each was applied exactly once.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest
from sqlalchemy import func, select

from tests.eventually import eventually
from tests.rabbit import BusUnderTest
from wallet.v1 import wallet_pb2
from wallet_platform import failpoints, topology
from wallet_platform.messaging import dlq
from wallet_platform.messaging import events as messages
from wallet_platform.messaging.bus import Delivery, OutgoingMessage, PoisonMessageError
from wallet_platform.messaging.consumer import (
    ConsumerComponent,
    ConsumerRunner,
    CoreInboxUnitOfWork,
    PipelineInboxUnitOfWork,
    Recorded,
    Translated,
    record_then_apply,
)
from wallet_platform.runtime import Runtime
from wallet_platform.storage.database import Database
from wallet_platform.storage.schema import inbox


class RecordingProjection:
    """Changes nothing but its inbox rows; remembers which deliveries reached it
    (``translated``, redeliveries included) and which it applied (in the unit of work,
    so also ones rolled back), and can fail chosen ones."""

    def __init__(
        self, db: Database, queue: str = topology.ANALYTICS_QUEUE, name: str = "test"
    ) -> None:
        self.db = db
        self.queue = queue
        self.consumer_name = name
        self.translated: list[str] = []
        self.applied: list[str] = []
        self.failing: set[str] = set()

    def translate(self, delivery: Delivery) -> Translated[Delivery]:
        self.translated.append(delivery.message_id)
        message = messages.decode_delivery(delivery)
        assert isinstance(message, messages.KIND_BY_NAME["funds_deposited"].message)
        return Translated(delivery, messages.trace_ids(message))

    def unit_of_work(self) -> CoreInboxUnitOfWork | PipelineInboxUnitOfWork:
        if self.db.is_postgres:
            return PipelineInboxUnitOfWork(self.db)
        return CoreInboxUnitOfWork(self.db)

    async def record_and_apply(self, uow, consumer, message_ids, work) -> Recorded:
        return await record_then_apply(uow, consumer, message_ids, work, self.apply)

    async def apply(self, uow, deliveries: list[Delivery]) -> None:
        for delivery in deliveries:
            if delivery.message_id in self.failing:
                raise RuntimeError("projection cannot apply this yet")
            self.applied.append(delivery.message_id)


def deposit(wallet_id: str = "w1", amount: int = 5) -> OutgoingMessage:
    event = wallet_pb2.WalletEvent(
        event_id=str(uuid.uuid4()),
        wallet_id=wallet_id,
        sequence=1,
        type=wallet_pb2.WALLET_EVENT_TYPE_FUNDS_DEPOSITED,
        amount=amount,
        balance_after=amount,
        request_id=uuid.uuid4().hex,
    )
    event.occurred_at.FromDatetime(datetime.now(UTC))
    row = messages.wallet_event_outbox_row(event, datetime.now(UTC))
    return OutgoingMessage(
        row["message_id"], row["routing_key"], row["message_type"], row["payload"]
    )


async def inbox_ids(but: BusUnderTest, consumer: str = "test") -> list[str]:
    async with but.db.read() as conn:
        rows = await conn.execute(select(inbox.c.message_id).where(inbox.c.consumer == consumer))
        return [row[0] for row in rows]


@pytest.fixture
async def started(bus_under_test: BusUnderTest):
    """A consumer component on the bus under test, with a recording projection."""
    runtime = Runtime(settings=bus_under_test.settings, db=bus_under_test.db)
    runtime.extras["bus"] = bus_under_test.bus
    projection = RecordingProjection(bus_under_test.db)
    component = ConsumerComponent(runtime, projection, "test-consumer", max_attempts=3)
    await component.start()
    try:
        yield bus_under_test, projection
    finally:
        await component.stop()


async def settled_through(but: BusUnderTest, projection: RecordingProjection) -> str:
    """Publish a last message and wait until it is applied: the consumer takes its
    queue in order and commits batch after batch, so every delivery before it has been
    applied or skipped by then. Returns the last message's id."""
    last = deposit()
    await but.bus.publish([last])
    await eventually(
        lambda: last.message_id in projection.applied, what="the last message applied", within=20
    )
    return last.message_id


async def test_duplicates_are_applied_once(started) -> None:
    but, projection = started
    first, second = deposit(), deposit()
    await but.bus.publish([first, first, second, first])

    async def both_in_inbox() -> bool:
        return set(await inbox_ids(but)) == {first.message_id, second.message_id}

    await eventually(both_in_inbox, what="both events in the inbox", within=20)
    last = await settled_through(but, projection)  # every duplicate has been through
    assert sorted(projection.applied) == sorted([first.message_id, second.message_id, last])


async def test_garbage_body_goes_to_dlq_and_next_message_flows(started) -> None:
    but, projection = started
    garbage = OutgoingMessage(
        str(uuid.uuid4()),
        "wallet.funds_deposited",
        "wallet.v1.FundsDeposited",
        b"\xff\xff\xff garbage",
    )
    unknown = OutgoingMessage(str(uuid.uuid4()), "wallet.funds_deposited", "no.Such", b"")
    good = deposit()
    await but.bus.publish([garbage, unknown, good])

    async def good_applied() -> bool:
        return good.message_id in projection.applied

    await eventually(good_applied, what="the good event applied", within=20)

    async def two_dead() -> bool:
        return len(await dlq.list_dead_letters(but.settings, "analytics")) == 2

    await eventually(two_dead, what="two dead letters", within=20)
    letters = {d.message_id: d for d in await dlq.list_dead_letters(but.settings, "analytics")}
    assert "cannot decode wallet.v1.FundsDeposited" in letters[garbage.message_id].reason
    assert letters[garbage.message_id].attempts == 1
    assert "unknown message type 'no.Such'" in letters[unknown.message_id].reason
    assert set(await inbox_ids(but)) == {good.message_id}


async def test_failing_projection_retries_then_dead_letters_then_replays(started) -> None:
    but, projection = started
    stuck, fine = deposit("w-stuck"), deposit("w-fine")
    projection.failing.add(stuck.message_id)
    await but.bus.publish([stuck, fine])

    async def dead() -> bool:
        return len(await dlq.list_dead_letters(but.settings, topology.ANALYTICS_QUEUE)) == 1

    await eventually(dead, what="the failing event dead-lettered", within=20)
    [letter] = await dlq.list_dead_letters(but.settings, topology.ANALYTICS_QUEUE)
    assert letter.message_id == stuck.message_id
    assert "projection cannot apply this yet" in letter.reason
    assert "after 3 attempts" in letter.reason
    assert await inbox_ids(but) == [fine.message_id]  # the failed attempts left no trace

    projection.failing.clear()
    assert await dlq.replay_dead_letters(but.settings, "analytics", [stuck.message_id]) == 1

    async def committed() -> bool:
        # The projection records the event inside the transaction; the inbox row is
        # what says that transaction committed.
        return sorted(await inbox_ids(but)) == sorted([stuck.message_id, fine.message_id])

    await eventually(committed, what="the replayed event applied and committed", within=20)
    assert stuck.message_id in projection.applied


async def test_crash_point_after_apply_still_applies_once(started) -> None:
    """``consumer.after_apply=error``: committed but not acked -> redelivered -> skipped."""
    but, projection = started
    failpoints.configure("consumer.after_apply=error")
    try:
        message = deposit()
        await but.bus.publish([message])

        async def applied() -> bool:
            return message.message_id in projection.applied

        await eventually(applied, what="the event applied", within=20)
        failpoints.configure("")
        await eventually(
            lambda: projection.translated.count(message.message_id) >= 2,
            what="the unacked event redelivered",
            within=20,
        )
        last = await settled_through(but, projection)  # the redelivery has been through
    finally:
        failpoints.configure("")
    assert projection.applied == [message.message_id, last]
    assert await dlq.list_dead_letters(but.settings, "analytics") == []
    async with but.db.read() as conn:
        count = await conn.execute(
            select(func.count()).where(inbox.c.message_id == message.message_id)
        )
        assert count.scalar_one() == 1


async def test_a_delivery_without_message_id_is_poison(database) -> None:
    """The inbox key is the message id: without one, exactly-once cannot be kept.

    (aio-pika invents an id for a message published without one, so this can only
    reach the runner from other publishers: checked on the runner directly.)
    """
    runner = ConsumerRunner(RecordingProjection(database))
    message = deposit()
    with pytest.raises(PoisonMessageError, match="no message_id"):
        await runner.handle(Delivery("", message.routing_key, message.message_type, b"", 1))


async def test_projection_logs_carry_the_events_audit_and_transfer_ids(database) -> None:
    """One audit id leads from the write call through the ledger to each consumer."""
    from wallet_platform.observability.logs import audit_id_var, transfer_id_var

    seen: list[tuple[str | None, str | None]] = []

    class ContextRecordingProjection(RecordingProjection):
        async def apply(self, uow, deliveries: list[Delivery]) -> None:
            seen.append((audit_id_var.get(), transfer_id_var.get()))

    event = wallet_pb2.WalletEvent(
        event_id=str(uuid.uuid4()),
        wallet_id="w1",
        sequence=1,
        type=wallet_pb2.WALLET_EVENT_TYPE_FUNDS_DEPOSITED,
        amount=5,
        balance_after=5,
        request_id="r1",
        audit_id="audit-123",
        transfer_id="tr-9",
    )
    row = messages.wallet_event_outbox_row(event, datetime.now(UTC))
    runner = ConsumerRunner(ContextRecordingProjection(database))
    await runner.handle(
        Delivery(row["message_id"], row["routing_key"], row["message_type"], row["payload"], 1)
    )
    assert seen == [("audit-123", "tr-9")]
    assert audit_id_var.get() is None
