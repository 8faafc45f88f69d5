"""RabbitMQ test helpers: a fresh vhost per test, broker inspection, a short outage.

Every test that touches RabbitMQ gets its own vhost (``rabbitmqctl add_vhost`` plus
permissions for the URL's user), deleted afterwards, so tests never see each
other's queues even when several runs share the broker. Registered as a pytest
plugin by ``tests/conftest.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from urllib.parse import quote, urlsplit

import pytest

from wallet_platform.config import Settings
from wallet_platform.messaging.bus import EventBus
from wallet_platform.messaging.inprocess import InProcessBus
from wallet_platform.messaging.rabbit import RabbitBus
from wallet_platform.storage.database import Database
from wallet_platform.storage.migrate import upgrade

AMQP_URL = os.environ.get("WALLET_TEST_AMQP_URL", "")
PG_URL = os.environ.get("WALLET_TEST_DATABASE_URL", "")
RUN_ID = uuid.uuid4().hex[:8]

RABBITMQCTL = shutil.which("rabbitmqctl") or "rabbitmqctl"


def rabbitmqctl(*args: str, timeout: float = 60) -> str:
    """Run rabbitmqctl and return its stdout (raises on failure)."""
    result = subprocess.run(
        [RABBITMQCTL, *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    if result.returncode != 0:
        raise RuntimeError(f"rabbitmqctl {' '.join(args)} failed: {result.stderr.strip()}")
    return result.stdout


def vhost_url(vhost: str) -> str:
    """``WALLET_TEST_AMQP_URL`` pointed at ``vhost``."""
    base = AMQP_URL.rstrip("/")
    scheme_host = base.split("/", 3)
    root = "/".join(scheme_host[:3])
    return f"{root}/{quote(vhost, safe='')}"


def _amqp_user() -> str:
    return urlsplit(AMQP_URL).username or "guest"


def create_vhost(vhost: str) -> str:
    # Retried: another run's broker-outage test may have the broker stopped briefly.
    for attempt in range(30):
        try:
            rabbitmqctl("add_vhost", vhost)
            rabbitmqctl("set_permissions", "-p", vhost, _amqp_user(), ".*", ".*", ".*")
            break
        except RuntimeError:
            if attempt == 29:
                raise
            time.sleep(1)
    return vhost_url(vhost)


def delete_vhost(vhost: str) -> None:
    with contextlib.suppress(Exception):
        rabbitmqctl("delete_vhost", vhost)


def list_queues(vhost: str) -> dict[str, dict[str, int]]:
    """``rabbitmqctl list_queues -p VHOST name messages consumers`` as a dict."""
    out = rabbitmqctl(
        "list_queues", "-p", vhost, "name", "messages", "consumers", "--formatter", "json", "-q"
    )
    rows = json.loads(out or "[]")
    return {
        row["name"]: {"messages": int(row["messages"]), "consumers": int(row["consumers"])}
        for row in rows
    }


def queue_consumers(vhost: str) -> dict[str, int]:
    return {name: info["consumers"] for name, info in list_queues(vhost).items()}


def queue_depths(vhost: str) -> dict[str, int]:
    return {name: info["messages"] for name, info in list_queues(vhost).items()}


def wait_until(predicate, timeout: float = 30.0, interval: float = 0.1, what: str = "condition"):
    """Poll ``predicate`` until it returns a truthy value (which is returned)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}; last value {value!r}")
        time.sleep(interval)


@contextlib.contextmanager
def broker_stopped() -> Iterator[None]:
    """Stop the RabbitMQ application (ALL vhosts on this machine!) and always restart it.

    Keep the body short: other test runs on this machine share the broker.
    """
    rabbitmqctl("stop_app")
    try:
        yield
    finally:
        rabbitmqctl("start_app", timeout=120)
        rabbitmqctl("await_startup", timeout=120)


@pytest.fixture
def rabbit_vhost() -> Iterator[str]:
    """The name of a fresh vhost (deleted after the test)."""
    if not AMQP_URL:
        pytest.skip("WALLET_TEST_AMQP_URL not set")
    vhost = f"wallet_test_{RUN_ID}_{uuid.uuid4().hex[:10]}"
    create_vhost(vhost)
    try:
        yield vhost
    finally:
        delete_vhost(vhost)


