"""Consumers killed after apply, then restarted: every event is counted once.

The real ``analytics-worker`` and ``fraud-worker`` run as subprocesses with
``WALLET_FAILPOINTS=consumer.after_apply=exit``: each dies (exit 137, like kill -9)
right after committing its first projection change and before acknowledging the
message, so the bus delivers that message again to the restarted worker. The inbox
row committed with the change must make the second copy a no-op.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator

import grpc
import pytest
import sqlalchemy as sa

import wallet_service.bootstrap
from analytics_worker.rebuild import compare_with_log
from tests.conftest import requires_postgres, requires_rabbitmq
from tests.e2e.test_analytics_pipeline import caught_up
from tests.eventually import eventually
from tests.integration.test_analytics_projection import EXPECTED_SQL, STATS_SQL, rows
from wallet.v1 import wallet_pb2, wallet_pb2_grpc
from wallet_platform.config import Settings
from wallet_platform.server.process import start_server
from wallet_platform.storage.database import Database
from wallet_platform.storage.schema import fraud_alerts, inbox, outbox

pytestmark = pytest.mark.slow

WORKERS = {"analytics": "analytics_worker.main", "fraud": "fraud_worker.main"}


@pytest.fixture(
    params=[
        pytest.param(("inprocess", "sqlite"), id="inprocess-sqlite"),
        pytest.param(
            ("rabbitmq", "postgres"),
            id="rabbitmq-postgres",
            marks=[requires_postgres, requires_rabbitmq],
        ),
    ]
)
def crash_settings(request: pytest.FixtureRequest, tmp_path) -> Settings:
    bus, backend = request.param
    if backend == "sqlite":
        from wallet_platform.storage import migrate

        url = f"sqlite:///{tmp_path / 'wallet.db'}"
        migrate.upgrade(url)
    else:
        url = request.getfixturevalue("pg_database_url_fresh")
    amqp = request.getfixturevalue("amqp_url") if bus == "rabbitmq" else ""
    return Settings(database_url=url, amqp_url=amqp, listen="127.0.0.1:0", log_format="console")


class Workers:
    """Worker subprocesses of one test; whatever is still running is stopped at the end."""

    def __init__(self, settings: Settings, log_dir) -> None:
        self.settings = settings
        self.log_dir = log_dir
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, name: str, failpoints: str = "") -> subprocess.Popen[bytes]:
        env = {
            **os.environ,
            "WALLET_DATABASE_URL": self.settings.database_url,
            "WALLET_AMQP_URL": self.settings.amqp_url,
            "WALLET_LISTEN": "127.0.0.1:0",
            "WALLET_FAILPOINTS": failpoints,
            "WALLET_FRAUD_LARGE_WITHDRAWAL": "1000",
            "WALLET_LOG_LEVEL": "WARNING",
        }
        log = open(self.log_dir / f"{name}-{len(self.procs)}.log", "wb")  # noqa: SIM115
        proc = subprocess.Popen(
            [sys.executable, "-m", WORKERS[name]], env=env, stdout=log, stderr=log
        )
        self.procs.append(proc)
        return proc

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture
def workers(crash_settings: Settings, tmp_path) -> Iterator[Workers]:
    group = Workers(crash_settings, tmp_path)
    try:
        yield group
    finally:
        group.stop_all()


async def inbox_count(db: Database, consumer: str) -> int:
    async with db.read() as conn:
        query = sa.select(sa.func.count()).select_from(inbox).where(inbox.c.consumer == consumer)
        return int((await conn.execute(query)).scalar_one())


async def wait_published(db: Database) -> None:
    async def unpublished() -> int:
        async with db.read() as conn:
            query = sa.select(sa.func.count()).where(outbox.c.status != "published")
            return int((await conn.execute(query)).scalar_one())

    await eventually(unpublished, lambda left: left == 0, what="every outbox row published")


async def test_killed_after_apply_then_restarted_counts_each_event_once(
    crash_settings: Settings, workers: Workers
) -> None:
    # The writer side (WalletService + outbox relay) stays up in this process.
    running = await start_server(
        crash_settings, wallet_service.bootstrap.build_components, role="wallet-service"
    )
    try:
        db = running.runtime.db
        async with grpc.aio.insecure_channel(running.target) as channel:
            stub = wallet_pb2_grpc.WalletServiceStub(channel)
            for name in ("a", "b"):
                await stub.CreateWallet(
                    wallet_pb2.CreateWalletRequest(
                        wallet_id=name, currency="USD", request_id=uuid.uuid4().hex
                    )
                )
                for amount in (500, 700, 900):
                    await stub.Deposit(
                        wallet_pb2.DepositRequest(
                            wallet_id=name, amount=amount, request_id=uuid.uuid4().hex
                        )
                    )
            for amount in (10, 20, 1_000):
                await stub.Withdraw(
                    wallet_pb2.WithdrawRequest(
                        wallet_id="a", amount=amount, request_id=uuid.uuid4().hex
                    )
                )
        await wait_published(db)

        crashing = [workers.start(name, "consumer.after_apply=exit") for name in WORKERS]
        for proc in crashing:
            assert await asyncio.to_thread(proc.wait, 60) == 137
        # Each died after committing at least one event, and before finishing the log.
        for consumer in WORKERS:
            assert await inbox_count(db, consumer) >= 1

        for name in WORKERS:
            workers.start(name)
        await caught_up(db, within=60)

        assert await rows(db, STATS_SQL) == await rows(db, EXPECTED_SQL)
        assert await compare_with_log(db) == []
        async with db.read() as conn:
            alerts = sorted(
                (await conn.execute(sa.select(fraud_alerts.c.wallet_id, fraud_alerts.c.rule))).all()
            )
        assert alerts == [("a", "LARGE_WITHDRAWAL"), ("a", "RAPID_WITHDRAWALS")]
    finally:
        await running.stop(grace=1)
