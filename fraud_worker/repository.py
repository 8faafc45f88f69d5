"""SQL for the fraud worker: recent withdrawals, alerts, their outbox rows, pages.

Per wallet, evaluation must be serial: two withdrawals of one wallet judged in
parallel transactions would each miss the other and could both raise an alert. On
PostgreSQL a transaction-scoped advisory lock per wallet serialises them (other wallets
run in parallel); SQLite's ``BEGIN IMMEDIATE`` already serialises every writer.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from fraud_worker.rules import RAPID_WITHDRAWALS, AlertDraft, Burst, Lookaround, Withdrawal
from wallet_common.clock import ensure_utc
from wallet_common.schema import fraud_alerts, fraud_withdrawals, outbox

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


def _insert(conn: AsyncConnection) -> Any:
    return postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert


async def lock_wallet(conn: AsyncConnection, wallet_id: str) -> None:
    """Serialise fraud evaluation of one wallet until the transaction ends."""
    if conn.dialect.name == "postgresql":
        await conn.execute(
            sa.text("SELECT pg_advisory_xact_lock(hashtextextended(:key, 0))"),
            {"key": ADVISORY_LOCK_PREFIX + wallet_id},
        )


async def add_withdrawal(conn: AsyncConnection, withdrawal: Withdrawal) -> bool:
    """Remember a withdrawal; False when it was already known (a redelivery)."""
    statement = (
        _insert(conn)(fraud_withdrawals)
        .values(
            event_id=withdrawal.event_id,
            wallet_id=withdrawal.wallet_id,
            amount=withdrawal.amount,
            occurred_at=withdrawal.occurred_at,
        )
        .on_conflict_do_nothing(index_elements=["event_id"])
        .returning(fraud_withdrawals.c.event_id)
    )
    # RETURNING, not rowcount: SQLAlchemy 2.1 on psycopg reports -1 for Core inserts.
    return (await conn.execute(statement)).first() is not None


async def nearby(
    conn: AsyncConnection, wallet_id: str, around: Lookaround
) -> tuple[list[Withdrawal], list[Burst]]:
    """The wallet's withdrawals and RAPID bursts in the ranges the rules asked for."""
    w = fraud_withdrawals.c
    rows = await conn.execute(
        sa.select(w.event_id, w.wallet_id, w.amount, w.occurred_at).where(
            w.wallet_id == wallet_id,
            w.occurred_at > around.withdrawals_from,
            w.occurred_at < around.withdrawals_to,
        )
    )
    withdrawals = [
        Withdrawal(
            occurred_at=ensure_utc(row.occurred_at),
            event_id=row.event_id,
            wallet_id=row.wallet_id,
            amount=int(row.amount),
        )
        for row in rows
    ]
    a = fraud_alerts.c
    starts = await conn.execute(
        sa.select(a.window_start).where(
            a.wallet_id == wallet_id,
            a.rule == RAPID_WITHDRAWALS,
            a.window_start > around.bursts_from,
            a.window_start < around.bursts_to,
        )
    )
    bursts = [Burst(ensure_utc(start)) for (start,) in starts if start is not None]
    return withdrawals, bursts


async def add_alert(
    conn: AsyncConnection, draft: AlertDraft, created_at: datetime, outbox_row: dict[str, Any]
) -> bool:
    """Store the alert and its outbox row together; False if it already existed."""
    statement = (
        _insert(conn)(fraud_alerts)
        .values(
            alert_id=draft.alert_id,
            wallet_id=draft.wallet_id,
            rule=draft.rule,
            event_ids=json.dumps(list(draft.event_ids)),
            detail=draft.detail,
            window_start=draft.window_start,
            window_end=draft.window_end,
            created_at=created_at,
        )
        .on_conflict_do_nothing(index_elements=["alert_id"])
        .returning(fraud_alerts.c.alert_id)
    )
    if (await conn.execute(statement)).first() is None:
        return False
    await conn.execute(
        _insert(conn)(outbox)
        .values(**outbox_row)
        .on_conflict_do_nothing(index_elements=["message_id"])
    )
    return True


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


async def list_alerts(
    conn: AsyncConnection,
    *,
    wallet_id: str | None,
    limit: int,
    after: tuple[datetime, str] | None,
) -> list[StoredAlert]:
    """Newest first by (created_at, alert_id); ``after`` = the last row of the previous page."""
    a = fraud_alerts.c
    query = sa.select(fraud_alerts)
    if wallet_id:
        query = query.where(a.wallet_id == wallet_id)
    if after is not None:
        created_at, alert_id = after
        query = query.where(
            sa.or_(
                a.created_at < created_at,
                sa.and_(a.created_at == created_at, a.alert_id < alert_id),
            )
        )
    query = query.order_by(a.created_at.desc(), a.alert_id.desc()).limit(limit)
    return [_alert_from_row(row) for row in await conn.execute(query)]
