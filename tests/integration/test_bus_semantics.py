"""The bus contract, run against every bus: in-process (SQLite, PostgreSQL) and RabbitMQ.

Publish reaches both consumer queues; an unroutable publish raises; a failing handler
is retried with a growing ``attempt`` and then dead-lettered with the reason while
later messages keep flowing; a poison message is dead-lettered at once.
"""

from __future__ import annotations

import asyncio
import uuid

import pytest

from tests.eventually import eventually
from tests.rabbit import BusUnderTest
from wallet_platform import topology
from wallet_platform.config import Settings
from wallet_platform.messaging import dlq
from wallet_platform.messaging.bus import (
    Delivery,
    OutgoingMessage,
    PoisonMessageError,
    PublishError,
)


def message(routing_key: str = "wallet.funds_deposited", body: bytes = b"x") -> OutgoingMessage:
    return OutgoingMessage(
        message_id=str(uuid.uuid4()),
        routing_key=routing_key,
        message_type="wallet.v1.FundsDeposited",
        body=body,
    )


class Recorder:
    """A handler that records deliveries and fails for chosen message ids."""

    def __init__(self, fail: set[str] | None = None, poison: set[str] | None = None) -> None:
        self.deliveries: list[Delivery] = []
        self.fail = fail or set()
        self.poison = poison or set()
        self.changed = asyncio.Event()

    async def __call__(self, delivery: Delivery) -> None:
        self.deliveries.append(delivery)
        self.changed.set()
        if delivery.message_id in self.poison:
            raise PoisonMessageError("cannot ever handle this")
        if delivery.message_id in self.fail:
            raise RuntimeError(f"boom on attempt {delivery.attempt}")

    def ids(self) -> set[str]:
        return {d.message_id for d in self.deliveries}

    async def wait_for(self, predicate) -> None:
        async with asyncio.timeout(20):
            while not predicate(self):
                self.changed.clear()
                await self.changed.wait()


async def wait_for_dead_letters(settings: Settings, queue: str, count: int) -> list:
    found: list = []

    async def enough() -> bool:
        found[:] = await dlq.list_dead_letters(settings, queue)
        return len(found) >= count

    await eventually(enough, what=f"{count} dead letters in {queue}", within=20, interval=0.1)
    return found


async def test_publish_reaches_both_queues(bus_under_test: BusUnderTest) -> None:
    bus = bus_under_test.bus
    analytics, fraud = Recorder(), Recorder()
    await bus.consume(topology.ANALYTICS_QUEUE, analytics)
    await bus.consume(topology.FRAUD_QUEUE, fraud)
    sent = [message() for _ in range(20)]
    await bus.publish(sent)
    want = {m.message_id for m in sent}
    await analytics.wait_for(lambda r: r.ids() >= want)
    await fraud.wait_for(lambda r: r.ids() >= want)
    first = next(d for d in analytics.deliveries if d.message_id == sent[0].message_id)
    assert first.routing_key == "wallet.funds_deposited"
    assert first.message_type == "wallet.v1.FundsDeposited"
    assert first.body == b"x"
    assert first.attempt == 1


async def test_unroutable_publish_raises(bus_under_test: BusUnderTest) -> None:
    with pytest.raises(PublishError):
        await bus_under_test.bus.publish([message(routing_key="nobody.listens")])


async def test_retry_then_dead_letter_and_flow_continues(bus_under_test: BusUnderTest) -> None:
    bus = bus_under_test.bus
    bad, good = message(), message()
    recorder = Recorder(fail={bad.message_id})
    await bus.consume(topology.ANALYTICS_QUEUE, recorder, max_attempts=3)
    await bus.publish([bad, good])
    await recorder.wait_for(lambda r: good.message_id in r.ids())
    letters = await wait_for_dead_letters(bus_under_test.settings, topology.ANALYTICS_QUEUE, 1)
    attempts = [d.attempt for d in recorder.deliveries if d.message_id == bad.message_id]
    assert attempts == [1, 2, 3]
    assert [letter.message_id for letter in letters] == [bad.message_id]
    assert "boom on attempt 3" in letters[0].reason
    assert letters[0].attempts == 3
    # The fraud queue got its own copy and has no dead letters.
    assert await dlq.list_dead_letters(bus_under_test.settings, topology.FRAUD_QUEUE) == []


async def test_poison_is_dead_lettered_at_once_then_replayed(
    bus_under_test: BusUnderTest,
) -> None:
    bus = bus_under_test.bus
    poison, after = message(body=b"\xff garbage"), message()
    recorder = Recorder(poison={poison.message_id})
    await bus.consume(topology.FRAUD_QUEUE, recorder)
    await bus.publish([poison, after])
    await recorder.wait_for(lambda r: after.message_id in r.ids())
    letters = await wait_for_dead_letters(bus_under_test.settings, topology.FRAUD_QUEUE, 1)
    assert [d.attempt for d in recorder.deliveries if d.message_id == poison.message_id] == [1]
    letter = letters[0]
    assert letter.message_id == poison.message_id
    assert "cannot ever handle this" in letter.reason
    assert letter.body == b"\xff garbage"
    assert letter.routing_key == "wallet.funds_deposited"
    shown = await dlq.show_dead_letter(bus_under_test.settings, "fraud", poison.message_id)
    assert shown is not None and shown.body == letter.body

    # Fixed: replay it; the handler now accepts it and the DLQ empties.
    recorder.poison.clear()
    replayed = await dlq.replay_dead_letters(bus_under_test.settings, "fraud")
    assert replayed == 1
    await recorder.wait_for(
        lambda r: [d.message_id for d in r.deliveries].count(poison.message_id) == 2
    )
    assert await dlq.list_dead_letters(bus_under_test.settings, topology.FRAUD_QUEUE) == []


async def test_purge_dead_letters(bus_under_test: BusUnderTest) -> None:
    bus = bus_under_test.bus
    poisons = [message() for _ in range(3)]
    recorder = Recorder(poison={m.message_id for m in poisons})
    await bus.consume(topology.ANALYTICS_QUEUE, recorder)
    await bus.publish(poisons)
    await wait_for_dead_letters(bus_under_test.settings, topology.ANALYTICS_QUEUE, 3)
    counts = await dlq.count_dead_letters(bus_under_test.settings)
    assert counts == {topology.ANALYTICS_QUEUE: 3, topology.FRAUD_QUEUE: 0}
    purged = await dlq.purge_dead_letters(
        bus_under_test.settings, "analytics", [poisons[0].message_id]
    )
    assert purged == 1
    left = await dlq.list_dead_letters(bus_under_test.settings, topology.ANALYTICS_QUEUE)
    assert sorted(letter.message_id for letter in left) == sorted(m.message_id for m in poisons[1:])
    assert await dlq.purge_dead_letters(bus_under_test.settings, "analytics") == 2
    assert await dlq.list_dead_letters(bus_under_test.settings, topology.ANALYTICS_QUEUE) == []
