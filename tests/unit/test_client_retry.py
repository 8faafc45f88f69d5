"""wallet_client.retry: what is repeated, how long it waits, and when it gives up.

The loop runs on a scripted clock and a recorded sleep, with scripted outcomes (status
codes as a server would return them), so each rule is checked exactly: integration tests
(tests/integration/test_client_calls.py, tests/e2e/test_client_retry_after_crash.py) run
the same loop against real servers.
"""

from __future__ import annotations

import random

import grpc
import pytest

from wallet_client.retry import RetryPolicy, call_with_retries

C = grpc.StatusCode


class Failed(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode) -> None:
        self._code = code

    def code(self) -> grpc.StatusCode:
        return self._code


class Script:
    """Outcomes in order (a code fails, anything else is returned), on a fake clock."""

    def __init__(self, *outcomes: object, call_takes: float = 0.0) -> None:
        self.outcomes = list(outcomes)
        self.now = 100.0
        self.call_takes = call_takes
        self.deadlines: list[float] = []
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds

    def attempt(self, deadline: float) -> object:
        self.deadlines.append(deadline)
        self.now += min(self.call_takes, deadline)  # a call ends by its deadline
        outcome = self.outcomes.pop(0)
        if isinstance(outcome, grpc.StatusCode):
            raise Failed(outcome)
        return outcome

    def run(self, *, safe: bool, policy: RetryPolicy, timeout: float = 5.0) -> object:
        return call_with_retries(
            self.attempt,
            safe=safe,
            timeout=timeout,
            policy=policy,
            clock=self.clock,
            sleep=self.sleep,
            rng=random.Random(7),
        )


POLICY = RetryPolicy(max_attempts=5, initial_backoff=0.1, max_backoff=1.0, total_timeout=30)


@pytest.mark.parametrize("code", [C.UNAVAILABLE, C.DEADLINE_EXCEEDED])
def test_a_safe_call_is_repeated_on_transient_codes_until_it_succeeds(code):
    script = Script(code, code, "ok")
    assert script.run(safe=True, policy=POLICY) == "ok"
    assert len(script.deadlines) == 3 and len(script.sleeps) == 2


@pytest.mark.parametrize("code", [C.UNAVAILABLE, C.DEADLINE_EXCEEDED])
def test_an_unsafe_call_is_sent_once(code):
    script = Script(code, "never")
    with pytest.raises(Failed) as failed:
        script.run(safe=False, policy=POLICY)
    assert failed.value.code() == code
    assert len(script.deadlines) == 1 and script.sleeps == []


@pytest.mark.parametrize(
    "code",
    [
        C.INVALID_ARGUMENT,
        C.NOT_FOUND,
        C.FAILED_PRECONDITION,
        C.ALREADY_EXISTS,
        C.OUT_OF_RANGE,
        C.UNAUTHENTICATED,
        C.PERMISSION_DENIED,
        C.INTERNAL,
        C.RESOURCE_EXHAUSTED,
        C.CANCELLED,
    ],
)
def test_answers_are_not_repeated_even_when_safe(code):
    script = Script(code, "never")
    with pytest.raises(Failed):
        script.run(safe=True, policy=POLICY)
    assert len(script.deadlines) == 1


def test_gives_up_after_max_attempts_with_the_last_error():
    script = Script(*[C.UNAVAILABLE] * 4, C.DEADLINE_EXCEEDED, "never")
    with pytest.raises(Failed) as failed:
        script.run(safe=True, policy=POLICY)
    assert failed.value.code() == C.DEADLINE_EXCEEDED
    assert len(script.deadlines) == 5 and len(script.sleeps) == 4


def test_backoff_grows_exponentially_with_full_jitter_under_the_cap():
    policy = RetryPolicy(max_attempts=10, initial_backoff=0.1, max_backoff=1.0, total_timeout=60)
    assert [policy.backoff_ceiling(n) for n in range(1, 7)] == pytest.approx(
        [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
    )
    script = Script(*[C.UNAVAILABLE] * 9, "ok")
    assert script.run(safe=True, policy=policy) == "ok"
    for retry, pause in enumerate(script.sleeps, start=1):
        assert 0 <= pause <= policy.backoff_ceiling(retry)
    # Jitter: the waits are not the ceilings themselves (7 seeds the generator).
    assert len(set(script.sleeps)) == len(script.sleeps)


def test_each_attempt_deadline_is_cut_to_what_is_left_of_the_total():
    policy = RetryPolicy(max_attempts=10, initial_backoff=0.1, max_backoff=0.1, total_timeout=12)
    script = Script(C.DEADLINE_EXCEEDED, C.DEADLINE_EXCEEDED, C.DEADLINE_EXCEEDED, call_takes=5)
    with pytest.raises(Failed):
        script.run(safe=True, policy=policy, timeout=5)
    first, second, third = script.deadlines
    assert first == 5 and second == 5
    assert third == pytest.approx(12 - 10 - sum(script.sleeps))
    # Nothing runs, and no wait ends, past the overall deadline.
    assert script.now <= 100 + 12 + 1e-9


def test_no_wait_outlasts_the_overall_deadline():
    policy = RetryPolicy(max_attempts=100, initial_backoff=1, max_backoff=1, total_timeout=3)
    script = Script(*[C.UNAVAILABLE] * 100, call_takes=0.5)
    with pytest.raises(Failed):
        script.run(safe=True, policy=policy)
    assert script.now <= 100 + 3 + 1e-9
    assert len(script.deadlines) < 100


@pytest.mark.parametrize(
    "bad",
    [
        {"max_attempts": 0},
        {"initial_backoff": -1},
        {"initial_backoff": 2, "max_backoff": 1},
        {"multiplier": 0.5},
        {"total_timeout": 0},
    ],
)
def test_policy_refuses_nonsense(bad):
    with pytest.raises(ValueError):
        RetryPolicy(**bad)
