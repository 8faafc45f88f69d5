"""Checks of the transfer sagas (the orchestrator's ``transfers`` table) against the log.

A finished saga left exactly its steps in the log: COMPLETED = one debit and one
credit, COMPENSATED = one debit and one refund, FAILED = nothing, each of the
transfer's amount on the right wallet. No step is ever applied twice, every step in
the log belongs to a known transfer, and no saga stays unfinished for long (recovery
finishes them). The states are the orchestrator's own (:mod:`saga_orchestrator.domain`).
"""

from __future__ import annotations

from datetime import timedelta

from saga_orchestrator.domain import TERMINAL_STATES, UNFINISHED_STATES, TransferState
from wallet_checks.context import CheckContext, CheckResult, as_datetime
from wallet_checks.effects_sql import TRANSFER_EVENTS, type_list
from wallet_events import types

FINISHED = type_list(sorted(TERMINAL_STATES))
UNFINISHED = type_list(sorted(UNFINISHED_STATES))

# (debits, credits, refunds) in the log of a finished saga, by its state.
STEPS_BY_FINAL_STATE: dict[str, tuple[int, int, int]] = {
    TransferState.COMPLETED: (1, 1, 0),
    TransferState.COMPENSATED: (1, 0, 1),
    TransferState.FAILED: (0, 0, 0),
}


def _steps_match_sql() -> str:
    """SQL true when a finished saga's step counts (and good ones) match its state."""
    cases = []
    for state, (debits, credits, refunds) in STEPS_BY_FINAL_STATE.items():
        cases.append(
            f"(state = '{state}' AND debits = {debits} AND good_debits = {debits} "
            f"AND credits = {credits} AND good_credits = {credits} "
            f"AND refunds = {refunds} AND good_refunds = {refunds})"
        )
    return " OR ".join(cases)


def transfers_net_zero(ctx: CheckContext) -> CheckResult:
    """Each finished saga's steps in the log, of its amount, on the right wallet."""
    r = ctx.result("transfers_net_zero")
    mine = ctx.scope("t.from_wallet_id")
    r.facts["transfers"] = ctx.count_by(
        f"SELECT state AS key, COUNT(*) AS n FROM transfers t WHERE {mine} GROUP BY state"
    )
    debit, credit, refund = TRANSFER_EVENTS
    for row in ctx.rows(
        f"""
        SELECT * FROM (
            SELECT t.transfer_id, t.state, t.amount,
                SUM(CASE WHEN e.type = '{debit}' THEN 1 ELSE 0 END) AS debits,
                SUM(CASE WHEN e.type = '{credit}' THEN 1 ELSE 0 END) AS credits,
                SUM(CASE WHEN e.type = '{refund}' THEN 1 ELSE 0 END) AS refunds,
                SUM(CASE WHEN e.type = '{debit}' AND e.amount = t.amount
                         AND e.wallet_id = t.from_wallet_id THEN 1 ELSE 0 END) AS good_debits,
                SUM(CASE WHEN e.type = '{credit}' AND e.amount = t.amount
                         AND e.wallet_id = t.to_wallet_id THEN 1 ELSE 0 END) AS good_credits,
                SUM(CASE WHEN e.type = '{refund}' AND e.amount = t.amount
                         AND e.wallet_id = t.from_wallet_id THEN 1 ELSE 0 END) AS good_refunds
            FROM transfers t
            LEFT JOIN wallet_events e ON e.transfer_id = t.transfer_id
            WHERE t.state IN ({FINISHED}) AND {mine}
            GROUP BY t.transfer_id, t.state, t.amount
        ) s
        WHERE NOT ({_steps_match_sql()})
        ORDER BY transfer_id
        """
    ):
        r.add(
            {k: row[k] for k in ("transfer_id", "state", "amount", "debits", "credits", "refunds")},
            ctx.limit,
        )
    return r


def no_step_applied_twice(ctx: CheckContext) -> CheckResult:
    r = ctx.result("no_step_applied_twice")
    mine = ctx.scope("wallet_id")
    for row in ctx.rows(
        f"""
        SELECT transfer_id, type, COUNT(*) AS times
        FROM wallet_events
        WHERE transfer_id IS NOT NULL AND type IN ({type_list(TRANSFER_EVENTS)}) AND {mine}
        GROUP BY transfer_id, type
        HAVING COUNT(*) > 1
        ORDER BY transfer_id
        """
    ):
        r.add(row, ctx.limit)
    settlements = type_list((types.TRANSFER_CREDITED, types.TRANSFER_REFUNDED))
    return ctx.add_rows(
        r,
        f"""
        SELECT transfer_id, 'credit and refund' AS type, COUNT(*) AS times
        FROM wallet_events
        WHERE transfer_id IS NOT NULL AND type IN ({settlements}) AND {mine}
        GROUP BY transfer_id
        HAVING COUNT(DISTINCT type) > 1
        ORDER BY transfer_id
        """,
    )


def transfer_events_without(ctx: CheckContext, name: str, table: str) -> CheckResult:
    """Check ``name``: the transfer events (debit, credit, refund) whose transfer has no
    row in ``table`` (``transfers``: the saga; ``transfer_holds``: the ledger's hold)."""
    return ctx.add_rows(
        ctx.result(name),
        f"""
        SELECT e.event_id, e.wallet_id, e.type, e.amount, e.transfer_id
        FROM wallet_events e
        LEFT JOIN {table} known ON known.transfer_id = e.transfer_id
        WHERE e.type IN ({type_list(TRANSFER_EVENTS)})
          AND known.transfer_id IS NULL AND {ctx.scope("e.wallet_id")}
        ORDER BY e.transfer_id, e.type
        """,
    )


def transfer_events_have_transfer(ctx: CheckContext) -> CheckResult:
    return transfer_events_without(ctx, "transfer_events_have_transfer", "transfers")


def sagas_finished(ctx: CheckContext) -> CheckResult:
    r = ctx.result("sagas_finished")
    cutoff = ctx.now - timedelta(seconds=ctx.options.saga_max_age_seconds)
    mine = ctx.scope("from_wallet_id")
    r.facts["unfinished"] = ctx.scalar(
        f"SELECT COUNT(*) FROM transfers WHERE state IN ({UNFINISHED}) AND {mine}"
    )
    r.note = f"stuck = unfinished and unchanged for {ctx.options.saga_max_age_seconds:g}s"
    for row in ctx.rows(
        f"""
        SELECT transfer_id, state, attempts, last_error, updated_at
        FROM transfers
        WHERE state IN ({UNFINISHED}) AND updated_at < :cutoff AND {mine}
        ORDER BY updated_at
        """,
        cutoff=cutoff,
    ):
        row["updated_at"] = as_datetime(row["updated_at"])
        r.add(row, ctx.limit)
    return r
