"""Publishing on one connection's confirm channel.

Every message goes out ``mandatory`` with ``on_return_raises``, so an unroutable
message raises instead of counting as sent, and :meth:`Publisher.publish` returns
only once the broker has confirmed them all. A batch is handed to aiormq's channel
without waiting for a socket drain per message, so all its frames are queued at once
and their confirms awaited together (docs/benchmarks.md). With envelopes on
(``envelope_max`` >= 2) a batch's events of one routing key go out as envelopes
(:mod:`~wallet_platform.messaging.envelope`): one message, one confirm, one delivery
for up to ``envelope_max`` events.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import aio_pika
from aio_pika.abc import AbstractChannel
from pamqp.commands import Basic

from wallet_platform.messaging.bus import (
    HEADER_TRACEPARENT,
    OutgoingMessage,
    PublishError,
    error_text,
)
from wallet_platform.messaging.envelope import ENVELOPE_TYPE, HEADER_ENVELOPE, Envelope, pack
from wallet_platform.messaging.rabbit.messages import amqp_properties
from wallet_platform.topology import EXCHANGE

PUBLISH_TIMEOUT_SECONDS = 10.0


class Publisher:
    """The confirm channel of one connection (its topology declared)."""

    def __init__(self, channel: AbstractChannel, *, envelope_max: int = 0) -> None:
        self.channel = channel
        self.envelope_max = envelope_max  # below 2: one message per event

    async def publish(self, messages: Sequence[OutgoingMessage]) -> None:
        """To ``wallet.events``; raises :class:`PublishError` unless every message is
        confirmed and routed."""
        try:
            underlay = await self.channel.get_underlay_channel()
        except Exception as error:
            raise PublishError(f"RabbitMQ channel unavailable: {error_text(error)}") from error
        items = pack(messages, self.envelope_max)
        # wait=False: no socket drain per message (which also held aiormq's channel lock
        # across it), so the whole batch is queued for the writer at once; each publish
        # still returns only with its confirm (or raises on a nack, a return, a timeout).
        results = await asyncio.gather(
            *(
                underlay.basic_publish(
                    body,
                    exchange=EXCHANGE,
                    routing_key=item.routing_key,
                    properties=properties,
                    mandatory=True,
                    timeout=PUBLISH_TIMEOUT_SECONDS,
                    wait=False,  # type: ignore[call-arg]  # aiormq.Channel has it
                )
                for item in items
                for body, properties in (_body_and_properties(item),)
            ),
            return_exceptions=True,
        )
        failures = [r for r in results if isinstance(r, BaseException)]
        if failures:
            raise PublishError(
                f"{len(failures)} of {len(items)} messages not confirmed: {error_text(failures[0])}"
            ) from failures[0]

    async def publish_one(
        self, exchange_name: str, routing_key: str, message: aio_pika.Message
    ) -> None:
        """One message to a named exchange ("" = the default exchange, i.e. straight
        to the queue named ``routing_key``); raises if not confirmed and routed."""
        channel = self.channel
        exchange = (
            channel.default_exchange
            if exchange_name == ""
            else await channel.get_exchange(exchange_name, ensure=False)
        )
        await exchange.publish(
            message, routing_key=routing_key, mandatory=True, timeout=PUBLISH_TIMEOUT_SECONDS
        )


def _body_and_properties(item: OutgoingMessage | Envelope) -> tuple[bytes, Basic.Properties]:
    if isinstance(item, Envelope):
        count = {HEADER_ENVELOPE: len(item.events)}
        return item.body(), amqp_properties(item.message_id, ENVELOPE_TYPE, count)
    trace = {HEADER_TRACEPARENT: item.traceparent} if item.traceparent else None
    return item.body, amqp_properties(item.message_id, item.message_type, trace)
