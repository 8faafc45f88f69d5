"""All SQL of the consumers' inbox: the ``(consumer, message_id)`` rows that make an
at-least-once bus exactly-once.

A delivery's inbox row is written in the same transaction as its projection change;
a row that is already there means the event was applied before, and the change is
skipped. Two styles, as for every consumer's SQL:

- :class:`CoreInboxUnitOfWork`: SQLAlchemy Core, one row per statement (SQLite, the
  embedded default, and anything portable).
- :class:`PipelineInboxUnitOfWork`: PostgreSQL, psycopg in pipeline mode: a batch's
  rows in ONE statement whose result is read only when needed, so a batch that
  changes nothing else commits in one round trip. :func:`pg_record_inbox_then` gives
  a projection the same single statement with its own change attached.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy.dialects import postgresql, sqlite

from wallet_platform.clock import utcnow
from wallet_platform.storage.schema import inbox
from wallet_platform.storage.unit_of_work import CoreUnitOfWork, PipelineUnitOfWork


class Recorded:
    """Which of a batch's message ids were new to this consumer (their inbox rows were
    written now); the others were applied before and changed nothing.

    On PostgreSQL the answer may be read after the commit (it travels in the same
    round trip); reading it earlier waits for it.
    """

    def __init__(self, new: set[str] | None = None, cursor: Any = None) -> None:
        self._new = new
        self._cursor = cursor

    async def new_ids(self) -> set[str]:
        if self._new is None:
            self._new = {row[0] for row in await self._cursor.fetchall()}
        return self._new


# --- SQLite and the portable path (SQLAlchemy Core) -----------------------------------

_RECORD_ONE: dict[str, Any] = {}


def _record_one(dialect: str) -> Any:
    """INSERT ... ON CONFLICT DO NOTHING RETURNING, built once per dialect (RETURNING:
    rowcount is not reliable across drivers)."""
    statement = _RECORD_ONE.get(dialect)
    if statement is None:
        insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
        statement = insert(inbox).on_conflict_do_nothing().returning(inbox.c.message_id)
        _RECORD_ONE[dialect] = statement
    return statement


class CoreInboxUnitOfWork(CoreUnitOfWork):
    """A consumer's transaction on SQLAlchemy Core, with its inbox."""

    async def record_inbox(self, consumer: str, message_ids: Sequence[str]) -> Recorded:
        """Write the inbox rows of distinct ``message_ids``, one by one."""
        statement = _record_one(self.conn.dialect.name)
        processed_at = utcnow()
        new: set[str] = set()
        for message_id in message_ids:
            values = {"consumer": consumer, "message_id": message_id}
            result = await self.conn.execute(statement, {**values, "processed_at": processed_at})
            if result.first() is not None:
                new.add(message_id)
        return Recorded(new)


# --- PostgreSQL (psycopg, pipeline mode) -----------------------------------------------

# Every row of a batch in one statement, bound with one array (the ids must be distinct:
# the runner drops a batch's repeats first). Its RETURNING lists the new ids.
PG_RECORD_INBOX = (
    "INSERT INTO inbox (consumer, message_id, processed_at) "
    "SELECT %(consumer)s, new.id, %(processed_at)s "
    "FROM unnest(CAST(%(message_ids)s AS varchar[])) AS new(id) "
    "ON CONFLICT DO NOTHING RETURNING message_id"
)


def pg_record_inbox_then(change: str) -> str:
    """One statement: the batch's inbox rows, then ``change``, which may read the
    relation ``new(message_id)`` (the ids whose rows were just written, i.e. the
    events to apply) and must not return rows. The statement returns the new ids and
    takes :data:`PG_RECORD_INBOX`'s parameters plus ``change``'s own."""
    return f"WITH new AS ({PG_RECORD_INBOX}), change AS ({change}) SELECT message_id FROM new"


def pg_inbox_parameters(consumer: str, message_ids: Sequence[str]) -> dict[str, Any]:
    """The parameters of :data:`PG_RECORD_INBOX` (processed_at: the real time, for lag)."""
    return {"consumer": consumer, "message_ids": list(message_ids), "processed_at": utcnow()}


class PipelineInboxUnitOfWork(PipelineUnitOfWork):
    """A consumer's transaction on psycopg's pipeline, with its inbox."""

    async def record_inbox(self, consumer: str, message_ids: Sequence[str]) -> Recorded:
        """Queue the batch's inbox rows (one statement; read the result when needed)."""
        cursor = self.conn.cursor()
        await cursor.execute(PG_RECORD_INBOX, pg_inbox_parameters(consumer, message_ids))
        return Recorded(cursor=cursor)
