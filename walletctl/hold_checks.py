"""Reconcile checks of the transfer holds (``transfer_holds``, see wallet_service.holds).

A debit records its transfer's hold in the same transaction; the credit posts it, the
refund voids it. So, against the event log:

- every hold is OPEN, POSTED or VOIDED, has exactly one ``transfer_debited`` event of
  its amount and currency on its source, and: POSTED = exactly one
  ``transfer_credited`` of its amount on its destination and no refund; VOIDED =
  exactly one ``transfer_refunded`` on its source and no credit; OPEN = neither;
- every transfer event (debit, credit, refund) belongs to a hold: a credit without one
  is money that came from nowhere;

and, when the orchestrator's ``transfers`` table is there, each hold is its transfer's
(same wallets, amount, currency) and its state goes with the saga's state
(:data:`HOLD_STATES_BY_TRANSFER_STATE`). Open holds are the money in flight.

Each function takes reconcile's checker (``rows``, ``scalar``, ``result``, ``limit``)
and returns its ``CheckResult``; the checks are listed in
:mod:`walletctl.check_catalog` like the others.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import inspect

OPEN, POSTED, VOIDED = "OPEN", "POSTED", "VOIDED"

# Which hold states each saga state allows ('' = no hold). An unfinished saga may be a
# step ahead in the ledger (the step committed, the saga not yet told: the crash
# window the orchestrator resumes from); a finished one must match exactly.
HOLD_STATES_BY_TRANSFER_STATE: dict[str, tuple[str, ...]] = {
    "PENDING": ("", OPEN),
    "DEBITED": (OPEN, POSTED, VOIDED),
    "COMPENSATING": (OPEN, VOIDED),
    "COMPLETED": (POSTED,),
    "COMPENSATED": (VOIDED,),
    "FAILED": ("",),
}

_EVENT_COUNTS = """
SELECT * FROM (
    SELECT h.transfer_id, h.state, h.amount, h.from_wallet_id, h.to_wallet_id,
        SUM(CASE WHEN e.type = 'transfer_debited' THEN 1 ELSE 0 END) AS debits,
        SUM(CASE WHEN e.type = 'transfer_debited' AND e.wallet_id = h.from_wallet_id
                 AND e.amount = h.amount AND e.currency = h.currency
            THEN 1 ELSE 0 END) AS good_debits,
        SUM(CASE WHEN e.type = 'transfer_credited' THEN 1 ELSE 0 END) AS credits,
        SUM(CASE WHEN e.type = 'transfer_credited' AND e.wallet_id = h.to_wallet_id
                 AND e.amount = h.amount AND e.currency = h.currency
            THEN 1 ELSE 0 END) AS good_credits,
        SUM(CASE WHEN e.type = 'transfer_refunded' THEN 1 ELSE 0 END) AS refunds,
        SUM(CASE WHEN e.type = 'transfer_refunded' AND e.wallet_id = h.from_wallet_id
                 AND e.amount = h.amount AND e.currency = h.currency
            THEN 1 ELSE 0 END) AS good_refunds
    FROM transfer_holds h
    LEFT JOIN wallet_events e ON e.transfer_id = h.transfer_id
    GROUP BY h.transfer_id, h.state, h.amount, h.from_wallet_id, h.to_wallet_id
) s
WHERE NOT (
    debits = 1 AND good_debits = 1 AND (
        (state = 'OPEN' AND credits = 0 AND refunds = 0)
        OR (state = 'POSTED' AND credits = 1 AND good_credits = 1 AND refunds = 0)
        OR (state = 'VOIDED' AND refunds = 1 AND good_refunds = 1 AND credits = 0)
    )
)
ORDER BY transfer_id
"""


def holds_match_events(checker: Any) -> Any:
    r = checker.result("holds_match_events")
    r.facts["holds"] = {
        row["state"]: int(row["n"])
        for row in checker.rows(
            "SELECT state, COUNT(*) AS n FROM transfer_holds GROUP BY state ORDER BY state"
        )
    }
    for row in checker.rows(_EVENT_COUNTS):
        r.add(
            {k: row[k] for k in ("transfer_id", "state", "amount", "debits", "credits", "refunds")},
            checker.limit,
        )
    return r


def transfer_events_have_hold(checker: Any) -> Any:
    r = checker.result("transfer_events_have_hold")
    for row in checker.rows(
        """
        SELECT e.event_id, e.wallet_id, e.type, e.amount, e.transfer_id
        FROM wallet_events e
        LEFT JOIN transfer_holds h ON h.transfer_id = e.transfer_id
        WHERE e.type IN ('transfer_debited', 'transfer_credited', 'transfer_refunded')
          AND h.transfer_id IS NULL
        ORDER BY e.transfer_id, e.type
        """
    ):
        r.add(row, checker.limit)
    return r


def _allowed_pairs_sql() -> str:
    """SQL true when (t.state, hold state) is allowed; no hold counts as ''."""
    cases = " OR ".join(
        f"(t.state = '{transfer_state}' AND COALESCE(h.state, '') IN "
        f"({', '.join(repr(s) for s in hold_states)}))"
        for transfer_state, hold_states in HOLD_STATES_BY_TRANSFER_STATE.items()
    )
    return f"({cases})"


def holds_match_transfers(checker: Any) -> Any:
    r = checker.result("holds_match_transfers")
    if not inspect(checker.conn).has_table("transfers"):
        r.note = "no transfers table: not checked"
        return r
    r.note = "unfinished sagas may be one step ahead in the ledger (crash window)"
    in_flight = checker.rows(
        """
        SELECT
            (SELECT COALESCE(SUM(amount), 0) FROM transfer_holds WHERE state = 'OPEN')
                AS open_holds,
            (SELECT COALESCE(SUM(amount), 0) FROM transfers
             WHERE state IN ('DEBITED', 'COMPENSATING')) AS debited_sagas
        """
    )[0]
    r.facts["money_in_flight"] = {k: int(v) for k, v in in_flight.items()}
    for row in checker.rows(
        f"""
        SELECT COALESCE(t.transfer_id, h.transfer_id) AS transfer_id,
               t.state AS transfer_state, h.state AS hold_state,
               t.amount AS transfer_amount, h.amount AS hold_amount
        FROM transfers t
        LEFT JOIN transfer_holds h ON h.transfer_id = t.transfer_id
        WHERE NOT {_allowed_pairs_sql()}
           OR (h.transfer_id IS NOT NULL AND (
                h.from_wallet_id <> t.from_wallet_id OR h.to_wallet_id <> t.to_wallet_id
                OR h.amount <> t.amount OR h.currency <> COALESCE(t.currency, h.currency)))
        UNION ALL
        SELECT h.transfer_id, NULL, h.state, NULL, h.amount
        FROM transfer_holds h
        LEFT JOIN transfers t ON t.transfer_id = h.transfer_id
        WHERE t.transfer_id IS NULL
        ORDER BY transfer_id
        """
    ):
        r.add(row, checker.limit)
    return r


HOLD_CHECKS = {
    "holds_match_events": holds_match_events,
    "transfer_events_have_hold": transfer_events_have_hold,
    "holds_match_transfers": holds_match_transfers,
}
