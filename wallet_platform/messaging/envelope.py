"""Envelopes: several events of one routing key in one AMQP message.

RabbitMQ and the consumers pay per message, not per byte, so under bulk load the
relay packs each round's events of a routing key into one ``wallet.v1.EventEnvelope``
(at most ``max_events`` per envelope) and the consumers split it again; every event
keeps its own message id, so deduplication, retries and the DLQ stay per event.

The AMQP message of an envelope: header :data:`HEADER_ENVELOPE` = the number of
events, ``type`` :data:`ENVELOPE_TYPE`, ``message_id`` ``envelope:`` + the first
event's id, the routing key its events share, no ``traceparent`` header (each event
carries its own). A group of one event goes out as a plain message, as without
envelopes. docs/event-pipeline.md documents the format for outside subscribers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from google.protobuf.message import DecodeError

from wallet.v1 import envelope_pb2
from wallet_platform.config import ENVELOPE_MAX_RANGE
from wallet_platform.messaging.bus import OutgoingMessage

HEADER_ENVELOPE = "x-wallet-envelope"  # on an envelope: how many events it carries
ENVELOPE_TYPE = envelope_pb2.EventEnvelope.DESCRIPTOR.full_name
ENVELOPE_ID_PREFIX = "envelope:"
# The most events a consumer accepts in one envelope (what the relay may be set to):
# one delivery never puts more than this many events in a consumer's hands.
MAX_EVENTS = ENVELOPE_MAX_RANGE[1]


class EnvelopeError(ValueError):
    """An envelope that cannot be read (its events are lost to this consumer: poison)."""


@dataclass(frozen=True)
class Envelope:
    """Events of one routing key to publish as one message."""

    routing_key: str
    events: tuple[OutgoingMessage, ...]

    @property
    def message_id(self) -> str:
        return ENVELOPE_ID_PREFIX + self.events[0].message_id

    def body(self) -> bytes:
        return envelope_pb2.EventEnvelope(
            events=[
                envelope_pb2.EnvelopedEvent(
                    message_id=event.message_id,
                    message_type=event.message_type,
                    payload=event.body,
                    traceparent=event.traceparent or "",
                )
                for event in self.events
            ]
        ).SerializeToString()


def pack(messages: Sequence[OutgoingMessage], max_events: int) -> list[OutgoingMessage | Envelope]:
    """``messages`` grouped per routing key (keys in order of first appearance, events
    in their order), in envelopes of at most ``max_events``; a group of one stays a
    plain message. ``max_events`` below 2 packs nothing."""
    if max_events < 2:
        return list(messages)
    by_key: dict[str, list[OutgoingMessage]] = {}
    for message in messages:
        by_key.setdefault(message.routing_key, []).append(message)
    packed: list[OutgoingMessage | Envelope] = []
    for routing_key, group in by_key.items():
        for start in range(0, len(group), max_events):
            chunk = group[start : start + max_events]
            if len(chunk) == 1:
                packed.append(chunk[0])
            else:
                packed.append(Envelope(routing_key, tuple(chunk)))
    return packed


@dataclass(frozen=True)
class EnvelopedEvent:
    """One event read from an envelope."""

    message_id: str
    message_type: str
    body: bytes
    traceparent: str | None


def unpack(body: bytes, count: int) -> list[EnvelopedEvent]:
    """The events of an envelope whose header said ``count``; raises
    :class:`EnvelopeError` if the body is not an envelope of that many events (1 to
    :data:`MAX_EVENTS`)."""
    if not 1 <= count <= MAX_EVENTS:
        raise EnvelopeError(f"envelope header says {count} events: not in 1..{MAX_EVENTS}")
    envelope = envelope_pb2.EventEnvelope()
    try:
        envelope.ParseFromString(body)
    except DecodeError as error:
        raise EnvelopeError(f"undecodable envelope: {error}") from error
    if len(envelope.events) != count:
        raise EnvelopeError(
            f"envelope header says {count} events, its body holds {len(envelope.events)}"
        )
    return [
        EnvelopedEvent(
            message_id=event.message_id,
            message_type=event.message_type,
            body=event.payload,
            traceparent=event.traceparent or None,
        )
        for event in envelope.events
    ]
