"""The event vocabulary: log entry types, their protobuf messages and routing keys.

One table ties each ``wallet_events.type`` value to its ``WalletEventType`` enum,
its message in ``events.proto`` and its routing key ``wallet.<type>``. Producers use
:func:`outbox_row`, consumers use :func:`decode`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from google.protobuf.message import DecodeError, Message

from wallet.v1 import events_pb2, wallet_pb2

EXCHANGE = "wallet.events"
DEAD_LETTER_EXCHANGE = "wallet.events.dlx"
ANALYTICS_QUEUE = "analytics.wallet-events"
FRAUD_QUEUE = "fraud.wallet-events"
ANALYTICS_DLQ = "analytics.wallet-events.dlq"
FRAUD_DLQ = "fraud.wallet-events.dlq"
CONTENT_TYPE = "application/x-protobuf"


@dataclass(frozen=True)
class EventKind:
    """One kind of wallet log entry."""

    name: str  # wallet_events.type, e.g. "funds_deposited"
    enum: int  # wallet_pb2.WalletEventType value
    message: type[Message]  # its events_pb2 message (holds the WalletEvent in `event`)

    @property
    def routing_key(self) -> str:
        return f"wallet.{self.name}"

    @property
    def message_type(self) -> str:
        return str(self.message.DESCRIPTOR.full_name)


WALLET_EVENT_KINDS: tuple[EventKind, ...] = (
    EventKind(
        "wallet_created", wallet_pb2.WALLET_EVENT_TYPE_WALLET_CREATED, events_pb2.WalletCreated
    ),
    EventKind(
        "funds_deposited", wallet_pb2.WALLET_EVENT_TYPE_FUNDS_DEPOSITED, events_pb2.FundsDeposited
    ),
    EventKind(
        "funds_withdrawn", wallet_pb2.WALLET_EVENT_TYPE_FUNDS_WITHDRAWN, events_pb2.FundsWithdrawn
    ),
    EventKind(
        "transfer_debited",
        wallet_pb2.WALLET_EVENT_TYPE_TRANSFER_DEBITED,
        events_pb2.TransferDebited,
    ),
    EventKind(
        "transfer_credited",
        wallet_pb2.WALLET_EVENT_TYPE_TRANSFER_CREDITED,
        events_pb2.TransferCredited,
    ),
    EventKind(
        "transfer_refunded",
        wallet_pb2.WALLET_EVENT_TYPE_TRANSFER_REFUNDED,
        events_pb2.TransferRefunded,
    ),
    EventKind("wallet_frozen", wallet_pb2.WALLET_EVENT_TYPE_WALLET_FROZEN, events_pb2.WalletFrozen),
    EventKind(
        "wallet_unfrozen", wallet_pb2.WALLET_EVENT_TYPE_WALLET_UNFROZEN, events_pb2.WalletUnfrozen
    ),
)
KIND_BY_NAME = {kind.name: kind for kind in WALLET_EVENT_KINDS}
KIND_BY_ENUM = {kind.enum: kind for kind in WALLET_EVENT_KINDS}

# Messages that are not wallet log entries, published through the same outbox.
OTHER_MESSAGES: dict[str, type[Message]] = {
    "transfer_completed": events_pb2.TransferCompleted,
    "transfer_failed": events_pb2.TransferFailed,
    "transfer_compensated": events_pb2.TransferCompensated,
    "fraud_alert_raised": events_pb2.FraudAlertRaised,
}

MESSAGE_CLASSES: dict[str, type[Message]] = {
    **{kind.message_type: kind.message for kind in WALLET_EVENT_KINDS},
    **{str(cls.DESCRIPTOR.full_name): cls for cls in OTHER_MESSAGES.values()},
}


class UndecodableMessageError(ValueError):
    """A body that is not the protobuf message its ``type`` property names."""


def wallet_event_message(event: wallet_pb2.WalletEvent) -> Message:
    """Wrap a log entry in its events.proto message."""
    kind = KIND_BY_ENUM[event.type]
    return kind.message(event=event)


def outbox_row(
    message_id: str, routing_key: str, message: Message, created_at: datetime
) -> dict[str, Any]:
    """Values for one ``outbox`` insert (same transaction as the change it announces)."""
    return {
        "message_id": message_id,
        "routing_key": routing_key,
        "message_type": message.DESCRIPTOR.full_name,
        "payload": message.SerializeToString(),
        "status": "pending",
        "attempts": 0,
        "created_at": created_at,
    }


def wallet_event_outbox_row(event: wallet_pb2.WalletEvent, created_at: datetime) -> dict[str, Any]:
    kind = KIND_BY_ENUM[event.type]
    return outbox_row(event.event_id, kind.routing_key, wallet_event_message(event), created_at)


def decode(message_type: str, body: bytes) -> Message:
    """Parse a published body by its AMQP ``type`` property."""
    cls = MESSAGE_CLASSES.get(message_type)
    if cls is None:
        raise UndecodableMessageError(f"unknown message type {message_type!r}")
    message = cls()
    try:
        message.ParseFromString(body)
    except DecodeError as error:
        raise UndecodableMessageError(f"cannot decode {message_type}: {error}") from None
    return message
