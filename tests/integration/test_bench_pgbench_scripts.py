"""The pgbench baselines stay valid against the migrated schema (PostgreSQL only).

A few transactions of each script on a fresh database: every deposit leaves one
event, one outbox row and one idempotency record; every transfer leaves a COMPLETED
transfer with two steps, a debit and a credit that net to zero, three outbox rows and
two idempotency records. (No timing: ``make bench`` measures, this only checks work.)
"""

from __future__ import annotations

import psycopg
import pytest

from tests.conftest import requires_postgres
from wallet_bench import baseline

pytestmark = [
    requires_postgres,
    pytest.mark.skipif(not baseline.available(), reason="pgbench/psql not installed"),
]


def _scalar(conninfo: str, sql: str) -> int:
    with psycopg.connect(conninfo) as conn:
        row = conn.execute(sql).fetchone()
        assert row is not None
        return int(row[0])


def test_the_baseline_scripts_do_the_work_of_a_deposit_and_a_transfer(pg_database_url_fresh):
    url = pg_database_url_fresh
    conninfo = baseline.libpq_url(url)
    baseline.seed(url, wallets=10)
    before = _scalar(conninfo, "SELECT sum(balance) FROM wallets")

    deposits = baseline.run_pgbench(url, "deposit", clients=2, threads=1, duration_s=1, wallets=10)
    assert deposits.failed == 0 and deposits.transactions > 0 and deposits.tps > 0
    # The server's own CPU was seen (its backends live only as long as pgbench), and
    # the machine's includes it.
    assert 0 < deposits.postgres_cpu_ms <= deposits.machine_cpu_ms
    n = deposits.transactions
    assert _scalar(conninfo, "SELECT count(*) FROM wallet_events") == n
    assert _scalar(conninfo, "SELECT count(*) FROM outbox") == n
    assert _scalar(conninfo, "SELECT count(*) FROM idempotency_records") == n
    deposited = _scalar(conninfo, "SELECT sum(amount) FROM wallet_events")
    assert _scalar(conninfo, "SELECT sum(balance) FROM wallets") == before + deposited

    moved = baseline.run_pgbench(url, "transfer", clients=2, threads=1, duration_s=1, wallets=10)
    assert moved.failed == 0 and moved.transactions > 0
    t = moved.transactions
    assert _scalar(conninfo, "SELECT count(*) FROM transfers WHERE state = 'COMPLETED'") == t
    assert _scalar(conninfo, "SELECT count(*) FROM transfer_steps") == 2 * t
    assert (
        _scalar(
            conninfo,
            "SELECT count(*) FROM wallet_events WHERE type IN "
            "('transfer_debited', 'transfer_credited')",
        )
        == 2 * t
    )
    assert _scalar(conninfo, "SELECT count(*) FROM outbox") == n + 3 * t
    assert _scalar(conninfo, "SELECT count(*) FROM idempotency_records") == n + 2 * t
    # Transfers move money, they do not make it.
    assert _scalar(conninfo, "SELECT sum(balance) FROM wallets") == before + deposited
    # The log still explains every balance.
    assert (
        _scalar(
            conninfo,
            """
            SELECT count(*) FROM wallets w
            WHERE w.balance <> 1000000000000 + coalesce((
                SELECT sum(CASE WHEN e.type = 'transfer_debited' THEN -e.amount
                                ELSE e.amount END)
                FROM wallet_events e WHERE e.wallet_id = w.wallet_id), 0)
            """,
        )
        == 0
    )
