"""Envelopes on real RabbitMQ: several events per AMQP message, each applied exactly once.

The bus publishes with envelopes on (at most :data:`MAX_EVENTS` events each) and a
consumer runner with a recording projection consumes (the projection of
``test_consumer_runner_semantics``; its inbox rows are the durable evidence):

- a batch of events of one routing key is ONE message in the queue (the broker's own
  count), and every event in it is applied once, under its own message id;
- an envelope whose events were committed but not acked (``consumer.after_apply``)
  comes back, and nothing in it is applied twice;
- a poison event and an event that keeps failing inside an envelope: their
  neighbours are applied; each bad event alone reaches the DLQ as a plain message
  (no envelope header, its own id, type and routing key) and replays like any dead
  letter;
- an envelope that cannot be read is dead-lettered whole, the queue keeps flowing.
"""

from __future__ import annotations

import asyncio
import uuid

import aio_pika
import pytest

from tests.eventually import eventually
from tests.integration.test_consumer_runner_semantics import (
    RecordingProjection,
    deposit,
    inbox_ids,
)
from tests.rabbit import BusUnderTest, queue_depths
from wallet_platform import failpoints, topology
from wallet_platform.messaging import dlq
from wallet_platform.messaging.bus import OutgoingMessage
from wallet_platform.messaging.consumer import ConsumerComponent
from wallet_platform.messaging.envelope import ENVELOPE_TYPE, HEADER_ENVELOPE
from wallet_platform.messaging.rabbit import RabbitBus
from wallet_platform.runtime import Runtime

MAX_EVENTS = 4


@pytest.fixture(params=["quorum", "classic"])
async def envelope_bus(request, rabbit_bus_under_test: BusUnderTest):
    """The test's vhost and database with a bus that publishes envelopes."""
    but = rabbit_bus_under_test
    settings = but.settings.replace(
        amqp_queue_type=request.param, amqp_envelopes=True, amqp_envelope_max=MAX_EVENTS
    )
    if request.param == "classic":  # the fixture declared quorum queues: start afresh
        await but.bus.close()
        from tests.rabbit import create_vhost, delete_vhost

        assert but.vhost is not None
        delete_vhost(but.vhost)
        create_vhost(but.vhost)
    bus = RabbitBus(settings.amqp_url, queue_type=request.param, envelope_max=MAX_EVENTS)
    await bus.start()
    try:
        yield BusUnderTest("rabbit-envelopes", bus, but.db, settings, but.vhost)
    finally:
        await bus.close()


async def start_consumer(but: BusUnderTest) -> tuple[ConsumerComponent, RecordingProjection]:
    runtime = Runtime(settings=but.settings, db=but.db)
    runtime.extras["bus"] = but.bus
    projection = RecordingProjection(but.db)
    component = ConsumerComponent(runtime, projection, "test-consumer", max_attempts=3)
    await component.start()
    return component, projection


async def depth(but: BusUnderTest, queue: str = topology.ANALYTICS_QUEUE) -> int:
    assert but.vhost is not None
    return (await asyncio.to_thread(queue_depths, but.vhost)).get(queue, 0)


async def test_events_of_a_key_travel_in_envelopes_and_each_is_applied_once(
    envelope_bus: BusUnderTest,
) -> None:
    but = envelope_bus
    events = [deposit(f"w{i}") for i in range(2 * MAX_EVENTS + 1)]  # 4 + 4 + 1
    await but.bus.publish(events)
    # The broker holds three messages per queue: two full envelopes and one plain one.
    await eventually(lambda: depth(but), lambda n: n == 3, what="three messages queued")

    async with await aio_pika.connect(but.settings.amqp_url) as connection:
        channel = await connection.channel()
        queue = await channel.get_queue(topology.FRAUD_QUEUE, ensure=False)
        kinds = []
        for _ in range(3):  # unacked: back in the queue when the channel closes
            message = await queue.get(no_ack=False, timeout=5)
            assert message is not None
            kinds.append((message.type, (message.headers or {}).get(HEADER_ENVELOPE)))
    assert sorted(kinds, key=str) == sorted(
        [(ENVELOPE_TYPE, MAX_EVENTS), (ENVELOPE_TYPE, MAX_EVENTS), (events[-1].message_type, None)],
        key=str,
    )

    component, projection = await start_consumer(but)
    try:

        async def all_in_inbox() -> bool:
            return sorted(await inbox_ids(but)) == sorted(e.message_id for e in events)

        await eventually(all_in_inbox, what="every event in the inbox", within=20)
        await eventually(lambda: depth(but), lambda n: n == 0, what="every envelope acked")
    finally:
        await component.stop()
    assert sorted(projection.applied) == sorted(e.message_id for e in events)


async def test_an_envelope_redelivered_after_commit_is_applied_once(
    envelope_bus: BusUnderTest,
) -> None:
    """The consumer's channel goes while the envelope's events are committed and the
    envelope unacked: the broker delivers the whole envelope again."""
    but = envelope_bus
    events = [deposit(f"w{i}") for i in range(MAX_EVENTS)]
    ids = sorted(e.message_id for e in events)
    failpoints.configure("consumer.after_apply=sleep(1000)")  # after each commit
    component, projection = await start_consumer(but)
    try:
        await but.bus.publish(events)

        async def committed() -> bool:
            return len(await inbox_ids(but)) >= 1

        await eventually(committed, what="the envelope's first event committed", within=20)
        consumer = but.bus._consumers[topology.ANALYTICS_QUEUE]  # type: ignore[attr-defined]
        await consumer.drop_channel()  # unacked: the envelope goes back to the queue
        failpoints.configure("")
        await eventually(
            lambda: all(projection.translated.count(i) >= 2 for i in ids),
            what="the whole envelope delivered again",
            within=30,
        )
        await eventually(lambda: depth(but), lambda n: n == 0, what="the envelope acked")

        async def all_in_inbox() -> bool:
            return sorted(await inbox_ids(but)) == ids

        await eventually(all_in_inbox, what="every event committed", within=20)
    finally:
        failpoints.configure("")
        await component.stop()
    assert sorted(projection.applied) == ids  # once each: the redelivery skipped them
    assert await dlq.list_dead_letters(but.settings, "analytics") == []


