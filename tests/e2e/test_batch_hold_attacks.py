"""The hold attacks of test_hold_attacks, sent through BatchApplyTransferSteps.

A batched step is its single step: no credit or refund without a matching open hold,
a hold settles once, and the conservation invariant holds after every batch. What a
batch adds is concurrency between its items, so a transfer named twice in one batch
(the same step twice, or a debit and its credit) is refused for every repeat: the
first runs, the later ones are INVALID_ARGUMENT and change nothing.
"""

from __future__ import annotations

from typing import Any

import pytest
from google.rpc import code_pb2

from tests.e2e import test_hold_attacks as attacks
from tests.e2e.test_hold_attacks import Ledger, Stubs, assert_conserved, ledger_state
from wallet.v1 import wallet_pb2 as pb
from wallet_platform.storage.database import Database

stubs = attacks.stubs  # the admin / orchestrator token pair of the single-step attacks


@pytest.fixture
async def ledger(stubs: Stubs, database: Database) -> Ledger:
    return Ledger(*stubs, database)


def debit(source: str, target: str, amount: int, transfer_id: str) -> pb.StepOperation:
    return pb.StepOperation(
        debit=pb.DebitForTransferRequest(
            wallet_id=source,
            to_wallet_id=target,
            amount=amount,
            transfer_id=transfer_id,
            currency="USD",
        )
    )


def credit(wallet_id: str, amount: int, transfer_id: str, **extra: Any) -> pb.StepOperation:
    fields = {"currency": "USD", **extra}
    return pb.StepOperation(
        credit=pb.CreditForTransferRequest(
            wallet_id=wallet_id, amount=amount, transfer_id=transfer_id, **fields
        )
    )


def refund(wallet_id: str, amount: int, transfer_id: str) -> pb.StepOperation:
    return pb.StepOperation(
        refund=pb.RefundForTransferRequest(
            wallet_id=wallet_id, amount=amount, transfer_id=transfer_id, currency="USD"
        )
    )


async def batch(ledger: Ledger, *operations: pb.StepOperation) -> list[Any]:
    answer = await ledger.stub.BatchApplyTransferSteps(
        pb.BatchApplyTransferStepsRequest(operations=operations)
    )
    await assert_conserved(ledger.db)
    assert len(answer.results) == len(operations)
    return list(answer.results)


def reason(result: Any) -> str:
    from google.rpc import error_details_pb2

    assert result.WhichOneof("result") == "error", result
    for detail in result.error.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return str(info.reason)
    raise AssertionError(f"no ErrorInfo in {result.error}")


async def test_no_credit_or_refund_without_a_hold(ledger: Ledger):
    alice, bob, eve = await ledger.wallet(1_000), await ledger.wallet(), await ledger.wallet()
    before = await ledger_state(ledger.db)
    results = await batch(
        ledger,
        credit(eve, 1_000_000, "made-up"),
        refund(eve, 1_000_000, "made-up-2"),
        credit(eve, 1, "made-up-3", request_id="x1"),
    )
    assert [reason(r) for r in results] == ["HOLD_NOT_FOUND", "HOLD_NOT_FOUND", "INVALID_ARGUMENT"]
    assert await ledger_state(ledger.db) == before
    # A refused item does not refuse its neighbour.
    results = await batch(ledger, credit(eve, 5, "made-up-4"), debit(alice, bob, 300, "t1"))
    assert reason(results[0]) == "HOLD_NOT_FOUND"
    assert results[1].WhichOneof("result") == "debit"
    assert results[1].debit.wallet.balance == 700
    assert await ledger.balance(eve) == 0


async def test_a_credit_must_match_the_hold(ledger: Ledger):
    alice, bob, eve = await ledger.wallet(1_000), await ledger.wallet(), await ledger.wallet()
    await batch(ledger, debit(alice, bob, 300, "t1"), debit(alice, bob, 100, "t2"))
    before = await ledger_state(ledger.db)
    results = await batch(
        ledger,
        credit(bob, 301, "t1"),
        credit(eve, 100, "t2"),
    )
    assert [reason(r) for r in results] == ["HOLD_MISMATCH", "HOLD_MISMATCH"]
    assert await ledger_state(ledger.db) == before
    results = await batch(ledger, credit(bob, 300, "t1"), refund(alice, 100, "t2"))
    assert results[0].credit.wallet.balance == 300 and not results[0].credit.replayed
    assert results[1].refund.wallet.balance == 700
    assert (await ledger.balance(alice), await ledger.balance(bob)) == (700, 300)


async def test_the_same_transfer_twice_in_a_batch_is_refused_for_the_second(ledger: Ledger):
    alice, bob = await ledger.wallet(1_000), await ledger.wallet()
    await batch(ledger, debit(alice, bob, 300, "t1"))
    results = await batch(
        ledger, credit(bob, 300, "t1"), credit(bob, 300, "t1"), refund(alice, 300, "t1")
    )
    assert results[0].credit.wallet.balance == 300
    for index in (1, 2):
        error = results[index].error
        assert error.code == code_pb2.INVALID_ARGUMENT
        assert f"operations[{index}] repeats transfer_id 't1' of operations[0]" in error.message
    assert (await ledger.balance(alice), await ledger.balance(bob)) == (700, 300)
    # The same batch again: the credit replays, the repeats are refused again.
    again = await batch(
        ledger, credit(bob, 300, "t1"), credit(bob, 300, "t1"), refund(alice, 300, "t1")
    )
    assert again[0].credit.replayed and again[0].credit.event == results[0].credit.event
    assert [r.WhichOneof("result") for r in again[1:]] == ["error", "error"]
    assert (await ledger.balance(alice), await ledger.balance(bob)) == (700, 300)


async def test_a_debit_and_its_credit_in_one_batch_refuse_the_credit(ledger: Ledger):
    alice, bob = await ledger.wallet(1_000), await ledger.wallet()
    results = await batch(ledger, debit(alice, bob, 200, "t3"), credit(bob, 200, "t3"))
    assert results[0].debit.wallet.balance == 800
    assert results[1].error.code == code_pb2.INVALID_ARGUMENT
    assert await ledger.balance(bob) == 0
    # Sent in the next batch, once the debit answered, the credit applies.
    results = await batch(ledger, credit(bob, 200, "t3"))
    assert results[0].credit.wallet.balance == 200


async def test_a_step_with_no_operation_is_refused_alone(ledger: Ledger):
    alice, bob = await ledger.wallet(1_000), await ledger.wallet()
    results = await batch(ledger, pb.StepOperation(), debit(alice, bob, 10, "t4"))
    assert results[0].error.code == code_pb2.INVALID_ARGUMENT
    assert "operations[0]" in results[0].error.message
    assert results[1].debit.wallet.balance == 990
