"""Database engines for both backends, behind one small ``Database`` handle.

PostgreSQL runs on psycopg 3 (async) with a sized pool and server-side timeouts
(``statement_timeout``, ``lock_timeout``, ``idle_in_transaction_session_timeout``) so
a stuck or cancelled call can never hold locks or a connection for long.

SQLite (the embedded default) serialises writers. Write transactions start with
``BEGIN IMMEDIATE`` so concurrent requests queue on the write lock (``busy_timeout``)
instead of failing with "database is locked" when a reader tries to upgrade. Read-only
work uses :meth:`Database.read`, a plain deferred ``BEGIN`` that WAL mode lets run
beside a writer.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from wallet_platform.config import Settings
from wallet_platform.storage.connection_errors import translate_connection_errors
from wallet_platform.storage.unit_of_work import BACKEND_INFO_KEY, PipelineUnitOfWork

READONLY = "wallet_readonly"


def _normalise(url: str) -> Any:
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    if backend == "postgresql":
        return parsed.set(drivername="postgresql+psycopg")
    if backend == "sqlite":
        return parsed.set(drivername="sqlite")
    raise ValueError(f"unsupported database URL {parsed.render_as_string(hide_password=True)}")


def sync_url(url: str) -> str:
    """The URL for blocking use (migrations, walletctl reconcile)."""
    return str(_normalise(url).render_as_string(hide_password=False))


def async_url(url: str) -> str:
    parsed = _normalise(url)
    if parsed.get_backend_name() == "sqlite":
        parsed = parsed.set(drivername="sqlite+aiosqlite")
    return str(parsed.render_as_string(hide_password=False))


def sqlite_path(url: str) -> Path | None:
    """The database file of a SQLite URL (None for PostgreSQL or in-memory)."""
    parsed = _normalise(url)
    if parsed.get_backend_name() != "sqlite" or not parsed.database:
        return None
    if parsed.database == ":memory:":
        return None
    return Path(parsed.database)


def _install_sqlite_hooks(engine: AsyncEngine) -> None:
    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy's "begin" event issue BEGIN itself (pysqlite would defer it).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(connection: Any) -> None:
        readonly = connection.get_execution_options().get(READONLY, False)
        connection.exec_driver_sql("BEGIN" if readonly else "BEGIN IMMEDIATE")


# libpq's TCP settings: a server that vanished without closing (host down, cable
# pulled) is given up within seconds, not after the kernel's two hours: keepalive
# probes after 5 s idle, every 2 s, 3 unanswered; data unacknowledged for 10 s.
TCP_KEEPALIVE = {
    "keepalives": 1,
    "keepalives_idle": 5,
    "keepalives_interval": 2,
    "keepalives_count": 3,
    "tcp_user_timeout": 10_000,
}


def create_engine(settings: Settings) -> AsyncEngine:
    url = async_url(settings.database_url)
    path = sqlite_path(settings.database_url)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        engine = create_async_engine(url, pool_size=5, max_overflow=0, pool_timeout=60)
        _install_sqlite_hooks(engine)
        return engine
    if url.startswith("sqlite"):
        raise ValueError("in-memory SQLite is not supported; give a file path")
    options = (
        f"-c statement_timeout={settings.db_statement_timeout_ms} "
        f"-c lock_timeout={settings.db_lock_timeout_ms} "
        "-c idle_in_transaction_session_timeout=60000"
    )
    # Performance (docs/benchmarks.md): the same capacity as pool + equal overflow, but
    # every connection stays pooled (overflow connections were closed on return and
    # reopened under load: a TCP + auth + SET handshake per burst), and no pre-ping (a
    # round trip per checkout). A connection broken by a database restart fails its
    # call with UNAVAILABLE (the client retries) and SQLAlchemy then recycles the pool.
    engine = create_async_engine(
        url,
        pool_size=2 * settings.db_pool_size,
        max_overflow=0,
        pool_timeout=10,
        pool_pre_ping=False,
        pool_recycle=1800,
        connect_args={"options": options, "connect_timeout": 5, **TCP_KEEPALIVE},
    )
    _remember_backends(engine)
    return engine


def _remember_backends(engine: AsyncEngine) -> None:
    """Each new connection records ``(pid, backend_start)`` of its server process in
    its pool record: enough to end exactly that process later (a unit of work whose
    connection stalled), never another one that reuses the pid. One round trip per
    new connection; pooled connections are reused."""

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, record: Any) -> None:
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(
                "SELECT pid, backend_start FROM pg_stat_activity WHERE pid = pg_backend_pid()"
            )
            record.info[BACKEND_INFO_KEY] = cursor.fetchone()
        finally:
            cursor.close()
            dbapi_connection.rollback()  # no transaction left open by this read


def create_probe_engine(settings: Settings, timeout: float) -> AsyncEngine:
    """A one-connection engine for health probes, apart from the request pool.

    A pool busy with calls must not read as a database that is down, and a probe must
    not wait behind calls for a connection. ``pool_pre_ping`` replaces a connection a
    database restart broke, so the first probe after the restart does not fail.
    """
    url = async_url(settings.database_url)
    if sqlite_path(settings.database_url) is not None:
        return create_async_engine(url, poolclass=NullPool)
    seconds = max(1, int(timeout))
    return create_async_engine(
        url,
        pool_size=1,
        max_overflow=0,
        pool_timeout=timeout,
        pool_pre_ping=True,
        connect_args={
            "options": f"-c statement_timeout={seconds * 1000}",
            "connect_timeout": seconds,
            **TCP_KEEPALIVE,
        },
    )


class Database:
    """The engine plus the two ways to use it: a write transaction or a read."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self.dialect = engine.dialect.name
        # Called after a pipeline_transaction() that queued outbox rows committed (see
        # outbox_committed); the relay listens here and on the engine's events.
        self.outbox_listeners: list[Callable[[], None]] = []

    @classmethod
    def from_settings(cls, settings: Settings) -> Database:
        return cls(create_engine(settings))

    @property
    def is_postgres(self) -> bool:
        return self.dialect == "postgresql"

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncConnection]:
        """A write transaction: commits when the block ends, rolls back on error."""
        async with translate_connection_errors(), self.engine.begin() as connection:
            yield connection

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncConnection]:
        """A read-only transaction (never takes SQLite's write lock).

        On PostgreSQL the reads run in autocommit: under READ COMMITTED every statement
        takes its own snapshot anyway, so a BEGIN ... COMMIT around reads adds two round
        trips and buys no consistency (docs/benchmarks.md). Code that needs one snapshot
        for several statements opens its own REPEATABLE READ transaction.
        """
        options: dict[str, Any] = {READONLY: True}
        if self.is_postgres:
            options["isolation_level"] = "AUTOCOMMIT"
        async with translate_connection_errors(), self.engine.connect() as connection:
            connection = await connection.execution_options(**options)
            async with connection.begin():
                yield connection

    @asynccontextmanager
    async def autocommit(self) -> AsyncIterator[AsyncConnection]:
        """A connection in autocommit, for work that is one atomic statement per write.

        A single PostgreSQL statement (e.g. data-modifying CTEs) is its own transaction;
        skipping BEGIN/COMMIT saves two round trips. Not for several statements that must
        commit together: use :meth:`transaction` for those.
        """
        async with translate_connection_errors(), self.engine.connect() as connection:
            yield await connection.execution_options(isolation_level="AUTOCOMMIT")

    @asynccontextmanager
    async def pipeline_transaction(self) -> AsyncIterator[Any]:
        """PostgreSQL only: a write transaction on the driver's connection (psycopg),
        in pipeline mode; commits when the block ends, rolls back on error.

        Why: every round trip costs CPU in syscalls (docs/benchmarks.md). In pipeline
        mode psycopg sends queued statements together and waits only when a result is
        read, so BEGIN and the first statement whose rows are read share one round
        trip, and the statements after the last read share the final one with COMMIT:
        two round trips for a read-then-write transaction instead of one per statement
        plus BEGIN and COMMIT. Statements take psycopg's ``%(name)s`` parameters and
        bypass SQLAlchemy and its engine events: a caller that queues outbox rows calls
        :meth:`outbox_committed` after the block. (The block form of
        :class:`~wallet_platform.storage.unit_of_work.PipelineUnitOfWork`.)
        """
        async with PipelineUnitOfWork(self) as uow:
            yield uow.conn
            await uow.commit()

    def outbox_committed(self) -> None:
        """Tell the listeners (the outbox relay) that committed outbox rows wait."""
        for listener in list(self.outbox_listeners):
            listener()

    async def dispose(self) -> None:
        await self.engine.dispose()
