"""The pure hold rules (wallet_service.holds): what a step needs of its transfer's hold."""

from __future__ import annotations

import pytest

from wallet_platform.errors import (
    HoldAlreadyExistsError,
    HoldAlreadyPostedError,
    HoldAlreadyVoidedError,
    HoldMismatchError,
    HoldNotFoundError,
    InvalidArgumentError,
)
from wallet_service import holds
from wallet_service.domain import Movement

HOLD = holds.Hold("t1", "alice", "bob", 300, "USD", holds.OPEN)
CREDIT, REFUND, DEBIT = Movement.TRANSFER_CREDIT, Movement.TRANSFER_REFUND, Movement.TRANSFER_DEBIT


def step(hold, movement, wallet="bob", amount=300, currency="USD"):
    return holds.check_step(hold, movement, "t1", wallet, amount, currency)


def test_credit_posts_and_refund_voids_an_open_hold():
    assert step(HOLD, CREDIT) == holds.POSTED
    assert step(HOLD, REFUND, wallet="alice") == holds.VOIDED
    assert step(None, DEBIT, wallet="alice") is None


@pytest.mark.parametrize(
    ("hold", "movement", "changes", "error", "field"),
    [
        (None, CREDIT, {}, HoldNotFoundError, "transfer_id"),
        (None, REFUND, {"wallet": "alice"}, HoldNotFoundError, "transfer_id"),
        (HOLD, CREDIT, {"wallet": "eve"}, HoldMismatchError, "wallet_id"),
        (HOLD, CREDIT, {"wallet": "alice"}, HoldMismatchError, "wallet_id"),
        (HOLD, REFUND, {"wallet": "bob"}, HoldMismatchError, "wallet_id"),
        (HOLD, CREDIT, {"amount": 301}, HoldMismatchError, "amount"),
        (HOLD, REFUND, {"wallet": "alice", "currency": "EUR"}, HoldMismatchError, "currency"),
        (HOLD.__class__(**{**HOLD.__dict__, "state": holds.POSTED}), REFUND, {"wallet": "alice"},
         HoldAlreadyPostedError, "transfer_id"),
        (HOLD.__class__(**{**HOLD.__dict__, "state": holds.VOIDED}), CREDIT, {},
         HoldAlreadyVoidedError, "transfer_id"),
        (HOLD, DEBIT, {"wallet": "alice"}, HoldAlreadyExistsError, "transfer_id"),
    ],
)  # fmt: skip
def test_anything_else_is_refused_with_its_reason(hold, movement, changes, error, field):
    with pytest.raises(error) as raised:
        step(hold, movement, **changes)
    assert raised.value.field == field


def test_a_mismatch_is_reported_before_the_state():
    posted = holds.Hold("t1", "alice", "bob", 300, "USD", holds.POSTED)
    with pytest.raises(HoldMismatchError):
        step(posted, CREDIT, amount=1)


def test_step_keys_are_derived_and_a_foreign_request_id_is_refused():
    assert holds.step_key("t-1", CREDIT) == "t-1:credit"
    assert holds.check_step_request_id("", "t-1", REFUND) == "t-1:refund"
    assert holds.check_step_request_id("t-1:debit", "t-1", DEBIT) == "t-1:debit"
    with pytest.raises(InvalidArgumentError) as raised:
        holds.check_step_request_id("t-1:debit", "t-1", CREDIT)
    assert raised.value.field == "request_id"


def test_hold_refusals_are_the_unrecorded_ones():
    assert set(holds.UNRECORDED_ERRORS) == {
        HoldNotFoundError,
        HoldMismatchError,
        HoldAlreadyPostedError,
        HoldAlreadyVoidedError,
        HoldAlreadyExistsError,
    }
