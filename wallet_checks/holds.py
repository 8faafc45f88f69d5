"""Checks of the transfer holds (``transfer_holds``, see :mod:`wallet_service.holds`).

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
"""

from __future__ import annotations

from sqlalchemy import inspect

from saga_orchestrator.domain import TransferState
from wallet_checks.context import CheckContext, CheckResult, as_int
from wallet_checks.effects_sql import TRANSFER_EVENTS, type_list
from wallet_checks.sagas import transfer_events_without
from wallet_service.holds import OPEN, POSTED, VOIDED

# Which hold states each saga state allows ('' = no hold). An unfinished saga may be a
# step ahead in the ledger (the step committed, the saga not yet told: the crash
# window the orchestrator resumes from); a finished one must match exactly.
HOLD_STATES_BY_TRANSFER_STATE: dict[str, tuple[str, ...]] = {
    TransferState.PENDING: ("", OPEN),
    TransferState.DEBITED: (OPEN, POSTED, VOIDED),
    TransferState.COMPENSATING: (OPEN, VOIDED),
    TransferState.COMPLETED: (POSTED,),
    TransferState.COMPENSATED: (VOIDED,),
    TransferState.FAILED: ("",),
}


def _event_counts_sql(mine: str) -> str:
    debit, credit, refund = TRANSFER_EVENTS

    def good(kind: str, wallet: str) -> str:
        return (
            f"SUM(CASE WHEN e.type = '{kind}' AND e.wallet_id = h.{wallet} "
            "AND e.amount = h.amount AND e.currency = h.currency THEN 1 ELSE 0 END)"
        )

    return f"""
    SELECT * FROM (
        SELECT h.transfer_id, h.state, h.amount, h.from_wallet_id, h.to_wallet_id,
            SUM(CASE WHEN e.type = '{debit}' THEN 1 ELSE 0 END) AS debits,
            {good(debit, "from_wallet_id")} AS good_debits,
            SUM(CASE WHEN e.type = '{credit}' THEN 1 ELSE 0 END) AS credits,
            {good(credit, "to_wallet_id")} AS good_credits,
            SUM(CASE WHEN e.type = '{refund}' THEN 1 ELSE 0 END) AS refunds,
            {good(refund, "from_wallet_id")} AS good_refunds
        FROM transfer_holds h
        LEFT JOIN wallet_events e ON e.transfer_id = h.transfer_id
        WHERE {mine}
        GROUP BY h.transfer_id, h.state, h.amount, h.from_wallet_id, h.to_wallet_id
    ) s
    WHERE NOT (
        debits = 1 AND good_debits = 1 AND (
            (state = '{OPEN}' AND credits = 0 AND refunds = 0)
            OR (state = '{POSTED}' AND credits = 1 AND good_credits = 1 AND refunds = 0)
            OR (state = '{VOIDED}' AND refunds = 1 AND good_refunds = 1 AND credits = 0)
        )
    )
    ORDER BY transfer_id
    """


def holds_match_events(ctx: CheckContext) -> CheckResult:
    r = ctx.result("holds_match_events")
    mine = ctx.scope("from_wallet_id")
    r.facts["holds"] = ctx.count_by(
        f"SELECT state AS key, COUNT(*) AS n FROM transfer_holds WHERE {mine} "
        "GROUP BY state ORDER BY state"
    )
    for row in ctx.rows(_event_counts_sql(ctx.scope("h.from_wallet_id"))):
        r.add(
            {k: row[k] for k in ("transfer_id", "state", "amount", "debits", "credits", "refunds")},
            ctx.limit,
        )
    return r


def transfer_events_have_hold(ctx: CheckContext) -> CheckResult:
    return transfer_events_without(ctx, "transfer_events_have_hold", "transfer_holds")


def _allowed_pairs_sql() -> str:
    """SQL true when (t.state, hold state) is allowed; no hold counts as ''."""
    cases = " OR ".join(
        f"(t.state = '{transfer_state}' AND COALESCE(h.state, '') IN ({type_list(hold_states)}))"
        for transfer_state, hold_states in HOLD_STATES_BY_TRANSFER_STATE.items()
    )
    return f"({cases})"


def holds_match_transfers(ctx: CheckContext) -> CheckResult:
    r = ctx.result("holds_match_transfers")
    if not inspect(ctx.conn).has_table("transfers"):
        r.note = "no transfers table: not checked"
        return r
    r.note = "unfinished sagas may be one step ahead in the ledger (crash window)"
    debited = type_list((TransferState.DEBITED, TransferState.COMPENSATING))
    in_flight = ctx.rows(
        f"""
        SELECT
            (SELECT COALESCE(SUM(amount), 0) FROM transfer_holds
             WHERE state = '{OPEN}' AND {ctx.scope("from_wallet_id")}) AS open_holds,
            (SELECT COALESCE(SUM(amount), 0) FROM transfers
             WHERE state IN ({debited}) AND {ctx.scope("from_wallet_id")}) AS debited_sagas
        """
    )[0]
    r.facts["money_in_flight"] = {k: as_int(v) for k, v in in_flight.items()}
    return ctx.add_rows(
        r,
        f"""
        SELECT COALESCE(t.transfer_id, h.transfer_id) AS transfer_id,
               t.state AS transfer_state, h.state AS hold_state,
               t.amount AS transfer_amount, h.amount AS hold_amount
        FROM transfers t
        LEFT JOIN transfer_holds h ON h.transfer_id = t.transfer_id
        WHERE (NOT {_allowed_pairs_sql()}
           OR (h.transfer_id IS NOT NULL AND (
                h.from_wallet_id <> t.from_wallet_id OR h.to_wallet_id <> t.to_wallet_id
                OR h.amount <> t.amount OR h.currency <> COALESCE(t.currency, h.currency))))
          AND {ctx.scope("t.from_wallet_id")}
        UNION ALL
        SELECT h.transfer_id, NULL, h.state, NULL, h.amount
        FROM transfer_holds h
        LEFT JOIN transfers t ON t.transfer_id = h.transfer_id
        WHERE t.transfer_id IS NULL AND {ctx.scope("h.from_wallet_id")}
        ORDER BY transfer_id
        """,
    )
