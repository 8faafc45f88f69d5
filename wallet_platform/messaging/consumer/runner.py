"""The generic consumer runner: exactly-once projections on an at-least-once bus.

A projection (:mod:`~wallet_platform.messaging.consumer.projection`) only says what
a delivery means and how its store applies it. This module does the rest, the same
way for every consumer:

1. ``projection.translate`` at delivery (no message id, or a message that can never
   be applied -> :class:`PoisonMessageError`: the bus dead-letters it at once and the
   queue keeps flowing);
2. in ONE unit of work: the inbox row ``(consumer, message_id)``; if it was already
   there the event was applied before (a redelivery) and is skipped; otherwise the
   projection's change; commit;
3. failpoint ``consumer.after_apply``; settle, so the bus acks.

Tracing (when on): one CONSUMER span per delivery, a child of the context in its
``traceparent`` header, from ``submit`` until it is settled (batches share a commit,
so the spans are not made current).

A crash anywhere before the commit leaves nothing behind (the message comes back); a
crash after it leaves the inbox row, so the redelivered copy is skipped: each event is
applied exactly once.

Group commit: deliveries that arrive together (the bus runs up to its prefetch at
once) are written by a single writer, up to ``batch_size`` per unit of work; one
writer also keeps each projection's updates in arrival order. If a batch fails, it is
rolled back and its events are applied one per unit of work, so a bad event fails
alone. Database trouble is not the message's fault and never uses up its attempts:
while the database is unreachable the batch is retried (it keeps its deliveries, the
bus keeps them unacked) until it is back; lock and statement timeouts and deadlocks
are retried a bounded number of times. Every unit of work has a deadline
(:data:`UNIT_OF_WORK_DEADLINE_SECONDS`), so a stalled database connection is dropped
within seconds instead of holding the consumer forever.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from wallet_platform import backoff
from wallet_platform.errors import UnavailableError
from wallet_platform.failpoints import failpoint
from wallet_platform.messaging.bus import Delivery, PoisonMessageError, error_text
from wallet_platform.messaging.consumer.projection import Projection, Translated
from wallet_platform.observability import tracing
from wallet_platform.observability.logs import log_context
from wallet_platform.storage.connection_errors import is_connection_error, is_contention

log = logging.getLogger(__name__)

# How long the first delivery of a burst waits for the rest before its batch is written.
BATCH_LINGER_SECONDS = 0.005

# A unit of work that takes longer has a stalled connection (statements are bounded
# by the server's statement_timeout, 5 s by default): its connection is dropped and
# the work retried on another. The task itself is cancelled only after the backstop.
UNIT_OF_WORK_DEADLINE_SECONDS = 8.0
UNIT_OF_WORK_BACKSTOP_SECONDS = 30.0

# Lock waits, deadlocks, statement timeouts, SQLite busy: retried this often (pauses of
# backoff.DATABASE_CONTENTION), then the delivery fails (and the bus retries or
# dead-letters it). The database unreachable: retried until it is back, pauses of
# backoff.DATABASE_UNREACHABLE.
CONTENTION_RETRIES = 10


def is_unreachable(error: BaseException) -> bool:
    """The database could not be reached (or did not answer in time)."""
    if isinstance(error, UnavailableError | TimeoutError):
        return True
    return is_connection_error(error)


def is_transient(error: BaseException) -> bool:
    """Errors worth retrying as they are: the database was unreachable or busy."""
    return is_unreachable(error) or is_contention(error)


# What the writer reports for each delivery: None (committed; ``applied`` says if it
# was new) or the error that kept it from committing.
Settle = Callable[[BaseException | None, bool], None]


@dataclass
class _Pending:
    delivery: Delivery
    translated: Translated[Any]
    settle: Settle
    span: Any = None  # the delivery's span while tracing is on


class ConsumerRunner:
    """Handles deliveries for one projection (usable without a gRPC server, in tests).

    Two ways in: ``await handle(delivery)`` (any bus), or :meth:`submit` with a
    callback (the RabbitMQ bus: no task or future per message).
    """

    def __init__(self, projection: Projection[Any, Any], *, batch_size: int = 64) -> None:
        self.projection = projection
        self.batch_size = max(1, batch_size)
        self._queue: list[_Pending] = []
        self._writer: asyncio.Task[None] | None = None
        self._stopping = False

    async def __call__(self, delivery: Delivery) -> None:
        """The runner is itself a bus handler (see ``submit`` for the callback form)."""
        await self.handle(delivery)

    def stop(self) -> None:
        """Stop waiting for an unreachable database (pending deliveries then fail)."""
        self._stopping = True

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
        (``error`` None) or failed. Deliveries that can never be applied raise
        :class:`PoisonMessageError` here, before anything is queued."""
        span = None
        if tracing.enabled():
            span = self._span(delivery)
        try:
            if not delivery.message_id:
                # The inbox key: without it exactly-once cannot be kept.
                raise PoisonMessageError("message has no message_id")
            translated = self.projection.translate(delivery)
        except Exception as error:
            tracing.end_span(span, error)
            raise
        self._queue.append(_Pending(delivery, translated, settle, span))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write_loop(), name="consumer-writer")

    def _span(self, delivery: Delivery) -> Any:
        """The delivery's CONSUMER span, a child of its ``traceparent`` header."""
        return tracing.start_span(
            f"{self.projection.consumer_name} process",
            kind=tracing.CONSUMER,
            parent=delivery.traceparent,
            attributes={
                "messaging.operation": "process",
                "messaging.message.id": delivery.message_id,
                "messaging.destination.name": delivery.routing_key,
                "wallet.delivery.attempt": delivery.attempt,
            },
        )

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
        # Even a batch of one goes this way first: on PostgreSQL it is one round trip.
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
                new = await self._with_retries([item], CONTENTION_RETRIES)
            except Exception as error:
                _settle(item, error, False)
            else:
                await self._committed(item, item.delivery.message_id in new)

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
        """One unit of work for the batch; True per newly applied delivery. A
        delivery repeated inside a batch (a redelivery of one still in flight)
        counts as a duplicate, as it would one by one."""
        unique: dict[str, _Pending] = {}
        for item in batch:
            unique.setdefault(item.delivery.message_id, item)
        # A batch that times out may be too big for a slow database rather than stalled:
        # it falls back to one event per unit of work, which waits out a stall.
        new = await self._with_retries(list(unique.values()), 0, patient=False)
        results: list[bool] = []
        for item in batch:
            first = unique.pop(item.delivery.message_id, None)  # later repeats: duplicates
            results.append(first is item and item.delivery.message_id in new)
        return results

    async def _with_retries(
        self, items: list[_Pending], contention: int, *, patient: bool = True
    ) -> set[str]:
        """:meth:`_commit`; an unreachable database is waited for (unless stopping; a
        unit of work that timed out only if ``patient``), contention retried
        up to ``contention`` times."""
        unreachable = contended = 0
        while True:
            try:
                return await self._commit(items)
            except Exception as error:
                waits = patient or not isinstance(error, TimeoutError)
                if is_unreachable(error) and waits and not self._stopping:
                    unreachable += 1
                    delay = backoff.DATABASE_UNREACHABLE.delay(unreachable)
                elif is_transient(error) and contended < contention:
                    contended += 1
                    delay = backoff.DATABASE_CONTENTION.delay(contended)
                else:
                    raise
                level = (
                    logging.WARNING if unreachable <= 3 or unreachable % 20 == 0 else logging.DEBUG
                )
                log.log(
                    level,
                    "%s: database trouble applying %d event(s), retrying in %.2fs: %s",
                    self.projection.consumer_name,
                    len(items),
                    delay,
                    error_text(error),
                )
                await asyncio.sleep(delay)

    async def _commit(self, items: list[_Pending]) -> set[str]:
        """Inbox rows and changes of ``items`` (distinct ids) in one unit of work;
        returns the ids that were new."""
        projection = self.projection
        ids = [item.delivery.message_id for item in items]
        work = [item.translated.work for item in items]
        trace = items[0].translated.trace if len(items) == 1 else {}
        unit = projection.unit_of_work()
        unit.deadline = UNIT_OF_WORK_DEADLINE_SECONDS
        with log_context(**trace):
            async with asyncio.timeout(UNIT_OF_WORK_BACKSTOP_SECONDS):
                async with unit as uow:
                    recorded = await projection.record_and_apply(
                        uow, projection.consumer_name, ids, work
                    )
                    await uow.commit()
                return await recorded.new_ids()


def _settle(item: _Pending, error: BaseException | None, applied: bool) -> None:
    """Report to the bus; a failing callback must not stop the writer."""
    if item.span is not None:
        span, item.span = item.span, None
        if not applied and error is None:
            span.set_attribute("wallet.duplicate", True)
        tracing.end_span(span, error)
    try:
        item.settle(error, applied)
    except Exception:
        log.exception("settling %s failed", item.delivery.message_id)
