"""``walletctl dlq replay`` / ``purge`` leave audit records, on both buses.

In-process bus: dead rows planted in ``bus_messages`` (SQLite and PostgreSQL).
RabbitMQ: messages planted in the real DLQs of a fresh vhost, audit rows in a fresh
PostgreSQL database. The records are read back with ``walletctl audit`` (what an
operator would run) and checked against what really left the queues. No servers
are needed: the DLQ commands talk to the bus and the database only.
"""

from __future__ import annotations

import getpass
import os
import socket
from datetime import UTC, datetime

import aio_pika
import pytest

from tests.conftest import requires_postgres, requires_rabbitmq
from tests.integration.test_walletctl_ops import sql
from tests.integration.walletctl_harness import walletctl
from wallet_platform import topology
from wallet_platform.messaging.rabbit import amqp_message, declare_topology
from wallet_platform.server.security import token_fingerprint
from walletctl import exitcodes
from walletctl.action_audit import IN_PROGRESS, ActionAudit, Operator

ANALYTICS = topology.ANALYTICS_QUEUE
OPERATOR = f"os={getpass.getuser()}@{socket.gethostname()}"
CLOSED_PG = "postgresql+psycopg://root@127.0.0.1:1/none"


async def plant_rows(database_url: str, queue: str, *message_ids: str) -> None:
    now = datetime.now(UTC)
    for message_id in message_ids:
        await sql(
            database_url,
            "INSERT INTO bus_messages (queue, message_id, routing_key, message_type, body, "
            "state, attempt, available_at_ms, last_error, created_at, dead_at) VALUES "
            "(:q, :m, 'wallet.funds_deposited', 'wallet.v1.WalletEvent', :b, 'dead', 5, 0, "
            "'planted', :n, :n)",
            q=queue,
            m=message_id,
            b=b"\xff planted",
            n=now.replace(tzinfo=None) if not database_url.startswith("postgres") else now,
        )


async def audit_records(database_url: str, *filters: str) -> list[dict]:
    result = await walletctl("audit", *filters, "--json", database_url=database_url)
    assert result.code == 0, result
    return list(result.json["records"])


async def test_replay_and_purge_are_audited_on_the_in_process_bus(database_url: str) -> None:
    await plant_rows(database_url, ANALYTICS, "a-1", "a-2", "a-3")
    await plant_rows(database_url, topology.FRAUD_QUEUE, "f-1")

    replayed = await walletctl(
        "dlq", "replay", "analytics", "a-1", "a-9", "--json", database_url=database_url
    )
    assert replayed.code == exitcodes.FAILED  # a-9 is not there
    assert replayed.json["replayed"] == 1 and replayed.json["not_found"] == 1
    purged = await walletctl(
        "dlq", "purge", "analytics", "--all", "--yes", "--json",
        "--auth-token", "s3cret", database_url=database_url,
    )  # fmt: skip
    assert purged.code == 0 and purged.json["purged"] == 2

    states = await sql(database_url, "SELECT message_id, state FROM bus_messages ORDER BY 1")
    assert states == [
        {"message_id": "a-1", "state": "ready"},
        {"message_id": "f-1", "state": "dead"},
    ]

    records = await audit_records(database_url, "--method", "dlq")
    assert [r["method"] for r in records] == ["walletctl/DlqPurge", "walletctl/DlqReplay"]
    purge, replay = records
    assert purge["audit_id"] == purged.json["audit_id"]
    assert replay["audit_id"] == replayed.json["audit_id"]
    assert (purge["status_code"], replay["status_code"]) == ("OK", "NOT_FOUND")
    assert purge["caller"] == f"{token_fingerprint('s3cret')} {OPERATOR}"
    assert "s3cret" not in str(purge)  # the token itself is never stored
    assert replay["caller"] == OPERATOR
    assert replay["peer"].startswith(f"walletctl:{socket.gethostname()}:")
    assert replay["request"]["operator"]["os_user"] == getpass.getuser()
    assert replay["request"] | {} == replay["request"] | {
        "command": "dlq replay", "bus": "in-process", "queue": ANALYTICS,
    }  # fmt: skip
    assert replay["request"]["selection"]["ids"] == ["a-1", "a-9"]
    assert replay["request"]["outcome"]["replayed"]["ids"] == ["a-1"]
    assert replay["request"]["outcome"]["not_found"]["ids"] == ["a-9"]
    assert purge["request"]["selection"] == "all"
    assert sorted(purge["request"]["outcome"]["purged"]["ids"]) == ["a-2", "a-3"]
    assert purge["duration_ms"] is not None

    # filterable like every other entry
    failed = await audit_records(database_url, "--failed")
    assert [r["audit_id"] for r in failed] == [replay["audit_id"]]
    by_caller = await audit_records(database_url, "--caller", OPERATOR)
    assert [r["audit_id"] for r in by_caller] == [replay["audit_id"]]
    detail = await walletctl("audit", "--audit-id", purge["audit_id"], database_url=database_url)
    assert detail.code == 0 and "DlqPurge" in detail.out and '"a-2"' in detail.out


