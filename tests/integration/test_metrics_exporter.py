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
from sqlalchemy import column, func, insert, select, table, update

from saga_orchestrator.domain import TERMINAL_STATES, TransferState
from tests.eventually import eventually
from wallet.v1 import wallet_pb2, wallet_pb2_grpc
from wallet_platform import topology
from wallet_platform.channels import make_channel
from wallet_platform.clock import ensure_utc, utcnow
from wallet_platform.config import Settings
from wallet_platform.observability.metrics import METRIC_NAMES, MetricsHttpServer
from wallet_platform.observability.state_metrics import (
    ConsumerSource,
    OutboxSource,
    SagaSource,
    StateCollector,
    StateSource,
    state_sources,
)
from wallet_platform.server.plumbing import METRICS_HTTP
from wallet_platform.server.process import start_server
from wallet_platform.storage.database import Database
from wallet_platform.storage.schema import inbox, outbox, transfers, wallet_events
from wallet_service.bootstrap import build_components
from wallet_stack.main import build_stack

BUS = table("bus_messages", column("id"), column("queue"), column("state"))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def free_port_pair() -> int:
    """A port P such that P and P + 1 are both free right now (the workers' range)."""
    for _ in range(100):
        base = free_port()
        with socket.socket() as first, socket.socket() as second:
            try:
                first.bind(("127.0.0.1", base))
                second.bind(("127.0.0.1", base + 1))
            except OSError:
                continue
            return base
    raise AssertionError("no two adjacent free ports found")


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
        # The wallet service reports its own part of the state: the outbox it writes.
        assert [source.name for source in state_sources(running.runtime)] == ["outbox"]
        labels = {"grpc_service": "wallet.v1.WalletService", "grpc_method": "Deposit"}
        ok_before = sample("wallet_grpc_server_handled_total", **labels, grpc_code="OK")
        bad_before = sample(
            "wallet_grpc_server_handled_total", **labels, grpc_code="INVALID_ARGUMENT"
        )
        timed_before = sample("wallet_grpc_server_handling_seconds_count", **labels, grpc_code="OK")
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
        assert scraped[("wallet_grpc_server_handling_seconds_count", key)] == timed_before + 1
        bad = tuple(sorted({**labels, "grpc_code": "INVALID_ARGUMENT"}.items()))
        assert scraped[("wallet_grpc_server_handled_total", bad)] == bad_before + 1
        names = {name for name, _ in scraped}
        # The collector ran once at start-up: its gauges are there too.
        assert {"wallet_outbox_pending", "wallet_audit_pending_rows"} <= names
        assert names & METRIC_NAMES
    finally:
        await running.stop()


