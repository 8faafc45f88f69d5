"""Health that follows the process's dependencies: readiness and liveness.

A server is *ready* (``grpc.health.v1`` status ``SERVING`` for the overall service
``""`` and for each of its own services) while its database answers and, in a process
that uses RabbitMQ, while the event bus holds a working connection. When a dependency
stops answering the same names turn ``NOT_SERVING`` and come back on their own once it
answers again, so a load balancer or a Kubernetes readiness probe takes the replica out
of rotation during the outage instead of letting every call fail ``UNAVAILABLE``.

:data:`LIVENESS_SERVICE` (``"liveness"``) does not follow dependencies: it is
``SERVING`` for as long as the process runs and answers. Kubernetes liveness probes ask
for it, so an outage of PostgreSQL or RabbitMQ does not restart every pod (a restart
would not bring the dependency back).

Checking is periodic, not per ``Check`` call: every :data:`PROBE_INTERVAL_SECONDS` one
probe round runs ``SELECT 1`` on a connection of its own (apart from the request pool:
a pool busy with calls is not an unreachable database, and the probe never queues
behind calls) and reads the bus's connection state (which the RabbitMQ bus keeps
checked itself, see :mod:`wallet_platform.messaging.rabbit.bus`). A probe that has not
answered within :data:`PROBE_TIMEOUT_SECONDS` counts as down; it is left to finish in
the background and no second one starts beside it, so a stalled network never piles up
probes. ``Check`` itself only reads the last verdict.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

import sqlalchemy as sa
from grpc_health.v1 import health, health_pb2
from sqlalchemy.ext.asyncio import AsyncEngine

from wallet_platform.runtime import Runtime

log = logging.getLogger(__name__)

LIVENESS_SERVICE = "liveness"
PROBE_INTERVAL_SECONDS = 2.0
PROBE_TIMEOUT_SECONDS = 2.0

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING

Probe = Callable[[], Coroutine[Any, Any, None]]  # returns when the dependency answers, else raises


class DependencyDownError(Exception):
    """A dependency did not answer its probe."""


class BoundedProbe:
    """One dependency's probe, bounded in time and never run twice at once."""

    def __init__(self, name: str, probe: Probe, timeout: float = PROBE_TIMEOUT_SECONDS) -> None:
        self.name = name
        self.probe = probe
        self.timeout = timeout
        self._running: asyncio.Task[None] | None = None

    async def healthy(self) -> bool:
        """Run the probe (or keep waiting for the one still running); False if it
        failed or is not done within the timeout."""
        task = self._running
        if task is None or task.done():
            task = asyncio.create_task(self.probe(), name=f"health-probe-{self.name}")
            self._running = task
        done, _ = await asyncio.wait({task}, timeout=self.timeout)
        if not done:
            return False
        self._running = None
        error = task.exception()
        if error is not None:
            log.debug("%s probe failed: %s", self.name, error)
            return False
        return True

    async def cancel(self) -> None:
        """End a probe still running (at stop); its outcome no longer matters."""
        task, self._running = self._running, None
        if task is None:
            return
        if not task.done():
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await asyncio.wait_for(task, self.timeout)


def database_probe(engine: AsyncEngine) -> Probe:
    """``SELECT 1`` on ``engine`` (a small engine of the monitor's own)."""

    async def probe() -> None:
        async with engine.connect() as connection:
            await connection.execute(sa.text("SELECT 1"))

    return probe


def bus_probe(runtime: Runtime, key: str) -> Probe:
    """The process's event bus holds a working connection (no bus: nothing to check).

    The bus is looked up at each probe: components create it when they start.
    """

    async def probe() -> None:
        bus = runtime.extras.get(key)
        if bus is not None and not bus.connected:
            raise DependencyDownError("event bus not connected")

    return probe


class HealthMonitor:
    """Sets the serving status of ``names`` from periodic probes of the dependencies."""

    def __init__(
        self,
        servicer: health.aio.HealthServicer,
        names: Sequence[str],
        probes: Sequence[BoundedProbe],
        *,
        interval: float = PROBE_INTERVAL_SECONDS,
        engine: AsyncEngine | None = None,
    ) -> None:
        self.servicer = servicer
        self.engine = engine  # the probes' own database engine, disposed at the end
        self.names = tuple(dict.fromkeys(["", *names]))
        self.probes = tuple(probes)
        self.interval = interval
        self.down: tuple[str, ...] | None = None  # names of failing dependencies
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Set liveness, run one probe round now, then keep probing in the background."""
        await self.servicer.set(LIVENESS_SERVICE, SERVING)
        await self.probe_once()
        self._task = asyncio.create_task(self._run(), name="health-monitor")

    async def stop(self) -> None:
        """Stop probing and report every name NOT_SERVING (liveness stays SERVING
        until the server itself goes)."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for probe in self.probes:
            await probe.cancel()
        for name in self.names:
            await self.servicer.set(name, NOT_SERVING)

    async def dispose(self) -> None:
        """Close the probes' database connection (after :meth:`stop`)."""
        if self.engine is not None:
            await self.engine.dispose()

    async def probe_once(self) -> None:
        """One round: probe every dependency, then publish the verdict if it changed."""
        results = await asyncio.gather(*(probe.healthy() for probe in self.probes))
        down = tuple(probe.name for probe, ok in zip(self.probes, results, strict=True) if not ok)
        if down == self.down:
            return
        if down:
            log.warning("not ready: %s not answering", ", ".join(down))
        elif self.down is not None:
            log.info("ready again: every dependency answers")
        self.down = down
        status = NOT_SERVING if down else SERVING
        for name in self.names:
            await self.servicer.set(name, status)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.probe_once()
            except Exception:  # a bug here must not end the probing
                log.exception("health probe round failed")
