"""Checks of what follows the log: the outbox, the consumers' inboxes, the projection.

Every event has its outbox row (written in the event's transaction) and the relay
publishes it soon; each consumer applies every published event exactly once (its
inbox row) or still has it queued or dead-lettered; and the analytics projection
equals SQL aggregates over the events it applied (:func:`counter_sums` derives them
from the one table of event effects).
"""

from __future__ import annotations

from datetime import timedelta

from wallet_checks.context import (
    ERROR,
    WARNING,
    CheckContext,
    CheckResult,
    Row,
    Value,
    as_datetime,
    as_int,
)
from wallet_checks.effects_sql import counter_sums
from wallet_events.effects import COUNTERS
from wallet_platform.topology import ANALYTICS_QUEUE, FRAUD_QUEUE

# inbox consumer name -> its queue (analytics_worker.store, fraud_worker.projection).
CONSUMER_QUEUES = {"analytics": ANALYTICS_QUEUE, "fraud": FRAUD_QUEUE}


def _outbox_mine(ctx: CheckContext) -> str:
    """SQL true for the outbox rows of the selected wallets' events (all rows if all)."""
    if ctx.options.wallet_prefix is None:
        return "1 = 1"
    return f"message_id IN (SELECT event_id FROM wallet_events WHERE {ctx.scope('wallet_id')})"


def outbox_row_per_event(ctx: CheckContext) -> CheckResult:
    r = ctx.result("outbox_row_per_event")
    return ctx.add_rows(
        r,
        f"""
        SELECT e.event_id, e.wallet_id, e.sequence, e.type
        FROM wallet_events e
        LEFT JOIN outbox o ON o.message_id = e.event_id
        WHERE o.id IS NULL AND {ctx.scope("e.wallet_id")}
        ORDER BY e.occurred_at
        """,
    )


def outbox_drained(ctx: CheckContext) -> CheckResult:
    r = ctx.result("outbox_drained")
    cutoff = ctx.now - timedelta(seconds=ctx.options.outbox_max_age_seconds)
    mine = _outbox_mine(ctx)
    stats = ctx.rows(
        "SELECT COUNT(*) AS pending, MIN(created_at) AS oldest FROM outbox "
        f"WHERE status <> 'published' AND {mine}"
    )[0]
    oldest = as_datetime(stats["oldest"])
    r.facts["pending"] = as_int(stats["pending"])
    if oldest is not None:
        r.facts["oldest_pending_age_seconds"] = round((ctx.now - oldest).total_seconds(), 1)
    r.note = f"drift = unpublished for more than {ctx.options.outbox_max_age_seconds:g}s"
    for row in ctx.rows(
        f"""
        SELECT id, message_id, routing_key, status, attempts, last_error, created_at
        FROM outbox
        WHERE status <> 'published' AND created_at < :cutoff AND {mine}
        ORDER BY id
        """,
        cutoff=cutoff,
    ):
        row["created_at"] = as_datetime(row["created_at"])
        r.add(row, ctx.limit)
    return r


def projection_matches_log(ctx: CheckContext) -> CheckResult:
    """wallet_stats = SQL aggregates over the events the analytics worker applied.

    Comparing against the applied events (its inbox rows) rather than the whole log
    makes the check exact while the worker is still catching up; what it has not
    applied yet is reported by ``projection_lag``.
    """
    r = ctx.result("projection_matches_log")
    consumer = ctx.options.analytics_consumer
    r.note = f"compared with the events applied by inbox consumer {consumer!r}"
    expected_sql = f"""
        SELECT e.wallet_id, {counter_sums("e")}
        FROM wallet_events e
        JOIN inbox i ON i.message_id = e.event_id AND i.consumer = :consumer
        WHERE {ctx.scope("e.wallet_id")}
        GROUP BY e.wallet_id
    """
    expected = {row["wallet_id"]: row for row in ctx.rows(expected_sql, consumer=consumer)}
    actual = {
        row["wallet_id"]: row
        for row in ctx.rows(f"SELECT * FROM wallet_stats WHERE {ctx.scope('wallet_id')}")
    }
    r.facts["wallets_in_projection"] = len(actual)
    for wallet_id in sorted(set(expected) | set(actual), key=str):
        want: Row = expected.get(wallet_id) or {}
        have: Row = actual.get(wallet_id) or {}
        diffs: dict[str, Value] = {}
        for counter in COUNTERS:
            w, h = as_int(want.get(counter)), as_int(have.get(counter))
            if w != h:
                diffs[counter] = f"{h} (log: {w})"
        if diffs:
            r.add({"wallet_id": wallet_id, **diffs}, ctx.limit)
    return r


