"""What every check works with: its options, its result, and one snapshot to query.

A check is a function ``check(ctx: CheckContext) -> CheckResult``. The context runs
its SQL on the caller's connection (ideally one read-only snapshot, so live traffic
cannot make a consistent ledger look inconsistent between two queries) and narrows
every query to a set of wallets when :attr:`CheckOptions.wallet_prefix` is set.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal

from sqlalchemy import DateTime, bindparam, text
from sqlalchemy.engine import Connection

from wallet_checks.catalog import CHECK_DESCRIPTIONS

ERROR = "error"
WARNING = "warning"

# A value read back from a query: what the drivers return for these tables.
Value = int | str | float | datetime | Decimal | None
Row = dict[str, Value]
# A fact of a report: a count, a name, or a small table of them.
Fact = Value | Mapping[str, "Fact"]


@dataclass
class CheckOptions:
    """Thresholds and selection. Ages are seconds before the snapshot's ``now``."""

    # A pending outbox row older than this means the relay is not draining.
    outbox_max_age_seconds: float = 60.0
    # An unfinished saga not updated for this long is stuck (recovery did not finish it).
    saga_max_age_seconds: float = 300.0
    # Events older than this not yet applied by analytics are reported (as a warning:
    # a poisoned event legitimately sits in the DLQ instead).
    projection_lag_seconds: float = 60.0
    # The inbox consumer name of the analytics worker (analytics_worker.store).
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
    # Run only these checks (names from the catalog); None = all.
    checks: Sequence[str] | None = None
    # Checks to leave out.
    skip: Sequence[str] = ()
    # Only the wallets whose id starts with this (a benchmark run's own); None = all.
    # Transfers and holds are narrowed by their source wallet (and transfers also by
    # their destination), outbox and inbox rows by their event's wallet.
    wallet_prefix: str | None = None


@dataclass
class CheckResult:
    """One invariant's verdict: how many rows break it, a few of them, and context."""

    name: str
    description: str
    severity: str = ERROR
    problems: int = 0
    examples: list[Row] = field(default_factory=list)
    facts: dict[str, Fact] = field(default_factory=dict)
    note: str | None = None
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.problems == 0

    def add(self, example: Row, limit: int) -> None:
        self.problems += 1
        if len(self.examples) < limit:
            self.examples.append(example)


def like_prefix(prefix: str) -> str:
    """A LIKE pattern (``ESCAPE '!'``) for the strings starting with ``prefix`` exactly:
    its own ``%`` and ``_`` match only themselves."""
    escaped = prefix.replace("!", "!!").replace("%", "!%").replace("_", "!_")
    return f"{escaped}%"


def as_datetime(value: object) -> datetime | None:
    """A UTC datetime from what a driver returns (SQLite text, naive or aware values)."""
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    if not isinstance(value, datetime):
        return None
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def _integral(value: Value) -> Value:
    """PostgreSQL sums BIGINTs into NUMERIC: money stays an exact int, never a Decimal."""
    if isinstance(value, Decimal) and value == value.to_integral_value():
        return int(value)
    return value


def as_int(value: Value) -> int:
    """A count or a sum as an int (NULL, from an empty aggregate, is 0)."""
    if value is None:
        return 0
    if isinstance(value, datetime):
        raise TypeError(f"not a number: {value!r}")
    return int(value)


class CheckContext:
    """Runs the checks' queries against one connection at one instant."""

    def __init__(self, conn: Connection, options: CheckOptions, now: datetime) -> None:
        self.conn = conn
        self.options = options
        self.now = now

    @property
    def limit(self) -> int:
        return self.options.example_limit

    def result(self, name: str, severity: str = ERROR) -> CheckResult:
        return CheckResult(name, CHECK_DESCRIPTIONS[name], severity)

    def scope(self, column: str) -> str:
        """SQL true for the rows of the selected wallets (``column`` holds a wallet id)."""
        if self.options.wallet_prefix is None:
            return "1 = 1"
        return f"{column} LIKE :wallet_prefix ESCAPE '!'"

    def rows(self, sql: str, **params: Value) -> list[Row]:
        if ":wallet_prefix" in sql:
            params["wallet_prefix"] = like_prefix(self.options.wallet_prefix or "")
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

    def scalar(self, sql: str, **params: Value) -> Value:
        rows = self.rows(sql, **params)
        return next(iter(rows[0].values())) if rows else None

    def add_rows(self, result: CheckResult, sql: str, **params: Value) -> CheckResult:
        """Count every row ``sql`` returns as a problem of ``result``; returns it."""
        for row in self.rows(sql, **params):
            result.add(row, self.limit)
        return result

    def count_by(self, sql: str, **params: Value) -> dict[str, int]:
        """``{key: n}`` from a query selecting ``key`` and ``n`` (a GROUP BY's counts)."""
        return {str(row["key"]): as_int(row["n"]) for row in self.rows(sql, **params)}
