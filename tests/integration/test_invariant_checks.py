"""Each invariant of :mod:`wallet_checks`, broken on purpose, is reported by its check.

A small ledger is written row by row (three wallets, a completed, a compensated, a
failed and an in-flight transfer, their holds, outbox, inboxes and statistics); the
checker finds it clean. Each case then changes that ledger in one way that real drift
takes (a balance edited, a step applied twice, an outbox row lost...) and the checker
must name exactly the checks that the change breaks. Rows are written in a transaction
that is rolled back, on SQLite and PostgreSQL.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Connection, create_engine, insert, text

from wallet_checks.catalog import CHECK_DESCRIPTIONS
from wallet_checks.context import CheckOptions, CheckResult
from wallet_checks.runner import CHECKS, run_checks
from wallet_platform.storage.database import sync_url
from wallet_platform.storage.schema import (
    bus_messages,
    inbox,
    outbox,
    transfer_holds,
    transfers,
    wallet_events,
    wallet_stats,
    wallets,
)

NOW = datetime.now(UTC)
OLD = NOW - timedelta(hours=1)  # older than every grace period
Row = dict[str, object]


def _event(wallet: str, seq: int, kind: str, amount: int, after: int, transfer: str = "") -> Row:
    return {
        "event_id": f"{wallet}-{seq}",
        "wallet_id": wallet,
        "sequence": seq,
        "type": kind,
        "amount": amount,
        "balance_after": after,
        "currency": "USD",
        "transfer_id": transfer or None,
        "request_id": f"r-{wallet}-{seq}",
        "occurred_at": OLD,
    }


def _stats(wallet: str, applied: int, **counters: int) -> Row:
    zero = {column.name: 0 for column in wallet_stats.c if column.server_default is not None}
    return {**zero, "wallet_id": wallet, "events_applied": applied, "updated_at": OLD, **counters}


def _transfer(transfer_id: str, src: str, dst: str, amount: int, state: str) -> Row:
    return {
        "transfer_id": transfer_id,
        "request_id": f"req-{transfer_id}",
        "fingerprint": "f",
        "from_wallet_id": src,
        "to_wallet_id": dst,
        "amount": amount,
        "currency": "USD",
        "state": state,
        "attempts": 1,
        "created_at": OLD,
        "updated_at": OLD if state != "DEBITED" else NOW,  # in flight, not stuck
    }


def _hold(transfer_id: str, src: str, dst: str, amount: int, state: str) -> Row:
    return {
        "transfer_id": transfer_id,
        "from_wallet_id": src,
        "to_wallet_id": dst,
        "amount": amount,
        "currency": "USD",
        "state": state,
        "created_at": OLD,
        "updated_at": OLD,
    }


@dataclass
class Ledger:
    """A consistent ledger: 100 deposited, 10 withdrawn, 30 sent a->b (COMPLETED), 5
    a->c given back (COMPENSATED), 999 b->a refused (FAILED), 7 a->b in flight (DEBITED,
    its hold OPEN). Balances a 53 + b 30 + c 0, plus 7 held = 90 = 100 - 10."""

    wallets: dict[str, Row] = field(
        default_factory=lambda: {
            w: {"wallet_id": w, "currency": "USD", "balance": b, "status": "ACTIVE",
                "version": v, "created_at": OLD, "updated_at": OLD}
            for w, b, v in (("t-a", 53, 7), ("t-b", 30, 2), ("t-c", 0, 1))
        }
    )  # fmt: skip
    events: list[Row] = field(
        default_factory=lambda: [
            _event("t-a", 1, "wallet_created", 0, 0),
            _event("t-a", 2, "funds_deposited", 100, 100),
            _event("t-a", 3, "funds_withdrawn", 10, 90),
            _event("t-a", 4, "transfer_debited", 30, 60, "t1"),
            _event("t-a", 5, "transfer_debited", 5, 55, "t2"),
            _event("t-a", 6, "transfer_refunded", 5, 60, "t2"),
            _event("t-a", 7, "transfer_debited", 7, 53, "t3"),
            _event("t-b", 1, "wallet_created", 0, 0),
            _event("t-b", 2, "transfer_credited", 30, 30, "t1"),
            _event("t-c", 1, "wallet_created", 0, 0),
        ]
    )
    transfers: dict[str, Row] = field(
        default_factory=lambda: {
            "t1": _transfer("t1", "t-a", "t-b", 30, "COMPLETED"),
            "t2": _transfer("t2", "t-a", "t-c", 5, "COMPENSATED"),
            "t3": _transfer("t3", "t-a", "t-b", 7, "DEBITED"),
            "t4": _transfer("t4", "t-b", "t-a", 999, "FAILED"),
        }
    )
    holds: dict[str, Row] = field(
        default_factory=lambda: {
            "t1": _hold("t1", "t-a", "t-b", 30, "POSTED"),
            "t2": _hold("t2", "t-a", "t-c", 5, "VOIDED"),
            "t3": _hold("t3", "t-a", "t-b", 7, "OPEN"),
        }
    )
    stats: dict[str, Row] = field(
        default_factory=lambda: {
            "t-a": _stats("t-a", 7, total_deposited=100, deposit_count=1, total_withdrawn=10,
                          withdrawal_count=1, total_transferred_out=37, transfer_out_count=2),
            "t-b": _stats("t-b", 2, total_transferred_in=30, transfer_in_count=1),
            "t-c": _stats("t-c", 1),
        }
    )  # fmt: skip
    # outbox status by event id ("published" unless said), consumers' missing inbox rows
    outbox_status: dict[str, str | None] = field(default_factory=dict)
    not_applied: set[tuple[str, str]] = field(default_factory=set)
    queued: list[tuple[str, str]] = field(default_factory=list)  # (queue, event id)

    def event(self, event_id: str) -> Row:
        return next(e for e in self.events if e["event_id"] == event_id)

    def write(self, conn: Connection) -> None:
        conn.execute(insert(wallets), list(self.wallets.values()))
        conn.execute(insert(wallet_events), self.events)
        conn.execute(insert(transfers), list(self.transfers.values()))
        if self.holds:
            conn.execute(insert(transfer_holds), list(self.holds.values()))
        conn.execute(insert(wallet_stats), list(self.stats.values()))
        rows = []
        for e in self.events:
            status = self.outbox_status.get(str(e["event_id"]), "published")
            if status is not None:
                rows.append(
                    {"message_id": e["event_id"], "routing_key": f"wallet.{e['type']}",
                     "message_type": "x", "payload": b"", "status": status, "created_at": OLD}
                )  # fmt: skip
        conn.execute(insert(outbox), rows)
        applied = [
            {"consumer": consumer, "message_id": e["event_id"], "processed_at": OLD}
            for e in self.events
            for consumer in ("analytics", "fraud")
            if (consumer, e["event_id"]) not in self.not_applied
        ]
        conn.execute(insert(inbox), applied)
        for queue, event_id in self.queued:
            conn.execute(
                insert(bus_messages).values(
                    queue=queue, message_id=event_id, routing_key="wallet.x", message_type="x",
                    body=b"", state="ready", available_at_ms=0, created_at=OLD,
                )
            )  # fmt: skip


@contextmanager
def rolled_back(database_url: str) -> Iterator[Connection]:
    """One connection in a transaction that is never committed (checks constraints off)."""
    engine = create_engine(sync_url(database_url))
    try:
        with engine.connect() as conn:
            postgres = engine.dialect.name == "postgresql"
            if not postgres:
                sqlite = conn.connection.dbapi_connection
                assert sqlite is not None  # a connection just checked out of the pool
                sqlite.execute("PRAGMA ignore_check_constraints = ON")
            trans = conn.begin()
            if postgres:  # drift the schema would refuse is what the checks are for
                for table, name in (
                    ("wallets", "ck_wallets_balance_nonnegative"),
                    ("wallet_events", "ck_wallet_events_balance_nonnegative"),
                ):
                    conn.execute(text(f"ALTER TABLE {table} DROP CONSTRAINT {name}"))
            try:
                yield conn
            finally:
                trans.rollback()
    finally:
        engine.dispose()


def failing(
    database_url: str, ledger: Ledger, wallet_prefix: str | None = None
) -> dict[str, CheckResult]:
    with rolled_back(database_url) as conn:
        ledger.write(conn)
        options = CheckOptions(bus="inprocess", wallet_prefix=wallet_prefix)
        results = run_checks(conn, options, NOW)
    assert [r.name for r in results] == list(CHECKS)
    return {r.name: r for r in results if not r.ok}


def test_the_registry_has_every_catalogued_check_in_order() -> None:
    assert list(CHECKS) == list(CHECK_DESCRIPTIONS)


def test_the_ledger_as_written_is_clean(database_url: str) -> None:
    assert failing(database_url, Ledger()) == {}


def _negative(ledger: Ledger) -> None:
    """An overdraft on t-c whose rows all agree with it (conservation too: 53 + 30 - 5
    + 7 held = 85 = 100 - 15): only the sign is wrong."""
    ledger.events.append(_event("t-c", 2, "funds_withdrawn", 5, -5))
    ledger.wallets["t-c"].update(balance=-5, version=2)
    ledger.stats["t-c"].update(events_applied=2, total_withdrawn=5, withdrawal_count=1)


def _twice(ledger: Ledger) -> None:
    """t1's credit applied a second time (and everything downstream followed it)."""
    ledger.events.append(_event("t-b", 3, "transfer_credited", 30, 60, "t1"))
    ledger.wallets["t-b"].update(balance=60, version=3)
    ledger.stats["t-b"].update(events_applied=3, total_transferred_in=60, transfer_in_count=2)


