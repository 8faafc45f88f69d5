"""Shared fixtures: a fresh database per test on every configured backend.

SQLite always runs (a file in the test's tmp dir). PostgreSQL runs too when
``WALLET_TEST_DATABASE_URL`` is set: the session migrates one template database
(named after this run, so parallel runs never meet) and each test gets its own
clone of it, dropped afterwards. RabbitMQ fixtures live in ``tests/rabbit.py``.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator

import psycopg
import pytest
from sqlalchemy.engine import make_url

from wallet_platform.config import Settings
from wallet_platform.storage import migrate
from wallet_platform.storage.database import Database

# RabbitMQ fixtures (fresh vhost per test): rabbit_vhost, amqp_url.
pytest_plugins = ["tests.rabbit"]

PG_URL = os.environ.get("WALLET_TEST_DATABASE_URL", "")
AMQP_URL = os.environ.get("WALLET_TEST_AMQP_URL", "")
RUN_ID = uuid.uuid4().hex[:8]

requires_postgres = pytest.mark.skipif(not PG_URL, reason="WALLET_TEST_DATABASE_URL not set")
requires_rabbitmq = pytest.mark.skipif(not AMQP_URL, reason="WALLET_TEST_AMQP_URL not set")


def _admin_conninfo(url: str) -> str:
    parsed = make_url(url).set(drivername="postgresql", database="postgres")
    return parsed.render_as_string(hide_password=False)


def pg_database_url(name: str) -> str:
    return (
        make_url(PG_URL)
        .set(drivername="postgresql+psycopg", database=name)
        .render_as_string(hide_password=False)
    )


class PostgresDatabases:
    """Creates databases for this run and drops every one of them at the end."""

    def __init__(self) -> None:
        self.template = f"wallet_test_{RUN_ID}_tpl"
        self.created: list[str] = []
        self._template_ready = False

    def _admin(self, statement: str) -> None:
        with psycopg.connect(_admin_conninfo(PG_URL), autocommit=True) as conn:
            conn.execute(statement)

    def fresh(self) -> str:
        """A new migrated database (a clone of the run's template) and its URL."""
        if not self._template_ready:
            self._admin(f'CREATE DATABASE "{self.template}"')
            self.created.append(self.template)
            migrate.upgrade(pg_database_url(self.template))
            self._template_ready = True
        name = f"wallet_test_{RUN_ID}_{uuid.uuid4().hex[:10]}"
        self._admin(f'CREATE DATABASE "{name}" TEMPLATE "{self.template}"')
        self.created.append(name)
        return pg_database_url(name)

    def drop_all(self) -> None:
        for name in reversed(self.created):
            self._admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        self.created.clear()


@pytest.fixture(scope="session")
def postgres_databases() -> Iterator[PostgresDatabases]:
    if not PG_URL:
        pytest.skip("WALLET_TEST_DATABASE_URL not set")
    databases = PostgresDatabases()
    yield databases
    databases.drop_all()


def _backend_params() -> list[object]:
    return [
        pytest.param("sqlite", id="sqlite"),
        pytest.param("postgres", id="postgres", marks=requires_postgres),
    ]


@pytest.fixture(params=_backend_params())
def database_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A freshly migrated, empty database on each backend (test runs once per backend)."""
    if request.param == "sqlite":
        path = tmp_path_factory.mktemp("db") / "wallet.db"
        url = f"sqlite:///{path}"
        migrate.upgrade(url)
        return url
    databases: PostgresDatabases = request.getfixturevalue("postgres_databases")
    return databases.fresh()


@pytest.fixture(params=_backend_params())
def empty_database_url(request: pytest.FixtureRequest, tmp_path) -> str:
    """A database without any schema: a SQLite file not created yet, or an empty
    PostgreSQL database (dropped at the end of the run). For migration tests."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'empty.db'}"
    databases: PostgresDatabases = request.getfixturevalue("postgres_databases")
    name = f"wallet_test_{RUN_ID}_empty_{uuid.uuid4().hex[:10]}"
    databases._admin(f'CREATE DATABASE "{name}"')
    databases.created.append(name)
    return pg_database_url(name)


@pytest.fixture
def pg_database_url_fresh(postgres_databases: PostgresDatabases) -> str:
    """A freshly migrated PostgreSQL database (for PostgreSQL-only tests)."""
    return postgres_databases.fresh()


@pytest.fixture
def settings(database_url: str) -> Settings:
    """Settings for an in-process server on an ephemeral port against ``database_url``."""
    return Settings(database_url=database_url, listen="127.0.0.1:0", log_format="console")


@pytest.fixture
async def database(settings: Settings) -> AsyncIterator[Database]:
    db = Database.from_settings(settings)
    yield db
    await db.dispose()
