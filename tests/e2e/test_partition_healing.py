"""A network partition between the workers and RabbitMQ / PostgreSQL heals on its own.

``analytics-worker`` and ``fraud-worker`` run as real processes that reach RabbitMQ
and PostgreSQL only through :class:`~tests.tcp_proxy.TcpProxy` instances (in the
test process); ``wallet-service`` (with the outbox relay) runs as a process too and
reaches RabbitMQ through such a proxy (its database directly, so deposits keep
flowing). Under a steady
load of deposits and withdrawals, every proxy runs the schedule seen in production:

    stall 15 s (connections open, no byte gets through: longer than the 5 s AMQP
    heartbeat), cut 6 s (every connection closed, new ones refused), stall 25 s
    (reconnects are accepted and then held: longer than RabbitMQ's 10 s handshake
    timeout), then healed.

A second test takes the partition that never heals for the connections it caught
(a middlebox that lost its connection state: those flows stay silent, never closed,
while new connections pass): every process must notice on its own and move to a
fresh connection.

Within 30 s of the heal both queues have a consumer again (``rabbitmqctl
list_queues name consumers``) and both projections have applied every event of the
log; nothing was lost (the analytics projection equals the log's aggregates, every
event has one inbox row per consumer, every withdrawal was judged, the outbox is
drained) and nothing was applied twice (the aggregates would differ, fraud would
have judged more withdrawals than the log holds); nothing was dead-lettered; the
processes healed in place (none restarted).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import grpc
import pytest
import sqlalchemy as sa

from analytics_worker.rebuild import compare_with_log, count_unapplied
from tests.conftest import requires_postgres, requires_rabbitmq
from tests.e2e.test_saga_recovery import free_port
from tests.rabbit import queue_consumers
from tests.tcp_proxy import TcpProxy
from wallet.v1 import wallet_pb2, wallet_pb2_grpc
from wallet_platform import topology
from wallet_platform.config import Settings
from wallet_platform.messaging import dlq
from wallet_platform.storage.database import Database
from wallet_platform.storage.schema import fraud_withdrawals, inbox, outbox, wallet_events

pytestmark = [pytest.mark.slow, requires_postgres, requires_rabbitmq]

SCHEDULE = (("stall", 15.0), ("cut", 6.0), ("stall", 25.0))
RECOVERY_LIMIT_SECONDS = 30.0
SERVICES = {
    "wallet": "wallet_service.main",
    "analytics": "analytics_worker.main",
    "fraud": "fraud_worker.main",
}


def through(url: str, proxy: TcpProxy) -> str:
    """``url`` with its host and port replaced by the proxy's."""
    parts = urlsplit(url)
    netloc = parts.netloc.rsplit("@", 1)
    credentials = netloc[0] + "@" if len(netloc) == 2 else ""
    return urlunsplit(parts._replace(netloc=f"{credentials}127.0.0.1:{proxy.port}"))


def target_of(url: str) -> tuple[str, int]:
    parts = urlsplit(url.replace("postgresql+psycopg", "postgresql"))
    return parts.hostname or "127.0.0.1", parts.port or 0


@pytest.fixture
async def proxies(pg_database_url_fresh: str, amqp_url: str) -> AsyncIterator[dict[str, TcpProxy]]:
    pg_target = target_of(pg_database_url_fresh)
    amqp_target = target_of(amqp_url)
    made = {
        "amqp-relay": TcpProxy((amqp_target[0], amqp_target[1] or 5672)),
        "amqp-workers": TcpProxy((amqp_target[0], amqp_target[1] or 5672)),
        "pg-workers": TcpProxy((pg_target[0], pg_target[1] or 5432)),
    }
    for proxy in made.values():
        await proxy.start()
    try:
        yield made
    finally:
        for proxy in made.values():
            await proxy.stop()


def start(
    name: str, database_url: str, amqp_url: str, log: Path, listen: str = "127.0.0.1:0"
) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "WALLET_DATABASE_URL": database_url,
        "WALLET_AMQP_URL": amqp_url,
        "WALLET_LISTEN": listen,
        "WALLET_FRAUD_LARGE_WITHDRAWAL": "500",
        "WALLET_LOG_LEVEL": "INFO",
        "WALLET_LOG_FORMAT": "console",
        "WALLET_FAILPOINTS": "",
    }
    out = open(log, "wb")  # noqa: SIM115
    return subprocess.Popen([sys.executable, "-m", SERVICES[name]], env=env, stdout=out, stderr=out)


