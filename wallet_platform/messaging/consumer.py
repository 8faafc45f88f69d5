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

Performance (docs/benchmarks.md): a batch writes all its inbox rows with ONE
multi-row statement, and a :class:`BatchProjection` applies the new events of the
batch together (on PostgreSQL analytics does both in one autocommit statement), so a
batch of 64 events costs one to a few round trips instead of ~130. Any failure of a
batch falls back to the one-event-per-transaction path above (the reference: both
must, and are tested to, give the same tables).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import grpc
import sqlalchemy as sa
from google.protobuf.message import Message
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection

from wallet_platform.clock import utcnow
from wallet_platform.errors import UnavailableError
from wallet_platform.failpoints import failpoint
from wallet_platform.messaging import events
from wallet_platform.messaging.bus import (
    DEFAULT_MAX_ATTEMPTS,
    Delivery,
    EventBus,
    PoisonMessageError,
    error_text,
)
from wallet_platform.messaging.factory import get_bus
from wallet_platform.observability.logs import log_context
from wallet_platform.runtime import Runtime
from wallet_platform.storage.database import Database, is_connection_error
from wallet_platform.storage.schema import inbox

log = logging.getLogger(__name__)

# Deliveries in flight per consumer: twice a group commit, so the next batch is
# already here while one is being written.
CONSUMER_PREFETCH = 128

# How long the first delivery of a burst waits for the rest before its batch is written.
BATCH_LINGER_SECONDS = 0.005

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


@runtime_checkable
class BatchProjection(Protocol):
    """A projection that can also apply a batch of new events at once.

    ``apply`` stays the one-event path (a single delivery, or the fallback after a
    failed batch); the batch path must give exactly the same tables.
    """

    consumer_name: str
    queue: str

    async def apply(self, conn: AsyncConnection, delivery: Delivery, message: Message) -> None:
        """Apply one event inside the transaction that also writes the inbox row."""
        ...

    def prepare(self, message: Message) -> Any:
        """Validate a decoded event when it is delivered (raise
        :class:`PoisonMessageError` for one that can never succeed) and return what
        :meth:`apply_prepared` needs, or None if the event changes nothing but its
        inbox row (such events cost a batch nothing beyond that row)."""
        ...

    async def apply_prepared(self, conn: AsyncConnection, work: Sequence[Any]) -> None:
        """Apply the prepared work of a batch's NEW events (inbox rows just written in
        this transaction), in arrival order."""
        ...

    # Optional (looked up with getattr), used on PostgreSQL only:
    #   async def record_and_apply(conn, consumer, message_ids, work) -> set[str]
    # the inbox rows of distinct ``message_ids`` and the projection change of the new
    # ones as ONE statement (run in autocommit); returns the ids that were new.


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


_RECORD_INBOX: dict[str, Any] = {}

# PostgreSQL: every inbox row of a batch in one statement, built once and bound with
# one array (the ids must be distinct: the runner drops a batch's repeats first).
# Also the first CTE of projections' one-statement batches (``record_and_apply``).
PG_INSERT_INBOX_MANY = (
    "INSERT INTO inbox (consumer, message_id, processed_at) "
    "SELECT :consumer, new.id, :processed_at "
    "FROM unnest(CAST(:message_ids AS varchar[])) AS new(id) "
    "ON CONFLICT DO NOTHING RETURNING message_id"
)
_PG_INSERT_INBOX_MANY = sa.text(PG_INSERT_INBOX_MANY)


async def record_inbox(conn: AsyncConnection, consumer: str, message_id: str) -> bool:
    """Insert the inbox row; False when it was already there (a duplicate delivery)."""
    statement = _RECORD_INBOX.get(conn.dialect.name)
    if statement is None:
        dialect: Any = postgresql if conn.dialect.name == "postgresql" else sqlite
        statement = (
            dialect.insert(inbox)
            .on_conflict_do_nothing()
            .returning(inbox.c.message_id)  # rowcount is not reliable across drivers
        )
        _RECORD_INBOX[conn.dialect.name] = statement
    values = {"consumer": consumer, "message_id": message_id, "processed_at": utcnow()}
    result = await conn.execute(statement, values)
    return result.first() is not None


async def record_inbox_many(
    conn: AsyncConnection, consumer: str, message_ids: Sequence[str]
) -> set[str]:
    """Insert the inbox rows of distinct ``message_ids``; returns those that were new.

    One statement on PostgreSQL; SQLite (the embedded default, not a hot path) writes
    them one by one in the caller's transaction.
    """
    if conn.dialect.name == "postgresql":
        result = await conn.execute(
            _PG_INSERT_INBOX_MANY,
            {"consumer": consumer, "message_ids": list(message_ids), "processed_at": utcnow()},
        )
        return {row[0] for row in result}
    return {mid for mid in message_ids if await record_inbox(conn, consumer, mid)}


# What the writer reports for each delivery: None (committed; ``applied`` says if it
# was new) or the error that kept it from committing.
Settle = Callable[[BaseException | None, bool], None]


@dataclass
class _Pending:
    delivery: Delivery
    message: Message
    work: Any  # BatchProjection.prepare's result (None: nothing but the inbox row)
    settle: Settle


