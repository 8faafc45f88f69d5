"""RetryInfo: which errors carry one, how it travels, and how the client waits for it."""

from __future__ import annotations

import random

import grpc
import pytest
from google.rpc import error_details_pb2

import tests.unit.test_client_errors  # noqa: F401  (imports every server error class)
from wallet_client.errors import MAX_SERVER_RETRY_DELAY, error_from_rpc, server_retry_delay
from wallet_client.retry import RetryPolicy, call_with_retries
from wallet_platform.errors import (
    InsufficientFundsError,
    InvalidArgumentError,
    ReplayedError,
    UnavailableError,
    WalletPlatformError,
)
from wallet_platform.server.call_limits import TooManyCallsError
from wallet_platform.server.status import rich_status, status_proto

C = grpc.StatusCode


def _every_error_class() -> list[type[WalletPlatformError]]:
    found, pending = [], [WalletPlatformError]
    while pending:
        cls = pending.pop()
        pending.extend(cls.__subclasses__())
        if cls is not ReplayedError:
            found.append(cls)
    return found


@pytest.mark.parametrize("cls", _every_error_class(), ids=lambda cls: cls.__name__)
def test_every_unavailable_and_limit_error_asks_for_a_retry_delay(cls):
    error = cls.__new__(cls)
    if error.code_name in ("UNAVAILABLE", "RESOURCE_EXHAUSTED"):
        assert cls.retry_after is not None and 0 < cls.retry_after <= 10
    else:
        assert cls.retry_after is None  # a retry would get the same answer


class RichFailed(grpc.RpcError):
    """A failed call as grpc hands it to the client: code, message, status trailer."""

    def __init__(self, error: WalletPlatformError) -> None:
        self._status = rich_status(error)

    def code(self) -> grpc.StatusCode:
        return self._status.code

    def details(self) -> str:
        return self._status.details

    def trailing_metadata(self) -> tuple[tuple[str, bytes], ...]:
        return tuple(self._status.trailing_metadata)


def test_the_delay_travels_as_retry_info_to_the_client():
    status = status_proto(UnavailableError("database unavailable"))
    infos = [d for d in status.details if d.Is(error_details_pb2.RetryInfo.DESCRIPTOR)]
    assert len(infos) == 1
    failed = RichFailed(UnavailableError("database unavailable"))
    assert server_retry_delay(failed) == 1.0
    assert error_from_rpc(failed).retry_delay == 1.0
    assert server_retry_delay(RichFailed(TooManyCallsError("busy"))) == 0.5
    assert server_retry_delay(RichFailed(InvalidArgumentError("bad", field="x"))) is None
    assert error_from_rpc(RichFailed(InsufficientFundsError("no"))).retry_delay is None


def test_an_absurd_delay_is_clamped():
    class Forever(UnavailableError):
        retry_after = 86_400.0

    assert server_retry_delay(RichFailed(Forever("x"))) == MAX_SERVER_RETRY_DELAY


class Clock:
    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def _run(outcomes: list[object], policy: RetryPolicy, *, safe: bool = True) -> Clock:
    clock = Clock()

    def attempt(_deadline: float) -> object:
        outcome = outcomes.pop(0)
        if isinstance(outcome, WalletPlatformError):
            raise RichFailed(outcome)
        return outcome

    call_with_retries(
        attempt,
        safe=safe,
        timeout=5,
        policy=policy,
        clock=lambda: clock.now,
        sleep=clock.sleep,
        rng=random.Random(3),
    )
    return clock


POLICY = RetryPolicy(max_attempts=5, initial_backoff=0.1, max_backoff=0.4, total_timeout=30)


def test_the_client_waits_at_least_the_servers_delay_plus_its_own_jitter():
    clock = _run([UnavailableError("down")] * 3 + ["ok"], POLICY)
    assert len(clock.sleeps) == 3
    for retry, pause in enumerate(clock.sleeps, start=1):
        assert 1.0 <= pause <= 1.0 + POLICY.backoff_ceiling(retry)
    assert len(set(clock.sleeps)) == 3  # spread, not lockstep


def test_a_limit_with_retry_info_is_retried_and_one_without_is_an_answer():
    clock = _run([TooManyCallsError("busy"), "ok"], POLICY)
    assert len(clock.sleeps) == 1 and clock.sleeps[0] >= 0.5

    class Final(TooManyCallsError):
        # A limit sent without RetryInfo, which no server error does (see above): the
        # limit classes declare a float, so only a test can take it away.
        retry_after = None  # type: ignore[assignment]

    with pytest.raises(RichFailed):
        _run([Final("too big"), "never"], POLICY)


def test_an_unsafe_call_is_not_retried_even_with_retry_info():
    with pytest.raises(RichFailed):
        _run([UnavailableError("down"), "never"], POLICY, safe=False)


def test_a_delay_past_the_total_timeout_ends_the_call_at_once():
    short = RetryPolicy(max_attempts=5, initial_backoff=0.1, max_backoff=0.1, total_timeout=0.5)
    outcomes: list[object] = [UnavailableError("down"), "never"]
    with pytest.raises(RichFailed):
        _run(outcomes, short)
    assert outcomes == ["never"]  # no second attempt, no wait
