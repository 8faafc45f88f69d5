"""The RabbitMQ event bus (aio-pika, robust connection, publisher confirms).

Publishing: one confirm-mode channel; every message goes out ``mandatory`` with
``on_return_raises``, so an unroutable message raises instead of counting as sent,
and :meth:`RabbitBus.publish` returns only once the broker has confirmed them all.

Consuming: one channel per consumed queue (its own ``prefetch``); handlers run
concurrently up to the prefetch and the message is acked only after the handler
returns. Retries republish a copy to the same queue (default exchange) with
``x-wallet-attempt`` + 1 and the reason in ``x-wallet-error``, then ack the original
(so the count survives restarts); the last failure, or a
:class:`~wallet_common.bus.PoisonMessageError`, publishes the message to the DLX with
the reason and acks it. If even that publish fails the message is rejected without
requeue, and the queue's own ``x-dead-letter-exchange`` puts it in the same DLQ.

Reconnects: aio-pika's robust connection reconnects and restores channels, but it can
come back with zero consumers. A watchdog therefore checks, after every reconnect
and every few seconds, that each queue we consume has our consumer on a live channel
AND that the broker counts at least one consumer; if not, it opens a fresh channel
and consumes again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import aio_pika
from aio_pika.abc import (
    AbstractChannel,
    AbstractExchange,
    AbstractIncomingMessage,
    AbstractQueue,
    AbstractRobustConnection,
)

from wallet_common import events
from wallet_common.bus import (
    BINDING_KEY,
    DEFAULT_MAX_ATTEMPTS,
    DEFAULT_PREFETCH,
    HEADER_ATTEMPT,
    HEADER_ERROR,
    HEADER_QUEUE,
    QUEUES,
    Delivery,
    Handler,
    OutgoingMessage,
    PoisonMessageError,
    PublishError,
    error_text,
)

log = logging.getLogger(__name__)

HEADER_ROUTING_KEY = "x-wallet-routing-key"  # the original key, kept on retried copies
PUBLISH_TIMEOUT_SECONDS = 10.0
CONNECT_TIMEOUT_SECONDS = 5.0
START_WAIT_SECONDS = 5.0
WATCHDOG_INTERVAL_SECONDS = 2.0
RECONNECT_INTERVAL_SECONDS = 1.0
REGISTER_TIMEOUT_SECONDS = 15.0


def retry_delay_seconds(attempt: int) -> float:
    """Pause before republishing a failed delivery: 0.1 s, 0.2 s ... at most 2 s."""
    return float(min(0.1 * 2 ** max(attempt - 1, 0), 2.0))


def queue_arguments(queue: str) -> dict[str, Any]:
    """Each consumer queue dead-letters through the DLX with its own routing key."""
    return {
        "x-dead-letter-exchange": events.DEAD_LETTER_EXCHANGE,
        "x-dead-letter-routing-key": QUEUES[queue],
    }


async def declare_topology(channel: AbstractChannel) -> AbstractExchange:
    """Declare CONTRACT.md's exchanges, queues and bindings; returns ``wallet.events``."""
    exchange = await channel.declare_exchange(
        events.EXCHANGE, aio_pika.ExchangeType.TOPIC, durable=True
    )
    dlx = await channel.declare_exchange(
        events.DEAD_LETTER_EXCHANGE, aio_pika.ExchangeType.DIRECT, durable=True
    )
    for queue_name, dlq_name in QUEUES.items():
        dlq = await channel.declare_queue(dlq_name, durable=True)
        await dlq.bind(dlx, routing_key=dlq_name)
        queue = await channel.declare_queue(
            queue_name, durable=True, arguments=queue_arguments(queue_name)
        )
        await queue.bind(exchange, routing_key=BINDING_KEY)
    return exchange


def amqp_message(
    message_id: str,
    message_type: str,
    body: bytes,
    headers: dict[str, Any] | None = None,
    timestamp: datetime | None = None,
) -> aio_pika.Message:
    """The contract's AMQP properties: message_id, content_type, type, persistent."""
    return aio_pika.Message(
        body,
        message_id=message_id,
        content_type=events.CONTENT_TYPE,
        type=message_type,
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        headers=headers or {},
        timestamp=timestamp,
    )


def header_int(message: AbstractIncomingMessage, name: str, default: int) -> int:
    value = (message.headers or {}).get(name)
    try:
        return int(value) if value is not None else default  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return default


