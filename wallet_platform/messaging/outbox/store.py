"""All SQL of the outbox relay: claim the oldest pending rows, mark them published or
failed. One style per backend:

- PostgreSQL, the relay's hot path: raw psycopg in pipeline mode
  (:class:`~wallet_platform.storage.unit_of_work.PipelineUnitOfWork`). The claim takes
  the rows ``FOR UPDATE SKIP LOCKED`` (several relays share the work) and holds them
  while the caller publishes; BEGIN + claim and mark + COMMIT are one round trip each.
- SQLite (one writer, one relay per database): SQLAlchemy Core. The rows are read,
  published, then marked in a second transaction: holding SQLite's write lock while
  publishing would stall every deposit, and the in-process bus writes to the same
  database.

Why a status column and not an "id > last seen" cursor: ids are handed out when a
transaction inserts, not when it commits, so a cursor skips a row whose transaction
commits after a higher id was already relayed.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any, Protocol

from psycopg.rows import namedtuple_row
from sqlalchemy import select, update

from wallet_platform.clock import utcnow
from wallet_platform.messaging.bus import OutgoingMessage
from wallet_platform.messaging.outbox.rows import PENDING, PUBLISHED
from wallet_platform.storage.database import Database
from wallet_platform.storage.schema import outbox
from wallet_platform.storage.unit_of_work import PipelineUnitOfWork


class ClaimedRows(Protocol):
    """Pending rows taken for one relay round, and how to settle them."""

    ids: list[int]
    messages: list[OutgoingMessage]

    async def mark_published(self) -> None: ...

    async def mark_failed(self, reason: str) -> None:
        """The bus refused them: ``attempts`` + 1 and ``last_error``, still pending."""
        ...


def _messages(rows: Sequence[Any]) -> list[OutgoingMessage]:
    return [
        OutgoingMessage(
            message_id=row.message_id,
            routing_key=row.routing_key,
            message_type=row.message_type,
            body=bytes(row.payload),
            traceparent=row.traceparent,
        )
        for row in rows
    ]


@asynccontextmanager
async def claim_pending(db: Database, batch_size: int) -> AsyncIterator[ClaimedRows]:
    """The oldest pending rows (at most ``batch_size``; none is an empty claim).

    PostgreSQL: locked until the block ends, and the marks commit with it. SQLite:
    read without holding a transaction; each mark is its own transaction.
    """
    if db.is_postgres:
        async with PipelineUnitOfWork(db) as uow:
            claim = _PgClaim(uow)
            await claim.load(batch_size)
            yield claim
            await uow.commit()
        return
    async with db.read() as conn:
        rows = (await conn.execute(_pending_query(batch_size))).all()
    yield _CoreClaim(db, rows)


# --- PostgreSQL (psycopg, pipeline mode) -----------------------------------------------

_CLAIM_PENDING_PG = """
SELECT id, message_id, routing_key, message_type, payload, traceparent
FROM outbox
WHERE status = 'pending'
ORDER BY id
LIMIT %(limit)s
FOR UPDATE SKIP LOCKED
"""
_MARK_PUBLISHED_PG = """
UPDATE outbox SET status = 'published', published_at = %(now)s
WHERE id = ANY (CAST(%(ids)s AS bigint[])) AND status = 'pending'
"""
_MARK_FAILED_PG = """
UPDATE outbox SET attempts = attempts + 1, last_error = %(reason)s
WHERE id = ANY (CAST(%(ids)s AS bigint[]))
"""


class _PgClaim:
    def __init__(self, uow: PipelineUnitOfWork) -> None:
        self._cursor = uow.conn.cursor(row_factory=namedtuple_row)
        self.ids: list[int] = []
        self.messages: list[OutgoingMessage] = []

    async def load(self, batch_size: int) -> None:
        await self._cursor.execute(_CLAIM_PENDING_PG, {"limit": batch_size})
        rows = await self._cursor.fetchall()
        self.ids = [row.id for row in rows]
        self.messages = _messages(rows)

    async def mark_published(self) -> None:
        await self._cursor.execute(_MARK_PUBLISHED_PG, {"ids": self.ids, "now": utcnow()})

    async def mark_failed(self, reason: str) -> None:
        await self._cursor.execute(_MARK_FAILED_PG, {"ids": self.ids, "reason": reason})


# --- SQLite and the portable path (SQLAlchemy Core) -----------------------------------


def _pending_query(batch_size: int) -> Any:
    return (
        select(
            outbox.c.id,
            outbox.c.message_id,
            outbox.c.routing_key,
            outbox.c.message_type,
            outbox.c.payload,
            outbox.c.traceparent,
        )
        .where(outbox.c.status == PENDING)
        .order_by(outbox.c.id)
        .limit(batch_size)
    )


class _CoreClaim:
    def __init__(self, db: Database, rows: Sequence[Any]) -> None:
        self._db = db
        self.ids = [row.id for row in rows]
        self.messages = _messages(rows)

    async def mark_published(self) -> None:
        async with self._db.transaction() as conn:
            await conn.execute(
                update(outbox)
                .where(outbox.c.id.in_(self.ids), outbox.c.status == PENDING)
                .values(status=PUBLISHED, published_at=utcnow())
            )

    async def mark_failed(self, reason: str) -> None:
        async with self._db.transaction() as conn:
            await conn.execute(
                update(outbox)
                .where(outbox.c.id.in_(self.ids))
                .values(attempts=outbox.c.attempts + 1, last_error=reason)
            )
