"""One balance change as every write path sees it, and its portable application.

:class:`MoveCommand` is built once per call (validated, its idempotency key and
fingerprint fixed) and then handed to whichever path runs it: the PostgreSQL group
commit, the PostgreSQL single-statement fast path, or :func:`apply_portable` (SQLite,
and PostgreSQL when a rule is not met and the domain must name the reason).

Deposits and withdrawals are keyed by the client's ``request_id`` in scope
``wallet``. Transfer steps are keyed by ``<transfer_id>:<step>`` in scope ``step``,
derived by the server (:func:`wallet_service.holds.step_key`), and carry their hold
action: a debit opens the transfer's hold, a credit posts it, a refund voids it.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, replace
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncConnection

from wallet_platform import validation
from wallet_platform.errors import (
    IdempotencyKeyReusedError,
    InvalidArgumentError,
    WalletNotFoundError,
)
from wallet_service import domain, hold_store, holds, repository

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
    def key(self) -> repository.WriteKey:
        return repository.WriteKey(self.method, self.request_id, self.fingerprint, self.scope)

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
        scope=repository.CLIENT_SCOPE,
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


async def apply_portable(
    conn: AsyncConnection, command: MoveCommand, now: datetime
) -> tuple[domain.Wallet, domain.WalletEvent]:
    """Lock (hold, then wallet), let the domain decide, write: the portable path.

    Raises the domain's error when a rule forbids the change; nothing is written then.
    """
    action = command.hold_action
    settled_state: str | None = None
    if action is not None:
        hold = await hold_store.get_hold(conn, command.transfer_id, for_update=True)
        settled_state = command.check_hold(hold)
    wallet = await repository.get_wallet(conn, command.wallet_id, for_update=True)
    if wallet is None:
        raise WalletNotFoundError(command.wallet_id)
    balance = domain.plan_movement(wallet, command.movement, command.amount, command.currency)
    at = domain.next_timestamp(now, wallet.updated_at)
    changed = replace(wallet, balance=balance, version=wallet.version + 1, updated_at=at)
    event = command.event(changed, at=at)
    await repository.save_change(conn, changed, event)
    if action is holds.HoldAction.OPEN:
        await hold_store.open_hold(conn, command.new_hold(wallet.currency), at)
    elif settled_state is not None:
        await hold_store.settle_hold(conn, command.transfer_id, settled_state, at)
    return changed, event


async def explain_key_conflict(conn: AsyncConnection, command: MoveCommand) -> None:
    """Raise why ``command``'s key is taken by a request with other parameters.

    For a step the hold says it best (the transfer was already credited, or this is
    not its wallet or amount); otherwise, and for a debit whose earlier attempt was
    refused, it is a reused key.
    """
    if command.hold_action is not None:
        command.check_hold(await hold_store.get_hold(conn, command.transfer_id))
        raise IdempotencyKeyReusedError(
            f"transfer {command.transfer_id!r} already had its "
            f"{holds.STEP_NAMES[command.movement]} step with other parameters",
            field="transfer_id",
        )
    raise IdempotencyKeyReusedError(
        f"request_id {command.request_id!r} was already used with other parameters "
        "(or another method)",
        field="request_id",
    )
