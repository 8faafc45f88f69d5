"""Reconciliation: the invariants (docs/architecture.md) checked against the database.

Each check is one SQL query (portable between SQLite and PostgreSQL) that returns
only the rows that break an invariant, so the cost stays a few aggregate scans
however large the ledger is. All checks run in one read-only snapshot
(:func:`walletctl.dbutil.snapshot`), so live traffic does not produce false drift.

Reuse from other tools (``wallet-bench``)::

    from walletctl.reconcile import ReconcileOptions, reconcile
    report = reconcile(database_url, ReconcileOptions(outbox_max_age_seconds=30))
    assert report.ok, report.render_text()

or, inside an existing synchronous connection, ``run_checks(conn, options)``.

Money semantics assumed (the same as the analytics projection's, see
``docs/analytics-and-fraud.md``): a wallet's balance is the sum of its events signed
by type: ``funds_deposited``, ``transfer_credited``, ``transfer_refunded`` add;
``funds_withdrawn``, ``transfer_debited`` subtract; ``wallet_created``,
``wallet_frozen``, ``wallet_unfrozen`` move nothing. In ``wallet_stats``,
``total_transferred_in``/``transfer_in_count`` are the transfer credits, and
``total_transferred_out``/``transfer_out_count`` are the transfer debits NET of
refunds (a compensated transfer counts as no transfer out), as the proto says.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import DateTime, bindparam, text
from sqlalchemy.engine import Connection

from wallet_platform import topology
from walletctl.check_catalog import CHECK_DESCRIPTIONS
from walletctl.dbutil import as_datetime, masked, snapshot
from walletctl.hold_checks import HOLD_CHECKS

ERROR = "error"
WARNING = "warning"

TERMINAL_STATES = ("COMPLETED", "FAILED", "COMPENSATED")
UNFINISHED_STATES = ("PENDING", "DEBITED", "COMPENSATING")

SIGNED_AMOUNT = """
    CASE {p}type
        WHEN 'funds_deposited' THEN {p}amount
        WHEN 'transfer_credited' THEN {p}amount
        WHEN 'transfer_refunded' THEN {p}amount
        WHEN 'funds_withdrawn' THEN -{p}amount
        WHEN 'transfer_debited' THEN -{p}amount
        ELSE 0
    END
"""


def signed(prefix: str = "") -> str:
    """SQL for an event's effect on its wallet's balance (``prefix`` = table alias)."""
    return SIGNED_AMOUNT.format(p=f"{prefix}." if prefix else "")


@dataclass
class ReconcileOptions:
    """Thresholds and selection. Ages are seconds before the snapshot's ``now``."""

    # A pending outbox row older than this means the relay is not draining.
    outbox_max_age_seconds: float = 60.0
    # An unfinished saga not updated for this long is stuck (recovery did not finish it).
    saga_max_age_seconds: float = 300.0
    # Events older than this not yet applied by analytics are reported (as a warning:
    # a poisoned event legitimately sits in the DLQ instead).
    projection_lag_seconds: float = 60.0
    # The inbox consumer name of the analytics worker (analytics_worker.repository).
    analytics_consumer: str = "analytics"
    # Which bus carries the events: "inprocess" (queues in bus_messages: checked
    # exactly), "rabbitmq" (compared with broker_depths) or None (not checked).
    bus: str | None = None
    # RabbitMQ only: consumer queue -> messages ready in it plus in its DLQ.
    broker_depths: dict[str, int] | None = None
    # A published event older than this must be applied or queued for every consumer.
    delivery_max_age_seconds: float = 60.0
    # How many offending rows each check lists (the count is always complete).
    example_limit: int = 20
    # Run only these checks (names from CHECKS); None = all.
    checks: Sequence[str] | None = None
    # Checks to leave out.
    skip: Sequence[str] = ()


@dataclass
class CheckResult:
    name: str
    description: str
    severity: str = ERROR
    problems: int = 0
    examples: list[dict[str, Any]] = field(default_factory=list)
    facts: dict[str, Any] = field(default_factory=dict)
    note: str | None = None
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.problems == 0

    def add(self, example: dict[str, Any], limit: int) -> None:
        self.problems += 1
        if len(self.examples) < limit:
            self.examples.append(example)


