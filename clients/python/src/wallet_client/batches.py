"""Many deposits or withdrawals in few calls: chunks, keys, retries and per-item outcomes.

``WalletClient.batch_deposit`` / ``batch_withdraw`` take a list of :class:`MoveItem`
and send it as ``BatchDeposit`` / ``BatchWithdraw`` calls of at most
:data:`MAX_BATCH_ITEMS` items (the server's cap). Every item gets its idempotency key
before the first chunk is sent (its own ``request_id``, or a new one), and every
repeat sends the same keys, so nothing is applied twice:

- a chunk that fails as a whole with UNAVAILABLE or DEADLINE_EXCEEDED is sent again
  under the client's :class:`~wallet_client.retry.RetryPolicy` (items already applied
  answer ``replayed``);
- items answered UNAVAILABLE on their own (the database went away mid-chunk) are sent
  again, alone, under the same policy;
- a chunk refused as a whole for another reason (no role, a tenant's foreign wallet,
  too big) or still failing after the retries stops the run: its items and every later
  one get that error as their outcome, unsent ones with ``sent = False``. After a
  deadline their fate is unknown: send the same items (same request_ids) again.

The result is one :class:`ItemOutcome` per item, in input order: the item's response
(``replayed`` when an earlier call applied it) or its typed
:class:`~wallet_client.errors.WalletError`.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc

from wallet_client.errors import WalletError, error_from_rpc, error_from_status
from wallet_client.retry import RetryPolicy, call_with_retries

MAX_BATCH_ITEMS = 1000  # the server's cap per batch call

_UNAVAILABLE = grpc.StatusCode.UNAVAILABLE


@dataclass(frozen=True)
class MoveItem:
    """One deposit or withdrawal: ``amount`` minor units; ``request_id`` empty: a new key."""

    wallet_id: str
    amount: int
    request_id: str = ""


@dataclass
class ItemOutcome:
    """What became of one item: ``response`` (applied or replayed) or ``error``."""

    index: int
    request_id: str
    response: Any = None
    error: WalletError | None = None
    sent: bool = True

    @property
    def ok(self) -> bool:
        return self.error is None and self.response is not None

    @property
    def replayed(self) -> bool:
        return self.ok and bool(self.response.replayed)


Send = Callable[[Any, float], Any]  # (batch request, attempt deadline) -> batch response


@dataclass
class BatchSender:
    """Sends keyed items in chunks through one batch RPC (see the module docstring)."""

    send: Send
    request_type: Any
    item_type: Any
    timeout: float
    policy: RetryPolicy
    chunk_size: int = MAX_BATCH_ITEMS
    sleep: Callable[[float], None] = time.sleep
    #: Called after each chunk with the outcomes so far (the later ones still empty)
    #: and how many items are done: for progress reports.
    on_chunk: Callable[[list[ItemOutcome], int], None] | None = None

    def run(self, items: Sequence[MoveItem], new_key: Callable[[], str]) -> list[ItemOutcome]:
        if not 1 <= self.chunk_size <= MAX_BATCH_ITEMS:
            raise ValueError(f"chunk_size must be between 1 and {MAX_BATCH_ITEMS}")
        keyed = [
            self.item_type(
                wallet_id=item.wallet_id,
                amount=item.amount,
                request_id=item.request_id or new_key(),
            )
            for item in items
        ]
        outcomes = [ItemOutcome(i, request.request_id) for i, request in enumerate(keyed)]
        for start in range(0, len(keyed), self.chunk_size):
            indices = list(range(start, min(start + self.chunk_size, len(keyed))))
            failure = self._chunk(keyed, indices, outcomes)
            if self.on_chunk is not None:
                self.on_chunk(outcomes, indices[-1] + 1)
            if failure is not None:
                for outcome in outcomes[start:]:
                    outcome.error = failure
                    outcome.sent = outcome.index < indices[-1] + 1
                break
        return outcomes

    def _chunk(
        self, keyed: list[Any], indices: list[int], outcomes: list[ItemOutcome]
    ) -> WalletError | None:
        """Send ``indices`` until each has an answer; the chunk's error if it has none."""
        pending = indices
        jitter = random.Random()
        for attempt in range(1, self.policy.max_attempts + 1):
            request = self.request_type(requests=[keyed[i] for i in pending])
            try:
                response = call_with_retries(
                    lambda deadline: self.send(request, deadline),  # noqa: B023 (called now)
                    safe=True,
                    timeout=self.timeout,
                    policy=self.policy,
                )
            except grpc.RpcError as error:
                return error_from_rpc(error, attempts=attempt)
            retry: list[int] = []
            for index, result in zip(pending, response.results, strict=True):
                outcome = outcomes[index]
                if result.WhichOneof("result") == "response":
                    outcome.response, outcome.error = result.response, None
                    continue
                outcome.error = error_from_status(result.error, request_id=outcome.request_id)
                if outcome.error.code == _UNAVAILABLE:
                    retry.append(index)
            if not retry or attempt == self.policy.max_attempts:
                return None
            pending = retry
            self.sleep(jitter.uniform(0, self.policy.backoff_ceiling(attempt)))
        return None
