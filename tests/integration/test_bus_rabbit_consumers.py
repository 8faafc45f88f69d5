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

from tests.rabbit import BusUnderTest, poll_until, queue_consumers, rabbitmqctl
from wallet_common import events
from wallet_common.bus import Delivery, OutgoingMessage


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

    await bus.consume(events.ANALYTICS_QUEUE, handler)

    async def consuming() -> bool:
        return await consumers_on(vhost, events.ANALYTICS_QUEUE) == 1

    await poll_until(consuming, "one consumer")

    # 1. The consumer disappears while the channel stays open (the robust trap).
    consumer = bus._consumers[events.ANALYTICS_QUEUE]  # type: ignore[attr-defined]
    old_tag = consumer.tag
    underlay = await consumer.channel.get_underlay_channel()
    await underlay.basic_cancel(old_tag)
    assert old_tag not in underlay.consumers

    async def consuming_anew() -> bool:
        return consumer.tag not in (None, old_tag) and await consuming()

    await poll_until(consuming_anew, "the watchdog to consume again", limit=15)
    first = message()
    await bus.publish([first])
    await poll_until(lambda: first.message_id in seen, "a message after re-registration")

    # 2. The broker drops every connection of the vhost.
    await asyncio.to_thread(
        rabbitmqctl, "close_all_connections", "-p", vhost, "test: dropped connection"
    )
    await poll_until(consuming, "a consumer after the connection drop", limit=30)
    second = message()

    async def published() -> bool:
        try:
            await bus.publish([second])
        except Exception:
            return False
        return True

    await poll_until(published, "publishing again", limit=30, interval=0.2)
    await poll_until(lambda: second.message_id in seen, "a message after the reconnect")
