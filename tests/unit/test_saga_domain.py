"""The saga's state machine and error classification, as pure data (no I/O)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from saga_orchestrator.domain import (
    NEXT_STATE,
    STEP_FOR_STATE,
    TERMINAL_STATES,
    TRANSITIONS,
    UNFINISHED_STATES,
    InvalidTransitionError,
    StepName,
    StepOutcome,
    Transfer,
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


# --- the changes a saga goes through (what the repository is asked to persist) ------

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def pending() -> Transfer:
    return Transfer.pending(
        transfer_id="t1",
        request_id="r1",
        from_wallet_id="a",
        to_wallet_id="b",
        amount=5,
        currency="USD",
        lease_owner="me",
        lease_expires_at=at(10),
        now=at(0),
    )


def test_begin_step_adds_the_step_then_counts_calls_and_renews_the_lease() -> None:
    first = pending().begin_step(StepName.DEBIT, at(1))
    assert first.attempts == 1 and first.lease_expires_at == at(10)
    assert [(s.name, s.outcome, s.attempts) for s in first.steps] == [
        (StepName.DEBIT, StepOutcome.RUNNING, 1)
    ]
    again = first.begin_step(StepName.DEBIT, at(2), at(30))
    assert again.attempts == 2 and again.lease_expires_at == at(30)
    assert [s.attempts for s in again.steps] == [2]
    assert first.steps[0].attempts == 1  # the earlier value is untouched


def test_success_moves_on_and_records_the_next_call_in_the_same_write() -> None:
    debiting = pending().begin_step(StepName.DEBIT, at(1))
    failed_once = debiting.record_failure(StepName.DEBIT, "UNAVAILABLE: down", at(2), at(20))
    finish = failed_once.succeed_step(StepName.DEBIT, at(3), at(40))
    after = finish.after
    assert finish.before is failed_once and not finish.records_failure
    assert (after.state, after.attempts, after.last_error) == (S.DEBITED, 1, "")
    assert after.lease_owner == "me" and after.lease_expires_at == at(40)
    assert finish.begin_next is StepName.CREDIT and finish.next_is_new
    debit, credit = after.steps
    assert (debit.outcome, debit.finished_at, debit.error) == (
        StepOutcome.SUCCEEDED,
        at(3),
        "UNAVAILABLE: down",  # the last transient error it overcame
    )
    assert (credit.name, credit.outcome, credit.attempts) == (
        StepName.CREDIT,
        StepOutcome.RUNNING,
        1,
    )


def test_a_finish_without_a_lease_records_no_next_call() -> None:
    finish = pending().begin_step(StepName.DEBIT, at(1)).succeed_step(StepName.DEBIT, at(2))
    assert finish.begin_next is None and finish.after.attempts == 0
    assert finish.after.lease_expires_at == at(10) and len(finish.after.steps) == 1


def test_a_terminal_state_releases_the_lease() -> None:
    debited = pending().begin_step(StepName.DEBIT, at(1)).succeed_step(StepName.DEBIT, at(2), at(9))
    finish = debited.after.succeed_step(StepName.CREDIT, at(3), at(50))
    assert finish.after.state is S.COMPLETED and finish.begin_next is None
    assert (finish.after.lease_owner, finish.after.lease_expires_at) == (None, None)


def test_a_rejection_takes_the_failure_path_and_says_why() -> None:
    error = StepError("FAILED_PRECONDITION", "WALLET_FROZEN", "frozen")
    debited = pending().begin_step(StepName.DEBIT, at(1)).succeed_step(StepName.DEBIT, at(2), at(9))
    finish = debited.after.reject_step(StepName.CREDIT, error, at(3), at(60))
    after = finish.after
    assert finish.records_failure and after.state is S.COMPENSATING
    assert finish.begin_next is StepName.REFUND
    assert after.failure_reason == "credit rejected: FAILED_PRECONDITION/WALLET_FROZEN: frozen"
    assert after.failure_code == "FAILED_PRECONDITION"
    assert after.steps[1].outcome is StepOutcome.REJECTED
    assert after.steps[1].error == error.describe()
    refunding = after
    with pytest.raises(InvalidTransitionError):
        refunding.reject_step(StepName.REFUND, error, at(4), at(70))
    # A step that does not belong to the state is refused too.
    with pytest.raises(InvalidTransitionError):
        refunding.succeed_step(StepName.DEBIT, at(4), at(70))


def test_terminal_states_are_declared_once_and_rank_last() -> None:
    assert {s for s in S if s.is_terminal} == TERMINAL_STATES
    ranks = [S.PENDING.progress, S.DEBITED.progress, S.COMPENSATING.progress]
    assert ranks == sorted(ranks) and len(set(ranks)) == 3
    assert all(s.progress > max(ranks) for s in TERMINAL_STATES)
