"""``idempotency_records`` (SQLAlchemy Core), for both backends.

Every function takes the unit of work's connection, so the claim, the change and the
stored outcome commit or roll back together. Concurrency rests on the table's primary
key (scope, request_id): :func:`claim` inserts the key first (``ON CONFLICT DO
NOTHING``), so a concurrent duplicate blocks on it until the first transaction ends
and then reads its stored outcome.

Keys live in a scope: ``wallet`` for the clients' request_ids, ``step`` for the
transfer steps' derived keys (:mod:`wallet_service.holds`), so the two never collide.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from wallet_platform.storage.schema import idempotency_records
from wallet_service.domain import WriteKey

PENDING = "PENDING"  # a claimed key whose outcome is written later in the same transaction


@dataclass(frozen=True)
class IdempotencyRecord:
    """A stored outcome: a response (``status_code`` "OK") or an error."""

    fingerprint: str
    status_code: str  # "OK" or a canonical error code name
    error_reason: str | None
    error_message: str | None
    response: bytes | None


def dialect_insert(conn: AsyncConnection, table: Any) -> Any:
    """INSERT with the dialect's ``ON CONFLICT`` support (PostgreSQL or SQLite)."""
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    return dialect.insert(table)


async def claim(conn: AsyncConnection, key: WriteKey, now: datetime) -> bool:
    """Insert the idempotency key; False when it already exists (a replay or a reuse).

    On PostgreSQL a concurrent transaction holding the same key makes this wait until
    it ends: afterwards the key is either committed (we read its outcome) or gone
    (we claim it). That is what makes 20 concurrent copies apply once.
    """
    statement = (
        dialect_insert(conn, idempotency_records)
        .values(
            scope=key.scope,
            request_id=key.request_id,
            fingerprint=key.fingerprint,
            status_code=PENDING,
            created_at=now,
        )
        .on_conflict_do_nothing()
        .returning(idempotency_records.c.request_id)
    )
    # RETURNING, not rowcount: drivers disagree on rowcount for ON CONFLICT DO NOTHING.
    return (await conn.execute(statement)).first() is not None


async def get_record(conn: AsyncConnection, key: WriteKey) -> IdempotencyRecord | None:
    row = (
        await conn.execute(
            select(
                idempotency_records.c.fingerprint,
                idempotency_records.c.status_code,
                idempotency_records.c.error_reason,
                idempotency_records.c.error_message,
                idempotency_records.c.response,
            ).where(
                idempotency_records.c.scope == key.scope,
                idempotency_records.c.request_id == key.request_id,
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
    key: WriteKey,
    *,
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
            idempotency_records.c.scope == key.scope,
            idempotency_records.c.request_id == key.request_id,
        )
        .values(**values)
    )