class ConsumerRunner:
    """Handles deliveries for one projection (usable without a gRPC server, in tests).

    Group commit: deliveries that arrive together (the bus runs handlers
    concurrently, up to its prefetch) are applied by a single writer, in ONE
    transaction of up to ``batch_size`` events, each with its own inbox row; every
    handler returns once that transaction committed. A delivery repeated inside a
    batch (a redelivery of one still in flight) counts as a duplicate, as it would
    one by one. If anything in a batch fails, the batch is rolled back and its events
    are applied one per transaction, so a bad event fails alone and the others are
    unaffected. One writer per projection also means events are applied in arrival
    order, so rules that look at a wallet's recent history see a consistent picture.

    Two ways in: ``await handle(delivery)`` (any bus), or :meth:`submit` with a
    callback (the RabbitMQ bus: no task or future per message).
    """

    def __init__(self, db: Database, projection: Projection, *, batch_size: int = 64) -> None:
        self.db = db
        self.projection = projection
        self.batch_size = max(1, batch_size)
        self._batching = isinstance(projection, BatchProjection)
        self._queue: list[_Pending] = []
        self._writer: asyncio.Task[None] | None = None

    async def __call__(self, delivery: Delivery) -> None:
        """The runner is itself a bus handler (see ``submit`` for the callback form)."""
        await self.handle(delivery)

    async def handle(self, delivery: Delivery) -> None:
        """Apply one delivery (grouped with concurrent ones); returns once committed."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def settle(error: BaseException | None, _applied: bool) -> None:
            if future.done():
                return
            if error is None:
                future.set_result(None)
            else:
                future.set_exception(error)

        self.submit(delivery, settle)
        await asyncio.shield(future)

    def submit(self, delivery: Delivery, settle: Settle) -> None:
        """Queue ``delivery`` for the writer; ``settle`` is called once it committed
        (``error`` None) or failed. Undecodable or invalid deliveries raise
        :class:`PoisonMessageError` here, before anything is queued."""
        if not delivery.message_id:
            # The inbox key: without it exactly-once cannot be kept.
            raise PoisonMessageError("message has no message_id")
        try:
            message = events.decode(delivery.message_type, delivery.body)
        except events.UndecodableMessageError as error:
            raise PoisonMessageError(str(error)) from error
        work = self.projection.prepare(message) if self._batching else None  # type: ignore[attr-defined]
        self._queue.append(_Pending(delivery, message, work, settle))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write_loop(), name="consumer-writer")

    async def _write_loop(self) -> None:
        """Runs while deliveries wait; exits when the queue is empty."""
        batch: list[_Pending] = []
        try:
            # Let the rest of a burst of deliveries queue up: each batch is a commit
            # (and an ack frame), so a few milliseconds here save both per event.
            await asyncio.sleep(BATCH_LINGER_SECONDS if len(self._queue) < self.batch_size else 0)
            while self._queue:
                batch = self._queue[: self.batch_size]
                self._queue = self._queue[self.batch_size :]
                await self._apply_batch(batch)
                batch = []
        except BaseException as error:
            # Never leave a handler waiting forever (it would hold a prefetch slot).
            stranded, self._queue = [*batch, *self._queue], []
            failure = error if isinstance(error, Exception) else RuntimeError("writer stopped")
            for item in stranded:
                _settle(item, failure, False)
            raise

    async def _apply_batch(self, batch: list[_Pending]) -> None:
        # Even a batch of one goes this way first: on PostgreSQL it is one statement
        # instead of BEGIN, inbox row, projection change, COMMIT.
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
                await self._committed(item, applied)
            return
        for item in batch:
            try:
                applied = await self._apply_with_retries(item.delivery, item.message)
            except Exception as error:
                _settle(item, error, False)
            else:
                await self._committed(item, applied)

    async def _committed(self, item: _Pending, applied: bool) -> None:
        """Report a committed delivery (after the crash point between commit and ack)."""
        if applied:
            try:
                await failpoint("consumer.after_apply")
            except Exception as error:
                _settle(item, error, False)
                return
        _settle(item, None, applied)

    async def _apply_together(self, batch: list[_Pending]) -> list[bool]:
        """One transaction (or one statement) for the batch; True per newly applied."""
        unique: dict[str, _Pending] = {}
        for item in batch:
            unique.setdefault(item.delivery.message_id, item)
        new = await self._record_and_apply(list(unique.values()))
        results: list[bool] = []
        for item in batch:
            first = unique.pop(item.delivery.message_id, None)  # later repeats: duplicates
            results.append(first is item and item.delivery.message_id in new)
        return results

    async def _record_and_apply(self, items: list[_Pending]) -> set[str]:
        consumer = self.projection.consumer_name
        ids = [item.delivery.message_id for item in items]
        if not self._batching:
            async with self.db.transaction() as conn:
                new = await record_inbox_many(conn, consumer, ids)
                for item in items:
                    if item.delivery.message_id in new:
                        with log_context(**_trace_ids(item.message)):
                            await self.projection.apply(conn, item.delivery, item.message)
                return new
        work = [item.work for item in items]
        if self.db.is_postgres:
            # One statement is its own transaction: no BEGIN/COMMIT round trips.
            if all(w is None for w in work):
                # Nothing but inbox rows (e.g. deposits, for the fraud rules).
                async with self.db.autocommit() as conn:
                    return await record_inbox_many(conn, consumer, ids)
            one_statement = getattr(self.projection, "record_and_apply", None)
            if one_statement is not None:
                async with self.db.autocommit() as conn:
                    new_ids: set[str] = await one_statement(conn, consumer, ids, work)
                    return new_ids
        async with self.db.transaction() as conn:
            new = await record_inbox_many(conn, consumer, ids)
            todo = [w for mid, w in zip(ids, work, strict=True) if w is not None and mid in new]
            if todo:
                await self.projection.apply_prepared(conn, todo)  # type: ignore[attr-defined]
            return new

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


def _settle(item: _Pending, error: BaseException | None, applied: bool) -> None:
    """Report to the bus; a failing callback must not stop the writer."""
    try:
        item.settle(error, applied)
    except Exception:
        log.exception("settling %s failed", item.delivery.message_id)


class ConsumerComponent:
    """A :class:`~wallet_platform.server.builder.Component` that runs one projection."""

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
            self.runner,
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
