"""Domain errors: a stable reason each, and the one table of their status codes.

Services and domains raise these; nothing here knows a transport. Each error class has
a machine-readable ``reason`` (``INSUFFICIENT_FUNDS``) and, through :data:`STATUS_NAMES`,
a canonical status code named as in ``google.rpc.Code`` (``FAILED_PRECONDITION``). The
gRPC edge (:mod:`wallet_platform.server.status`) turns that name into a
``grpc.StatusCode`` with a ``google.rpc.ErrorInfo`` and, for bad input, a
``google.rpc.BadRequest`` naming the field. An error stored for an idempotent replay is
rebuilt with :func:`error_from_record`, so the replay carries exactly the original code,
reason and message.

An error that a later attempt may not meet (a dependency down, a server limit) names
how long a client should wait first, ``retry_after`` in seconds; the gRPC edge sends it
as a ``google.rpc.RetryInfo``. ``None`` means a retry cannot change the answer.
"""

from __future__ import annotations

from typing import ClassVar


class WalletPlatformError(Exception):
    """Base of every error a client may see. ``reason`` is stable, UPPER_SNAKE."""

    reason: ClassVar[str] = "INTERNAL"
    # Seconds a client should wait before trying again; None: retrying will not help.
    retry_after: ClassVar[float | None] = None

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field

    @property
    def code_name(self) -> str:
        """The canonical status code (a ``google.rpc.Code`` name) this error is sent with."""
        return status_name_for(self)

    @property
    def error_reason(self) -> str:
        return self.reason


class InvalidArgumentError(WalletPlatformError):
    """Malformed input: the message names the field."""

    reason = "INVALID_ARGUMENT"


class NotFoundError(WalletPlatformError):
    reason = "NOT_FOUND"


class WalletNotFoundError(NotFoundError):
    reason = "WALLET_NOT_FOUND"

    def __init__(self, wallet_id: str) -> None:
        super().__init__(f"wallet {wallet_id!r} not found", field="wallet_id")
        self.wallet_id = wallet_id


class TransferNotFoundError(NotFoundError):
    reason = "TRANSFER_NOT_FOUND"

    def __init__(self, transfer_id: str) -> None:
        super().__init__(f"transfer {transfer_id!r} not found", field="transfer_id")


class HoldNotFoundError(NotFoundError):
    """No debit ever held money for this transfer id, so nothing can be credited or refunded."""

    reason = "HOLD_NOT_FOUND"

    def __init__(self, transfer_id: str) -> None:
        super().__init__(f"transfer {transfer_id!r} has no hold", field="transfer_id")


class FailedPreconditionError(WalletPlatformError):
    reason = "FAILED_PRECONDITION"


class InsufficientFundsError(FailedPreconditionError):
    reason = "INSUFFICIENT_FUNDS"


class WalletFrozenError(FailedPreconditionError):
    reason = "WALLET_FROZEN"


class CurrencyMismatchError(FailedPreconditionError):
    reason = "CURRENCY_MISMATCH"


class HoldMismatchError(FailedPreconditionError):
    """A transfer step that does not describe its transfer's hold (wallet, amount, currency)."""

    reason = "HOLD_MISMATCH"


class HoldAlreadyPostedError(FailedPreconditionError):
    """The transfer's hold was already credited to its destination."""

    reason = "HOLD_ALREADY_POSTED"


class HoldAlreadyVoidedError(FailedPreconditionError):
    """The transfer's hold was already refunded to its source."""

    reason = "HOLD_ALREADY_VOIDED"


class AlreadyExistsError(WalletPlatformError):
    reason = "ALREADY_EXISTS"


class IdempotencyKeyReusedError(AlreadyExistsError):
    reason = "REQUEST_ID_REUSED"


class WalletAlreadyExistsError(AlreadyExistsError):
    reason = "WALLET_ALREADY_EXISTS"


class HoldAlreadyExistsError(AlreadyExistsError):
    """A debit for a transfer id whose hold exists: one hold, and one debit, per transfer."""

    reason = "HOLD_ALREADY_EXISTS"


class OutOfRangeError(WalletPlatformError):
    reason = "OUT_OF_RANGE"


class BalanceOverflowError(OutOfRangeError):
    reason = "BALANCE_OVERFLOW"


class UnavailableError(WalletPlatformError):
    """A dependency (database, broker, another service) is down; the client may retry."""

    reason = "UNAVAILABLE"
    # About one health probe round (wallet_platform.server.readiness): long enough not
    # to hammer a dependency that is down, short enough to notice it is back.
    retry_after = 1.0


class UnauthenticatedError(WalletPlatformError):
    reason = "UNAUTHENTICATED"


class PermissionDeniedError(WalletPlatformError):
    reason = "PERMISSION_DENIED"


class ResourceExhaustedError(WalletPlatformError):
    """A server limit was reached (streams, calls, audit backlog); retry later."""

    reason = "RESOURCE_EXHAUSTED"
    retry_after = 1.0


class ReplayedError(WalletPlatformError):
    """An error rebuilt from an idempotency record: same code, reason and message."""

    def __init__(self, code_name: str, reason: str, message: str) -> None:
        super().__init__(message)
        self._code_name = code_name
        self._reason = reason

    @property
    def code_name(self) -> str:
        return self._code_name

    @property
    def error_reason(self) -> str:
        return self._reason


# The one mapping from domain errors to canonical status codes (most specific base wins).
STATUS_NAMES: dict[type[WalletPlatformError], str] = {
    InvalidArgumentError: "INVALID_ARGUMENT",
    NotFoundError: "NOT_FOUND",
    FailedPreconditionError: "FAILED_PRECONDITION",
    AlreadyExistsError: "ALREADY_EXISTS",
    OutOfRangeError: "OUT_OF_RANGE",
    UnavailableError: "UNAVAILABLE",
    UnauthenticatedError: "UNAUTHENTICATED",
    PermissionDeniedError: "PERMISSION_DENIED",
    ResourceExhaustedError: "RESOURCE_EXHAUSTED",
}


def status_name_for(error: WalletPlatformError) -> str:
    for cls in type(error).__mro__:
        if cls in STATUS_NAMES:
            return STATUS_NAMES[cls]
    return "INTERNAL"


def error_to_record(error: WalletPlatformError) -> tuple[str, str, str]:
    """(status code name, reason, message): what an idempotency record stores."""
    return error.code_name, error.error_reason, error.message


def error_from_record(code_name: str, reason: str, message: str) -> ReplayedError:
    return ReplayedError(code_name, reason, message)
