"""``walletctl db upgrade|current|history`` on SQLite and PostgreSQL.

Each test starts from a database that is empty, half migrated, or stamped by a newer
release, and checks both what the command reports (text, JSON, exit code) and what it
did to the database.
"""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path

import sqlalchemy as sa

from tests.conftest import PostgresDatabases, pg_database_url, requires_postgres
from tests.integration.test_migrations import table_names
from tests.integration.walletctl_harness import Result, walletctl
from wallet_platform.storage import migrate
from wallet_platform.storage.database import sync_url
from walletctl import exitcodes

ALL_REVISIONS = ["0001", "0004"]


def _query(url: str, sql: str) -> list[tuple]:
    engine = sa.create_engine(sync_url(url))
    try:
        with engine.begin() as connection:
            result = connection.execute(sa.text(sql))
            return [tuple(row) for row in result] if result.returns_rows else []
    finally:
        engine.dispose()


def _sqlite_file_exists(url: str) -> bool:
    return Path(url.removeprefix("sqlite:///")).exists()


async def db(url: str, *args: str) -> Result:
    return await walletctl("db", *args, database_url=url)


async def test_upgrade_an_empty_database_then_nothing_left(empty_database_url: str) -> None:
    url = empty_database_url
    if url.startswith("postgresql"):
        before = await db(url, "current", "--json")
        assert before.code == exitcodes.FAILED, before
        assert before.json["current"] == [] and before.json["up_to_date"] is False
        assert [m["revision"] for m in before.json["pending"]] == ALL_REVISIONS
        listed = await db(url, "history", "--json")
        assert [(m["revision"], m["applied"]) for m in listed.json["migrations"]] == [
            ("0001", False),
            ("0004", False),
        ]
    else:  # reading never creates a SQLite file
        missing = await db(url, "current")
        assert missing.code == exitcodes.USAGE and "no SQLite database" in missing.err
        assert not _sqlite_file_exists(url)

    first = await db(url, "upgrade", "--json")
    assert first.code == exitcodes.OK, first
    assert [m["revision"] for m in first.json["applied"]] == ALL_REVISIONS
    assert first.json["before"] == [] and first.json["after"] == ["0004"]
    assert {"wallets", "wallet_events", "bus_messages", "audit_log"} <= table_names(url)
    assert _query(url, "SELECT version_num FROM alembic_version") == [("0004",)]

    again = await db(url, "upgrade")
    assert again.code == exitcodes.OK
    assert "nothing to apply" in again.out and "now at   0004 (head)" in again.out

    now = await db(url, "current")
    assert now.code == exitcodes.OK and "up to date" in now.out
    listed = await db(url, "history")
    assert listed.code == exitcodes.OK
    rows = [line.split() for line in listed.out.splitlines()[2:]]
    assert rows[0][:2] == ["0001", "yes"] and rows[1][:3] == ["0004", "(head)", "yes"]


async def test_half_migrated_database_gets_only_what_is_missing(empty_database_url: str) -> None:
    url = empty_database_url
    migrate.upgrade(url, "0001")
    assert "bus_messages" not in table_names(url)

    behind = await db(url, "current")
    assert behind.code == exitcodes.FAILED
    assert "current  0001" in behind.out and "1 migration(s) pending" in behind.out
    assert "0004" in behind.out
    listed = await db(url, "history", "--json")
    assert [(m["revision"], m["applied"], m["head"]) for m in listed.json["migrations"]] == [
        ("0001", True, False),
        ("0004", False, True),
    ]

    done = await db(url, "upgrade", "--json")
    assert done.code == exitcodes.OK
    assert [m["revision"] for m in done.json["applied"]] == ["0004"]
    assert done.json["before"] == ["0001"] and done.json["after"] == ["0004"]
    assert "bus_messages" in table_names(url)


async def test_a_revision_from_a_newer_release_is_reported_and_left_alone(
    empty_database_url: str,
) -> None:
    url = empty_database_url
    migrate.upgrade(url)
    _query(url, "UPDATE alembic_version SET version_num = '0099'")

    status = await db(url, "current", "--json")
    assert status.code == exitcodes.FAILED
    assert status.json["unknown"] == ["0099"] and status.json["up_to_date"] is False
    text = await db(url, "current")
    assert "does not know" in text.out and "newer release" in text.out

    refused = await db(url, "upgrade")
    assert refused.code == exitcodes.FAILED
    assert "0099" in refused.err and "nothing applied" in refused.err
    assert _query(url, "SELECT version_num FROM alembic_version") == [("0099",)]

    listed = await db(url, "history", "--json")
    assert listed.code == exitcodes.OK and listed.json["unknown"] == ["0099"]


async def test_unreachable_database_is_exit_3() -> None:
    url = "postgresql+psycopg://nobody@127.0.0.1:1/wallet"
    for command in ("current", "history", "upgrade"):
        result = await db(url, command)
        assert result.code == exitcodes.UNAVAILABLE, (command, result)
        assert "UNAVAILABLE" in result.err


@requires_postgres
def test_concurrent_upgrade_jobs_on_an_empty_postgres(
    postgres_databases: PostgresDatabases,
) -> None:
    """Several ``walletctl db upgrade`` at once (a re-run job racing starting servers)."""
    name = f"wallet_test_db_race_{uuid.uuid4().hex[:8]}"
    postgres_databases._admin(f'CREATE DATABASE "{name}"')
    postgres_databases.created.append(name)
    url = pg_database_url(name)
    command = [sys.executable, "-m", "walletctl.cli", "--database-url", url, "db", "upgrade"]
    procs = [
        subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(3)
    ]
    outputs = [proc.communicate(timeout=120) for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0, 0], outputs
    assert _query(url, "SELECT version_num FROM alembic_version") == [("0004",)]
    assert all("now at   0004 (head)" in out for out, _ in outputs)
