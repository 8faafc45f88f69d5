"""The RabbitMQ event bus (aio-pika, robust connection, publisher confirms).

Publishing: one confirm-mode channel; every message goes out ``mandatory`` with
``on_return_raises``, so an unroutable message raises instead of counting as sent,
and :meth:`RabbitBus.publish` returns only once the broker has confirmed them all.
A batch is handed to aiormq's channel without waiting for a socket drain per message,
so all its frames are queued at once and their confirms awaited together.

Consuming: one channel per consumed queue (its own ``prefetch``); handlers run
concurrently up to the prefetch and the message is acked only after the handler
returns. Performance (docs/benchmarks.md): the consumer sits directly on aiormq's
channel (no aio-pika message object and task per delivery); a handler that offers
``submit(delivery, settle)`` (the consumer runner) is called back when its batch
committed, without a task of its own; and settled deliveries are acked together, one
``basic.ack(multiple=True)`` for the longest run of settled delivery tags at the
bottom of the channel's unsettled ones (see :class:`_AckWindow`).

Retries republish a copy to the same queue (default exchange) with
``x-wallet-attempt`` + 1 and the reason in ``x-wallet-error``, then ack the original
(so the count survives restarts); the last failure, or a
:class:`~wallet_platform.messaging.bus.PoisonMessageError`, publishes the message to the DLX with
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
import aiormq
from aio_pika.abc import (
    AbstractChannel,
    AbstractExchange,
    AbstractQueue,
    AbstractRobustConnection,
)
from aiormq.abc import DeliveredMessage
from pamqp.commands import Basic

from wallet_platform.messaging import events
from wallet_platform.messaging.bus import (
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
# Acks of committed deliveries wait at most this long for company (one frame for all);
# a quarter of the prefetch due is sent at once. Unacked deliveries only hold prefetch
# slots meanwhile: a crash before the ack redelivers them and the inbox skips them.
ACK_DELAY_SECONDS = 0.02


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


def amqp_properties(
    message_id: str, message_type: str, headers: dict[str, Any] | None = None
) -> Basic.Properties:
    """:func:`amqp_message`'s properties, for publishing on aiormq's channel directly."""
    return Basic.Properties(
        message_id=message_id,
        content_type=events.CONTENT_TYPE,
        message_type=message_type,
        delivery_mode=int(aio_pika.DeliveryMode.PERSISTENT),
        headers=headers or {},
    )


def header_int(headers: dict[str, Any] | None, name: str, default: int) -> int:
    value = (headers or {}).get(name)
    try:
        return int(value) if value is not None else default
    except (TypeError, ValueError):
        return default


def header_str(headers: dict[str, Any] | None, name: str) -> str | None:
    value = (headers or {}).get(name)
    if value is None:
        return None
    return value.decode() if isinstance(value, bytes) else str(value)


class _AckWindow:
    """The unsettled deliveries of ONE aiormq channel, and their acks, batched.

    ``basic.ack(multiple=True)`` acks every unacked tag up to the given one on the
    channel, so it may only cover a run of tags that are ALL settled: a delivery still
    in the consumer's hands, waiting to be retried or being dead-lettered must never
    sit below it. Tags are kept in delivery order (= tag order: aiormq starts the
    callback of each delivery in the order the frames arrive); a flush acks the settled
    run at the bottom with one frame and any settled tag above the first unsettled one
    on its own. Should tags ever arrive out of order, every ack is sent singly.

    When acks are sent is the bus's choice (:meth:`RabbitBus._ack_later`): at once
    when a quarter of the prefetch is due, else after :data:`ACK_DELAY_SECONDS`, so a
    stream of small committed batches shares one frame (one socket write) too.
    """

    def __init__(self, channel: aiormq.abc.AbstractChannel) -> None:
        self.channel = channel
        self.unsettled: dict[int, bool] = {}  # tag -> settled (ack due); delivery order
        self.last_tag = 0
        self.ordered = True
        self.due = 0  # settled tags not yet taken
        self.flush_soon = False  # a flush task is scheduled
        self.timer: asyncio.TimerHandle | None = None  # a delayed flush is scheduled

    def delivered(self, tag: int) -> None:
        if tag <= self.last_tag:
            self.ordered = False
        self.last_tag = max(tag, self.last_tag)
        self.unsettled[tag] = False

    def settled(self, tag: int) -> int:
        """Mark ``tag`` for ack; returns how many acks are due (0: unknown tag)."""
        if self.unsettled.get(tag) is not False:
            return 0
        self.unsettled[tag] = True
        self.due += 1
        return self.due

    def forget(self, tag: int) -> None:
        """``tag`` is settled otherwise (nack, reject): never ack it."""
        self.unsettled.pop(tag, None)

    def take(self) -> tuple[int | None, list[int]]:
        """The acks due: (tag to ack with ``multiple``, or None; tags to ack singly)."""
        self.flush_soon = False
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        upto: int | None = None
        singles: list[int] = []
        bottom = self.ordered
        for tag, done in self.unsettled.items():
            if not done:
                bottom = False
            elif bottom:
                upto = tag
            else:
                singles.append(tag)
        for tag in singles:
            del self.unsettled[tag]
        if upto is not None:
            for tag in [t for t in self.unsettled if t <= upto]:
                del self.unsettled[tag]
        self.due = sum(1 for done in self.unsettled.values() if done)  # 0: all taken
        return upto, singles

    async def flush(self) -> None:
        upto, singles = self.take()
        try:
            if upto is not None:
                await self.channel.basic_ack(upto, multiple=True, wait=False)
            for tag in singles:
                await self.channel.basic_ack(tag, wait=False)
        except Exception as error:
            # The channel is gone: the broker redelivers them (the inbox dedupes).
            log.warning("could not ack deliveries (%s); they will be redelivered", error)


@dataclass
class _Consumer:
    queue: str
    handler: Handler
    prefetch: int
    max_attempts: int
    channel: AbstractChannel | None = None
    underlay: aiormq.abc.AbstractChannel | None = None
    amqp_queue: AbstractQueue | None = None
    tag: str | None = None
    window: _AckWindow | None = None  # acks of the current channel
    unsettled: int = 0  # deliveries whose handler has not settled yet
    idle: asyncio.Event = field(default_factory=asyncio.Event)
    tasks: set[asyncio.Task[Any]] = field(default_factory=set)  # retries, DLQ, handlers

    @property
    def ack_batch(self) -> int:
        """Acks due that are sent at once instead of after ``ACK_DELAY_SECONDS``."""
        return max(1, self.prefetch // 4)


class RabbitBus:
    """An :class:`~wallet_platform.messaging.bus.EventBus` on RabbitMQ."""

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
        channel = self._publish_channel
        if channel is None or self._exchange is None or not self.connected:
            raise PublishError("RabbitMQ is not connected")
        try:
            underlay = await channel.get_underlay_channel()
        except Exception as error:
            raise PublishError(f"RabbitMQ channel unavailable: {error_text(error)}") from error
        # wait=False: no socket drain per message (which also held aiormq's channel lock
        # across it), so the whole batch is queued for the writer at once; each publish
        # still returns only with its confirm (or raises on a nack, a return, a timeout).
        results = await asyncio.gather(
            *(
                underlay.basic_publish(
                    m.body,
                    exchange=events.EXCHANGE,
                    routing_key=m.routing_key,
                    properties=amqp_properties(m.message_id, m.message_type),
                    mandatory=True,
                    timeout=PUBLISH_TIMEOUT_SECONDS,
                    wait=False,  # type: ignore[call-arg]  # aiormq.Channel has it
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
        underlay, tag = consumer.underlay, consumer.tag
        if underlay is not None and tag is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(underlay.basic_cancel(tag), 5)
        if consumer.unsettled:
            consumer.idle.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(consumer.idle.wait(), 10)
        if consumer.tasks:
            await asyncio.wait(set(consumer.tasks), timeout=10)
        window = consumer.window
        if window is not None:
            await window.flush()  # the last acks, before the channel goes
        if consumer.channel is not None:
            with contextlib.suppress(Exception):
                await consumer.channel.close()
        consumer.channel = consumer.underlay = consumer.amqp_queue = consumer.tag = None
        consumer.window = None

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
            underlay = await channel.get_underlay_channel()
            window = _AckWindow(underlay)

            async def on_message(message: DeliveredMessage) -> None:
                self._on_message(consumer, window, message)

            # Straight on aiormq's channel: aio-pika's queue.consume would add a message
            # object and a task per delivery. A reconnect drops this consumer; the
            # watchdog registers it again on a fresh channel (as it always has).
            ok = await underlay.basic_consume(consumer.queue, on_message, no_ack=False)
        except BaseException:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(channel.close(), 5)
            raise
        consumer.channel, consumer.amqp_queue, consumer.tag = channel, amqp_queue, ok.consumer_tag
        consumer.underlay, consumer.window = underlay, window
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

    def _on_message(
        self, consumer: _Consumer, window: _AckWindow, message: DeliveredMessage
    ) -> None:
        """One delivery: hand it to the handler; it is acked (through ``window``) once
        the handler settled it, or retried / dead-lettered if it failed."""
        tag = message.delivery_tag
        if tag is None:  # pragma: no cover - basic.deliver always carries one
            return
        window.delivered(tag)
        consumer.unsettled += 1
        properties = message.header.properties
        headers = properties.headers
        routing_key = header_str(headers, HEADER_ROUTING_KEY) or message.routing_key or ""
        delivery = Delivery(
            message_id=properties.message_id or "",
            routing_key=routing_key,
            message_type=properties.message_type or "",
            body=message.body,
            attempt=header_int(headers, HEADER_ATTEMPT, 1),
        )
        settled = False

        def settle(error: BaseException | None, _applied: bool = False) -> None:
            nonlocal settled
            if settled:
                return
            settled = True
            if error is None:
                self._ack_later(window, tag, consumer.ack_batch)
                self._handled(consumer)
            else:
                self._spawn(consumer, self._failed(consumer, window, message, delivery, error))

        submit = getattr(consumer.handler, "submit", None)
        if submit is None:
            self._spawn(consumer, self._run_handler(consumer.handler, delivery, settle))
            return
        try:
            submit(delivery, settle)
        except Exception as error:
            settle(error)

    @staticmethod
    async def _run_handler(
        handler: Handler,
        delivery: Delivery,
        settle: Any,
    ) -> None:
        """A plain async handler runs in its own task (a lost connection never
        interrupts it half-way: its ack then fails and the broker redelivers)."""
        try:
            await handler(delivery)
        except Exception as error:
            settle(error)
        else:
            settle(None)

    def _spawn(self, consumer: _Consumer, work: Any) -> None:
        task = asyncio.get_running_loop().create_task(work)
        consumer.tasks.add(task)
        task.add_done_callback(consumer.tasks.discard)

    def _ack_later(self, window: _AckWindow, tag: int, batch: int) -> None:
        """Ack ``tag`` with the next flush: now if ``batch`` acks are due, else soon."""
        due = window.settled(tag)
        if not due or window.flush_soon:
            return
        if due >= batch:
            window.flush_soon = True
            task = asyncio.get_running_loop().create_task(window.flush())
            self._background.add(task)  # keep a reference until it is done
            task.add_done_callback(self._background.discard)
        elif window.timer is None:
            window.timer = asyncio.get_running_loop().call_later(
                ACK_DELAY_SECONDS, self._ack_now, window
            )

    def _ack_now(self, window: _AckWindow) -> None:
        window.timer = None
        if window.flush_soon:
            return
        window.flush_soon = True
        task = asyncio.get_running_loop().create_task(window.flush())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    @staticmethod
    def _handled(consumer: _Consumer) -> None:
        consumer.unsettled -= 1
        if consumer.unsettled <= 0:
            consumer.idle.set()

    async def _failed(
        self,
        consumer: _Consumer,
        window: _AckWindow,
        message: DeliveredMessage,
        delivery: Delivery,
        error: BaseException,
    ) -> None:
        try:
            if isinstance(error, PoisonMessageError):
                await self._dead_letter(consumer, window, message, delivery, error_text(error))
            elif delivery.attempt >= consumer.max_attempts:
                reason = f"{error_text(error)} (after {delivery.attempt} attempts)"
                await self._dead_letter(consumer, window, message, delivery, reason)
            else:
                await self._retry(consumer, window, message, delivery, error_text(error))
        except Exception as failure:
            log.warning(
                "could not settle %s from %s (%s); the broker will redeliver it",
                delivery.message_id,
                consumer.queue,
                error_text(failure),
            )
        finally:
            self._handled(consumer)

    async def _retry(
        self,
        consumer: _Consumer,
        window: _AckWindow,
        message: DeliveredMessage,
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
        headers = dict(message.header.properties.headers or {})
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
            await _settle_otherwise(window, message, requeue=True)
            return
        self._ack_later(window, message.delivery_tag or 0, 1)  # rare: at once

    async def _dead_letter(
        self,
        consumer: _Consumer,
        window: _AckWindow,
        message: DeliveredMessage,
        delivery: Delivery,
        reason: str,
    ) -> None:
        log.warning("dead-lettering %s from %s: %s", delivery.message_id, consumer.queue, reason)
        headers = dict(message.header.properties.headers or {})
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
            await _settle_otherwise(window, message, requeue=False)
            return
        self._ack_later(window, message.delivery_tag or 0, 1)  # rare: at once


async def _settle_otherwise(
    window: _AckWindow, message: DeliveredMessage, *, requeue: bool
) -> None:
    """Nack (``requeue``: back to the queue) or reject (to the queue's DLX) one delivery."""
    tag = message.delivery_tag or 0
    window.forget(tag)
    with contextlib.suppress(Exception):
        if requeue:
            await window.channel.basic_nack(tag, requeue=True)
        else:
            await window.channel.basic_reject(tag, requeue=False)
