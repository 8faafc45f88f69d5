"""Unit of work: one database transaction, committed only when the code says so.

    async with store.unit_of_work() as uow:
        await uow.some_change(...)
        await uow.commit()

Leaving the block without :meth:`UnitOfWork.commit` (an exception, an early return)
rolls back: a half-done change is never committed by accident, and the code that
decides what a change is never sees a connection or a transaction object. A
service's persistence adapter subclasses one of the two transaction holders below and
adds its statements as methods; the service layer only calls those methods.

- :class:`CoreUnitOfWork`: a SQLAlchemy connection (``self.conn``) for Core
  statements. SQLite (its ``BEGIN IMMEDIATE`` queues writers on the write lock) and
  anything that must run on both backends.
- :class:`PipelineUnitOfWork`: PostgreSQL only, psycopg's own connection
  (``self.conn``, ``%(name)s`` parameters) in pipeline mode. Statements are sent as
  they are queued and only reading a result waits, so ``BEGIN`` travels with the first
  statement and ``COMMIT`` with every statement queued since the last read: a
  transaction whose results are read after :meth:`commit` is ONE round trip. For hot
  paths, where round trips are most of the cost (docs/benchmarks.md).

A connection lost on the way raises :class:`~wallet_platform.errors.UnavailableError`
(callers treat it as transient) and the broken connection is not pooled again.

``deadline`` (seconds, optional): a unit of work not finished by then has a stalled
connection (a database or a network that stopped answering without closing): its
socket is shut down, which fails the operation in progress at once, and the unit of
work raises ``TimeoutError``. (Cancelling the task instead would leave psycopg
sending a cancel request and waiting for the stalled server, seconds more; only
getting the connection, before there is a socket, is cancelled at the deadline.) The
pool is replaced too: its idle connections took the same path and most likely stalled
with it. On PostgreSQL the server may not know: behind a middlebox that lost the flow,
its backend keeps the transaction open, with its row locks, until
``idle_in_transaction_session_timeout``, and every retry of the same work (the same
inbox keys, the same wallet rows) would wait for those locks. So the expired unit of
work also ends that backend from a fresh connection (``pg_terminate_backend``, by the
pid and start time its connection recorded: a reused process id is left alone).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncTransaction

from wallet_platform.errors import UnavailableError
from wallet_platform.storage.connection_errors import (
    is_connection_error,
    translate_connection_errors,
)

if TYPE_CHECKING:
    from wallet_platform.storage.database import Database

log = logging.getLogger(__name__)

# How long ending a stalled unit of work's server-side backend may take.
TERMINATE_TIMEOUT_SECONDS = 5.0

# Where each pooled PostgreSQL connection records its server process (the engine's
# connect hook in ``database`` writes it).
BACKEND_INFO_KEY = "backend"


def backend_of(connection_info: dict[Any, Any]) -> tuple[int, Any] | None:
    """``(pid, backend_start)`` recorded for a pooled connection (PostgreSQL only)."""
    found = connection_info.get(BACKEND_INFO_KEY)
    return (int(found[0]), found[1]) if found else None


class UnitOfWork:
    """Base: ``async with uow: ...; await uow.commit()``; otherwise rolled back.

    Subclasses implement :meth:`_begin`, :meth:`_commit`, :meth:`_end` (roll back
    unless committed, then release the connection) and, for ``deadline``,
    :meth:`_drop_connection`. One use per instance.
    """

    committed = False
    deadline: float | None = None  # seconds from entering the block
    expired = False
    _timer: asyncio.TimerHandle | None = None

    async def __aenter__(self) -> Self:
        self.committed = self.expired = False
        if self.deadline is not None:
            self._timer = asyncio.get_running_loop().call_later(self.deadline, self._expire)
        try:
            if self.deadline is None:
                await self._begin()
            else:
                # Getting the connection can stall too (a new connection's set-up query
                # unanswered), before there is a socket to shut down: bound it as well.
                async with asyncio.timeout(self.deadline) as limit:
                    try:
                        await self._begin()
                    finally:
                        self.expired = self.expired or limit.expired()
        except Exception as error:
            self._stop_timer()
            if self.expired:
                await self._after_stall()
            self._raise_if_expired(error)
            raise
        except BaseException:
            self._stop_timer()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        try:
            # Ending the transaction talks to the server too (leaving pipeline mode, a
            # rollback, the pool's reset): the deadline covers it as well.
            await self._end(error)
        finally:
            self._stop_timer()
        if self.expired:
            await self._after_stall()
        if isinstance(error, Exception):  # never turn a cancellation into something else
            self._raise_if_expired(error)
        if isinstance(error, Exception) and self._lost_connection(error):
            raise UnavailableError(f"database unavailable: {type(error).__name__}") from error

    async def commit(self) -> None:
        """Make the work durable (raises if the database refuses the commit)."""
        await self._commit()
        self.committed = True

    async def _begin(self) -> None:
        raise NotImplementedError

    async def _commit(self) -> None:
        raise NotImplementedError

    async def _end(self, error: BaseException | None) -> None:
        raise NotImplementedError

    def _drop_connection(self) -> None:
        """Make the database operation in progress fail at once (the deadline passed)."""

    # (pid, backend_start) of the server process, recorded when a deadline is set.
    _backend: tuple[int, Any] | None = None

    async def _after_stall(self) -> None:
        """After an expired deadline: the pooled siblings of the stalled connection went
        the same way most likely (one network path), so the pool is replaced; then the
        stalled backend is ended, from a fresh connection."""
        db: Database | None = getattr(self, "db", None)
        if db is not None:
            await db.engine.dispose(close=False)
        await self._end_stalled_backend()

    async def _end_stalled_backend(self) -> None:
        """Terminate the server side of the dropped connection (PostgreSQL; best effort)."""
        backend, self._backend = self._backend, None
        db: Database | None = getattr(self, "db", None)
        if backend is None or db is None:
            return
        pid, started = backend
        try:
            async with asyncio.timeout(TERMINATE_TIMEOUT_SECONDS):
                async with db.autocommit() as conn:
                    ended = await conn.exec_driver_sql(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                        "WHERE pid = %(pid)s AND backend_start = %(started)s",
                        {"pid": pid, "started": started},
                    )
                    if ended.scalar():
                        log.warning("ended database backend %d of a stalled unit of work", pid)
        except Exception as error:  # the next retry finds out again; never mask the timeout
            log.warning("could not end database backend %d: %s", pid, type(error).__name__)

    def _lost_connection(self, error: Exception) -> bool:
        """Whether ``error`` means the database could not be reached."""
        return is_connection_error(error)

    def _expire(self) -> None:
        self._timer = None
        self.expired = True
        self._drop_connection()

    def _stop_timer(self) -> None:
        timer, self._timer = self._timer, None
        if timer is not None:
            timer.cancel()

    def _raise_if_expired(self, error: Exception) -> None:
        if self.expired:
            raise TimeoutError(
                f"unit of work not done within {self.deadline}s; its connection was dropped"
            ) from error


def _shut_down(driver: Any) -> None:
    """Shut down the socket of a psycopg connection (no-op for other drivers): the
    operation waiting on it fails with a lost connection instead of waiting on."""
    pgconn = getattr(driver, "pgconn", None)
    if pgconn is None:
        return
    with contextlib.suppress(Exception):  # already closed: nothing to interrupt
        sock = socket.socket(fileno=os.dup(pgconn.socket))
        try:
            sock.shutdown(socket.SHUT_RDWR)
        finally:
            sock.close()


class CoreUnitOfWork(UnitOfWork):
    """A transaction on a SQLAlchemy connection: ``self.conn`` runs Core statements."""

    conn: AsyncConnection

    def __init__(self, db: Database) -> None:
        self.db = db
        self._transaction: AsyncTransaction | None = None
        self._driver: Any = None

    async def _begin(self) -> None:
        async with translate_connection_errors():
            self.conn = await self.db.engine.connect()
            try:
                if self.deadline is not None:
                    raw = await self.conn.get_raw_connection()
                    self._driver = raw.driver_connection
                    self._backend = backend_of(raw.info)
                self._transaction = await self.conn.begin()
            except BaseException:
                await self.conn.close()
                raise

    def _drop_connection(self) -> None:
        _shut_down(self._driver)

    async def _commit(self) -> None:
        assert self._transaction is not None
        async with translate_connection_errors():
            await self._transaction.commit()

    async def _end(self, error: BaseException | None) -> None:
        transaction, self._transaction = self._transaction, None
        try:
            if transaction is not None and transaction.is_active:
                if error is None:
                    await transaction.rollback()
                else:
                    # The block failed: a rollback that fails too (a lost connection)
                    # must not hide why; SQLAlchemy has invalidated the connection.
                    with contextlib.suppress(Exception):
                        await transaction.rollback()
        finally:
            await self.conn.close()


class PipelineUnitOfWork(UnitOfWork):
    """A PostgreSQL transaction on psycopg's connection in pipeline mode.

    ``self.conn`` is the ``psycopg.AsyncConnection``; statements bypass SQLAlchemy
    (and its engine events: a unit of work that writes outbox rows tells the relay
    with ``db.outbox_committed()`` after the commit).
    """

    conn: Any  # psycopg.AsyncConnection

    def __init__(self, db: Database) -> None:
        self.db = db
        self._connection: contextlib.AbstractAsyncContextManager[AsyncConnection] | None = None
        self._sa_conn: AsyncConnection | None = None
        self._pipeline: Any = None
        self._pipeline_context: Any = None

    async def _begin(self) -> None:
        self._connection = self.db.autocommit()
        self._sa_conn = await self._connection.__aenter__()
        try:
            raw = await self._sa_conn.get_raw_connection()
            self.conn = raw.driver_connection
            if self.deadline is not None:
                self._backend = backend_of(raw.info)
            self._pipeline_context = self.conn.pipeline()
            self._pipeline = await self._pipeline_context.__aenter__()
            # BEGIN as a statement: psycopg's own transaction handling would sync.
            await self.conn.execute("BEGIN")
        except BaseException as error:
            await self._end(error)
            if isinstance(error, Exception) and self._lost_connection(error):
                raise UnavailableError(f"database unavailable: {type(error).__name__}") from error
            raise

    async def _commit(self) -> None:
        await self.conn.execute("COMMIT")
        await self._pipeline.sync()  # the one round trip of a write-only tail

    async def _end(self, error: BaseException | None) -> None:
        sa_conn, connection = self._sa_conn, self._connection
        self._sa_conn = self._connection = None
        if sa_conn is None or connection is None:
            return
        try:
            if self._pipeline_context is not None:
                context, self._pipeline_context = self._pipeline_context, None
                # Leaving pipeline mode syncs; after a failure that may raise again.
                with contextlib.suppress(Exception):
                    await context.__aexit__(None, None, None)
            driver = getattr(self, "conn", None)
            if driver is None or driver.broken or driver.closed:
                await sa_conn.invalidate()
                # Its pooled siblings likely went the same way (SQLAlchemy does this
                # itself for errors it sees; psycopg's own ones bypass it).
                await self.db.engine.dispose(close=False)
            elif driver.info.transaction_status:
                # Not committed (or the commit failed): end the transaction here, or
                # drop the connection rather than pool it mid-transaction.
                try:
                    await driver.rollback()
                except Exception:
                    await sa_conn.invalidate()
        finally:
            await connection.__aexit__(None, None, None)

    def _drop_connection(self) -> None:
        _shut_down(getattr(self, "conn", None))

    def _lost_connection(self, error: Exception) -> bool:
        driver = getattr(self, "conn", None)
        broken = driver is not None and (driver.broken or driver.closed)
        return broken or is_connection_error(error)
