"""One balance change as every write path sees it (pure: no I/O).

:class:`MoveCommand` is built once per call (validated, its idempotency key and
fingerprint fixed) and then handed to whichever path runs it: the PostgreSQL group
commit, the PostgreSQL single-statement fast path, or the portable path of
:mod:`wallet_service.service` (SQLite, and PostgreSQL when a rule is not met and the
domain must name the reason).

Deposits and withdrawals are keyed by the client's ``request_id`` in scope
``wallet``. Transfer steps are keyed by ``<transfer_id>:<step>`` in scope ``step``,
derived by the server (:func:`wallet_service.holds.step_key`), and carry their hold
action: a debit opens the transfer's hold, a credit posts it, a refund voids it.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

from wallet_platform import validation
from wallet_platform.errors import IdempotencyKeyReusedError, InvalidArgumentError
from wallet_service import domain, holds

MOVEMENT_METHODS = {
    domain.Movement.DEPOSIT: "Deposit",
    domain.Movement.WITHDRAW: "Withdraw",
    domain.Movement.TRANSFER_DEBIT: "DebitForTransfer",
    domain.Movement.TRANSFER_CREDIT: "CreditForTransfer",
    domain.Movement.TRANSFER_REFUND: "RefundForTransfer",
}


@dataclass(frozen=True)
class MoveCommand:
    """A validated balance change: what to do, under which key, with which hold action."""

    method: str
    movement: domain.Movement
    wallet_id: str
    amount: int
    scope: str
    request_id: str  # the idempotency key (a step's is derived from the transfer)
    fingerprint: str
    transfer_id: str = ""
    currency: str = ""  # required on steps; deposits and withdrawals send none
    to_wallet_id: str = ""  # a debit's destination: the hold's to_wallet_id
    audit_id: str | None = None

    @property
    def key(self) -> domain.WriteKey:
        return domain.WriteKey(self.method, self.request_id, self.fingerprint, self.scope)

    @property
    def hold_action(self) -> holds.HoldAction | None:
        return holds.STEP_ACTIONS.get(self.movement)

    @property
    def hold_code(self) -> str:
        """The hold action as the SQL statements receive it ('' = no hold involved)."""
        action = self.hold_action
        return "" if action is None else action.code

    def check_hold(self, hold: holds.Hold | None) -> str | None:
        """The domain's verdict on this step against ``hold`` (see holds.check_step)."""
        return holds.check_step(
            hold, self.movement, self.transfer_id, self.wallet_id, self.amount, self.currency
        )

    def new_hold(self, currency: str) -> holds.Hold:
        """The OPEN hold a debit records."""
        return holds.Hold(
            self.transfer_id, self.wallet_id, self.to_wallet_id, self.amount, currency, holds.OPEN
        )

    def event(
        self, wallet: domain.Wallet, event_id: str | None = None, at: datetime | None = None
    ) -> domain.WalletEvent:
        """The log entry of this change, given the wallet right after it."""
        return domain.WalletEvent(
            event_id=event_id or str(uuid.uuid4()),
            wallet_id=wallet.wallet_id,
            sequence=wallet.version,
            type=self.movement.event_type,
            amount=self.amount,
            balance_after=wallet.balance,
            currency=wallet.currency,
            transfer_id=self.transfer_id or None,
            request_id=self.request_id,
            audit_id=self.audit_id,
            occurred_at=at or wallet.updated_at,
        )


def client_move(
    movement: domain.Movement,
    wallet_id: str,
    amount: int,
    request_id: str,
    audit_id: str | None = None,
) -> MoveCommand:
    """A Deposit or Withdraw, keyed by the client's request_id in scope 'wallet'."""
    if movement.is_transfer_step:
        raise ValueError(f"{movement} is a transfer step: use transfer_step()")
    validation.wallet_id(wallet_id)
    validation.amount(amount)
    validation.request_id(request_id)
    method = MOVEMENT_METHODS[movement]
    return MoveCommand(
        method=method,
        movement=movement,
        wallet_id=wallet_id,
        amount=amount,
        scope=domain.CLIENT_SCOPE,
        request_id=request_id,
        fingerprint=domain.fingerprint(method, wallet_id, amount, "", ""),
        audit_id=audit_id,
    )


def transfer_step(
    movement: domain.Movement,
    wallet_id: str,
    amount: int,
    *,
    transfer_id: str,
    currency: str,
    request_id: str = "",
    to_wallet_id: str = "",
    audit_id: str | None = None,
) -> MoveCommand:
    """A DebitForTransfer / CreditForTransfer / RefundForTransfer, keyed by the server.

    Every field is required except ``request_id`` (empty or the derived key) and
    ``to_wallet_id`` (required on a debit, where it must differ from the source;
    refused on the other steps, whose hold already names the wallets).
    """
    if not movement.is_transfer_step:
        raise ValueError(f"{movement} is not a transfer step")
    validation.wallet_id(wallet_id)
    validation.amount(amount)
    validation.transfer_id(transfer_id)
    validation.currency(currency)
    key = holds.check_step_request_id(request_id, transfer_id, movement)
    if movement is domain.Movement.TRANSFER_DEBIT:
        validation.wallet_id(to_wallet_id, "to_wallet_id")
        if to_wallet_id == wallet_id:
            raise InvalidArgumentError(
                "to_wallet_id must differ from the debited wallet_id", field="to_wallet_id"
            )
    elif to_wallet_id:
        raise InvalidArgumentError("to_wallet_id is only for the debit step", field="to_wallet_id")
    method = MOVEMENT_METHODS[movement]
    return MoveCommand(
        method=method,
        movement=movement,
        wallet_id=wallet_id,
        amount=amount,
        scope=holds.STEP_SCOPE,
        request_id=key,
        fingerprint=domain.fingerprint(
            method, wallet_id, amount, transfer_id, currency, to_wallet_id
        ),
        transfer_id=transfer_id,
        currency=currency,
        to_wallet_id=to_wallet_id,
        audit_id=audit_id,
    )


def reused_key_error(command: MoveCommand) -> IdempotencyKeyReusedError:
    """Why ``command``'s key is taken by a request with other parameters.

    For a step, once the hold had its say (see ``WalletService``'s key-conflict check:
    the transfer was already credited, or this is not its wallet or amount), the
    transfer's step was used with other parameters; otherwise it is a reused key.
    """
    if command.hold_action is not None:
        return IdempotencyKeyReusedError(
            f"transfer {command.transfer_id!r} already had its "
            f"{holds.STEP_NAMES[command.movement]} step with other parameters",
            field="transfer_id",
        )
    return IdempotencyKeyReusedError(
        f"request_id {command.request_id!r} was already used with other parameters "
        "(or another method)",
        field="request_id",
    )
