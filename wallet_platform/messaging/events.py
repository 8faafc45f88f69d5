"""The events on the wire: each type's protobuf message, routing key and AMQP ``type``.

One table ties each ``wallet_events.type`` value to its ``WalletEventType`` enum, its
message in ``events.proto`` and its routing key ``wallet.<type>``. Producers use
:func:`wallet_event_outbox_row` (or the platform's ``outbox_row`` for other
messages); consumers use :func:`decode_delivery`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from google.protobuf.message import DecodeError, Message

from wallet.v1 import events_pb2, wallet_pb2
from wallet_events import types
from wallet_platform.messaging.bus import Delivery, PoisonMessageError
from wallet_platform.messaging.outbox.rows import outbox_row

ROUTING_PREFIX = "wallet."


def routing_key(event_type: str) -> str:
    """The routing key of a message of ``event_type`` (``wallet.<type>``)."""
    return ROUTING_PREFIX + event_type


@dataclass(frozen=True)
class EventKind:
    """One kind of wallet log entry."""

    name: str  # wallet_events.type, e.g. "funds_deposited"
    enum: int  # wallet_pb2.WalletEventType value
    message: type[Message]  # its events_pb2 message (holds the WalletEvent in `event`)

    @property
    def routing_key(self) -> str:
        return routing_key(self.name)

    @property
    def message_type(self) -> str:
        return str(self.message.DESCRIPTOR.full_name)


_ENUM = wallet_pb2.WalletEventType.Value  # e.g. "WALLET_EVENT_TYPE_FUNDS_DEPOSITED" -> 2

WALLET_EVENT_KINDS: tuple[EventKind, ...] = tuple(
    EventKind(name, _ENUM(f"WALLET_EVENT_TYPE_{name.upper()}"), message)
    for name, message in (
        (types.WALLET_CREATED, events_pb2.WalletCreated),
        (types.FUNDS_DEPOSITED, events_pb2.FundsDeposited),
        (types.FUNDS_WITHDRAWN, events_pb2.FundsWithdrawn),
        (types.TRANSFER_DEBITED, events_pb2.TransferDebited),
        (types.TRANSFER_CREDITED, events_pb2.TransferCredited),
        (types.TRANSFER_REFUNDED, events_pb2.TransferRefunded),
        (types.WALLET_FROZEN, events_pb2.WalletFrozen),
        (types.WALLET_UNFROZEN, events_pb2.WalletUnfrozen),
    )
)
KIND_BY_NAME = {kind.name: kind for kind in WALLET_EVENT_KINDS}
KIND_BY_ENUM = {kind.enum: kind for kind in WALLET_EVENT_KINDS}
KIND_BY_MESSAGE_TYPE = {kind.message_type: kind for kind in WALLET_EVENT_KINDS}

# Messages that are not wallet log entries, published through the same outbox.
OTHER_MESSAGES: dict[str, type[Message]] = {
    types.TRANSFER_COMPLETED: events_pb2.TransferCompleted,
    types.TRANSFER_FAILED: events_pb2.TransferFailed,
    types.TRANSFER_COMPENSATED: events_pb2.TransferCompensated,
    types.FRAUD_ALERT_RAISED: events_pb2.FraudAlertRaised,
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


def wallet_event_outbox_row(
    event: wallet_pb2.WalletEvent, created_at: datetime, traceparent: str | None = None
) -> dict[str, Any]:
    """The outbox row announcing a log entry (same transaction as the entry); with the
    write's trace context when tracing is on."""
    kind = KIND_BY_ENUM[event.type]
    return outbox_row(
        event.event_id, kind.routing_key, wallet_event_message(event), created_at, traceparent
    )


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


def decode_delivery(delivery: Delivery) -> Message:
    """A consumer's decode: a body that can never be read is a poison message (the
    bus dead-letters it at once and the queue keeps flowing)."""
    try:
        return decode(delivery.message_type, delivery.body)
    except UndecodableMessageError as error:
        raise PoisonMessageError(str(error)) from error


def wallet_event_of(message: Message) -> tuple[str, wallet_pb2.WalletEvent] | None:
    """``(type name, log entry)`` of a wallet event message; None for other messages.

    An entry whose type does not match its message, or that lacks what every consumer
    relies on (event id, wallet id, event time, a non-negative amount), can never be
    applied: :class:`PoisonMessageError`.
    """
    kind = KIND_BY_MESSAGE_TYPE.get(message.DESCRIPTOR.full_name)
    if kind is None:
        return None
    event: wallet_pb2.WalletEvent = message.event  # type: ignore[attr-defined]
    if event.type != kind.enum:
        raise PoisonMessageError(f"{kind.message_type} carries event type {event.type}")
    if not event.event_id or not event.wallet_id or not event.HasField("occurred_at"):
        raise PoisonMessageError("wallet event without event_id, wallet_id or occurred_at")
    if event.amount < 0:
        raise PoisonMessageError(f"wallet event with negative amount {event.amount}")
    return kind.name, event


def trace_ids(message: Message) -> dict[str, str | None]:
    """The audit and transfer ids a wallet event carries, for a consumer's log lines:
    one audit id leads from the write call through the ledger to what each consumer
    did with the event."""
    event = getattr(message, "event", None)
    if event is None:
        return {}
    return {"audit_id": event.audit_id or None, "transfer_id": event.transfer_id or None}
