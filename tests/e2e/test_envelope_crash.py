"""Consumers killed in the middle of an envelope, then restarted: each event counted once.

The writer side runs with envelopes on (``WALLET_AMQP_ENVELOPES``); batch calls commit
hundreds of events at once, so the relay publishes them as envelopes of at most
:data:`ENVELOPE_MAX` (the queue holds far fewer messages than events). The real
``analytics-worker`` and ``fraud-worker`` start with
``WALLET_FAILPOINTS=consumer.after_apply=exit``: each dies (exit 137) right after its
first commit, which holds part of an envelope, before the envelope is acked. The
restarted workers get the whole envelope again; the inbox skips what was applied, so
the stats equal the log's aggregates and the fraud rules raise exactly their alerts.
"""

from __future__ import annotations

import asyncio
import uuid

import aio_pika
import grpc
import pytest
import sqlalchemy as sa

import wallet_service.bootstrap
from analytics_worker.rebuild import compare_with_log
from tests.conftest import requires_postgres, requires_rabbitmq
from tests.e2e.test_analytics_fraud_crash_recovery import (
    Workers,
    wait_published,
)
from tests.e2e.test_analytics_pipeline import caught_up
from tests.eventually import eventually
from tests.integration.test_analytics_projection import EXPECTED_SQL, STATS_SQL, rows
from tests.rabbit import queue_depths
from wallet.v1 import wallet_pb2, wallet_pb2_grpc
from wallet_platform import failpoints
from wallet_platform.config import Settings
from wallet_platform.messaging.envelope import HEADER_ENVELOPE, unpack
from wallet_platform.server.process import start_server
from wallet_platform.storage.database import Database
from wallet_platform.storage.schema import fraud_alerts, inbox, wallet_events
from wallet_platform.topology import ANALYTICS_QUEUE, FRAUD_QUEUE

pytestmark = [pytest.mark.slow, requires_postgres, requires_rabbitmq]

ENVELOPE_MAX = 100
DEPOSITS = 300


async def inbox_ids(db: Database, consumer: str) -> set[str]:
    async with db.read() as conn:
        query = sa.select(inbox.c.message_id).where(inbox.c.consumer == consumer)
        return {row[0] for row in await conn.execute(query)}


async def envelopes(url: str, queue_name: str) -> list[set[str]]:
    """The event ids of each envelope in the queue (left in it: never acked)."""
    found: list[set[str]] = []
    async with await aio_pika.connect(url) as connection:
        channel = await connection.channel()
        queue = await channel.get_queue(queue_name, ensure=False)
        while (message := await queue.get(no_ack=False, fail=False, timeout=5)) is not None:
            count = (message.headers or {}).get(HEADER_ENVELOPE)
            if count is not None:
                assert isinstance(count, int | str), count  # the relay writes an integer
                found.append({e.message_id for e in unpack(message.body, int(count))})
    return found


async def events_applied(db: Database, consumer: str) -> int:
    """Inbox rows of ``consumer`` for the log's events (the fraud alerts the workers
    publish meanwhile are consumed too, and their rows are not counted here)."""
    async with db.read() as conn:
        query = (
            sa.select(sa.func.count())
            .select_from(inbox)
            .where(inbox.c.consumer == consumer)
            .where(inbox.c.message_id.in_(sa.select(wallet_events.c.event_id)))
        )
        return int((await conn.execute(query)).scalar_one())


def rid() -> str:
    return uuid.uuid4().hex


async def test_workers_killed_mid_envelope_count_each_event_once(
    pg_database_url_fresh: str, rabbit_vhost: str, amqp_url: str, tmp_path
) -> None:
    settings = Settings(
        database_url=pg_database_url_fresh,
        amqp_url=amqp_url,
        amqp_envelopes=True,
        amqp_envelope_max=ENVELOPE_MAX,
        listen="127.0.0.1:0",
        log_format="console",
    )
    workers = Workers(settings, tmp_path)
    running = await start_server(
        settings, wallet_service.bootstrap.build_components, role="wallet-service"
    )
    try:
        db = running.runtime.db
        async with grpc.aio.insecure_channel(running.target) as channel:
            stub = wallet_pb2_grpc.WalletServiceStub(channel)
            for name in ("a", "b"):
                await stub.CreateWallet(
                    wallet_pb2.CreateWalletRequest(wallet_id=name, currency="USD", request_id=rid())
                )
            # The workers apply the two plain wallet_created messages and stop, so the
            # crashing ones below start on envelopes.
            await wait_published(db)
            for name in ("analytics", "fraud"):
                workers.start(name)
            await caught_up(db, within=60)
            workers.stop_all()
            # The relay's first round (whatever committed first) then waits, so the next
            # round finds the rest of the batch committed: envelopes of ENVELOPE_MAX.
            failpoints.configure("outbox.after_publish=sleep(1500)")
            deposits = await stub.BatchDeposit(
                wallet_pb2.BatchDepositRequest(
                    requests=[
                        wallet_pb2.DepositRequest(
                            wallet_id="ab"[i % 2], amount=100 + i, request_id=rid()
                        )
                        for i in range(DEPOSITS)
                    ]
                )
            )
            assert all(r.HasField("response") for r in deposits.results)
            failpoints.configure("")
            withdrawals = await stub.BatchWithdraw(
                wallet_pb2.BatchWithdrawRequest(
                    requests=[
                        wallet_pb2.WithdrawRequest(wallet_id="a", amount=amount, request_id=rid())
                        for amount in (10, 20, 1_000)
                    ]
                )
            )
            assert all(r.HasField("response") for r in withdrawals.results)
        await wait_published(db)
        async with db.read() as conn:
            events = int(
                (
                    await conn.execute(sa.select(sa.func.count()).select_from(wallet_events))
                ).scalar_one()
            )
        assert events == 2 + DEPOSITS + 3
        # The broker's queue lengths are reported with a lag (quorum queues): wait for
        # both queues to show the same messages, then check how few they are.
        depths = await eventually(
            lambda: asyncio.to_thread(queue_depths, rabbit_vhost),
            lambda found: found[ANALYTICS_QUEUE] == found[FRAUD_QUEUE] > 0,
            what="both queues holding the same envelopes",
        )
        assert depths[ANALYTICS_QUEUE] < events // 10

        crashing = [
            workers.start(name, "consumer.after_apply=exit") for name in ("analytics", "fraud")
        ]
        for proc in crashing:
            assert await asyncio.to_thread(proc.wait, 60) == 137
        for consumer, queue in (("analytics", ANALYTICS_QUEUE), ("fraud", FRAUD_QUEUE)):
            # Died after committing part of an envelope, before acking it.
            applied = await inbox_ids(db, consumer)
            halves = [
                (len(ids & applied), len(ids - applied)) for ids in await envelopes(amqp_url, queue)
            ]
            assert any(done and left for done, left in halves), halves

        for name in ("analytics", "fraud"):
            workers.start(name)
        await caught_up(db, within=60)
        for consumer in ("analytics", "fraud"):
            assert await events_applied(db, consumer) == events

        assert await rows(db, STATS_SQL) == await rows(db, EXPECTED_SQL)
        assert await compare_with_log(db) == []
        async with db.read() as conn:
            alerts = sorted(
                (await conn.execute(sa.select(fraud_alerts.c.wallet_id, fraud_alerts.c.rule))).all()
            )
        assert alerts == [("a", "LARGE_WITHDRAWAL"), ("a", "RAPID_WITHDRAWALS")]
    finally:
        workers.stop_all()
        failpoints.configure("")
        await running.stop(grace=1)
