"""The read side of the adapter: wallets, their past states and their log.

:class:`WalletReader` wraps one read connection (:meth:`Database.read`: autocommit on
PostgreSQL, a deferred ``BEGIN`` on SQLite that never takes the write lock), so a
time-travel read runs its few statements on one connection. :func:`pg_read_wallet` is
the plain current read on PostgreSQL, without SQLAlchemy.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import psycopg
from psycopg.rows import namedtuple_row
from sqlalchemy.ext.asyncio import AsyncConnection

from wallet_platform.errors import UnavailableError
from wallet_platform.storage.database import Database
from wallet_service import domain
from wallet_service.adapters import codec, idempotency_sql, ledger_sql
from wallet_service.adapters.rows import wallet_from_row


class WalletReader:
    """Reads on one connection; every method returns domain objects."""

    def __init__(self, conn: AsyncConnection) -> None:
        self._conn = conn

    async def wallet(self, wallet_id: str) -> domain.Wallet | None:
        return await ledger_sql.get_wallet(self._conn, wallet_id)

    async def wallet_exists(self, wallet_id: str) -> bool:
        return await ledger_sql.wallet_exists(self._conn, wallet_id)

    async def event_at_sequence(self, wallet_id: str, sequence: int) -> domain.WalletEvent | None:
        return await ledger_sql.event_at_sequence(self._conn, wallet_id, sequence)

    async def last_event_at_time(
        self, wallet_id: str, moment: datetime
    ) -> domain.WalletEvent | None:
        return await ledger_sql.last_event_at_time(self._conn, wallet_id, moment)

    async def status_at_sequence(self, wallet_id: str, sequence: int) -> str:
        return await ledger_sql.status_at_sequence(self._conn, wallet_id, sequence)

    async def events_page(
        self, wallet_id: str, before_sequence: int | None, limit: int
    ) -> list[domain.WalletEvent]:
        return await ledger_sql.events_page(self._conn, wallet_id, before_sequence, limit)

    async def stored_outcome(self, key: domain.WriteKey) -> codec.StoredOutcome | None:
        """The outcome stored under ``key`` (None when the key is new)."""
        record = await idempotency_sql.get_record(self._conn, key)
        return None if record is None else codec.stored_outcome(key, record)


# The plain wallet read on PostgreSQL, on the driver's connection (pg_read_wallet).
_PG_GET_WALLET = """
SELECT wallet_id, currency, balance, status, version, created_at, updated_at
FROM wallets WHERE wallet_id = %(wallet_id)s
"""


async def pg_read_wallet(db: Database, wallet_id: str) -> domain.Wallet | None:
    """The wallet row now (PostgreSQL only): one autocommit statement on the driver's
    connection, the same row :func:`ledger_sql.get_wallet` reads.

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
