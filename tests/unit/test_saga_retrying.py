"""``first_then_retrying`` behaves exactly like the plain tenacity loop it shortcuts.

The runner makes the first attempt of a step (and of a saga round) outside tenacity;
only a retryable failure hands over to tenacity, whose first attempt re-raises that
failure. These tests run the same scripted outcomes through both and compare what the
caller sees: the result or error, how often the body ran, and every ``before_sleep``
(attempt number, error, upcoming sleep).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_never, wait_fixed

from saga_orchestrator.engine.retrying import first_then_retrying


class Transient(Exception):
    pass


class Final(Exception):
    pass


def retryable(error: BaseException) -> bool:
    return isinstance(error, Transient)


def scripted(outcomes: list[Any]) -> tuple[Callable[[], Awaitable[Any]], list[int]]:
    """A body that returns or raises the next scripted outcome; counts its calls."""
    calls: list[int] = []

    async def body() -> Any:
        calls.append(len(calls) + 1)
        outcome = outcomes[len(calls) - 1]
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    return body, calls


async def run(
    outcomes: list[Any], *, shortcut: bool
) -> tuple[Any, list[int], list[tuple[int, str, float]]]:
    body, calls = scripted(outcomes)
    sleeps: list[tuple[int, str, float]] = []

    async def before_sleep(state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome else None
        sleeps.append((state.attempt_number, repr(error), state.upcoming_sleep))

    def retrying() -> AsyncRetrying:
        return AsyncRetrying(
            retry=retry_if_exception(retryable),
            wait=wait_fixed(0.001),
            stop=stop_never,
            before_sleep=before_sleep,
            reraise=True,
        )

    result: Any
    try:
        if shortcut:
            result = await first_then_retrying(body, retryable, retrying)
        else:
            result = None
            async for attempt in retrying():
                with attempt:
                    result = await body()
    except Exception as error:
        result = repr(error)
    return result, calls, sleeps


SCRIPTS: dict[str, list[object]] = {
    "success at once": ["ok"],
    "final error at once": [Final("no")],
    "one transient, then success": [Transient("t1"), "ok"],
    "two transients, then success": [Transient("t1"), Transient("t2"), "ok"],
    "transient, then final": [Transient("t1"), Final("no")],
}


@pytest.mark.parametrize("name", sorted(SCRIPTS))
async def test_same_outcome_calls_and_failure_records_as_plain_tenacity(name: str) -> None:
    plain = await run(SCRIPTS[name], shortcut=False)
    shortcut = await run(SCRIPTS[name], shortcut=True)
    assert shortcut == plain


async def test_success_at_once_never_builds_a_retry_loop() -> None:
    body, calls = scripted(["ok"])

    def no_loop() -> AsyncRetrying:
        raise AssertionError("the retry loop was built for a first-attempt success")

    assert await first_then_retrying(body, retryable, no_loop) == "ok"
    assert calls == [1]


async def test_a_base_exception_propagates_without_retry() -> None:
    body, calls = scripted([KeyboardInterrupt()])

    def no_loop() -> AsyncRetrying:
        raise AssertionError("retried a BaseException")

    with pytest.raises(KeyboardInterrupt):
        await first_then_retrying(body, lambda _e: True, no_loop)
    assert calls == [1]
