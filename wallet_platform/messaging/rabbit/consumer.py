"""Consuming one queue: a channel of its own, ack after the handler, retry, dead-letter.

Deliveries are taken straight from aiormq's channel (no aio-pika message object and
task per delivery). A handler that offers ``submit(delivery, settle)`` (the consumer
runner) is called back when its batch committed, without a task of its own; a plain
async handler runs in its own task (a lost connection never interrupts it half-way:
its ack then fails and the broker redelivers). Settled deliveries are acked together
(:mod:`~wallet_platform.messaging.rabbit.acks`).

A failed delivery is retried after a short back-off (0.1 s, 0.2 s ... at most 2 s,
during which it keeps its prefetch slot while the rest of the queue flows):

- quorum queue: it is requeued (``basic.nack``); the broker counts the delivery and
  hands it out again with ``x-delivery-count`` raised;
- classic queue: a copy with ``x-wallet-attempt`` + 1 is republished to the queue and
  the original acked (the count survives restarts).

The last failure (``attempt >= max_attempts``) or a :class:`PoisonMessageError` is
published to the DLX with the reason and acked. If even that publish fails the message
is rejected without requeue, and the queue's own ``x-dead-letter-exchange`` puts it in
the same DLQ.

An envelope (header ``x-wallet-envelope``) is split into its events, each handled as a
delivery of its own; its failed events are retried or dead-lettered alone
(:mod:`~wallet_platform.messaging.rabbit.envelopes`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import aio_pika
import aiormq.exceptions
from aio_pika.abc import AbstractChannel, AbstractConnection
from aiormq.abc import DeliveredMessage

from wallet_platform import backoff
from wallet_platform.messaging.bus import (
    HEADER_ATTEMPT,
    HEADER_ERROR,
    HEADER_QUEUE,
    HEADER_TRACEPARENT,
    Delivery,
    Handler,
    PoisonMessageError,
    error_text,
)
from wallet_platform.messaging.envelope import HEADER_ENVELOPE
from wallet_platform.messaging.rabbit.acks import AckWindow, ack_later, settle_otherwise
from wallet_platform.messaging.rabbit.envelopes import split_envelope
from wallet_platform.messaging.rabbit.messages import (
    HEADER_ROUTING_KEY,
    amqp_message,
    delivery_attempt,
    header_str,
)
from wallet_platform.messaging.rabbit.topology import QUORUM, declare_queue, queue_arguments
from wallet_platform.topology import DEAD_LETTER_EXCHANGE, QUEUES

log = logging.getLogger(__name__)

CHANNEL_TIMEOUT_SECONDS = 5.0  # any single channel operation we wait for
CLOSE_TIMEOUT_SECONDS = 2.0  # closing a channel we are giving up anyway
STOP_TIMEOUT_SECONDS = 10.0  # in-flight handlers to finish when consuming stops

# A channel (or its queue) that is gone, as opposed to a broker that does not answer.
_CHANNEL_GONE = (aiormq.exceptions.AMQPError, aiormq.exceptions.ChannelInvalidStateError)

# Publishes a message to an exchange ("" = default) with a routing key, confirmed.
PublishOne = Callable[[str, str, aio_pika.Message], Awaitable[None]]


def retry_delay_seconds(attempt: int) -> float:
    """Pause before retrying a failed delivery (:data:`wallet_platform.backoff.REDELIVERY`)."""
    return backoff.REDELIVERY.delay(attempt)


@dataclass
class QueueConsumer:
    """This process's consumer of one queue, across the bus's connections."""

    queue: str
    handler: Handler
    prefetch: int
    max_attempts: int
    queue_type: str
    publish_one: PublishOne
    channel: AbstractChannel | None = None
    tag: str | None = None
    window: AckWindow | None = None  # acks of the current channel
    unsettled: int = 0  # deliveries whose handler has not settled yet
    idle: asyncio.Event = field(default_factory=asyncio.Event)
    tasks: set[asyncio.Task[Any]] = field(default_factory=set)  # retries, DLQ, handlers, acks

    @property
    def ack_batch(self) -> int:
        """Acks due that are sent at once instead of after a short delay."""
        return max(1, self.prefetch // 4)

    # --- registration ---------------------------------------------------------------

    async def register(self, connection: AbstractConnection) -> None:
        """Consume on a fresh channel of ``connection`` (bounded in time)."""
        await self.drop_channel()
        channel = await asyncio.wait_for(
            connection.channel(publisher_confirms=False), CHANNEL_TIMEOUT_SECONDS
        )
        try:
            async with asyncio.timeout(CHANNEL_TIMEOUT_SECONDS):
                await channel.set_qos(prefetch_count=self.prefetch)
                arguments = queue_arguments(self.queue, self.queue_type)
                await declare_queue(channel, self.queue, self.queue_type, arguments)
                underlay = await channel.get_underlay_channel()
                window = AckWindow(underlay)

                async def on_message(message: DeliveredMessage) -> None:
                    self._on_message(window, message)

                ok = await underlay.basic_consume(self.queue, on_message, no_ack=False)
        except BaseException:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(channel.close(), CHANNEL_TIMEOUT_SECONDS)
            raise
        self.channel, self.tag, self.window = channel, ok.consumer_tag, window
        log.info("consuming %s (prefetch %d)", self.queue, self.prefetch)

    async def alive(self) -> bool:
        """Our consumer is on an open channel AND the broker counts a consumer.

        The broker is asked too (a passive declare on the consumer's own channel, as a
        failed one closes the channel): client-side bookkeeping alone can say
        "consuming" for a consumer the broker no longer has. A broker that does not
        answer within :data:`CHANNEL_TIMEOUT_SECONDS` raises ``TimeoutError``: then
        the connection, not the consumer, is what failed.
        """
        channel, tag = self.channel, self.tag
        if channel is None or tag is None or channel.is_closed:
            return False
        async with asyncio.timeout(CHANNEL_TIMEOUT_SECONDS):
            try:
                underlay = await channel.get_underlay_channel()
            except _CHANNEL_GONE:
                return False
            if tag not in getattr(underlay, "consumers", {}):
                return False
            try:
                declared = await underlay.queue_declare(self.queue, passive=True)
            except _CHANNEL_GONE:
                return False  # e.g. the queue is gone (the channel is closed with it)
        return bool(declared.consumer_count)

    async def drop_channel(self) -> None:
        """Forget the current channel (its unsettled deliveries go back to the queue)."""
        channel, self.channel, self.tag, self.window = self.channel, None, None, None
        if channel is not None and not channel.is_closed:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(channel.close(), CLOSE_TIMEOUT_SECONDS)

    async def stop(self) -> None:
        """Cancel the consumer, let in-flight handlers settle, send the last acks."""
        channel, tag = self.channel, self.tag
        if channel is not None and tag is not None:
            with contextlib.suppress(Exception):
                underlay = await asyncio.wait_for(
                    channel.get_underlay_channel(), CHANNEL_TIMEOUT_SECONDS
                )
                await asyncio.wait_for(underlay.basic_cancel(tag), CHANNEL_TIMEOUT_SECONDS)
        if self.unsettled:
            self.idle.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.idle.wait(), STOP_TIMEOUT_SECONDS)
        if self.tasks:
            await asyncio.wait(set(self.tasks), timeout=STOP_TIMEOUT_SECONDS)
        if self.window is not None:
            await self.window.flush()  # the last acks, before the channel goes
        await self.drop_channel()

    # --- deliveries -------------------------------------------------------------------

    def _on_message(self, window: AckWindow, message: DeliveredMessage) -> None:
        """One delivery: hand it to the handler; it is acked (through ``window``) once
        the handler settled it, or retried / dead-lettered if it failed."""
        tag = message.delivery_tag
        if tag is None:  # pragma: no cover - basic.deliver always carries one
            return
        window.delivered(tag)
        self.unsettled += 1
        properties = message.header.properties
        headers = properties.headers
        routing_key = header_str(headers, HEADER_ROUTING_KEY) or message.routing_key or ""
        attempt = delivery_attempt(headers, broker_counts=self.queue_type == QUORUM)
        if HEADER_ENVELOPE in (headers or {}):
            split_envelope(self, window, message, routing_key, attempt)
            return
        delivery = Delivery(
            message_id=properties.message_id or "",
            routing_key=routing_key,
            message_type=properties.message_type or "",
            body=message.body,
            attempt=attempt,
            traceparent=header_str(headers, HEADER_TRACEPARENT),
        )
        self.dispatch(delivery, self.settler(window, message, delivery))

    def settler(
        self, window: AckWindow, message: DeliveredMessage, delivery: Delivery
    ) -> Callable[[BaseException | None, bool], None]:
        """The callback that settles ``message`` (carrying ``delivery``) once: ack on
        success, else retry or dead-letter it."""
        settled = False

        def settle(error: BaseException | None, _applied: bool = False) -> None:
            nonlocal settled
            if settled:
                return
            settled = True
            if error is None:
                ack_later(window, message.delivery_tag or 0, self.ack_batch, self.tasks)
                self.handled()
            else:
                self.spawn(self.failed(window, message, delivery, error))

        return settle

    def dispatch(
        self, delivery: Delivery, settle: Callable[[BaseException | None, bool], None]
    ) -> None:
        """Hand ``delivery`` to the handler; ``settle`` is called once with its outcome."""
        submit = getattr(self.handler, "submit", None)
        if submit is None:
            self.spawn(_run_handler(self.handler, delivery, settle))
            return
        try:
            submit(delivery, settle)
        except Exception as error:
            settle(error, False)

    def spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def handled(self) -> None:
        self.unsettled -= 1
        if self.unsettled <= 0:
            self.idle.set()

    async def failed(
        self,
        window: AckWindow,
        message: DeliveredMessage,
        delivery: Delivery,
        error: BaseException,
    ) -> None:
        try:
            if isinstance(error, PoisonMessageError):
                await self._dead_letter(window, message, delivery, error_text(error))
            elif delivery.attempt >= self.max_attempts:
                reason = f"{error_text(error)} (after {delivery.attempt} attempts)"
                await self._dead_letter(window, message, delivery, reason)
            else:
                await self._retry(window, message, delivery, error_text(error))
        except Exception as failure:
            log.warning(
                "could not settle %s from %s (%s); the broker will redeliver it",
                delivery.message_id,
                self.queue,
                error_text(failure),
            )
        finally:
            self.handled()

    async def _retry(
        self, window: AckWindow, message: DeliveredMessage, delivery: Delivery, reason: str
    ) -> None:
        log.info(
            "retrying %s from %s (attempt %d failed: %s)",
            delivery.message_id,
            self.queue,
            delivery.attempt,
            reason,
        )
        await asyncio.sleep(retry_delay_seconds(delivery.attempt))
        tag = message.delivery_tag or 0
        if self.queue_type == QUORUM:
            await settle_otherwise(window, tag, requeue=True)  # the broker counts it
            return
        copy = _copy(
            message, delivery, {HEADER_ATTEMPT: delivery.attempt + 1, HEADER_ERROR: reason}
        )
        await self._send_or(window, tag, "", self.queue, copy, requeue=True)

    async def _dead_letter(
        self, window: AckWindow, message: DeliveredMessage, delivery: Delivery, reason: str
    ) -> None:
        log.warning("dead-lettering %s from %s: %s", delivery.message_id, self.queue, reason)
        headers = {HEADER_ATTEMPT: delivery.attempt, HEADER_ERROR: reason, HEADER_QUEUE: self.queue}
        copy = _copy(message, delivery, headers)
        tag = message.delivery_tag or 0
        # If the DLX publish fails, the rejected original reaches the same DLQ through the
        # queue's own dead-lettering (without our reason).
        await self._send_or(
            window, tag, DEAD_LETTER_EXCHANGE, QUEUES[self.queue], copy, requeue=False
        )

    async def _send_or(
        self,
        window: AckWindow,
        tag: int,
        exchange: str,
        routing_key: str,
        copy: aio_pika.Message,
        *,
        requeue: bool,
    ) -> None:
        """Publish ``copy`` and ack the original; if the publish fails, requeue the
        original (same attempt) or reject it instead."""
        try:
            await self.publish_one(exchange, routing_key, copy)
        except Exception as error:
            log.warning(
                "publishing %s to %r failed (%s); %s the original",
                copy.message_id,
                exchange or routing_key,
                error,
                "requeueing" if requeue else "rejecting",
            )
            await settle_otherwise(window, tag, requeue=requeue)
            return
        ack_later(window, tag, 1, self.tasks)  # rare: at once


def _copy(
    message: DeliveredMessage, delivery: Delivery, headers: dict[str, Any]
) -> aio_pika.Message:
    """The delivery as a new message: its headers, the original routing key, ``headers``."""
    merged: dict[str, Any] = dict(message.header.properties.headers or {})
    merged.update(headers)
    merged[HEADER_ROUTING_KEY] = delivery.routing_key
    return amqp_message(delivery.message_id, delivery.message_type, delivery.body, merged)


async def _run_handler(
    handler: Handler, delivery: Delivery, settle: Callable[[BaseException | None, bool], None]
) -> None:
    """A plain async handler in its own task."""
    try:
        await handler(delivery)
    except Exception as error:
        settle(error, False)
    else:
        settle(None, True)
