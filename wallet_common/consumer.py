"""The generic consumer runner: exactly-once projections on an at-least-once bus.

A projection (analytics, fraud) only says how one decoded event changes its tables.
This module does the rest, the same way for every consumer:

1. decode the body by its ``type`` (undecodable -> :class:`PoisonMessageError`, the
   bus dead-letters it at once and the queue keeps flowing);
2. in ONE database transaction: insert the inbox row ``(consumer, message_id)``; if it
   was already there the event was applied before (a redelivery) and is skipped;
   otherwise ``projection.apply``; commit;
3. failpoint ``consumer.after_apply``; return, so the bus acks.

A crash anywhere before the commit leaves nothing behind (the message comes back); a
crash after it leaves the inbox row, so the redelivered copy is skipped: each event is
applied exactly once. Deliveries about the same wallet are handled one at a time in
this process, so rules that read a wallet's recent history (fraud windows) see a
consistent picture even when the bus runs handlers concurrently.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any, Protocol

import grpc
from google.protobuf.message import Message
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection

from wallet_common import events
from wallet_common.bus import (
    DEFAULT_MAX_ATTEMPTS,
    DEFAULT_PREFETCH,
    Delivery,
    EventBus,
    PoisonMessageError,
    get_bus,
)
from wallet_common.clock import utcnow
from wallet_common.db import Database, is_connection_error
from wallet_common.errors import UnavailableError
from wallet_common.failpoints import failpoint
from wallet_common.runtime import Runtime
from wallet_common.schema import inbox

log = logging.getLogger(__name__)

# Transient database trouble (connection lost, deadlock, lock timeout) is retried
# here, without spending the message's attempts: a database outage must not
# dead-letter healthy events.
TRANSIENT_RETRY_DELAYS = (0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 2.0, 2.0, 5.0, 5.0)
_TRANSIENT_SQLSTATES = {"40001", "40P01", "55P03", "57014"}


class Projection(Protocol):
    """What a consumer implements: its name (the inbox key), queue and one step."""

    consumer_name: str  # "analytics" | "fraud"
    queue: str  # events.ANALYTICS_QUEUE | events.FRAUD_QUEUE

    async def apply(self, conn: AsyncConnection, delivery: Delivery, message: Message) -> None:
        """Apply one event inside the transaction that also writes the inbox row."""
        ...


def is_transient(error: BaseException) -> bool:
    """Errors worth retrying as they are: the database was unreachable or busy."""
    if isinstance(error, UnavailableError):
        return True
    if isinstance(error, DBAPIError):
        sqlstate = getattr(error.orig, "sqlstate", None)
        if sqlstate in _TRANSIENT_SQLSTATES:
            return True
        if "database is locked" in str(error.orig):
            return True
    return is_connection_error(error)


async def record_inbox(conn: AsyncConnection, consumer: str, message_id: str) -> bool:
    """Insert the inbox row; False when it was already there (a duplicate delivery)."""
    values = {"consumer": consumer, "message_id": message_id, "processed_at": utcnow()}
    dialect: Any = postgresql if conn.dialect.name == "postgresql" else sqlite
    statement = (
        dialect.insert(inbox)
        .values(values)
        .on_conflict_do_nothing()
        .returning(inbox.c.message_id)  # rowcount is not reliable across drivers
    )
    result = await conn.execute(statement)
    return result.first() is not None


def wallet_key(message: Message) -> str | None:
    """The wallet an event is about (events.proto messages carry it in ``event``)."""
    if "event" in message.DESCRIPTOR.fields_by_name:
        event = message.event  # type: ignore[attr-defined]
        if event.wallet_id:
            return str(event.wallet_id)
    return None


class ConsumerRunner:
    """Handles deliveries for one projection (usable without a gRPC server, in tests)."""

    def __init__(self, db: Database, projection: Projection) -> None:
        self.db = db
        self.projection = projection
        self._locks: dict[str, asyncio.Lock] = {}
        self._lock_users: dict[str, int] = {}

    async def handle(self, delivery: Delivery) -> None:
        try:
            message = events.decode(delivery.message_type, delivery.body)
        except events.UndecodableMessageError as error:
            raise PoisonMessageError(str(error)) from error
        key = wallet_key(message)
        if key is None:
            await self._apply_with_retries(delivery, message)
            return
        lock = self._locks.setdefault(key, asyncio.Lock())
        self._lock_users[key] = self._lock_users.get(key, 0) + 1
        try:
            async with lock:
                await self._apply_with_retries(delivery, message)
        finally:
            self._lock_users[key] -= 1
            if self._lock_users[key] == 0:
                del self._lock_users[key]
                del self._locks[key]

    async def _apply_with_retries(self, delivery: Delivery, message: Message) -> None:
        for attempt, delay in enumerate((*TRANSIENT_RETRY_DELAYS, None), start=1):
            try:
                applied = await self._apply_once(delivery, message)
                break
            except Exception as error:
                if delay is None or not is_transient(error):
                    raise
                log.warning(
                    "%s: transient error applying %s (try %d), retrying: %s",
                    self.projection.consumer_name,
                    delivery.message_id,
                    attempt,
                    error,
                )
                await asyncio.sleep(delay)
        if applied:
            await failpoint("consumer.after_apply")

    async def _apply_once(self, delivery: Delivery, message: Message) -> bool:
        async with self.db.transaction() as conn:
            if not await record_inbox(conn, self.projection.consumer_name, delivery.message_id):
                log.debug("duplicate delivery of %s skipped", delivery.message_id)
                return False
            await self.projection.apply(conn, delivery, message)
        return True


class ConsumerComponent:
    """A :class:`~wallet_common.grpc_server.Component` that runs one projection."""

    def __init__(
        self,
        runtime: Runtime,
        projection: Projection,
        name: str,
        *,
        prefetch: int = DEFAULT_PREFETCH,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
    ) -> None:
        self.name = name
        self.runtime = runtime
        self.projection = projection
        self.runner = ConsumerRunner(runtime.db, projection)
        self.prefetch = prefetch
        self.max_attempts = max_attempts
        self._bus: EventBus | None = None

    def add_to_server(self, server: grpc.aio.Server) -> Sequence[str]:
        return ()

    async def start(self) -> None:
        bus = get_bus(self.runtime)
        await bus.start()
        self._bus = bus
        await bus.consume(
            self.projection.queue,
            self.runner.handle,
            prefetch=self.prefetch,
            max_attempts=self.max_attempts,
        )
        log.info("%s consuming %s", self.name, self.projection.queue)

    async def stop(self) -> None:
        bus, self._bus = self._bus, None
        if bus is None:
            return
        await bus.stop_consuming(self.projection.queue)
        await bus.close()


def consumer_component(
    runtime: Runtime,
    projection: Projection,
    name: str,
    *,
    prefetch: int = DEFAULT_PREFETCH,
    max_attempts: int = DEFAULT_MAX_ATTEMPTS,
) -> ConsumerComponent:
    """The component that consumes ``projection.queue`` from this process's bus."""
    return ConsumerComponent(
        runtime, projection, name, prefetch=prefetch, max_attempts=max_attempts
    )
