"""What each event type does: to its wallet's balance, and to the statistics counters.

One table, :data:`EFFECTS`, for everyone who adds events up: the ledger (a balance is
the signed sum of its wallet's events), the analytics projection and its rebuild, the
reconciliation and the benchmark's checks. Pure Python.

- ``balance_sign``: +1 the amount is credited, -1 debited, 0 the balance is unchanged
  (``wallet_created``, ``wallet_frozen``, ``wallet_unfrozen``).
- ``total`` / ``count``: the statistics counters the event feeds, ``stats_sign *
  amount`` to the total and ``stats_sign`` to the count. A refund gives a transfer's
  debit back, so it feeds the *outgoing* counters with -1: outgoing figures are net of
  refunds (a compensated transfer counts as never sent). Types without counters only
  count in ``events_applied``, as every wallet log entry does.
"""

from __future__ import annotations

from dataclasses import dataclass

from wallet_events import types

# The statistics counters (the ``wallet_stats`` columns of the analytics projection).
TOTAL_COUNTERS: tuple[str, ...] = (
    "total_deposited",
    "total_withdrawn",
    "total_transferred_in",
    "total_transferred_out",
)
COUNT_COUNTERS: tuple[str, ...] = (
    "deposit_count",
    "withdrawal_count",
    "transfer_in_count",
    "transfer_out_count",
)
EVENTS_APPLIED = "events_applied"  # +1 for every wallet log entry
COUNTERS: tuple[str, ...] = (*TOTAL_COUNTERS, *COUNT_COUNTERS, EVENTS_APPLIED)


@dataclass(frozen=True)
class Effect:
    """One event type's effect on its wallet's balance and statistics."""

    balance_sign: int  # +1 credit, -1 debit, 0 no balance change
    total: str | None = None  # the statistics total it feeds (None: none)
    count: str | None = None  # the statistics count it feeds (None: none)
    stats_sign: int = 0  # +1 adds to total and count, -1 takes away

    def signed_amount(self, amount: int) -> int:
        """The change to the balance."""
        return self.balance_sign * amount


EFFECTS: dict[str, Effect] = {
    types.WALLET_CREATED: Effect(0),
    types.FUNDS_DEPOSITED: Effect(+1, "total_deposited", "deposit_count", +1),
    types.FUNDS_WITHDRAWN: Effect(-1, "total_withdrawn", "withdrawal_count", +1),
    types.TRANSFER_DEBITED: Effect(-1, "total_transferred_out", "transfer_out_count", +1),
    types.TRANSFER_CREDITED: Effect(+1, "total_transferred_in", "transfer_in_count", +1),
    types.TRANSFER_REFUNDED: Effect(+1, "total_transferred_out", "transfer_out_count", -1),
    types.WALLET_FROZEN: Effect(0),
    types.WALLET_UNFROZEN: Effect(0),
}

CREDITS: tuple[str, ...] = tuple(name for name, e in EFFECTS.items() if e.balance_sign > 0)
DEBITS: tuple[str, ...] = tuple(name for name, e in EFFECTS.items() if e.balance_sign < 0)
