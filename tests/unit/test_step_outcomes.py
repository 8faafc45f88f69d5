"""A batch item's result means exactly what its single call would have meant.

Every platform error is turned into the ``google.rpc.Status`` the server sends for it
(``builder.error_status``: a single call's trailers and a batch item's ``error``
alike); the batch item's classification must equal the single call's, code and
ErrorInfo reason, and so must the final/transient decision.
"""

from __future__ import annotations

import grpc
import pytest
from google.rpc import code_pb2, status_pb2
from grpc_status import rpc_status

from saga_orchestrator.domain import StepName
from saga_orchestrator.gateway import (
    StepCall,
    step_error_from_rpc,
    step_error_from_status,
    step_operation,
    step_outcome,
)
from saga_orchestrator.step_errors import StepError, is_final
from wallet.v1 import wallet_pb2
from wallet_platform import errors
from wallet_platform.server.builder import error_status


def every_platform_error() -> list[errors.WalletPlatformError]:
    found: list[type[errors.WalletPlatformError]] = []
    pending = [errors.WalletPlatformError]
    while pending:
        kind = pending.pop()
        found.append(kind)
        pending.extend(kind.__subclasses__())
    made: list[errors.WalletPlatformError] = []
    for kind in found:
        if kind is errors.ReplayedError:
            made.append(kind("FAILED_PRECONDITION", "INSUFFICIENT_FUNDS", "replayed refusal"))
        elif "__init__" in vars(kind):  # takes the id it names (wallet, transfer)
            made.append(kind("t-1"))
        else:
            made.append(kind(f"{kind.__name__} happened", field="amount"))
    return made


def as_call_error(status: status_pb2.Status) -> grpc.aio.AioRpcError:
    """The AioRpcError a single call failing with ``status`` raises in the client."""
    rich = rpc_status.to_status(status)
    return grpc.aio.AioRpcError(
        code=rich.code,
        initial_metadata=grpc.aio.Metadata(),
        trailing_metadata=grpc.aio.Metadata(*rich.trailing_metadata),
        details=rich.details,
    )


STEP = StepCall(StepName.CREDIT, "w-2", 7, "t-1", "t-1:credit", "USD")


@pytest.mark.parametrize("error", every_platform_error(), ids=lambda e: type(e).__name__)
def test_an_items_error_is_classified_as_the_single_calls(error: Exception) -> None:
    status = error_status(error, "/wallet.v1.WalletService/CreditForTransfer")
    from_item = step_outcome(STEP, wallet_pb2.StepOperationResult(error=status))
    from_call = step_error_from_rpc(as_call_error(status))
    assert from_item == from_call
    assert isinstance(from_item, StepError) and not from_item.whole_batch
    for step in StepName:
        assert is_final(from_item, step) == is_final(from_call, step)


def test_final_and_transient_items_are_told_apart() -> None:
    poor = step_error_from_status(error_status(errors.InsufficientFundsError("no"), "m"))
    assert (poor.code, poor.reason) == ("FAILED_PRECONDITION", "INSUFFICIENT_FUNDS")
    assert is_final(poor, StepName.DEBIT) and not is_final(poor, StepName.REFUND)
    down = step_error_from_status(error_status(errors.UnavailableError("db down"), "m"))
    assert down.code == "UNAVAILABLE" and not is_final(down, StepName.DEBIT)
    crash = step_error_from_status(error_status(RuntimeError("bug"), "m"))
    assert crash.code == "INTERNAL" and not is_final(crash, StepName.DEBIT)


def test_a_status_code_without_reason_and_an_unknown_code() -> None:
    bare = step_error_from_status(status_pb2.Status(code=code_pb2.NOT_FOUND, message="gone"))
    assert bare == StepError("NOT_FOUND", "", "gone")
    assert is_final(bare, StepName.DEBIT)
    odd = step_error_from_status(status_pb2.Status(code=99, message="?"))
    assert odd.code == "UNKNOWN" and not is_final(odd, StepName.DEBIT)


@pytest.mark.parametrize("replayed", [False, True])
@pytest.mark.parametrize("step", list(StepName))
def test_a_success_gives_replayed(step: StepName, replayed: bool) -> None:
    result = wallet_pb2.StepOperationResult()
    getattr(result, step.value).replayed = replayed
    assert step_outcome(StepCall(step, "w", 1, "t", "t:x", "USD"), result) is replayed


def test_a_result_of_another_kind_is_an_unknown_outcome() -> None:
    wrong = wallet_pb2.StepOperationResult(debit=wallet_pb2.DebitForTransferResponse())
    outcome = step_outcome(STEP, wrong)
    assert isinstance(outcome, StepError) and outcome.code == "UNKNOWN"
    assert not is_final(outcome, StepName.CREDIT)
    empty = step_outcome(STEP, wallet_pb2.StepOperationResult())
    assert isinstance(empty, StepError) and not is_final(empty, StepName.CREDIT)


def test_an_operation_is_the_single_calls_request() -> None:
    debit = StepCall(StepName.DEBIT, "w-1", 9, "t-9", "t-9:debit", "EUR", to_wallet_id="w-2")
    operation = step_operation(debit)
    assert operation.WhichOneof("step") == "debit"
    assert operation.debit == wallet_pb2.DebitForTransferRequest(
        wallet_id="w-1",
        amount=9,
        transfer_id="t-9",
        request_id="t-9:debit",
        currency="EUR",
        to_wallet_id="w-2",
    )
    refund = step_operation(StepCall(StepName.REFUND, "w-1", 9, "t-9", "t-9:refund", "EUR"))
    assert refund.WhichOneof("step") == "refund" and refund.refund.wallet_id == "w-1"
