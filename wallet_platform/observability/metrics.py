"""Prometheus metrics: every server process exposes them on ``WALLET_METRICS_PORT``.

Four sources:

- the RPC series (:data:`RPC_HANDLED`, :data:`RPC_LATENCY`, :data:`RPC_IN_FLIGHT`), fed by
  ``wallet_platform.server.rpc_metrics`` for every call: the RED metrics of each server.
- :class:`StateCollector` periodically reads the platform's state from the database
  and the broker: sagas by state and the age of the oldest unfinished one, the outbox
  backlog and the age of its oldest pending row, per-consumer lag (ready messages in
  its queue; events in the log with no inbox row for it) and DLQ depth.
- the audit writer's backlog (``wallet_audit_pending_rows``);
- the resource limits, updated by the code that enforces them (``limit_metrics``).

Metric names live in :data:`METRIC_NAMES` (the deploy tests check the Grafana
dashboard against it). All metrics go to prometheus-client's default registry, so
several servers in one test process share them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from prometheus_client import (
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    start_http_server,
)
from sqlalchemy import and_, column, exists, func, not_, select, table

from wallet_platform import topology as event_names
from wallet_platform.clock import Clock, ensure_utc, utcnow
from wallet_platform.observability import limit_metrics
from wallet_platform.storage.database import Database
from wallet_platform.storage.schema import inbox, outbox, transfers, wallet_events

log = logging.getLogger(__name__)

LATENCY_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)

RPC_HANDLED = Counter(
    "wallet_grpc_server_handled",
    "RPCs completed by the server, by service, method and status code",
    ["grpc_service", "grpc_method", "grpc_code"],
)
RPC_LATENCY = Histogram(
    "wallet_grpc_server_handling_seconds",
    "Time from receiving an RPC to its status, by service, method and status code",
    ["grpc_service", "grpc_method", "grpc_code"],
    buckets=LATENCY_BUCKETS,
)
RPC_IN_FLIGHT = Gauge(
    "wallet_grpc_server_in_flight",
    "RPCs being served right now",
    ["grpc_service", "grpc_method"],
)
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

# Every metric family this module registers (as Prometheus exposes them).
METRIC_NAMES: frozenset[str] = (
    frozenset(
        {
            "wallet_grpc_server_handled_total",
            "wallet_grpc_server_handling_seconds_bucket",
            "wallet_grpc_server_handling_seconds_count",
            "wallet_grpc_server_handling_seconds_sum",
            "wallet_grpc_server_in_flight",
            "wallet_sagas",
            "wallet_saga_oldest_unfinished_age_seconds",
            "wallet_outbox_pending",
            "wallet_outbox_oldest_pending_age_seconds",
            "wallet_consumer_queue_messages",
            "wallet_consumer_unapplied_events",
            "wallet_consumer_oldest_unapplied_age_seconds",
            "wallet_dlq_messages",
            "wallet_audit_pending_rows",
            "wallet_metrics_collect_errors_total",
            "wallet_metrics_last_collect_timestamp_seconds",
        }
    )
    | limit_metrics.NAMES
)

SAGA_STATES = ("PENDING", "DEBITED", "COMPLETED", "FAILED", "COMPENSATING", "COMPENSATED")
TERMINAL_SAGA_STATES = ("COMPLETED", "FAILED", "COMPENSATED")
# The embedded bus's queue table (``wallet_platform.messaging.inprocess``), named loosely so
# this module does not depend on the bus's schema beyond two columns.
_bus = table("bus_messages", column("queue"), column("state"))
# consumer name (inbox.consumer) -> (its queue, its dead-letter queue)
CONSUMERS: dict[str, tuple[str, str]] = {
    name: (queue, event_names.QUEUES[queue]) for name, queue in event_names.CONSUMER_QUEUES.items()
}


def _age(now: datetime, then: Any) -> float:
    if then is None:
        return 0.0
    return max(0.0, (now - ensure_utc(then)).total_seconds())


def role_sources(role: str) -> set[str]:
    """Which state a process reports: its own part of the platform (all of it in a stack).

    Several processes reporting the same global gauge is harmless (dashboards take
    ``max``), but each query costs, so a worker does not count sagas.
    """
    lowered = role.lower()
    known = {
        "sagas": ("saga", "orchestrator", "transfer"),
        "outbox": ("wallet-service", "wallet_service", "walletservice", "wallet"),
        "analytics": ("analytics",),
        "fraud": ("fraud",),
    }
    chosen = {source for source, marks in known.items() if any(m in lowered for m in marks)}
    if lowered == "stack" or not chosen:
        return set(known)
    return chosen


class StateCollector:
    """Refreshes the state gauges every ``interval`` seconds from a background task."""

    name = "metrics-collector"

    def __init__(
        self,
        db: Database,
        *,
        role: str = "stack",
        amqp_url: str = "",
        interval: float = 15.0,
        clock: Clock = utcnow,
        audit_pending: Callable[[], int] | None = None,
    ) -> None:
        self.db = db
        self.sources = role_sources(role)
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
            await self._collect_database()
            LAST_COLLECT.labels("database").set(time.time())
        except asyncio.CancelledError:
            raise
        except Exception as error:
            COLLECT_ERRORS.labels("database").inc()
            log.warning("metrics: database collection failed: %s", error)
        consumers = [c for c in CONSUMERS if c in self.sources]
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

    async def _collect_database(self) -> None:
        now = self.clock()
        async with self.db.read() as conn:
            if "sagas" in self.sources:
                rows = (
                    await conn.execute(
                        select(transfers.c.state, func.count()).group_by(transfers.c.state)
                    )
                ).all()
                counts = {state: 0 for state in SAGA_STATES}
                counts.update({str(state): int(count) for state, count in rows})
                for state, count in counts.items():
                    SAGAS.labels(state).set(count)
                oldest = (
                    await conn.execute(
                        select(func.min(transfers.c.created_at)).where(
                            transfers.c.state.not_in(TERMINAL_SAGA_STATES)
                        )
                    )
                ).scalar()
                SAGA_OLDEST_UNFINISHED.set(_age(now, oldest))
            if "outbox" in self.sources:
                count, oldest = (
                    await conn.execute(
                        select(func.count(), func.min(outbox.c.created_at)).where(
                            outbox.c.status == "pending"
                        )
                    )
                ).one()
                OUTBOX_PENDING.set(int(count))
                OUTBOX_OLDEST_PENDING.set(_age(now, oldest))
            for consumer in CONSUMERS:
                if consumer not in self.sources:
                    continue
                applied = exists().where(
                    and_(
                        inbox.c.consumer == consumer,
                        inbox.c.message_id == wallet_events.c.event_id,
                    )
                )
                unapplied, oldest_unapplied = (
                    await conn.execute(
                        select(func.count(), func.min(wallet_events.c.occurred_at))
                        .select_from(wallet_events)
                        .where(
                            wallet_events.c.occurred_at >= now - LAG_WINDOW,
                            not_(applied),
                        )
                    )
                ).one()
                CONSUMER_UNAPPLIED_EVENTS.labels(consumer).set(int(unapplied or 0))
                CONSUMER_OLDEST_UNAPPLIED.labels(consumer).set(_age(now, oldest_unapplied))

    async def _collect_queues(self, consumers: list[str]) -> None:
        """Ready messages and dead letters per consumer: RabbitMQ, or the embedded bus."""
        if self.amqp_url:
            depths = await self._rabbit_depths([q for c in consumers for q in CONSUMERS[c]])
        else:
            depths = await self._embedded_bus_depths()
        for consumer in consumers:
            queue, dlq = CONSUMERS[consumer]
            if queue in depths:
                CONSUMER_QUEUE_MESSAGES.labels(consumer, queue).set(depths[queue])
            if dlq in depths:
                DLQ_MESSAGES.labels(dlq).set(depths[dlq])

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

    async def _embedded_bus_depths(self) -> dict[str, int]:
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
        for queue, dlq in CONSUMERS.values():
            depths[queue] = 0
            depths[dlq] = 0
        for queue, state, count in rows:
            if state == "dead":
                depths[f"{queue}.dlq"] = depths.get(f"{queue}.dlq", 0) + int(count)
            else:
                depths[str(queue)] = depths.get(str(queue), 0) + int(count)
        return depths


class MetricsHttpServer:
    """prometheus-client's HTTP exporter on ``host:port``, stoppable.

    With ``--workers N`` every forked worker has its own counters, so each serves them
    on its own port: the first free one of ``port .. port + N - 1``.
    """

    name = "metrics-http"

    def __init__(self, host: str, port: int, *, ports_to_try: int = 1) -> None:
        self.host = host
        self.port = port
        self.ports_to_try = max(1, ports_to_try)
        self._server: Any = None
        self._thread: Any = None

    async def start(self) -> None:
        # The *_created series double the output and no dashboard uses them.
        disable_created_metrics()
        last_error: OSError | None = None
        for port in range(self.port, self.port + self.ports_to_try):
            try:
                self._server, self._thread = start_http_server(port, addr=self.host)
            except OSError as error:
                last_error = error
                continue
            self.port = int(self._server.server_address[1])
            log.info("metrics on http://%s:%s/metrics", self.host, self.port)
            return
        raise OSError(
            f"metrics port {self.port} (range of {self.ports_to_try}) unavailable: {last_error}"
        )

    async def stop(self) -> None:
        if self._server is not None:
            server = self._server
            self._server = None
            await asyncio.to_thread(server.shutdown)
            server.server_close()
