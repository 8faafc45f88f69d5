"""``wallet_client.transfer_batches``: chunks, retries with the same keys, typed per-item outcomes.

The server is a scripted ``send``; what it is asked and what it answers is recorded.
"""

from __future__ import annotations

import itertools

import grpc
import pytest
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2

from wallet.v1 import transfer_pb2
from wallet_client import (
    RetryPolicy,
    UnavailableError,
    WalletNotFoundError,
)
from wallet_client.transfer_batches import TransferItem, batch_create_transfers


class Failed(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode) -> None:
        self._code = code

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return "down"

    def trailing_metadata(self) -> tuple[()]:
        return ()


def status(code: int, reason: str, message: str = "no") -> status_pb2.Status:
    packed = any_pb2.Any()
    packed.Pack(error_details_pb2.ErrorInfo(reason=reason, domain="wallet.v1"))
    return status_pb2.Status(code=code, message=message, details=[packed])


class Server:
    """Answers each item by its amount: 1 ok, 2 unknown wallet, 3 UNAVAILABLE once."""

    def __init__(self, fail_calls: int = 0) -> None:
        self.calls: list[list[str]] = []
        self.fail_calls = fail_calls
        self.seen: set[str] = set()

    def send(
        self, request: transfer_pb2.BatchCreateTransfersRequest, deadline: float
    ) -> transfer_pb2.BatchCreateTransfersResponse:
        self.calls.append([r.request_id for r in request.requests])
        if self.fail_calls:
            self.fail_calls -= 1
            raise Failed(grpc.StatusCode.UNAVAILABLE)
        results = []
        for item in request.requests:
            if item.amount == 2:
                error = status(code_pb2.NOT_FOUND, "WALLET_NOT_FOUND")
                results.append(transfer_pb2.BatchCreateTransfersResult(error=error))
            elif item.amount == 3 and item.request_id not in self.seen:
                self.seen.add(item.request_id)
                error = status(code_pb2.UNAVAILABLE, "UNAVAILABLE")
                results.append(transfer_pb2.BatchCreateTransfersResult(error=error))
            else:
                replayed = item.request_id in self.seen
                self.seen.add(item.request_id)
                response = transfer_pb2.CreateTransferResponse(
                    transfer=transfer_pb2.Transfer(request_id=item.request_id), replayed=replayed
                )
                results.append(transfer_pb2.BatchCreateTransfersResult(response=response))
        return transfer_pb2.BatchCreateTransfersResponse(results=results)


def run(server: Server, items: list[TransferItem], chunk: int, attempts: int = 3) -> list:
    keys = (f"k{n}" for n in itertools.count())
    progress: list[tuple[int, int]] = []
    outcomes = batch_create_transfers(
        server.send,
        items,
        new_key=lambda: next(keys),
        policy=RetryPolicy(max_attempts=attempts, initial_backoff=0, max_backoff=0),
        timeout=5,
        chunk_size=chunk,
        on_chunk=lambda done, total: progress.append((done, total)),
        sleep=lambda _s: None,
    )
    assert progress[-1] == (len(items), len(items))
    return outcomes


def test_chunks_keep_order_and_every_item_its_key() -> None:
    server = Server()
    items = [TransferItem("a", "b", 1, request_id="mine")] + [
        TransferItem("a", "b", 1) for _ in range(6)
    ]
    outcomes = run(server, items, chunk=3)
    assert server.calls == [["mine", "k0", "k1"], ["k2", "k3", "k4"], ["k5"]]
    assert [o.request_id for o in outcomes] == ["mine", "k0", "k1", "k2", "k3", "k4", "k5"]
    assert all(o.ok and o.transfer.request_id == o.request_id for o in outcomes)


def test_a_failed_call_is_sent_again_with_the_same_keys() -> None:
    server = Server(fail_calls=2)
    outcomes = run(server, [TransferItem("a", "b", 1) for _ in range(2)], chunk=10)
    assert server.calls == [["k0", "k1"]] * 3
    assert all(o.ok for o in outcomes)


def test_a_call_that_keeps_failing_gives_its_error_to_each_item() -> None:
    server = Server(fail_calls=10)
    outcomes = run(server, [TransferItem("a", "b", 1) for _ in range(2)], chunk=10)
    assert [type(o.error) for o in outcomes] == [UnavailableError, UnavailableError]
    assert [o.error.request_id for o in outcomes] == ["k0", "k1"]


def test_items_are_typed_and_only_retryable_ones_are_resent() -> None:
    server = Server()
    items = [TransferItem("a", "b", n) for n in (1, 2, 3, 1)]
    outcomes = run(server, items, chunk=10)
    assert server.calls == [["k0", "k1", "k2", "k3"], ["k2"]]
    assert [o.ok for o in outcomes] == [True, False, True, True]
    error = outcomes[1].error
    assert isinstance(error, WalletNotFoundError)
    assert (error.code, error.reason, error.request_id) == (
        grpc.StatusCode.NOT_FOUND,
        "WALLET_NOT_FOUND",
        "k1",
    )
    assert outcomes[2].response.replayed  # the retry met the first attempt's transfer


def test_an_item_still_refused_after_the_last_attempt_keeps_its_error() -> None:
    server = Server()
    outcomes = run(server, [TransferItem("a", "b", 3)], chunk=10, attempts=1)
    assert isinstance(outcomes[0].error, UnavailableError)
    assert outcomes[0].response is None


def test_a_chunk_size_beyond_the_server_limit_is_refused() -> None:
    with pytest.raises(ValueError, match="chunk_size"):
        run(Server(), [TransferItem("a", "b", 1)], chunk=1001)
