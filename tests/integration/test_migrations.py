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


# --- 0005: transfer holds on an existing ledger ---------------------------------------


def _empty_database(request: pytest.FixtureRequest, tmp_path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'old.db'}"
    databases: PostgresDatabases = request.getfixturevalue("postgres_databases")
    name = f"wallet_test_old_{uuid.uuid4().hex[:8]}"
    databases._admin(f'CREATE DATABASE "{name}"')
    databases.created.append(name)
    from tests.conftest import pg_database_url

    return pg_database_url(name)


@pytest.fixture(params=[pytest.param("sqlite"), pytest.param("postgres", marks=requires_postgres)])
def old_database_url(request: pytest.FixtureRequest, tmp_path) -> str:
    """An empty database at revision 0004 (before transfer holds), on each backend."""
    url = _empty_database(request, tmp_path)
    migrate.upgrade(url, "0004")
    return url


def _plant_pre_hold_ledger(url: str) -> None:
    """Wallets a, b, c; transfers in every state, as the ledger stored them before 0005."""
    from datetime import UTC, datetime

    from wallet_platform.storage.schema import (
        idempotency_records,
        transfers,
        wallet_events,
        wallets,
    )
    from wallet_service.domain import fingerprint

    now = datetime.now(UTC)
    engine = sa.create_engine(sync_url(url))
    balances = {"a": 840, "b": 100, "c": 0}
    # (transfer, from, to, amount, state, event types)
    sagas = [
        ("T1", "a", "b", 100, "COMPLETED", ("transfer_debited", "transfer_credited")),
        ("T2", "a", "c", 50, "COMPENSATED", ("transfer_debited", "transfer_refunded")),
        ("T3", "a", "b", 30, "DEBITED", ("transfer_debited",)),
        ("T4", "a", "b", 20, "PENDING", ("transfer_debited",)),  # crashed after the debit
    ]
    try:
        with engine.begin() as conn:
            for wallet_id, balance in balances.items():
                conn.execute(
                    wallets.insert().values(
                        wallet_id=wallet_id, currency="USD", balance=balance, status="ACTIVE",
                        version=1, created_at=now, updated_at=now,
                    )
                )  # fmt: skip
            events: list[tuple[str, str, int, str | None]] = [("a", "funds_deposited", 1000, None)]
            for transfer_id, source, target, amount, state, types in sagas:
                conn.execute(
                    transfers.insert().values(
                        transfer_id=transfer_id, request_id=f"r-{transfer_id}", fingerprint="f",
                        from_wallet_id=source, to_wallet_id=target, amount=amount,
                        currency="USD", state=state, created_at=now, updated_at=now,
                    )
                )  # fmt: skip
                for kind in types:
                    wallet_id = target if kind == "transfer_credited" else source
                    events.append((wallet_id, kind, amount, transfer_id))
            events.append(("a", "transfer_debited", 10, "X"))  # a direct call, no saga
            for n, (wallet_id, kind, amount, event_transfer) in enumerate(events):
                conn.execute(
                    wallet_events.insert().values(
                        event_id=f"e{n}", wallet_id=wallet_id, sequence=100 + n, type=kind,
                        amount=amount, balance_after=0, currency="USD", transfer_id=event_transfer,
                        request_id=f"{event_transfer}:{kind}", occurred_at=now,
                    )
                )  # fmt: skip
            records = [
                ("T3:debit", fingerprint("DebitForTransfer", "a", 30, "T3", "USD")),
                ("T4:debit", fingerprint("DebitForTransfer", "a", 20, "T4", "USD")),
                ("T3:credit", fingerprint("Deposit", "m", 1, "", "")),  # a client's squat
            ]
            for key, print_ in records:
                conn.execute(
                    idempotency_records.insert().values(
                        scope="wallet", request_id=key, fingerprint=print_, status_code="OK",
                        response=b"", created_at=now,
                    )
                )  # fmt: skip
    finally:
        engine.dispose()


async def test_upgrade_backfills_holds_and_moves_unfinished_step_keys(old_database_url: str):
    from tests.e2e.test_hold_attacks import assert_conserved
    from wallet_platform.config import Settings
    from wallet_platform.storage.database import Database
    from wallet_service.domain import Movement, fingerprint
    from wallet_service.service import WalletService

    _plant_pre_hold_ledger(old_database_url)
    migrate.upgrade(old_database_url)
    engine = sa.create_engine(sync_url(old_database_url))
    try:
        with engine.connect() as conn:
            holds = {
                row.transfer_id: (row.from_wallet_id, row.to_wallet_id, row.amount, row.state)
                for row in conn.execute(sa.text("SELECT * FROM transfer_holds"))
            }
            records = {
                row.request_id: (row.scope, row.fingerprint)
                for row in conn.execute(sa.text("SELECT * FROM idempotency_records"))
            }
    finally:
        engine.dispose()
    assert holds == {
        "T1": ("a", "b", 100, "POSTED"),
        "T2": ("a", "c", 50, "VOIDED"),
        "T3": ("a", "b", 30, "OPEN"),
        "T4": ("a", "b", 20, "OPEN"),
        "X": ("a", "", 10, "OPEN"),  # no saga names its destination: it can only be voided
    }
    assert records["T3:debit"] == (
        "step",
        fingerprint("DebitForTransfer", "a", 30, "T3", "USD", "b"),
    )
    assert records["T3:credit"][0] == "wallet"  # the client's key stays the client's

    # The sagas resume: T4's repeated debit replays, T3's credit posts its hold.
    db = Database.from_settings(Settings(database_url=old_database_url))
    try:
        service = WalletService(db)
        usd = {"currency": "USD"}
        debit = await service.move(
            Movement.TRANSFER_DEBIT, "a", 20, "T4:debit", transfer_id="T4", to_wallet_id="b", **usd
        )
        assert debit.replayed
        credit = await service.move(Movement.TRANSFER_CREDIT, "b", 30, "", transfer_id="T3", **usd)
        assert not credit.replayed and credit.wallet.balance == 130
        await assert_conserved(db)
    finally:
        await db.dispose()
