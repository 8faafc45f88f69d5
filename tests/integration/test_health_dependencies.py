"""Health follows the database and the broker; liveness does not.

An analytics worker (a RabbitMQ consumer and AnalyticsService) runs in this process and
reaches PostgreSQL and RabbitMQ only through :class:`~tests.tcp_proxy.TcpProxy`
instances. Cutting or stalling either link turns the overall service ``""`` and
``wallet.v1.AnalyticsService`` NOT_SERVING (seen on a health ``Watch`` stream, the
signal the test waits for) while ``liveness`` stays SERVING; healing the link brings
SERVING back.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from analytics_worker.bootstrap import build_components
from tests.conftest import requires_postgres, requires_rabbitmq
from tests.e2e.test_partition_healing import target_of, through
from tests.tcp_proxy import TcpProxy
from wallet_platform.config import Settings
from wallet_platform.server.process import start_server
from wallet_platform.server.readiness import (
    LIVENESS_SERVICE,
    PROBE_INTERVAL_SECONDS,
    PROBE_TIMEOUT_SECONDS,
)

pytestmark = [requires_postgres, requires_rabbitmq]

SERVICE = "wallet.v1.AnalyticsService"
Status = health_pb2.HealthCheckResponse
# A cut is seen at the next probe round; a stalled database after the probe timeout;
# a stalled broker once the bus's own watchdog gives up on it (about 7 s).
FLIP_LIMIT_SECONDS = 20.0
assert FLIP_LIMIT_SECONDS > 3 * (PROBE_INTERVAL_SECONDS + PROBE_TIMEOUT_SECONDS)


class Watcher:
    """The statuses a health ``Watch`` stream on ``service`` reports, in order."""

    def __init__(self, channel: grpc.aio.Channel, service: str) -> None:
        self.stub = health_pb2_grpc.HealthStub(channel)
        self.call: Any = self.stub.Watch(health_pb2.HealthCheckRequest(service=service))

    async def next_is(self, status: int) -> None:
        """Wait for the next change and check it is ``status``."""
        response = await asyncio.wait_for(self.call.read(), FLIP_LIMIT_SECONDS)
        assert Status.ServingStatus.Name(response.status) == Status.ServingStatus.Name(status)


@pytest.fixture
async def worker(
    pg_database_url_fresh: str, amqp_url: str
) -> AsyncIterator[tuple[dict[str, TcpProxy], grpc.aio.Channel]]:
    pg_host, pg_port = target_of(pg_database_url_fresh)
    amqp_host, amqp_port = target_of(amqp_url)
    proxies = {
        "pg": TcpProxy((pg_host, pg_port or 5432)),
        "amqp": TcpProxy((amqp_host, amqp_port or 5672)),
    }
    for proxy in proxies.values():
        await proxy.start()
    settings = Settings(
        database_url=through(pg_database_url_fresh, proxies["pg"]),
        amqp_url=through(amqp_url, proxies["amqp"]),
        listen="127.0.0.1:0",
        log_format="console",
    )
    running = await start_server(settings, build_components, role="analytics-worker")
    channel = grpc.aio.insecure_channel(running.target)
    try:
        yield proxies, channel
    finally:
        await channel.close()
        for proxy in proxies.values():
            await proxy.heal()
        await running.stop(grace=1)
        for proxy in proxies.values():
            await proxy.stop()


async def check(channel: grpc.aio.Channel, service: str) -> str:
    stub = health_pb2_grpc.HealthStub(channel)
    response = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
    return str(Status.ServingStatus.Name(response.status))


async def expect_outage(channel: grpc.aio.Channel, overall: Watcher, own: Watcher) -> None:
    await overall.next_is(Status.NOT_SERVING)
    await own.next_is(Status.NOT_SERVING)
    assert await check(channel, LIVENESS_SERVICE) == "SERVING"


async def expect_recovery(channel: grpc.aio.Channel, overall: Watcher, own: Watcher) -> None:
    await overall.next_is(Status.SERVING)
    await own.next_is(Status.SERVING)
    assert await check(channel, LIVENESS_SERVICE) == "SERVING"


@pytest.mark.parametrize("link", ["pg", "amqp"])
async def test_a_cut_link_flips_readiness_and_back(worker, link: str) -> None:
    proxies, channel = worker
    overall, own = Watcher(channel, ""), Watcher(channel, SERVICE)
    await overall.next_is(Status.SERVING)  # Watch sends the current status first
    await own.next_is(Status.SERVING)

    await proxies[link].cut()
    await expect_outage(channel, overall, own)
    assert await check(channel, "") == "NOT_SERVING"

    await proxies[link].heal()
    await expect_recovery(channel, overall, own)
    assert await check(channel, "") == "SERVING"


@pytest.mark.parametrize("link", ["pg", "amqp"])
async def test_a_stalled_link_flips_readiness_and_back(worker, link: str) -> None:
    """No byte gets through and nothing is closed: only the probe's timeout (the
    database) or the bus's watchdog (the broker) can tell."""
    proxies, channel = worker
    overall, own = Watcher(channel, ""), Watcher(channel, SERVICE)
    await overall.next_is(Status.SERVING)
    await own.next_is(Status.SERVING)

    proxies[link].stall()
    await expect_outage(channel, overall, own)

    await proxies[link].heal()
    await expect_recovery(channel, overall, own)
