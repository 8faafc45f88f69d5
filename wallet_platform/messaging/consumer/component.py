"""A consumer as a server component: its projection, run on this process's bus."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import grpc

from wallet_platform.messaging.bus import DEFAULT_MAX_ATTEMPTS, EventBus
from wallet_platform.messaging.consumer.projection import Projection
from wallet_platform.messaging.consumer.runner import ConsumerRunner
from wallet_platform.messaging.factory import get_bus
from wallet_platform.observability.state_metrics import ConsumerSource, register_state_source
from wallet_platform.runtime import Runtime
from wallet_platform.topology import QUEUES

log = logging.getLogger(__name__)

# Deliveries in flight per consumer: twice a group commit, so the next batch is
# already here while one is being written.
CONSUMER_PREFETCH = 128


class ConsumerComponent:
    """A :class:`~wallet_platform.server.builder.Component` that runs one projection."""

    def __init__(
        self,
        runtime: Runtime,
        projection: Projection[Any, Any],
        name: str,
        *,
        prefetch: int = CONSUMER_PREFETCH,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
    ) -> None:
        self.name = name
        self.runtime = runtime
        self.projection = projection
        self.runner = ConsumerRunner(projection)
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
        self.runner.stop()
        await bus.stop_consuming(self.projection.queue)
        await bus.close()


def consumer_component(
    runtime: Runtime,
    projection: Projection[Any, Any],
    name: str,
    *,
    prefetch: int = CONSUMER_PREFETCH,
    max_attempts: int = DEFAULT_MAX_ATTEMPTS,
) -> ConsumerComponent:
    """The component that consumes ``projection.queue`` from this process's bus; it
    reports the consumer's lag and queue depths in this process's metrics."""
    queue = projection.queue
    register_state_source(runtime, ConsumerSource(projection.consumer_name, queue, QUEUES[queue]))
    return ConsumerComponent(
        runtime, projection, name, prefetch=prefetch, max_attempts=max_attempts
    )
