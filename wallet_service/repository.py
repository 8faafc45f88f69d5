"""SQL for the ledger tables (SQLAlchemy Core), for both backends.

Every function takes the caller's connection: the service decides the transaction
boundary, so the balance change, its event, its outbox row and the idempotency
record always commit or roll back together.

Concurrency rests on two database guarantees, never on Python-side checks:

* the primary key of ``idempotency_records``: :func:`claim` inserts the key first
  (``ON CONFLICT DO NOTHING``), so a concurrent duplicate blocks on it until the
  first transaction ends and then reads its stored outcome;
* the wallet row lock: :func:`get_wallet` with ``for_update`` (``SELECT ... FOR
  UPDATE`` on PostgreSQL; SQLite's ``BEGIN IMMEDIATE`` already serialises writers) or
  the conditional ``UPDATE`` of the PostgreSQL fast path
  (:mod:`wallet_service.pg_fast_path`).

Idempotency keys live in a scope: ``wallet`` for the clients' request_ids, ``step`` for
the transfer steps' derived keys (:mod:`wallet_service.holds`), so the two can never
collide.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg.rows import namedtuple_row
from sqlalchemy import and_, bindparam, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from wallet_platform.clock import ensure_utc
from wallet_platform.errors import UnavailableError
from wallet_platform.storage.database import Database
from wallet_platform.storage.schema import idempotency_records, outbox, wallet_events, wallets
from wallet_service import domain

CLIENT_SCOPE = "wallet"
PENDING = "PENDING"  # a claimed key whose outcome is written later in the same transaction


@dataclass(frozen=True)
class WriteKey:
    """What one idempotent write is bound to: its method, key, scope and fingerprint."""

    method: str
    request_id: str
    fingerprint: str
    scope: str = CLIENT_SCOPE


@dataclass(frozen=True)
class IdempotencyRecord:
    fingerprint: str
    status_code: str  # "OK" or a grpc.StatusCode name
    error_reason: str | None
    error_message: str | None
    response: bytes | None


def _insert(conn: AsyncConnection, table: Any) -> Any:
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    return dialect.insert(table)


def wallet_from_row(row: Any) -> domain.Wallet:
    return domain.Wallet(
        wallet_id=row.wallet_id,
        currency=row.currency,
        balance=row.balance,
        status=row.status,
        version=row.version,
        created_at=ensure_utc(row.created_at),
        updated_at=ensure_utc(row.updated_at),
    )


def event_from_row(row: Any) -> domain.WalletEvent:
    return domain.WalletEvent(
        event_id=row.event_id,
        wallet_id=row.wallet_id,
        sequence=row.sequence,
        type=row.type,
        amount=row.amount,
        balance_after=row.balance_after,
        currency=row.currency,
        transfer_id=row.transfer_id,
        request_id=row.request_id,
        audit_id=row.audit_id,
        occurred_at=ensure_utc(row.occurred_at),
    )


# --- idempotency ---------------------------------------------------------------------


async def claim(
    conn: AsyncConnection,
    request_id: str,
    fingerprint: str,
    now: datetime,
    scope: str = CLIENT_SCOPE,
) -> bool:
    """Insert the idempotency key; False when it already exists (a replay or a reuse).

    On PostgreSQL a concurrent transaction holding the same key makes this wait until
    it ends: afterwards the key is either committed (we read its outcome) or gone
    (we claim it). That is what makes 20 concurrent copies apply once.
    """
    statement = (
        _insert(conn, idempotency_records)
        .values(
            scope=scope,
            request_id=request_id,
            fingerprint=fingerprint,
            status_code=PENDING,
            created_at=now,
        )
        .on_conflict_do_nothing()
        .returning(idempotency_records.c.request_id)
    )
    # RETURNING, not rowcount: drivers disagree on rowcount for ON CONFLICT DO NOTHING.
    return (await conn.execute(statement)).first() is not None


async def get_record(
    conn: AsyncConnection, request_id: str, scope: str = CLIENT_SCOPE
) -> IdempotencyRecord | None:
    row = (
        await conn.execute(
            select(
                idempotency_records.c.fingerprint,
                idempotency_records.c.status_code,
                idempotency_records.c.error_reason,
                idempotency_records.c.error_message,
                idempotency_records.c.response,
            ).where(
                idempotency_records.c.scope == scope,
                idempotency_records.c.request_id == request_id,
            )
        )
    ).first()
    if row is None:
        return None
    return IdempotencyRecord(
        row.fingerprint, row.status_code, row.error_reason, row.error_message, row.response
    )


async def finish_record(
    conn: AsyncConnection,
    request_id: str,
    *,
    scope: str = CLIENT_SCOPE,
    response: bytes | None = None,
    error: tuple[str, str, str] | None = None,
) -> None:
    """Store the outcome of a claimed key: a response, or (code, reason, message)."""
    values: dict[str, Any]
    if error is None:
        values = {"status_code": "OK", "response": response}
    else:
        code, reason, message = error
        values = {"status_code": code, "error_reason": reason, "error_message": message}
    await conn.execute(
        update(idempotency_records)
        .where(
            idempotency_records.c.scope == scope,
            idempotency_records.c.request_id == request_id,
        )
        .values(**values)
    )


# --- wallets and events --------------------------------------------------------------


async def insert_wallet(conn: AsyncConnection, wallet: domain.Wallet) -> bool:
    """Insert a new wallet row; False when the id is taken."""
    statement = (
        _insert(conn, wallets)
        .values(
            wallet_id=wallet.wallet_id,
            currency=wallet.currency,
            balance=wallet.balance,
            status=wallet.status,
            version=wallet.version,
            created_at=wallet.created_at,
            updated_at=wallet.updated_at,
        )
        .on_conflict_do_nothing()
        .returning(wallets.c.wallet_id)
    )
    return (await conn.execute(statement)).first() is not None


# Built once: building the expression per call (and its cache key) cost more CPU than
# the read itself on the GetWallet path (docs/benchmarks.md).
_GET_WALLET = select(wallets).where(wallets.c.wallet_id == bindparam("wallet_id"))
_GET_WALLET_FOR_UPDATE = _GET_WALLET.with_for_update()


async def get_wallet(
    conn: AsyncConnection, wallet_id: str, *, for_update: bool = False
) -> domain.Wallet | None:
    """The wallet row; with ``for_update`` it stays locked until the transaction ends."""
    statement = _GET_WALLET_FOR_UPDATE if for_update else _GET_WALLET
    row = (await conn.execute(statement, {"wallet_id": wallet_id})).first()
    return None if row is None else wallet_from_row(row)


# The plain wallet read on PostgreSQL, on the driver's connection (pg_read_wallet).
_PG_GET_WALLET = """
SELECT wallet_id, currency, balance, status, version, created_at, updated_at
FROM wallets WHERE wallet_id = %(wallet_id)s
"""


async def pg_read_wallet(db: Database, wallet_id: str) -> domain.Wallet | None:
    """The wallet row now (PostgreSQL only): one autocommit statement on the driver's
    connection, the same row :func:`get_wallet` reads.

    Why: GetWallet is the orchestrator's currency check for every wallet it has not
    seen yet (about one call per transfer early in a run), and SQLAlchemy's execution
    and result machinery around this one-row read cost more CPU than the read itself
    (docs/benchmarks.md). A connection broken during the read is dropped from the pool
    and the call fails UNAVAILABLE, as on the SQLAlchemy path.
    """
    async with db.autocommit() as conn:
        raw = await conn.get_raw_connection()
        driver: Any = raw.driver_connection
        try:
            cursor = driver.cursor(row_factory=namedtuple_row)
            await cursor.execute(_PG_GET_WALLET, {"wallet_id": wallet_id})
            row = await cursor.fetchone()
        except psycopg.Error as error:
            if driver.broken or driver.closed:
                await conn.invalidate()
                raise UnavailableError(f"database unavailable: {type(error).__name__}") from error
            raise
    return None if row is None else wallet_from_row(row)


async def save_change(
    conn: AsyncConnection, wallet: domain.Wallet, event: domain.WalletEvent
) -> None:
    """Write the new state of a LOCKED wallet row and append its event."""
    await conn.execute(
        update(wallets)
        .where(wallets.c.wallet_id == wallet.wallet_id)
        .values(
            balance=wallet.balance,
            status=wallet.status,
            version=wallet.version,
            updated_at=wallet.updated_at,
        )
    )
    await insert_event(conn, event)


async def insert_event(conn: AsyncConnection, event: domain.WalletEvent) -> None:
    await conn.execute(
        wallet_events.insert().values(
            event_id=event.event_id,
            wallet_id=event.wallet_id,
            sequence=event.sequence,
            type=event.type,
            amount=event.amount,
            balance_after=event.balance_after,
            currency=event.currency,
            transfer_id=event.transfer_id,
            request_id=event.request_id,
            audit_id=event.audit_id,
            occurred_at=event.occurred_at,
        )
    )


async def insert_outbox(conn: AsyncConnection, row: dict[str, Any]) -> None:
    await conn.execute(outbox.insert().values(**row))


async def events_page(
    conn: AsyncConnection, wallet_id: str, before_sequence: int | None, limit: int
) -> list[domain.WalletEvent]:
    """Up to ``limit`` events, newest first, with sequence < ``before_sequence``."""
    statement = select(wallet_events).where(wallet_events.c.wallet_id == wallet_id)
    if before_sequence is not None:
        statement = statement.where(wallet_events.c.sequence < before_sequence)
    statement = statement.order_by(wallet_events.c.sequence.desc()).limit(limit)
    return [event_from_row(row) for row in await conn.execute(statement)]


async def event_at_sequence(
    conn: AsyncConnection, wallet_id: str, sequence: int
) -> domain.WalletEvent | None:
    row = (
        await conn.execute(
            select(wallet_events).where(
                wallet_events.c.wallet_id == wallet_id, wallet_events.c.sequence == sequence
            )
        )
    ).first()
    return None if row is None else event_from_row(row)


async def last_event_at_time(
    conn: AsyncConnection, wallet_id: str, moment: datetime
) -> domain.WalletEvent | None:
    """The newest event that had happened at ``moment`` (times are monotone per wallet)."""
    row = (
        await conn.execute(
            select(wallet_events)
            .where(
                wallet_events.c.wallet_id == wallet_id,
                wallet_events.c.occurred_at <= moment,
            )
            .order_by(wallet_events.c.sequence.desc())
            .limit(1)
        )
    ).first()
    return None if row is None else event_from_row(row)


async def status_at_sequence(conn: AsyncConnection, wallet_id: str, sequence: int) -> str:
    """ACTIVE or FROZEN as of ``sequence``, from the last status-changing event."""
    event_type = (
        await conn.execute(
            select(wallet_events.c.type)
            .where(
                wallet_events.c.wallet_id == wallet_id,
                wallet_events.c.sequence <= sequence,
                wallet_events.c.type.in_(domain.STATUS_EVENTS),
            )
            .order_by(wallet_events.c.sequence.desc())
            .limit(1)
        )
    ).scalar()
    return domain.status_after(event_type or domain.WALLET_CREATED, domain.ACTIVE)


async def wallet_exists(conn: AsyncConnection, wallet_id: str) -> bool:
    found = await conn.execute(
        select(func.count()).select_from(wallets).where(and_(wallets.c.wallet_id == wallet_id))
    )
    return bool(found.scalar())
