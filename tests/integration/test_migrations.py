"""Migrations: apply on both backends, safe when several processes start at once."""

from __future__ import annotations

import subprocess
import sys
import uuid

import pytest
import sqlalchemy as sa

from tests.conftest import PostgresDatabases, requires_postgres
from wallet_platform.storage import migrate
from wallet_platform.storage.database import sync_url


def table_names(url: str) -> set[str]:
    engine = sa.create_engine(sync_url(url))
    try:
        return set(sa.inspect(engine).get_table_names())
    finally:
        engine.dispose()


def test_schema_has_every_table(database_url: str) -> None:
    assert {
        "wallets",
        "wallet_events",
        "idempotency_records",
        "outbox",
        "transfers",
        "transfer_steps",
        "inbox",
        "wallet_stats",
        "fraud_alerts",
        "audit_log",
    } <= table_names(database_url)


def test_upgrade_twice_is_a_no_op(database_url: str) -> None:
    migrate.upgrade(database_url)
    migrate.upgrade(database_url)
    assert "wallets" in table_names(database_url)


def _concurrent_upgrades(url: str, count: int = 4) -> None:
    code = f"from wallet_platform.storage import migrate; migrate.upgrade({url!r})"
    procs = [subprocess.Popen([sys.executable, "-c", code]) for _ in range(count)]
    assert [p.wait(timeout=120) for p in procs] == [0] * count


def test_concurrent_start_on_empty_sqlite(tmp_path) -> None:
    url = f"sqlite:///{tmp_path / 'race.db'}"
    _concurrent_upgrades(url)
    assert "wallet_events" in table_names(url)


@requires_postgres
def test_concurrent_start_on_empty_postgres(postgres_databases: PostgresDatabases) -> None:
    name = f"wallet_test_race_{uuid.uuid4().hex[:8]}"
    postgres_databases._admin(f'CREATE DATABASE "{name}"')
    postgres_databases.created.append(name)
    from tests.conftest import pg_database_url

    url = pg_database_url(name)
    _concurrent_upgrades(url)
    assert "wallet_events" in table_names(url)


@requires_postgres
def test_event_log_is_append_only_in_postgres(pg_database_url_fresh: str) -> None:
    engine = sa.create_engine(sync_url(pg_database_url_fresh))
    try:
        with engine.begin() as conn:
            conn.execute(
                sa.text("INSERT INTO wallets VALUES ('w1', 'USD', 0, 'ACTIVE', 1, now(), now())")
            )
            conn.execute(
                sa.text(
                    "INSERT INTO wallet_events VALUES "
                    "('e1', 'w1', 1, 'wallet_created', 0, 0, 'USD', NULL, 'r1', NULL, now())"
                )
            )
        for statement in (
            "UPDATE wallet_events SET amount = 5",
            "DELETE FROM wallet_events",
            "TRUNCATE wallet_events",
        ):
            with pytest.raises(sa.exc.DBAPIError, match="append-only"), engine.begin() as conn:
                conn.execute(sa.text(statement))
        with pytest.raises(sa.exc.IntegrityError), engine.begin() as conn:
            conn.execute(sa.text("UPDATE wallets SET balance = -1"))
    finally:
        engine.dispose()
