"""The event bus: what producers (the outbox relay) and consumers see of messaging.

Two implementations keep the same semantics, so the domain code never knows which
one runs:

- :class:`~wallet_platform.messaging.rabbit.RabbitBus` (``WALLET_AMQP_URL`` set): RabbitMQ with
  publisher confirms and ``mandatory`` publishes, the layout of
  :mod:`wallet_platform.topology`.
- :class:`~wallet_platform.messaging.inprocess.InProcessBus` (``WALLET_AMQP_URL`` empty, the
  ``make run`` default): queues kept in the platform's own database (table
  ``bus_messages``), so a crash loses nothing and ``walletctl dlq`` can see dead letters
  from another process.

Shared semantics: topic routing (``wallet.#`` feeds both consumer queues); a handler
that returns acks the message; one that raises gets the message again (``attempt``
grows) up to ``max_attempts``, then the message is dead-lettered with the reason; a
:class:`PoisonMessageError` dead-letters at once. Delivery is at least once, so
handlers must be idempotent (the consumer runner's inbox makes them so).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from wallet_platform.topology import BINDING_KEY, DLQ_TO_QUEUE, QUEUES

# Message headers we set (AMQP headers on RabbitMQ, columns in the in-process bus).
HEADER_ATTEMPT = "x-wallet-attempt"  # delivery attempt of the copy being published
HEADER_ERROR = "x-wallet-error"  # why a message was retried or dead-lettered
HEADER_QUEUE = "x-wallet-queue"  # the queue a dead letter came from
HEADER_REPLAYED = "x-wallet-replayed"  # set on copies replayed out of a DLQ
# W3C trace context of the write that queued the message (AMQP header, bus column).
HEADER_TRACEPARENT = "traceparent"

DEFAULT_PREFETCH = 64
DEFAULT_MAX_ATTEMPTS = 5


class PublishError(RuntimeError):
    """A publish that was not confirmed and routed: treat the messages as NOT sent."""


class PoisonMessageError(Exception):
    """Raised by a handler for a message that can never succeed: dead-letter it now."""


@dataclass(frozen=True)
class OutgoingMessage:
    """One message to publish (an outbox row)."""

    message_id: str
    routing_key: str
    message_type: str  # full proto name, the AMQP ``type`` property
    body: bytes
    traceparent: str | None = None  # sent as the ``traceparent`` header when set


@dataclass(frozen=True)
class Delivery:
    """What a consumer handler receives."""

    message_id: str
    routing_key: str
    message_type: str
    body: bytes
    attempt: int  # 1 on first delivery, grows with retries
    traceparent: str | None = None  # the ``traceparent`` header, as received


# A handler may also offer ``submit(delivery, settle)`` (the consumer runner does): it
# queues the delivery and calls ``settle(error_or_None, applied)`` once it is done. The
# RabbitMQ bus then needs no task or future per message; the semantics are the same
# (None acks; an error retries or dead-letters; PoisonMessageError, raised by submit
# itself or passed to settle, dead-letters at once).
Handler = Callable[[Delivery], Awaitable[None]]


class EventBus(Protocol):
    """Publish with confirmation, consume with ack-after-handler, retry and DLQ."""

    @property
    def connected(self) -> bool:
        """Whether the bus can publish and deliver right now (readiness reads it)."""
        ...

    async def start(self) -> None:
        """Connect and declare the topology. Idempotent; each ``start`` pairs with a
        ``close`` (the bus is shared by the components of a process and really closes
        when its last user closes it)."""
        ...

    async def close(self) -> None:
        """Release one ``start``; the last one stops consumers and disconnects."""
        ...

    async def publish(self, messages: Sequence[OutgoingMessage]) -> None:
        """Return only when every message is confirmed AND routed to at least one
        queue; otherwise raise :class:`PublishError` (some may have been sent: the
        caller retries, consumers deduplicate)."""
        ...

    async def consume(
        self,
        queue: str,
        handler: Handler,
        *,
        prefetch: int = DEFAULT_PREFETCH,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
    ) -> None:
        """Start consuming ``queue`` in the background (returns once registered)."""
        ...

    async def stop_consuming(self, queue: str) -> None:
        """Stop this process's consumer of ``queue`` (in-flight handlers finish)."""
        ...


def topic_matches(pattern: str, routing_key: str) -> bool:
    """AMQP topic matching: ``*`` is exactly one word, ``#`` zero or more words."""

    def match(pat: list[str], key: list[str]) -> bool:
        if not pat:
            return not key
        head, rest = pat[0], pat[1:]
        if head == "#":
            return any(match(rest, key[skip:]) for skip in range(len(key) + 1))
        if not key:
            return False
        return (head == "*" or head == key[0]) and match(rest, key[1:])

    return match(pattern.split("."), routing_key.split("."))


def routed_queues(routing_key: str) -> list[str]:
    """The consumer queues a message with ``routing_key`` reaches (topic exchange)."""
    return [queue for queue in QUEUES if topic_matches(BINDING_KEY, routing_key)]


def resolve_queue(name: str) -> str:
    """Accept a queue, its DLQ or a consumer's short name ("analytics") -> the queue."""
    if name in QUEUES:
        return name
    if name in DLQ_TO_QUEUE:
        return DLQ_TO_QUEUE[name]
    for queue in QUEUES:
        if queue.split(".", 1)[0] == name:
            return queue
    raise ValueError(f"unknown queue {name!r}; known: {', '.join(QUEUES)}")


def error_text(error: BaseException, limit: int = 1000) -> str:
    """A short, single-line reason for headers and the DLQ."""
    text = f"{type(error).__name__}: {error}".replace("\n", " ")
    return text[:limit]
