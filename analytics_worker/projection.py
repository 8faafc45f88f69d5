"""The analytics consumer's edge: wallet log entries -> ``wallet_stats``.

Translates each delivery into the domain's :class:`StatsDelta` (messages that are not
wallet log entries, such as saga milestones and fraud alerts, change nothing but
their inbox row), and hands a batch to the store's unit of work, which writes the
inbox rows and adds the new events' deltas together. The consumer runner
(``wallet_platform.messaging.consumer``) owns that unit of work and its commit.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC

from analytics_worker.domain import StatsDelta, delta_for
from analytics_worker.store import CONSUMER_NAME, AnalyticsStore, StatsUnitOfWork
from wallet_platform.clock import Clock, utcnow
from wallet_platform.messaging.bus import Delivery
from wallet_platform.messaging.consumer import Recorded, Translated
from wallet_platform.messaging.events import decode_delivery, trace_ids, wallet_event_of
from wallet_platform.topology import ANALYTICS_QUEUE


def delta_of(delivery: Delivery) -> Translated[StatsDelta]:
    """The stats change a delivery makes (None for messages that are not wallet log
    entries); undecodable or incomplete entries are poison."""
    message = decode_delivery(delivery)
    entry = wallet_event_of(message)
    if entry is None:
        return Translated(None)
    event_type, event = entry
    occurred_at = event.occurred_at.ToDatetime(tzinfo=UTC)
    delta = delta_for(event.wallet_id, event_type, event.amount, occurred_at)
    return Translated(delta, trace_ids(message))


class AnalyticsProjection:
    """``wallet_platform.messaging.consumer.Projection`` for the analytics queue."""

    consumer_name = CONSUMER_NAME
    queue = ANALYTICS_QUEUE

    def __init__(self, store: AnalyticsStore, clock: Clock = utcnow) -> None:
        self.store = store
        self._clock = clock

    def translate(self, delivery: Delivery) -> Translated[StatsDelta]:
        return delta_of(delivery)

    def unit_of_work(self) -> StatsUnitOfWork:
        return self.store.unit_of_work()

    async def record_and_apply(
        self,
        uow: StatsUnitOfWork,
        consumer: str,
        message_ids: Sequence[str],
        work: Sequence[StatsDelta | None],
    ) -> Recorded:
        """Inbox rows and the new events' deltas (one statement on PostgreSQL)."""
        return await uow.record_and_add(consumer, message_ids, work, self._clock())
