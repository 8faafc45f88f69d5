"""Forget old withdrawals: ``fraud_withdrawals`` only needs the recent past.

The rapid rule looks at most one window (W) either side of a withdrawal, so a row is
useless once no new withdrawal can land near it. Events may arrive late (retries, a
relay backlog, a DLQ replay), hence a generous retention: ``max(1 day, 4 W)`` of wall
clock. This is housekeeping only; the rules themselves never read the wall clock. A
withdrawal arriving later than the retention is still judged, against what is left.
Alerts are never pruned (they are the record, and their bursts stay known).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from datetime import datetime, timedelta

import grpc

from fraud_worker.rules import FraudRules
from fraud_worker.store import FraudStore
from wallet_platform.clock import Clock, utcnow
from wallet_platform.storage.database import Database

log = logging.getLogger(__name__)

MIN_RETENTION = timedelta(days=1)
PRUNE_INTERVAL_SECONDS = 600.0
PRUNE_BATCH = 5000


def retention(rules: FraudRules) -> timedelta:
    return max(MIN_RETENTION, 4 * rules.rapid_window)


async def prune_withdrawals(db: Database, before: datetime, batch: int = PRUNE_BATCH) -> int:
    """Delete withdrawals with an event time before ``before``, in small transactions
    (never a long lock); returns how many went."""
    return await FraudStore(db).prune_withdrawals(before, batch)


class WithdrawalPruner:
    """Component: prunes every ``interval`` seconds (first run after one interval)."""

    name = "fraud-withdrawal-pruner"

    def __init__(
        self,
        db: Database,
        rules: FraudRules,
        *,
        interval: float = PRUNE_INTERVAL_SECONDS,
        clock: Clock = utcnow,
    ) -> None:
        self._db = db
        self._keep = retention(rules)
        self._interval = interval
        self._clock = clock
        self._task: asyncio.Task[None] | None = None

    def add_to_server(self, server: grpc.aio.Server) -> Sequence[str]:
        return ()

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=self.name)

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                pruned = await prune_withdrawals(self._db, self._clock() - self._keep)
                if pruned:
                    log.info("pruned %d old withdrawal(s) from fraud_withdrawals", pruned)
            except Exception:
                log.exception("pruning fraud_withdrawals failed; will try again")
