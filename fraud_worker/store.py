"""All SQL of the fraud worker, for both backends: recent withdrawals, alerts (each
with its outbox row), alert pages, pruning.

Writes go through a unit of work (:meth:`FraudStore.unit_of_work`) that the consumer
runner owns; the alert list and the pruning are operations of their own. Two styles:

- **PostgreSQL hot path** (the consumer): raw psycopg in pipeline mode. Remembering a
  withdrawal and reading its neighbourhood is one statement; an alert and its outbox
  row are one statement that needs no answer, so it travels with the next read or the
  commit.
- **SQLite and the portable path** (the consumer on SQLite; alert pages and pruning
  on both): SQLAlchemy Core.

Per wallet, evaluation must be serial: two withdrawals of one wallet judged in
parallel transactions would each miss the other and could both raise an alert. On
PostgreSQL a transaction-scoped advisory lock per wallet serialises them (other
wallets run in parallel); SQLite's ``BEGIN IMMEDIATE`` already serialises every writer.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from psycopg.rows import namedtuple_row
from sqlalchemy.dialects import postgresql, sqlite

from fraud_worker.rules import RAPID_WITHDRAWALS, AlertDraft, Burst, Lookaround, Withdrawal
from wallet_platform.clock import ensure_utc
from wallet_platform.messaging.consumer.inbox import (
    CoreInboxUnitOfWork,
    PipelineInboxUnitOfWork,
)
from wallet_platform.storage.database import Database
from wallet_platform.storage.schema import fraud_alerts, fraud_withdrawals, outbox

ADVISORY_LOCK_PREFIX = "wallet.fraud:"


@dataclass(frozen=True)
class StoredAlert:
    alert_id: str
    wallet_id: str
    rule: str
    event_ids: tuple[str, ...]
    detail: str
    window_start: datetime | None
    window_end: datetime | None
    created_at: datetime


@dataclass(frozen=True)
class Neighbourhood:
    """A withdrawal as remembered, and what the rules must see around it."""

    new: bool  # False: it was judged before (nothing else is read then)
    withdrawals: list[Withdrawal]
    bursts: list[Burst]


def _alert_values(draft: AlertDraft, created_at: datetime) -> dict[str, Any]:
    return {
        "alert_id": draft.alert_id,
        "wallet_id": draft.wallet_id,
        "rule": draft.rule,
        "event_ids": json.dumps(list(draft.event_ids)),
        "detail": draft.detail,
        "window_start": draft.window_start,
        "window_end": draft.window_end,
        "created_at": created_at,
    }


def _neighbourhood(new: bool, wallet_id: str, rows: Sequence[Any]) -> Neighbourhood:
    withdrawals: list[Withdrawal] = []
    bursts: list[Burst] = []
    for row in rows:
        if row.kind == "i" or row.occurred_at is None:
            continue
        at = ensure_utc(row.occurred_at)
        if row.kind == "w":
            withdrawals.append(Withdrawal(at, row.id, wallet_id, int(row.amount)))
        else:
            bursts.append(Burst(at))
    return Neighbourhood(new, withdrawals, bursts)


def _around(withdrawal: Withdrawal, around: Lookaround) -> dict[str, Any]:
    return {
        "wallet_id": withdrawal.wallet_id,
        "w_from": around.withdrawals_from,
        "w_to": around.withdrawals_to,
        "b_from": around.bursts_from,
        "b_to": around.bursts_to,
    }


# --- PostgreSQL: the consumer's hot path (psycopg, pipeline mode) -----------------------

# Several wallets' locks in one round trip, in the order given.
_PG_LOCK_WALLETS = (
    "SELECT pg_advisory_xact_lock(hashtextextended(key, 0)) "
    "FROM unnest(CAST(%(keys)s AS text[])) WITH ORDINALITY AS k(key, n) ORDER BY n"
)
# Remember a withdrawal AND read its neighbourhood. The SELECTs see the statement's
# snapshot, i.e. everything judged before in this transaction but not the new row
# itself, which the rules add on their own; the "i" row says whether it was new.
_PG_REMEMBER = (
    "WITH ins AS ("
    "INSERT INTO fraud_withdrawals (event_id, wallet_id, amount, occurred_at) "
    "VALUES (%(event_id)s, %(wallet_id)s, %(amount)s, %(occurred_at)s) "
    "ON CONFLICT (event_id) DO NOTHING RETURNING event_id) "
    "SELECT 'i' AS kind, event_id AS id, CAST(0 AS bigint) AS amount, "
    "CAST(NULL AS timestamptz) AS occurred_at FROM ins "
    "UNION ALL "
    "SELECT 'w', event_id, amount, occurred_at FROM fraud_withdrawals "
    "WHERE wallet_id = %(wallet_id)s AND occurred_at > %(w_from)s AND occurred_at < %(w_to)s "
    "AND EXISTS (SELECT 1 FROM ins) "
    "UNION ALL "
    "SELECT 'b', alert_id, 0, window_start FROM fraud_alerts "
    "WHERE wallet_id = %(wallet_id)s AND rule = %(rapid)s "
    "AND window_start > %(b_from)s AND window_start < %(b_to)s AND EXISTS (SELECT 1 FROM ins)"
)
# The alert and, only if it is new, its outbox row.
_PG_ADD_ALERT = (
    "WITH alert AS ("
    "INSERT INTO fraud_alerts (alert_id, wallet_id, rule, event_ids, detail, window_start, "
    "window_end, created_at) VALUES (%(alert_id)s, %(wallet_id)s, %(rule)s, %(event_ids)s, "
    "%(detail)s, %(window_start)s, %(window_end)s, %(created_at)s) "
    "ON CONFLICT (alert_id) DO NOTHING RETURNING alert_id) "
    "INSERT INTO outbox (message_id, routing_key, message_type, payload, status, attempts, "
    "created_at) SELECT %(message_id)s, %(routing_key)s, %(message_type)s, %(payload)s, "
    "%(status)s, %(attempts)s, %(outbox_created_at)s FROM alert "
    "ON CONFLICT (message_id) DO NOTHING"
)


class PipelineFraudUnitOfWork(PipelineInboxUnitOfWork):
    """The fraud consumer's transaction on PostgreSQL."""

    alerts_queued = False

    async def lock_wallets(self, wallet_ids: Sequence[str]) -> None:
        """Serialise fraud evaluation of these wallets (sorted by the caller) until the
        transaction ends."""
        if wallet_ids:
            keys = [ADVISORY_LOCK_PREFIX + wallet_id for wallet_id in wallet_ids]
            await self.conn.execute(_PG_LOCK_WALLETS, {"keys": keys})

    async def remember(self, withdrawal: Withdrawal, around: Lookaround) -> Neighbourhood:
        """Store the withdrawal; if it is new, also read the wallet's withdrawals and
        RAPID bursts in the ranges the rules asked for (without the new one)."""
        cursor = self.conn.cursor(row_factory=namedtuple_row)
        await cursor.execute(
            _PG_REMEMBER,
            {
                **_around(withdrawal, around),
                "event_id": withdrawal.event_id,
                "amount": withdrawal.amount,
                "occurred_at": withdrawal.occurred_at,
                "rapid": RAPID_WITHDRAWALS,
            },
        )
        rows = await cursor.fetchall()
        new = any(row.kind == "i" for row in rows)
        return _neighbourhood(new, withdrawal.wallet_id, rows)

    async def add_alert(
        self, draft: AlertDraft, created_at: datetime, outbox_row: dict[str, Any]
    ) -> None:
        """Store the alert and, if it is new, its outbox row (one statement)."""
        row = dict(outbox_row)
        parameters = {
            **_alert_values(draft, created_at),
            **row,
            "outbox_created_at": row["created_at"],
        }
        parameters["created_at"] = created_at
        await self.conn.execute(_PG_ADD_ALERT, parameters)
        self.alerts_queued = True

    async def commit(self) -> None:
        await super().commit()
        if self.alerts_queued:
            self.db.outbox_committed()  # the relay: outbox rows wait (no engine event here)


