"""The transfer saga as pure data: states, allowed transitions, steps, error classes.

No I/O here. The runner asks this module three questions: which step does a state
call for, which state follows a step's outcome, and is a step error worth retrying.
The last one is THE classification of WalletService errors: a business rejection
(insufficient funds, frozen or unknown wallet, currency mismatch, overflow, bad
input) is final and decides the saga's path; anything else, including errors we do
not recognise, is transient and retried with the same step ``request_id``. Treating
an unknown error as final would be unsafe: if the step had in fact been applied, a
"rejected" credit would be followed by a refund and money would be created.
"""

from __future__ import annotations

import enum
import hashlib
from dataclasses import dataclass, field
from datetime import datetime


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


TERMINAL_STATES = frozenset(
    {TransferState.COMPLETED, TransferState.FAILED, TransferState.COMPENSATED}
)
UNFINISHED_STATES = frozenset(set(TransferState) - TERMINAL_STATES)

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


# --- Error classification (the one place) ------------------------------------------

# ErrorInfo reasons that are business rejections: the step was not applied and never
# will be for this request_id (WalletService stores the rejection for replays).
FINAL_REASONS = frozenset(
    {
        "INSUFFICIENT_FUNDS",
        "WALLET_FROZEN",
        "WALLET_NOT_FOUND",
        "CURRENCY_MISMATCH",
        "BALANCE_OVERFLOW",
        # The ledger's transfer holds: the step does not match the money the debit
        # held, or the hold was already settled. The ledger changed nothing and the
        # same call will never be accepted.
        "HOLD_NOT_FOUND",
        "HOLD_MISMATCH",
        "HOLD_ALREADY_POSTED",
        "HOLD_ALREADY_VOIDED",
        "HOLD_ALREADY_EXISTS",
    }
)
# Status codes that are final even without a recognised reason: the request itself is
# wrong or rejected, retrying the same request cannot change the answer.
FINAL_CODES = frozenset(
    {"FAILED_PRECONDITION", "NOT_FOUND", "INVALID_ARGUMENT", "OUT_OF_RANGE", "ALREADY_EXISTS"}
)


@dataclass(frozen=True)
class StepError:
    """A failed step call, reduced to what classification and the record need."""

    code: str  # grpc.StatusCode name, e.g. "UNAVAILABLE"
    reason: str  # ErrorInfo reason, "" when the server sent none
    message: str

    def describe(self) -> str:
        reason = f"/{self.reason}" if self.reason and self.reason != self.code else ""
        return f"{self.code}{reason}: {self.message}"


def is_final(error: StepError, step: StepName) -> bool:
    """True when the error decides the saga's path; False means retry the same call.

    Transient: UNAVAILABLE, DEADLINE_EXCEEDED, connection loss, and every code not
    listed as final (INTERNAL, UNKNOWN, RESOURCE_EXHAUSTED, ABORTED...): the outcome
    is unknown, so the only safe move is asking again with the same request_id.
    A refund is never final: compensation must eventually succeed. A refund the
    ledger's hold refuses would mean the ledger and the saga disagree about the
    transfer; it keeps being retried, visible in the saga's last error and in
    ``walletctl reconcile``, rather than marking money returned that was not.
    """
    if step is StepName.REFUND:
        return False
    return error.reason in FINAL_REASONS or error.code in FINAL_CODES


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


def transfer_fingerprint(from_wallet_id: str, to_wallet_id: str, amount: int) -> str:
    """What a CreateTransfer request_id is bound to; another request with it is a reuse."""
    raw = f"{from_wallet_id}\x00{to_wallet_id}\x00{amount}".encode()
    return hashlib.sha256(raw).hexdigest()
