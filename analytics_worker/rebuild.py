"""Rebuild and verify the ``wallet_stats`` projection from the immutable event log.

Public entry points for ``walletctl`` (and tests):

- ``await rebuild_wallet_stats(db) -> int``: replaces every row of ``wallet_stats`` by
  SQL aggregates over the ``wallet_events`` the analytics consumer has applied; returns
  the number of wallets written. Safe while the consumer runs.
- ``await compare_with_log(db) -> list[StatsDrift]``: every wallet whose stored stats
  differ from those aggregates (empty list = no drift). A lagging consumer is not
  drift: events not yet applied are in neither side.
- ``await count_unapplied(db) -> int``: events of the log that the consumer has not
  applied yet (still queued, in flight, or dead-lettered): the lag.
"""

from __future__ import annotations

from analytics_worker.domain import StatsDrift
from analytics_worker.store import AnalyticsStore
from wallet_platform.clock import Clock, utcnow
from wallet_platform.storage.database import Database


async def rebuild_wallet_stats(db: Database, clock: Clock = utcnow) -> int:
    return await AnalyticsStore(db).rebuild(clock())


async def compare_with_log(db: Database) -> list[StatsDrift]:
    projected, expected = await AnalyticsStore(db).projected_and_expected()
    drifts: list[StatsDrift] = []
    for wallet_id in sorted(projected.keys() | expected.keys()):
        left, right = projected.get(wallet_id), expected.get(wallet_id)
        if left != right:
            drifts.append(StatsDrift(wallet_id, left, right))
    return drifts


async def count_unapplied(db: Database) -> int:
    return await AnalyticsStore(db).count_unapplied()
