"""All SQL of the in-process bus: its queues are rows of ``bus_messages``.

SQLAlchemy Core on both backends: the in-process bus is the embedded default (SQLite)
and a fallback without RabbitMQ, not a hot path, so one portable style serves it. A
row is one message in one queue: ``ready`` (waiting, or leased to a consumer until
``locked_until_ms``), deleted when acked, ``dead`` with the reason once dead-lettered.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from sqlalchemy import delete, func, insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from wallet_platform import backoff
from wallet_platform.clock import utcnow
from wallet_platform.messaging.bus import OutgoingMessage
from wallet_platform.storage.schema import bus_messages as bm

READY = "ready"
DEAD = "dead"


def now_ms() -> int:
    return int(time.time() * 1000)


def retry_delay_ms(attempt: int) -> int:
    """Back-off before delivery ``attempt + 1`` (:data:`wallet_platform.backoff.REDELIVERY`)."""
    return int(backoff.REDELIVERY.delay(attempt) * 1000)


# --- publishing and consuming -------------------------------------------------------------


async def enqueue(conn: AsyncConnection, routed: Sequence[tuple[str, OutgoingMessage]]) -> None:
    """One ready row per (queue, message)."""
    created_at, available = utcnow(), now_ms()
    rows = [
        {
            "queue": queue,
            "message_id": message.message_id,
            "routing_key": message.routing_key,
            "message_type": message.message_type,
            "body": message.body,
            "state": READY,
            "attempt": 0,
            "available_at_ms": available,
            "locked_until_ms": None,
            "created_at": created_at,
            "traceparent": message.traceparent,
        }
        for queue, message in routed
    ]
    await conn.execute(insert(bm), rows)


def _ready_filter(queue: str, now: int) -> list[Any]:
    return [
        bm.c.queue == queue,
        bm.c.state == READY,
        bm.c.available_at_ms <= now,
        or_(bm.c.locked_until_ms.is_(None), bm.c.locked_until_ms < now),
    ]


async def has_ready(conn: AsyncConnection, queue: str, now: int) -> bool:
    """A cheap read first, so an idle poll never takes SQLite's write lock."""
    found = await conn.execute(select(bm.c.id).where(*_ready_filter(queue, now)).limit(1))
    return found.first() is not None


async def claim_rows(conn: AsyncConnection, queue: str, limit: int, lease_ms: int) -> list[Any]:
    """Lease up to ``limit`` ready rows (``attempt`` + 1), oldest first."""
    now = now_ms()
    candidates = (
        select(bm.c.id)
        .where(*_ready_filter(queue, now))
        .order_by(bm.c.id)
        .limit(limit)
        .with_for_update(skip_locked=True)  # PostgreSQL; SQLite serialises writers
    )
    statement = (
        update(bm)
        .where(bm.c.id.in_(candidates.scalar_subquery()))
        .values(attempt=bm.c.attempt + 1, locked_until_ms=now + lease_ms)
        .returning(
            bm.c.id,
            bm.c.message_id,
            bm.c.routing_key,
            bm.c.message_type,
            bm.c.body,
            bm.c.attempt,
            bm.c.traceparent,
        )
    )
    rows = list((await conn.execute(statement)).all())
    rows.sort(key=lambda row: row.id)
    return rows


async def settle_rows(
    conn: AsyncConnection,
    acked: list[int],
    retried: list[tuple[int, int, str]],
    dead: list[tuple[int, str]],
) -> None:
    """Delete the acked rows; retry (id, attempt, reason) after a back-off; kill
    (id, reason)."""
    if acked:
        await conn.execute(delete(bm).where(bm.c.id.in_(acked)))
    now = now_ms()
    for row_id, attempt, reason in retried:
        await conn.execute(
            update(bm)
            .where(bm.c.id == row_id)
            .values(
                available_at_ms=now + retry_delay_ms(attempt),
                locked_until_ms=None,
                last_error=reason,
            )
        )
    dead_at = utcnow()
    for row_id, reason in dead:
        await conn.execute(
            update(bm)
            .where(bm.c.id == row_id)
            .values(state=DEAD, locked_until_ms=None, last_error=reason, dead_at=dead_at)
        )


# --- dead letters (walletctl dlq) -----------------------------------------------------------


async def dead_rows(
    conn: AsyncConnection,
    queues: Sequence[str],
    *,
    limit: int,
    message_ids: Sequence[str] | None = None,
) -> list[Any]:
    """Dead rows of ``queues``, oldest first (``queue``, ``message_id``, ``routing_key``,
    ``message_type``, ``body``, ``last_error``, ``attempt``, ``dead_at``)."""
    statement = (
        select(bm).where(bm.c.state == DEAD, bm.c.queue.in_(queues)).order_by(bm.c.id).limit(limit)
    )
    if message_ids is not None:
        statement = statement.where(bm.c.message_id.in_(list(message_ids)))
    return list((await conn.execute(statement)).all())


def _dead_filter(queue: str, wanted: set[str] | None) -> list[Any]:
    conditions = [bm.c.state == DEAD, bm.c.queue == queue]
    if wanted is not None:
        conditions.append(bm.c.message_id.in_(sorted(wanted)))
    return conditions


async def take_dead(
    conn: AsyncConnection, queue: str, wanted: set[str] | None, *, replay: bool
) -> list[str]:
    """Dead rows of ``queue`` (all, or the ``wanted`` message ids): put back as first
    attempts (``replay``) or deleted; returns their message ids."""
    statement: Any
    if replay:
        statement = (
            update(bm)
            .where(*_dead_filter(queue, wanted))
            .values(
                state=READY,
                attempt=0,
                available_at_ms=now_ms(),
                locked_until_ms=None,
                last_error=None,
                dead_at=None,
            )
        )
    else:
        statement = delete(bm).where(*_dead_filter(queue, wanted))
    result = await conn.execute(statement.returning(bm.c.message_id))
    return [str(message_id) for message_id in result.scalars()]


async def count_dead(conn: AsyncConnection) -> dict[str, int]:
    """Dead rows per queue (queues without any are absent)."""
    rows = await conn.execute(
        select(bm.c.queue, func.count()).where(bm.c.state == DEAD).group_by(bm.c.queue)
    )
    return {row[0]: int(row[1]) for row in rows}