def header_str(message: AbstractIncomingMessage, name: str) -> str | None:
    value = (message.headers or {}).get(name)
    if value is None:
        return None
    return value.decode() if isinstance(value, bytes) else str(value)


@dataclass
class _Consumer:
    queue: str
    handler: Handler
    prefetch: int
    max_attempts: int
    channel: AbstractChannel | None = None
    amqp_queue: AbstractQueue | None = None
    tag: str | None = None
    in_flight: set[asyncio.Task[Any]] = field(default_factory=set)


class RabbitBus:
    """An :class:`~wallet_common.bus.EventBus` on RabbitMQ."""

    def __init__(self, url: str, *, start_wait: float = START_WAIT_SECONDS) -> None:
        self.url = url
        self.start_wait = start_wait
        self._users = 0
        self._connection: AbstractRobustConnection | None = None
        self._publish_channel: AbstractChannel | None = None
        self._exchange: AbstractExchange | None = None
        self._connect_task: asyncio.Task[None] | None = None
        self._watchdog: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()
        self._consumers: dict[str, _Consumer] = {}
        self._consumer_lock = asyncio.Lock()
        self._background: set[asyncio.Task[None]] = set()
        self._closing = False

    # --- life cycle ------------------------------------------------------------------

    async def start(self) -> None:
        """Connect (in the background if the broker is down) and declare the topology.

        Waits a few seconds for the first connection; if RabbitMQ is not there yet the
        bus keeps trying, publishes raise :class:`PublishError` meanwhile and consumers
        registered early start once it is connected.
        """
        self._users += 1
        self._closing = False
        if self._connect_task is not None:
            return  # already started (or starting) by another component
        self._connect_task = asyncio.create_task(self._connect_loop(), name="rabbit-connect")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self._ready.wait()), self.start_wait)
        if not self._ready.is_set():
            log.warning("RabbitMQ not reachable yet; will keep trying in the background")

    async def close(self) -> None:
        self._users = max(self._users - 1, 0)
        if self._users > 0:
            return
        self._closing = True
        for queue in list(self._consumers):
            await self.stop_consuming(queue)
        for task in (self._watchdog, self._connect_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        self._watchdog = self._connect_task = None
        connection, self._connection = self._connection, None
        self._publish_channel = self._exchange = None
        self._ready.clear()
        if connection is not None:
            with contextlib.suppress(Exception):
                await connection.close()

    async def _connect_loop(self) -> None:
        delay = RECONNECT_INTERVAL_SECONDS
        while True:
            try:
                await self._connect()
                return
            except asyncio.CancelledError:
                raise
            except Exception as error:
                log.warning("RabbitMQ connect failed (%s); retrying in %.1fs", error, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)

    async def _connect(self) -> None:
        connection = await aio_pika.connect_robust(
            self.url,
            timeout=CONNECT_TIMEOUT_SECONDS,
            reconnect_interval=RECONNECT_INTERVAL_SECONDS,
            client_properties={
                "connection_name": f"wallet-bus {socket.gethostname()}:{os.getpid()}"
            },
        )
        try:
            channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
            exchange = await declare_topology(channel)
        except BaseException:
            await connection.close()
            raise
        self._connection = connection
        self._publish_channel = channel
        self._exchange = exchange
        connection.reconnect_callbacks.add(self._on_reconnect)
        self._ready.set()
        log.info("connected to RabbitMQ")
        for consumer in list(self._consumers.values()):
            await self._ensure_consumer(consumer)
        self._watchdog = asyncio.create_task(self._watch_consumers(), name="rabbit-watchdog")

    def _on_reconnect(self, *_args: Any) -> None:
        log.info("RabbitMQ connection re-established; verifying consumers")
        if self._watchdog is not None and not self._closing:
            task = asyncio.get_running_loop().create_task(self._check_consumers())
            self._background.add(task)  # keep a reference until it is done
            task.add_done_callback(self._background.discard)

    @property
    def connected(self) -> bool:
        connection = self._connection
        return connection is not None and not connection.is_closed and connection.connected.is_set()

    # --- publishing --------------------------------------------------------------------

    async def publish(self, messages: Sequence[OutgoingMessage]) -> None:
        if not messages:
            return
        exchange = self._exchange
        if exchange is None or not self.connected:
            raise PublishError("RabbitMQ is not connected")
        results = await asyncio.gather(
            *(
                exchange.publish(
                    amqp_message(m.message_id, m.message_type, m.body),
                    routing_key=m.routing_key,
                    mandatory=True,
                    timeout=PUBLISH_TIMEOUT_SECONDS,
                )
                for m in messages
            ),
            return_exceptions=True,
        )
        failures = [r for r in results if isinstance(r, BaseException)]
        if failures:
            raise PublishError(
                f"{len(failures)} of {len(messages)} messages not confirmed: "
                f"{error_text(failures[0])}"
            ) from failures[0]

    async def _publish_direct(
        self, exchange_name: str, routing_key: str, message: aio_pika.Message
    ) -> None:
        """Publish on the confirm channel to a named exchange ("" = default exchange)."""
        channel = self._publish_channel
        if channel is None or not self.connected:
            raise PublishError("RabbitMQ is not connected")
        exchange = (
            channel.default_exchange
            if exchange_name == ""
            else await channel.get_exchange(exchange_name, ensure=False)
        )
        await exchange.publish(
            message, routing_key=routing_key, mandatory=True, timeout=PUBLISH_TIMEOUT_SECONDS
        )

    # --- consuming ---------------------------------------------------------------------

    async def consume(
        self,
        queue: str,
        handler: Handler,
        *,
        prefetch: int = DEFAULT_PREFETCH,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
    ) -> None:
        if queue not in QUEUES:
            raise ValueError(f"unknown queue {queue!r}")
        if queue in self._consumers:
            raise RuntimeError(f"already consuming {queue}")
        consumer = _Consumer(queue, handler, max(1, prefetch), max(1, max_attempts))
        self._consumers[queue] = consumer
        if self.connected:
            await self._ensure_consumer(consumer)

    async def stop_consuming(self, queue: str) -> None:
        consumer = self._consumers.pop(queue, None)
        if consumer is None:
            return
        if consumer.amqp_queue is not None and consumer.tag is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(consumer.amqp_queue.cancel(consumer.tag), 5)
        if consumer.in_flight:
            await asyncio.wait(set(consumer.in_flight), timeout=10)
        if consumer.channel is not None:
            with contextlib.suppress(Exception):
                await consumer.channel.close()
        consumer.channel = consumer.amqp_queue = consumer.tag = None

    async def _ensure_consumer(self, consumer: _Consumer) -> None:
        """(Re)register ``consumer`` on a fresh channel unless it is demonstrably live."""
        async with self._consumer_lock:
            if self._consumers.get(consumer.queue) is not consumer or not self.connected:
                return
            if await self._consumer_alive(consumer):
                return
            old_channel = consumer.channel
            consumer.channel = consumer.amqp_queue = consumer.tag = None
            if old_channel is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(old_channel.close(), 5)
            # Bounded: a half-open connection must not hold the lock (and with it
            # every later check) forever.
            await asyncio.wait_for(self._register(consumer), REGISTER_TIMEOUT_SECONDS)

    async def _register(self, consumer: _Consumer) -> None:
        assert self._connection is not None
        channel = await self._connection.channel(publisher_confirms=False)
        try:
            await channel.set_qos(prefetch_count=consumer.prefetch)
            amqp_queue = await channel.declare_queue(
                consumer.queue, durable=True, arguments=queue_arguments(consumer.queue)
            )

            async def on_message(message: AbstractIncomingMessage) -> None:
                await self._on_message(consumer, message)

            tag = await amqp_queue.consume(on_message, no_ack=False)
        except BaseException:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(channel.close(), 5)
            raise
        consumer.channel, consumer.amqp_queue, consumer.tag = channel, amqp_queue, tag
        log.info("consuming %s (prefetch %d)", consumer.queue, consumer.prefetch)

    async def _consumer_alive(self, consumer: _Consumer) -> bool:
        channel, tag = consumer.channel, consumer.tag
        if channel is None or tag is None or channel.is_closed:
            return False
        try:
            underlay = await asyncio.wait_for(channel.get_underlay_channel(), 2)
        except Exception:
            return False
        if tag not in getattr(underlay, "consumers", {}):
            return False
        # Ask the broker too: the client-side bookkeeping is what the trap fools. (On
        # the consumer's own channel: a failed passive declare closes the channel.)
        try:
            declared = await asyncio.wait_for(
                underlay.queue_declare(consumer.queue, passive=True), 5
            )
        except Exception:
            return False
        return bool(declared.consumer_count)

    async def _check_consumers(self) -> None:
        for consumer in list(self._consumers.values()):
            try:
                await self._ensure_consumer(consumer)
            except asyncio.CancelledError:
                raise
            except Exception as error:
                log.warning("re-registering consumer of %s failed: %s", consumer.queue, error)

    async def _watch_consumers(self) -> None:
        while True:
            await asyncio.sleep(WATCHDOG_INTERVAL_SECONDS)
            if self.connected:
                await self._check_consumers()

    async def _on_message(self, consumer: _Consumer, message: AbstractIncomingMessage) -> None:
        # aiormq runs this in a task it cancels when the channel closes; the handler
        # runs in its own task so a lost connection never interrupts a database
        # transaction half-way (its ack then fails and the broker redelivers).
        task = asyncio.create_task(self._settle(consumer, message))
        consumer.in_flight.add(task)
        task.add_done_callback(consumer.in_flight.discard)
        await asyncio.shield(task)

    async def _settle(self, consumer: _Consumer, message: AbstractIncomingMessage) -> None:
        try:
            await self._handle(consumer, message)
        except Exception as error:
            log.warning(
                "could not settle %s from %s (%s); the broker will redeliver it",
                message.message_id,
                consumer.queue,
                error_text(error),
            )

    async def _handle(self, consumer: _Consumer, message: AbstractIncomingMessage) -> None:
        attempt = header_int(message, HEADER_ATTEMPT, 1)
        routing_key = header_str(message, HEADER_ROUTING_KEY) or message.routing_key or ""
        delivery = Delivery(
            message_id=message.message_id or "",
            routing_key=routing_key,
            message_type=message.type or "",
            body=message.body,
            attempt=attempt,
        )
        try:
            await consumer.handler(delivery)
        except PoisonMessageError as error:
            await self._dead_letter(consumer, message, delivery, error_text(error))
            return
        except Exception as error:
            reason = error_text(error)
            if attempt >= consumer.max_attempts:
                await self._dead_letter(
                    consumer, message, delivery, f"{reason} (after {attempt} attempts)"
                )
            else:
                await self._retry(consumer, message, delivery, reason)
            return
        await message.ack()

    async def _retry(
        self,
        consumer: _Consumer,
        message: AbstractIncomingMessage,
        delivery: Delivery,
        reason: str,
    ) -> None:
        log.info(
            "retrying %s from %s (attempt %d failed: %s)",
            delivery.message_id,
            consumer.queue,
            delivery.attempt,
            reason,
        )
        await asyncio.sleep(retry_delay_seconds(delivery.attempt))
        headers = dict(message.headers or {})
        headers.update(
            {
                HEADER_ATTEMPT: delivery.attempt + 1,
                HEADER_ERROR: reason,
                HEADER_ROUTING_KEY: delivery.routing_key,
            }
        )
        copy = amqp_message(delivery.message_id, delivery.message_type, delivery.body, headers)
        try:
            await self._publish_direct("", consumer.queue, copy)
        except Exception as error:
            # Not republished: let the broker redeliver the original (same attempt).
            log.warning("retry republish of %s failed: %s", delivery.message_id, error)
            with contextlib.suppress(Exception):
                await message.nack(requeue=True)
            return
        await message.ack()

    async def _dead_letter(
        self,
        consumer: _Consumer,
        message: AbstractIncomingMessage,
        delivery: Delivery,
        reason: str,
    ) -> None:
        log.warning("dead-lettering %s from %s: %s", delivery.message_id, consumer.queue, reason)
        headers = dict(message.headers or {})
        headers.update(
            {
                HEADER_ATTEMPT: delivery.attempt,
                HEADER_ERROR: reason,
                HEADER_QUEUE: consumer.queue,
                HEADER_ROUTING_KEY: delivery.routing_key,
            }
        )
        copy = amqp_message(delivery.message_id, delivery.message_type, delivery.body, headers)
        try:
            await self._publish_direct(events.DEAD_LETTER_EXCHANGE, QUEUES[consumer.queue], copy)
        except Exception as error:
            # The queue's own dead-lettering takes it to the same DLQ (without our reason).
            log.warning("DLX publish of %s failed (%s); rejecting", delivery.message_id, error)
            with contextlib.suppress(Exception):
                await message.reject(requeue=False)
            return
        await message.ack()
