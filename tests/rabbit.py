"""RabbitMQ test helpers: a fresh vhost per test, broker inspection, a short outage.

Every test that touches RabbitMQ gets its own vhost (``rabbitmqctl add_vhost`` plus
permissions for the URL's user), deleted afterwards, so tests never see each
other's queues even when several runs share the broker. Registered as a pytest
plugin by ``tests/conftest.py``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from urllib.parse import quote, urlsplit

import pytest

AMQP_URL = os.environ.get("WALLET_TEST_AMQP_URL", "")
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
    rabbitmqctl("add_vhost", vhost)
    rabbitmqctl("set_permissions", "-p", vhost, _amqp_user(), ".*", ".*", ".*")
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
