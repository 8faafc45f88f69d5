"""The names and one-line meanings of the invariant checks, in report order.

Kept apart from the checks themselves (which need SQLAlchemy) so that building
``walletctl``'s help does not import the database stack.
"""

from __future__ import annotations

CHECK_DESCRIPTIONS: dict[str, str] = {
    "balance_equals_event_sum": "each balance = the signed sum of its wallet's events",
    "balance_equals_last_event": (
        "each balance = its last event's balance_after; version = last sequence"
    ),
    "sequences_gap_free": "event sequences run 1, 2, 3... per wallet without gaps",
    "event_chain": "each event's balance_after = the previous one's + its signed amount",
    "no_negative_balance": "no balance is negative",
    "conservation": "per currency: balances + open holds = deposits - withdrawals",
    "transfers_net_zero": (
        "finished transfers net to zero (COMPLETED debit+credit, COMPENSATED "
        "debit+refund, FAILED nothing)"
    ),
    "no_step_applied_twice": "no saga step applied twice; never both a credit and a refund",
    "transfer_events_have_transfer": "every transfer event belongs to a known transfer",
    "holds_match_events": (
        "each hold has its debit; POSTED = one credit, VOIDED = one refund, OPEN = neither"
    ),
    "transfer_events_have_hold": "every transfer debit, credit and refund has its hold",
    "holds_match_transfers": (
        "each hold is its saga's; state matches (COMPLETED=POSTED, COMPENSATED=VOIDED, FAILED=none)"
    ),
    "sagas_finished": "no saga stuck unfinished",
    "outbox_row_per_event": "every event has its outbox row",
    "outbox_drained": "the outbox is drained",
    "projection_matches_log": "wallet_stats = SQL aggregates over the applied events",
    "projection_lag": "the analytics worker has applied every older event",
    "events_delivered": "every published event is applied or queued, for each consumer",
}
