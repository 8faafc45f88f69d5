"""A run's shape and the client's own ledger of what happened.

The :class:`Ledger` remembers every acknowledged write, every definite rejection,
every outcome still unknown and every terminal transfer; once the run has settled it
predicts each wallet's balance and statistics exactly
(:meth:`Ledger.expected_wallets`), which is what the checks compare the platform with.
"""

from __future__ import annotations

import uuid
from collections import Counter
from dataclasses import dataclass, field

from saga_orchestrator.domain import TransferState
from wallet_events import types
from wallet_events.effects import COUNT_COUNTERS, EFFECTS, TOTAL_COUNTERS

OPERATIONS = ("deposit", "withdraw", "transfer")
# The events a terminal transfer leaves in the log, on its source ("from") and
# destination ("to"): a compensated transfer's refund gives its debit back.
TRANSFER_EVENTS_BY_STATE: dict[str, tuple[tuple[str, str], ...]] = {
    TransferState.COMPLETED: (("from", types.TRANSFER_DEBITED), ("to", types.TRANSFER_CREDITED)),
    TransferState.COMPENSATED: (
        ("from", types.TRANSFER_DEBITED),
        ("from", types.TRANSFER_REFUNDED),
    ),
    TransferState.FAILED: (),
}
# The API's terminal transfer states (TRANSFER_STATE_<name>) -> the saga's state name.


def parse_mix(text: str) -> dict[str, int]:
    """``deposit=60,withdraw=20,transfer=20`` -> weights (unknown names are an error)."""
    weights: dict[str, int] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, _, value = part.partition("=")
        name = name.strip()
        if name not in OPERATIONS:
            raise ValueError(f"unknown operation {name!r} in mix (use {', '.join(OPERATIONS)})")
        weight = int(value) if value else 1
        if weight < 0:
            raise ValueError(f"negative weight for {name}")
        weights[name] = weight
    if not any(weights.values()):
        raise ValueError("the mix needs at least one operation with a positive weight")
    return weights


@dataclass
class LoadConfig:
    """One run's shape (the CLI flags)."""

    duration_s: float | None = 10.0
    requests: int | None = None
    concurrency: int = 32
    mix: dict[str, int] = field(
        default_factory=lambda: {"deposit": 60, "withdraw": 20, "transfer": 20}
    )
    wallets: int = 1000
    hot_skew: float = 0.0  # share of picks that land on the hot wallets
    hot_wallets: int = 10
    retry_share: float = 0.0
    initial_balance: int = 1_000_000
    max_amount: int = 1_000
    currency: str = "USD"
    deadline_s: float = 10.0
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    label: str = "load"
    progress: bool = True
    seed: int | None = None

    @property
    def wallet_prefix(self) -> str:
        return f"wb-{self.run_id}-"

    def wallet_id(self, index: int) -> str:
        return f"{self.wallet_prefix}{index}"


@dataclass
class Op:
    """One logical write and its idempotency key."""

    kind: str
    request_id: str
    wallet_id: str
    amount: int
    to_wallet_id: str = ""


@dataclass
class Ledger:
    """What the client knows happened (the ground truth the checks compare against)."""

    acked: dict[str, Op] = field(default_factory=dict)
    rejected: dict[str, tuple[Op, str]] = field(default_factory=dict)
    unknown: dict[str, Op] = field(default_factory=dict)
    transfers: dict[str, tuple[Op, str]] = field(default_factory=dict)  # id -> (op, state)
    unfinished_transfers: dict[str, Op] = field(default_factory=dict)
    replays: int = 0
    replay_mismatches: list[str] = field(default_factory=list)

    def expected_wallets(self, config: LoadConfig) -> dict[str, dict[str, int]]:
        """Per wallet: balance and the analytics totals the log must produce.

        Each acknowledged write and each terminal transfer is turned into the events it
        leaves in the log, added up with the events' one effects table.
        """
        zero = {"balance": 0, **dict.fromkeys((*TOTAL_COUNTERS, *COUNT_COUNTERS), 0)}
        wallets = {config.wallet_id(i): dict(zero) for i in range(config.wallets)}

        def apply(wallet_id: str, event_type: str, amount: int) -> None:
            row, effect = wallets[wallet_id], EFFECTS[event_type]
            row["balance"] += effect.signed_amount(amount)
            if effect.total is not None and effect.count is not None:
                row[effect.total] += effect.stats_sign * amount
                row[effect.count] += effect.stats_sign

        for op in self.acked.values():
            if op.kind in ("deposit", "fund"):
                apply(op.wallet_id, types.FUNDS_DEPOSITED, op.amount)
            elif op.kind == "withdraw":
                apply(op.wallet_id, types.FUNDS_WITHDRAWN, op.amount)
        for op, state in self.transfers.values():
            for wallet_id, event_type in TRANSFER_EVENTS_BY_STATE.get(state, ()):
                apply(op.to_wallet_id if wallet_id == "to" else op.wallet_id, event_type, op.amount)
        return wallets

    def transfer_states(self) -> Counter[str]:
        return Counter(state for _, state in self.transfers.values())
