"""Read-only, consistent access to the platform database for walletctl.

``audit`` and ``reconcile`` read tables directly (the database is the source of
truth they inspect). Every command runs in ONE snapshot: REPEATABLE READ on
PostgreSQL, an explicit ``BEGIN`` on SQLite (WAL gives the reader a stable view), so
concurrent traffic cannot make a consistent ledger look inconsistent between two
queries.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import create_engine, event
from sqlalchemy.engine import Connection, Engine, make_url

from wallet_checks.context import as_datetime
from wallet_platform.storage.database import sqlite_path, sync_url
from walletctl.context import UsageError

__all__ = ["as_datetime", "masked", "snapshot", "snapshot_engine"]


def masked(url: str) -> str:
    """The URL without its password, for reports."""
    try:
        return str(make_url(url).render_as_string(hide_password=True))
    except Exception:
        return "<unparseable url>"


def snapshot_engine(url: str) -> Engine:
    try:
        plain = sync_url(url)
    except Exception as error:
        raise UsageError(f"bad database URL {masked(url)}: {error}") from None
    path = sqlite_path(url)
    if plain.startswith("sqlite"):
        if path is None or not path.exists():
            raise UsageError(f"no SQLite database at {path} (set --database-url)")
        engine = create_engine(plain)

        @event.listens_for(engine, "connect")
        def _connect(dbapi_connection: Any, _record: Any) -> None:
            dbapi_connection.isolation_level = None  # let us issue BEGIN ourselves
            dbapi_connection.execute("PRAGMA busy_timeout=30000")

        @event.listens_for(engine, "begin")
        def _begin(connection: Any) -> None:
            connection.exec_driver_sql("BEGIN")

        return engine
    return create_engine(
        plain,
        pool_pre_ping=False,
        connect_args={"connect_timeout": 5, "options": "-c statement_timeout=120000"},
    )


@contextmanager
def snapshot(url: str) -> Iterator[Connection]:
    """One read-only transaction with a consistent view; closed afterwards."""
    engine = snapshot_engine(url)
    try:
        with engine.connect() as connection:
            if engine.dialect.name == "postgresql":
                connection = connection.execution_options(
                    isolation_level="REPEATABLE READ", postgresql_readonly=True
                )
            with connection.begin():
                yield connection
    finally:
        engine.dispose()