# --- SQLite and the portable path (SQLAlchemy Core) ------------------------------------

_W = fraud_withdrawals.c
_A = fraud_alerts.c
# The wallet's withdrawals and RAPID bursts near a time, in one round trip.
_NEARBY = sa.union_all(
    sa.select(
        sa.literal("w").label("kind"), _W.event_id.label("id"), _W.amount, _W.occurred_at
    ).where(
        _W.wallet_id == sa.bindparam("wallet_id"),
        _W.occurred_at > sa.bindparam("w_from", type_=_W.occurred_at.type),
        _W.occurred_at < sa.bindparam("w_to", type_=_W.occurred_at.type),
    ),
    sa.select(
        sa.literal("b").label("kind"),
        _A.alert_id.label("id"),
        sa.literal(0, type_=_W.amount.type).label("amount"),
        _A.window_start.label("occurred_at"),
    ).where(
        _A.wallet_id == sa.bindparam("wallet_id"),
        _A.rule == RAPID_WITHDRAWALS,
        _A.window_start > sa.bindparam("b_from", type_=_A.window_start.type),
        _A.window_start < sa.bindparam("b_to", type_=_A.window_start.type),
    ),
)


def _insert(dialect: str) -> Any:
    return postgresql.insert if dialect == "postgresql" else sqlite.insert


