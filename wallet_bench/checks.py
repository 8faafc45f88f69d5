"""Invariant checks after a run, against the client's ledger and the database.

Two independent witnesses are compared with the platform's state:

- the client ledger (:class:`wallet_bench.load.Ledger`): every acknowledged write and
  every terminal transfer, hence each wallet's exact expected balance and statistics;
- the event log in the database (when a database URL is given): each balance must equal
  the signed sum of its wallet's events, balances + open transfer holds must equal
  deposits - withdrawals, each hold must match its events and its saga
  (:mod:`wallet_bench.hold_checks`), sagas must be terminal with the right steps,
  every request must have been applied at most once, every event must have its outbox
  row, and the analytics projection must equal SQL aggregates over the log.

Only the run's own wallets (``wb-<run id>-*``) are looked at, so a shared database with
other data is fine. Reads use SQLAlchemy Core on a blocking engine, run in a thread.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import grpc
from sqlalchemy import Engine, create_engine, func, select
from sqlalchemy.pool import NullPool

from wallet.v1 import analytics_pb2, wallet_pb2
from wallet_bench.client import Clients
from wallet_bench.hold_checks import (
    HoldRow,
    conservation_problems,
    hold_event_problems,
    hold_transfer_problems,
)
from wallet_bench.load import Ledger, LoadConfig
from wallet_bench.stats import percentile
from wallet_platform.storage.database import sync_url
from wallet_platform.storage.schema import (
    inbox,
    outbox,
    transfer_holds,
    transfers,
    wallet_events,
    wallet_stats,
    wallets,
)

CREDITS = ("funds_deposited", "transfer_credited", "transfer_refunded")
DEBITS = ("funds_withdrawn", "transfer_debited")
STAT_FIELDS = (
    "total_deposited",
    "total_withdrawn",
    "total_transferred_in",
    "total_transferred_out",
    "deposit_count",
    "withdrawal_count",
    "transfer_in_count",
    "transfer_out_count",
)
TERMINAL_STATES = ("COMPLETED", "FAILED", "COMPENSATED")
# Expected (debited, credited, refunded) events per terminal transfer state.
SAGA_SHAPES = {"COMPLETED": (1, 1, 0), "COMPENSATED": (1, 0, 1), "FAILED": (0, 0, 0)}
MAX_EXAMPLES = 5


@dataclass
class Check:
    """One invariant: did it hold, and if not, a few examples of why."""

    name: str
    ok: bool
    detail: str = ""
    examples: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "ok": self.ok, "detail": self.detail, "examples": self.examples}


def verdict(name: str, problems: list[str], detail_ok: str = "") -> Check:
    if problems:
        return Check(name, False, f"{len(problems)} violation(s)", problems[:MAX_EXAMPLES])
    return Check(name, True, detail_ok)


# --- the log, read from the database -------------------------------------------------


@dataclass
class LogSnapshot:
    """The run's wallets, events and transfers as stored."""

    balances: dict[str, tuple[int, int]]  # wallet -> (balance, version)
    events: list[dict[str, Any]]
    transfers: dict[str, str]  # transfer id -> state
    outbox_ids: set[str]
    outbox_pending: int
    stats: dict[str, dict[str, int]]
    holds: list[HoldRow] = field(default_factory=list)  # of transfers from the run's wallets


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

    def _mine(self, column: Any) -> Any:
        return column.like(self.prefix + "%")

    def snapshot(self) -> LogSnapshot:
        with self.engine.connect() as conn:
            balances = {
                row.wallet_id: (int(row.balance), int(row.version))
                for row in conn.execute(
                    select(wallets.c.wallet_id, wallets.c.balance, wallets.c.version).where(
                        self._mine(wallets.c.wallet_id)
                    )
                )
            }
            events = [
                dict(row._mapping)
                for row in conn.execute(
                    select(
                        wallet_events.c.event_id,
                        wallet_events.c.wallet_id,
                        wallet_events.c.sequence,
                        wallet_events.c.type,
                        wallet_events.c.amount,
                        wallet_events.c.balance_after,
                        wallet_events.c.transfer_id,
                        wallet_events.c.request_id,
                    ).where(self._mine(wallet_events.c.wallet_id))
                )
            ]
            transfer_rows = {
                row.transfer_id: row.state
                for row in conn.execute(
                    select(transfers.c.transfer_id, transfers.c.state).where(
                        self._mine(transfers.c.from_wallet_id)
                        | self._mine(transfers.c.to_wallet_id)
                    )
                )
            }
            event_ids = [e["event_id"] for e in events]
            outbox_ids: set[str] = set()
            pending = 0
            for chunk in _chunks(event_ids, 5000):
                for row in conn.execute(
                    select(outbox.c.message_id, outbox.c.status).where(
                        outbox.c.message_id.in_(chunk)
                    )
                ):
                    outbox_ids.add(row.message_id)
                    pending += row.status != "published"
            stats = {
                row.wallet_id: {name: int(getattr(row, name)) for name in STAT_FIELDS}
                for row in conn.execute(
                    select(wallet_stats).where(self._mine(wallet_stats.c.wallet_id))
                )
            }
            holds = [
                HoldRow(r.transfer_id, r.from_wallet_id, r.to_wallet_id, int(r.amount), r.state)
                for r in conn.execute(
                    select(transfer_holds).where(self._mine(transfer_holds.c.from_wallet_id))
                )
            ]
        return LogSnapshot(balances, events, transfer_rows, outbox_ids, pending, stats, holds)

    def drain_state(self) -> tuple[int, int]:
        """(outbox rows of the run not yet published, wallets whose stats lag the log)."""
        with self.engine.connect() as conn:
            pending = conn.execute(
                select(func.count())
                .select_from(
                    outbox.join(wallet_events, outbox.c.message_id == wallet_events.c.event_id)
                )
                .where(self._mine(wallet_events.c.wallet_id), outbox.c.status != "published")
            ).scalar_one()
        snapshot_stats = self.analytics_mismatches()
        return int(pending), len(snapshot_stats)

    def analytics_mismatches(self) -> list[str]:
        with self.engine.connect() as conn:
            log_totals = _log_totals(
                dict(row._mapping)
                for row in conn.execute(
                    select(
                        wallet_events.c.wallet_id,
                        wallet_events.c.type,
                        func.sum(wallet_events.c.amount).label("amount"),
                        func.count().label("n"),
                    )
                    .where(self._mine(wallet_events.c.wallet_id))
                    .group_by(wallet_events.c.wallet_id, wallet_events.c.type)
                )
            )
            stats = {
                row.wallet_id: {name: int(getattr(row, name)) for name in STAT_FIELDS}
                for row in conn.execute(
                    select(wallet_stats).where(self._mine(wallet_stats.c.wallet_id))
                )
            }
        return _compare_stats(log_totals, stats)

    def consumer_lag(self, since: datetime | None = None) -> dict[str, dict[str, float]]:
        """Per consumer: event time -> applied time, p50/p99/max seconds, from the inbox."""
        query = (
            select(inbox.c.consumer, wallet_events.c.occurred_at, inbox.c.processed_at)
            .select_from(inbox.join(wallet_events, inbox.c.message_id == wallet_events.c.event_id))
            .where(self._mine(wallet_events.c.wallet_id))
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


def _chunks(items: list[str], size: int) -> Iterable[list[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _log_totals(rows: Iterable[dict[str, Any]]) -> dict[str, dict[str, int]]:
    """Analytics totals as SQL aggregates over the log would give them."""
    totals: dict[str, dict[str, int]] = defaultdict(lambda: dict.fromkeys(STAT_FIELDS, 0))
    for row in rows:
        out = totals[row["wallet_id"]]
        amount, n = int(row["amount"] or 0), int(row["n"])
        kind = row["type"]
        if kind == "funds_deposited":
            out["total_deposited"] += amount
            out["deposit_count"] += n
        elif kind == "funds_withdrawn":
            out["total_withdrawn"] += amount
            out["withdrawal_count"] += n
        elif kind == "transfer_credited":
            out["total_transferred_in"] += amount
            out["transfer_in_count"] += n
        elif kind == "transfer_debited":
            out["total_transferred_out"] += amount
            out["transfer_out_count"] += n
        elif kind == "transfer_refunded":
            out["total_transferred_out"] -= amount
            out["transfer_out_count"] -= n
    return totals


def _compare_stats(
    expected: dict[str, dict[str, int]], actual: dict[str, dict[str, int]]
) -> list[str]:
    problems = []
    for wallet_id, want in sorted(expected.items()):
        have = actual.get(wallet_id)
        if have is None:
            if any(want.values()):
                problems.append(f"{wallet_id}: no statistics yet")
            continue
        diffs = [f"{k} {have[k]} != {want[k]}" for k in STAT_FIELDS if have[k] != want[k]]
        if diffs:
            problems.append(f"{wallet_id}: " + ", ".join(diffs))
    return problems


def check_log(snapshot: LogSnapshot, ledger: Ledger, config: LoadConfig) -> list[Check]:
    """The invariants that need the stored log (DESIGN.md invariants 1-7)."""
    checks: list[Check] = []
    by_wallet: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for event in snapshot.events:
        by_wallet[event["wallet_id"]].append(event)

    # 1/2. Conservation: each balance is the signed sum of its events, versions follow.
    problems = []
    for wallet_id, (balance, version) in sorted(snapshot.balances.items()):
        events = sorted(by_wallet.get(wallet_id, []), key=lambda e: e["sequence"])
        signed = sum(
            e["amount"] if e["type"] in CREDITS else -e["amount"] if e["type"] in DEBITS else 0
            for e in events
        )
        if balance != signed:
            problems.append(f"{wallet_id}: balance {balance} != sum of events {signed}")
        sequences = [e["sequence"] for e in events]
        if sequences != list(range(1, len(sequences) + 1)):
            problems.append(f"{wallet_id}: event sequences are not 1..{len(sequences)}")
        elif events and (version != sequences[-1] or events[-1]["balance_after"] != balance):
            problems.append(f"{wallet_id}: version/balance_after disagree with the last event")
    held_problems, held_summary = conservation_problems(
        {w: b for w, (b, _) in snapshot.balances.items()}, snapshot.events, snapshot.holds
    )
    checks.append(
        verdict(
            "conservation",
            problems + held_problems,
            f"{len(snapshot.balances)} wallets: {held_summary}",
        )
    )
    problems = hold_event_problems(snapshot.events, snapshot.holds)
    problems += hold_transfer_problems(snapshot.transfers, snapshot.holds)
    hold_states = Counter(h.state for h in snapshot.holds)
    checks.append(
        verdict(
            "holds_match",
            problems,
            ", ".join(f"{s} {n}" for s, n in sorted(hold_states.items())) or "no holds",
        )
    )

    # 3. No negative balance.
    problems = [f"{w}: balance {b}" for w, (b, _) in snapshot.balances.items() if b < 0]
    problems += [f"event {e['event_id']}" for e in snapshot.events if e["balance_after"] < 0]
    checks.append(verdict("no_negative_balance", problems))

    # 5. Every saga terminal, with the right steps in the log.
    steps: dict[str, Counter[str]] = defaultdict(Counter)
    for event in snapshot.events:
        if event["transfer_id"]:
            steps[event["transfer_id"]][event["type"]] += 1
    problems = []
    for transfer_id, state in sorted(snapshot.transfers.items()):
        if state not in TERMINAL_STATES:
            problems.append(f"{transfer_id}: still {state}")
            continue
        seen = steps.get(transfer_id, Counter())
        shape = (
            seen["transfer_debited"],
            seen["transfer_credited"],
            seen["transfer_refunded"],
        )
        if shape != SAGA_SHAPES[state]:
            problems.append(f"{transfer_id}: {state} with (debit, credit, refund) = {shape}")
    states = Counter(snapshot.transfers.values())
    checks.append(
        verdict(
            "sagas_terminal",
            problems,
            ", ".join(f"{s} {n}" for s, n in sorted(states.items())) or "no transfers",
        )
    )

    # 4. Every request applied at most once; acknowledged = exactly once; rejected = never.
    per_request = Counter(e["request_id"] for e in snapshot.events)
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

    # 6. Every event has its outbox row, and all were published.
    missing = [e["event_id"] for e in snapshot.events if e["event_id"] not in snapshot.outbox_ids]
    problems = [f"event {m} has no outbox row" for m in missing]
    if snapshot.outbox_pending:
        problems.append(f"{snapshot.outbox_pending} outbox rows still unpublished")
    checks.append(verdict("outbox_complete", problems, f"{len(snapshot.outbox_ids)} rows"))

    # 7. Analytics equal to aggregates over the log.
    rows = (
        {"wallet_id": e["wallet_id"], "type": e["type"], "amount": e["amount"], "n": 1}
        for e in snapshot.events
    )
    checks.append(verdict("analytics_equal_log", _compare_stats(_log_totals(rows), snapshot.stats)))

    # The client's own prediction against what was stored.
    expected = ledger.expected_wallets(config)
    problems = [
        f"{w}: stored {snapshot.balances.get(w, (None, 0))[0]} != expected {want['balance']}"
        for w, want in sorted(expected.items())
        if snapshot.balances.get(w, (None, 0))[0] != want["balance"]
    ]
    checks.append(verdict("balances_match_client", problems))
    return checks


# --- through the public API only -----------------------------------------------------


async def check_api(clients: Clients, ledger: Ledger, config: LoadConfig) -> list[Check]:
    """Balances and statistics read back over gRPC against the client's prediction."""
    expected = ledger.expected_wallets(config)
    balances = await _gather_limited(
        [_get_balance(clients, wallet_id) for wallet_id in expected], limit=32
    )
    problems = []
    negative = []
    for (wallet_id, want), have in zip(expected.items(), balances, strict=True):
        if have != want["balance"]:
            problems.append(f"{wallet_id}: balance {have} != expected {want['balance']}")
        if have is not None and have < 0:
            negative.append(f"{wallet_id}: {have}")
    checks = [
        verdict(
            "balances_match_client",
            problems,
            f"{len(expected)} wallets, total {sum(w['balance'] for w in expected.values())}",
        ),
        verdict("no_negative_balance", negative),
    ]
    unfinished = [f"{op.request_id}: not terminal" for op in ledger.unfinished_transfers.values()]
    checks.append(verdict("sagas_terminal", unfinished, _states_text(ledger)))
    unresolved = [f"{op.kind} {r}: outcome unknown" for r, op in ledger.unknown.items()]
    checks.append(
        verdict(
            "applied_once",
            unresolved + ledger.replay_mismatches,
            f"{ledger.replays} replays matched",
        )
    )
    return checks


def _states_text(ledger: Ledger) -> str:
    states = ledger.transfer_states()
    return ", ".join(f"{s} {n}" for s, n in sorted(states.items())) or "no transfers"


async def _gather_limited(coroutines: list[Any], limit: int) -> list[Any]:
    semaphore = asyncio.Semaphore(limit)

    async def one(coroutine: Any) -> Any:
        async with semaphore:
            return await coroutine

    return await asyncio.gather(*(one(c) for c in coroutines))


async def _get_balance(clients: Clients, wallet_id: str) -> int | None:
    try:
        response = await clients.wallet.GetWallet(
            wallet_pb2.GetWalletRequest(wallet_id=wallet_id), timeout=10
        )
    except grpc.aio.AioRpcError:
        return None
    return int(response.wallet.balance)


async def _get_stats(clients: Clients, wallet_id: str) -> dict[str, int] | None:
    try:
        response = await clients.analytics.GetWalletStats(
            analytics_pb2.GetWalletStatsRequest(wallet_id=wallet_id), timeout=10
        )
    except grpc.aio.AioRpcError:
        return None
    return {name: int(getattr(response.stats, name)) for name in STAT_FIELDS}


async def api_stats_mismatches(clients: Clients, ledger: Ledger, config: LoadConfig) -> list[str]:
    expected = ledger.expected_wallets(config)
    wanted = {w: {k: v[k] for k in STAT_FIELDS} for w, v in expected.items()}
    have = await _gather_limited([_get_stats(clients, w) for w in wanted], limit=32)
    actual = {w: s for w, s in zip(wanted, have, strict=True) if s is not None}
    return _compare_stats(wanted, actual)


# --- draining ------------------------------------------------------------------------


@dataclass
class DrainResult:
    drained: bool
    seconds: float
    remaining: str = ""


async def wait_for_drain(
    clients: Clients,
    ledger: Ledger,
    config: LoadConfig,
    reader: LogReader | None,
    timeout_s: float = 60.0,
) -> DrainResult:
    """Wait until every event is published and the analytics projection caught up."""
    started = time.monotonic()
    remaining = ""
    while True:
        if reader is not None:
            pending, lagging = await asyncio.to_thread(reader.drain_state)
            done = pending == 0 and lagging == 0
            remaining = f"{pending} unpublished outbox rows, {lagging} wallets behind"
        else:
            problems = await api_stats_mismatches(clients, ledger, config)
            done = not problems
            remaining = f"{len(problems)} wallets behind"
        elapsed = time.monotonic() - started
        if done:
            return DrainResult(True, elapsed)
        if elapsed > timeout_s:
            return DrainResult(False, elapsed, remaining)
        await asyncio.sleep(0.1)
