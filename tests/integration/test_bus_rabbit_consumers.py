"""RabbitMQ consumers really consume again after losing their registration.

aio-pika's robust connection can come back with zero consumers. The bus's watchdog
checks both its own channel and the broker's consumer count; here the consumer is
cancelled behind the bus's back and, separately, its connection is closed by the
broker (``rabbitmqctl close_all_connections`` on the test's vhost): both times the
queue has a consumer again (``rabbitmqctl list_queues``) and messages flow.
"""

from __future__ import annotations

import asyncio
import uuid

import aiormq

from tests.eventually import eventually
from tests.rabbit import BusUnderTest, queue_consumers, rabbitmqctl
from wallet_platform import topology
from wallet_platform.messaging.bus import Delivery, OutgoingMessage
from wallet_platform.messaging.rabbit import RabbitBus


def message() -> OutgoingMessage:
    return OutgoingMessage(str(uuid.uuid4()), "wallet.funds_deposited", "x.Y", b"")


async def consumers_on(vhost: str, queue: str) -> int:
    return (await asyncio.to_thread(queue_consumers, vhost)).get(queue, 0)


async def test_lost_consumer_is_registered_again(rabbit_bus_under_test: BusUnderTest) -> None:
    but = rabbit_bus_under_test
    assert but.vhost is not None
    vhost, bus = but.vhost, but.bus
    seen: list[str] = []

    async def handler(delivery: Delivery) -> None:
        seen.append(delivery.message_id)

    await bus.consume(topology.ANALYTICS_QUEUE, handler)

    async def consuming() -> bool:
        return await consumers_on(vhost, topology.ANALYTICS_QUEUE) == 1

    await eventually(consuming, what="one consumer")

    # 1. The consumer disappears while the channel stays open (the robust trap).
    assert isinstance(bus, RabbitBus)
    consumer = bus._consumers[topology.ANALYTICS_QUEUE]
    old_tag = consumer.tag
    assert consumer.channel is not None and old_tag is not None  # it is consuming
    underlay = await consumer.channel.get_underlay_channel()
    assert isinstance(underlay, aiormq.Channel)
    await underlay.basic_cancel(old_tag)
    assert old_tag not in underlay.consumers

    async def consuming_anew() -> bool:
        return consumer.tag not in (None, old_tag) and await consuming()

    await eventually(consuming_anew, what="the watchdog to consume again", within=15)
    first = message()
    await bus.publish([first])
    await eventually(lambda: first.message_id in seen, what="a message after re-registration")

    # 2. The broker drops every connection of the vhost.
    await asyncio.to_thread(
        rabbitmqctl, "close_all_connections", "-p", vhost, "test: dropped connection"
    )
    await eventually(consuming, what="a consumer after the connection drop", within=30)
    second = message()

    async def published() -> bool:
        try:
            await bus.publish([second])
        except Exception:
            return False
        return True

    await eventually(published, what="publishing again", within=30, interval=0.2)
    await eventually(lambda: second.message_id in seen, what="a message after the reconnect")


async def test_committed_batches_are_acked_together_around_a_retry(
    rabbit_bus_under_test: BusUnderTest,
) -> None:
    """The consumer runner on RabbitMQ: a burst is acked with a few multiple-acks, not
    one ack per message; with a message that fails its first delivery (retried while
    the rest of its burst commits and is acked) every message is still applied exactly
    once and the queue ends empty (nothing left unacked). Which tags one flush may
    cover is tested in ``tests/unit/test_bus_ack_window.py``."""
    from tests.integration.test_consumer_runner_semantics import (
        RecordingProjection,
        deposit,
        inbox_ids,
    )
    from tests.rabbit import queue_depths
    from wallet_platform.messaging.consumer import ConsumerComponent
    from wallet_platform.runtime import Runtime

    but = rabbit_bus_under_test
    assert but.vhost is not None

    class FailsFirstDelivery(RecordingProjection):
        """The marked message fails on its first delivery (batch and single path)."""

        flaky: set[str] = set()

        async def apply(self, uow, deliveries) -> None:
            for delivery in deliveries:
                if delivery.message_id in self.flaky and delivery.attempt == 1:
                    raise RuntimeError("not yet")
            await super().apply(uow, deliveries)

    runtime = Runtime(settings=but.settings, db=but.db)
    runtime.extras["bus"] = but.bus
    projection = FailsFirstDelivery(but.db)
    component = ConsumerComponent(runtime, projection, "test-consumer", max_attempts=3)
    await component.start()
    acks: list[tuple[int, bool]] = []
    try:
        assert isinstance(but.bus, RabbitBus)
        consumer = but.bus._consumers[topology.ANALYTICS_QUEUE]
        assert consumer.window is not None  # the component started consuming
        channel = consumer.window.channel
        real_ack = channel.basic_ack

        async def recording_ack(
            delivery_tag: int, multiple: bool = False, wait: bool = True
        ) -> None:
            acks.append((delivery_tag, multiple))
            await real_ack(delivery_tag, multiple=multiple, wait=wait)

        # Wrapped in place: the window holds this channel, so it sends its acks here.
        channel.basic_ack = recording_ack  # type: ignore[method-assign]
        clean = [deposit(f"w{i % 7}") for i in range(120)]
        await but.bus.publish(clean)

        async def applied(messages) -> bool:
            return set(await inbox_ids(but)) >= {m.message_id for m in messages}

        await eventually(lambda: applied(clean), what="the clean burst applied")
        await eventually(lambda: acks and acks[-1][0] == len(clean), what="the clean burst acked")
        clean_acks = list(acks)
        # Then a burst with a message failing its first delivery: the batch falls back
        # to one by one, the message is retried while others commit and get acked.
        flaky = [deposit(f"w{i % 7}") for i in range(120)]
        projection.flaky.add(flaky[30].message_id)
        await but.bus.publish(flaky)
        await eventually(lambda: applied(flaky), what="the flaky burst applied")
    finally:
        await component.stop()
    # The projection's own list also saw rolled-back batch attempts: the inbox rows
    # (same transaction as the apply) are the evidence of exactly once.
    wanted = sorted(m.message_id for m in [*clean, *flaky])
    assert sorted(await inbox_ids(but)) == wanted
    assert set(projection.applied) == set(wanted)
    assert any(multiple for _, multiple in clean_acks)
    assert len(clean_acks) <= len(clean) / 4, clean_acks
    depths = await asyncio.to_thread(queue_depths, but.vhost)
    assert depths[topology.ANALYTICS_QUEUE] == 0
