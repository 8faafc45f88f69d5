"""When and how a call is sent again: only if that is safe, with backoff, within a deadline.

Safe means the repeat cannot apply anything twice: a read, or a write that carries a
``request_id`` (the server applies a key once and replays the first outcome for every
repeat). A write without a key is never repeated, whatever the error: the first attempt
may have been applied before the connection broke.

Outcomes worth repeating: ``UNAVAILABLE`` (the server, or its database, was not
reachable), ``DEADLINE_EXCEEDED`` (no answer in time; a keyed write may have been
applied, and its repeat returns that outcome) and ``RESOURCE_EXHAUSTED`` when the server
says a retry makes sense (it attached a ``google.rpc.RetryInfo``: a limit that frees up,
not a request too big to ever pass). Every other status is an answer.

Waits between attempts grow exponentially with full jitter (a random pause between 0
and the current ceiling), so clients that failed together do not return together. When
the server sent a ``RetryInfo``, the wait is its ``retry_delay`` plus that jittered
pause: never sooner than the server asked, and still spread out. The policy's
``total_timeout`` bounds the whole logical call: each attempt's deadline is cut to what
is left of it, and no wait outlasts it (a call the server asks to wait past that ends
with its error at once).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import grpc

from wallet_client.errors import server_retry_delay

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


def is_retryable(error: grpc.RpcError, server_delay: float | None = None) -> bool:
    """Worth repeating: a transient code, or a limit the server says will free up."""
    code = error.code() if callable(getattr(error, "code", None)) else None
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        return server_delay is not None
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
            server_delay = server_retry_delay(error)
            if not safe or not is_retryable(error, server_delay) or retry >= policy.max_attempts:
                raise
            pause = (server_delay or 0.0) + jitter.uniform(0, policy.backoff_ceiling(retry))
            if clock() + pause >= deadline:
                raise
            sleep(pause)
