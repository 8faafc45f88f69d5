"""SQL for the ``wallet_stats`` projection: upserts, reads, rebuild and drift check.

Writes are ``INSERT ... ON CONFLICT (wallet_id) DO UPDATE`` that ADD to the counters
(never read-compute-write in Python), so concurrent consumers cannot lose updates and
a batch of events becomes one statement. ``last_activity_at`` keeps the later of the
stored and the new event time, which makes the result independent of arrival order.

The rebuild and the drift check aggregate ``wallet_events`` with ``CASE`` expressions
generated from :data:`analytics_worker.domain.EFFECTS`, restricted to the events this
consumer has applied (its ``inbox`` rows): an event still queued is counted when it is
consumed, never twice, and a consumer that lags is not reported as drift.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from analytics_worker.domain import (
    COUNT_FIELDS,
    COUNTER_FIELDS,
    EFFECTS,
    TOTAL_FIELDS,
    StatsDelta,
    WalletStats,
)
from wallet.v1 import wallet_pb2
from wallet_platform.clock import ensure_utc, utcnow
from wallet_platform.messaging import events
from wallet_platform.messaging.consumer import PG_INSERT_INBOX_MANY
from wallet_platform.storage.schema import inbox, wallet_events, wallet_stats

CONSUMER_NAME = "analytics"

_STATS_COLUMNS = (*COUNTER_FIELDS, "last_activity_at")


def _insert(conn: AsyncConnection) -> Any:
    """The dialect's INSERT (both PostgreSQL and SQLite speak ON CONFLICT)."""
    return postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert


_UPSERTS: dict[str, Any] = {}


def _upsert(conn: AsyncConnection) -> Any:
    """The add-to-counters upsert, built once per dialect (the hot path of the worker:
    executing a prebuilt statement skips SQLAlchemy's per-call construction work)."""
    statement = _UPSERTS.get(conn.dialect.name)
    if statement is None:
        insert = _insert(conn)(wallet_stats)
        new = insert.excluded
        current = wallet_stats.c
        updates: dict[str, Any] = {name: current[name] + new[name] for name in COUNTER_FIELDS}
        updates["last_activity_at"] = sa.case(
            (current.last_activity_at.is_(None), new.last_activity_at),
            (new.last_activity_at > current.last_activity_at, new.last_activity_at),
            else_=current.last_activity_at,
        )
        updates["updated_at"] = new.updated_at
        statement = insert.on_conflict_do_update(index_elements=["wallet_id"], set_=updates)
        _UPSERTS[conn.dialect.name] = statement
    return statement


async def add_deltas(conn: AsyncConnection, deltas: Sequence[StatsDelta], now: datetime) -> None:
    """Add each delta to its wallet's row (creating it). At most one delta per wallet."""
    if not deltas:
        return
    rows = [
        {
            "wallet_id": delta.wallet_id,
            **{name: getattr(delta, name) for name in COUNTER_FIELDS},
            "last_activity_at": delta.last_activity_at,
            "updated_at": now,
        }
        for delta in deltas
    ]
    await conn.execute(_upsert(conn), rows[0] if len(rows) == 1 else rows)


