"""AMQP messages of the bus: the contract's properties and the headers we read back.

Properties: ``message_id`` (the consumers' dedup key), ``content_type``
``application/x-protobuf``, ``type`` (the protobuf message's full name), persistent.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import aio_pika
from pamqp.commands import Basic

from wallet_platform.messaging.bus import HEADER_ATTEMPT
from wallet_platform.topology import CONTENT_TYPE

HEADER_ROUTING_KEY = "x-wallet-routing-key"  # the original key, kept on retried copies
# Set by quorum queues: how often this message was delivered and not settled before.
HEADER_DELIVERY_COUNT = "x-delivery-count"


def amqp_message(
    message_id: str,
    message_type: str,
    body: bytes,
    headers: dict[str, Any] | None = None,
    timestamp: datetime | None = None,
) -> aio_pika.Message:
    """A message with the contract's properties, for aio-pika's publish."""
    return aio_pika.Message(
        body,
        message_id=message_id,
        content_type=CONTENT_TYPE,
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
        content_type=CONTENT_TYPE,
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
    # Any publisher can set headers: bytes that are not UTF-8 must not break a delivery.
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def delivery_attempt(headers: dict[str, Any] | None, *, broker_counts: bool) -> int:
    """Which attempt this delivery is (1 = first).

    The copy's own attempt (``x-wallet-attempt``: 1 when absent; a classic queue's
    retries republish a copy with it raised, a DLQ replay resets it to 1), plus on a
    quorum queue (``broker_counts``) the broker's count of earlier unsettled
    deliveries of this very message (a retry there is a requeue, which it counts; the
    broker sets the header itself, so a publisher cannot forge it).
    """
    attempt = max(header_int(headers, HEADER_ATTEMPT, 1), 1)
    if broker_counts:
        attempt += max(header_int(headers, HEADER_DELIVERY_COUNT, 0), 0)
    return attempt