def _lagging(ledger: Ledger) -> None:
    """Analytics has not applied t-b's credit yet; it waits in its queue."""
    ledger.not_applied.add(("analytics", "t-b-2"))
    ledger.queued.append(("analytics.wallet-events", "t-b-2"))
    ledger.stats["t-b"] = _stats("t-b", 1)


CASES: dict[str, tuple[Callable[[Ledger], object], set[str]]] = {
    "balance_equals_event_sum": (
        lambda ledger: ledger.wallets["t-b"].update(balance=31),
        {"balance_equals_event_sum", "balance_equals_last_event", "conservation"},
    ),
    "balance_equals_last_event": (
        lambda ledger: ledger.wallets["t-b"].update(version=3),
        {"balance_equals_last_event"},
    ),
    "sequences_gap_free": (
        lambda ledger: (
            ledger.event("t-b-2").update(sequence=3),
            ledger.wallets["t-b"].update(version=3),
        ),
        {"sequences_gap_free"},
    ),
    "event_chain": (
        lambda ledger: ledger.event("t-a-3").update(balance_after=91),
        {"event_chain"},
    ),
    "no_negative_balance": (_negative, {"no_negative_balance"}),
    "conservation": (  # a settled hold reopened: its money counted twice
        lambda ledger: ledger.holds["t1"].update(state="OPEN"),
        {"conservation", "holds_match_events", "holds_match_transfers"},
    ),
    "transfers_net_zero": (
        lambda ledger: ledger.transfers["t4"].update(state="COMPLETED"),
        {"transfers_net_zero", "holds_match_transfers"},
    ),
    "no_step_applied_twice": (
        _twice,
        {"no_step_applied_twice", "transfers_net_zero", "holds_match_events", "conservation"},
    ),
    "transfer_events_have_transfer": (
        lambda ledger: ledger.transfers.pop("t2"),
        {"transfer_events_have_transfer", "holds_match_transfers"},
    ),
    "holds_match_events": (
        lambda ledger: ledger.holds["t2"].update(state="POSTED"),
        {"holds_match_events", "holds_match_transfers"},
    ),
    "transfer_events_have_hold": (
        lambda ledger: ledger.holds.pop("t1"),
        {"transfer_events_have_hold", "holds_match_transfers"},
    ),
    "holds_match_transfers": (
        lambda ledger: ledger.transfers["t3"].update(to_wallet_id="t-c"),
        {"holds_match_transfers"},
    ),
    "sagas_finished": (
        lambda ledger: ledger.transfers["t3"].update(updated_at=OLD),
        {"sagas_finished"},
    ),
    "outbox_row_per_event": (
        lambda ledger: ledger.outbox_status.update({"t-a-2": None}),
        {"outbox_row_per_event"},
    ),
    "outbox_drained": (
        lambda ledger: ledger.outbox_status.update({"t-a-2": "pending"}),
        {"outbox_drained"},
    ),
    "projection_matches_log": (
        lambda ledger: ledger.stats["t-a"].update(deposit_count=2),
        {"projection_matches_log"},
    ),
    "projection_lag": (_lagging, {"projection_lag"}),
    "events_delivered": (
        lambda ledger: ledger.not_applied.add(("fraud", "t-a-5")),
        {"events_delivered"},
    ),
}