async def test_events_failing_after_commit_are_retried_alone_and_applied_once(
    envelope_bus: BusUnderTest,
) -> None:
    """Every event of the envelope committed but failed to settle: each is sent again
    alone, and its second copy is skipped by the inbox."""
    but = envelope_bus
    events = [deposit(f"w{i}") for i in range(MAX_EVENTS)]
    failpoints.configure("consumer.after_apply=error")  # committed, then never settled
    component, projection = await start_consumer(but)
    try:
        await but.bus.publish(events)
        ids = sorted(e.message_id for e in events)

        async def all_in_inbox() -> bool:
            return sorted(await inbox_ids(but)) == ids

        await eventually(all_in_inbox, what="the envelope's events committed", within=20)
        failpoints.configure("")
        await eventually(
            lambda: all(projection.translated.count(i) >= 2 for i in ids),
            what="the envelope delivered again",
            within=20,
        )
        await eventually(lambda: depth(but), lambda n: n == 0, what="the envelope acked")
    finally:
        failpoints.configure("")
        await component.stop()
    assert sorted(projection.applied) == ids  # once each, the redelivery skipped
    assert sorted(await inbox_ids(but)) == ids
    assert await dlq.list_dead_letters(but.settings, "analytics") == []


async def test_bad_events_leave_an_envelope_alone_and_replay(envelope_bus: BusUnderTest) -> None:
    but = envelope_bus
    good, stuck, good_too = deposit("w-good"), deposit("w-stuck"), deposit("w-good-too")
    garbage = OutgoingMessage(
        str(uuid.uuid4()), good.routing_key, good.message_type, b"\xff\xff\xff garbage"
    )
    component, projection = await start_consumer(but)
    try:
        projection.failing.add(stuck.message_id)
        await but.bus.publish([good, garbage, stuck, good_too])  # one envelope of four

        async def two_dead() -> bool:
            return len(await dlq.list_dead_letters(but.settings, "analytics")) == 2

        await eventually(two_dead, what="the two bad events dead-lettered", within=30)
        assert sorted(await inbox_ids(but)) == sorted([good.message_id, good_too.message_id])
        letters = {d.message_id: d for d in await dlq.list_dead_letters(but.settings, "analytics")}
        assert set(letters) == {garbage.message_id, stuck.message_id}
        poison, failed = letters[garbage.message_id], letters[stuck.message_id]
        assert "cannot decode wallet.v1.FundsDeposited" in poison.reason
        assert poison.attempts == 1
        assert "after 3 attempts" in failed.reason
        for letter, event in ((poison, garbage), (failed, stuck)):
            assert (letter.routing_key, letter.message_type, letter.body) == (
                event.routing_key,
                event.message_type,
                event.body,
            )
        # The dead letters are plain messages, not envelopes.
        async with await aio_pika.connect(but.settings.amqp_url) as connection:
            channel = await connection.channel()
            queue = await channel.get_queue(topology.ANALYTICS_DLQ, ensure=False)
            for _ in range(2):  # unacked: back in the DLQ when the channel closes
                message = await queue.get(no_ack=False, timeout=5)
                assert message is not None
                assert HEADER_ENVELOPE not in (message.headers or {})

        projection.failing.clear()
        assert await dlq.replay_dead_letters(but.settings, "analytics", [stuck.message_id]) == 1

        async def replayed() -> bool:
            return stuck.message_id in await inbox_ids(but)

        await eventually(replayed, what="the replayed event applied", within=20)
    finally:
        await component.stop()
    # The inbox row commits with the change (projection.applied also sees rolled-back tries).
    assert sorted(await inbox_ids(but)) == sorted(
        [good.message_id, good_too.message_id, stuck.message_id]
    )
    assert [d.message_id for d in await dlq.list_dead_letters(but.settings, "analytics")] == [
        garbage.message_id
    ]


async def test_an_unreadable_envelope_is_dead_lettered_whole(envelope_bus: BusUnderTest) -> None:
    but = envelope_bus
    component, projection = await start_consumer(but)
    try:
        async with await aio_pika.connect(but.settings.amqp_url) as connection:
            channel = await connection.channel()
            exchange = await channel.get_exchange(topology.EXCHANGE, ensure=False)
            broken = aio_pika.Message(
                b"\x0a\x02zz",  # one event field holding two bytes that are no event
                message_id="envelope:broken",
                type=ENVELOPE_TYPE,
                headers={HEADER_ENVELOPE: 3},
            )
            await exchange.publish(broken, routing_key="wallet.funds_deposited")
        after = deposit()
        await but.bus.publish([after])

        async def flowed() -> bool:
            return after.message_id in await inbox_ids(but)

        await eventually(flowed, what="the next event applied", within=20)

        async def dead() -> list[dlq.DeadLetter]:
            return await dlq.list_dead_letters(but.settings, "analytics")

        [letter] = await eventually(dead, lambda d: len(d) == 1, what="the envelope dead")
    finally:
        await component.stop()
    assert letter.message_id == "envelope:broken"
    assert "envelope" in letter.reason
    assert projection.applied == [after.message_id]
