"""wallet_platform.backoff: bounds, cap, jitter spread, and the presets' uses."""

from __future__ import annotations

import random
import statistics
from dataclasses import dataclass

import pytest
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt

from wallet_platform import backoff
from wallet_platform.backoff import Backoff

POLICY = Backoff(initial=0.1, cap=2.0)


def test_the_ceiling_grows_exponentially_up_to_the_cap():
    assert [POLICY.ceiling(n) for n in range(1, 8)] == pytest.approx(
        [0.1, 0.2, 0.4, 0.8, 1.6, 2.0, 2.0]
    )
    assert Backoff(initial=0.5, cap=10, multiplier=3).ceiling(3) == pytest.approx(4.5)


def test_a_long_outage_stays_at_the_cap_without_overflow():
    assert POLICY.ceiling(10_000) == 2.0
    assert 0 <= POLICY.delay(10**9) <= 2.0


def test_the_cap_wins_over_a_larger_initial_wait():
    assert Backoff(initial=0.05, cap=0.01).ceiling(1) == 0.01


def test_every_delay_lies_within_zero_and_its_ceiling():
    rng = random.Random(11)
    for failures in range(1, 12):
        draws = [POLICY.delay(failures, rng) for _ in range(500)]
        assert min(draws) >= 0.0 and max(draws) <= POLICY.ceiling(failures)


def test_full_jitter_spreads_the_waits_over_the_whole_interval():
    rng = random.Random(5)
    draws = [POLICY.delay(6, rng) for _ in range(4000)]  # ceiling 2.0
    # Uniform on [0, 2]: mean 1, every fifth of the interval gets about a fifth.
    assert statistics.fmean(draws) == pytest.approx(1.0, abs=0.05)
    counts = [sum(1 for d in draws if k * 0.4 <= d < (k + 1) * 0.4) for k in range(5)]
    assert all(700 <= count <= 900 for count in counts), counts


def test_replicas_failing_together_do_not_retry_in_lockstep():
    """Two processes (two generators) that failed at the same moment."""
    first, second = random.Random(1), random.Random(2)
    gaps = [abs(POLICY.delay(n, first) - POLICY.delay(n, second)) for n in range(3, 13)]
    assert statistics.fmean(gaps) > 0.2  # apart by a good share of the interval


@pytest.mark.parametrize("bad", [{"initial": -1, "cap": 1}, {"initial": 1, "cap": -1}])
def test_nonsense_is_refused(bad):
    with pytest.raises(ValueError):
        Backoff(**bad)


def test_a_multiplier_below_one_is_refused():
    with pytest.raises(ValueError):
        Backoff(initial=1, cap=2, multiplier=0.5)


@pytest.mark.parametrize(
    "preset",
    [
        backoff.RELAY_FAILURE,
        backoff.BUS_RECONNECT,
        backoff.REDELIVERY,
        backoff.BUS_POLL_FAILURE,
        backoff.DATABASE_UNREACHABLE,
        backoff.DATABASE_CONTENTION,
        backoff.AUDIT_WRITE,
        backoff.WATCH_RECONNECT,
    ],
)
def test_presets_start_short_and_stay_bounded(preset):
    assert 0 < preset.ceiling(1) <= 1.0
    assert preset.ceiling(100) <= 5.0


@dataclass
class _State:
    attempt_number: int


def test_as_a_tenacity_wait_it_follows_the_attempt_number():
    policy = Backoff(initial=1.0, cap=3.0)
    for attempt in range(1, 6):
        assert 0 <= policy.tenacity_wait(_State(attempt)) <= policy.ceiling(attempt)


async def test_tenacity_sleeps_what_the_policy_draws():
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    calls = 0
    retrying = AsyncRetrying(
        wait=Backoff(initial=0.1, cap=0.4).tenacity_wait,
        stop=stop_after_attempt(5),
        retry=retry_if_exception_type(ConnectionError),
        sleep=sleep,
    )
    async for attempt in retrying:
        with attempt:
            calls += 1
            if calls < 5:
                raise ConnectionError("down")
    assert calls == 5 and len(slept) == 4
    for number, pause in enumerate(slept, start=1):
        assert 0 <= pause <= min(0.4, 0.1 * 2 ** (number - 1))