def _pg_batch_statement() -> Any:
    """PostgreSQL: a batch's inbox rows and its stats change as ONE statement.

    The first CTE writes the inbox rows and returns those that were new; only the
    wallet events among them (joined by message id) are summed per wallet with
    ``CASE`` expressions generated from :data:`EFFECTS` (as the rebuild does) and
    added by one upsert row per wallet, in wallet order. The statement text never
    changes, so psycopg prepares it once; each batch binds six arrays. A repeated
    message id would be counted twice: the caller passes distinct ids.
    """

    def summed(field: str, value: str) -> str:
        whens = " ".join(
            f"WHEN '{name}' THEN {value.format(sign=effect.sign)}"
            for name, effect in EFFECTS.items()
            if field in (effect.total, effect.count)
        )
        return f"coalesce(sum(CASE e.type {whens} ELSE 0 END), 0)"

    sums = [summed(name, "{sign} * e.amount") for name in TOTAL_FIELDS]
    sums += [summed(name, "{sign}") for name in COUNT_FIELDS]
    sums.append("count(*)")  # events_applied: every wallet log entry
    columns = ", ".join(COUNTER_FIELDS)
    updates = ", ".join(
        f"{name} = wallet_stats.{name} + EXCLUDED.{name}" for name in COUNTER_FIELDS
    )
    return sa.text(
        f"WITH ins AS ({PG_INSERT_INBOX_MANY}), "
        "up AS ("
        f"INSERT INTO wallet_stats (wallet_id, {columns}, last_activity_at, updated_at) "
        f"SELECT e.wallet_id, {', '.join(sums)}, max(e.occurred_at), :updated_at "
        "FROM unnest(CAST(:event_message_ids AS varchar[]), CAST(:wallet_ids AS varchar[]), "
        "CAST(:types AS varchar[]), CAST(:amounts AS bigint[]), "
        "CAST(:occurred_at AS timestamptz[])) AS e(id, wallet_id, type, amount, occurred_at) "
        "JOIN ins ON ins.message_id = e.id "
        "GROUP BY e.wallet_id ORDER BY e.wallet_id "
        f"ON CONFLICT (wallet_id) DO UPDATE SET {updates}, "
        # GREATEST skips NULL: a row without activity yet takes the new time.
        "last_activity_at = GREATEST(wallet_stats.last_activity_at, EXCLUDED.last_activity_at), "
        "updated_at = EXCLUDED.updated_at"
        ") "
        "SELECT message_id FROM ins"
    )


_PG_BATCH = _pg_batch_statement()


async def record_and_add_events(
    conn: AsyncConnection,
    consumer: str,
    message_ids: Sequence[str],
    work: Sequence[wallet_pb2.WalletEvent | None],
    now: datetime,
) -> set[str]:
    """Inbox rows for distinct ``message_ids`` and the stats of the wallet events among
    them (``work[i]`` is message i's event, None for other messages), in one
    PostgreSQL statement; returns the ids that were new (the others changed nothing)."""
    event_ids: list[str] = []
    wallet_ids: list[str] = []
    types: list[str] = []
    amounts: list[int] = []
    occurred: list[datetime] = []
    for message_id, event in zip(message_ids, work, strict=True):
        if event is None:
            continue
        event_ids.append(message_id)
        wallet_ids.append(event.wallet_id)
        types.append(events.KIND_BY_ENUM[event.type].name)
        amounts.append(event.amount)
        occurred.append(event.occurred_at.ToDatetime(tzinfo=UTC))
    result = await conn.execute(
        _PG_BATCH,
        {
            "consumer": consumer,
            "message_ids": list(message_ids),
            "processed_at": utcnow(),  # as record_inbox: the real time, for lag
            "updated_at": now,
            "event_message_ids": event_ids,
            "wallet_ids": wallet_ids,
            "types": types,
            "amounts": amounts,
            "occurred_at": occurred,
        },
    )
    return {row[0] for row in result}


def _stats_from_row(row: Any) -> WalletStats:
    values = {name: int(getattr(row, name) or 0) for name in COUNTER_FIELDS}
    last = row.last_activity_at
    return WalletStats(
        wallet_id=row.wallet_id,
        last_activity_at=ensure_utc(last) if last is not None else None,
        **values,
    )


async def get_stats(conn: AsyncConnection, wallet_id: str) -> WalletStats | None:
    columns = [wallet_stats.c.wallet_id, *(wallet_stats.c[name] for name in _STATS_COLUMNS)]
    row = (
        await conn.execute(sa.select(*columns).where(wallet_stats.c.wallet_id == wallet_id))
    ).first()
    return None if row is None else _stats_from_row(row)


