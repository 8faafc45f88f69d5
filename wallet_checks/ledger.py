"""Checks of the ledger itself: balances, the event log, and conservation of money.

A wallet's balance is the signed sum of its events (:mod:`wallet_checks.effects_sql`),
its version is its last event's sequence, sequences run 1, 2, 3... and each event's
``balance_after`` follows from the previous one. Per currency, money only enters by
deposits and leaves by withdrawals: what is not in a balance is in an OPEN transfer
hold (debited, not yet credited or refunded).
"""

from __future__ import annotations

from wallet_checks.context import CheckContext, CheckResult, as_int
from wallet_checks.effects_sql import amount_of, signed_amount
from wallet_events import types
from wallet_service.holds import OPEN


def balance_equals_event_sum(ctx: CheckContext) -> CheckResult:
    r = ctx.result("balance_equals_event_sum")
    r.facts["wallets"] = ctx.scalar(f"SELECT COUNT(*) FROM wallets WHERE {ctx.scope('wallet_id')}")
    r.facts["events"] = ctx.scalar(
        f"SELECT COUNT(*) FROM wallet_events WHERE {ctx.scope('wallet_id')}"
    )
    for row in ctx.rows(
        f"""
        SELECT w.wallet_id, w.balance, COALESCE(e.total, 0) AS event_sum
        FROM wallets w
        LEFT JOIN (
            SELECT wallet_id, SUM({signed_amount()}) AS total
            FROM wallet_events WHERE {ctx.scope("wallet_id")} GROUP BY wallet_id
        ) e ON e.wallet_id = w.wallet_id
        WHERE w.balance <> COALESCE(e.total, 0) AND {ctx.scope("w.wallet_id")}
        ORDER BY w.wallet_id
        """
    ):
        row["difference"] = as_int(row["balance"]) - as_int(row["event_sum"])
        r.add(row, ctx.limit)
    return r


def balance_equals_last_event(ctx: CheckContext) -> CheckResult:
    r = ctx.result("balance_equals_last_event")
    return ctx.add_rows(
        r,
        f"""
        SELECT w.wallet_id, w.balance, w.version,
               m.last_sequence, last.balance_after AS last_balance_after
        FROM wallets w
        LEFT JOIN (
            SELECT wallet_id, MAX(sequence) AS last_sequence
            FROM wallet_events WHERE {ctx.scope("wallet_id")} GROUP BY wallet_id
        ) m ON m.wallet_id = w.wallet_id
        LEFT JOIN wallet_events last
            ON last.wallet_id = w.wallet_id AND last.sequence = m.last_sequence
        WHERE (last.balance_after IS NULL
               OR w.balance <> last.balance_after
               OR w.version <> m.last_sequence)
          AND {ctx.scope("w.wallet_id")}
        ORDER BY w.wallet_id
        """,
    )


def sequences_gap_free(ctx: CheckContext) -> CheckResult:
    r = ctx.result("sequences_gap_free")
    return ctx.add_rows(
        r,
        f"""
        SELECT wallet_id, COUNT(*) AS events, MIN(sequence) AS first_sequence,
               MAX(sequence) AS last_sequence
        FROM wallet_events WHERE {ctx.scope("wallet_id")} GROUP BY wallet_id
        HAVING MIN(sequence) <> 1 OR MAX(sequence) <> COUNT(*)
        ORDER BY wallet_id
        """,
    )


def event_chain(ctx: CheckContext) -> CheckResult:
    r = ctx.result("event_chain")
    return ctx.add_rows(
        r,
        f"""
        SELECT wallet_id, sequence, type, amount, balance_after, previous_balance
        FROM (
            SELECT wallet_id, sequence, type, amount, balance_after,
                   {signed_amount()} AS delta,
                   COALESCE(LAG(balance_after) OVER (
                       PARTITION BY wallet_id ORDER BY sequence), 0) AS previous_balance
            FROM wallet_events WHERE {ctx.scope("wallet_id")}
        ) chained
        WHERE balance_after <> previous_balance + delta
        ORDER BY wallet_id, sequence
        """,
    )


def no_negative_balance(ctx: CheckContext) -> CheckResult:
    r = ctx.result("no_negative_balance")
    return ctx.add_rows(
        r,
        f"""
        SELECT 'wallet' AS source, wallet_id, balance, NULL AS sequence
        FROM wallets WHERE balance < 0 AND {ctx.scope("wallet_id")}
        UNION ALL
        SELECT 'event' AS source, wallet_id, balance_after AS balance, sequence
        FROM wallet_events WHERE balance_after < 0 AND {ctx.scope("wallet_id")}
        """,
    )


def conservation(ctx: CheckContext) -> CheckResult:
    """Per currency: balances + open holds = deposits - withdrawals.

    Money in flight is the ledger's OPEN transfer holds: debited and not yet credited
    or refunded (:mod:`wallet_checks.holds` ties each hold to its events and its saga).
    A settled transfer contributes nothing, so money minted by a step without a hold,
    or a balance edited behind the service's back, shows up here as a difference.
    """
    r = ctx.result("conservation")
    balances = {
        str(row["currency"]): as_int(row["total"])
        for row in ctx.rows(
            f"SELECT currency, SUM(balance) AS total FROM wallets "
            f"WHERE {ctx.scope('wallet_id')} GROUP BY currency"
        )
    }
    flows = {
        str(row["currency"]): (as_int(row["deposits"]), as_int(row["withdrawals"]))
        for row in ctx.rows(
            f"""
            SELECT currency,
                {amount_of(types.FUNDS_DEPOSITED)} AS deposits,
                {amount_of(types.FUNDS_WITHDRAWN)} AS withdrawals
            FROM wallet_events WHERE {ctx.scope("wallet_id")} GROUP BY currency
            """
        )
    }
    in_flight = {
        str(row["currency"]): as_int(row["in_flight"])
        for row in ctx.rows(
            f"SELECT currency, SUM(amount) AS in_flight FROM transfer_holds "
            f"WHERE state = '{OPEN}' AND {ctx.scope('from_wallet_id')} GROUP BY currency"
        )
    }
    for currency in sorted(set(balances) | set(flows) | set(in_flight)):
        deposits, withdrawals = flows.get(currency, (0, 0))
        flight = in_flight.get(currency, 0)
        balance = balances.get(currency, 0)
        expected = deposits - withdrawals - flight
        r.facts[currency] = {
            "balances": balance,
            "deposits": deposits,
            "withdrawals": withdrawals,
            "in_flight": flight,  # the OPEN holds
        }
        if balance != expected:
            r.add(
                {
                    "currency": currency,
                    "balances": balance,
                    "expected": expected,
                    "difference": balance - expected,
                },
                ctx.limit,
            )
    return r