@dataclass
class Report:
    database: str
    checked_at: datetime
    duration_seconds: float
    results: list[CheckResult]

    @property
    def errors(self) -> list[CheckResult]:
        return [r for r in self.results if not r.ok and r.severity == ERROR]

    @property
    def warnings(self) -> list[CheckResult]:
        return [r for r in self.results if not r.ok and r.severity == WARNING]

    @property
    def ok(self) -> bool:
        """True when no error-severity check found a problem (warnings do not fail)."""
        return not self.errors

    def result(self, name: str) -> CheckResult:
        for r in self.results:
            if r.name == name:
                return r
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "database": self.database,
            "checked_at": self.checked_at.isoformat().replace("+00:00", "Z"),
            "duration_seconds": round(self.duration_seconds, 3),
            "errors": len(self.errors),
            "warnings": len(self.warnings),
            "checks": [
                {**asdict(r), "ok": r.ok, "examples": [_plain(e) for e in r.examples]}
                for r in self.results
            ],
        }

    def render_text(self) -> str:
        lines = [f"reconcile {self.database} at {self.to_dict()['checked_at']}", ""]
        width = max(len(r.name) for r in self.results) if self.results else 0
        for r in self.results:
            if r.ok:
                mark = "ok   "
            elif r.severity == ERROR:
                mark = "DRIFT"
            else:
                mark = "warn "
            count = "" if r.ok else f"  {r.problems} problem(s)"
            lines.append(f"{mark}  {r.name.ljust(width)}  {r.description}{count}")
            if r.note:
                lines.append(f"       {' ' * width}  note: {r.note}")
            if r.facts:
                facts = "; ".join(f"{key}: {_fact(value)}" for key, value in r.facts.items())
                lines.append(f"       {' ' * width}  {facts}")
            for example in r.examples:
                lines.append(f"       {' ' * width}  - {_example(example)}")
            if r.problems > len(r.examples):
                lines.append(f"       {' ' * width}  ... and {r.problems - len(r.examples)} more")
        lines.append("")
        if self.ok:
            verdict = "CLEAN: every invariant holds"
            if self.warnings:
                verdict += f" ({len(self.warnings)} warning(s))"
        else:
            names = ", ".join(r.name for r in self.errors)
            verdict = f"DRIFT FOUND in {len(self.errors)} check(s): {names}"
        lines.append(verdict)
        return "\n".join(lines)


def _integral(value: Any) -> Any:
    """PostgreSQL sums BIGINTs into NUMERIC: money stays an exact int, never a Decimal."""
    if isinstance(value, Decimal) and value == value.to_integral_value():
        return int(value)
    return value


def _plain(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat().replace("+00:00", "Z")
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _fact(value: Any) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k}={_fact(v)}" for k, v in value.items()) or "-"
    return str(_plain(value))


def _example(example: dict[str, Any]) -> str:
    return "  ".join(f"{k}={_plain(v)}" for k, v in example.items())


