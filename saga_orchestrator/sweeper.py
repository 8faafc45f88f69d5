"""Resumes unfinished sagas: at start-up, then every ``saga_sweep_interval_ms``.

A saga needs resuming when nobody drives it: its replica crashed (the lease expires),
was stopped (the lease was released), or its driver task died. The sweeper leases a
batch of such sagas (``claim_due``: SKIP LOCKED on PostgreSQL, so replicas sweeping at
the same moment split the work instead of colliding) and hands each to the runner.
The batch is capped so one replica does not grab everything after a long outage while
its peers sit idle.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from saga_orchestrator.engine.runner import SagaRunner
from saga_orchestrator.repository import TransferRepository

log = logging.getLogger(__name__)


class Sweeper:
    def __init__(
        self,
        repository: TransferRepository,
        runner: SagaRunner,
        *,
        interval: float = 2.0,
        max_active: int = 500,
        batch: int = 100,
    ) -> None:
        self.repository = repository
        self.runner = runner
        self.interval = interval
        self.max_active = max_active
        self.batch = batch
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    async def sweep_once(self) -> int:
        """Lease and start every due saga this replica has room for; returns how many."""
        room = min(self.batch, self.max_active - self.runner.active)
        if room <= 0:
            return 0
        now = self.runner.clock()
        claimed = await self.repository.claim_due(
            self.runner.owner, now, self.runner.lease_until(), room
        )
        started = sum(1 for transfer_id in claimed if self.runner.spawn(transfer_id))
        if claimed:
            log.info("sweeper resumed %d saga(s)", started, extra={"claimed": len(claimed)})
        return started

    async def _loop(self) -> None:
        # The flag, not only the cancellation, ends the loop: a cancellation that lands
        # inside a database call can surface as an ordinary error.
        while not self._stopping:
            try:
                await self.sweep_once()
            except asyncio.CancelledError:
                raise
            except Exception as error:
                if self._stopping:
                    return
                log.warning("saga sweep failed: %s: %s", type(error).__name__, error)
            await asyncio.sleep(self.interval)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._loop(), name="saga sweeper")

    async def stop(self) -> None:
        self._stopping = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
