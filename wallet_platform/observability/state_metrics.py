"""State gauges: what the database and the broker say about the platform right now.

A :class:`StateCollector` refreshes them every interval from the sources registered
in its process: each part of the platform registers its own
(:func:`register_state_source`): the saga orchestrator its sagas by state
(:class:`SagaSource`, with its own states), the outbox relay the outbox backlog
(:class:`OutboxSource`), each consumer its lag, queue and DLQ depth
(:class:`ConsumerSource`). A process reports only the parts it runs (all of them in
``wallet-stack``); dashboards take ``max`` where several report the same gauge.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol

from prometheus_client import Counter, Gauge
from sqlalchemy import and_, column, exists, func, not_, select, table
from sqlalchemy.ext.asyncio import AsyncConnection

from wallet_platform.clock import Clock, ensure_utc, utcnow
from wallet_platform.storage.database import Database
from wallet_platform.storage.schema import inbox, outbox, transfers, wallet_events

if TYPE_CHECKING:
    from wallet_platform.runtime import Runtime

log = logging.getLogger(__name__)

SAGAS = Gauge("wallet_sagas", "Transfers (sagas) by state", ["state"])
SAGA_OLDEST_UNFINISHED = Gauge(
    "wallet_saga_oldest_unfinished_age_seconds",
    "Age of the oldest transfer not yet in a terminal state (0 when none)",
)
OUTBOX_PENDING = Gauge("wallet_outbox_pending", "Outbox rows not yet published")
OUTBOX_OLDEST_PENDING = Gauge(
    "wallet_outbox_oldest_pending_age_seconds",
    "Age of the oldest unpublished outbox row (0 when none)",
)
CONSUMER_QUEUE_MESSAGES = Gauge(
    "wallet_consumer_queue_messages",
    "Messages ready in a consumer's queue (not yet delivered), as the broker reports",
    ["consumer", "queue"],
)
# The log-based lag looks at recent events only: an anti-join over the whole log costs
# ~0.4 s per million events on PostgreSQL, every interval, in every worker. A consumer
# stalled for longer still shows (its queue depth grows, this stays > 0).
LAG_WINDOW = timedelta(hours=1)
CONSUMER_UNAPPLIED_EVENTS = Gauge(
    "wallet_consumer_unapplied_events",
    "Events of the last hour in the wallet log with no inbox row for this consumer "
    "(in flight, queued, or dead-lettered)",
    ["consumer"],
)
CONSUMER_OLDEST_UNAPPLIED = Gauge(
    "wallet_consumer_oldest_unapplied_age_seconds",
    "Age of the oldest event of the last hour this consumer has not applied (0 = none)",
    ["consumer"],
)
DLQ_MESSAGES = Gauge("wallet_dlq_messages", "Messages in a dead-letter queue", ["queue"])
AUDIT_PENDING = Gauge("wallet_audit_pending_rows", "Audit rows waiting to be written")
COLLECT_ERRORS = Counter(
    "wallet_metrics_collect_errors",
    "Failed state collections (the gauges keep their last value)",
    ["source"],
)
LAST_COLLECT = Gauge(
    "wallet_metrics_last_collect_timestamp_seconds",
    "Unix time of the last successful state collection",
    ["source"],
)

# The embedded bus's queue table (``wallet_platform.messaging.inprocess``), named loosely so
# this module does not depend on the bus's schema beyond two columns.
_bus = table("bus_messages", column("queue"), column("state"))
# runtime.extras key: the sources this process registered.
STATE_SOURCES = "metrics_state_sources"


def _age(now: datetime, then: datetime | None) -> float:
    if then is None:
        return 0.0
    return max(0.0, (now - ensure_utc(then)).total_seconds())


class StateSource(Protocol):
    """One part of the platform's state, read from the database into its gauges."""

    @property
    def name(self) -> str: ...

    async def collect(self, conn: AsyncConnection, now: datetime) -> None: ...


def register_state_source(runtime: Runtime, source: StateSource) -> None:
    """Report ``source`` from this process (called by the component that owns it)."""
    state_sources(runtime).append(source)


def state_sources(runtime: Runtime) -> list[StateSource]:
    """The sources registered in this process so far (the list itself, shared)."""
    sources: list[StateSource] = runtime.extras.setdefault(STATE_SOURCES, [])
    return sources


@dataclass(frozen=True)
class SagaSource:
    """Sagas by state (every state reported, 0 when none) and the oldest unfinished."""

    states: Sequence[str]
    terminal: Collection[str]
    name: str = "sagas"

    async def collect(self, conn: AsyncConnection, now: datetime) -> None:
        rows = (
            await conn.execute(select(transfers.c.state, func.count()).group_by(transfers.c.state))
        ).all()
        counts = dict.fromkeys(self.states, 0)
        counts.update({str(state): int(count) for state, count in rows})
        for state, count in counts.items():
            SAGAS.labels(state).set(count)
        oldest = (
            await conn.execute(
                select(func.min(transfers.c.created_at)).where(
                    transfers.c.state.not_in(list(self.terminal))
                )
            )
        ).scalar()
        SAGA_OLDEST_UNFINISHED.set(_age(now, oldest))


@dataclass(frozen=True)
class OutboxSource:
    """The outbox backlog: pending rows and the age of the oldest."""

    name: str = "outbox"

    async def collect(self, conn: AsyncConnection, now: datetime) -> None:
        count, oldest = (
            await conn.execute(
                select(func.count(), func.min(outbox.c.created_at)).where(
                    outbox.c.status == "pending"
                )
            )
        ).one()
        OUTBOX_PENDING.set(int(count))
        OUTBOX_OLDEST_PENDING.set(_age(now, oldest))