async def consumers_on_both_queues(vhost: str) -> bool:
    try:
        found = await asyncio.to_thread(queue_consumers, vhost)
    except Exception:
        return False
    return all(found.get(queue, 0) >= 1 for queue in topology.QUEUES)


async def unapplied(db: Database) -> dict[str, int]:
    """Events of the log without an inbox row, per consumer (plus outbox not yet sent)."""
    async with db.read() as conn:
        result: dict[str, int] = {}
        for consumer in ("analytics", "fraud"):
            applied = sa.exists().where(
                inbox.c.consumer == consumer, inbox.c.message_id == wallet_events.c.event_id
            )
            query = sa.select(sa.func.count()).select_from(wallet_events).where(~applied)
            result[consumer] = int((await conn.execute(query)).scalar_one())
        pending = sa.select(sa.func.count()).where(outbox.c.status != "published")
        result["outbox"] = int((await conn.execute(pending)).scalar_one())
    return result


async def wait_for(predicate: Callable[[], Awaitable[object]], limit: float) -> float | None:
    """Seconds until ``predicate()`` held (polled), or None after ``limit``."""
    started = time.monotonic()
    while time.monotonic() - started < limit:
        if await predicate():
            return time.monotonic() - started
        await asyncio.sleep(0.25)
    return None


@dataclass
class Platform:
    """The processes behind the proxies, the load, and what the test reports."""

    target: str
    db: Database
    settings: Settings
    vhost: str
    proxies: dict[str, TcpProxy]
    procs: list[subprocess.Popen[bytes]]
    sent: dict[str, int] = field(default_factory=lambda: {"ok": 0, "failed": 0})
    stop_load: asyncio.Event = field(default_factory=asyncio.Event)
    report: list[str] = field(default_factory=list)

    def note(self, text: str) -> None:
        self.report.append(f"{datetime.now().strftime('%H:%M:%S.%f')[:-3]} {text}")


async def keep_loading(
    platform: Platform, stub: wallet_pb2_grpc.WalletServiceStub, wallet_id: str
) -> None:
    """Deposits, and a withdrawal now and then (some large: fraud alerts)."""
    step = 0
    while not platform.stop_load.is_set():
        step += 1
        request_id = uuid.uuid4().hex
        try:
            if step % 5 == 0:
                amount = 600 if step % 50 == 0 else 3
                await stub.Withdraw(
                    wallet_pb2.WithdrawRequest(
                        wallet_id=wallet_id, amount=amount, request_id=request_id
                    ),
                    timeout=10,
                )
            else:
                await stub.Deposit(
                    wallet_pb2.DepositRequest(
                        wallet_id=wallet_id, amount=100, request_id=request_id
                    ),
                    timeout=10,
                )
            platform.sent["ok"] += 1
        except grpc.aio.AioRpcError:
            platform.sent["failed"] += 1
        await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def platform_under_load(
    pg_url: str, amqp_url: str, vhost: str, proxies: dict[str, TcpProxy], tmp_path: Path
) -> AsyncIterator[Platform]:
    """wallet-service, analytics-worker and fraud-worker behind the proxies, consuming,
    with four wallets under load; everything stopped (and the workers' connection
    events printed) afterwards."""
    worker_db = through(pg_url, proxies["pg-workers"])
    worker_amqp = through(amqp_url, proxies["amqp-workers"])
    logs = {name: tmp_path / f"{name}.log" for name in SERVICES}
    target = f"127.0.0.1:{free_port()}"
    procs = [
        start("wallet", pg_url, through(amqp_url, proxies["amqp-relay"]), logs["wallet"], target)
    ]
    procs += [start(name, worker_db, worker_amqp, logs[name]) for name in ("analytics", "fraud")]
    settings = Settings(database_url=pg_url, amqp_url=amqp_url)
    platform = Platform(target, Database.from_settings(settings), settings, vhost, proxies, procs)
    writers: list[asyncio.Task[None]] = []
    try:
        assert await wait_for(lambda: consumers_on_both_queues(vhost), 60) is not None
        async with grpc.aio.insecure_channel(target) as channel:
            await asyncio.wait_for(channel.channel_ready(), 60)
            stub = wallet_pb2_grpc.WalletServiceStub(channel)
            for i in range(4):
                wallet_id = f"part-{i}-{uuid.uuid4().hex[:6]}"
                request = wallet_pb2.CreateWalletRequest(
                    wallet_id=wallet_id, currency="USD", request_id=uuid.uuid4().hex
                )
                await stub.CreateWallet(request)
                writers.append(asyncio.create_task(keep_loading(platform, stub, wallet_id)))
            await asyncio.sleep(3)  # flowing before anything breaks
            yield platform
            platform.stop_load.set()
            await asyncio.gather(*writers)
    finally:
        platform.stop_load.set()
        for task in writers:
            task.cancel()
        await platform.db.dispose()
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in procs:  # without blocking the loop: the proxies run on it
            try:
                await asyncio.to_thread(proc.wait, 20)
            except subprocess.TimeoutExpired:
                proc.kill()
                await asyncio.to_thread(proc.wait)
        print("\n".join(platform.report))
        for name, path in logs.items():
            lines = path.read_text(errors="replace").splitlines()
            print(f"--- {name} ({len(lines)} log lines), the last 60:")
            print("\n".join(line[:300] for line in lines[-60:]))


