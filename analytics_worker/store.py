"""All SQL of the analytics worker: the ``wallet_stats`` projection, for both backends.

Writes go through a unit of work (:meth:`AnalyticsStore.unit_of_work`) that the
consumer runner owns; reads, the rebuild and the drift check are single operations
of their own. Two SQL styles, one per job:

- **PostgreSQL hot path** (the consumer): raw psycopg in pipeline mode. A batch's
  inbox rows and its stats change are ONE statement (the inbox's statement with this
  change attached, :func:`~wallet_platform.messaging.consumer.inbox.pg_record_inbox_then`)
  whose answer is read after the commit: one round trip per batch.
- **SQLite and the portable path** (the consumer on SQLite; reads, rebuild and drift
  check on both): SQLAlchemy Core, so one definition serves both backends and the
  rebuild's aggregates are generated from the effects table.

Every write ADDS to the counters (``INSERT ... ON CONFLICT (wallet_id) DO UPDATE SET
x = wallet_stats.x + excluded.x``, never read-modify-write), so concurrent consumers
cannot lose updates; ``last_activity_at`` keeps the later of the stored and the new
event time, which makes the result independent of arrival order.

The rebuild and the drift check aggregate ``wallet_events`` with ``CASE`` expressions
generated from :data:`wallet_events.effects.EFFECTS`, restricted to the events this
consumer has applied (its ``inbox`` rows): an event still queued is counted when it is
consumed, never twice, and a consumer that lags is not reported as drift.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from analytics_worker.domain import (
    COUNT_FIELDS,
    COUNTER_FIELDS,
    TOTAL_FIELDS,
    StatsDelta,
    WalletStats,
)
from wallet_events.effects import EFFECTS
from wallet_platform.clock import ensure_utc
from wallet_platform.messaging.consumer.inbox import (
    CoreInboxUnitOfWork,
    PipelineInboxUnitOfWork,
    Recorded,
    pg_inbox_parameters,
    pg_record_inbox_then,
)
from wallet_platform.storage.database import Database
from wallet_platform.storage.schema import inbox, wallet_events, wallet_stats

CONSUMER_NAME = "analytics"  # a key of wallet_platform.topology.CONSUMER_QUEUES

_STATS_COLUMNS = (*COUNTER_FIELDS, "last_activity_at")


# --- PostgreSQL: the consumer's hot path (psycopg, pipeline mode) -----------------------


def _pg_add_new_deltas() -> str:
    """The stats change of a batch, attached to its inbox statement: the deltas of
    the new messages (joined with ``new``), summed per wallet, added by one upsert row
    per wallet in wallet order (concurrent batches lock rows in the same order)."""
    columns = ", ".join(COUNTER_FIELDS)
    arrays = ", ".join(f"CAST(%({name})s AS bigint[])" for name in COUNTER_FIELDS)
    sums = ", ".join(f"sum(d.{name})" for name in COUNTER_FIELDS)
    updates = ", ".join(
        f"{name} = wallet_stats.{name} + EXCLUDED.{name}" for name in COUNTER_FIELDS
    )
    return (
        f"INSERT INTO wallet_stats (wallet_id, {columns}, last_activity_at, updated_at) "
        f"SELECT d.wallet_id, {sums}, max(d.last_activity_at), %(updated_at)s "
        "FROM unnest(CAST(%(delta_ids)s AS varchar[]), CAST(%(wallet_ids)s AS varchar[]), "
        f"{arrays}, CAST(%(last_activity_at)s AS timestamptz[])) "
        f"AS d(id, wallet_id, {columns}, last_activity_at) "
        "JOIN new ON new.message_id = d.id "
        "GROUP BY d.wallet_id ORDER BY d.wallet_id "
        f"ON CONFLICT (wallet_id) DO UPDATE SET {updates}, "
        # GREATEST skips NULL: a row without activity yet takes the new time.
        "last_activity_at = GREATEST(wallet_stats.last_activity_at, EXCLUDED.last_activity_at), "
        "updated_at = EXCLUDED.updated_at"
    )


_PG_RECORD_AND_ADD = pg_record_inbox_then(_pg_add_new_deltas())


class PipelineStatsUnitOfWork(PipelineInboxUnitOfWork):
    """The analytics consumer's transaction on PostgreSQL."""

    async def record_and_add(
        self,
        consumer: str,
        message_ids: Sequence[str],
        deltas: Sequence[StatsDelta | None],
        now: datetime,
    ) -> Recorded:
        """Inbox rows for the distinct ``message_ids`` and, for the new ones among
        them, ``deltas[i]`` added to its wallet's row (None: a message that changes no
        stats); ``now`` is the rows' ``updated_at``. One statement, whose answer
        travels with the commit. (A repeated id would count twice: the runner passes
        distinct ids.)"""
        pairs = [(mid, d) for mid, d in zip(message_ids, deltas, strict=True) if d is not None]
        parameters: dict[str, Any] = {
            **pg_inbox_parameters(consumer, message_ids),
            "updated_at": now,
            "delta_ids": [mid for mid, _ in pairs],
            "wallet_ids": [d.wallet_id for _, d in pairs],
            "last_activity_at": [d.last_activity_at for _, d in pairs],
        }
        for name in COUNTER_FIELDS:
            parameters[name] = [getattr(d, name) for _, d in pairs]
        cursor = self.conn.cursor()
        await cursor.execute(_PG_RECORD_AND_ADD, parameters)
        return Recorded(cursor=cursor)


