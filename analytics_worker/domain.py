"""What each wallet log entry does to a wallet's statistics (pure, no I/O).

The published language's effects table (:data:`wallet_events.effects.EFFECTS`) is the
whole definition. The live projection turns each event into a :class:`StatsDelta`
with it, and the rebuild turns the same table into SQL ``CASE`` expressions over
``wallet_events``, so the two cannot disagree.

Beyond the table (semantics in ``docs/analytics-and-fraud.md``): every wallet log
entry adds 1 to ``events_applied``, and ``last_activity_at`` becomes the latest event
time (``occurred_at``) seen, whatever the arrival order.

Messages that are not wallet log entries (saga milestones, fraud alerts) change nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from datetime import datetime

from wallet_events.effects import COUNT_COUNTERS, COUNTERS, EFFECTS, TOTAL_COUNTERS

# The counters of a wallet's row, as the effects table names them.
TOTAL_FIELDS = TOTAL_COUNTERS
COUNT_FIELDS = COUNT_COUNTERS
COUNTER_FIELDS = COUNTERS


@dataclass(frozen=True)
class StatsDelta:
    """The change one event (or a merged batch of events) makes to one wallet's row."""

    wallet_id: str
    last_activity_at: datetime
    total_deposited: int = 0
    total_withdrawn: int = 0
    total_transferred_in: int = 0
    total_transferred_out: int = 0
    deposit_count: int = 0
    withdrawal_count: int = 0
    transfer_in_count: int = 0
    transfer_out_count: int = 0
    events_applied: int = 0

    def merge(self, other: StatsDelta) -> StatsDelta:
        """Both changes at once (same wallet): counters add, the later time wins."""
        if other.wallet_id != self.wallet_id:
            raise ValueError("cannot merge deltas of different wallets")
        changes: dict[str, object] = {
            name: getattr(self, name) + getattr(other, name) for name in COUNTER_FIELDS
        }
        changes["last_activity_at"] = max(self.last_activity_at, other.last_activity_at)
        return replace(self, **changes)  # type: ignore[arg-type]


def delta_for(wallet_id: str, event_type: str, amount: int, occurred_at: datetime) -> StatsDelta:
    """The change a wallet log entry of ``event_type`` makes to its wallet's stats."""
    effect = EFFECTS.get(event_type)
    changes: dict[str, int] = {"events_applied": 1}
    if effect is not None and effect.total is not None and effect.count is not None:
        changes[effect.total] = effect.stats_sign * amount
        changes[effect.count] = effect.stats_sign
    return StatsDelta(wallet_id=wallet_id, last_activity_at=occurred_at, **changes)


def merge_by_wallet(deltas: list[StatsDelta]) -> list[StatsDelta]:
    """One delta per wallet (a batch becomes one upsert per wallet), in wallet order.

    Sorting by wallet id makes concurrent batches lock rows in the same order.
    """
    merged: dict[str, StatsDelta] = {}
    for delta in deltas:
        existing = merged.get(delta.wallet_id)
        merged[delta.wallet_id] = delta if existing is None else existing.merge(delta)
    return [merged[key] for key in sorted(merged)]


@dataclass(frozen=True)
class WalletStats:
    """One wallet's statistics as served by GetWalletStats."""

    wallet_id: str
    total_deposited: int = 0
    total_withdrawn: int = 0
    total_transferred_in: int = 0
    total_transferred_out: int = 0
    deposit_count: int = 0
    withdrawal_count: int = 0
    transfer_in_count: int = 0
    transfer_out_count: int = 0
    events_applied: int = 0
    last_activity_at: datetime | None = None

    def apply(self, delta: StatsDelta) -> WalletStats:
        """The stats after ``delta`` (the in-memory twin of the SQL upsert)."""
        changes: dict[str, object] = {
            name: getattr(self, name) + getattr(delta, name) for name in COUNTER_FIELDS
        }
        latest = delta.last_activity_at
        if self.last_activity_at is not None and self.last_activity_at > latest:
            latest = self.last_activity_at
        changes["last_activity_at"] = latest
        return replace(self, **changes)  # type: ignore[arg-type]

    def counters(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in COUNTER_FIELDS}


@dataclass(frozen=True)
class StatsDrift:
    """A wallet whose projected stats differ from the aggregates over the event log.

    ``projected`` is None when the projection has no row; ``expected`` is None when the
    log (restricted to applied events) has nothing for a projected wallet.
    """

    wallet_id: str
    projected: WalletStats | None
    expected: WalletStats | None

    def differences(self) -> dict[str, tuple[object, object]]:
        """field -> (projected, expected) for every field that differs."""
        names = [f.name for f in fields(WalletStats) if f.name != "wallet_id"]
        result: dict[str, tuple[object, object]] = {}
        for name in names:
            left = getattr(self.projected, name) if self.projected else None
            right = getattr(self.expected, name) if self.expected else None
            if left != right:
                result[name] = (left, right)
        return result
