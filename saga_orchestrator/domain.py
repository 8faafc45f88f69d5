"""The transfer saga as pure data: states, allowed transitions, steps.

No I/O here. The runner asks this module which step a state calls for and which state
follows a step's outcome (whether a step error is worth retrying is
``saga_orchestrator.step_errors``). Every change of a saga is decided here too
(:meth:`Transfer.begin_step`, :meth:`Transfer.record_failure`,
:meth:`Transfer.succeed_step`, :meth:`Transfer.reject_step`): the repository only
persists what these return, so the state machine and what each write must contain are
read in one place.
"""

from __future__ import annotations

import enum
import hashlib
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from saga_orchestrator.step_errors import StepError


class TransferState(enum.StrEnum):
    """Where a saga stands; the string is what the ``transfers.state`` column holds."""

    PENDING = "PENDING"
    DEBITED = "DEBITED"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    COMPENSATING = "COMPENSATING"
    COMPENSATED = "COMPENSATED"

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL_STATES

    @property
    def progress(self) -> int:
        """How far along the saga is (a watcher never sees a transfer step back)."""
        return _PROGRESS.get(self, len(_PROGRESS))


# The one declaration of which states end a saga.
TERMINAL_STATES = frozenset(
    {TransferState.COMPLETED, TransferState.FAILED, TransferState.COMPENSATED}
)
UNFINISHED_STATES = frozenset(set(TransferState) - TERMINAL_STATES)
# Unfinished states in the order a saga passes them; every terminal state ranks after.
_PROGRESS = {
    TransferState.PENDING: 0,
    TransferState.DEBITED: 1,
    TransferState.COMPENSATING: 2,
}

# The whole state machine. Anything not listed here is a bug, never a runtime path.
TRANSITIONS: dict[TransferState, frozenset[TransferState]] = {
    TransferState.PENDING: frozenset({TransferState.DEBITED, TransferState.FAILED}),
    TransferState.DEBITED: frozenset({TransferState.COMPLETED, TransferState.COMPENSATING}),
    TransferState.COMPENSATING: frozenset({TransferState.COMPENSATED}),
    TransferState.COMPLETED: frozenset(),
    TransferState.FAILED: frozenset(),
    TransferState.COMPENSATED: frozenset(),
}


class InvalidTransitionError(RuntimeError):
    """A programming error: the code tried a transition the state machine forbids."""


class LeaseLostError(RuntimeError):
    """This replica no longer owns the saga (or its state moved on): stop driving it."""


class DuplicateRequestError(RuntimeError):
    """A transfer with this request_id already exists (insert lost the race)."""


def check_transition(current: TransferState, new: TransferState) -> None:
    if new not in TRANSITIONS[current]:
        raise InvalidTransitionError(f"transition {current} -> {new} is not allowed")


class StepName(enum.StrEnum):
    """The three WalletService calls a saga can make."""

    DEBIT = "debit"
    CREDIT = "credit"
    REFUND = "refund"


class StepOutcome(enum.StrEnum):
    """How a step stands (``transfer_steps.outcome``)."""

    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    REJECTED = "REJECTED"


# Order of the steps in Transfer.steps.
STEP_POSITION = {StepName.DEBIT: 1, StepName.CREDIT: 2, StepName.REFUND: 3}

# Which call each unfinished state is waiting for.
STEP_FOR_STATE: dict[TransferState, StepName] = {
    TransferState.PENDING: StepName.DEBIT,
    TransferState.DEBITED: StepName.CREDIT,
    TransferState.COMPENSATING: StepName.REFUND,
}

# Where a step leads: (state after success, state after a final rejection).
# A refund has no rejection path: the money must go back, so it is retried until it
# does (see ``is_final``) and stays visible in the summary meanwhile.
NEXT_STATE: dict[StepName, tuple[TransferState, TransferState | None]] = {
    StepName.DEBIT: (TransferState.DEBITED, TransferState.FAILED),
    StepName.CREDIT: (TransferState.COMPLETED, TransferState.COMPENSATING),
    StepName.REFUND: (TransferState.COMPENSATED, None),
}