async def recovered(platform: Platform, healed: float) -> None:
    """Within 30 s of ``healed`` (monotonic): consumers on both queues, every event
    applied by both consumers, the outbox drained (the load keeps running for the
    first 5 s); then nothing lost, nothing twice, nothing dead-lettered."""
    back = await wait_for(lambda: consumers_on_both_queues(platform.vhost), RECOVERY_LIMIT_SECONDS)
    platform.note(f"consumers on both queues {back and round(back, 1)}s after the heal")
    await asyncio.sleep(max(0.0, 5 - (time.monotonic() - healed)))
    platform.stop_load.set()
    await asyncio.sleep(0.2)  # the last requests in flight
    platform.note(f"load stopped, requests {platform.sent}")

    async def caught_up() -> bool:
        return not any((await unapplied(platform.db)).values())

    limit = RECOVERY_LIMIT_SECONDS - (time.monotonic() - healed)
    done = await wait_for(caught_up, max(limit, 0.0))
    platform.note(f"caught up: {done is not None}, {time.monotonic() - healed:.1f}s after the heal")
    assert back is not None, await unapplied(platform.db)
    assert done is not None, await unapplied(platform.db)
    assert platform.sent["failed"] == 0  # deposits never depended on the workers' links

    db = platform.db
    assert await compare_with_log(db) == []
    assert await count_unapplied(db) == 0
    async with db.read() as conn:

        async def count(query: Any) -> int:
            return int((await conn.execute(query)).scalar_one())

        events = await count(sa.select(sa.func.count()).select_from(wallet_events))
        withdrawals = await count(
            sa.select(sa.func.count())
            .select_from(wallet_events)
            .where(wallet_events.c.type == "funds_withdrawn")
        )
        judged = await count(sa.select(sa.func.count()).select_from(fraud_withdrawals))
        rows = await conn.execute(
            sa.select(inbox.c.consumer, sa.func.count())
            .where(inbox.c.message_id.in_(sa.select(wallet_events.c.event_id)))
            .group_by(inbox.c.consumer)
        )
        per_consumer = {consumer: int(number) for consumer, number in rows}
    assert per_consumer == {"analytics": events, "fraud": events}
    assert judged == withdrawals > 0
    dead = await dlq.count_dead_letters(platform.settings)
    assert dead == {queue: 0 for queue in topology.QUEUES}
    for proc in platform.procs:
        assert proc.poll() is None  # healed in place, not by a restart


@pytest.fixture
async def platform(
    pg_database_url_fresh: str,
    amqp_url: str,
    rabbit_vhost: str,
    proxies: dict[str, TcpProxy],
    tmp_path: Path,
) -> AsyncIterator[Platform]:
    async with platform_under_load(
        pg_database_url_fresh, amqp_url, rabbit_vhost, proxies, tmp_path
    ) as running:
        yield running


async def test_workers_consume_again_within_30s_of_a_healed_partition(platform: Platform) -> None:
    for action, seconds in SCHEDULE:
        for proxy in platform.proxies.values():
            if action == "stall":
                proxy.stall()
            else:
                await proxy.cut()
        platform.note(f"{action} {seconds:.0f}s")
        await asyncio.sleep(seconds)
    for proxy in platform.proxies.values():
        await proxy.heal()
    platform.note(f"healed; requests {platform.sent}")
    await recovered(platform, time.monotonic())


async def test_connections_left_silent_by_a_partition_are_replaced_within_seconds(
    platform: Platform,
) -> None:
    for proxy in platform.proxies.values():
        proxy.stall()
    platform.note("stall 3s")
    await asyncio.sleep(3)
    for proxy in platform.proxies.values():
        proxy.forget()
    platform.note(f"healed for new connections only; requests {platform.sent}")
    await recovered(platform, time.monotonic())
