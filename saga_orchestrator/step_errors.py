"""THE classification of WalletService errors met by a saga step (pure, no I/O).

A business rejection (insufficient funds, frozen or unknown wallet, currency mismatch,
overflow, bad input) is final and decides the saga's path; anything else, including
errors we do not recognise, is transient and retried with the same step ``request_id``.
Treating an unknown error as final would be unsafe: if the step had in fact been
applied, a "rejected" credit would be followed by a refund and money would be created.
"""

from __future__ import annotations

from dataclasses import dataclass

from saga_orchestrator.domain import StepName
from wallet_platform.errors import (
    BalanceOverflowError,
    CurrencyMismatchError,
    HoldAlreadyExistsError,
    HoldAlreadyPostedError,
    HoldAlreadyVoidedError,
    HoldMismatchError,
    HoldNotFoundError,
    InsufficientFundsError,
    WalletFrozenError,
    WalletNotFoundError,
)

# ErrorInfo reasons that are business rejections: the step was not applied and never
# will be for this request_id (WalletService stores the rejection for replays). The
# reasons are the error classes' own (``wallet_platform.errors``), never retyped.
FINAL_REASONS = frozenset(
    error.reason
    for error in (
        InsufficientFundsError,
        WalletFrozenError,
        WalletNotFoundError,
        CurrencyMismatchError,
        BalanceOverflowError,
        # The ledger's transfer holds: the step does not match the money the debit
        # held, or the hold was already settled. The ledger changed nothing and the
        # same call will never be accepted.
        HoldNotFoundError,
        HoldMismatchError,
        HoldAlreadyPostedError,
        HoldAlreadyVoidedError,
        HoldAlreadyExistsError,
    )
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
    # The step was never judged: the batch call carrying it failed as a whole
    # (connection, deadline, or the batch itself refused), so whatever the code says
    # is about the batch, not this step. Always transient.
    whole_batch: bool = False

    def describe(self) -> str:
        reason = f"/{self.reason}" if self.reason and self.reason != self.code else ""
        return f"{self.code}{reason}: {self.message}"


def is_final(error: StepError, step: StepName) -> bool:
    """True when the error decides the saga's path; False means retry the same call.

    Transient: UNAVAILABLE, DEADLINE_EXCEEDED, connection loss, and every code not
    listed as final (INTERNAL, UNKNOWN, RESOURCE_EXHAUSTED, ABORTED...): the outcome
    is unknown, so the only safe move is asking again with the same request_id. So is
    any failure of a whole batch call (``whole_batch``), whatever its code: the batch
    was refused or lost, the step itself was never answered.
    A refund is never final: compensation must eventually succeed. A refund the
    ledger's hold refuses would mean the ledger and the saga disagree about the
    transfer; it keeps being retried, visible in the saga's last error and in
    ``walletctl reconcile``, rather than marking money returned that was not.
    """
    if step is StepName.REFUND or error.whole_batch:
        return False
    return error.reason in FINAL_REASONS or error.code in FINAL_CODES
