"""How the saga runner retries: its policy, what is worth retrying, and the loop.

Retries (tenacity): a transient error (see ``step_errors.is_final``) is retried with
exponential backoff and jitter, each call bounded by a gRPC deadline, and with no
overall limit: once a call may have moved money its outcome must be learned, and once
a saga is DEBITED it must end COMPLETED or COMPENSATED.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from tenacity import AsyncRetrying

from saga_orchestrator.domain import LeaseLostError, StepName
from saga_orchestrator.gateway import StepFailedError
from saga_orchestrator.step_errors import is_final
from wallet_platform.backoff import Backoff

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    """How hard the runner tries. All durations in seconds."""

    step_deadline: float = 5.0  # gRPC deadline of one call
    initial_backoff: float = 0.05
    max_backoff: float = 2.0
    jitter: float = 0.2
    lease: float = 15.0  # renewed at every call; must outlast deadline + backoff
    # Step calls in flight per replica. A bulkhead: after an outage hundreds of sagas
    # resume at once, and flooding WalletService past its capacity would only make
    # every call time out and be retried (congestion collapse).
    max_concurrent_calls: int = 64

    def __post_init__(self) -> None:
        if self.lease <= self.step_deadline + self.max_backoff:
            log.warning(
                "saga lease %.1fs is not longer than a call plus a backoff (%.1fs): "
                "replicas may duplicate work (still safe, just wasteful)",
                self.lease,
                self.step_deadline + self.max_backoff,
            )

    def wait(self) -> Any:
        # The platform's one policy: exponential growth capped at max_backoff, with
        # full jitter so sagas that failed together (one outage) do not retry in lockstep.
        return Backoff(initial=self.initial_backoff, cap=self.max_backoff).tenacity_wait


def is_transient_for(step: StepName) -> Callable[[BaseException], bool]:
    """Retry predicate of one step: everything except a final rejection and a lost lease."""

    def predicate(error: BaseException) -> bool:
        if isinstance(error, LeaseLostError):
            return False
        if isinstance(error, StepFailedError):
            return not is_final(error.error, step)
        return isinstance(error, Exception)

    return predicate


class StoppingError(RuntimeError):
    """The runner is shutting down; the saga stays leased until ``stop`` releases it."""


def describe(error: BaseException | None) -> str:
    if error is None:
        return "unknown error"
    if isinstance(error, StepFailedError):
        return error.error.describe()
    return f"{type(error).__name__}: {error}"


async def first_then_retrying(
    body: Callable[[], Awaitable[T]],
    retryable: Callable[[BaseException], bool],
    retrying: Callable[[], AsyncRetrying],
) -> T:
    """``body()`` under ``retrying()``'s policy, with the first attempt outside tenacity.

    Why: almost every call succeeds at once, and tenacity's per-loop set-up and
    per-attempt state machine were ~5 % of the orchestrator's CPU (three loops per
    transfer; docs/benchmarks.md). Only when the first attempt fails with an error
    ``retryable`` accepts does tenacity take over, and its first attempt re-raises that
    very error instead of calling ``body`` again: attempt numbers, the ``before_sleep``
    record of each failure, the waits and ``reraise`` are exactly what the plain
    tenacity loop gives. ``retryable`` must be the loop's own retry predicate. An error
    it refuses (and any BaseException) propagates at once, as tenacity with
    ``reraise=True`` would let it.
    """
    try:
        return await body()
    except Exception as error:
        if not retryable(error):
            raise
        first: BaseException | None = error
    async for attempt in retrying():
        with attempt:
            if first is not None:
                failed, first = first, None
                raise failed
            return await body()
    raise AssertionError("unreachable: the retry loop returns or raises")  # pragma: no cover