def step_request_id(transfer_id: str, step: StepName) -> str:
    """The idempotency key of a step: re-running it after a crash replays, never repeats."""
    return f"{transfer_id}:{step.value}"


# --- The transfer as the domain sees it ---------------------------------------------


@dataclass
class Step:
    name: StepName
    outcome: StepOutcome
    attempts: int
    error: str
    started_at: datetime
    finished_at: datetime | None


@dataclass
class Transfer:
    """One saga as stored (``transfers`` row plus its ``transfer_steps``)."""

    transfer_id: str
    request_id: str
    fingerprint: str
    from_wallet_id: str
    to_wallet_id: str
    amount: int
    currency: str
    state: TransferState
    failure_reason: str
    failure_code: str
    attempts: int
    last_error: str
    next_attempt_at: datetime | None
    lease_owner: str | None
    lease_expires_at: datetime | None
    created_at: datetime
    updated_at: datetime
    steps: list[Step] = field(default_factory=list)
    # The audit record of the CreateTransfer call, propagated to the step calls.
    audit_id: str = ""
    # The W3C trace context of CreateTransfer (None: tracing was off): the saga's
    # spans continue that trace, also when another replica resumes it.
    traceparent: str | None = None

    @classmethod
    def pending(
        cls,
        *,
        transfer_id: str,
        request_id: str,
        from_wallet_id: str,
        to_wallet_id: str,
        amount: int,
        currency: str,
        lease_owner: str | None,
        lease_expires_at: datetime | None,
        now: datetime,
        audit_id: str = "",
        traceparent: str | None = None,
    ) -> Transfer:
        """A new saga as CreateTransfer stores it: PENDING, nothing tried yet."""
        return cls(
            transfer_id=transfer_id,
            request_id=request_id,
            fingerprint=transfer_fingerprint(from_wallet_id, to_wallet_id, amount),
            from_wallet_id=from_wallet_id,
            to_wallet_id=to_wallet_id,
            amount=amount,
            currency=currency,
            state=TransferState.PENDING,
            failure_reason="",
            failure_code="",
            attempts=0,
            last_error="",
            next_attempt_at=None,
            lease_owner=lease_owner,
            lease_expires_at=lease_expires_at,
            created_at=now,
            updated_at=now,
            audit_id=audit_id,
            traceparent=traceparent,
        )

    @property
    def is_terminal(self) -> bool:
        return self.state.is_terminal

    def involves(self, wallet_id: str) -> bool:
        return wallet_id in (self.from_wallet_id, self.to_wallet_id)

    def step(self, name: StepName) -> Step | None:
        return next((s for s in self.steps if s.name is name), None)

    # --- the changes a saga goes through (the repository persists what they return) --

    def begin_step(
        self, step: StepName, now: datetime, lease_until: datetime | None = None
    ) -> Transfer:
        """The saga with one more call of ``step`` recorded: the 'before' write.

        The first call adds the step (RUNNING, attempts 1), a later one counts one more
        attempt on it; ``lease_until`` renews the lease. A crash after this write and
        before the call leaves a saga whose disk says which call may be in flight.
        """
        return replace(
            self,
            attempts=self.attempts + 1,
            lease_expires_at=lease_until if lease_until is not None else self.lease_expires_at,
            steps=_count_call(self.steps, step, now),
        )

    def record_failure(
        self, step: StepName, error: str, next_attempt_at: datetime, lease_until: datetime
    ) -> Transfer:
        """A call of ``step`` failed transiently: the error stays visible until it works."""
        return replace(
            self,
            last_error=error,
            next_attempt_at=next_attempt_at,
            lease_expires_at=lease_until,
            steps=[replace(s, error=error) if s.name is step else s for s in self.steps],
        )

    def succeed_step(
        self, step: StepName, now: datetime, lease_until: datetime | None = None
    ) -> StepFinish:
        """``step`` was applied: the saga moves on (see :meth:`_finish`)."""
        return self._finish(step, StepOutcome.SUCCEEDED, now, lease_until)

    def reject_step(
        self, step: StepName, error: StepError, now: datetime, lease_until: datetime | None = None
    ) -> StepFinish:
        """``step`` was finally rejected (``is_final``): the saga takes its failure path,
        which records why (``failure_reason``, ``failure_code``)."""
        return self._finish(
            step,
            StepOutcome.REJECTED,
            now,
            lease_until,
            step_error=error.describe(),
            failure_reason=f"{step.value} rejected: {error.describe()}",
            failure_code=error.code,
        )

    def _finish(
        self,
        step: StepName,
        outcome: StepOutcome,
        now: datetime,
        lease_until: datetime | None,
        *,
        step_error: str = "",
        failure_reason: str = "",
        failure_code: str = "",
    ) -> StepFinish:
        """The step's outcome and the saga's next state (:data:`NEXT_STATE`), atomically.

        With ``lease_until`` the first call of the step the next state waits for is
        recorded by the same write (its 'before' write folded in: one write per step
        boundary) and the lease renewed; a terminal state releases the lease. Transient
        bookkeeping (attempts, last error, next attempt) starts afresh. A succeeded step
        keeps the last transient error it overcame (diagnostics).
        """
        after_success, after_rejection = NEXT_STATE[step]
        new_state = after_success if outcome is StepOutcome.SUCCEEDED else after_rejection
        if new_state is None:
            raise InvalidTransitionError(f"{step} cannot be rejected")
        check_transition(self.state, new_state)
        begin_next = STEP_FOR_STATE.get(new_state) if lease_until is not None else None
        steps = [
            replace(s, outcome=outcome, finished_at=now, error=step_error or s.error)
            if s.name is step
            else s
            for s in self.steps
        ]
        next_is_new = begin_next is not None and all(s.name is not begin_next for s in steps)
        if begin_next is not None:
            steps = _count_call(steps, begin_next, now)
        terminal = new_state.is_terminal
        after = replace(
            self,
            state=new_state,
            updated_at=now,
            attempts=1 if begin_next is not None else 0,
            last_error="",
            next_attempt_at=None,
            failure_reason=failure_reason or self.failure_reason,
            failure_code=failure_code if failure_reason else self.failure_code,
            lease_owner=None if terminal else self.lease_owner,
            lease_expires_at=None
            if terminal
            else (lease_until if begin_next is not None else self.lease_expires_at),
            steps=steps,
        )
        return StepFinish(self, after, step, outcome, step_error, begin_next, next_is_new)


