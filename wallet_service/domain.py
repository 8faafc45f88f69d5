"""Pure wallet rules: what a balance change, a freeze or a past state looks like.

No I/O here. The persistence adapter (:mod:`wallet_service.adapters`) hands in the
locked current state of a wallet and this module decides, deterministically, what the
change is or which error it is. The movement rule is defined once, here: the
``Movement`` table (direction, freeze rule), :func:`balance_bounds` and
:func:`plan_movement`. The PostgreSQL statements build their ``WHERE`` clause from the
same definitions (:mod:`wallet_service.adapters.movement_sql`), a test runs every case
through both, and when such a statement matches no row, :func:`plan_movement` on the
locked row names the reason.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, replace
from datetime import datetime
from enum import Enum

from wallet_events.effects import EFFECTS
from wallet_events.types import (
    FUNDS_DEPOSITED,
    FUNDS_WITHDRAWN,
    TRANSFER_CREDITED,
    TRANSFER_DEBITED,
    TRANSFER_REFUNDED,
    WALLET_CREATED,
    WALLET_FROZEN,
    WALLET_UNFROZEN,
)
from wallet_platform.errors import (
    BalanceOverflowError,
    CurrencyMismatchError,
    InsufficientFundsError,
    WalletFrozenError,
)

INT64_MAX = 2**63 - 1
ACTIVE = "ACTIVE"
FROZEN = "FROZEN"


STATUS_EVENTS = (WALLET_CREATED, WALLET_FROZEN, WALLET_UNFROZEN)

# Idempotency scope of the clients' request_ids (transfer steps use holds.STEP_SCOPE).
CLIENT_SCOPE = "wallet"


@dataclass(frozen=True)
class Wallet:
    """A wallet's state: now (from ``wallets``) or as of some event (from the log)."""

    wallet_id: str
    currency: str
    balance: int
    status: str
    version: int
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True)
class WalletEvent:
    """One immutable log entry."""

    event_id: str
    wallet_id: str
    sequence: int
    type: str
    amount: int
    balance_after: int
    currency: str
    transfer_id: str | None
    request_id: str
    audit_id: str | None
    occurred_at: datetime


@dataclass(frozen=True)
class WriteKey:
    """What one idempotent write is bound to: its method, key, scope and fingerprint."""

    method: str
    request_id: str
    fingerprint: str
    scope: str = CLIENT_SCOPE


@dataclass(frozen=True)
class WriteResult:
    """The outcome of a successful write: the wallet right after it, the event it
    appended (None for a freeze that was already in force), and whether this is the
    stored outcome of an earlier identical request.

    A result from the persistence adapter also carries ``stored_response``: the
    outcome exactly as the adapter stored it under the idempotency key (opaque here).
    The gRPC edge answers with it, so an answer is encoded once per write and a replay
    is byte for byte the first answer, whatever fields the stored message has. A
    replay's ``event`` is None for the writes whose answer does not carry it
    (CreateWallet, FreezeWallet, UnfreezeWallet).
    """

    wallet: Wallet
    event: WalletEvent | None = None
    replayed: bool = False
    stored_response: bytes | None = field(default=None, repr=False, compare=False)


class Movement(Enum):
    """Each kind of balance change: its event type and freeze rule. Its direction
    (``sign``) is the event type's, from the events' effects table."""

    DEPOSIT = (FUNDS_DEPOSITED, False)
    WITHDRAW = (FUNDS_WITHDRAWN, False)
    TRANSFER_DEBIT = (TRANSFER_DEBITED, False)
    TRANSFER_CREDIT = (TRANSFER_CREDITED, False)
    # A refund undoes the platform's own debit, so a freeze must not trap the money.
    TRANSFER_REFUND = (TRANSFER_REFUNDED, True)

    def __init__(self, event_type: str, allowed_when_frozen: bool) -> None:
        self.event_type = event_type
        self.sign = EFFECTS[event_type].balance_sign
        self.allowed_when_frozen = allowed_when_frozen

    @property
    def is_transfer_step(self) -> bool:
        return self in (Movement.TRANSFER_DEBIT, Movement.TRANSFER_CREDIT, Movement.TRANSFER_REFUND)


def balance_bounds(movement: Movement, amount: int) -> tuple[int, int]:
    """The range the current balance must lie in for ``movement`` of ``amount`` to apply.

    A debit needs ``balance >= amount`` (never below zero); a credit needs
    ``balance <= INT64_MAX - amount`` (no overflow). Written as bounds on the current
    balance, the check itself can never overflow, in Python or in SQL.
    """
    if movement.sign < 0:
        return amount, INT64_MAX
    return 0, INT64_MAX - amount


def plan_movement(
    wallet: Wallet, movement: Movement, amount: int, expected_currency: str = ""
) -> int:
    """The balance after ``movement``, or the business error that forbids it.

    Order of checks (so a replayed error is the one a client can act on): currency,
    frozen, funds, overflow.
    """
    if expected_currency and expected_currency != wallet.currency:
        raise CurrencyMismatchError(
            f"wallet {wallet.wallet_id!r} holds {wallet.currency}, not {expected_currency}",
            field="currency",
        )
    if wallet.status != ACTIVE and not movement.allowed_when_frozen:
        raise WalletFrozenError(f"wallet {wallet.wallet_id!r} is frozen", field="wallet_id")
    low, high = balance_bounds(movement, amount)
    if wallet.balance < low:
        raise InsufficientFundsError(
            f"wallet {wallet.wallet_id!r} has {wallet.balance}, needs {amount}", field="amount"
        )
    if wallet.balance > high:
        raise BalanceOverflowError(
            f"wallet {wallet.wallet_id!r}: balance {wallet.balance} + {amount} exceeds int64",
            field="amount",
        )
    return wallet.balance + movement.sign * amount


def plan_status_change(wallet: Wallet, freeze: bool) -> str | None:
    """The event type a freeze/unfreeze produces, or None when already in that state.

    Freezing a frozen wallet (or unfreezing an active one) is a successful no-op: the
    caller's intent already holds, and an extra log entry would only add noise.
    """
    target = FROZEN if freeze else ACTIVE
    if wallet.status == target:
        return None
    return WALLET_FROZEN if freeze else WALLET_UNFROZEN


def status_after(event_type: str, previous: str) -> str:
    """A wallet's status right after an event of ``event_type``."""
    if event_type == WALLET_FROZEN:
        return FROZEN
    if event_type in (WALLET_UNFROZEN, WALLET_CREATED):
        return ACTIVE
    return previous


def state_after(wallet: Wallet, event: WalletEvent, status: str) -> Wallet:
    """The wallet as it stood right after ``event`` (time travel through the log)."""
    return replace(
        wallet,
        balance=event.balance_after,
        status=status,
        version=event.sequence,
        updated_at=event.occurred_at,
    )


def next_timestamp(now: datetime, last_change: datetime) -> datetime:
    """A wallet's events get non-decreasing times, even if the clock steps back."""
    return max(now, last_change)


def fingerprint(method: str, *params: object) -> str:
    """A stable hash of the method and its parameters (the idempotency fingerprint).

    The method is part of it, so reusing a request_id on another RPC is detected.
    """
    raw = json.dumps([method, *params], separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(raw.encode()).hexdigest()
