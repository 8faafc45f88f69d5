"""WalletService use cases: validation, idempotency, one transaction per write.

Each write follows the same shape inside ONE transaction:

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
   the hold, queue the outbox row, and store the outcome under the key;
4. commit; after a balance change hit the ``wallet.after_commit`` failpoint; reply.

Business rejections (not found, frozen, insufficient funds, currency mismatch,
overflow, wallet id taken) are stored too, so a retry gets the very same error even if
the wallet changed meanwhile. Malformed input (INVALID_ARGUMENT) is rejected before
any database work and is not stored: the key was never valid. A currency that new
wallets may not hold (``wallet_platform.currency_policy``) is INVALID_ARGUMENT too,
but a request_id that already opened its wallet is answered with that wallet first.
A hold's refusal is not stored either (the transaction rolls back): it is about the
transfer, not the key.

On PostgreSQL steps 1-3 of a balance change take two statements (see
:mod:`wallet_service.pg_fast_path`), or share a batch with concurrent changes
(:mod:`wallet_service.group_commit`); when the conditional update does not apply, the
portable path (lock, ask the domain, write) runs in the same transaction.

Write RPCs return their protobuf response message: it is exactly what the
idempotency record stores, so the message is built once and a replay returns the
same bytes.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from google.protobuf.message import Message
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection

from wallet_platform import page_tokens, validation
from wallet_platform.clock import Clock, ensure_utc, utcnow
from wallet_platform.currency_policy import CurrencyPolicy
from wallet_platform.errors import (
    IdempotencyKeyReusedError,
    InvalidArgumentError,
    NotFoundError,
    UnavailableError,
    WalletAlreadyExistsError,
    WalletNotFoundError,
    WalletPlatformError,
    error_from_record,
    error_to_record,
)
from wallet_platform.failpoints import failpoint
from wallet_platform.messaging.events import wallet_event_outbox_row
from wallet_platform.observability import tracing
from wallet_platform.observability.logs import audit_id_var
from wallet_platform.storage.connection_errors import is_contention
from wallet_platform.storage.database import Database
from wallet_service import domain, holds, moves, pg_fast_path, repository
from wallet_service.group_commit import GroupCommitter, MoveRequest
from wallet_service.messages import RESPONSE_TYPES, event_to_pb, wallet_to_pb
from wallet_service.repository import WriteKey

Apply = Callable[[AsyncConnection, datetime], Awaitable[Message]]
FastApply = Callable[[AsyncConnection, datetime], Awaitable["Message | _Replay | None"]]
# Raises why a taken key conflicts (e.g. the transfer's hold was already posted).
Explain = Callable[[AsyncConnection], Awaitable[None]]

# Rejections never stored under the key: the transaction rolls back, claim included.
# UNAVAILABLE has no definite outcome (the retry must really run again); a hold's
# refusal says nothing about the step's key (see wallet_service.holds).
UNRECORDED_ERRORS: tuple[type[WalletPlatformError], ...] = (
    UnavailableError,
    *holds.UNRECORDED_ERRORS,
)

# ListWalletEvents' page tokens (wallet_platform.page_tokens), bound to the wallet.
EVENTS_LISTING = "wallet_events"


@dataclass
class _Replay:
    response: Message


class WalletService:
    """The use cases; the gRPC servicer only translates to and from these calls."""

    def __init__(
        self,
        db: Database,
        clock: Clock = utcnow,
        *,
        group_commit: bool = True,
        currencies: CurrencyPolicy | None = None,
    ) -> None:
        self._db = db
        self._clock = clock
        self._currencies = currencies or CurrencyPolicy.from_setting("")
        self._fast_path = db.is_postgres
        self._group = (
            GroupCommitter(db, self._response, clock) if group_commit and db.is_postgres else None
        )

    # --- writes ----------------------------------------------------------------------

    async def create_wallet(self, wallet_id: str, currency: str, request_id: str) -> Message:
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
            earlier = await self._earlier_outcome(key)
            if earlier is not None:
                return earlier
            raise
        new_id = wallet_id or str(uuid.uuid4())

        async def apply(conn: AsyncConnection, now: datetime) -> Message:
            wallet = domain.Wallet(new_id, currency, 0, domain.ACTIVE, 1, now, now)
            if not await repository.insert_wallet(conn, wallet):
                raise WalletAlreadyExistsError(
                    f"wallet {new_id!r} already exists", field="wallet_id"
                )
            event = self._event(
                wallet, domain.WALLET_CREATED, 0, None, request_id, now, audit_id_var.get()
            )
            await repository.insert_event(conn, event)
            return await self._finish(conn, key, wallet, event)

        return await self._write(key, apply)

    async def deposit(self, wallet_id: str, amount: int, request_id: str) -> Message:
        return await self.move(domain.Movement.DEPOSIT, wallet_id, amount, request_id)

    async def withdraw(self, wallet_id: str, amount: int, request_id: str) -> Message:
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
    ) -> Message:
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

    async def _move(self, command: moves.MoveCommand) -> Message:
        if self._group is not None:  # PostgreSQL group commit (wallet_service.group_commit)
            future = asyncio.get_running_loop().create_future()
            grouped = await self._group.submit(MoveRequest(command, future))
            if grouped is not None:
                await failpoint("wallet.after_commit")
                return grouped
            # Not decided in a batch (replay, rejection, failed batch): the single path.

        async def apply(conn: AsyncConnection, now: datetime) -> Message:
            wallet, event = await moves.apply_portable(conn, command, now)
            return await self._finish(conn, command.key, wallet, event)

        async def explain(conn: AsyncConnection) -> None:
            await moves.explain_key_conflict(conn, command)

        fast = None
        if self._fast_path:

            async def fast(conn: AsyncConnection, now: datetime) -> Message | _Replay | None:
                event_id = str(uuid.uuid4())
                result = await pg_fast_path.move(conn, command, event_id, now)
                if not result.claimed:
                    return await self._replay(conn, command.key, explain)
                if result.wallet is None:
                    return None  # key claimed, rule not met: the portable path says why
                event = command.event(result.wallet, event_id)
                response, stored, outbox_row = self._response(command.method, result.wallet, event)
                assert outbox_row is not None
                outbox_row["traceparent"] = tracing.current_traceparent()
                await pg_fast_path.finish(conn, command, stored, outbox_row)
                return response

        return await self._write(command.key, apply, fast, balance_change=True, explain=explain)

    async def set_frozen(self, wallet_id: str, request_id: str, *, freeze: bool) -> Message:
        """Freeze or unfreeze; already in that state = success without a new event."""
        validation.wallet_id(wallet_id)
        validation.request_id(request_id)
        method = "FreezeWallet" if freeze else "UnfreezeWallet"
        key = WriteKey(method, request_id, domain.fingerprint(method, wallet_id))

        async def apply(conn: AsyncConnection, now: datetime) -> Message:
            wallet = await repository.get_wallet(conn, wallet_id, for_update=True)
            if wallet is None:
                raise WalletNotFoundError(wallet_id)
            event_type = domain.plan_status_change(wallet, freeze)
            if event_type is None:
                return await self._finish(conn, key, wallet, None)
            at = domain.next_timestamp(now, wallet.updated_at)
            changed = domain.Wallet(
                wallet.wallet_id,
                wallet.currency,
                wallet.balance,
                domain.status_after(event_type, wallet.status),
                wallet.version + 1,
                wallet.created_at,
                at,
            )
            event = self._event(changed, event_type, 0, None, request_id, at, audit_id_var.get())
            await repository.save_change(conn, changed, event)
            return await self._finish(conn, key, changed, event)

        return await self._write(key, apply)

    # --- reads -----------------------------------------------------------------------

    async def get_wallet(
        self, wallet_id: str, as_of_sequence: int = 0, as_of_time: datetime | None = None
    ) -> domain.Wallet:
        """The wallet now, or as it stood after event ``as_of_sequence`` / at ``as_of_time``."""
        validation.wallet_id(wallet_id)
        if as_of_sequence < 0:
            raise InvalidArgumentError(
                f"as_of_sequence must be >= 0, got {as_of_sequence}", field="as_of_sequence"
            )
        if self._fast_path and as_of_sequence == 0 and as_of_time is None:
            # The plain read (the orchestrator's currency check): no SQLAlchemy round.
            current = await repository.pg_read_wallet(self._db, wallet_id)
            if current is None:
                raise WalletNotFoundError(wallet_id)
            return current
        async with self._db.read() as conn:
            wallet = await repository.get_wallet(conn, wallet_id)
            if wallet is None:
                raise WalletNotFoundError(wallet_id)
            if as_of_sequence > 0:
                if as_of_sequence > wallet.version:
                    raise InvalidArgumentError(
                        f"as_of_sequence {as_of_sequence} is after the wallet's last event "
                        f"({wallet.version})",
                        field="as_of_sequence",
                    )
                event = await repository.event_at_sequence(conn, wallet_id, as_of_sequence)
            elif as_of_time is not None:
                event = await repository.last_event_at_time(conn, wallet_id, ensure_utc(as_of_time))
                if event is None:
                    raise NotFoundError(
                        f"wallet {wallet_id!r} did not exist yet at {as_of_time.isoformat()}",
                        field="as_of_time",
                    )
            else:
                return wallet
            if event is None:  # the log is gap-free, so only a broken database gets here
                raise NotFoundError(f"event {as_of_sequence} of wallet {wallet_id!r} is missing")
            status = await repository.status_at_sequence(conn, wallet_id, event.sequence)
        return domain.state_after(wallet, event, status)

    async def list_events(
        self, wallet_id: str, page_size: int = 0, page_token: str = ""
    ) -> tuple[list[domain.WalletEvent], str]:
        """One page of the log, newest first, and the token of the next page ('' at end)."""
        validation.wallet_id(wallet_id)
        size = validation.page_size(page_size)
        before = self._decode_token(wallet_id, page_token)
        async with self._db.read() as conn:
            events = await repository.events_page(conn, wallet_id, before, size + 1)
            if not events and not await repository.wallet_exists(conn, wallet_id):
                raise WalletNotFoundError(wallet_id)
        next_token = ""
        if len(events) > size:
            events = events[:size]
            next_token = page_tokens.issue(
                EVENTS_LISTING, {"wallet_id": wallet_id}, {"s": events[-1].sequence}
            )
        return events, next_token

    @staticmethod
    def _decode_token(wallet_id: str, page_token: str) -> int | None:
        """The sequence the next page starts below (a token bound to ``wallet_id``)."""
        position = page_tokens.redeem(
            page_token, EVENTS_LISTING, {"wallet_id": wallet_id}, {"s": int}
        )
        if position is None:
            return None
        sequence = int(position["s"])
        if sequence < 1:
            raise InvalidArgumentError("page_token is malformed", field="page_token")
        return sequence

    # --- the write skeleton ----------------------------------------------------------

    async def _write(
        self,
        key: WriteKey,
        apply: Apply,
        fast: FastApply | None = None,
        *,
        balance_change: bool = False,
        explain: Explain | None = None,
    ) -> Message:
        """Run one idempotent write in one transaction; see the module docstring."""
        try:
            return await self._write_once(
                key, apply, fast, balance_change=balance_change, explain=explain
            )
        except DBAPIError as failure:
            if is_transient(failure):
                # Rolled back, nothing applied: the client retries with the same key.
                raise UnavailableError(
                    f"database busy ({type(failure.orig).__name__}), retry the same request_id"
                ) from failure
            raise

    async def _write_once(
        self,
        key: WriteKey,
        apply: Apply,
        fast: FastApply | None,
        *,
        balance_change: bool,
        explain: Explain | None,
    ) -> Message:
        error: WalletPlatformError | None = None
        async with self._db.transaction() as conn:
            now = self._clock()
            outcome: Message | _Replay | None = None
            if fast is not None:
                outcome = await fast(conn, now)
            elif not await repository.claim(conn, key.request_id, key.fingerprint, now, key.scope):
                outcome = await self._replay(conn, key, explain)
            if outcome is None:
                try:
                    outcome = await apply(conn, now)
                except UNRECORDED_ERRORS:
                    raise  # no definite outcome for this key: rolled back, claim and all
                except WalletPlatformError as rejected:
                    error = rejected
                    await repository.finish_record(
                        conn, key.request_id, scope=key.scope, error=error_to_record(rejected)
                    )
        if isinstance(outcome, _Replay):
            return outcome.response
        if error is not None:
            raise error
        if balance_change:
            await failpoint("wallet.after_commit")
        assert outcome is not None
        return outcome

    async def _earlier_outcome(self, key: WriteKey) -> Message | None:
        """The stored outcome of ``key`` (replayed), or None when it is new."""
        async with self._db.read() as conn:
            if await repository.get_record(conn, key.request_id, key.scope) is None:
                return None
            return (await self._replay(conn, key)).response

    async def _replay(
        self, conn: AsyncConnection, key: WriteKey, explain: Explain | None = None
    ) -> _Replay:
        """The stored outcome of an earlier request with this key (or why it conflicts)."""
        record = await repository.get_record(conn, key.request_id, key.scope)
        if record is None:  # pragma: no cover - the claim just saw it
            raise RuntimeError(f"idempotency record {key.request_id!r} vanished")
        if record.fingerprint != key.fingerprint:
            if explain is not None:
                await explain(conn)  # raises the most precise reason
            raise IdempotencyKeyReusedError(
                f"request_id {key.request_id!r} was already used with other parameters "
                "(or another method)",
                field="request_id",
            )
        if record.status_code != "OK":
            raise error_from_record(
                record.status_code, record.error_reason or "", record.error_message or ""
            )
        response = RESPONSE_TYPES[key.method].FromString(record.response or b"")
        response.replayed = True  # type: ignore[attr-defined]
        return _Replay(response)

    def _event(
        self,
        wallet: domain.Wallet,
        event_type: str,
        amount: int,
        transfer_id: str | None,
        request_id: str,
        at: datetime,
        audit_id: str | None = None,
        *,
        event_id: str | None = None,
    ) -> domain.WalletEvent:
        return domain.WalletEvent(
            event_id=event_id or str(uuid.uuid4()),
            wallet_id=wallet.wallet_id,
            sequence=wallet.version,
            type=event_type,
            amount=amount,
            balance_after=wallet.balance,
            currency=wallet.currency,
            transfer_id=transfer_id,
            request_id=request_id,
            audit_id=audit_id,
            occurred_at=at,
        )

    def _response(
        self, method: str, wallet: domain.Wallet, event: domain.WalletEvent | None
    ) -> tuple[Message, bytes, dict[str, Any] | None]:
        """Build the response protobuf once: its bytes are stored, its event is queued."""
        response_type = RESPONSE_TYPES[method]
        response = response_type(wallet=wallet_to_pb(wallet))
        if event is None:
            return response, response.SerializeToString(), None
        event_pb = event_to_pb(event)
        if "event" in response_type.DESCRIPTOR.fields_by_name:
            response.event.CopyFrom(event_pb)  # type: ignore[attr-defined]
        outbox_row = wallet_event_outbox_row(event_pb, event.occurred_at)
        return response, response.SerializeToString(), outbox_row

    async def _finish(
        self,
        conn: AsyncConnection,
        key: WriteKey,
        wallet: domain.Wallet,
        event: domain.WalletEvent | None,
    ) -> Message:
        """Queue the event's outbox row, store the response, return it."""
        response, stored, outbox_row = self._response(key.method, wallet, event)
        if outbox_row is not None:
            outbox_row["traceparent"] = tracing.current_traceparent()
            await repository.insert_outbox(conn, outbox_row)
        await repository.finish_record(conn, key.request_id, scope=key.scope, response=stored)
        return response


def is_transient(failure: DBAPIError) -> bool:
    """A lock or statement timeout, deadlock or SQLite lock: safe to retry, never stored."""
    return is_contention(failure)