class _Checker:
    """Runs the checks against one connection at one instant."""

    def __init__(self, conn: Connection, options: ReconcileOptions, now: datetime) -> None:
        self.conn = conn
        self.options = options
        self.now = now

    def rows(self, sql: str, **params: Any) -> list[dict[str, Any]]:
        statement = text(sql)
        typed = [
            bindparam(name, type_=DateTime(timezone=True))
            for name, value in params.items()
            if isinstance(value, datetime)
        ]
        if typed:
            statement = statement.bindparams(*typed)
        return [
            {key: _integral(value) for key, value in row._mapping.items()}
            for row in self.conn.execute(statement, params)
        ]

    def scalar(self, sql: str, **params: Any) -> Any:
        rows = self.rows(sql, **params)
        return next(iter(rows[0].values())) if rows else None

    def result(self, name: str, severity: str = ERROR) -> CheckResult:
        return CheckResult(name, CHECKS[name][0], severity)

    @property
    def limit(self) -> int:
        return self.options.example_limit

    # --- the ledger ------------------------------------------------------------------

    def balance_equals_event_sum(self) -> CheckResult:
        r = self.result("balance_equals_event_sum")
        r.facts["wallets"] = self.scalar("SELECT COUNT(*) FROM wallets")
        r.facts["events"] = self.scalar("SELECT COUNT(*) FROM wallet_events")
        for row in self.rows(
            f"""
            SELECT w.wallet_id, w.balance, COALESCE(e.total, 0) AS event_sum
            FROM wallets w
            LEFT JOIN (
                SELECT wallet_id, SUM({signed()}) AS total
                FROM wallet_events GROUP BY wallet_id
            ) e ON e.wallet_id = w.wallet_id
            WHERE w.balance <> COALESCE(e.total, 0)
            ORDER BY w.wallet_id
            """
        ):
            row["difference"] = int(row["balance"]) - int(row["event_sum"])
            r.add(row, self.limit)
        return r

    def balance_equals_last_event(self) -> CheckResult:
        r = self.result("balance_equals_last_event")
        for row in self.rows(
            """
            SELECT w.wallet_id, w.balance, w.version,
                   m.last_sequence, last.balance_after AS last_balance_after
            FROM wallets w
            LEFT JOIN (
                SELECT wallet_id, MAX(sequence) AS last_sequence
                FROM wallet_events GROUP BY wallet_id
            ) m ON m.wallet_id = w.wallet_id
            LEFT JOIN wallet_events last
                ON last.wallet_id = w.wallet_id AND last.sequence = m.last_sequence
            WHERE last.balance_after IS NULL
               OR w.balance <> last.balance_after
               OR w.version <> m.last_sequence
            ORDER BY w.wallet_id
            """
        ):
            r.add(row, self.limit)
        return r

    def sequences_gap_free(self) -> CheckResult:
        r = self.result("sequences_gap_free")
        for row in self.rows(
            """
            SELECT wallet_id, COUNT(*) AS events, MIN(sequence) AS first_sequence,
                   MAX(sequence) AS last_sequence
            FROM wallet_events GROUP BY wallet_id
            HAVING MIN(sequence) <> 1 OR MAX(sequence) <> COUNT(*)
            ORDER BY wallet_id
            """
        ):
            r.add(row, self.limit)
        return r

    def event_chain(self) -> CheckResult:
        r = self.result("event_chain")
        for row in self.rows(
            f"""
            SELECT wallet_id, sequence, type, amount, balance_after, previous_balance
            FROM (
                SELECT wallet_id, sequence, type, amount, balance_after,
                       {signed()} AS delta,
                       COALESCE(LAG(balance_after) OVER (
                           PARTITION BY wallet_id ORDER BY sequence), 0) AS previous_balance
                FROM wallet_events
            ) chained
            WHERE balance_after <> previous_balance + delta
            ORDER BY wallet_id, sequence
            """
        ):
            r.add(row, self.limit)
        return r

    def no_negative_balance(self) -> CheckResult:
        r = self.result("no_negative_balance")
        for row in self.rows(
            """
            SELECT 'wallet' AS source, wallet_id, balance, NULL AS sequence
            FROM wallets WHERE balance < 0
            UNION ALL
            SELECT 'event' AS source, wallet_id, balance_after AS balance, sequence
            FROM wallet_events WHERE balance_after < 0
            """
        ):
            r.add(row, self.limit)
        return r

    def conservation(self) -> CheckResult:
        """Per currency: balances + open holds = deposits - withdrawals.

        Money in flight is the ledger's OPEN transfer holds: debited and not yet
        credited or refunded (``walletctl.hold_checks`` ties each hold to its events
        and its saga). A settled transfer contributes nothing, so money minted by a
        step without a hold, or a balance edited behind the service's back, shows up
        here as a difference.
        """
        r = self.result("conservation")
        balances = {
            row["currency"]: int(row["total"])
            for row in self.rows(
                "SELECT currency, SUM(balance) AS total FROM wallets GROUP BY currency"
            )
        }
        flows = {
            row["currency"]: row
            for row in self.rows(
                """
                SELECT currency,
                    SUM(CASE WHEN type = 'funds_deposited' THEN amount ELSE 0 END) AS deposits,
                    SUM(CASE WHEN type = 'funds_withdrawn' THEN amount ELSE 0 END)
                        AS withdrawals
                FROM wallet_events GROUP BY currency
                """
            )
        }
        in_flight = {
            row["currency"]: int(row["in_flight"] or 0)
            for row in self.rows(
                "SELECT currency, SUM(amount) AS in_flight FROM transfer_holds "
                "WHERE state = 'OPEN' GROUP BY currency"
            )
        }
        for currency in sorted(set(balances) | set(flows) | set(in_flight)):
            deposits = int((flows.get(currency) or {}).get("deposits") or 0)
            withdrawals = int((flows.get(currency) or {}).get("withdrawals") or 0)
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
                    self.limit,
                )
        return r

    # --- sagas -----------------------------------------------------------------------

    def transfers_net_zero(self) -> CheckResult:
        """COMPLETED = one debit + one credit; COMPENSATED = one debit + one refund;
        FAILED = nothing; each of the transfer's amount, on the right wallet."""
        r = self.result("transfers_net_zero")
        r.facts["transfers"] = {
            row["state"]: int(row["n"])
            for row in self.rows("SELECT state, COUNT(*) AS n FROM transfers GROUP BY state")
        }
        for row in self.rows(
            """
            SELECT * FROM (
                SELECT t.transfer_id, t.state, t.amount,
                    SUM(CASE WHEN e.type = 'transfer_debited' THEN 1 ELSE 0 END) AS debits,
                    SUM(CASE WHEN e.type = 'transfer_credited' THEN 1 ELSE 0 END) AS credits,
                    SUM(CASE WHEN e.type = 'transfer_refunded' THEN 1 ELSE 0 END) AS refunds,
                    SUM(CASE WHEN e.type = 'transfer_debited' AND e.amount = t.amount
                             AND e.wallet_id = t.from_wallet_id THEN 1 ELSE 0 END) AS good_debits,
                    SUM(CASE WHEN e.type = 'transfer_credited' AND e.amount = t.amount
                             AND e.wallet_id = t.to_wallet_id THEN 1 ELSE 0 END) AS good_credits,
                    SUM(CASE WHEN e.type = 'transfer_refunded' AND e.amount = t.amount
                             AND e.wallet_id = t.from_wallet_id THEN 1 ELSE 0 END) AS good_refunds
                FROM transfers t
                LEFT JOIN wallet_events e ON e.transfer_id = t.transfer_id
                WHERE t.state IN ('COMPLETED', 'FAILED', 'COMPENSATED')
                GROUP BY t.transfer_id, t.state, t.amount
            ) s
            WHERE NOT (
                (state = 'COMPLETED' AND debits = 1 AND good_debits = 1
                    AND credits = 1 AND good_credits = 1 AND refunds = 0)
                OR (state = 'COMPENSATED' AND debits = 1 AND good_debits = 1
                    AND refunds = 1 AND good_refunds = 1 AND credits = 0)
                OR (state = 'FAILED' AND debits = 0 AND credits = 0 AND refunds = 0)
            )
            ORDER BY transfer_id
            """
        ):
            r.add(
                {
                    k: row[k]
                    for k in ("transfer_id", "state", "amount", "debits", "credits", "refunds")
                },
                self.limit,
            )
        return r

    def no_step_applied_twice(self) -> CheckResult:
        r = self.result("no_step_applied_twice")
        for row in self.rows(
            """
            SELECT transfer_id, type, COUNT(*) AS times
            FROM wallet_events
            WHERE transfer_id IS NOT NULL
              AND type IN ('transfer_debited', 'transfer_credited', 'transfer_refunded')
            GROUP BY transfer_id, type
            HAVING COUNT(*) > 1
            ORDER BY transfer_id
            """
        ):
            r.add(row, self.limit)
        for row in self.rows(
            """
            SELECT transfer_id, 'credit and refund' AS type, COUNT(*) AS times
            FROM wallet_events
            WHERE transfer_id IS NOT NULL
              AND type IN ('transfer_credited', 'transfer_refunded')
            GROUP BY transfer_id
            HAVING COUNT(DISTINCT type) > 1
            ORDER BY transfer_id
            """
        ):
            r.add(row, self.limit)
        return r

    def transfer_events_have_transfer(self) -> CheckResult:
        r = self.result("transfer_events_have_transfer")
        for row in self.rows(
            """
            SELECT e.event_id, e.wallet_id, e.type, e.amount, e.transfer_id
            FROM wallet_events e
            LEFT JOIN transfers t ON t.transfer_id = e.transfer_id
            WHERE e.type IN ('transfer_debited', 'transfer_credited', 'transfer_refunded')
              AND t.transfer_id IS NULL
            ORDER BY e.transfer_id
            """
        ):
            r.add(row, self.limit)
        return r

    def sagas_finished(self) -> CheckResult:
        r = self.result("sagas_finished")
        cutoff = self.now - timedelta(seconds=self.options.saga_max_age_seconds)
        r.facts["unfinished"] = self.scalar(
            "SELECT COUNT(*) FROM transfers WHERE state IN ('PENDING', 'DEBITED', 'COMPENSATING')"
        )
        r.note = f"stuck = unfinished and unchanged for {self.options.saga_max_age_seconds:g}s"
        for row in self.rows(
            """
            SELECT transfer_id, state, attempts, last_error, updated_at
            FROM transfers
            WHERE state IN ('PENDING', 'DEBITED', 'COMPENSATING') AND updated_at < :cutoff
            ORDER BY updated_at
            """,
            cutoff=cutoff,
        ):
            row["updated_at"] = as_datetime(row["updated_at"])
            r.add(row, self.limit)
        return r

    # --- outbox ----------------------------------------------------------------------

    def outbox_row_per_event(self) -> CheckResult:
        r = self.result("outbox_row_per_event")
        for row in self.rows(
            """
            SELECT e.event_id, e.wallet_id, e.sequence, e.type
            FROM wallet_events e
            LEFT JOIN outbox o ON o.message_id = e.event_id
            WHERE o.id IS NULL
            ORDER BY e.occurred_at
            """
        ):
            r.add(row, self.limit)
        return r

    def outbox_drained(self) -> CheckResult:
        r = self.result("outbox_drained")
        cutoff = self.now - timedelta(seconds=self.options.outbox_max_age_seconds)
        stats = self.rows(
            "SELECT COUNT(*) AS pending, MIN(created_at) AS oldest FROM outbox "
            "WHERE status <> 'published'"
        )[0]
        oldest = as_datetime(stats["oldest"])
        r.facts["pending"] = int(stats["pending"] or 0)
        if oldest is not None:
            r.facts["oldest_pending_age_seconds"] = round((self.now - oldest).total_seconds(), 1)
        r.note = f"drift = unpublished for more than {self.options.outbox_max_age_seconds:g}s"
        for row in self.rows(
            """
            SELECT id, message_id, routing_key, status, attempts, last_error, created_at
            FROM outbox
            WHERE status <> 'published' AND created_at < :cutoff
            ORDER BY id
            """,
            cutoff=cutoff,
        ):
            row["created_at"] = as_datetime(row["created_at"])
            r.add(row, self.limit)
        return r

    # --- projections -----------------------------------------------------------------

    def projection_matches_log(self) -> CheckResult:
        """wallet_stats = SQL aggregates over the events the analytics worker applied.

        Comparing against the applied events (its inbox rows) rather than the whole log
        makes the check exact while the worker is still catching up; what it has not
        applied yet is reported by ``projection_lag``.
        """
        r = self.result("projection_matches_log")
        consumer = self.options.analytics_consumer
        r.note = f"compared with the events applied by inbox consumer {consumer!r}"
        expected_sql = """
            SELECT e.wallet_id,
                SUM(CASE WHEN e.type = 'funds_deposited' THEN e.amount ELSE 0 END)
                    AS total_deposited,
                SUM(CASE WHEN e.type = 'funds_deposited' THEN 1 ELSE 0 END) AS deposit_count,
                SUM(CASE WHEN e.type = 'funds_withdrawn' THEN e.amount ELSE 0 END)
                    AS total_withdrawn,
                SUM(CASE WHEN e.type = 'funds_withdrawn' THEN 1 ELSE 0 END) AS withdrawal_count,
                SUM(CASE WHEN e.type = 'transfer_credited' THEN e.amount ELSE 0 END)
                    AS total_transferred_in,
                SUM(CASE WHEN e.type = 'transfer_credited' THEN 1 ELSE 0 END)
                    AS transfer_in_count,
                SUM(CASE WHEN e.type = 'transfer_debited' THEN e.amount
                         WHEN e.type = 'transfer_refunded' THEN -e.amount ELSE 0 END)
                    AS total_transferred_out,
                SUM(CASE WHEN e.type = 'transfer_debited' THEN 1
                         WHEN e.type = 'transfer_refunded' THEN -1 ELSE 0 END)
                    AS transfer_out_count,
                COUNT(*) AS events_applied
            FROM wallet_events e
            JOIN inbox i ON i.message_id = e.event_id AND i.consumer = :consumer
            GROUP BY e.wallet_id
        """
        expected = {row["wallet_id"]: row for row in self.rows(expected_sql, consumer=consumer)}
        actual = {row["wallet_id"]: row for row in self.rows("SELECT * FROM wallet_stats")}
        r.facts["wallets_in_projection"] = len(actual)
        for wallet_id in sorted(set(expected) | set(actual)):
            want = expected.get(wallet_id) or {}
            have = actual.get(wallet_id) or {}
            diffs = {}
            for column in PROJECTION_COLUMNS:
                w = int(want.get(column) or 0)
                h = int(have.get(column) or 0)
                if w != h:
                    diffs[column] = f"{h} (log: {w})"
            if diffs:
                r.add({"wallet_id": wallet_id, **diffs}, self.limit)
        return r

    def projection_lag(self) -> CheckResult:
        r = self.result("projection_lag", WARNING)
        consumer = self.options.analytics_consumer
        cutoff = self.now - timedelta(seconds=self.options.projection_lag_seconds)
        r.note = (
            f"events older than {self.options.projection_lag_seconds:g}s not applied by "
            f"{consumer!r} (still queued, or in its DLQ: see walletctl dlq list)"
        )
        r.facts["not_applied"] = self.scalar(
            """
            SELECT COUNT(*) FROM wallet_events e
            LEFT JOIN inbox i ON i.message_id = e.event_id AND i.consumer = :consumer
            WHERE i.message_id IS NULL
            """,
            consumer=consumer,
        )
        for row in self.rows(
            """
            SELECT e.event_id, e.wallet_id, e.sequence, e.type, e.occurred_at
            FROM wallet_events e
            LEFT JOIN inbox i ON i.message_id = e.event_id AND i.consumer = :consumer
            WHERE i.message_id IS NULL AND e.occurred_at < :cutoff
            ORDER BY e.occurred_at
            """,
            consumer=consumer,
            cutoff=cutoff,
        ):
            row["occurred_at"] = as_datetime(row["occurred_at"])
            r.add(row, self.limit)
        return r

    def events_delivered(self) -> CheckResult:
        """Every published event is, for each consumer, applied or still in its queue.

        DESIGN invariant 7: events in the log = events applied + events queued or in the
        DLQ. On the in-process bus the queues are rows of ``bus_messages``, so each event
        is accounted exactly; on RabbitMQ the count of unapplied events is compared with
        the broker's queue and DLQ depths (a warning: unacked deliveries are invisible).
        """
        bus = self.options.bus
        r = self.result("events_delivered", WARNING if bus == "rabbitmq" else ERROR)
        if bus is None:
            r.note = "bus unknown: not checked"
            return r
        cutoff = self.now - timedelta(seconds=self.options.delivery_max_age_seconds)
        r.note = (
            f"published events older than {self.options.delivery_max_age_seconds:g}s, "
            f"per consumer ({bus} bus)"
        )
        unapplied_sql = """
            FROM wallet_events e
            JOIN outbox o ON o.message_id = e.event_id AND o.status = 'published'
            WHERE e.occurred_at < :cutoff
              AND NOT EXISTS (SELECT 1 FROM inbox i
                              WHERE i.consumer = :consumer AND i.message_id = e.event_id)
        """
        for consumer, queue in CONSUMER_QUEUES.items():
            params = {"consumer": consumer, "queue": queue, "cutoff": cutoff}
            unapplied = int(self.scalar("SELECT COUNT(*) " + unapplied_sql, **params) or 0)
            if bus == "inprocess":
                states = {
                    row["state"]: int(row["n"])
                    for row in self.rows(
                        "SELECT state, COUNT(*) AS n FROM bus_messages WHERE queue = :queue "
                        "GROUP BY state",
                        queue=queue,
                    )
                }
                r.facts[consumer] = {
                    "not_applied": unapplied,
                    "queued": states.get("ready", 0),
                    "dead_letters": states.get("dead", 0),
                }
                for row in self.rows(
                    "SELECT e.event_id, e.wallet_id, e.sequence, e.type "
                    + unapplied_sql
                    + " AND NOT EXISTS (SELECT 1 FROM bus_messages b "
                    "WHERE b.queue = :queue AND b.message_id = e.event_id) "
                    "ORDER BY e.occurred_at",
                    **params,
                ):
                    r.add({"consumer": consumer, **row}, self.limit)
                continue
            depth = (self.options.broker_depths or {}).get(queue)
            r.facts[consumer] = {"not_applied": unapplied, "broker_queue_and_dlq": depth}
            if depth is not None and unapplied > depth:
                r.add(
                    {
                        "consumer": consumer,
                        "not_applied": unapplied,
                        "in_queue_and_dlq": depth,
                        "unaccounted": unapplied - depth,
                    },
                    self.limit,
                )
        return r


