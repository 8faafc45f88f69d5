"""Python client for the wallet platform.

``WalletClient`` calls the platform with one idempotency key per logical call (reused by
its retries), safe retries with backoff and jitter inside an overall deadline, per-call
deadlines, TLS and a bearer token, and raises typed exceptions for the server's
``google.rpc.ErrorInfo`` reasons. The generated messages and stubs are ``wallet.v1``.
"""

from wallet_client.channel import TlsConfig
from wallet_client.client import WalletClient, new_request_id
from wallet_client.errors import (
    REASONS,
    AlreadyExistsError,
    BalanceOverflowError,
    CurrencyMismatchError,
    CurrencyNotAllowedError,
    DeadlineExceededError,
    FailedPreconditionError,
    IdempotencyKeyReusedError,
    InsufficientFundsError,
    InternalError,
    InvalidArgumentError,
    NotFoundError,
    OutOfRangeError,
    PermissionDeniedError,
    TransferNotFoundError,
    UnauthenticatedError,
    UnavailableError,
    UnknownCurrencyError,
    WalletAlreadyExistsError,
    WalletError,
    WalletFrozenError,
    WalletNotFoundError,
    WalletStatsNotFoundError,
)
from wallet_client.retry import NO_RETRIES, RetryPolicy

__all__ = [
    "NO_RETRIES",
    "REASONS",
    "AlreadyExistsError",
    "BalanceOverflowError",
    "CurrencyMismatchError",
    "CurrencyNotAllowedError",
    "DeadlineExceededError",
    "FailedPreconditionError",
    "IdempotencyKeyReusedError",
    "InsufficientFundsError",
    "InternalError",
    "InvalidArgumentError",
    "NotFoundError",
    "OutOfRangeError",
    "PermissionDeniedError",
    "RetryPolicy",
    "TlsConfig",
    "TransferNotFoundError",
    "UnauthenticatedError",
    "UnavailableError",
    "UnknownCurrencyError",
    "WalletAlreadyExistsError",
    "WalletClient",
    "WalletError",
    "WalletFrozenError",
    "WalletNotFoundError",
    "WalletStatsNotFoundError",
    "new_request_id",
]
