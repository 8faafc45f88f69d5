"""SQL over ``wallet_events`` derived from the one table of event effects.

:data:`wallet_events.effects.EFFECTS` says what each event type does to a balance and
to the statistics counters; these builders turn it into SQL expressions, so no query
restates which types credit, debit or count.
"""

from __future__ import annotations

from collections.abc import Iterable

from wallet_events import types
from wallet_events.effects import COUNTERS, EFFECTS, EVENTS_APPLIED

# The saga's steps in the log, in their order.
TRANSFER_EVENTS: tuple[str, ...] = (
    types.TRANSFER_DEBITED,
    types.TRANSFER_CREDITED,
    types.TRANSFER_REFUNDED,
)


def column(alias: str, name: str) -> str:
    return f"{alias}.{name}" if alias else name


def type_list(names: Iterable[str]) -> str:
    """``'a', 'b'``: event type names (trusted constants) for an SQL ``IN``."""
    return ", ".join(f"'{name}'" for name in names)


def signed_amount(alias: str = "") -> str:
    """SQL for an event's effect on its wallet's balance (``alias`` = table alias)."""
    kind, amount = column(alias, "type"), column(alias, "amount")
    whens = " ".join(
        f"WHEN '{name}' THEN {'-' if effect.balance_sign < 0 else ''}{amount}"
        for name, effect in EFFECTS.items()
        if effect.balance_sign
    )
    return f"CASE {kind} {whens} ELSE 0 END"


def amount_of(event_type: str, alias: str = "") -> str:
    """SQL summing the amounts of one event type (deposits, withdrawals)."""
    kind, amount = column(alias, "type"), column(alias, "amount")
    return f"SUM(CASE WHEN {kind} = '{event_type}' THEN {amount} ELSE 0 END)"


def counter_sums(alias: str = "") -> str:
    """SQL select items ``SUM(...) AS <counter>`` for every statistics counter.

    Each counter sums ``stats_sign * amount`` (totals) or ``stats_sign`` (counts) over
    the event types feeding it; ``events_applied`` counts every row.
    """
    kind, amount = column(alias, "type"), column(alias, "amount")
    items = []
    for counter in COUNTERS:
        if counter == EVENTS_APPLIED:
            items.append(f"COUNT(*) AS {counter}")
            continue
        whens = []
        for name, effect in EFFECTS.items():
            if counter == effect.total:
                whens.append(f"WHEN '{name}' THEN {_times(effect.stats_sign, amount)}")
            elif counter == effect.count:
                whens.append(f"WHEN '{name}' THEN {effect.stats_sign}")
        items.append(f"SUM(CASE {kind} {' '.join(whens)} ELSE 0 END) AS {counter}")
    return ",\n".join(items)


def _times(sign: int, amount: str) -> str:
    return amount if sign > 0 else f"-{amount}"