# --- SQLite and the portable path (SQLAlchemy Core) ------------------------------------

_UPSERTS: dict[str, Any] = {}


def _upsert(dialect: str) -> Any:
    """The add-to-counters upsert, built once per dialect (executing a prebuilt
    statement skips SQLAlchemy's per-call construction work)."""
    statement = _UPSERTS.get(dialect)
    if statement is None:
        insert = (postgresql.insert if dialect == "postgresql" else sqlite.insert)(wallet_stats)
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
        _UPSERTS[dialect] = statement
    return statement


class CoreStatsUnitOfWork(CoreInboxUnitOfWork):
    """The analytics consumer's transaction on SQLite (the same statements, one by
    one)."""

    async def record_and_add(
        self,
        consumer: str,
        message_ids: Sequence[str],
        deltas: Sequence[StatsDelta | None],
        now: datetime,
    ) -> Recorded:
        recorded = await self.record_inbox(consumer, message_ids)
        new = await recorded.new_ids()
        rows = [
            {
                "wallet_id": delta.wallet_id,
                **{name: getattr(delta, name) for name in COUNTER_FIELDS},
                "last_activity_at": delta.last_activity_at,
                "updated_at": now,
            }
            for message_id, delta in zip(message_ids, deltas, strict=True)
            if delta is not None and message_id in new
        ]
        if rows:
            await self.conn.execute(_upsert(self.conn.dialect.name), rows)
        return recorded


StatsUnitOfWork = PipelineStatsUnitOfWork | CoreStatsUnitOfWork


def _stats_from_row(row: Any) -> WalletStats:
    values = {name: int(getattr(row, name) or 0) for name in COUNTER_FIELDS}
    last = row.last_activity_at
    return WalletStats(
        wallet_id=row.wallet_id,
        last_activity_at=ensure_utc(last) if last is not None else None,
        **values,
    )


def _aggregates(consumer: str = CONSUMER_NAME) -> sa.Select[Any]:
    """Per wallet: the stats that the applied events of the log add up to."""
    event_type = wallet_events.c.type
    amount = wallet_events.c.amount

    def summed(name: str, value: Any) -> Any:
        whens = [
            (event_type == t, e.stats_sign * value)
            for t, e in EFFECTS.items()
            if name in (e.total, e.count)
        ]
        if not whens:
            return sa.literal(0)
        return sa.func.coalesce(sa.func.sum(sa.case(*whens, else_=0)), 0)

    applied = wallet_events.join(
        inbox,
        sa.and_(inbox.c.consumer == consumer, inbox.c.message_id == wallet_events.c.event_id),
    )
    return (
        sa.select(
            wallet_events.c.wallet_id.label("wallet_id"),
            *(summed(name, amount).label(name) for name in TOTAL_FIELDS),
            *(summed(name, 1).label(name) for name in COUNT_FIELDS),
            sa.func.count().label("events_applied"),
            sa.func.max(wallet_events.c.occurred_at).label("last_activity_at"),
        )
        .select_from(applied)
        .group_by(wallet_events.c.wallet_id)
    )


