"""WalletService use cases: validation, idempotency, one unit of work per write.

Each write follows the same shape inside ONE unit of work
(:class:`~wallet_service.adapters.unit_of_work.WalletUnitOfWork`, one transaction):

1. claim the idempotency key (scope ``wallet`` and the client's ``request_id``; for a
   transfer step scope ``step`` and the key the server derives, see
   :mod:`wallet_service.moves`), with the fingerprint of the method and its
   parameters. A key that exists already is a replay (same fingerprint: return the
   stored outcome with ``replayed = true``, or raise the stored error) or a conflict
   (other fingerprint: ``IdempotencyKeyReusedError``, or for a step the hold's more
   precise refusal);
2. lock the transfer's hold (transfer steps) and the wallet, and let
   :mod:`wallet_service.holds` and :mod:`wallet_service.domain` decide the change or
   the error;
3. write the wallet row, append the event (sequence = new version), open or settle
   the hold, and store the outcome under the key (the adapter queues the event's
   outbox row with it);
4. commit; after a balance change hit the ``wallet.after_commit`` failpoint; reply.

Business rejections (not found, frozen, insufficient funds, currency mismatch,
overflow, wallet id taken) are stored too, so a retry gets the very same error even if
the wallet changed meanwhile. Malformed input (INVALID_ARGUMENT) is rejected before
any database work and is not stored: the key was never valid. A currency that new
wallets may not hold (``wallet_platform.currency_policy``) is INVALID_ARGUMENT too,
but a request_id that already opened its wallet is answered with that wallet first.
A hold's refusal is not stored either (the transaction rolls back): it is about the
transfer, not the key.

On PostgreSQL steps 1-3 of a balance change take two statements
(:meth:`WalletUnitOfWork.try_move`), or share a batch with concurrent changes
(:meth:`WalletStore.submit_move`); when the conditional update does not apply, the
portable path (lock, ask the domain, write) runs in the same transaction.

Writes return a :class:`~wallet_service.domain.WriteResult` (the wallet after the
write, its event, ``replayed``); the gRPC edge maps it to the RPC's response message.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from dataclasses import replace
from datetime import datetime

from wallet_platform import validation
from wallet_platform.clock import Clock, utcnow
from wallet_platform.currency_policy import CurrencyPolicy
from wallet_platform.errors import (
    InvalidArgumentError,
    UnavailableError,
    WalletAlreadyExistsError,
    WalletNotFoundError,
    WalletPlatformError,
)
from wallet_platform.failpoints import failpoint
from wallet_platform.observability import tracing
from wallet_platform.observability.logs import audit_id_var
from wallet_platform.storage.database import Database
from wallet_service import domain, holds, moves
from wallet_service.adapters.store import WalletStore
from wallet_service.adapters.unit_of_work import WalletUnitOfWork
from wallet_service.domain import WriteKey, WriteResult
from wallet_service.moves import MoveCommand
from wallet_service.queries import WalletQueries

Apply = Callable[[WalletUnitOfWork, datetime], Awaitable[WriteResult]]
# The PostgreSQL single-request path: the result, or None to run the portable path.
FastApply = Callable[[WalletUnitOfWork, datetime], Awaitable[WriteResult | None]]
# Raises why a taken key conflicts (e.g. the transfer's hold was already posted).
Explain = Callable[[WalletUnitOfWork], Awaitable[None]]

# Rejections never stored under the key: the transaction rolls back, claim included.
# UNAVAILABLE has no definite outcome (the retry must really run again); a hold's
# refusal says nothing about the step's key (see wallet_service.holds).
UNRECORDED_ERRORS: tuple[type[WalletPlatformError], ...] = (
    UnavailableError,
    *holds.UNRECORDED_ERRORS,
)


class WalletService(WalletQueries):
    """The use cases; the gRPC servicer only translates to and from these calls."""

    def __init__(
        self,
        db: Database,
        clock: Clock = utcnow,
        *,
        group_commit: bool = True,
        currencies: CurrencyPolicy | None = None,
    ) -> None:
        self._clock = clock
        self._currencies = currencies or CurrencyPolicy.from_setting("")
        self.store = WalletStore(db, clock, group_commit=group_commit)

    # --- writes ----------------------------------------------------------------------

    async def create_wallet(self, wallet_id: str, currency: str, request_id: str) -> WriteResult:
        """Open an ACTIVE wallet with balance 0 and its ``wallet_created`` event."""
        if wallet_id:
            validation.wallet_id(wallet_id)
        validation.currency(currency)
        validation.request_id(request_id)
        key = WriteKey(
            "CreateWallet", request_id, domain.fingerprint("CreateWallet", wallet_id, currency)
        )
        try:
            self._currencies.check_new_wallet(currency)
        except InvalidArgumentError:
            # The currency policy can change between a request and its retry (a code
            # leaves WALLET_CURRENCIES): a request that already opened its wallet still
            # gets that wallet back, as any replay would.
            async with self.store.reader() as reader:
                earlier = await reader.stored_outcome(key)
            if earlier is not None:
                return earlier.replay()
            raise
        new_id = wallet_id or str(uuid.uuid4())
        audit_id = audit_id_var.get()

        async def apply(uow: WalletUnitOfWork, now: datetime) -> WriteResult:
            wallet = domain.Wallet(new_id, currency, 0, domain.ACTIVE, 1, now, now)
            event = _event(wallet, domain.WALLET_CREATED, request_id, now, audit_id)
            if not await uow.insert_wallet(wallet, event):
                raise WalletAlreadyExistsError(
                    f"wallet {new_id!r} already exists", field="wallet_id"
                )
            return await uow.finish(key, WriteResult(wallet, event))

        return await self._write(key, apply)

    async def deposit(self, wallet_id: str, amount: int, request_id: str) -> WriteResult:
        return await self.move(domain.Movement.DEPOSIT, wallet_id, amount, request_id)

    async def withdraw(self, wallet_id: str, amount: int, request_id: str) -> WriteResult:
        return await self.move(domain.Movement.WITHDRAW, wallet_id, amount, request_id)

    async def move(
        self,
        movement: domain.Movement,
        wallet_id: str,
        amount: int,
        request_id: str,
        *,
        transfer_id: str = "",
        currency: str = "",
        to_wallet_id: str = "",
    ) -> WriteResult:
        """Any balance change: deposit, withdrawal, or a transfer step (see moves)."""
        audit_id = audit_id_var.get()
        if movement.is_transfer_step:
            command = moves.transfer_step(
                movement,
                wallet_id,
                amount,
                transfer_id=transfer_id,
                currency=currency,
                request_id=request_id,
                to_wallet_id=to_wallet_id,
                audit_id=audit_id,
            )
        elif transfer_id or currency or to_wallet_id:
            raise InvalidArgumentError(
                "transfer_id, currency and to_wallet_id are only for transfer steps",
                field="transfer_id",
            )
        else:
            command = moves.client_move(movement, wallet_id, amount, request_id, audit_id)
        if not tracing.enabled():  # the hot path: not even a span name to format
            return await self._move(command)
        with tracing.span(f"wallet {command.method}", attributes={"wallet.id": wallet_id}):
            return await self._move(command)

    async def _move(self, command: moves.MoveCommand) -> WriteResult:
        grouped = await self.store.submit_move(command)  # PostgreSQL group commit
        if grouped is not None:
            await failpoint("wallet.after_commit")
            return grouped
        # Not decided in a batch (off, replay, rejection, failed batch): the single path.

        async def apply(uow: WalletUnitOfWork, now: datetime) -> WriteResult:
            return await uow.finish(command.key, await _apply_portable(uow, command, now))

        async def explain(uow: WalletUnitOfWork) -> None:
            if command.hold_action is not None:
                command.check_hold(await uow.hold(command.transfer_id))  # the precise refusal
            raise moves.reused_key_error(command)

        fast = None
        if self.store.fast_path:

            async def fast(uow: WalletUnitOfWork, now: datetime) -> WriteResult | None:
                event_id = str(uuid.uuid4())
                moved = await uow.try_move(command, event_id, now)
                if not moved.claimed:
                    return await _replay(uow, command.key, explain)
                if moved.wallet is None:
                    return None  # key claimed, rule not met: the portable path says why
                result = WriteResult(moved.wallet, command.event(moved.wallet, event_id))
                return await uow.finish(command.key, result)

        return await self._write(command.key, apply, fast, balance_change=True, explain=explain)

    async def set_frozen(self, wallet_id: str, request_id: str, *, freeze: bool) -> WriteResult:
        """Freeze or unfreeze; already in that state = success without a new event."""
        validation.wallet_id(wallet_id)
        validation.request_id(request_id)
        method = "FreezeWallet" if freeze else "UnfreezeWallet"
        key = WriteKey(method, request_id, domain.fingerprint(method, wallet_id))
        audit_id = audit_id_var.get()

        async def apply(uow: WalletUnitOfWork, now: datetime) -> WriteResult:
            wallet = await uow.lock_wallet(wallet_id)
            if wallet is None:
                raise WalletNotFoundError(wallet_id)
            event_type = domain.plan_status_change(wallet, freeze)
            if event_type is None:
                return await uow.finish(key, WriteResult(wallet))
            at = domain.next_timestamp(now, wallet.updated_at)
            changed = replace(
                wallet,
                status=domain.status_after(event_type, wallet.status),
                version=wallet.version + 1,
                updated_at=at,
            )
            event = _event(changed, event_type, request_id, at, audit_id)
            await uow.save_change(changed, event)
            return await uow.finish(key, WriteResult(changed, event))

        return await self._write(key, apply)

    # --- the write skeleton ----------------------------------------------------------

    async def _write(
        self,
        key: WriteKey,
        apply: Apply,
        fast: FastApply | None = None,
        *,
        balance_change: bool = False,
        explain: Explain | None = None,
    ) -> WriteResult:
        """Run one idempotent write in one unit of work; see the module docstring."""
        error: WalletPlatformError | None = None
        result: WriteResult | None = None
        async with self.store.unit_of_work() as uow:
            now = self._clock()
            if fast is not None:
                result = await fast(uow, now)
            elif not await uow.claim(key, now):
                result = await _replay(uow, key, explain)
            if result is None:
                try:
                    result = await apply(uow, now)
                except UNRECORDED_ERRORS:
                    raise  # no definite outcome for this key: rolled back, claim and all
                except WalletPlatformError as rejected:
                    error = rejected
                    await uow.record_error(key, rejected)
            await uow.commit()
        if error is not None:
            raise error
        assert result is not None
        if balance_change and not result.replayed:
            await failpoint("wallet.after_commit")
        return result


async def _replay(
    uow: WalletUnitOfWork, key: WriteKey, explain: Explain | None = None
) -> WriteResult:
    """The stored outcome of an earlier request with this key (or why it conflicts)."""
    stored = await uow.stored_outcome(key)
    if not stored.same_request and explain is not None:
        await explain(uow)  # raises the most precise reason
    return stored.replay()


async def _apply_portable(
    uow: WalletUnitOfWork, command: MoveCommand, now: datetime
) -> WriteResult:
    """Lock (hold, then wallet), let the domain decide, write: the portable path.

    Raises the domain's error when a rule forbids the change; nothing is written then.
    """
    action = command.hold_action
    settled_state: str | None = None
    if action is not None:
        settled_state = command.check_hold(await uow.hold(command.transfer_id, lock=True))
    wallet = await uow.lock_wallet(command.wallet_id)
    if wallet is None:
        raise WalletNotFoundError(command.wallet_id)
    balance = domain.plan_movement(wallet, command.movement, command.amount, command.currency)
    at = domain.next_timestamp(now, wallet.updated_at)
    changed = replace(wallet, balance=balance, version=wallet.version + 1, updated_at=at)
    event = command.event(changed, at=at)
    await uow.save_change(changed, event)
    if action is holds.HoldAction.OPEN:
        await uow.open_hold(command.new_hold(wallet.currency), at)
    elif settled_state is not None:
        await uow.settle_hold(command.transfer_id, settled_state, at)
    return WriteResult(changed, event)


def _event(
    wallet: domain.Wallet, event_type: str, request_id: str, at: datetime, audit_id: str | None
) -> domain.WalletEvent:
    """A status event (created, frozen, unfrozen): amount 0, no transfer."""
    return domain.WalletEvent(
        event_id=str(uuid.uuid4()),
        wallet_id=wallet.wallet_id,
        sequence=wallet.version,
        type=event_type,
        amount=0,
        balance_after=wallet.balance,
        currency=wallet.currency,
        transfer_id=None,
        request_id=request_id,
        audit_id=audit_id,
        occurred_at=at,
    )