def projection_lag(ctx: CheckContext) -> CheckResult:
    r = ctx.result("projection_lag", WARNING)
    consumer = ctx.options.analytics_consumer
    cutoff = ctx.now - timedelta(seconds=ctx.options.projection_lag_seconds)
    r.note = (
        f"events older than {ctx.options.projection_lag_seconds:g}s not applied by "
        f"{consumer!r} (still queued, or in its DLQ: see walletctl dlq list)"
    )
    unapplied = f"""
        FROM wallet_events e
        LEFT JOIN inbox i ON i.message_id = e.event_id AND i.consumer = :consumer
        WHERE i.message_id IS NULL AND {ctx.scope("e.wallet_id")}
    """
    r.facts["not_applied"] = ctx.scalar("SELECT COUNT(*) " + unapplied, consumer=consumer)
    for row in ctx.rows(
        "SELECT e.event_id, e.wallet_id, e.sequence, e.type, e.occurred_at "
        + unapplied
        + " AND e.occurred_at < :cutoff ORDER BY e.occurred_at",
        consumer=consumer,
        cutoff=cutoff,
    ):
        row["occurred_at"] = as_datetime(row["occurred_at"])
        r.add(row, ctx.limit)
    return r


def events_delivered(ctx: CheckContext) -> CheckResult:
    """Every published event is, for each consumer, applied or still in its queue.

    DESIGN invariant 7: events in the log = events applied + events queued or in the
    DLQ. On the in-process bus the queues are rows of ``bus_messages``, so each event
    is accounted exactly; on RabbitMQ the count of unapplied events is compared with
    the broker's queue and DLQ depths (a warning: unacked deliveries are invisible).
    """
    bus = ctx.options.bus
    r = ctx.result("events_delivered", WARNING if bus == "rabbitmq" else ERROR)
    if bus is None:
        r.note = "bus unknown: not checked"
        return r
    cutoff = ctx.now - timedelta(seconds=ctx.options.delivery_max_age_seconds)
    r.note = (
        f"published events older than {ctx.options.delivery_max_age_seconds:g}s, "
        f"per consumer ({bus} bus)"
    )
    unapplied_sql = f"""
        FROM wallet_events e
        JOIN outbox o ON o.message_id = e.event_id AND o.status = 'published'
        WHERE e.occurred_at < :cutoff AND {ctx.scope("e.wallet_id")}
          AND NOT EXISTS (SELECT 1 FROM inbox i
                          WHERE i.consumer = :consumer AND i.message_id = e.event_id)
    """
    for consumer, queue in CONSUMER_QUEUES.items():
        params: dict[str, Value] = {"consumer": consumer, "queue": queue, "cutoff": cutoff}
        unapplied = as_int(ctx.scalar("SELECT COUNT(*) " + unapplied_sql, **params))
        if bus == "inprocess":
            states = ctx.count_by(
                "SELECT state AS key, COUNT(*) AS n FROM bus_messages WHERE queue = :queue "
                "GROUP BY state",
                queue=queue,
            )
            r.facts[consumer] = {
                "not_applied": unapplied,
                "queued": states.get("ready", 0),
                "dead_letters": states.get("dead", 0),
            }
            for row in ctx.rows(
                "SELECT e.event_id, e.wallet_id, e.sequence, e.type "
                + unapplied_sql
                + " AND NOT EXISTS (SELECT 1 FROM bus_messages b "
                "WHERE b.queue = :queue AND b.message_id = e.event_id) "
                "ORDER BY e.occurred_at",
                **params,
            ):
                r.add({"consumer": consumer, **row}, ctx.limit)
            continue
        depth = (ctx.options.broker_depths or {}).get(queue)
        r.facts[consumer] = {"not_applied": unapplied, "broker_queue_and_dlq": depth}
        if depth is not None and unapplied > depth:
            r.add(
                {
                    "consumer": consumer,
                    "not_applied": unapplied,
                    "in_queue_and_dlq": depth,
                    "unaccounted": unapplied - depth,
                },
                ctx.limit,
            )
    return r
