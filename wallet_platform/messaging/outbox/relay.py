"""The outbox relay: moves committed outbox rows onto the event bus.

It claims the oldest ``pending`` rows, publishes them with publisher confirms and
``mandatory``, and only then marks them ``published`` (the SQL, per backend, is in
:mod:`wallet_platform.messaging.outbox.store`). A crash in between (failpoint
``outbox.after_publish``) republishes them: duplicates are possible, loss is not;
consumers deduplicate by message id.

Latency: a commit that inserted an outbox row wakes the relay at once (an engine
event, so no service has to remember to call it; writers that bypass SQLAlchemy call
``Database.outbox_committed``); otherwise it polls every 20 ms while there has been
recent traffic, slowing to 200 ms when idle. Under load rounds start at most every
20 ms, so the commits of that interval share one round. When the bus is down the
rows stay pending, writes keep working and the relay retries with back-off (at most
2 s), so the backlog drains soon after the broker returns.

On RabbitMQ with envelopes on (``WALLET_AMQP_ENVELOPES``) a round's events of one
routing key go out as envelope messages of several events
(:mod:`wallet_platform.messaging.envelope`); each event keeps its id, type and trace
context inside.

Tracing (when on): one PRODUCER span per event, a child of the write that queued
it (the row's ``traceparent``); the message carries that span's context as its
``traceparent`` header. Off: the row's value, if any, goes out unchanged.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from sqlalchemy import event

from wallet_platform import backoff
from wallet_platform.failpoints import failpoint
from wallet_platform.messaging.bus import EventBus, OutgoingMessage, PublishError, error_text
from wallet_platform.messaging.factory import get_bus
from wallet_platform.messaging.outbox.store import claim_pending
from wallet_platform.observability import tracing
from wallet_platform.observability.state_metrics import OutboxSource, register_state_source
from wallet_platform.runtime import Runtime
from wallet_platform.storage.database import Database

log = logging.getLogger(__name__)

BATCH_SIZE = 500
BUSY_POLL_SECONDS = 0.02  # while rows keep arriving
# At most one round per this interval while busy (a full batch goes on at once): under
# load every commit woke a round of its own, and a round costs the same for one row as
# for hundreds (docs/benchmarks.md). Commits meanwhile share the next round.
MIN_ROUND_SECONDS = 0.02
IDLE_POLL_SECONDS = 0.2  # after a quiet spell (commits still wake us at once)
QUIET_ROUNDS = 50  # empty polls (about one second) before slowing down
RELAY_EXTRA_KEY = "outbox_relay"
STOP_GRACE_SECONDS = 10.0


@dataclass
class RelayStats:
    """Counters for logs, metrics and tests."""

    published: int = 0
    batches: int = 0
    failures: int = 0
    last_error: str | None = None


async def relay_batch(db: Database, bus: EventBus, batch_size: int = BATCH_SIZE) -> int:
    """Publish one batch of pending outbox rows; returns how many were published.

    Raises :class:`PublishError` when the bus did not confirm them (the rows stay
    pending, with ``attempts`` + 1 and ``last_error``).
    """
    failure: PublishError | None = None
    async with claim_pending(db, batch_size) as claim:
        if not claim.ids:
            return 0
        messages, spans = _traced(claim.messages)
        try:
            await bus.publish(messages)
        except PublishError as error:
            failure = error
            for span in spans:
                tracing.end_span(span, error)
            await claim.mark_failed(error_text(error))
        else:
            for span in spans:
                tracing.end_span(span)
            await failpoint("outbox.after_publish")
            await claim.mark_published()
    if failure is not None:
        raise failure
    return len(claim.ids)


def _traced(messages: list[OutgoingMessage]) -> tuple[list[OutgoingMessage], list[Any]]:
    """A publish span per message (tracing on), each message carrying its span's context."""
    if not tracing.enabled():
        return messages, []
    traced: list[OutgoingMessage] = []
    spans: list[Any] = []
    for message in messages:
        span = tracing.start_span(
            f"{message.routing_key} publish",
            kind=tracing.PRODUCER,
            parent=message.traceparent,
            attributes={
                "messaging.operation": "publish",
                "messaging.message.id": message.message_id,
                "messaging.destination.name": message.routing_key,
            },
        )
        spans.append(span)
        traced.append(dataclasses.replace(message, traceparent=tracing.traceparent_of(span)))
    return traced, spans


