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
from wallet_platform.clock import ensure_utc
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


def _insert(conn: AsyncConnection) -> Any:
    return postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert


# Hot-path statements are built once (per dialect) and executed with parameters, which
# spares SQLAlchemy's per-call construction work (about half the cost of a small step).
_LOCK = sa.text("SELECT pg_advisory_xact_lock(hashtextextended(:key, 0))")
_ADD_WITHDRAWAL: dict[str, Any] = {}
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


async def lock_wallet(conn: AsyncConnection, wallet_id: str) -> None:
    """Serialise fraud evaluation of one wallet until the transaction ends."""
    if conn.dialect.name == "postgresql":
        await conn.execute(_LOCK, {"key": ADVISORY_LOCK_PREFIX + wallet_id})


# Several wallets' locks in one round trip, in the order given (the caller sorts).
_LOCK_MANY = sa.text(
    "SELECT pg_advisory_xact_lock(hashtextextended(key, 0)) "
    "FROM unnest(CAST(:keys AS text[])) WITH ORDINALITY AS k(key, n) ORDER BY n"
)


async def lock_wallets(conn: AsyncConnection, wallet_ids: list[str]) -> None:
    """:func:`lock_wallet` for each of ``wallet_ids`` (sorted by the caller)."""
    if conn.dialect.name != "postgresql" or not wallet_ids:
        return
    if len(wallet_ids) == 1:
        await lock_wallet(conn, wallet_ids[0])
        return
    keys = [ADVISORY_LOCK_PREFIX + wallet_id for wallet_id in wallet_ids]
    await conn.execute(_LOCK_MANY, {"keys": keys})


async def add_withdrawal(conn: AsyncConnection, withdrawal: Withdrawal) -> bool:
    """Remember a withdrawal; False when it was already known (a redelivery)."""
    statement = _ADD_WITHDRAWAL.get(conn.dialect.name)
    if statement is None:
        statement = (
            _insert(conn)(fraud_withdrawals)
            .on_conflict_do_nothing(index_elements=["event_id"])
            .returning(fraud_withdrawals.c.event_id)
        )
        _ADD_WITHDRAWAL[conn.dialect.name] = statement
    values = {
        "event_id": withdrawal.event_id,
        "wallet_id": withdrawal.wallet_id,
        "amount": withdrawal.amount,
        "occurred_at": withdrawal.occurred_at,
    }
    # RETURNING, not rowcount: SQLAlchemy 2.1 on psycopg reports -1 for Core inserts.
    return (await conn.execute(statement, values)).first() is not None


async def nearby(
    conn: AsyncConnection, wallet_id: str, around: Lookaround
) -> tuple[list[Withdrawal], list[Burst]]:
    """The wallet's withdrawals and RAPID bursts in the ranges the rules asked for."""
    rows = await conn.execute(
        _NEARBY,
        {
            "wallet_id": wallet_id,
            "w_from": around.withdrawals_from,
            "w_to": around.withdrawals_to,
            "b_from": around.bursts_from,
            "b_to": around.bursts_to,
        },
    )
    withdrawals: list[Withdrawal] = []
    bursts: list[Burst] = []
    for row in rows:
        if row.occurred_at is None:
            continue
        at = ensure_utc(row.occurred_at)
        if row.kind == "w":
            withdrawals.append(Withdrawal(at, row.id, wallet_id, int(row.amount)))
        else:
            bursts.append(Burst(at))
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


# PostgreSQL: remember a withdrawal AND read its neighbourhood in one round trip. The
# SELECTs see the statement's snapshot, i.e. everything judged before in this
# transaction but not the new row itself, which the rules add on their own; the "i"
# row says whether the withdrawal was new.
_PG_ADD_AND_NEARBY = sa.text(
    "WITH ins AS ("
    "INSERT INTO fraud_withdrawals (event_id, wallet_id, amount, occurred_at) "
    "VALUES (:event_id, :wallet_id, :amount, :occurred_at) "
    "ON CONFLICT (event_id) DO NOTHING RETURNING event_id) "
    "SELECT 'i' AS kind, event_id AS id, CAST(0 AS bigint) AS amount, "
    "CAST(NULL AS timestamptz) AS occurred_at FROM ins "
    "UNION ALL "
    "SELECT 'w', event_id, amount, occurred_at FROM fraud_withdrawals "
    "WHERE wallet_id = :wallet_id AND occurred_at > :w_from AND occurred_at < :w_to "
    "UNION ALL "
    "SELECT 'b', alert_id, 0, window_start FROM fraud_alerts "
    "WHERE wallet_id = :wallet_id AND rule = :rapid "
    "AND window_start > :b_from AND window_start < :b_to"
)


async def add_withdrawal_and_nearby(
    conn: AsyncConnection, withdrawal: Withdrawal, around: Lookaround
) -> tuple[bool, list[Withdrawal], list[Burst]]:
    """:func:`add_withdrawal` then :func:`nearby`, as one statement on PostgreSQL:
    (was it new, the wallet's withdrawals and RAPID bursts in the ranges asked for)."""
    if conn.dialect.name != "postgresql":
        if not await add_withdrawal(conn, withdrawal):
            return False, [], []
        return (True, *await nearby(conn, withdrawal.wallet_id, around))
    rows = await conn.execute(
        _PG_ADD_AND_NEARBY,
        {
            "event_id": withdrawal.event_id,
            "wallet_id": withdrawal.wallet_id,
            "amount": withdrawal.amount,
            "occurred_at": withdrawal.occurred_at,
            "w_from": around.withdrawals_from,
            "w_to": around.withdrawals_to,
            "b_from": around.bursts_from,
            "b_to": around.bursts_to,
            "rapid": RAPID_WITHDRAWALS,
        },
    )
    new = False
    withdrawals: list[Withdrawal] = []
    bursts: list[Burst] = []
    for row in rows:
        if row.kind == "i":
            new = True
        elif row.occurred_at is not None:
            at = ensure_utc(row.occurred_at)
            if row.kind == "w":
                withdrawals.append(Withdrawal(at, row.id, withdrawal.wallet_id, int(row.amount)))
            else:
                bursts.append(Burst(at))
    return new, withdrawals, bursts


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