# inbox consumer name -> its queue
CONSUMER_QUEUES = topology.CONSUMER_QUEUES

PROJECTION_COLUMNS = (
    "total_deposited",
    "deposit_count",
    "total_withdrawn",
    "withdrawal_count",
    "total_transferred_in",
    "transfer_in_count",
    "total_transferred_out",
    "transfer_out_count",
    "events_applied",
)

# name -> (description, method), in the report's order.
CHECKS: dict[str, tuple[str, Callable[[_Checker], CheckResult]]] = {
    name: (description, getattr(_Checker, name, None) or HOLD_CHECKS[name])
    for name, description in CHECK_DESCRIPTIONS.items()
}


def run_checks(
    conn: Connection, options: ReconcileOptions | None = None, now: datetime | None = None
) -> list[CheckResult]:
    """Run the selected checks on an open connection (ideally one snapshot)."""
    options = options or ReconcileOptions()
    checker = _Checker(conn, options, now or datetime.now(UTC))
    unknown = [n for n in [*(options.checks or ()), *options.skip] if n not in CHECKS]
    if unknown:
        raise ValueError(f"unknown check(s): {', '.join(unknown)}")
    selected = [
        name
        for name in CHECKS
        if (options.checks is None or name in options.checks) and name not in options.skip
    ]
    results = []
    for name in selected:
        started = time.monotonic()
        result = CHECKS[name][1](checker)
        result.seconds = round(time.monotonic() - started, 3)
        results.append(result)
    return results


def reconcile(
    database_url: str, options: ReconcileOptions | None = None, now: datetime | None = None
) -> Report:
    """Open a snapshot of ``database_url``, run the checks, return the report."""
    started = time.monotonic()
    checked_at = now or datetime.now(UTC)
    with snapshot(database_url) as conn:
        results = run_checks(conn, options, checked_at)
    return Report(
        database=masked(database_url),
        checked_at=checked_at,
        duration_seconds=time.monotonic() - started,
        results=results,
    )
