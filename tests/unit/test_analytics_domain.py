"""Analytics semantics without I/O: what each event type does to the stats."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from analytics_worker.domain import (
    COUNTER_FIELDS,
    EFFECTS,
    StatsDelta,
    WalletStats,
    delta_for,
    merge_by_wallet,
)
from analytics_worker.grpc_api import stats_to_proto
from wallet.v1 import analytics_pb2
from wallet_platform.messaging.events import KIND_BY_NAME

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def fold(events: list[tuple[str, int, datetime]], wallet_id: str = "w") -> WalletStats:
    stats = WalletStats(wallet_id)
    for event_type, amount, at in events:
        stats = stats.apply(delta_for(wallet_id, event_type, amount, at))
    return stats


def test_every_effect_names_a_real_event_type() -> None:
    assert set(EFFECTS) <= set(KIND_BY_NAME)


def test_counters_match_the_proto() -> None:
    assert set(COUNTER_FIELDS) <= set(analytics_pb2.WalletStats.DESCRIPTOR.fields_by_name)


def test_scripted_history() -> None:
    stats = fold(
        [
            ("wallet_created", 0, T0),
            ("funds_deposited", 1000, T0 + timedelta(seconds=1)),
            ("funds_deposited", 500, T0 + timedelta(seconds=2)),
            ("funds_withdrawn", 200, T0 + timedelta(seconds=3)),
            ("transfer_debited", 300, T0 + timedelta(seconds=4)),
            ("transfer_debited", 100, T0 + timedelta(seconds=5)),
            ("transfer_refunded", 100, T0 + timedelta(seconds=6)),
            ("transfer_credited", 70, T0 + timedelta(seconds=7)),
            ("wallet_frozen", 0, T0 + timedelta(seconds=8)),
        ]
    )
    assert stats.counters() == {
        "total_deposited": 1500,
        "deposit_count": 2,
        "total_withdrawn": 200,
        "withdrawal_count": 1,
        "total_transferred_out": 300,  # the refunded 100 is netted out
        "transfer_out_count": 1,
        "total_transferred_in": 70,
        "transfer_in_count": 1,
        "events_applied": 9,
    }
    assert stats.last_activity_at == T0 + timedelta(seconds=8)


def test_arrival_order_does_not_matter() -> None:
    history = [
        ("funds_deposited", 10, T0 + timedelta(seconds=5)),
        ("transfer_refunded", 4, T0 + timedelta(seconds=9)),
        ("transfer_debited", 4, T0 + timedelta(seconds=7)),
    ]
    assert fold(history) == fold(list(reversed(history)))
    assert fold(history).last_activity_at == T0 + timedelta(seconds=9)


def test_merge_by_wallet_is_the_sum_of_its_parts() -> None:
    deltas = [
        delta_for("b", "funds_deposited", 5, T0),
        delta_for("a", "funds_withdrawn", 3, T0 + timedelta(seconds=2)),
        delta_for("b", "transfer_debited", 7, T0 + timedelta(seconds=1)),
        delta_for("a", "funds_withdrawn", 1, T0),
    ]
    merged = merge_by_wallet(deltas)
    assert [d.wallet_id for d in merged] == ["a", "b"]
    one_by_one = {w: fold_deltas([d for d in deltas if d.wallet_id == w], w) for w in ("a", "b")}
    for delta in merged:
        assert WalletStats(delta.wallet_id).apply(delta) == one_by_one[delta.wallet_id]


def fold_deltas(deltas: list[StatsDelta], wallet_id: str) -> WalletStats:
    stats = WalletStats(wallet_id)
    for delta in deltas:
        stats = stats.apply(delta)
    return stats


def test_merging_different_wallets_is_refused() -> None:
    with pytest.raises(ValueError):
        delta_for("a", "funds_deposited", 1, T0).merge(delta_for("b", "funds_deposited", 1, T0))


def test_stats_to_proto() -> None:
    stats = fold([("funds_deposited", 42, T0)])
    message = stats_to_proto(stats)
    assert message.total_deposited == 42 and message.deposit_count == 1
    assert message.events_applied == 1
    assert message.last_activity_at.ToDatetime(tzinfo=UTC) == T0