@dataclass(frozen=True)
class StepFinish:
    """A finished step as the domain decided it; the repository writes exactly this.

    ``before`` is the saga as its writer read it (the write is fenced on its state and
    lease owner), ``after`` the saga once written.
    """

    before: Transfer
    after: Transfer
    step: StepName
    outcome: StepOutcome
    step_error: str  # "": the step keeps its error
    begin_next: StepName | None  # the step whose first call this write records
    next_is_new: bool  # begin_next has no row yet (else: one more call on its row)

    @property
    def records_failure(self) -> bool:
        """The write sets ``failure_reason``/``failure_code`` (a rejection)."""
        return self.outcome is StepOutcome.REJECTED


def _count_call(steps: list[Step], step: StepName, now: datetime) -> list[Step]:
    """``steps`` with one more call of ``step``: a new RUNNING step, or one more attempt."""
    if all(s.name is not step for s in steps):
        return [*steps, Step(step, StepOutcome.RUNNING, 1, "", now, None)]
    return [replace(s, attempts=s.attempts + 1) if s.name is step else s for s in steps]


def transfer_fingerprint(from_wallet_id: str, to_wallet_id: str, amount: int) -> str:
    """What a CreateTransfer request_id is bound to; another request with it is a reuse."""
    raw = f"{from_wallet_id}\x00{to_wallet_id}\x00{amount}".encode()
    return hashlib.sha256(raw).hexdigest()
