"""Apply pending migrations at start-up, safely when several processes start at once.

PostgreSQL: the whole upgrade runs under a session advisory lock, so concurrent
starters queue and the later ones find nothing left to do. SQLite: an exclusive
file lock next to the database file does the same.
"""

from __future__ import annotations

import fcntl
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Connection

from wallet_platform.storage.database import sqlite_path, sync_url

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
# An arbitrary constant shared by every process of the platform.
ADVISORY_LOCK_KEY = 0x77A11E7


def alembic_config(connection: Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


@contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def upgrade(database_url: str, revision: str = "head") -> None:
    """Bring the database to ``revision`` (blocking; call before serving)."""
    url = sync_url(database_url)
    db_file = sqlite_path(database_url)
    if db_file is not None:
        db_file.parent.mkdir(parents=True, exist_ok=True)
        with _file_lock(db_file.with_name(db_file.name + ".migrate-lock")):
            _run(url, revision)
        return
    _run(url, revision)


def _run(url: str, revision: str) -> None:
    engine = create_engine(url, poolclass=None)
    try:
        with engine.connect() as connection:
            if connection.dialect.name == "postgresql":
                connection.execute(text("SELECT pg_advisory_lock(:k)"), {"k": ADVISORY_LOCK_KEY})
                connection.commit()
            try:
                command.upgrade(alembic_config(connection), revision)
                connection.commit()
            finally:
                if connection.dialect.name == "postgresql":
                    connection.execute(
                        text("SELECT pg_advisory_unlock(:k)"), {"k": ADVISORY_LOCK_KEY}
                    )
                    connection.commit()
    finally:
        engine.dispose()
    log.info("database schema is at %s", revision)
