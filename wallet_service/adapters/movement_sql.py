"""SQL of the movement rule, built from :mod:`wallet_service.domain`.

The PostgreSQL statements that move a balance in SQL (``pg_move.PG_MOVE`` and
``pg_batch_sql.MOVE_MANY``) apply a change only when :func:`predicate` holds on the
wallet row. It and the per-request values it compares against
(:func:`parameters`) are derived from the domain's definitions: the ``Movement``
table (direction, freeze rule), :func:`~wallet_service.domain.balance_bounds` (funds
and overflow as bounds on the current balance, so neither the check nor the update
can overflow) and the ACTIVE status. :func:`~wallet_service.domain.plan_movement`
accepts exactly the same cases; ``tests/integration/test_movement_sql.py`` runs every
case through both statements and the domain.
"""

from __future__ import annotations

from typing import Any

from wallet_service import domain


def predicate(*, wallet: str, allow_frozen: str, low: str, high: str, currency: str) -> str:
    """SQL that is true when the movement may apply to the row aliased ``wallet``.

    ``allow_frozen``, ``low``, ``high`` and ``currency`` are SQL expressions of the
    request (see :func:`parameters`); an empty ``currency`` means the request names
    none (deposits and withdrawals).
    """
    return (
        f"({wallet}.status = '{domain.ACTIVE}' OR {allow_frozen})"
        f" AND {wallet}.balance BETWEEN {low} AND {high}"
        f" AND ({currency} = '' OR {wallet}.currency = {currency})"
    )


def parameters(movement: domain.Movement, amount: int, currency: str) -> dict[str, Any]:
    """The request's side of :func:`predicate`, and the signed ``delta`` to add."""
    low, high = domain.balance_bounds(movement, amount)
    return {
        "delta": movement.sign * amount,
        "allow_frozen": movement.allowed_when_frozen,
        "low": low,
        "high": high,
        "currency": currency,
    }
