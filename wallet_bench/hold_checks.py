"""Bench invariants of the transfer holds, over the run's rows (see wallet_service.holds).

Computed in Python from the snapshot :class:`wallet_bench.checks.LogReader` takes, the
same rules as ``walletctl reconcile``'s hold checks (whose table of allowed saga/hold
states this module shares):

- conservation: sum of balances + sum of OPEN holds = deposits - withdrawals;
- each hold is OPEN, POSTED or VOIDED and matches its events: one debit of its amount
  on its source, and POSTED = one credit on its destination (no refund), VOIDED = one
  refund on its source (no credit), OPEN = neither; every transfer event has a hold;
- each hold belongs to a transfer of the run and its state goes with the saga's.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from walletctl.hold_checks import HOLD_STATES_BY_TRANSFER_STATE, OPEN, POSTED, VOIDED

TRANSFER_EVENTS = ("transfer_debited", "transfer_credited", "transfer_refunded")


@dataclass(frozen=True)
class HoldRow:
    transfer_id: str
    from_wallet_id: str
    to_wallet_id: str
    amount: int
    state: str


def conservation_problems(
    balances: dict[str, int], events: list[dict[str, Any]], holds: list[HoldRow]
) -> tuple[list[str], str]:
    """(problems, summary) of balances + open holds = deposits - withdrawals."""
    deposits = sum(e["amount"] for e in events if e["type"] == "funds_deposited")
    withdrawals = sum(e["amount"] for e in events if e["type"] == "funds_withdrawn")
    held = sum(h.amount for h in holds if h.state == OPEN)
    total = sum(balances.values())
    summary = (
        f"balances {total} + open holds {held} = deposits - withdrawals {deposits - withdrawals}"
    )
    if total + held != deposits - withdrawals:
        return [f"balances {total} + open holds {held} != {deposits - withdrawals}"], summary
    return [], summary


def hold_event_problems(events: list[dict[str, Any]], holds: list[HoldRow]) -> list[str]:
    """Each hold against its events, and each transfer event against its hold."""
    by_transfer: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for event in events:
        if event["type"] in TRANSFER_EVENTS and event["transfer_id"]:
            by_transfer[event["transfer_id"]].append(event)
    problems = []
    known = {hold.transfer_id for hold in holds}
    for transfer_id in sorted(set(by_transfer) - known):
        problems.append(f"{transfer_id}: transfer events without a hold")
    for hold in holds:
        seen = by_transfer.get(hold.transfer_id, [])

        def count(kind: str, wallet_id: str, hold: HoldRow = hold, seen: list = seen) -> int:
            return sum(
                1
                for e in seen
                if e["type"] == kind and e["wallet_id"] == wallet_id and e["amount"] == hold.amount
            )

        shape = tuple(sum(1 for e in seen if e["type"] == kind) for kind in TRANSFER_EVENTS)
        debit = count("transfer_debited", hold.from_wallet_id)
        wanted = {
            OPEN: ((1, 0, 0), True),
            POSTED: ((1, 1, 0), count("transfer_credited", hold.to_wallet_id) == 1),
            VOIDED: ((1, 0, 1), count("transfer_refunded", hold.from_wallet_id) == 1),
        }.get(hold.state)
        if wanted is None or shape != wanted[0] or debit != 1 or not wanted[1]:
            problems.append(
                f"{hold.transfer_id}: hold {hold.state} with (debit, credit, refund) = {shape}"
            )
    return problems


def hold_transfer_problems(transfers: dict[str, str], holds: list[HoldRow]) -> list[str]:
    """Each saga's hold state allowed for its state; no hold without its saga."""
    by_transfer = {hold.transfer_id: hold for hold in holds}
    problems = [
        f"{t}: hold {by_transfer[t].state} without a transfer"
        for t in sorted(set(by_transfer) - set(transfers))
    ]
    for transfer_id, state in sorted(transfers.items()):
        hold = by_transfer.get(transfer_id)
        hold_state = hold.state if hold is not None else ""
        if hold_state not in HOLD_STATES_BY_TRANSFER_STATE.get(state, ()):
            problems.append(f"{transfer_id}: {state} with hold {hold_state or 'none'}")
    return problems
