"""Outbox rows: what a service inserts, in its own transaction, to publish a message."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from google.protobuf.message import Message

PENDING = "pending"
PUBLISHED = "published"


def outbox_row(
    message_id: str,
    routing_key: str,
    message: Message,
    created_at: datetime,
    traceparent: str | None = None,
) -> dict[str, Any]:
    """Values for one ``outbox`` insert (same transaction as the change it announces).

    The AMQP ``type`` of the published message is the protobuf message's full name,
    its body the serialized message, its ``message_id`` the consumers' dedup key.
    ``traceparent``: the trace context of the write (the relay publishes the message
    in that trace); None when tracing is off.
    """
    return {
        "message_id": message_id,
        "routing_key": routing_key,
        "message_type": message.DESCRIPTOR.full_name,
        "payload": message.SerializeToString(),
        "status": PENDING,
        "attempts": 0,
        "created_at": created_at,
        "traceparent": traceparent,
    }
