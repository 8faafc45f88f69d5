"""RabbitMQ queue types: quorum by default, classic by setting, and what a clash does.

- The default topology declares the two consumer queues and both DLQs as quorum
  queues, with the delivery limit on the consumer queues (``rabbitmqctl list_queues``).
- A message that is never settled (its consumer dies or hangs on it, again and again)
  is dead-lettered by the broker after the delivery limit, and ``walletctl dlq`` says so.
- A broker whose queues exist as classic refuses the quorum declaration; the bus
  raises :class:`TopologyMismatchError` naming both ways out, and a classic bus works.
"""

from __future__ import annotations

import asyncio
import json
import uuid

import aio_pika
import pytest

from tests.eventually import eventually
from tests.rabbit import rabbitmqctl
from wallet_platform import topology
from wallet_platform.config import Settings
from wallet_platform.messaging import dlq
from wallet_platform.messaging.bus import OutgoingMessage
from wallet_platform.messaging.rabbit import RabbitBus, TopologyMismatchError, declare_topology
from wallet_platform.messaging.rabbit.topology import DELIVERY_LIMIT


def queue_types(vhost: str) -> dict[str, tuple[str, dict]]:
    out = rabbitmqctl(
        "list_queues", "-p", vhost, "name", "type", "arguments", "--formatter", "json", "-q"
    )
    rows = json.loads(out or "[]")  # arguments: [[name, type, value], ...]
    return {
        row["name"]: (row["type"], {name: value for name, _, value in row["arguments"]})
        for row in rows
    }


async def test_default_topology_is_quorum_with_a_delivery_limit(
    amqp_url: str, rabbit_vhost: str
) -> None:
    bus = RabbitBus(amqp_url)
    await bus.start()
    try:
        found = await asyncio.to_thread(queue_types, rabbit_vhost)
    finally:
        await bus.close()
    for queue, dlq_name in topology.QUEUES.items():
        queue_type, arguments = found[queue]
        assert queue_type == "quorum"
        assert arguments["x-delivery-limit"] == DELIVERY_LIMIT
        assert arguments["x-dead-letter-routing-key"] == dlq_name
        assert found[dlq_name][0] == "quorum"


async def test_a_message_that_is_never_settled_is_dead_lettered_by_the_broker(
    amqp_url: str,
) -> None:
    """Each delivery ends with its channel closing unsettled (as when the consumer
    process dies on the message): the broker counts them and stops at the limit."""
    bus = RabbitBus(amqp_url)
    await bus.start()
    message_id = str(uuid.uuid4())
    try:
        await bus.publish([OutgoingMessage(message_id, "wallet.funds_deposited", "x.Y", b"!")])
    finally:
        await bus.close()
    connection = await aio_pika.connect(amqp_url)
    deliveries = 0
    try:
        while True:
            channel = await connection.channel()
            queue = await channel.get_queue(topology.ANALYTICS_QUEUE, ensure=False)
            message = await queue.get(no_ack=False, fail=False, timeout=10)
            await channel.close()  # unsettled: back to the queue, counted
            if message is None:
                break
            deliveries += 1
            assert deliveries <= DELIVERY_LIMIT + 1
    finally:
        await connection.close()
    assert deliveries == DELIVERY_LIMIT + 1
    settings = Settings(amqp_url=amqp_url)
    letters: list[dlq.DeadLetter] = []

    async def dead_lettered() -> bool:
        letters[:] = await dlq.list_dead_letters(settings, topology.ANALYTICS_QUEUE)
        return bool(letters)

    await eventually(dead_lettered, what="the broker to dead-letter the message", within=20)
    assert [letter.message_id for letter in letters] == [message_id]
    assert letters[0].reason == "broker dead-lettered: delivery_limit"
    # The fraud queue's copy was never touched: still there.
    assert await dlq.list_dead_letters(settings, topology.FRAUD_QUEUE) == []


async def test_classic_queues_refuse_a_quorum_bus_and_serve_a_classic_one(
    amqp_url: str, rabbit_vhost: str
) -> None:
    # An older installation: the same names, classic queues.
    connection = await aio_pika.connect(amqp_url)
    try:
        await declare_topology(await connection.channel(), "classic")
    finally:
        await connection.close()

    quorum = RabbitBus(amqp_url, start_wait=10)
    with pytest.raises(TopologyMismatchError) as refused:
        await quorum.start()
    text = str(refused.value)
    assert "WALLET_AMQP_QUEUE_TYPE=classic" in text and "docs/event-pipeline.md" in text
    assert not quorum.connected  # start() released what it took

    classic = RabbitBus(amqp_url, queue_type="classic")
    await classic.start()
    try:
        await classic.publish([OutgoingMessage(str(uuid.uuid4()), "wallet.x", "x.Y", b"")])
    finally:
        await classic.close()
    found = await asyncio.to_thread(queue_types, rabbit_vhost)
    assert {found[name][0] for name in [*topology.QUEUES, *topology.DLQ_TO_QUEUE]} == {"classic"}


def test_an_unknown_queue_type_is_refused() -> None:
    with pytest.raises(ValueError, match="WALLET_AMQP_QUEUE_TYPE"):
        RabbitBus("amqp://guest:guest@127.0.0.1:5672/", queue_type="stream")
