"""Fraud rules without I/O: thresholds, windows by event time, one alert per burst."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

from fraud_worker.rules import (
    LARGE_WITHDRAWAL,
    RAPID_WITHDRAWALS,
    FraudRules,
    Withdrawal,
    replay,
)

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
RULES = FraudRules(large_withdrawal=1_000, rapid_count=3, rapid_window=timedelta(seconds=60))


def w(seconds: float, event_id: str | None = None, amount: int = 10, wallet: str = "w1"):
    return Withdrawal(
        occurred_at=T0 + timedelta(seconds=seconds),
        event_id=event_id or f"e{seconds:g}",
        wallet_id=wallet,
        amount=amount,
    )


def rules_of(alerts, rule):
    return [a for a in alerts if a.rule == rule]


def test_large_withdrawal_at_threshold_alerts_below_does_not() -> None:
    assert rules_of(replay(RULES, [w(0, amount=1_000)]), LARGE_WITHDRAWAL)
    assert not replay(RULES, [w(0, amount=999)])
    [alert] = replay(RULES, [w(0, "big", amount=5_000)])
    assert alert.event_ids == ("big",) and "5000" in alert.detail


def test_two_withdrawals_raise_nothing() -> None:
    assert replay(RULES, [w(0), w(1)]) == []


def test_three_quick_withdrawals_raise_one_rapid_alert() -> None:
    [alert] = replay(RULES, [w(0), w(1), w(2)])
    assert alert.rule == RAPID_WITHDRAWALS
    assert alert.event_ids == ("e0", "e1", "e2")
    assert alert.window_start == T0 and alert.window_end == T0 + timedelta(seconds=60)
    assert alert.trigger_event_id == "e2"


def test_fourth_and_fifth_of_the_burst_raise_nothing_more() -> None:
    assert len(replay(RULES, [w(0), w(1), w(2), w(3), w(50)])) == 1


def test_exactly_one_window_apart_is_not_rapid() -> None:
    assert replay(RULES, [w(0), w(30), w(60)]) == []


def test_just_inside_the_window_is_rapid() -> None:
    [alert] = replay(RULES, [w(0), w(30), w(59.999)])
    assert alert.event_ids == ("e0", "e30", "e59.999")


def test_event_time_not_arrival_order_decides() -> None:
    # Arrives last but happened first: 0, 59 and 70 are not one window; 59, 70, 100 are.
    alerts = replay(RULES, [w(100), w(59), w(70), w(0)])
    [alert] = alerts
    assert alert.event_ids == ("e59", "e70", "e100")


def test_a_new_burst_needs_a_full_set_after_the_previous_window() -> None:
    # Burst 1 starts at 0 (claims event times (-60, 60)); 61 and 62 are outside it but
    # only two: nothing; 63 completes a new set of three.
    stream = [w(0), w(1), w(2), w(59), w(61), w(62)]
    assert len(replay(RULES, stream)) == 1
    alerts = replay(RULES, [*stream, w(63)])
    assert [a.event_ids for a in alerts] == [("e0", "e1", "e2"), ("e61", "e62", "e63")]


def test_steady_stream_raises_one_alert_per_window() -> None:
    stream = [w(seconds) for seconds in range(0, 300, 10)]  # every 10 s for 5 minutes
    alerts = replay(RULES, stream)
    assert [a.window_start for a in alerts] == [
        T0 + timedelta(seconds=s) for s in (0, 60, 120, 180, 240)
    ]


def test_any_arrival_order_of_one_burst_gives_one_alert() -> None:
    burst = [w(seconds) for seconds in (0, 5, 10, 15, 20)]
    for order in itertools.permutations(burst):
        alerts = replay(RULES, order)
        assert len(alerts) == 1, [x.event_id for x in order]
        assert alerts[0].rule == RAPID_WITHDRAWALS


def test_redelivered_withdrawal_changes_nothing() -> None:
    [alert] = replay(RULES, [w(0), w(1), w(2), w(2), w(1)])
    assert alert.trigger_event_id == "e2"


def test_alert_ids_are_deterministic_per_rule_and_trigger() -> None:
    first = replay(RULES, [w(0), w(1), w(2, amount=2_000)])
    second = replay(RULES, [w(0), w(1), w(2, amount=2_000)])
    assert {a.alert_id for a in first} == {a.alert_id for a in second}
    assert len({a.alert_id for a in first}) == 2  # LARGE and RAPID, both triggered by e2


def test_other_wallets_do_not_count() -> None:
    assert replay(RULES, [w(0, "a", wallet="w1"), w(1, "b", wallet="w2"), w(2, "c")]) == []


def test_rapid_rule_can_be_disabled() -> None:
    off = FraudRules(large_withdrawal=1_000, rapid_count=0, rapid_window=timedelta(seconds=60))
    assert replay(off, [w(0), w(1), w(2)]) == []


def test_lookaround_covers_partners_and_bursts() -> None:
    around = RULES.lookaround(T0)
    assert around.withdrawals_from == T0 - timedelta(seconds=60)
    assert around.withdrawals_to == T0 + timedelta(seconds=60)
    assert around.bursts_from == T0 - timedelta(seconds=120)
    assert around.bursts_to == T0 + timedelta(seconds=120)
