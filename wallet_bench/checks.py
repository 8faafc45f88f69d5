"""Invariant checks after a run, against the client's ledger and the database.

Two independent witnesses are compared with the platform's state:

- the client ledger (:class:`wallet_bench.ledger.Ledger`): every acknowledged write and
  every terminal transfer, hence each wallet's exact expected balance and statistics;
- the database (when its URL is given): the ledger's invariants of :mod:`wallet_checks`
  (the ones ``walletctl reconcile`` runs), narrowed to the run's own wallets
  (``wb-<run id>-*``, so a shared database with other data is fine) and with no grace
  period (the run has drained), grouped under the bench's verdict names
  (:data:`LOG_CHECKS`); and every request applied at most once, acknowledged ones
  exactly once, rejected ones never.

Reads use SQLAlchemy Core on a blocking engine, run in a thread.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import Connection, Engine, create_engine, func, select
from sqlalchemy.pool import NullPool

from wallet_bench.ledger import Ledger, LoadConfig
from wallet_bench.stats import percentile
from wallet_checks.context import CheckOptions, CheckResult, as_int, like_prefix
from wallet_checks.runner import run_checks
from wallet_events.effects import COUNT_COUNTERS, TOTAL_COUNTERS
from wallet_platform.storage.database import sync_url
from wallet_platform.storage.schema import inbox, wallet_events, wallets

STAT_FIELDS = (*TOTAL_COUNTERS, *COUNT_COUNTERS)
MAX_EXAMPLES = 5

# The bench's verdicts over the stored log -> the shared checks each one groups.
LOG_CHECKS: dict[str, tuple[str, ...]] = {
    "conservation": (
        "balance_equals_event_sum",
        "balance_equals_last_event",
        "sequences_gap_free",
        "event_chain",
        "conservation",
    ),
    "holds_match": ("holds_match_events", "transfer_events_have_hold", "holds_match_transfers"),
    "no_negative_balance": ("no_negative_balance",),
    "sagas_terminal": (
        "sagas_finished",
        "transfers_net_zero",
        "no_step_applied_twice",
        "transfer_events_have_transfer",
    ),
    "outbox_complete": ("outbox_row_per_event", "outbox_drained"),
    "analytics_equal_log": ("projection_matches_log", "projection_lag"),
}


@dataclass
class Check:
    """One invariant: did it hold, and if not, a few examples of why."""

    name: str
    ok: bool
    detail: str = ""
    examples: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, object]:
        return {"name": self.name, "ok": self.ok, "detail": self.detail, "examples": self.examples}


def verdict(name: str, problems: list[str], detail_ok: str = "") -> Check:
    if problems:
        return Check(name, False, f"{len(problems)} violation(s)", problems[:MAX_EXAMPLES])
    return Check(name, True, detail_ok)


# --- the log, read from the database -------------------------------------------------


@dataclass
class LogSnapshot:
    """What the database says about the run, read in one snapshot."""

    results: dict[str, CheckResult]  # the shared invariant checks, by name
    balances: dict[str, int]  # wallet -> stored balance
    requests: Counter[str] = field(default_factory=Counter)  # request id -> events


def check_options(prefix: str, **changes: object) -> CheckOptions:
    """The shared checks as the bench runs them: its wallets, nothing may lag."""
    options = CheckOptions(
        outbox_max_age_seconds=0.0,
        saga_max_age_seconds=0.0,
        projection_lag_seconds=0.0,
        example_limit=MAX_EXAMPLES,
        skip=("events_delivered",),  # the consumers' inboxes are checked by the lag
        wallet_prefix=prefix,
    )
    for name, value in changes.items():
        setattr(options, name, value)
    return options


class LogReader:
    """Blocking reads of the run's rows (one engine, no pool kept between calls)."""

    def __init__(self, database_url: str, wallet_prefix: str) -> None:
        self.engine: Engine = create_engine(sync_url(database_url), poolclass=NullPool)
        self.prefix = wallet_prefix

    def close(self) -> None:
        self.engine.dispose()

    def analyze(self) -> None:
        """Refresh the planner's statistics (``ANALYZE``) after the wallet set-up.

        A production database has statistics; a fresh one like the suite's gets them
        only from autovacuum's first pass (a minute or more), after the run. Without them
        the planner believes the just-filled tables are nearly empty and may pick plans
        that read a whole index per batch (seen: the idempotency records' key prefix
        scanned by every group commit), which measures the empty database's statistics,
        not the platform.
        """
        with self.engine.connect() as conn:
            conn.execution_options(isolation_level="AUTOCOMMIT").exec_driver_sql("ANALYZE")

    @contextmanager
    def _snapshot(self) -> Iterator[Connection]:
        """One transaction with a stable view (REPEATABLE READ on PostgreSQL)."""
        with self.engine.connect() as conn:
            if self.engine.dialect.name == "postgresql":
                conn = conn.execution_options(isolation_level="REPEATABLE READ")
            with conn.begin():
                yield conn

    def snapshot(self) -> LogSnapshot:
        with self._snapshot() as conn:
            results = run_checks(conn, check_options(self.prefix))
            balances = {
                row.wallet_id: int(row.balance)
                for row in conn.execute(
                    select(wallets.c.wallet_id, wallets.c.balance).where(
                        wallets.c.wallet_id.like(like_prefix(self.prefix), escape="!")
                    )
                )
            }
            requests: Counter[str] = Counter(
                {
                    row.request_id: int(row.n)
                    for row in conn.execute(
                        select(wallet_events.c.request_id, func.count().label("n"))
                        .where(wallet_events.c.wallet_id.like(like_prefix(self.prefix), escape="!"))
                        .group_by(wallet_events.c.request_id)
                    )
                }
            )
        return LogSnapshot({r.name: r for r in results}, balances, requests)

    def drain_state(self) -> tuple[int, int]:
        """(outbox rows of the run not yet published, its events analytics has not applied)."""
        options = check_options(self.prefix, checks=("outbox_drained", "projection_lag"))
        with self._snapshot() as conn:
            results = {r.name: r for r in run_checks(conn, options)}
        # With no grace period every pending row and every unapplied event is a problem.
        return results["outbox_drained"].problems, results["projection_lag"].problems

    def consumer_lag(self, since: datetime | None = None) -> dict[str, dict[str, float]]:
        """Per consumer: event time -> applied time, p50/p99/max seconds, from the inbox."""
        query = (
            select(inbox.c.consumer, wallet_events.c.occurred_at, inbox.c.processed_at)
            .select_from(inbox.join(wallet_events, inbox.c.message_id == wallet_events.c.event_id))
            .where(wallet_events.c.wallet_id.like(like_prefix(self.prefix), escape="!"))
        )
        if since is not None:
            query = query.where(wallet_events.c.occurred_at >= since)
        lags: dict[str, list[float]] = defaultdict(list)
        with self.engine.connect() as conn:
            for row in conn.execute(query):
                lags[row.consumer].append(
                    max(0.0, (row.processed_at - row.occurred_at).total_seconds())
                )
        result: dict[str, dict[str, float]] = {}
        for consumer, values in lags.items():
            values.sort()
            result[consumer] = {
                "events": len(values),
                "p50_s": round(percentile(values, 0.5), 3),
                "p99_s": round(percentile(values, 0.99), 3),
                "max_s": round(values[-1], 3),
            }
        return result


