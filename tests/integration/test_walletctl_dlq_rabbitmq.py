"""``walletctl dlq`` on RabbitMQ: a stack on its own vhost, real dead letters.

A garbage message published to the events exchange is dead-lettered by both
consumers; a copy of a real event is planted straight into the analytics DLQ. The
CLI lists them (without consuming them), decodes what can be decoded, replays the
real one (the inbox makes the duplicate harmless) and purges the garbage.
"""

from __future__ import annotations

import asyncio

import aio_pika
import pytest
from sqlalchemy import create_engine, text

from tests.conftest import requires_rabbitmq
from tests.eventually import eventually
from tests.integration.walletctl_harness import Ctl, running_stack
from wallet_platform import topology
from wallet_platform.messaging.rabbit import amqp_message
from wallet_platform.storage.database import sync_url
from walletctl import exitcodes

pytestmark = [requires_rabbitmq, pytest.mark.rabbitmq]


def _first_deposit(database_url: str) -> dict:
    engine = create_engine(sync_url(database_url))
    try:
        with engine.connect() as conn:
            row = conn.execute(
                text(
                    "SELECT message_id, routing_key, message_type, payload FROM outbox "
                    "WHERE routing_key = 'wallet.funds_deposited'"
                )
            ).one()
            return dict(row._mapping)
    finally:
        engine.dispose()


async def test_dlq_commands_on_rabbitmq(tmp_path, amqp_url: str) -> None:
    database_url = f"sqlite:///{tmp_path / 'wallet.db'}"
    async with running_stack(database_url, amqp_url=amqp_url) as running:
        ctl = Ctl(running, database_url)
        env = {"WALLET_AMQP_URL": amqp_url}
        await ctl.ok("wallets", "create", "--currency", "USD", "--wallet-id", "q-1")
        await ctl.ok("wallets", "deposit", "q-1", "40")
        stats = await eventually(
            lambda: ctl("stats", "q-1", "--json"),
            lambda r: r.code == 0 and r.json["stats"]["total_deposited"] == 40,
        )
        assert stats.json["stats"]["total_deposited"] == 40
        deposit = await asyncio.to_thread(_first_deposit, database_url)

        connection = await aio_pika.connect(amqp_url)
        try:
            channel = await connection.channel(publisher_confirms=True)
            exchange = await channel.get_exchange(topology.EXCHANGE)
            await exchange.publish(
                amqp_message("garbage-1", deposit["message_type"], b"\xff\x00 not protobuf"),
                routing_key="wallet.funds_deposited",
            )
            await channel.default_exchange.publish(
                amqp_message(deposit["message_id"], deposit["message_type"], deposit["payload"]),
                routing_key=topology.ANALYTICS_DLQ,
            )
        finally:
            await connection.close()

        listed = await eventually(
            lambda: ctl("dlq", "list", "--json", env=env),
            lambda r: r.code == 0 and r.json["counts"] == {topology.ANALYTICS_QUEUE: 2,
                                                          topology.FRAUD_QUEUE: 1},
        )  # fmt: skip
        assert listed.json["bus"] == "rabbitmq", listed
        assert listed.json["counts"] == {topology.ANALYTICS_QUEUE: 2, topology.FRAUD_QUEUE: 1}
        again = await ctl("dlq", "list", "analytics", "--json", env=env)  # looking removes nothing
        assert {d["message_id"] for d in again.json["dead_letters"]} == {
            "garbage-1",
            deposit["message_id"],
        }
        garbage = await ctl("dlq", "show", "fraud", "garbage-1", "--json", env=env)
        assert garbage.json["dead_letter"]["body"] is None and garbage.json["dead_letter"]["reason"]
        real = await ctl("dlq", "show", "analytics", deposit["message_id"], "--json", env=env)
        assert real.json["dead_letter"]["body"]["event"]["wallet_id"] == "q-1"

        replayed = await ctl("dlq", "replay", "analytics", deposit["message_id"], "--json", env=env)
        assert replayed.json["replayed"] == 1 and replayed.json["not_found"] == 0
        purged = await ctl("dlq", "purge", "fraud", "--all", "--yes", "--json", env=env)
        assert purged.json["purged"] == 1
        purged = await ctl("dlq", "purge", "analytics", "garbage-1", "--yes", "--json", env=env)
        assert purged.json["purged"] == 1
        empty = await eventually(
            lambda: ctl("dlq", "list", "--json", env=env),
            lambda r: r.code == 0 and sum(r.json["counts"].values()) == 0,
        )
        assert sum(empty.json["counts"].values()) == 0
        # the replayed duplicate was skipped by the inbox: the numbers did not move
        assert (await ctl.ok("stats", "q-1"))["stats"]["total_deposited"] == 40
        reconciled = await ctl("reconcile", "--delivery-max-age", "0", "--json", env=env)
        assert reconciled.code == exitcodes.OK, reconciled.out
        delivered = next(c for c in reconciled.json["checks"] if c["name"] == "events_delivered")
        assert delivered["facts"]["analytics"]["not_applied"] == 0

    down = await ctl("dlq", "list", env={"WALLET_AMQP_URL": "amqp://guest:guest@127.0.0.1:1/"})
    assert down.code == exitcodes.UNAVAILABLE