async def test_an_action_whose_outcome_was_never_recorded_shows_as_failed(
    database_url: str,
) -> None:
    """walletctl killed mid-action: only the intent row exists, and it says so."""
    record = ActionAudit(database_url, "walletctl/DlqPurge", Operator.current(""))
    record.begin({"command": "dlq purge", "queue": ANALYTICS}, refusal="nothing was purged")
    record.close()  # ...and never finish()
    [row] = await audit_records(database_url, "--failed")
    assert row["audit_id"] == record.audit_id and row["status_code"] is None
    assert row["error_message"] == IN_PROGRESS


async def test_no_audit_record_no_action(tmp_path) -> None:
    """An unreachable audit database stops the action before it touches the bus."""
    result = await walletctl("dlq", "purge", "analytics", "--all", "--yes", database_url=CLOSED_PG)
    assert result.code == exitcodes.UNAVAILABLE
    assert "nothing was purged" in result.err
    missing = await walletctl(
        "dlq", "replay", "analytics", "--all", database_url=f"sqlite:///{tmp_path / 'none.db'}"
    )
    assert missing.code == exitcodes.USAGE and "no SQLite database" in missing.err


async def plant_messages(amqp_url: str, dlq: str, *message_ids: str) -> None:
    connection = await aio_pika.connect(amqp_url)
    try:
        channel = await connection.channel(publisher_confirms=True)
        await declare_topology(channel)
        for message_id in message_ids:
            await channel.default_exchange.publish(
                amqp_message(message_id, "wallet.v1.WalletEvent", b"\xff planted"),
                routing_key=dlq,
            )
    finally:
        await connection.close()


async def dead_letter_ids(amqp_url: str, database_url: str, queue: str) -> list[str]:
    listed = await walletctl(
        "dlq", "list", queue, "--json", database_url=database_url, env={"WALLET_AMQP_URL": amqp_url}
    )
    assert listed.code == 0, listed
    return sorted(d["message_id"] for d in listed.json["dead_letters"])


@requires_postgres
@requires_rabbitmq
@pytest.mark.rabbitmq
@pytest.mark.postgres
async def test_replay_and_purge_are_audited_on_rabbitmq(
    pg_database_url_fresh: str, amqp_url: str
) -> None:
    database_url = pg_database_url_fresh
    env = {"WALLET_AMQP_URL": amqp_url}
    await plant_messages(amqp_url, topology.ANALYTICS_DLQ, "r-1", "r-2")
    await plant_messages(amqp_url, topology.FRAUD_DLQ, "g-1", "g-2", "g-3")

    # The audit database is down: nothing happens on the broker.
    refused = await walletctl("dlq", "replay", "analytics", "r-1", database_url=CLOSED_PG, env=env)
    assert refused.code == exitcodes.UNAVAILABLE and "nothing was replayed" in refused.err
    assert await dead_letter_ids(amqp_url, database_url, "analytics") == ["r-1", "r-2"]

    # The broker is down: recorded as UNAVAILABLE, nothing moved.
    down = await walletctl(
        "dlq", "purge", "fraud", "--all", "--yes", database_url=database_url,
        env={"WALLET_AMQP_URL": "amqp://guest:guest@127.0.0.1:1/"},
    )  # fmt: skip
    assert down.code == exitcodes.UNAVAILABLE

    replayed = await walletctl(
        "dlq", "replay", "analytics", "r-1", "--json", database_url=database_url, env=env
    )
    assert replayed.code == 0 and replayed.json["replayed"] == 1
    purged = await walletctl(
        "dlq", "purge", "fraud", "--all", "--yes", "--json", database_url=database_url, env=env
    )
    assert purged.code == 0 and purged.json["purged"] == 3
    assert await dead_letter_ids(amqp_url, database_url, "analytics") == ["r-2"]
    assert await dead_letter_ids(amqp_url, database_url, "fraud") == []

    records = await audit_records(database_url, "--method", "walletctl/Dlq")
    assert [(r["method"], r["status_code"]) for r in records] == [
        ("walletctl/DlqPurge", "OK"),
        ("walletctl/DlqReplay", "OK"),
        ("walletctl/DlqPurge", "UNAVAILABLE"),
    ]
    purge, replay, failed = records
    assert purge["request"]["bus"] == "rabbitmq"
    assert purge["request"]["queue"] == topology.FRAUD_QUEUE
    assert sorted(purge["request"]["outcome"]["purged"]["ids"]) == ["g-1", "g-2", "g-3"]
    assert replay["request"]["outcome"]["replayed"]["ids"] == ["r-1"]
    assert failed["request"]["outcome"]["purged"]["count"] == 0
    assert "broker" in failed["error_message"]
    assert all(r["caller"] == OPERATOR for r in records)
    assert "guest" not in str(records)  # the broker URL (and its password) is not recorded
    assert [r["audit_id"] for r in await audit_records(database_url, "--failed")] == [
        failed["audit_id"]
    ]


def test_the_operator_identity_falls_back_to_the_uid(monkeypatch) -> None:
    def no_login() -> str:
        raise OSError("no login name")

    monkeypatch.setattr(getpass, "getuser", no_login)
    operator = Operator.current("tok")
    assert operator.os_user == f"uid={os.getuid()}"
    assert operator.caller == f"{token_fingerprint('tok')} os=uid={os.getuid()}@{operator.host}"