def _grouped(name: str, results: list[CheckResult]) -> Check:
    """One bench verdict from the shared checks it groups (examples name their check)."""
    problems = sum(r.problems for r in results)
    if not problems:
        return Check(name, True, _summary(name, {r.name: r for r in results}))
    examples = [
        f"{r.name}: " + "  ".join(f"{k}={v}" for k, v in example.items())
        for r in results
        for example in r.examples
    ]
    return Check(name, False, f"{problems} violation(s)", examples[:MAX_EXAMPLES])


def _summary(name: str, results: dict[str, CheckResult]) -> str:
    """What a passing verdict covered, from its checks' facts."""
    if name == "conservation":
        sums = results["conservation"].facts
        parts = []
        for currency, fact in sums.items():
            assert isinstance(fact, dict)
            net = as_int(fact["deposits"]) - as_int(fact["withdrawals"])
            parts.append(
                f"{currency}: balances {fact['balances']} + open holds {fact['in_flight']} "
                f"= deposits - withdrawals {net}"
            )
        wallets_count = results["balance_equals_event_sum"].facts["wallets"]
        return f"{wallets_count} wallets: " + ("; ".join(parts) or "no money")
    counts = {
        "holds_match": ("holds_match_events", "holds", "no holds"),
        "sagas_terminal": ("transfers_net_zero", "transfers", "no transfers"),
    }.get(name)
    if counts is None:
        return ""
    check, fact, empty = counts
    by_state = results[check].facts.get(fact)
    assert isinstance(by_state, dict)
    return ", ".join(f"{s} {n}" for s, n in sorted(by_state.items())) or empty


def check_log(snapshot: LogSnapshot, ledger: Ledger, config: LoadConfig) -> list[Check]:
    """The invariants that need the stored log (docs/architecture.md, invariants 1-8)."""
    checks = [
        _grouped(name, [snapshot.results[n] for n in names if n in snapshot.results])
        for name, names in LOG_CHECKS.items()
    ]

    # 4. Every request applied at most once; acknowledged = exactly once; rejected = never.
    per_request = snapshot.requests
    problems = [f"request {r} applied {n} times" for r, n in per_request.items() if n > 1]
    for request_id, op in ledger.acked.items():
        if per_request.get(request_id, 0) != 1:
            problems.append(f"acknowledged {op.kind} {request_id} has no event")
    for request_id, (op, code) in ledger.rejected.items():
        if per_request.get(request_id, 0):
            problems.append(f"rejected ({code}) {op.kind} {request_id} changed the log")
    problems += ledger.replay_mismatches
    checks.append(
        verdict(
            "applied_once",
            problems,
            f"{len(ledger.acked)} acknowledged, {len(ledger.rejected)} rejected, "
            f"{ledger.replays} replays matched",
        )
    )

    # The client's own prediction against what was stored.
    expected = ledger.expected_wallets(config)
    problems = [
        f"{w}: stored {snapshot.balances.get(w)} != expected {want['balance']}"
        for w, want in sorted(expected.items())
        if snapshot.balances.get(w) != want["balance"]
    ]
    checks.append(verdict("balances_match_client", problems))
    return checks
