"""Waiting for an eventually consistent condition, with a deadline and a useful failure.

The platform is asynchronous on purpose (outbox relay, consumers, saga workers), so a
test often has to wait for something to become true. It polls for it here rather than
sleeping a fixed time and hoping: the wait ends as soon as the condition holds, and
when it never does the failure shows the last value seen (or the last error).
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, overload

T = TypeVar("T")


# Two signatures so that the value handed to ``check`` and returned is what the probe
# gives once awaited: an async probe's result, not the coroutine. The async one comes
# first, as a coroutine function also matches the sync signature.
@overload
async def eventually(
    probe: Callable[[], Awaitable[T]],
    check: Callable[[T], object] = ...,
    *,
    what: str = ...,
    within: float = ...,
    interval: float = ...,
) -> T: ...


@overload
async def eventually(
    probe: Callable[[], T],
    check: Callable[[T], object] = ...,
    *,
    what: str = ...,
    within: float = ...,
    interval: float = ...,
) -> T: ...


async def eventually(
    probe: Callable[[], Any],
    check: Callable[[Any], object] = bool,
    *,
    what: str = "the condition",
    within: float = 30.0,
    interval: float = 0.05,
) -> Any:
    """Call ``probe()`` (sync or async) until ``check(value)`` holds; return that value.

    A probe that raises counts as "not yet" (a broker restarted for a moment by another
    run's outage test, a row not written yet); after ``within`` seconds an
    AssertionError names ``what`` and shows the last value and the last error.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    last: Any = None
    last_error: Exception | None = None
    while True:
        try:
            value = probe()
            if inspect.isawaitable(value):
                value = await value
        except Exception as error:
            last_error = error
        else:
            last = value
            if check(value):
                return value
        if loop.time() > deadline:
            raise AssertionError(
                f"timed out after {within}s waiting for {what}: last value {last!r}"
                + (f", last error {last_error!r}" if last_error else "")
            ) from last_error
        await asyncio.sleep(interval)