@dataclass(frozen=True)
class ConsumerSource:
    """One consumer: recent events it has not applied (its inbox), its queue and DLQ."""

    consumer: str  # its inbox name
    queue: str
    dlq: str

    @property
    def name(self) -> str:
        return self.consumer

    async def collect(self, conn: AsyncConnection, now: datetime) -> None:
        applied = exists().where(
            and_(
                inbox.c.consumer == self.consumer,
                inbox.c.message_id == wallet_events.c.event_id,
            )
        )
        unapplied, oldest_unapplied = (
            await conn.execute(
                select(func.count(), func.min(wallet_events.c.occurred_at))
                .select_from(wallet_events)
                .where(wallet_events.c.occurred_at >= now - LAG_WINDOW, not_(applied))
            )
        ).one()
        CONSUMER_UNAPPLIED_EVENTS.labels(self.consumer).set(int(unapplied or 0))
        CONSUMER_OLDEST_UNAPPLIED.labels(self.consumer).set(_age(now, oldest_unapplied))


class StateCollector:
    """Refreshes the state gauges of ``sources`` every ``interval`` seconds from a
    background task (``sources`` may still grow until :meth:`start`)."""

    name = "metrics-collector"

    def __init__(
        self,
        db: Database,
        sources: Sequence[StateSource],
        *,
        amqp_url: str = "",
        interval: float = 15.0,
        clock: Clock = utcnow,
        audit_pending: Callable[[], int] | None = None,
    ) -> None:
        self.db = db
        self.sources = sources
        self.amqp_url = amqp_url
        self.interval = interval
        self.clock = clock
        self.audit_pending = audit_pending
        self._task: asyncio.Task[None] | None = None
        self._connection: Any = None

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="metrics-collector")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._connection is not None:
            with contextlib.suppress(Exception):
                await self._connection.close()
            self._connection = None

    async def _run(self) -> None:
        while True:
            await self.collect_once()
            await asyncio.sleep(self.interval)

    async def collect_once(self) -> None:
        """One refresh of every gauge this process reports (errors are counted, not raised)."""
        if self.audit_pending is not None:
            AUDIT_PENDING.set(self.audit_pending())
        try:
            now = self.clock()
            async with self.db.read() as conn:
                for source in self.sources:
                    await source.collect(conn, now)
            LAST_COLLECT.labels("database").set(time.time())
        except asyncio.CancelledError:
            raise
        except Exception as error:
            COLLECT_ERRORS.labels("database").inc()
            log.warning("metrics: database collection failed: %s", error)
        consumers = [s for s in self.sources if isinstance(s, ConsumerSource)]
        if not consumers:
            return
        try:
            await self._collect_queues(consumers)
            LAST_COLLECT.labels("broker").set(time.time())
        except asyncio.CancelledError:
            raise
        except Exception as error:
            COLLECT_ERRORS.labels("broker").inc()
            log.warning("metrics: broker collection failed: %s", error)

    async def _collect_queues(self, consumers: list[ConsumerSource]) -> None:
        """Ready messages and dead letters per consumer: RabbitMQ, or the embedded bus."""
        if self.amqp_url:
            depths = await self._rabbit_depths([q for c in consumers for q in (c.queue, c.dlq)])
        else:
            depths = await self._embedded_bus_depths(consumers)
        for consumer in consumers:
            if consumer.queue in depths:
                CONSUMER_QUEUE_MESSAGES.labels(consumer.consumer, consumer.queue).set(
                    depths[consumer.queue]
                )
            if consumer.dlq in depths:
                DLQ_MESSAGES.labels(consumer.dlq).set(depths[consumer.dlq])

    async def _rabbit_depths(self, queues: list[str]) -> dict[str, int]:
        """Passive declares (``message_count`` = ready messages); absent queues are skipped."""
        import aio_pika

        if self._connection is None or self._connection.is_closed:
            self._connection = await aio_pika.connect_robust(self.amqp_url, timeout=5)
        depths: dict[str, int] = {}
        for queue in queues:
            # A failed passive declare closes its channel: one channel per queue.
            channel = await self._connection.channel()
            try:
                declared = await channel.declare_queue(queue, passive=True)
                depths[queue] = int(declared.declaration_result.message_count or 0)
            except aio_pika.exceptions.ChannelClosed:
                continue  # not declared yet (no consumer has started): nothing to report
            finally:
                with contextlib.suppress(Exception):
                    await channel.close()
        return depths

    async def _embedded_bus_depths(self, consumers: list[ConsumerSource]) -> dict[str, int]:
        """The embedded bus keeps its queues in ``bus_messages`` (dead letters in place)."""
        async with self.db.read() as conn:
            rows = (
                await conn.execute(
                    select(_bus.c.queue, _bus.c.state, func.count()).group_by(
                        _bus.c.queue, _bus.c.state
                    )
                )
            ).all()
        depths: dict[str, int] = {}
        for consumer in consumers:
            depths[consumer.queue] = 0
            depths[consumer.dlq] = 0
        for queue, state, count in rows:
            if state == "dead":
                depths[f"{queue}.dlq"] = depths.get(f"{queue}.dlq", 0) + int(count)
            else:
                depths[str(queue)] = depths.get(str(queue), 0) + int(count)
        return depths
