"""Prometheus metrics of a real server: the RPC interceptor, the state collector, HTTP.

The collector's gauges are checked against state planted through the real services
(deposits write events and outbox rows) and rows written directly where no service
exists yet in this test (transfers, inbox); queue depths come from a real RabbitMQ
vhost or the embedded bus table.
"""

from __future__ import annotations

import asyncio
import socket
import urllib.request
from datetime import timedelta

import aio_pika
import grpc
import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import insert

from wallet.v1 import wallet_pb2, wallet_pb2_grpc
from wallet_common import events as event_names
from wallet_common.channels import make_channel
from wallet_common.clock import utcnow
from wallet_common.config import Settings
from wallet_common.metrics import METRIC_NAMES, StateCollector
from wallet_common.plumbing import METRICS_HTTP
from wallet_common.runtime import start_server
from wallet_common.schema import inbox, transfers
from wallet_service.bootstrap import build_components


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def scrape(port: int) -> dict[tuple[str, tuple], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def sample(name: str, **labels: str) -> float:
    value = REGISTRY.get_sample_value(name, labels)
    return 0.0 if value is None else value


async def test_rpc_metrics_are_served_over_http(settings: Settings):
    port = free_port()
    running = await start_server(
        settings.replace(metrics_port=port), build_components, role="wallet-service"
    )
    try:
        assert running.runtime.extras[METRICS_HTTP].port == port
        labels = {"grpc_service": "wallet.v1.WalletService", "grpc_method": "Deposit"}
        ok_before = sample("wallet_grpc_server_handled_total", **labels, grpc_code="OK")
        bad_before = sample(
            "wallet_grpc_server_handled_total", **labels, grpc_code="INVALID_ARGUMENT"
        )
        async with make_channel(running.target, Settings()) as channel:
            stub = wallet_pb2_grpc.WalletServiceStub(channel)
            await stub.CreateWallet(
                wallet_pb2.CreateWalletRequest(wallet_id="m", currency="USD", request_id="c")
            )
            await stub.Deposit(wallet_pb2.DepositRequest(wallet_id="m", amount=5, request_id="d"))
            with pytest.raises(grpc.aio.AioRpcError):
                await stub.Deposit(wallet_pb2.DepositRequest(wallet_id="m", amount=0))
        scraped = await asyncio.to_thread(scrape, port)
        key = tuple(sorted({**labels, "grpc_code": "OK"}.items()))
        assert scraped[("wallet_grpc_server_handled_total", key)] == ok_before + 1
        assert scraped[("wallet_grpc_server_handling_seconds_count", key)] >= 1
        bad = tuple(sorted({**labels, "grpc_code": "INVALID_ARGUMENT"}.items()))
        assert scraped[("wallet_grpc_server_handled_total", bad)] == bad_before + 1
        names = {name for name, _ in scraped}
        # The collector ran once at start-up: its gauges are there too.
        assert {"wallet_outbox_pending", "wallet_audit_pending_rows"} <= names
        assert names & METRIC_NAMES
    finally:
        await running.stop()


async def test_state_collector_reports_sagas_outbox_and_consumer_lag(settings: Settings):
    running = await start_server(settings, build_components, role="stack")
    db = running.runtime.db
    try:
        async with make_channel(running.target, Settings()) as channel:
            stub = wallet_pb2_grpc.WalletServiceStub(channel)
            await stub.CreateWallet(
                wallet_pb2.CreateWalletRequest(wallet_id="s", currency="USD", request_id="c")
            )
            for i in range(2):
                await stub.Deposit(
                    wallet_pb2.DepositRequest(wallet_id="s", amount=5, request_id=f"d{i}")
                )
        now = utcnow()
        async with db.transaction() as conn:
            rows = [
                ("t-old", "PENDING", now - timedelta(seconds=120)),
                ("t-new", "DEBITED", now - timedelta(seconds=5)),
                ("t-done", "COMPLETED", now - timedelta(seconds=999)),
            ]
            for transfer_id, state, created in rows:
                await conn.execute(
                    insert(transfers).values(
                        transfer_id=transfer_id,
                        request_id=transfer_id,
                        fingerprint="f",
                        from_wallet_id="a",
                        to_wallet_id="b",
                        amount=1,
                        state=state,
                        created_at=created,
                        updated_at=created,
                    )
                )
        async with db.read() as conn:
            from sqlalchemy import select

            from wallet_common.schema import outbox, wallet_events

            event_ids = (await conn.execute(select(wallet_events.c.event_id))).scalars().all()
            outbox_rows = (await conn.execute(select(outbox.c.status))).scalars().all()
        async with db.transaction() as conn:
            await conn.execute(
                insert(inbox).values(
                    consumer="analytics", message_id=event_ids[0], processed_at=now
                )
            )

        collector = StateCollector(db, role="stack", clock=lambda: now)
        await collector.collect_once()
        assert sample("wallet_sagas", state="PENDING") == 1
        assert sample("wallet_sagas", state="DEBITED") == 1
        assert sample("wallet_sagas", state="COMPLETED") == 1
        assert sample("wallet_sagas", state="COMPENSATING") == 0
        assert sample("wallet_saga_oldest_unfinished_age_seconds") == pytest.approx(120, abs=1)
        pending = outbox_rows.count("pending")
        assert sample("wallet_outbox_pending") == pending
        if pending:
            assert sample("wallet_outbox_oldest_pending_age_seconds") >= 0
        assert (
            sample("wallet_consumer_unapplied_events", consumer="analytics") == len(event_ids) - 1
        )
        assert sample("wallet_consumer_unapplied_events", consumer="fraud") == len(event_ids)
        # The embedded bus (no AMQP URL): depths from its table, empty here.
        assert (
            sample(
                "wallet_consumer_queue_messages",
                consumer="fraud",
                queue=event_names.FRAUD_QUEUE,
            )
            == 0
        )
        assert sample("wallet_dlq_messages", queue=event_names.FRAUD_DLQ) == 0
        await collector.stop()
    finally:
        await running.stop()


@pytest.mark.rabbitmq
async def test_queue_depths_from_rabbitmq(amqp_url: str, tmp_path):
    connection = await aio_pika.connect_robust(amqp_url)
    async with connection:
        channel = await connection.channel()
        queue = await channel.declare_queue(event_names.ANALYTICS_QUEUE, durable=True)
        dlq = await channel.declare_queue(event_names.ANALYTICS_DLQ, durable=True)
        for _ in range(3):
            await channel.default_exchange.publish(aio_pika.Message(b"x"), queue.name)
        await channel.default_exchange.publish(aio_pika.Message(b"y"), dlq.name)
        settings = Settings(database_url=f"sqlite:///{tmp_path / 'w.db'}")
        from wallet_common import migrate
        from wallet_common.db import Database

        migrate.upgrade(settings.database_url)
        db = Database.from_settings(settings)
        collector = StateCollector(db, role="analytics-worker", amqp_url=amqp_url)
        try:
            for _ in range(50):  # publishes are asynchronous: wait until the broker counts them
                await collector.collect_once()
                ready = sample(
                    "wallet_consumer_queue_messages",
                    consumer="analytics",
                    queue=event_names.ANALYTICS_QUEUE,
                )
                if ready == 3:
                    break
                await asyncio.sleep(0.1)
            assert ready == 3
            assert sample("wallet_dlq_messages", queue=event_names.ANALYTICS_DLQ) == 1
        finally:
            await collector.stop()
            await db.dispose()
