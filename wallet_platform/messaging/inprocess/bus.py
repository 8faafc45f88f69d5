"""The embedded event bus: RabbitMQ's semantics on top of the platform database.

Why a table and not memory: the relay marks outbox rows published once the bus has
them, so a bus that forgot its queues in a crash would silently lose events. Queues
in ``bus_messages`` survive restarts, work across processes that share the database
(e.g. ``wallet-service`` and ``analytics-worker`` without RabbitMQ), and let
``walletctl dlq`` inspect and replay dead letters from outside the server.

Semantics, as on RabbitMQ:
- publish = one row per queue the routing key reaches (topic ``wallet.#``), in one
  transaction; no queue reached -> :class:`PublishError` (``mandatory``);
- a consumer claims up to ``prefetch`` rows (a lease, so a crashed consumer's
  messages come back after ``LEASE_MS``), runs the handler for each, then acks
  (deletes) it; a handler error schedules a retry with back-off (``attempt`` + 1)
  until ``max_attempts``, then the row becomes a dead letter (state ``dead``) with
  the reason; :class:`PoisonMessageError` dead-letters at once;
- publishers in this process wake the consumers at once; other processes' publishes
  are noticed by a short poll.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from wallet_platform import backoff
from wallet_platform.messaging.bus import (
    DEFAULT_MAX_ATTEMPTS,
    DEFAULT_PREFETCH,
    Delivery,
    Handler,
    OutgoingMessage,
    PoisonMessageError,
    PublishError,
    error_text,
    routed_queues,
)
from wallet_platform.messaging.inprocess.store import (
    claim_rows,
    enqueue,
    has_ready,
    now_ms,
    settle_rows,
)
from wallet_platform.storage.database import Database

log = logging.getLogger(__name__)

LEASE_MS = 5_000  # a claimed message returns to the queue after this if never acked
IDLE_POLL_SECONDS = 0.1  # notices other processes' publishes and due retries
MAX_CLAIM = 64  # rows per claim (keeps each batch well inside the lease)
STOP_GRACE_SECONDS = 10.0


@dataclass
class _Consumer:
    queue: str
    handler: Handler
    prefetch: int
    max_attempts: int
    task: asyncio.Task[None] | None = None
    stopping: bool = False


class InProcessBus:
    """An :class:`~wallet_platform.messaging.bus.EventBus` whose queues live in ``bus_messages``."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self._users = 0
        self._consumers: dict[str, _Consumer] = {}
        self._wakeups: dict[str, asyncio.Event] = {}

    @property
    def connected(self) -> bool:
        """Always: the queues are tables of the database, whose reachability the
        health monitor probes on its own."""
        return True

    # --- life cycle ------------------------------------------------------------------

    async def start(self) -> None:
        self._users += 1

    async def close(self) -> None:
        self._users = max(self._users - 1, 0)
        if self._users == 0:
            for queue in list(self._consumers):
                await self.stop_consuming(queue)

    # --- publishing --------------------------------------------------------------------

    async def publish(self, messages: Sequence[OutgoingMessage]) -> None:
        if not messages:
            return
        routed: list[tuple[str, OutgoingMessage]] = []
        for message in messages:
            queues = routed_queues(message.routing_key)
            if not queues:
                raise PublishError(
                    f"message {message.message_id} is unroutable "
                    f"(routing key {message.routing_key!r})"
                )
            routed.extend((queue, message) for queue in queues)
        try:
            async with self.db.transaction() as conn:
                await enqueue(conn, routed)
        except Exception as error:
            raise PublishError(f"in-process publish failed: {error_text(error)}") from error
        for queue in {queue for queue, _ in routed}:
            self._wake(queue)

    def _wake(self, queue: str) -> None:
        event = self._wakeups.get(queue)
        if event is not None:
            event.set()

    # --- consuming ---------------------------------------------------------------------

    async def consume(
        self,
        queue: str,
        handler: Handler,
        *,
        prefetch: int = DEFAULT_PREFETCH,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
    ) -> None:
        if queue in self._consumers:
            raise RuntimeError(f"already consuming {queue}")
        consumer = _Consumer(queue, handler, max(1, prefetch), max(1, max_attempts))
        self._wakeups[queue] = asyncio.Event()
        consumer.task = asyncio.create_task(self._run(consumer), name=f"bus-consume-{queue}")
        self._consumers[queue] = consumer

    async def stop_consuming(self, queue: str) -> None:
        consumer = self._consumers.pop(queue, None)
        wakeup = self._wakeups.pop(queue, None)
        if consumer is None or consumer.task is None:
            return
        # Finish the batch in hand: cancelling inside a database call can leave a
        # SQLite connection holding the write lock.
        consumer.stopping = True
        if wakeup is not None:
            wakeup.set()
        done, _ = await asyncio.wait({consumer.task}, timeout=STOP_GRACE_SECONDS)
        if not done:
            consumer.task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await consumer.task

    async def _run(self, consumer: _Consumer) -> None:
        failures = 0
        wakeup = self._wakeups[consumer.queue]
        while not consumer.stopping:
            try:
                handled = await self._consume_batch(consumer)
                failures = 0
            except asyncio.CancelledError:
                raise
            except Exception:
                failures += 1
                delay = backoff.BUS_POLL_FAILURE.delay(failures)
                log.exception("in-process bus: consuming %s failed", consumer.queue)
                await asyncio.sleep(delay)
                continue
            if handled:
                continue
            wakeup.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wakeup.wait(), IDLE_POLL_SECONDS)

    async def _consume_batch(self, consumer: _Consumer) -> int:
        """Claim, handle and settle one batch; returns how many were claimed."""
        claimed = await self._claim(consumer.queue, min(consumer.prefetch, MAX_CLAIM))
        if not claimed:
            return 0
        acked: list[int] = []
        retried: list[tuple[int, int, str]] = []  # id, attempt, reason
        dead: list[tuple[int, str]] = []  # id, reason

        async def run(row: Any) -> BaseException | None:
            delivery = Delivery(
                message_id=row.message_id,
                routing_key=row.routing_key,
                message_type=row.message_type,
                body=row.body,
                attempt=row.attempt,
                traceparent=row.traceparent,
            )
            try:
                await consumer.handler(delivery)
            except Exception as error:
                return error
            return None

        # Handlers of one claim run concurrently, as RabbitMQ runs up to ``prefetch``
        # unacked deliveries at once (the consumer runner group-commits them).
        outcomes = await asyncio.gather(*(run(row) for row in claimed))
        for row, error in zip(claimed, outcomes, strict=True):
            if error is None:
                acked.append(row.id)
            elif isinstance(error, PoisonMessageError):
                dead.append((row.id, error_text(error)))
                log.warning(
                    "dead-lettering poison message %s from %s: %s",
                    row.message_id,
                    consumer.queue,
                    error,
                )
            elif row.attempt >= consumer.max_attempts:
                reason = error_text(error)
                dead.append((row.id, f"{reason} (after {row.attempt} attempts)"))
                log.warning(
                    "dead-lettering %s from %s after %d attempts: %s",
                    row.message_id,
                    consumer.queue,
                    row.attempt,
                    reason,
                )
            else:
                retried.append((row.id, row.attempt, error_text(error)))
                log.info(
                    "retrying %s from %s (attempt %d failed: %s)",
                    row.message_id,
                    consumer.queue,
                    row.attempt,
                    error_text(error),
                )
        await self._settle(acked, retried, dead)
        return len(claimed)

    async def _claim(self, queue: str, limit: int) -> list[Any]:
        now = now_ms()
        async with self.db.read() as conn:
            if not await has_ready(conn, queue, now):
                return []
        async with self.db.transaction() as conn:
            return await claim_rows(conn, queue, limit, LEASE_MS)

    async def _settle(
        self, acked: list[int], retried: list[tuple[int, int, str]], dead: list[tuple[int, str]]
    ) -> None:
        if not (acked or retried or dead):
            return
        async with self.db.transaction() as conn:
            await settle_rows(conn, acked, retried, dead)