class AnalyticsStore:
    """The analytics worker's persistence on one database."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def unit_of_work(self) -> StatsUnitOfWork:
        """The consumer's transaction: psycopg pipeline on PostgreSQL, Core on SQLite."""
        if self.db.is_postgres:
            return PipelineStatsUnitOfWork(self.db)
        return CoreStatsUnitOfWork(self.db)

    async def get_stats(self, wallet_id: str) -> WalletStats | None:
        columns = [wallet_stats.c.wallet_id, *(wallet_stats.c[name] for name in _STATS_COLUMNS)]
        query = sa.select(*columns).where(wallet_stats.c.wallet_id == wallet_id)
        async with self.db.read() as conn:
            row = (await conn.execute(query)).first()
        return None if row is None else _stats_from_row(row)

    async def rebuild(self, now: datetime) -> int:
        """Replace every row by the aggregates over the applied log; returns the count.

        On PostgreSQL the table is locked first (EXCLUSIVE: reads go on, consumers
        wait), so a consumer transaction either committed before (its event is in the
        inbox and counted here) or applies its delta after the rebuild commits (counted
        once there). SQLite's BEGIN IMMEDIATE already serialises every writer.
        Consumers that wait longer than their lock_timeout retry (it is transient).
        """
        async with self.db.transaction() as conn:
            if self.db.is_postgres:
                # A long log may take longer than the pool's statement_timeout.
                await conn.exec_driver_sql("SET LOCAL statement_timeout = '10min'")
                await conn.exec_driver_sql("LOCK TABLE wallet_stats IN EXCLUSIVE MODE")
            await conn.execute(sa.delete(wallet_stats))
            source = _aggregates().subquery()
            select = sa.select(
                source.c.wallet_id,
                *(source.c[name] for name in _STATS_COLUMNS),
                sa.literal(now, type_=wallet_stats.c.updated_at.type).label("updated_at"),
            )
            # RETURNING, not rowcount: SQLAlchemy 2.1 on psycopg reports -1 for inserts.
            insert = sa.insert(wallet_stats).from_select(
                ["wallet_id", *_STATS_COLUMNS, "updated_at"], select
            )
            result = await conn.execute(insert.returning(wallet_stats.c.wallet_id))
            return len(result.all())

    async def projected_and_expected(
        self,
    ) -> tuple[dict[str, WalletStats], dict[str, WalletStats]]:
        """Both sides of the drift check, read by ONE statement (one snapshot).

        The UNION takes its column types from the first SELECT, so the aggregated
        times are parsed like stored ones on SQLite too.
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
        async with self.db.read() as conn:
            rows = (await conn.execute(sa.union_all(projected, expected))).all()
        sides: dict[str, dict[str, WalletStats]] = {"p": {}, "e": {}}
        for row in rows:
            sides[row.side][row.wallet_id] = _stats_from_row(row)
        return sides["p"], sides["e"]

    async def count_unapplied(self, consumer: str = CONSUMER_NAME) -> int:
        """Events in the log this consumer has not applied (queued, in flight, or in
        its DLQ)."""
        applied = sa.exists().where(
            sa.and_(inbox.c.consumer == consumer, inbox.c.message_id == wallet_events.c.event_id)
        )
        query = sa.select(sa.func.count()).select_from(wallet_events).where(~applied)
        async with self.db.read() as conn:
            return int((await conn.execute(query)).scalar_one())
