"""Typed exceptions for failed calls, from the ``google.rpc.ErrorInfo`` the server attaches.

The platform answers a refused call with a gRPC status plus an ``ErrorInfo`` whose
``reason`` is stable and machine-readable (``INSUFFICIENT_FUNDS``, ``REQUEST_ID_REUSED``,
...). :data:`REASONS` is the one table from reason to exception class and status code;
:func:`error_from_rpc` reads a failed call with it, :func:`error_from_status` a batch
item's ``google.rpc.Status``. A call without ``ErrorInfo`` (refused
by authentication, a transport failure, a deadline) is looked up by its status code's
name, and a reason this client does not know yet falls back to the class of its status
code, so a newer server never breaks an older client's ``except`` clauses.
"""

from __future__ import annotations

from collections.abc import Sequence
from types import MappingProxyType

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

ERROR_DOMAIN = "wallet.v1"
MAX_SERVER_RETRY_DELAY = 60.0  # seconds; a longer RetryInfo is read as this


class WalletError(Exception):
    """A call that failed. ``reason`` is the server's ErrorInfo reason (or the code name)."""

    def __init__(
        self,
        message: str,
        *,
        code: grpc.StatusCode,
        reason: str,
        metadata: dict[str, str] | None = None,
        domain: str = "",
        request_id: str | None = None,
        attempts: int = 1,
        retry_delay: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.reason = reason
        self.metadata: dict[str, str] = dict(metadata or {})
        self.domain = domain
        #: The idempotency key the call was sent with: retrying later with the same
        #: request_id is safe (the server replays the first outcome).
        self.request_id = request_id
        #: How many times the call was sent (retries included).
        self.attempts = attempts
        #: Seconds the server asked to wait before trying again (its RetryInfo), or
        #: None when it sent none (a retry would get the same answer).
        self.retry_delay = retry_delay

    def __str__(self) -> str:
        return f"{self.reason}: {self.message}"


class InvalidArgumentError(WalletError):
    """Malformed input; ``metadata["field"]`` names the field."""


class UnknownCurrencyError(InvalidArgumentError):
    """CreateWallet: not an active ISO 4217 currency with a minor unit (ZZZ, XAU...)."""


class CurrencyNotAllowedError(InvalidArgumentError):
    """CreateWallet: a valid currency this platform does not open wallets in."""


class NotFoundError(WalletError):
    pass


class WalletNotFoundError(NotFoundError):
    pass


class TransferNotFoundError(NotFoundError):
    pass


class WalletStatsNotFoundError(NotFoundError):
    pass


class FailedPreconditionError(WalletError):
    pass


class InsufficientFundsError(FailedPreconditionError):
    pass


class WalletFrozenError(FailedPreconditionError):
    pass


class CurrencyMismatchError(FailedPreconditionError):
    pass


class HoldNotFoundError(NotFoundError):
    """A transfer step named a transfer whose debit (its hold) does not exist."""


class HoldMismatchError(FailedPreconditionError):
    """A credit or refund did not match its transfer's hold (wallet, amount, currency)."""


class HoldAlreadyPostedError(FailedPreconditionError):
    """The transfer's hold was already credited."""


class HoldAlreadyVoidedError(FailedPreconditionError):
    """The transfer's hold was already refunded."""


class AlreadyExistsError(WalletError):
    pass


class IdempotencyKeyReusedError(AlreadyExistsError):
    """The request_id was used before with other parameters; nothing was changed."""


class WalletAlreadyExistsError(AlreadyExistsError):
    pass


class HoldAlreadyExistsError(AlreadyExistsError):
    """The transfer was already debited (one hold per transfer)."""


class OutOfRangeError(WalletError):
    pass


class BalanceOverflowError(OutOfRangeError):
    pass


class ResourceExhaustedError(WalletError):
    """A server limit was reached; nothing was done: try again later (writes with the
    same request_id)."""


class TooManyStreamsError(ResourceExhaustedError):
    """Too many open streams on the server or on this connection."""


class TooManyCallsError(ResourceExhaustedError):
    """Too many calls in flight on the server."""


class WatchTooSlowError(ResourceExhaustedError):
    """A watch stream fell too far behind: subscribe again and read the current state."""


class AuditBacklogFullError(ResourceExhaustedError):
    """The server cannot record writes in its audit trail right now; nothing was changed."""


class UnavailableError(WalletError):
    """The platform or one of its dependencies is down: retry with the same request_id."""


class ServerStoppingError(UnavailableError):
    """The server is shutting down (a watch stream ends with it): reconnect."""


class DeadlineExceededError(WalletError):
    """No answer in time; a write may or may not have been applied (retry with its key)."""


class UnauthenticatedError(WalletError):
    pass


class PermissionDeniedError(WalletError):
    pass


class InternalError(WalletError):
    pass


C = grpc.StatusCode

# The one table: ErrorInfo reason -> (exception class, status code the server sends it
# with). Rows whose reason is a status code's name also serve calls without ErrorInfo.
REASONS: MappingProxyType[str, tuple[type[WalletError], grpc.StatusCode]] = MappingProxyType(
    {
        "INVALID_ARGUMENT": (InvalidArgumentError, C.INVALID_ARGUMENT),
        "UNKNOWN_CURRENCY": (UnknownCurrencyError, C.INVALID_ARGUMENT),
        "CURRENCY_NOT_ALLOWED": (CurrencyNotAllowedError, C.INVALID_ARGUMENT),
        "NOT_FOUND": (NotFoundError, C.NOT_FOUND),
        "WALLET_NOT_FOUND": (WalletNotFoundError, C.NOT_FOUND),
        "TRANSFER_NOT_FOUND": (TransferNotFoundError, C.NOT_FOUND),
        "WALLET_STATS_NOT_FOUND": (WalletStatsNotFoundError, C.NOT_FOUND),
        "FAILED_PRECONDITION": (FailedPreconditionError, C.FAILED_PRECONDITION),
        "INSUFFICIENT_FUNDS": (InsufficientFundsError, C.FAILED_PRECONDITION),
        "WALLET_FROZEN": (WalletFrozenError, C.FAILED_PRECONDITION),
        "CURRENCY_MISMATCH": (CurrencyMismatchError, C.FAILED_PRECONDITION),
        "HOLD_NOT_FOUND": (HoldNotFoundError, C.NOT_FOUND),
        "HOLD_MISMATCH": (HoldMismatchError, C.FAILED_PRECONDITION),
        "HOLD_ALREADY_POSTED": (HoldAlreadyPostedError, C.FAILED_PRECONDITION),
        "HOLD_ALREADY_VOIDED": (HoldAlreadyVoidedError, C.FAILED_PRECONDITION),
        "HOLD_ALREADY_EXISTS": (HoldAlreadyExistsError, C.ALREADY_EXISTS),
        "ALREADY_EXISTS": (AlreadyExistsError, C.ALREADY_EXISTS),
        "REQUEST_ID_REUSED": (IdempotencyKeyReusedError, C.ALREADY_EXISTS),
        "WALLET_ALREADY_EXISTS": (WalletAlreadyExistsError, C.ALREADY_EXISTS),
        "OUT_OF_RANGE": (OutOfRangeError, C.OUT_OF_RANGE),
        "BALANCE_OVERFLOW": (BalanceOverflowError, C.OUT_OF_RANGE),
        "RESOURCE_EXHAUSTED": (ResourceExhaustedError, C.RESOURCE_EXHAUSTED),
        "TOO_MANY_STREAMS": (TooManyStreamsError, C.RESOURCE_EXHAUSTED),
        "TOO_MANY_CALLS": (TooManyCallsError, C.RESOURCE_EXHAUSTED),
        "WATCH_TOO_SLOW": (WatchTooSlowError, C.RESOURCE_EXHAUSTED),
        "AUDIT_BACKLOG_FULL": (AuditBacklogFullError, C.RESOURCE_EXHAUSTED),
        "UNAVAILABLE": (UnavailableError, C.UNAVAILABLE),
        "SERVER_STOPPING": (ServerStoppingError, C.UNAVAILABLE),
        "DEADLINE_EXCEEDED": (DeadlineExceededError, C.DEADLINE_EXCEEDED),
        "UNAUTHENTICATED": (UnauthenticatedError, C.UNAUTHENTICATED),
        "PERMISSION_DENIED": (PermissionDeniedError, C.PERMISSION_DENIED),
        "INTERNAL": (InternalError, C.INTERNAL),
    }
)


def exception_class(reason: str, code: grpc.StatusCode) -> type[WalletError]:
    """The class for ``reason``; an unknown reason gets its status code's class."""
    known = REASONS.get(reason) or REASONS.get(code.name)
    return known[0] if known else WalletError


def _details(error: grpc.RpcError) -> list[any_pb2.Any]:
    """The ``google.rpc.Status`` details of a failed call (none if it has no status)."""
    if not callable(getattr(error, "trailing_metadata", None)):
        return []  # not a finished call (e.g. a test double): nothing to read
    try:
        status = rpc_status.from_call(error)
    except ValueError:  # details that contradict the call's own status: ignore them
        return []
    return list(status.details) if status is not None else []


def _error_info(details: Sequence[any_pb2.Any]) -> error_details_pb2.ErrorInfo | None:
    for detail in details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return info
    return None


def _retry_delay(details: Sequence[any_pb2.Any]) -> float | None:
    for detail in details:
        if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            info = error_details_pb2.RetryInfo()
            detail.Unpack(info)
            seconds = info.retry_delay.ToNanoseconds() / 1e9
            return min(max(seconds, 0.0), MAX_SERVER_RETRY_DELAY)
    return None


def server_retry_delay(error: grpc.RpcError) -> float | None:
    """Seconds the server asked to wait before a retry (``RetryInfo``), else None.

    A negative or absurd delay is clamped to ``[0, MAX_SERVER_RETRY_DELAY]``: a server
    (or something in between) must not stall a client for hours.
    """
    return _retry_delay(_details(error))


def _typed(
    code: grpc.StatusCode,
    message: str,
    details: Sequence[any_pb2.Any],
    request_id: str | None,
    attempts: int,
) -> WalletError:
    info = _error_info(details)
    reason = info.reason if info and info.reason else code.name
    return exception_class(reason, code)(
        message or code.name,
        code=code,
        reason=reason,
        metadata=dict(info.metadata) if info else None,
        domain=info.domain if info else "",
        request_id=request_id,
        attempts=attempts,
        retry_delay=_retry_delay(details),
    )


def error_from_rpc(
    error: grpc.RpcError, *, request_id: str | None = None, attempts: int = 1
) -> WalletError:
    """The typed exception for a failed call (a ``grpc.RpcError`` that is a ``grpc.Call``)."""
    code: grpc.StatusCode = error.code()
    return _typed(code, error.details() or "", _details(error), request_id, attempts)


_CODES = {code.value[0]: code for code in grpc.StatusCode}


def error_from_status(
    status: status_pb2.Status, *, request_id: str | None = None, attempts: int = 1
) -> WalletError:
    """The typed exception for a ``google.rpc.Status`` (a refused item of a batch call):
    the same class and fields the single call's failure gives."""
    code = _CODES.get(status.code, grpc.StatusCode.UNKNOWN)
    return _typed(code, status.message, list(status.details), request_id, attempts)
