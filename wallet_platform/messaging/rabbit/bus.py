"""The RabbitMQ event bus: one supervised connection, a confirm channel to publish
on, a channel per consumed queue.

A supervisor task owns the connection. It opens one (:mod:`.connection`: heartbeat,
TCP keepalive, timeouts), opens the confirm channel, declares the topology and
registers every consumer; then, every :data:`WATCHDOG_INTERVAL_SECONDS`, it checks

- that the connection answers: a passive declare of ``wallet.events`` on the confirm
  channel within :data:`PROBE_TIMEOUT_SECONDS` (a stalled peer is seen within seconds,
  long before the heartbeat limit);
- that each consumer is alive on its channel and counted by the broker; one that is
  not is registered again on a fresh channel.

The connection closing, a failed probe, or a consumer that cannot be registered again
ends that connection, and everything is set up again on a fresh one, after a pause of
:data:`wallet_platform.backoff.BUS_RECONNECT` (random, up to 1 s, growing to 5 s while
the broker is unreachable: processes that lost the broker together do not all knock at
once when it returns). A topology that clashes with the broker's queues is looked at
again every :data:`MISMATCH_RECHECK_SECONDS`. Nothing retries a channel on a
connection that cannot open one. Deliveries in flight on the old connection finish;
their acks fail and the broker delivers them again, and the consumers' inbox skips
what was applied.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Sequence

import aio_pika
from aio_pika.abc import AbstractConnection

from wallet_platform import backoff
from wallet_platform.messaging.bus import (
    DEFAULT_MAX_ATTEMPTS,
    DEFAULT_PREFETCH,
    Handler,
    OutgoingMessage,
    PublishError,
    error_text,
)
from wallet_platform.messaging.rabbit.connection import close_quietly, open_connection
from wallet_platform.messaging.rabbit.consumer import QueueConsumer
from wallet_platform.messaging.rabbit.publisher import Publisher
from wallet_platform.messaging.rabbit.topology import (
    DEFAULT_QUEUE_TYPE,
    TopologyMismatchError,
    check_queue_type,
    declare_topology,
)
from wallet_platform.topology import EXCHANGE, QUEUES

log = logging.getLogger(__name__)

START_WAIT_SECONDS = 5.0
SETUP_TIMEOUT_SECONDS = 10.0  # confirm channel + topology on a new connection
WATCHDOG_INTERVAL_SECONDS = 2.0
PROBE_TIMEOUT_SECONDS = 5.0
MISMATCH_RECHECK_SECONDS = 5.0


class RabbitBus:
    """An :class:`~wallet_platform.messaging.bus.EventBus` on RabbitMQ."""

    def __init__(
        self,
        url: str,
        *,
        queue_type: str = DEFAULT_QUEUE_TYPE,
        start_wait: float = START_WAIT_SECONDS,
        envelope_max: int = 0,
    ) -> None:
        self.url = url
        # Publish each batch's events of a routing key in envelopes of at most this
        # many (below 2: one message per event); consumers read both kinds anyway.
        self.envelope_max = envelope_max
        self.queue_type = check_queue_type(queue_type)
        self.start_wait = start_wait
        self.connections_opened = 0  # how many connections this bus has had
        self._users = 0
        self._supervisor: asyncio.Task[None] | None = None
        self._connection: AbstractConnection | None = None
        self._publisher: Publisher | None = None
        self._outcome = asyncio.Event()  # connected, or found the topology mismatched
        self._mismatch: TopologyMismatchError | None = None
        self._consumers: dict[str, QueueConsumer] = {}
        self._registering = asyncio.Lock()
        self._closing = False

    @property
    def connected(self) -> bool:
        connection = self._connection
        return self._publisher is not None and connection is not None and not connection.is_closed

    # --- life cycle ------------------------------------------------------------------

    async def start(self) -> None:
        """Connect (in the background if the broker is down) and declare the topology.

        Waits a few seconds for the first connection; if RabbitMQ is not there yet the
        bus keeps trying, publishes raise :class:`PublishError` meanwhile and consumers
        registered early start once it is connected. A topology that clashes with the
        broker's queues (:class:`TopologyMismatchError`) is raised here: a process
        configured against its broker's queues must not start.
        """
        self._users += 1
        self._closing = False
        if self._supervisor is not None:
            return  # already started (or starting) by another component
        self._supervisor = asyncio.create_task(self._supervise(), name="rabbit-supervisor")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._outcome.wait(), self.start_wait)
        if self._mismatch is not None:
            error = self._mismatch
            await self.close()
            raise error
        if not self.connected:
            log.warning("RabbitMQ not reachable yet; will keep trying in the background")

    async def close(self) -> None:
        self._users = max(self._users - 1, 0)
        if self._users > 0:
            return
        self._closing = True
        for queue in list(self._consumers):
            await self.stop_consuming(queue)
        task, self._supervisor = self._supervisor, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def _supervise(self) -> None:
        failures = 0
        while not self._closing:
            try:
                connection, publisher = await self._open()
            except asyncio.CancelledError:
                raise
            except TopologyMismatchError as error:
                self._mismatch = error
                self._outcome.set()
                log.error("%s", error)
                await asyncio.sleep(MISMATCH_RECHECK_SECONDS)
                continue
            except Exception as error:
                failures += 1
                delay = backoff.BUS_RECONNECT.delay(failures)
                log.warning(
                    "RabbitMQ connect failed (%s); retrying in %.1fs", error_text(error), delay
                )
                await asyncio.sleep(delay)
                continue
            failures = 0
            self._mismatch = None
            self._connection, self._publisher = connection, publisher
            self.connections_opened += 1
            self._outcome.set()
            log.info("connected to RabbitMQ")
            try:
                await self._serve(connection, publisher)
            finally:
                self._connection = self._publisher = None
                for consumer in self._consumers.values():
                    consumer.channel = consumer.tag = consumer.window = None
                await close_quietly(connection)
            if not self._closing:
                await asyncio.sleep(backoff.BUS_RECONNECT.delay(1))

    async def _open(self) -> tuple[AbstractConnection, Publisher]:
        name = f"wallet-bus {socket.gethostname()}:{os.getpid()}"
        connection = await open_connection(self.url, name)
        try:
            async with asyncio.timeout(SETUP_TIMEOUT_SECONDS):
                channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
                await declare_topology(channel, self.queue_type)
        except BaseException:
            await close_quietly(connection)
            raise
        return connection, Publisher(channel, envelope_max=self.envelope_max)

    async def _serve(self, connection: AbstractConnection, publisher: Publisher) -> None:
        """Keep ``connection`` and its consumers checked; return when it must go."""
        closed = asyncio.ensure_future(connection.closed())
        try:
            while True:  # until the connection must go (close() cancels the supervisor)
                if not await self._consumers_alive(connection):
                    return
                await asyncio.wait({closed}, timeout=WATCHDOG_INTERVAL_SECONDS)
                if closed.done():
                    log.warning("RabbitMQ connection closed; opening a new one")
                    return
                if not await self._answers(publisher):
                    return
        finally:
            closed.cancel()

    async def _answers(self, publisher: Publisher) -> bool:
        try:
            await asyncio.wait_for(
                publisher.channel.get_exchange(EXCHANGE, ensure=True), PROBE_TIMEOUT_SECONDS
            )
        except Exception as error:
            log.warning(
                "RabbitMQ connection not answering (%s); opening a new one", error_text(error)
            )
            return False
        return True

    async def _consumers_alive(self, connection: AbstractConnection) -> bool:
        """Register again each consumer that is not alive; False when one cannot be
        (the connection is then replaced)."""
        for consumer in list(self._consumers.values()):
            try:
                await self._ensure(consumer, connection)
            except TopologyMismatchError as error:
                log.error("%s", error)  # an operator's change; keep the connection
            except Exception as error:
                log.warning(
                    "re-registering consumer of %s failed (%s); opening a new connection",
                    consumer.queue,
                    error_text(error),
                )
                return False
        return True

    async def _ensure(self, consumer: QueueConsumer, connection: AbstractConnection) -> None:
        async with self._registering:
            if self._consumers.get(consumer.queue) is not consumer or connection.is_closed:
                return
            if not await consumer.alive():
                await consumer.register(connection)

    # --- publishing --------------------------------------------------------------------

    async def publish(self, messages: Sequence[OutgoingMessage]) -> None:
        if not messages:
            return
        publisher = self._publisher
        if publisher is None:
            raise PublishError("RabbitMQ is not connected")
        await publisher.publish(messages)

    async def _publish_one(
        self, exchange_name: str, routing_key: str, message: aio_pika.Message
    ) -> None:
        publisher = self._publisher
        if publisher is None:
            raise PublishError("RabbitMQ is not connected")
        await publisher.publish_one(exchange_name, routing_key, message)

    # --- consuming ---------------------------------------------------------------------

    async def consume(
        self,
        queue: str,
        handler: Handler,
        *,
        prefetch: int = DEFAULT_PREFETCH,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
    ) -> None:
        if queue not in QUEUES:
            raise ValueError(f"unknown queue {queue!r}")
        if queue in self._consumers:
            raise RuntimeError(f"already consuming {queue}")
        consumer = QueueConsumer(
            queue=queue,
            handler=handler,
            prefetch=max(1, prefetch),
            max_attempts=max(1, max_attempts),
            queue_type=self.queue_type,
            publish_one=self._publish_one,
        )
        self._consumers[queue] = consumer
        connection = self._connection
        if connection is not None:
            try:
                await self._ensure(consumer, connection)
            except Exception as error:  # the supervisor tries again
                log.warning("consuming %s failed for now: %s", queue, error_text(error))

    async def stop_consuming(self, queue: str) -> None:
        consumer = self._consumers.pop(queue, None)
        if consumer is not None:
            await consumer.stop()
