"""Declaring the broker layout (:mod:`wallet_platform.topology`) on RabbitMQ.

Queue type (``WALLET_AMQP_QUEUE_TYPE``): **quorum** by default, for the two consumer
queues and both DLQs: replicated (on a cluster), durable by design, and with the
broker's own delivery count. A quorum consumer queue carries

- ``x-delivery-limit``: after that many redeliveries the broker itself dead-letters a
  message, which bounds a message that kills or hangs its consumer before it can
  settle it (the bus dead-letters failing messages itself, with the reason, after
  ``max_attempts``: the limit leaves room above that for deliveries lost to dropped
  connections, which the broker counts too);
- ``x-dead-letter-strategy: at-least-once`` (with ``x-overflow: reject-publish``,
  which it requires): a message the broker dead-letters is kept until the DLQ has
  confirmed it.

``classic`` keeps classic queues. RabbitMQ cannot change an existing queue's type or
arguments: declaring a queue that exists with other arguments fails with
PRECONDITION_FAILED, reported as :class:`TopologyMismatchError` (docs/event-pipeline.md,
"Queue type", says how to convert).
"""

from __future__ import annotations

from typing import Any

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractExchange
from aiormq.exceptions import ChannelPreconditionFailed

from wallet_platform.messaging.bus import DEFAULT_MAX_ATTEMPTS
from wallet_platform.topology import (
    BINDING_KEY,
    DEAD_LETTER_EXCHANGE,
    EXCHANGE,
    QUEUES,
)

QUORUM = "quorum"
CLASSIC = "classic"
QUEUE_TYPES = (QUORUM, CLASSIC)
DEFAULT_QUEUE_TYPE = QUORUM

# Deliveries of one message a quorum queue allows before dead-lettering it itself.
DELIVERY_LIMIT = 2 * DEFAULT_MAX_ATTEMPTS


class TopologyMismatchError(RuntimeError):
    """A queue exists on the broker with other arguments (e.g. another type)."""


def check_queue_type(queue_type: str) -> str:
    if queue_type not in QUEUE_TYPES:
        raise ValueError(
            f"unknown queue type {queue_type!r}; WALLET_AMQP_QUEUE_TYPE is one of "
            + ", ".join(QUEUE_TYPES)
        )
    return queue_type


def queue_arguments(queue: str, queue_type: str) -> dict[str, Any]:
    """A consumer queue's arguments: it dead-letters through the DLX with its own
    routing key; on quorum also the delivery limit and at-least-once dead-lettering."""
    arguments: dict[str, Any] = {
        "x-dead-letter-exchange": DEAD_LETTER_EXCHANGE,
        "x-dead-letter-routing-key": QUEUES[queue],
    }
    if check_queue_type(queue_type) == QUORUM:
        arguments.update(
            {
                "x-queue-type": QUORUM,
                "x-delivery-limit": DELIVERY_LIMIT,
                "x-dead-letter-strategy": "at-least-once",
                "x-overflow": "reject-publish",
            }
        )
    return arguments


def dead_letter_queue_arguments(queue_type: str) -> dict[str, Any]:
    """A DLQ holds messages until an operator replays or purges them: no limit."""
    return {"x-queue-type": QUORUM} if check_queue_type(queue_type) == QUORUM else {}


def mismatch(queue: str, queue_type: str, error: BaseException) -> TopologyMismatchError:
    other = CLASSIC if queue_type == QUORUM else QUORUM
    return TopologyMismatchError(
        f"RabbitMQ refused to declare queue {queue!r} as a {queue_type} queue ({error}): "
        f"it exists with other arguments, most likely as a {other} queue, and RabbitMQ "
        f"cannot change a queue's type in place. Either run every process with "
        f"WALLET_AMQP_QUEUE_TYPE={other}, or convert the queues as described in "
        f'docs/event-pipeline.md ("Queue type").'
    )


async def declare_queue(
    channel: AbstractChannel, queue: str, queue_type: str, arguments: dict[str, Any]
) -> aio_pika.abc.AbstractQueue:
    """Declare ``queue`` (idempotent); a clash with the existing queue is a
    :class:`TopologyMismatchError` (the channel is closed by the broker)."""
    try:
        return await channel.declare_queue(queue, durable=True, arguments=arguments)
    except ChannelPreconditionFailed as error:
        raise mismatch(queue, queue_type, error) from error


async def declare_topology(
    channel: AbstractChannel, queue_type: str = DEFAULT_QUEUE_TYPE
) -> AbstractExchange:
    """Declare the exchanges, queues and bindings; returns ``wallet.events``."""
    exchange = await channel.declare_exchange(EXCHANGE, aio_pika.ExchangeType.TOPIC, durable=True)
    dlx = await channel.declare_exchange(
        DEAD_LETTER_EXCHANGE, aio_pika.ExchangeType.DIRECT, durable=True
    )
    for queue_name, dlq_name in QUEUES.items():
        dlq = await declare_queue(
            channel, dlq_name, queue_type, dead_letter_queue_arguments(queue_type)
        )
        await dlq.bind(dlx, routing_key=dlq_name)
        queue = await declare_queue(
            channel, queue_name, queue_type, queue_arguments(queue_name, queue_type)
        )
        await queue.bind(exchange, routing_key=BINDING_KEY)
    return exchange
