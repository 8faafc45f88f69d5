"""The saga's state machine and error classification, as pure data (no I/O)."""

from __future__ import annotations

import pytest

from saga_orchestrator.domain import (
    NEXT_STATE,
    STEP_FOR_STATE,
    TERMINAL_STATES,
    TRANSITIONS,
    UNFINISHED_STATES,
    InvalidTransitionError,
    StepName,
    TransferState,
    check_transition,
    step_request_id,
    transfer_fingerprint,
)
from saga_orchestrator.step_errors import StepError, is_final

S = TransferState


def test_the_documented_transitions_and_nothing_else() -> None:
    allowed = {(old, new) for old, targets in TRANSITIONS.items() for new in targets}
    assert allowed == {
        (S.PENDING, S.DEBITED),
        (S.PENDING, S.FAILED),
        (S.DEBITED, S.COMPLETED),
        (S.DEBITED, S.COMPENSATING),
        (S.COMPENSATING, S.COMPENSATED),
    }
    for old in S:
        for new in S:
            if (old, new) in allowed:
                check_transition(old, new)
            else:
                with pytest.raises(InvalidTransitionError):
                    check_transition(old, new)


def test_terminal_states_have_no_way_out_and_every_other_state_has_a_step() -> None:
    assert {S.COMPLETED, S.FAILED, S.COMPENSATED} == TERMINAL_STATES
    assert set(S) - TERMINAL_STATES == UNFINISHED_STATES
    for state in TERMINAL_STATES:
        assert state.is_terminal and not TRANSITIONS[state]
    assert set(STEP_FOR_STATE) == UNFINISHED_STATES


def test_every_step_outcome_is_an_allowed_transition() -> None:
    for state, step in STEP_FOR_STATE.items():
        success, rejection = NEXT_STATE[step]
        check_transition(state, success)
        if rejection is not None:
            check_transition(state, rejection)
    assert NEXT_STATE[StepName.REFUND][1] is None  # compensation has no failure path


def test_step_request_ids_are_derived_from_the_transfer() -> None:
    assert step_request_id("t-1", StepName.DEBIT) == "t-1:debit"
    assert step_request_id("t-1", StepName.CREDIT) == "t-1:credit"
    assert step_request_id("t-1", StepName.REFUND) == "t-1:refund"


@pytest.mark.parametrize(
    ("code", "reason"),
    [
        ("FAILED_PRECONDITION", "INSUFFICIENT_FUNDS"),
        ("FAILED_PRECONDITION", "WALLET_FROZEN"),
        ("FAILED_PRECONDITION", "CURRENCY_MISMATCH"),
        ("NOT_FOUND", "WALLET_NOT_FOUND"),
        ("OUT_OF_RANGE", "BALANCE_OVERFLOW"),
        ("INVALID_ARGUMENT", "INVALID_ARGUMENT"),
        ("ALREADY_EXISTS", "REQUEST_ID_REUSED"),
        ("FAILED_PRECONDITION", ""),  # final by code even without ErrorInfo
    ],
)
def test_business_rejections_are_final_for_debit_and_credit(code: str, reason: str) -> None:
    error = StepError(code, reason, "no")
    assert is_final(error, StepName.DEBIT)
    assert is_final(error, StepName.CREDIT)
    assert not is_final(error, StepName.REFUND)  # the money must go back: keep trying


@pytest.mark.parametrize(
    "code",
    ["UNAVAILABLE", "DEADLINE_EXCEEDED", "INTERNAL", "UNKNOWN", "RESOURCE_EXHAUSTED", "ABORTED"],
)
def test_everything_else_is_transient(code: str) -> None:
    # An unknown outcome may hide an applied step: only asking again is safe.
    error = StepError(code, "", "boom")
    for step in StepName:
        assert not is_final(error, step)


def test_fingerprint_binds_all_parameters() -> None:
    base = transfer_fingerprint("a", "b", 10)
    assert base == transfer_fingerprint("a", "b", 10)
    assert len({base, transfer_fingerprint("b", "a", 10), transfer_fingerprint("a", "b", 11)}) == 3


def test_error_description_names_code_and_reason() -> None:
    assert StepError("FAILED_PRECONDITION", "WALLET_FROZEN", "frozen").describe() == (
        "FAILED_PRECONDITION/WALLET_FROZEN: frozen"
    )
    assert StepError("UNAVAILABLE", "", "down").describe() == "UNAVAILABLE: down"
