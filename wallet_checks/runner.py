"""The registry of checks, in report order, and running a selection of them.

Reuse::

    with engine.connect() as conn, conn.begin():
        results = run_checks(conn, CheckOptions(wallet_prefix="wb-run-"))
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime

from sqlalchemy.engine import Connection

from wallet_checks import delivery, holds, ledger, sagas
from wallet_checks.context import CheckContext, CheckOptions, CheckResult

Check = Callable[[CheckContext], CheckResult]

# name -> the function checking it, in report order (the catalog's, which a test holds
# to the same names).
CHECKS: dict[str, Check] = {
    "balance_equals_event_sum": ledger.balance_equals_event_sum,
    "balance_equals_last_event": ledger.balance_equals_last_event,
    "sequences_gap_free": ledger.sequences_gap_free,
    "event_chain": ledger.event_chain,
    "no_negative_balance": ledger.no_negative_balance,
    "conservation": ledger.conservation,
    "transfers_net_zero": sagas.transfers_net_zero,
    "no_step_applied_twice": sagas.no_step_applied_twice,
    "transfer_events_have_transfer": sagas.transfer_events_have_transfer,
    "holds_match_events": holds.holds_match_events,
    "transfer_events_have_hold": holds.transfer_events_have_hold,
    "holds_match_transfers": holds.holds_match_transfers,
    "sagas_finished": sagas.sagas_finished,
    "outbox_row_per_event": delivery.outbox_row_per_event,
    "outbox_drained": delivery.outbox_drained,
    "projection_matches_log": delivery.projection_matches_log,
    "projection_lag": delivery.projection_lag,
    "events_delivered": delivery.events_delivered,
}


def selected(options: CheckOptions) -> list[str]:
    """The names ``options`` selects, in report order; unknown names are a ValueError."""
    unknown = [n for n in [*(options.checks or ()), *options.skip] if n not in CHECKS]
    if unknown:
        raise ValueError(f"unknown check(s): {', '.join(unknown)}")
    return [
        name
        for name in CHECKS
        if (options.checks is None or name in options.checks) and name not in options.skip
    ]


def run_checks(
    conn: Connection, options: CheckOptions | None = None, now: datetime | None = None
) -> list[CheckResult]:
    """Run the selected checks on an open connection (ideally one snapshot)."""
    options = options or CheckOptions()
    ctx = CheckContext(conn, options, now or datetime.now(UTC))
    results = []
    for name in selected(options):
        started = time.monotonic()
        result = CHECKS[name](ctx)
        result.seconds = round(time.monotonic() - started, 3)
        results.append(result)
    return results
