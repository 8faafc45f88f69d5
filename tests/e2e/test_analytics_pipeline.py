"""Analytics and fraud end to end through the real event bus.

One server process per test holds WalletService (+ outbox relay), the analytics and
the fraud consumers with their gRPC services, exactly like ``wallet-stack``. Writes go
through WalletService's gRPC API; events travel outbox -> relay -> bus -> consumers.
Runs on the in-process bus (SQLite and PostgreSQL) and on RabbitMQ (fresh vhost,
PostgreSQL). Stats must equal SQL aggregates over ``wallet_events``, before and after
a rebuild; the rules must fire once; the alerts must be published as events.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Sequence

import grpc
import pytest
import sqlalchemy as sa

import analytics_worker.bootstrap
import fraud_worker.bootstrap
import wallet_service.bootstrap
from analytics_worker.rebuild import compare_with_log, rebuild_wallet_stats
from analytics_worker.store import AnalyticsStore
from tests.conftest import requires_postgres, requires_rabbitmq
from tests.eventually import eventually
from tests.integration.test_analytics_projection import EXPECTED_SQL, STATS_SQL, rows
from wallet.v1 import (
    analytics_pb2,
    analytics_pb2_grpc,
    fraud_pb2,
    fraud_pb2_grpc,
    wallet_pb2,
    wallet_pb2_grpc,
)
from wallet_platform.config import Settings
from wallet_platform.runtime import Runtime
from wallet_platform.server.builder import Component
from wallet_platform.server.process import RunningServer, start_server
from wallet_platform.storage.database import Database
from wallet_platform.storage.schema import inbox

pytestmark = pytest.mark.slow


def build(runtime: Runtime) -> Sequence[Component]:
    return [
        *wallet_service.bootstrap.build_components(runtime),
        *analytics_worker.bootstrap.build_components(runtime),
        *fraud_worker.bootstrap.build_components(runtime),
    ]


@pytest.fixture(
    params=[
        pytest.param(("inprocess", "sqlite"), id="inprocess-sqlite"),
        pytest.param(("inprocess", "postgres"), id="inprocess-postgres", marks=requires_postgres),
        pytest.param(
            ("rabbitmq", "postgres"),
            id="rabbitmq-postgres",
            marks=[requires_postgres, requires_rabbitmq],
        ),
    ]
)
def pipeline_settings(request: pytest.FixtureRequest, tmp_path) -> Settings:
    bus, backend = request.param
    if backend == "sqlite":
        from wallet_platform.storage import migrate

        url = f"sqlite:///{tmp_path / 'wallet.db'}"
        migrate.upgrade(url)
    else:
        url = request.getfixturevalue("pg_database_url_fresh")
    amqp = request.getfixturevalue("amqp_url") if bus == "rabbitmq" else ""
    return Settings(
        database_url=url,
        amqp_url=amqp,
        listen="127.0.0.1:0",
        log_format="console",
        fraud_large_withdrawal=1_000,
    )


@pytest.fixture
async def stack(pipeline_settings: Settings) -> AsyncIterator[RunningServer]:
    running = await start_server(pipeline_settings, build, role="stack")
    try:
        yield running
    finally:
        await running.stop(grace=1)


async def unapplied(db: Database, consumer: str) -> int:
    return await AnalyticsStore(db).count_unapplied(consumer)


async def caught_up(db: Database, *, within: float = 30.0) -> None:
    """Wait until both consumers have applied every event of the log."""

    async def left() -> dict[str, int]:
        return {c: await unapplied(db, c) for c in ("analytics", "fraud")}

    await eventually(
        left, lambda left: not any(left.values()), what="both consumers caught up", within=within
    )


def rid() -> str:
    return uuid.uuid4().hex


async def test_stats_equal_log_aggregates_through_the_bus(stack: RunningServer) -> None:
    db = stack.runtime.db
    async with grpc.aio.insecure_channel(stack.target) as channel:
        wallets = wallet_pb2_grpc.WalletServiceStub(channel)
        for name in ("alice", "bob"):
            await wallets.CreateWallet(
                wallet_pb2.CreateWalletRequest(wallet_id=name, currency="USD", request_id=rid())
            )
        for amount in (1000, 2500):
            await wallets.Deposit(
                wallet_pb2.DepositRequest(wallet_id="alice", amount=amount, request_id=rid())
            )
        await wallets.Deposit(
            wallet_pb2.DepositRequest(wallet_id="bob", amount=300, request_id=rid())
        )
        await wallets.Withdraw(
            wallet_pb2.WithdrawRequest(wallet_id="alice", amount=400, request_id=rid())
        )
        await wallets.DebitForTransfer(
            wallet_pb2.DebitForTransferRequest(
                wallet_id="alice",
                amount=700,
                transfer_id="t1",
                request_id="t1:debit",
                currency="USD",
                to_wallet_id="bob",
            )
        )
        await wallets.CreditForTransfer(
            wallet_pb2.CreditForTransferRequest(
                wallet_id="bob",
                amount=700,
                transfer_id="t1",
                request_id="t1:credit",
                currency="USD",
            )
        )
        await wallets.DebitForTransfer(
            wallet_pb2.DebitForTransferRequest(
                wallet_id="alice",
                amount=200,
                transfer_id="t2",
                request_id="t2:debit",
                currency="USD",
                to_wallet_id="bob",
            )
        )
        await wallets.RefundForTransfer(
            wallet_pb2.RefundForTransferRequest(
                wallet_id="alice",
                amount=200,
                transfer_id="t2",
                request_id="t2:refund",
                currency="USD",
            )
        )
        # A replayed request changes nothing, and neither does the event it re-announces.
        key = rid()
        for _ in range(2):
            await wallets.Deposit(
                wallet_pb2.DepositRequest(wallet_id="bob", amount=5, request_id=key)
            )

        await caught_up(db)
        expected = await rows(db, EXPECTED_SQL)
        assert await rows(db, STATS_SQL) == expected
        assert await compare_with_log(db) == []

        analytics = analytics_pb2_grpc.AnalyticsServiceStub(channel)
        alice = (
            await analytics.GetWalletStats(analytics_pb2.GetWalletStatsRequest(wallet_id="alice"))
        ).stats
        assert (alice.total_deposited, alice.deposit_count) == (3500, 2)
        assert (alice.total_withdrawn, alice.withdrawal_count) == (400, 1)
        assert (alice.total_transferred_out, alice.transfer_out_count) == (700, 1)
        assert alice.events_applied == 7
        bob = (
            await analytics.GetWalletStats(analytics_pb2.GetWalletStatsRequest(wallet_id="bob"))
        ).stats
        assert (bob.total_transferred_in, bob.transfer_in_count) == (700, 1)
        assert (bob.total_deposited, bob.deposit_count) == (305, 2)

        assert await rebuild_wallet_stats(db) == 2
        assert await rows(db, STATS_SQL) == expected
        again = (
            await analytics.GetWalletStats(analytics_pb2.GetWalletStatsRequest(wallet_id="alice"))
        ).stats
        assert again == alice


async def test_fraud_rules_fire_once_and_alerts_are_published(stack: RunningServer) -> None:
    db = stack.runtime.db
    async with grpc.aio.insecure_channel(stack.target) as channel:
        wallets = wallet_pb2_grpc.WalletServiceStub(channel)
        for name in ("quick", "slow", "big"):
            await wallets.CreateWallet(
                wallet_pb2.CreateWalletRequest(wallet_id=name, currency="USD", request_id=rid())
            )
            await wallets.Deposit(
                wallet_pb2.DepositRequest(wallet_id=name, amount=100_000, request_id=rid())
            )
        for _ in range(5):  # 3 raise the alert, the 4th and 5th belong to the same burst
            await wallets.Withdraw(
                wallet_pb2.WithdrawRequest(wallet_id="quick", amount=10, request_id=rid())
            )
        for _ in range(2):
            await wallets.Withdraw(
                wallet_pb2.WithdrawRequest(wallet_id="slow", amount=10, request_id=rid())
            )
        await wallets.Withdraw(
            wallet_pb2.WithdrawRequest(wallet_id="big", amount=1_000, request_id=rid())
        )
        await wallets.Withdraw(
            wallet_pb2.WithdrawRequest(wallet_id="slow", amount=999, request_id=rid())
        )
        await caught_up(db)

        fraud = fraud_pb2_grpc.FraudServiceStub(channel)

        async def rules_of(wallet_id: str) -> list[int]:
            page = await fraud.ListFraudAlerts(
                fraud_pb2.ListFraudAlertsRequest(wallet_id=wallet_id)
            )
            return [alert.rule for alert in page.alerts]

        assert await rules_of("quick") == [fraud_pb2.FRAUD_RULE_RAPID_WITHDRAWALS]
        assert await rules_of("big") == [fraud_pb2.FRAUD_RULE_LARGE_WITHDRAWAL]
        # slow: 3 withdrawals but... they are quick too: 2 small + 1 just below the threshold.
        assert await rules_of("slow") == [fraud_pb2.FRAUD_RULE_RAPID_WITHDRAWALS]

        # Every alert went out as a wallet.fraud_alert_raised event and came back to
        # both consumers (which acknowledge and ignore it).
        everything = await fraud.ListFraudAlerts(fraud_pb2.ListFraudAlertsRequest())
        alert_ids = {alert.alert_id for alert in everything.alerts}
        assert len(alert_ids) == 3

        async def seen() -> set[tuple[str, str]]:
            async with db.read() as conn:
                query = sa.select(inbox).where(inbox.c.message_id.in_(alert_ids))
                return {(row.consumer, row.message_id) for row in await conn.execute(query)}

        await eventually(
            seen,
            lambda seen: len(seen) == 2 * len(alert_ids),
            what="each alert in both consumers' inboxes",
        )


async def test_rebuild_while_events_flow_counts_each_event_once(stack: RunningServer) -> None:
    """Rebuilds racing the live consumer neither lose nor double-count an event."""
    db = stack.runtime.db
    async with grpc.aio.insecure_channel(stack.target) as channel:
        wallets = wallet_pb2_grpc.WalletServiceStub(channel)
        names = [f"r{i}" for i in range(4)]
        for name in names:
            await wallets.CreateWallet(
                wallet_pb2.CreateWalletRequest(wallet_id=name, currency="USD", request_id=rid())
            )

        async def deposits() -> None:
            for n in range(80):
                await wallets.Deposit(
                    wallet_pb2.DepositRequest(
                        wallet_id=names[n % len(names)], amount=n + 1, request_id=rid()
                    )
                )

        async def rebuilds() -> int:
            count = 0
            for _ in range(6):
                await rebuild_wallet_stats(db)
                count += 1
                await asyncio.sleep(0.02)
            return count

        _, rebuilt = await asyncio.gather(deposits(), rebuilds())
        assert rebuilt == 6
        await caught_up(db)
        assert await rows(db, STATS_SQL) == await rows(db, EXPECTED_SQL)
        assert await compare_with_log(db) == []
