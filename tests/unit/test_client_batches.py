"""wallet_client.batches with a scripted server: chunks, keys, retries, outcomes."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2

import wallet_client as wc
from wallet.v1 import wallet_pb2 as pb
from wallet_client.batches import BatchSender

FAST = wc.RetryPolicy(max_attempts=3, initial_backoff=0.0, max_backoff=0.0)


class Failed(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode) -> None:
        self._code = code

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return f"scripted {self._code.name}"

    def trailing_metadata(self) -> tuple[()]:
        return ()


def refused(code: int, reason: str, message: str = "no") -> status_pb2.Status:
    info = any_pb2.Any()
    info.Pack(error_details_pb2.ErrorInfo(reason=reason, domain="wallet.v1"))
    return status_pb2.Status(code=code, message=message, details=[info])


class Server:
    """Answers each batch with ``answer(item)`` per item; ``script`` fails calls first."""

    def __init__(self, answer: Any, script: list[grpc.StatusCode] | None = None) -> None:
        self.answer = answer
        self.script = list(script or [])
        self.calls: list[list[str]] = []
        self.applied: set[str] = set()

    def send(self, request: pb.BatchDepositRequest, deadline: float) -> Any:
        self.calls.append([item.request_id for item in request.requests])
        if self.script:
            raise Failed(self.script.pop(0))
        results = []
        for item in request.requests:
            outcome = self.answer(self, item)
            if isinstance(outcome, status_pb2.Status):
                results.append(pb.BatchDepositResult(error=outcome))
            else:
                results.append(pb.BatchDepositResult(response=outcome))
        return pb.BatchDepositResponse(results=results)


def apply(server: Server, item: pb.DepositRequest) -> Any:
    replayed = item.request_id in server.applied
    server.applied.add(item.request_id)
    return pb.DepositResponse(replayed=replayed)


def sender(server: Server, chunk_size: int = wc.MAX_BATCH_ITEMS) -> BatchSender:
    return BatchSender(
        send=server.send,
        request_type=pb.BatchDepositRequest,
        item_type=pb.DepositRequest,
        timeout=1.0,
        policy=FAST,
        chunk_size=chunk_size,
        sleep=lambda _: None,
    )


def keys() -> Any:
    counter = iter(range(10**6))
    return lambda: f"k{next(counter)}"


def test_items_are_chunked_keyed_once_and_answered_in_order():
    server = Server(apply)
    items = [wc.MoveItem("w", 1) for _ in range(2500)] + [wc.MoveItem("w", 1, "mine")]
    outcomes = sender(server).run(items, keys())
    assert [len(call) for call in server.calls] == [1000, 1000, 501]
    assert [o.request_id for o in outcomes] == [f"k{i}" for i in range(2500)] + ["mine"]
    assert [o.index for o in outcomes] == list(range(2501))
    assert all(o.ok and not o.replayed for o in outcomes)


def test_an_unavailable_chunk_is_sent_again_with_the_same_keys():
    server = Server(apply, script=[grpc.StatusCode.UNAVAILABLE])
    outcomes = sender(server, chunk_size=3).run([wc.MoveItem("w", 1)] * 4, keys())
    assert server.calls == [["k0", "k1", "k2"], ["k0", "k1", "k2"], ["k3"]]
    assert all(o.ok for o in outcomes)


def test_items_answered_unavailable_are_sent_again_alone():
    flaky = {"k1": 1}

    def answer(server: Server, item: pb.DepositRequest) -> Any:
        if flaky.get(item.request_id):
            flaky[item.request_id] -= 1
            return refused(code_pb2.UNAVAILABLE, "UNAVAILABLE")
        return apply(server, item)

    server = Server(answer)
    outcomes = sender(server).run([wc.MoveItem("w", 1)] * 3, keys())
    assert server.calls == [["k0", "k1", "k2"], ["k1"]]
    assert all(o.ok for o in outcomes)


def test_refused_items_carry_typed_errors_and_do_not_stop_the_run():
    def answer(server: Server, item: pb.DepositRequest) -> Any:
        if item.wallet_id == "broke":
            return refused(code_pb2.FAILED_PRECONDITION, "INSUFFICIENT_FUNDS", "has 0")
        return apply(server, item)

    items = [wc.MoveItem("w", 1), wc.MoveItem("broke", 1), wc.MoveItem("w", 1)]
    outcomes = sender(Server(answer), chunk_size=2).run(items, keys())
    assert [o.ok for o in outcomes] == [True, False, True]
    error = outcomes[1].error
    assert isinstance(error, wc.InsufficientFundsError)
    assert error.code == grpc.StatusCode.FAILED_PRECONDITION and error.request_id == "k1"
    assert error.message == "has 0"


def test_a_chunk_refused_whole_stops_the_run_and_says_what_was_not_sent():
    server = Server(apply)
    calls = 0

    def send(request: Any, deadline: float) -> Any:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise Failed(grpc.StatusCode.PERMISSION_DENIED)
        return server.send(request, deadline)

    run = sender(server, chunk_size=2)
    run.send = send
    outcomes = run.run([wc.MoveItem("w", 1)] * 6, keys())
    assert [o.ok for o in outcomes] == [True, True, False, False, False, False]
    assert [o.sent for o in outcomes] == [True, True, True, True, False, False]
    assert all(isinstance(o.error, wc.PermissionDeniedError) for o in outcomes[2:])
    assert calls == 2


def test_retries_are_bounded():
    server = Server(apply, script=[grpc.StatusCode.UNAVAILABLE] * 10)
    outcomes = sender(server).run([wc.MoveItem("w", 1)], keys())
    assert len(server.calls) == FAST.max_attempts
    assert isinstance(outcomes[0].error, wc.UnavailableError) and outcomes[0].sent


@pytest.mark.parametrize("size", [0, wc.MAX_BATCH_ITEMS + 1])
def test_chunk_size_is_bounded(size):
    with pytest.raises(ValueError):
        sender(Server(apply), chunk_size=size).run([wc.MoveItem("w", 1)], keys())