def test_every_check_has_a_case() -> None:
    assert set(CASES) == set(CHECKS)


@pytest.mark.parametrize("invariant", list(CASES))
def test_a_broken_invariant_is_reported(database_url: str, invariant: str) -> None:
    breaks, expected = CASES[invariant]
    ledger = Ledger()
    breaks(ledger)
    found = failing(database_url, ledger)
    assert set(found) == expected
    assert found[invariant].examples, found[invariant]


def test_narrowed_to_a_prefix_the_checks_see_only_those_wallets(database_url: str) -> None:
    ledger = Ledger()
    ledger.wallets["other"] = {**ledger.wallets["t-c"], "wallet_id": "other", "balance": 5}
    assert set(failing(database_url, ledger)) == {
        "balance_equals_event_sum",
        "balance_equals_last_event",
        "conservation",
    }
    assert failing(database_url, ledger, wallet_prefix="t-") == {}
    # the prefix is literal: "_" is no wildcard, so "t_" leaves the broken "tx" out ...
    ledger.wallets["tx"] = {**ledger.wallets["other"], "wallet_id": "tx"}
    assert failing(database_url, ledger, wallet_prefix="t_") == {}
    # ... and takes in "t_x"
    ledger.wallets["t_x"] = ledger.wallets.pop("tx") | {"wallet_id": "t_x"}
    found = failing(database_url, ledger, wallet_prefix="t_")
    assert [e["wallet_id"] for e in found["balance_equals_event_sum"].examples] == ["t_x"]
    del ledger.wallets["t_x"]
    ledger.wallets["t-b"]["balance"] = 31
    found = failing(database_url, ledger, wallet_prefix="t-")
    assert [e["wallet_id"] for e in found["balance_equals_event_sum"].examples] == ["t-b"]
