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
applied exactly once. Deliveries that arrive together are group-committed by one
writer (see :class:`ConsumerRunner`), which also keeps each projection's updates in
arrival order even though the bus runs handlers concurrently.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import grpc
from google.protobuf.message import Message
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection

from wallet_common import events
from wallet_common.bus import (
    DEFAULT_MAX_ATTEMPTS,
    Delivery,
    EventBus,
    PoisonMessageError,
    error_text,
    get_bus,
)
from wallet_common.clock import utcnow
from wallet_common.db import Database, is_connection_error
from wallet_common.errors import UnavailableError
from wallet_common.failpoints import failpoint
from wallet_common.logs import log_context
from wallet_common.runtime import Runtime
from wallet_common.schema import inbox

log = logging.getLogger(__name__)

# Deliveries in flight per consumer: twice a group commit, so the next batch is
# already here while one is being written.
CONSUMER_PREFETCH = 128

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


@dataclass
class _Pending:
    delivery: Delivery
    message: Message
    done: asyncio.Future[bool]


class ConsumerRunner:
    """Handles deliveries for one projection (usable without a gRPC server, in tests).

    Group commit: deliveries that arrive together (the bus runs handlers
    concurrently, up to its prefetch) are applied one after another by a single
    writer, in ONE transaction of up to ``batch_size`` events, each with its own inbox
    row; every handler returns once that transaction committed. If anything in a
    batch fails, the batch is rolled back and its events are applied one per
    transaction, so a bad event fails alone and the others are unaffected. One writer
    per projection also means events are applied in arrival order, so rules that look
    at a wallet's recent history see a consistent picture.
    """

    def __init__(self, db: Database, projection: Projection, *, batch_size: int = 64) -> None:
        self.db = db
        self.projection = projection
        self.batch_size = max(1, batch_size)
        self._queue: list[_Pending] = []
        self._writer: asyncio.Task[None] | None = None

    async def handle(self, delivery: Delivery) -> None:
        if not delivery.message_id:
            # The inbox key: without it exactly-once cannot be kept.
            raise PoisonMessageError("message has no message_id")
        try:
            message = events.decode(delivery.message_type, delivery.body)
        except events.UndecodableMessageError as error:
            raise PoisonMessageError(str(error)) from error
        pending = _Pending(delivery, message, asyncio.get_running_loop().create_future())
        self._queue.append(pending)
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write_loop(), name="consumer-writer")
        if await asyncio.shield(pending.done):
            await failpoint("consumer.after_apply")

    async def _write_loop(self) -> None:
        """Runs while deliveries wait; exits when the queue is empty."""
        batch: list[_Pending] = []
        try:
            await asyncio.sleep(0)  # let the rest of a burst of deliveries queue up
            while self._queue:
                batch = self._queue[: self.batch_size]
                self._queue = self._queue[self.batch_size :]
                await self._apply_batch(batch)
        except BaseException as error:
            # Never leave a handler waiting forever (it would hold a prefetch slot).
            stranded, self._queue = [*batch, *self._queue], []
            failure = error if isinstance(error, Exception) else RuntimeError("writer stopped")
            for item in stranded:
                _fail(item.done, failure)
            raise

    async def _apply_batch(self, batch: list[_Pending]) -> None:
        if len(batch) > 1:
            try:
                results = await self._apply_together(batch)
            except Exception as error:
                log.info(
                    "%s: batch of %d failed (%s); applying one by one",
                    self.projection.consumer_name,
                    len(batch),
                    error_text(error),
                )
            else:
                for item, applied in zip(batch, results, strict=True):
                    _resolve(item.done, applied)
                return
        for item in batch:
            try:
                applied = await self._apply_with_retries(item.delivery, item.message)
            except Exception as error:
                _fail(item.done, error)
            else:
                _resolve(item.done, applied)

    async def _apply_together(self, batch: list[_Pending]) -> list[bool]:
        results: list[bool] = []
        async with self.db.transaction() as conn:
            for item in batch:
                results.append(await self._apply_in(conn, item.delivery, item.message))
        return results

    async def _apply_with_retries(self, delivery: Delivery, message: Message) -> bool:
        """One event in its own transaction; transient database errors are retried."""
        for attempt, delay in enumerate((*TRANSIENT_RETRY_DELAYS, None), start=1):
            try:
                async with self.db.transaction() as conn:
                    return await self._apply_in(conn, delivery, message)
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
        raise AssertionError("unreachable")

    async def _apply_in(self, conn: AsyncConnection, delivery: Delivery, message: Message) -> bool:
        """Inbox row + projection change; False (nothing done) for a duplicate."""
        if not await record_inbox(conn, self.projection.consumer_name, delivery.message_id):
            log.debug("duplicate delivery of %s skipped", delivery.message_id)
            return False
        with log_context(**_trace_ids(message)):
            await self.projection.apply(conn, delivery, message)
        return True


def _trace_ids(message: Message) -> dict[str, str | None]:
    """The audit and transfer ids a wallet event carries, for the consumer's log lines.

    They let one audit id lead from the write call through the ledger to what each
    consumer did with the event.
    """
    event = getattr(message, "event", None)
    if event is None:
        return {}
    return {"audit_id": event.audit_id or None, "transfer_id": event.transfer_id or None}


def _resolve(future: asyncio.Future[bool], value: bool) -> None:
    if not future.done():
        future.set_result(value)


def _fail(future: asyncio.Future[bool], error: BaseException) -> None:
    if not future.done():
        future.set_exception(error)


class ConsumerComponent:
    """A :class:`~wallet_common.grpc_server.Component` that runs one projection."""

    def __init__(
        self,
        runtime: Runtime,
        projection: Projection,
        name: str,
        *,
        prefetch: int = CONSUMER_PREFETCH,
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
    prefetch: int = CONSUMER_PREFETCH,
    max_attempts: int = DEFAULT_MAX_ATTEMPTS,
) -> ConsumerComponent:
    """The component that consumes ``projection.queue`` from this process's bus."""
    return ConsumerComponent(
        runtime, projection, name, prefetch=prefetch, max_attempts=max_attempts
    )