def _aggregates(consumer: str = CONSUMER_NAME) -> sa.Select[Any]:
    """Per wallet: the stats that the applied events of the log add up to."""
    event_type = wallet_events.c.type
    amount = wallet_events.c.amount

    def total(name: str) -> Any:
        whens = [(event_type == t, e.sign * amount) for t, e in EFFECTS.items() if e.total == name]
        return sa.func.coalesce(sa.func.sum(sa.case(*whens, else_=0)), 0)

    def count(name: str) -> Any:
        whens = [(event_type == t, e.sign) for t, e in EFFECTS.items() if e.count == name]
        return sa.func.coalesce(sa.func.sum(sa.case(*whens, else_=0)), 0)

    applied = wallet_events.join(
        inbox,
        sa.and_(inbox.c.consumer == consumer, inbox.c.message_id == wallet_events.c.event_id),
    )
    return (
        sa.select(
            wallet_events.c.wallet_id.label("wallet_id"),
            *(total(name).label(name) for name in TOTAL_FIELDS),
            *(count(name).label(name) for name in COUNT_FIELDS),
            sa.func.count().label("events_applied"),
            sa.func.max(wallet_events.c.occurred_at).label("last_activity_at"),
        )
        .select_from(applied)
        .group_by(wallet_events.c.wallet_id)
    )


async def rebuild(conn: AsyncConnection, now: datetime) -> int:
    """Replace every row by the aggregates over the applied log; returns the row count.

    On PostgreSQL the table is locked first (EXCLUSIVE: reads go on, consumers wait),
    so a consumer transaction either committed before (its event is in the inbox and
    counted here) or applies its delta after the rebuild commits (counted once there).
    SQLite's BEGIN IMMEDIATE already serialises every writer. Consumers that wait
    longer than their lock_timeout retry (the runner treats it as transient).
    """
    if conn.dialect.name == "postgresql":
        # A long log may take longer than the pool's statement_timeout to aggregate.
        await conn.execute(sa.text("SET LOCAL statement_timeout = '10min'"))
        await conn.execute(sa.text("LOCK TABLE wallet_stats IN EXCLUSIVE MODE"))
    await conn.execute(sa.delete(wallet_stats))
    source = _aggregates().subquery()
    select = sa.select(
        source.c.wallet_id,
        *(source.c[name] for name in _STATS_COLUMNS),
        sa.literal(now, type_=wallet_stats.c.updated_at.type).label("updated_at"),
    )
    # RETURNING, not rowcount: SQLAlchemy 2.1 on psycopg reports -1 for Core inserts.
    insert = sa.insert(wallet_stats).from_select(
        ["wallet_id", *_STATS_COLUMNS, "updated_at"], select
    )
    result = await conn.execute(insert.returning(wallet_stats.c.wallet_id))
    return len(result.all())


async def projected_and_expected(
    conn: AsyncConnection,
) -> tuple[dict[str, WalletStats], dict[str, WalletStats]]:
    """Both sides of the drift check, read by ONE statement (one snapshot).

    The UNION takes its column types from the first SELECT, so the aggregated times
    are parsed like stored ones on SQLite too.
    """
    source = _aggregates().subquery()
    projected = sa.select(
        sa.literal("p").label("side"),
        wallet_stats.c.wallet_id,
        *(wallet_stats.c[name] for name in _STATS_COLUMNS),
    )
    expected = sa.select(
        sa.literal("e").label("side"),
        source.c.wallet_id,
        *(source.c[name] for name in _STATS_COLUMNS),
    )
    rows = (await conn.execute(sa.union_all(projected, expected))).all()
    sides: dict[str, dict[str, WalletStats]] = {"p": {}, "e": {}}
    for row in rows:
        sides[row.side][row.wallet_id] = _stats_from_row(row)
    return sides["p"], sides["e"]


async def count_unapplied_events(conn: AsyncConnection, consumer: str = CONSUMER_NAME) -> int:
    """Events in the log this consumer has not applied (queued, in flight, or in its DLQ)."""
    applied = sa.exists().where(
        sa.and_(inbox.c.consumer == consumer, inbox.c.message_id == wallet_events.c.event_id)
    )
    query = sa.select(sa.func.count()).select_from(wallet_events).where(~applied)
    return int((await conn.execute(query)).scalar_one())
