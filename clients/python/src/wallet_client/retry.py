"""When and how a call is sent again: only if that is safe, with backoff, within a deadline.

Safe means the repeat cannot apply anything twice: a read, or a write that carries a
``request_id`` (the server applies a key once and replays the first outcome for every
repeat). A write without a key is never repeated, whatever the error: the first attempt
may have been applied before the connection broke.

Only two outcomes are worth repeating: ``UNAVAILABLE`` (the server, or its database,
was not reachable) and ``DEADLINE_EXCEEDED`` (no answer in time; a keyed write may have
been applied, and its repeat returns that outcome). Every other status is an answer.

Waits between attempts grow exponentially with full jitter (a random pause between 0
and the current ceiling), so clients that failed together do not return together. The
policy's ``total_timeout`` bounds the whole logical call: each attempt's deadline is cut
to what is left of it, and no wait outlasts it.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import grpc

T = TypeVar("T")

RETRYABLE_CODES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how long to retry one logical call (seconds)."""

    max_attempts: int = 5
    initial_backoff: float = 0.1
    max_backoff: float = 3.0
    multiplier: float = 2.0
    total_timeout: float = 30.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if self.initial_backoff < 0 or self.max_backoff < self.initial_backoff:
            raise ValueError("need 0 <= initial_backoff <= max_backoff")
        if self.multiplier < 1:
            raise ValueError("multiplier must be at least 1")
        if self.total_timeout <= 0:
            raise ValueError("total_timeout must be positive")

    def backoff_ceiling(self, retry: int) -> float:
        """The longest wait before retry number ``retry`` (1 = the first repeat)."""
        return min(self.max_backoff, self.initial_backoff * self.multiplier ** (retry - 1))


NO_RETRIES = RetryPolicy(max_attempts=1)


def is_retryable(error: grpc.RpcError) -> bool:
    code = error.code() if callable(getattr(error, "code", None)) else None
    return code in RETRYABLE_CODES


def call_with_retries(
    attempt: Callable[[float], T],
    *,
    safe: bool,
    timeout: float,
    policy: RetryPolicy,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    rng: random.Random | None = None,
) -> T:
    """``attempt(deadline_seconds)`` until it returns, or raise its last ``grpc.RpcError``.

    ``safe`` says whether repeating the call is safe (see the module docstring);
    ``timeout`` is the deadline of one attempt, cut to what is left of the policy's
    ``total_timeout``.
    """
    jitter = rng or random.Random()
    deadline = clock() + policy.total_timeout
    retry = 0
    while True:
        remaining = deadline - clock()
        try:
            return attempt(min(timeout, remaining))
        except grpc.RpcError as error:
            retry += 1
            if not safe or not is_retryable(error) or retry >= policy.max_attempts:
                raise
            pause = jitter.uniform(0, policy.backoff_ceiling(retry))
            if clock() + pause >= deadline:
                raise
            sleep(pause)