class OutboxRelay:
    """The relay as a :class:`~wallet_platform.server.builder.Component` (no gRPC service)."""

    name = "outbox-relay"

    def __init__(self, runtime: Runtime, *, batch_size: int = BATCH_SIZE) -> None:
        self.runtime = runtime
        self.db = runtime.db
        self.batch_size = batch_size
        self.stats = RelayStats()
        self._bus: EventBus | None = None
        self._task: asyncio.Task[None] | None = None
        self._wakeup = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._hooks: list[tuple[str, Any]] = []
        self._stopping = False

    def add_to_server(self, server: grpc.aio.Server) -> Sequence[str]:
        return ()

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopping = False
        bus = get_bus(self.runtime)
        await bus.start()
        self._bus = bus
        self._install_commit_hook()
        self.runtime.extras[RELAY_EXTRA_KEY] = self
        self._task = asyncio.create_task(self._run(bus), name="outbox-relay")
        log.info("outbox relay started")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            # Let the current round finish: cancelling in the middle of a database
            # call can leave a SQLite connection holding the write lock.
            self._stopping = True
            self._wakeup.set()
            done, _ = await asyncio.wait({task}, timeout=STOP_GRACE_SECONDS)
            if not done:
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._remove_commit_hook()
        bus, self._bus = self._bus, None
        if bus is not None:
            await bus.close()
        if self.runtime.extras.get(RELAY_EXTRA_KEY) is self:
            del self.runtime.extras[RELAY_EXTRA_KEY]

    def wake(self) -> None:
        """Ask for a relay round now (safe from any thread)."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            self._wakeup.set()
        else:
            loop.call_soon_threadsafe(self._wakeup.set)

    # --- wake on commits that wrote outbox rows -------------------------------------

    def _install_commit_hook(self) -> None:
        engine = self.db.engine.sync_engine

        def after_execute(conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
            if "INSERT INTO outbox" in statement:
                conn.info["outbox_written"] = True

        def after_commit(conn: Any) -> None:
            if conn.info.pop("outbox_written", False):
                self.wake()

        def after_rollback(conn: Any) -> None:
            conn.info.pop("outbox_written", None)

        for name, fn in (
            ("after_cursor_execute", after_execute),
            ("commit", after_commit),
            ("rollback", after_rollback),
        ):
            event.listen(engine, name, fn)
            self._hooks.append((name, fn))
        # Writers on the driver's connection (pipeline_transaction) have no engine events.
        self.db.outbox_listeners.append(self.wake)

    def _remove_commit_hook(self) -> None:
        engine = self.db.engine.sync_engine
        for name, fn in self._hooks:
            with contextlib.suppress(Exception):
                event.remove(engine, name, fn)
        self._hooks.clear()
        with contextlib.suppress(ValueError):
            self.db.outbox_listeners.remove(self.wake)

    # --- the loop ---------------------------------------------------------------------

    async def _run(self, bus: EventBus) -> None:
        failures = 0
        quiet_rounds = 0
        loop = asyncio.get_running_loop()
        while not self._stopping:
            self._wakeup.clear()
            started = loop.time()
            try:
                published = await relay_batch(self.db, bus, self.batch_size)
            except asyncio.CancelledError:
                raise
            except Exception as error:
                failures += 1
                delay = backoff.RELAY_FAILURE.delay(failures)
                self.stats.failures += 1
                self.stats.last_error = error_text(error)
                level = logging.WARNING if failures <= 3 or failures % 20 == 0 else logging.DEBUG
                log.log(level, "outbox relay: %s; retrying in %.1fs", error_text(error), delay)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopped_or_woken(), delay)
                continue
            if failures:
                log.info("outbox relay: publishing again after %d failed rounds", failures)
                failures = 0
            if published:
                self.stats.published += published
                self.stats.batches += 1
                quiet_rounds = 0
                if published >= self.batch_size:
                    continue  # backlog: next batch at once (unless stopping)
                rest = MIN_ROUND_SECONDS - (loop.time() - started)
                if rest > 0:
                    await asyncio.sleep(rest)  # commits of this interval share a round
            else:
                quiet_rounds += 1
            interval = BUSY_POLL_SECONDS if quiet_rounds < QUIET_ROUNDS else IDLE_POLL_SECONDS
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), interval)

    async def _stopped_or_woken(self) -> None:
        """During a back-off only a stop request cuts the wait short."""
        while not self._stopping:
            self._wakeup.clear()
            await self._wakeup.wait()


def relay_component(runtime: Runtime) -> OutboxRelay:
    """The relay of this process (``wallet-service`` and ``wallet-stack``); it reports
    the outbox backlog in this process's metrics."""
    register_state_source(runtime, OutboxSource())
    return OutboxRelay(runtime)
