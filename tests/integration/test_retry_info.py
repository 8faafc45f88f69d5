"""UNAVAILABLE carries a RetryInfo, and the client waits at least that long.

A wallet service runs in this process and reaches PostgreSQL only through a
:class:`~tests.tcp_proxy.TcpProxy`. With the link cut, a call fails ``UNAVAILABLE``
with ErrorInfo ``UNAVAILABLE`` and a ``google.rpc.RetryInfo`` of
``UnavailableError.retry_after``; a client whose own backoff is zero still waits that
long between its attempts; once the link is healed the same client gets its answer.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

import wallet_client as wc
from tests.conftest import requires_postgres
from tests.e2e.test_partition_healing import target_of, through
from tests.tcp_proxy import TcpProxy
from wallet_platform.config import Settings
from wallet_platform.errors import UnavailableError
from wallet_platform.server.process import RunningServer, start_server
from wallet_service.bootstrap import build_components

pytestmark = [requires_postgres]

# The client's own backoff is zero: any wait between attempts is the server's RetryInfo.
NO_OWN_BACKOFF = wc.RetryPolicy(
    max_attempts=3, initial_backoff=0.0, max_backoff=0.0, total_timeout=30
)


@pytest.fixture
async def wallet_behind_proxy(
    pg_database_url_fresh: str,
) -> AsyncIterator[tuple[TcpProxy, RunningServer]]:
    host, port = target_of(pg_database_url_fresh)
    proxy = TcpProxy((host, port or 5432))
    await proxy.start()
    settings = Settings(
        database_url=through(pg_database_url_fresh, proxy),
        listen="127.0.0.1:0",
        log_format="console",
    )
    running = await start_server(settings, build_components, role="wallet-service")
    try:
        yield proxy, running
    finally:
        await proxy.heal()
        await running.stop(grace=1)
        await proxy.stop()


async def test_unavailable_database_carries_retry_info_and_the_client_honours_it(
    wallet_behind_proxy: tuple[TcpProxy, RunningServer],
) -> None:
    proxy, running = wallet_behind_proxy

    def open_wallet() -> None:
        with wc.WalletClient(running.target, timeout=5) as client:
            client.create_wallet("USD", wallet_id="alice")
            client.deposit("alice", 700)

    await asyncio.to_thread(open_wallet)
    await proxy.cut()

    def refused_once() -> wc.WalletError:
        with (
            wc.WalletClient(running.target, timeout=5, retry=wc.NO_RETRIES) as client,
            pytest.raises(wc.UnavailableError) as raised,
        ):
            client.get_wallet("alice")
        return raised.value

    error = await asyncio.to_thread(refused_once)
    assert error.reason == "UNAVAILABLE" and "database unavailable" in error.message
    assert error.retry_delay == UnavailableError.retry_after == 1.0

    def refused_with_retries() -> tuple[wc.WalletError, float]:
        began = time.monotonic()
        with (
            wc.WalletClient(running.target, timeout=5, retry=NO_OWN_BACKOFF) as client,
            pytest.raises(wc.UnavailableError) as raised,
        ):
            client.get_wallet("alice")
        return raised.value, time.monotonic() - began

    error, took = await asyncio.to_thread(refused_with_retries)
    assert error.attempts == 3
    assert took >= 2 * UnavailableError.retry_after  # two waits of the server's delay

    await proxy.heal()

    def answered() -> int:
        with wc.WalletClient(running.target, timeout=5, retry=NO_OWN_BACKOFF) as client:
            return client.get_wallet("alice").wallet.balance

    assert await asyncio.to_thread(answered) == 700
