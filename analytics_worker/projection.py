"""The analytics consumer: wallet log entries -> ``wallet_stats``.

The consumer runner (``wallet_platform.messaging.consumer``) decodes each delivery, opens a
transaction, writes the inbox row and calls :meth:`AnalyticsProjection.apply` in the
same transaction, so each event changes the stats exactly once. Messages that are not
wallet log entries (saga milestones, fraud alerts) are acknowledged and ignored.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC

from google.protobuf.message import Message
from sqlalchemy.ext.asyncio import AsyncConnection

from analytics_worker import repository
from analytics_worker.domain import StatsDelta, delta_for, merge_by_wallet
from wallet.v1 import wallet_pb2
from wallet_platform.clock import Clock, utcnow
from wallet_platform.messaging import events
from wallet_platform.messaging.bus import Delivery, PoisonMessageError

WALLET_EVENT_MESSAGE_TYPES = frozenset(kind.message_type for kind in events.WALLET_EVENT_KINDS)


def wallet_event_of(message: Message) -> wallet_pb2.WalletEvent | None:
    """The log entry a message carries, None for other messages.

    A wallet event message whose entry lacks what the projection needs can never
    succeed, so it is a poison message (dead-lettered at once, not retried).
    """
    if message.DESCRIPTOR.full_name not in WALLET_EVENT_MESSAGE_TYPES:
        return None
    event: wallet_pb2.WalletEvent = message.event  # type: ignore[attr-defined]
    kind = events.KIND_BY_ENUM.get(event.type)
    if kind is None or kind.message_type != message.DESCRIPTOR.full_name:
        raise PoisonMessageError(f"{message.DESCRIPTOR.full_name} carries event type {event.type}")
    if not event.event_id or not event.wallet_id or not event.HasField("occurred_at"):
        raise PoisonMessageError("wallet event without event_id, wallet_id or occurred_at")
    if event.amount < 0:
        raise PoisonMessageError(f"wallet event with negative amount {event.amount}")
    return event


def delta_of(event: wallet_pb2.WalletEvent) -> StatsDelta:
    kind = events.KIND_BY_ENUM[event.type]
    occurred_at = event.occurred_at.ToDatetime(tzinfo=UTC)
    return delta_for(event.wallet_id, kind.name, event.amount, occurred_at)


class AnalyticsProjection:
    """``wallet_platform.messaging.consumer.Projection`` for the analytics queue."""

    consumer_name = repository.CONSUMER_NAME
    queue = events.ANALYTICS_QUEUE

    def __init__(self, clock: Clock = utcnow) -> None:
        self._clock = clock

    async def apply(self, conn: AsyncConnection, delivery: Delivery, message: Message) -> None:
        event = wallet_event_of(message)
        if event is None:
            return
        await repository.add_deltas(conn, [delta_of(event)], self._clock())

    def prepare(self, message: Message) -> wallet_pb2.WalletEvent | None:
        """At delivery: the log entry (validated), None for other messages."""
        return wallet_event_of(message)

    async def apply_prepared(
        self, conn: AsyncConnection, work: Sequence[wallet_pb2.WalletEvent]
    ) -> None:
        """A batch's new events in one transaction: one upsert row per wallet."""
        deltas = [delta_of(event) for event in work]
        await repository.add_deltas(conn, merge_by_wallet(deltas), self._clock())

    async def record_and_apply(
        self,
        conn: AsyncConnection,
        consumer: str,
        message_ids: Sequence[str],
        work: Sequence[wallet_pb2.WalletEvent | None],
    ) -> set[str]:
        """PostgreSQL: the batch's inbox rows and its per-wallet upsert in ONE statement."""
        return await repository.record_and_add_events(
            conn, consumer, message_ids, work, self._clock()
        )

    async def apply_many(
        self, conn: AsyncConnection, items: Sequence[tuple[Delivery, Message]]
    ) -> None:
        """Several messages in one transaction (no inbox): one upsert per wallet."""
        events_ = [e for e in (wallet_event_of(m) for _, m in items) if e is not None]
        await self.apply_prepared(conn, events_)