class CoreFraudUnitOfWork(CoreInboxUnitOfWork):
    """The fraud consumer's transaction on SQLite (the same steps, in Core)."""

    async def lock_wallets(self, wallet_ids: Sequence[str]) -> None:
        """SQLite serialises every writer already (the portable path takes no lock)."""

    async def remember(self, withdrawal: Withdrawal, around: Lookaround) -> Neighbourhood:
        insert = _insert(self.conn.dialect.name)
        statement = (
            insert(fraud_withdrawals)
            .values(
                event_id=withdrawal.event_id,
                wallet_id=withdrawal.wallet_id,
                amount=withdrawal.amount,
                occurred_at=withdrawal.occurred_at,
            )
            .on_conflict_do_nothing(index_elements=["event_id"])
            .returning(_W.event_id)
        )
        # RETURNING, not rowcount: SQLAlchemy 2.1 on psycopg reports -1 for inserts.
        if (await self.conn.execute(statement)).first() is None:
            return Neighbourhood(False, [], [])
        rows = (await self.conn.execute(_NEARBY, _around(withdrawal, around))).all()
        return _neighbourhood(True, withdrawal.wallet_id, rows)

    async def add_alert(
        self, draft: AlertDraft, created_at: datetime, outbox_row: dict[str, Any]
    ) -> None:
        insert = _insert(self.conn.dialect.name)
        statement = (
            insert(fraud_alerts)
            .values(**_alert_values(draft, created_at))
            .on_conflict_do_nothing(index_elements=["alert_id"])
            .returning(_A.alert_id)
        )
        if (await self.conn.execute(statement)).first() is None:
            return
        await self.conn.execute(
            insert(outbox)
            .values(**outbox_row)
            .on_conflict_do_nothing(index_elements=["message_id"])
        )


FraudUnitOfWork = PipelineFraudUnitOfWork | CoreFraudUnitOfWork


def _alert_from_row(row: Any) -> StoredAlert:
    return StoredAlert(
        alert_id=row.alert_id,
        wallet_id=row.wallet_id,
        rule=row.rule,
        event_ids=tuple(json.loads(row.event_ids)),
        detail=row.detail,
        window_start=ensure_utc(row.window_start) if row.window_start is not None else None,
        window_end=ensure_utc(row.window_end) if row.window_end is not None else None,
        created_at=ensure_utc(row.created_at),
    )


class FraudStore:
    """The fraud worker's persistence on one database."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def unit_of_work(self) -> FraudUnitOfWork:
        """The consumer's transaction: psycopg pipeline on PostgreSQL, Core on SQLite."""
        if self.db.is_postgres:
            return PipelineFraudUnitOfWork(self.db)
        return CoreFraudUnitOfWork(self.db)

    async def list_alerts(
        self, *, wallet_id: str | None, limit: int, after: tuple[datetime, str] | None
    ) -> list[StoredAlert]:
        """Newest first by (created_at, alert_id); ``after`` = the previous page's last."""
        query = sa.select(fraud_alerts)
        if wallet_id:
            query = query.where(_A.wallet_id == wallet_id)
        if after is not None:
            created_at, alert_id = after
            query = query.where(
                sa.or_(
                    _A.created_at < created_at,
                    sa.and_(_A.created_at == created_at, _A.alert_id < alert_id),
                )
            )
        query = query.order_by(_A.created_at.desc(), _A.alert_id.desc()).limit(limit)
        async with self.db.read() as conn:
            return [_alert_from_row(row) for row in await conn.execute(query)]

    async def prune_withdrawals(self, before: datetime, batch: int) -> int:
        """Delete withdrawals with an event time before ``before``, in small
        transactions (never a long lock); returns how many went."""
        total = 0
        while True:
            async with self.db.transaction() as conn:
                victims = (
                    sa.select(_W.event_id).where(_W.occurred_at < before).limit(batch)
                ).scalar_subquery()
                deleted = (
                    await conn.execute(
                        sa.delete(fraud_withdrawals)
                        .where(_W.event_id.in_(victims))
                        .returning(_W.event_id)
                    )
                ).all()
            total += len(deleted)
            if len(deleted) < batch:
                return total
