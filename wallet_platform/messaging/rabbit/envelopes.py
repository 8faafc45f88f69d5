"""Consuming an envelope: its events are handled one by one, the delivery acked once.

Each event of an envelope (:mod:`~wallet_platform.messaging.envelope`) becomes a
:class:`~wallet_platform.messaging.bus.Delivery` of its own (its own message id, so
the consumers' inbox deduplicates per event, and its own ``traceparent``), handed to
the queue's handler like any single message. The AMQP delivery is settled only once
every event is:

- all succeeded: the envelope is acked;
- some failed: each failed event is published ALONE (a single-event message, as the
  relay would have sent it) to the queue again with ``x-wallet-attempt`` + 1 after the
  usual back-off, or, when it is poison or out of attempts, to the DLX with its reason
  (so ``walletctl dlq replay`` handles it like any dead letter); then the envelope is
  acked. Its good neighbours are applied and never dead-lettered.
- one of those publishes fails: the envelope is requeued whole; its applied events
  are skipped by the inbox when it comes back, the failed ones are tried again.

An envelope that cannot be read (a body that does not hold the events its header
announces) is poison as a whole and dead-lettered as it is (it stays an envelope).

A crash before the ack leaves the envelope in the queue: its redelivery re-applies
nothing that committed (the inbox), so each event still has its effect exactly once.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from aiormq.abc import DeliveredMessage

from wallet_platform import backoff
from wallet_platform.messaging.bus import (
    HEADER_ATTEMPT,
    HEADER_ERROR,
    HEADER_QUEUE,
    HEADER_TRACEPARENT,
    Delivery,
    PoisonMessageError,
    error_text,
)
from wallet_platform.messaging.envelope import HEADER_ENVELOPE, EnvelopeError, unpack
from wallet_platform.messaging.rabbit.acks import AckWindow, ack_later, settle_otherwise
from wallet_platform.messaging.rabbit.messages import (
    HEADER_ROUTING_KEY,
    amqp_message,
    header_int,
)
from wallet_platform.topology import DEAD_LETTER_EXCHANGE, QUEUES

if TYPE_CHECKING:
    from wallet_platform.messaging.rabbit.consumer import QueueConsumer

log = logging.getLogger(__name__)


def split_envelope(
    consumer: QueueConsumer,
    window: AckWindow,
    message: DeliveredMessage,
    routing_key: str,
    attempt: int,
) -> None:
    """Handle the envelope ``message`` (already counted as unsettled by ``consumer``)."""
    properties = message.header.properties
    try:
        events = unpack(message.body, header_int(properties.headers, HEADER_ENVELOPE, 0))
    except EnvelopeError as error:
        whole = Delivery(
            message_id=properties.message_id or "",
            routing_key=routing_key,
            message_type=properties.message_type or "",
            body=message.body,
            attempt=attempt,
        )
        consumer.spawn(consumer.failed(window, message, whole, PoisonMessageError(str(error))))
        return
    deliveries = [
        Delivery(
            message_id=event.message_id,
            routing_key=routing_key,
            message_type=event.message_type,
            body=event.body,
            attempt=attempt,
            traceparent=event.traceparent,
        )
        for event in events
    ]
    _Split(consumer, window, message, deliveries).start()


class _Split:
    """One envelope delivery in the consumer's hands: its events' outcomes."""

    def __init__(
        self,
        consumer: QueueConsumer,
        window: AckWindow,
        message: DeliveredMessage,
        deliveries: list[Delivery],
    ) -> None:
        self.consumer = consumer
        self.window = window
        self.tag = message.delivery_tag or 0
        self.deliveries = deliveries
        self.remaining = len(deliveries)
        self.failures: list[tuple[Delivery, BaseException]] = []

    def start(self) -> None:
        for delivery in self.deliveries:
            self.consumer.dispatch(delivery, self._settler(delivery))

    def _settler(self, delivery: Delivery) -> Any:
        settled = False

        def settle(error: BaseException | None, _applied: bool = False) -> None:
            nonlocal settled
            if settled:
                return
            settled = True
            if error is not None:
                self.failures.append((delivery, error))
            self.remaining -= 1
            if self.remaining == 0:
                self._finish()

        return settle

    def _finish(self) -> None:
        if not self.failures:
            ack_later(self.window, self.tag, self.consumer.ack_batch, self.consumer.tasks)
            self.consumer.handled()
            return
        self.consumer.spawn(self._settle_failures())

    async def _settle_failures(self) -> None:
        """Send each failed event alone (retry or DLQ), then ack the envelope; if a
        publish fails, requeue the envelope instead."""
        consumer = self.consumer
        try:
            retries = [
                d.attempt
                for d, error in self.failures
                if not _dead(error, d.attempt, consumer.max_attempts)
            ]
            if retries:
                # The usual back-off (the envelope keeps its prefetch slot meanwhile).
                await asyncio.sleep(max(backoff.REDELIVERY.delay(a) for a in retries))
            for delivery, error in self.failures:
                await self._send_alone(delivery, error)
        except Exception as failure:
            log.warning(
                "could not send the failed events of an envelope from %s alone (%s); "
                "requeueing the envelope",
                consumer.queue,
                error_text(failure),
            )
            await settle_otherwise(self.window, self.tag, requeue=True)
        else:
            ack_later(self.window, self.tag, 1, consumer.tasks)  # rare: at once
        finally:
            consumer.handled()

    async def _send_alone(self, delivery: Delivery, error: BaseException) -> None:
        consumer = self.consumer
        headers: dict[str, Any] = {HEADER_ROUTING_KEY: delivery.routing_key}
        if delivery.traceparent:
            headers[HEADER_TRACEPARENT] = delivery.traceparent
        if _dead(error, delivery.attempt, consumer.max_attempts):
            reason = error_text(error)
            if not isinstance(error, PoisonMessageError):
                reason = f"{reason} (after {delivery.attempt} attempts)"
            log.warning(
                "dead-lettering %s (from an envelope) from %s: %s",
                delivery.message_id,
                consumer.queue,
                reason,
            )
            headers |= {
                HEADER_ATTEMPT: delivery.attempt,
                HEADER_ERROR: reason,
                HEADER_QUEUE: consumer.queue,
            }
            exchange, routing_key = DEAD_LETTER_EXCHANGE, QUEUES[consumer.queue]
        else:
            log.info(
                "retrying %s (from an envelope) from %s (attempt %d failed: %s)",
                delivery.message_id,
                consumer.queue,
                delivery.attempt,
                error_text(error),
            )
            headers |= {HEADER_ATTEMPT: delivery.attempt + 1, HEADER_ERROR: error_text(error)}
            exchange, routing_key = "", consumer.queue
        copy = amqp_message(delivery.message_id, delivery.message_type, delivery.body, headers)
        await consumer.publish_one(exchange, routing_key, copy)


def _dead(error: BaseException, attempt: int, max_attempts: int) -> bool:
    """Whether a failed event goes to the DLQ (else it is retried)."""
    return isinstance(error, PoisonMessageError) or attempt >= max_attempts
