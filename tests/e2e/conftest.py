"""Fixtures shared by the saga crash tests: a real WalletService on a fresh PostgreSQL
database, and a handle on that database for the test's own reads."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.integration.test_saga_transfers import start_wallet_service
from wallet_platform.config import Settings
from wallet_platform.server.process import RunningServer
from wallet_platform.storage.database import Database


@pytest.fixture
async def wallet_server(pg_database_url_fresh: str) -> AsyncIterator[RunningServer]:
    server = await start_wallet_service(pg_database_url_fresh, pool_size=10)
    yield server
    await server.stop(grace=1)


@pytest.fixture
async def db(pg_database_url_fresh: str) -> AsyncIterator[Database]:
    database = Database.from_settings(Settings(database_url=pg_database_url_fresh))
    yield database
    await database.dispose()