async def test_state_collector_reports_sagas_outbox_and_consumer_lag(settings: Settings):
    # Real deposits: events, outbox rows and (relay on the embedded bus) queued messages.
    running = await start_server(settings, build_components, role="wallet-service")
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
    finally:
        await running.stop()  # the relay stops: the state below holds still

    db = Database.from_settings(settings)
    now = utcnow()
    try:
        async with db.transaction() as conn:
            for transfer_id, state, age in (
                ("t-old", "PENDING", 120),
                ("t-new", "DEBITED", 5),
                ("t-done", "COMPLETED", 999),
            ):
                created = now - timedelta(seconds=age)
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
            event_ids = (await conn.execute(select(wallet_events.c.event_id))).scalars().all()
            oldest_event = ensure_utc(
                (await conn.execute(select(func.min(wallet_events.c.occurred_at)))).scalar_one()
            )
            await conn.execute(
                insert(inbox).values(
                    consumer="analytics", message_id=event_ids[0], processed_at=now
                )
            )
            # One fraud message becomes a dead letter (the embedded bus keeps it in place).
            first = (
                await conn.execute(
                    select(func.min(BUS.c.id)).where(BUS.c.queue == topology.FRAUD_QUEUE)
                )
            ).scalar()
            if first is not None:
                await conn.execute(update(BUS).where(BUS.c.id == first).values(state="dead"))
            outbox_pending = (
                await conn.execute(
                    select(func.count()).select_from(outbox).where(outbox.c.status == "pending")
                )
            ).scalar()
            fraud = {}
            for state in ("ready", "dead"):
                fraud[state] = (
                    await conn.execute(
                        select(func.count()).where(
                            BUS.c.queue == topology.FRAUD_QUEUE, BUS.c.state == state
                        )
                    )
                ).scalar()

        sources: list[StateSource] = [
            SagaSource(tuple(TransferState), TERMINAL_STATES),
            OutboxSource(),
            ConsumerSource("analytics", topology.ANALYTICS_QUEUE, topology.ANALYTICS_DLQ),
            ConsumerSource("fraud", topology.FRAUD_QUEUE, topology.FRAUD_DLQ),
        ]
        collector = StateCollector(db, sources, clock=lambda: now)
        await collector.collect_once()
        await collector.stop()
    finally:
        await db.dispose()

    assert sample("wallet_sagas", state="PENDING") == 1
    assert sample("wallet_sagas", state="DEBITED") == 1
    assert sample("wallet_sagas", state="COMPLETED") == 1
    assert sample("wallet_sagas", state="COMPENSATING") == 0
    assert sample("wallet_saga_oldest_unfinished_age_seconds") == pytest.approx(120, abs=1)
    assert sample("wallet_outbox_pending") == outbox_pending
    assert len(event_ids) == 3
    assert sample("wallet_consumer_unapplied_events", consumer="analytics") == 2
    assert sample("wallet_consumer_unapplied_events", consumer="fraud") == 3
    # fraud has applied nothing: its oldest unapplied event is the log's oldest, whose age
    # the collector measures against its clock (``now``).
    oldest_age = (now - oldest_event).total_seconds()
    assert oldest_age > 0
    assert sample(
        "wallet_consumer_oldest_unapplied_age_seconds", consumer="fraud"
    ) == pytest.approx(oldest_age, abs=0.001)
    # The embedded bus (no AMQP URL): depths from its table.
    queued = sample("wallet_consumer_queue_messages", consumer="fraud", queue=topology.FRAUD_QUEUE)
    assert queued == fraud["ready"]
    assert sample("wallet_dlq_messages", queue=topology.FRAUD_DLQ) == fraud["dead"]


@pytest.mark.rabbitmq
async def test_queue_depths_from_rabbitmq(amqp_url: str, tmp_path):
    connection = await aio_pika.connect_robust(amqp_url)
    async with connection:
        channel = await connection.channel()
        queue = await channel.declare_queue(topology.ANALYTICS_QUEUE, durable=True)
        dlq = await channel.declare_queue(topology.ANALYTICS_DLQ, durable=True)
        for _ in range(3):
            await channel.default_exchange.publish(aio_pika.Message(b"x"), queue.name)
        await channel.default_exchange.publish(aio_pika.Message(b"y"), dlq.name)
        settings = Settings(database_url=f"sqlite:///{tmp_path / 'w.db'}")
        from wallet_platform.storage import migrate
        from wallet_platform.storage.database import Database

        migrate.upgrade(settings.database_url)
        db = Database.from_settings(settings)
        analytics = ConsumerSource("analytics", topology.ANALYTICS_QUEUE, topology.ANALYTICS_DLQ)
        collector = StateCollector(db, [analytics], amqp_url=amqp_url)
        try:

            async def ready() -> float:
                await collector.collect_once()
                return sample(
                    "wallet_consumer_queue_messages",
                    consumer="analytics",
                    queue=topology.ANALYTICS_QUEUE,
                )

            # Publishes are asynchronous: wait until the broker counts all three.
            await eventually(ready, lambda n: n == 3, what="3 ready messages", within=10)
            assert sample("wallet_dlq_messages", queue=topology.ANALYTICS_DLQ) == 1
        finally:
            await collector.stop()
            await db.dispose()


async def test_a_stack_reports_the_state_of_every_part_it_runs(settings: Settings):
    running = await start_server(settings, build_stack, role="stack")
    try:
        names = sorted(source.name for source in state_sources(running.runtime))
    finally:
        await running.stop()
    assert names == ["analytics", "fraud", "outbox", "sagas"]


async def test_forked_workers_each_get_a_metrics_port():
    """``--workers N``: worker k takes the first free port of METRICS_PORT .. +N-1."""
    base = free_port_pair()
    first = MetricsHttpServer("127.0.0.1", base, ports_to_try=2)
    second = MetricsHttpServer("127.0.0.1", base, ports_to_try=2)
    third = MetricsHttpServer("127.0.0.1", base, ports_to_try=2)
    await first.start()
    try:
        await second.start()
        try:
            assert (first.port, second.port) == (base, base + 1)
            with pytest.raises(OSError):
                await third.start()
            assert await asyncio.to_thread(scrape, second.port)
        finally:
            await second.stop()
    finally:
        await first.stop()