@pytest.fixture
def amqp_url(rabbit_vhost: str) -> str:
    """An AMQP URL on a fresh vhost of the test RabbitMQ."""
    return vhost_url(rabbit_vhost)


# --- one fixture for "every bus": in-process on SQLite / PostgreSQL, and RabbitMQ -------

requires_postgres = pytest.mark.skipif(not PG_URL, reason="WALLET_TEST_DATABASE_URL not set")
requires_rabbitmq = pytest.mark.skipif(not AMQP_URL, reason="WALLET_TEST_AMQP_URL not set")


@dataclass
class BusUnderTest:
    """A started bus, its database and the settings a tool (walletctl dlq) would get."""

    kind: str
    bus: EventBus
    db: Database
    settings: Settings
    vhost: str | None = None


@contextlib.asynccontextmanager
async def _bus_under_test(request, tmp_path, kind: str) -> AsyncIterator[BusUnderTest]:
    rabbit = kind.startswith("rabbit")
    if kind == "inprocess-sqlite" or (rabbit and not PG_URL):
        db_url = f"sqlite:///{tmp_path / 'bus.db'}"
        await asyncio.to_thread(upgrade, db_url)
    else:
        db_url = request.getfixturevalue("pg_database_url_fresh")
    vhost = None
    if rabbit:
        vhost = request.getfixturevalue("rabbit_vhost")
        settings = Settings(
            database_url=db_url,
            amqp_url=vhost_url(vhost),
            amqp_queue_type="classic" if kind == "rabbit-classic" else "quorum",
            amqp_envelopes=kind == "rabbit-envelopes",
            listen="127.0.0.1:0",
        )
    else:
        settings = Settings(database_url=db_url, listen="127.0.0.1:0")
    db = Database.from_settings(settings)
    bus: EventBus = (
        RabbitBus(
            settings.amqp_url,
            queue_type=settings.amqp_queue_type,
            envelope_max=settings.amqp_envelope_max if settings.amqp_envelopes else 0,
        )
        if settings.amqp_url
        else InProcessBus(db)
    )
    await bus.start()
    try:
        yield BusUnderTest(kind, bus, db, settings, vhost)
    finally:
        await bus.close()
        await db.dispose()


@pytest.fixture(
    params=[
        pytest.param("inprocess-sqlite", id="inprocess-sqlite"),
        pytest.param("inprocess-postgres", id="inprocess-postgres", marks=requires_postgres),
        pytest.param("rabbit", id="rabbit", marks=requires_rabbitmq),
        pytest.param("rabbit-classic", id="rabbit-classic", marks=requires_rabbitmq),
        pytest.param("rabbit-envelopes", id="rabbit-envelopes", marks=requires_rabbitmq),
    ]
)
async def bus_under_test(request, tmp_path) -> AsyncIterator[BusUnderTest]:
    """Each bus kind in turn; RabbitMQ (quorum queues, classic ones, and quorum queues
    with the relay's envelopes on) runs on its own vhost with PostgreSQL if set."""
    async with _bus_under_test(request, tmp_path, request.param) as but:
        yield but


@pytest.fixture
async def rabbit_bus_under_test(request, tmp_path) -> AsyncIterator[BusUnderTest]:
    """RabbitMQ on a fresh vhost, with PostgreSQL when configured (else SQLite)."""
    if not AMQP_URL:
        pytest.skip("WALLET_TEST_AMQP_URL not set")
    async with _bus_under_test(request, tmp_path, "rabbit") as but:
        yield but


@pytest.fixture
async def pg_bus_under_test(request, tmp_path) -> AsyncIterator[BusUnderTest]:
    """The in-process bus on a fresh PostgreSQL database."""
    if not PG_URL:
        pytest.skip("WALLET_TEST_DATABASE_URL not set")
    async with _bus_under_test(request, tmp_path, "inprocess-postgres") as but:
        yield but
