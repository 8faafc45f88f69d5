"""Many transfers through ``TransferService.BatchCreateTransfers``: chunks, safe retries,
one typed outcome per transfer.

Every transfer gets its idempotency key before anything is sent (the caller's, or a
new one), so every retry, of a whole call or of single items, carries the same keys
and the server replays what it already did instead of moving money twice. The
transfers are sent in chunks of ``chunk_size`` (the server takes at most 1,000 per
call). A call that fails with a retryable status (UNAVAILABLE, DEADLINE_EXCEEDED) is
sent again; items answered with a retryable status are sent again in a later call;
both within the :class:`~wallet_client.retry.RetryPolicy`. Nothing raises for a
server's answer: each transfer ends with a :class:`TransferOutcome` holding either
the CreateTransfer response (``replayed`` set on a replay) or the typed
:class:`~wallet_client.errors.WalletError` the single call would have raised (a whole
call that fails for good gives its error to every transfer of that call).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import grpc
from google.rpc import status_pb2

from wallet.v1 import transfer_pb2
from wallet_client.errors import WalletError, error_from_rpc, error_from_status
from wallet_client.retry import RETRYABLE_CODES, RetryPolicy, call_with_retries

# Transfers per call unless told otherwise (the server's limit is 1,000).
DEFAULT_CHUNK = 500
SERVER_MAX = 1000

# Sends one BatchCreateTransfers request with a deadline (seconds); raises grpc.RpcError.
Send = Callable[
    [transfer_pb2.BatchCreateTransfersRequest, float], transfer_pb2.BatchCreateTransfersResponse
]


@dataclass(frozen=True)
class TransferItem:
    """One transfer to start; an empty ``request_id`` gets a new key before sending."""

    from_wallet_id: str
    to_wallet_id: str
    amount: int
    request_id: str = ""


@dataclass(frozen=True)
class TransferOutcome:
    """What became of one transfer: ``response`` (started or replayed) or ``error``."""

    request_id: str
    response: transfer_pb2.CreateTransferResponse | None = None
    error: WalletError | None = None

    @property
    def ok(self) -> bool:
        return self.response is not None

    @property
    def transfer(self) -> transfer_pb2.Transfer | None:
        return self.response.transfer if self.response is not None else None


def keyed(items: Sequence[TransferItem], new_key: Callable[[], str]) -> list[TransferItem]:
    """``items`` with every empty ``request_id`` filled (kept for every retry)."""
    return [
        item
        if item.request_id
        else TransferItem(item.from_wallet_id, item.to_wallet_id, item.amount, new_key())
        for item in items
    ]


def _request(items: Sequence[TransferItem]) -> transfer_pb2.BatchCreateTransfersRequest:
    return transfer_pb2.BatchCreateTransfersRequest(
        requests=[
            transfer_pb2.CreateTransferRequest(
                request_id=i.request_id,
                from_wallet_id=i.from_wallet_id,
                to_wallet_id=i.to_wallet_id,
                amount=i.amount,
            )
            for i in items
        ]
    )


def _retryable(status: status_pb2.Status) -> bool:
    return any(status.code == code.value[0] for code in RETRYABLE_CODES)


def batch_create_transfers(
    send: Send,
    items: Sequence[TransferItem],
    *,
    new_key: Callable[[], str],
    policy: RetryPolicy,
    timeout: float,
    chunk_size: int = DEFAULT_CHUNK,
    on_chunk: Callable[[int, int], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> list[TransferOutcome]:
    """One outcome per item, in the order of ``items`` (see the module docstring).

    ``timeout`` is each call's deadline; ``on_chunk(done, total)`` reports progress
    after each chunk.
    """
    if not 1 <= chunk_size <= SERVER_MAX:
        raise ValueError(f"chunk_size must be 1..{SERVER_MAX}")
    work = keyed(items, new_key)
    outcomes: list[TransferOutcome | None] = [None] * len(work)
    jitter = random.Random()
    for start in range(0, len(work), chunk_size):
        pending = list(range(start, min(start + chunk_size, len(work))))
        for round_number in range(1, policy.max_attempts + 1):
            retry_again = _send_chunk(send, work, pending, outcomes, policy, timeout)
            last_round = round_number == policy.max_attempts
            if not retry_again or last_round:
                break
            pending = retry_again
            sleep(jitter.uniform(0, policy.backoff_ceiling(round_number)))
        if on_chunk is not None:
            on_chunk(min(start + chunk_size, len(work)), len(work))
    return [outcome for outcome in outcomes if outcome is not None]


def _send_chunk(
    send: Send,
    work: list[TransferItem],
    pending: list[int],
    outcomes: list[TransferOutcome | None],
    policy: RetryPolicy,
    timeout: float,
) -> list[int]:
    """Send ``pending`` once (the call itself retried); the indexes worth sending again."""
    chunk = [work[i] for i in pending]
    request = _request(chunk)
    attempts = 0

    def attempt(deadline: float) -> transfer_pb2.BatchCreateTransfersResponse:
        nonlocal attempts
        attempts += 1
        return send(request, deadline)

    try:
        response = call_with_retries(attempt, safe=True, timeout=timeout, policy=policy)
    except grpc.RpcError as failed:
        for index in pending:
            error = error_from_rpc(failed, request_id=work[index].request_id, attempts=attempts)
            outcomes[index] = TransferOutcome(work[index].request_id, error=error)
        return []
    if len(response.results) != len(pending):
        raise RuntimeError(
            f"BatchCreateTransfers answered {len(response.results)} results "
            f"for {len(pending)} transfers"
        )
    again = []
    for index, result in zip(pending, response.results, strict=True):
        request_id = work[index].request_id
        if result.WhichOneof("result") == "response":
            outcomes[index] = TransferOutcome(request_id, response=result.response)
            continue
        outcomes[index] = TransferOutcome(
            request_id, error=error_from_status(result.error, request_id=request_id)
        )
        if _retryable(result.error):
            again.append(index)
    return again
