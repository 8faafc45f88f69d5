"""The wallet service's unit of work: one write transaction, spoken in domain terms.

``WalletService`` opens one per write (:meth:`WalletStore.unit_of_work`), calls the
methods below with domain objects (keys, wallets, events, holds, results) and ends
with :meth:`commit`; leaving the block without it rolls everything back. The unit of
work owns the transaction and every statement in it: SQLAlchemy Core
(:mod:`ledger_sql`, :mod:`idempotency_sql`, :mod:`hold_store`) on both backends, and on
PostgreSQL the single-request statements of :mod:`pg_move`. It encodes each outcome
for storage and each event for the outbox (:mod:`codec`), so the service never sees
bytes, rows or protobufs.

A database failure that leaves nothing applied and is safe to retry (a lock or
statement timeout, a deadlock, a serialization failure; SQLite's "database is
locked") leaves the block as ``UnavailableError``: the client retries the same
request_id. A lost connection is ``UnavailableError`` too (the platform's base).
"""

from __future__ import annotations

from datetime import datetime
from types import TracebackType
from typing import Self

from sqlalchemy.exc import DBAPIError

from wallet_platform.errors import UnavailableError, WalletPlatformError, error_to_record
from wallet_platform.observability import tracing
from wallet_platform.storage.unit_of_work import CoreUnitOfWork
from wallet_service import domain, holds
from wallet_service.adapters import codec, hold_store, idempotency_sql, ledger_sql, pg_move
from wallet_service.moves import MoveCommand

# PostgreSQL SQLSTATEs after which the transaction was rolled back and a retry is safe:
# serialization failure, deadlock, lock timeout, statement timeout / cancel.
TRANSIENT_SQLSTATES = frozenset({"40001", "40P01", "55P03", "57014"})


def is_transient(failure: DBAPIError) -> bool:
    """A lock or statement timeout, deadlock or SQLite lock: safe to retry, never stored."""
    sqlstate = getattr(failure.orig, "sqlstate", None)
    if sqlstate in TRANSIENT_SQLSTATES:
        return True
    return "database is locked" in str(failure.orig)


def _busy(failure: DBAPIError) -> UnavailableError:
    return UnavailableError(
        f"database busy ({type(failure.orig).__name__}), retry the same request_id"
    )


class WalletUnitOfWork(CoreUnitOfWork):
    """One write transaction of the wallet service (see the module docstring)."""

    async def __aenter__(self) -> Self:
        try:
            return await super().__aenter__()
        except DBAPIError as failure:  # SQLite's BEGIN IMMEDIATE can find the lock taken
            if is_transient(failure):
                raise _busy(failure) from failure
            raise

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await super().__aexit__(exc_type, error, traceback)
        if isinstance(error, DBAPIError) and is_transient(error):
            # Rolled back, nothing applied: the client retries with the same key.
            raise _busy(error) from error

    # --- idempotency -----------------------------------------------------------------

    async def claim(self, key: domain.WriteKey, now: datetime) -> bool:
        """Claim ``key`` for this write; False when it is taken (see :meth:`stored_outcome`)."""
        return await idempotency_sql.claim(self.conn, key, now)

    async def stored_outcome(self, key: domain.WriteKey) -> codec.StoredOutcome:
        """What a taken ``key`` holds (the key was just found taken in this transaction)."""
        record = await idempotency_sql.get_record(self.conn, key)
        if record is None:  # pragma: no cover - the claim just saw it
            raise RuntimeError(f"idempotency record {key.request_id!r} vanished")
        return codec.stored_outcome(key, record)

    async def record_error(self, key: domain.WriteKey, error: WalletPlatformError) -> None:
        """Store a rejection under the claimed ``key``: a retry gets the same error."""
        await idempotency_sql.finish_record(self.conn, key, error=error_to_record(error))

    async def finish(self, key: domain.WriteKey, result: domain.WriteResult) -> domain.WriteResult:
        """Store ``result`` under the claimed ``key`` and queue its event's outbox row;
        ``result`` carrying its stored form (``stored_response``)."""
        encoded = codec.encode(key.method, result, tracing.current_traceparent())
        if encoded.outbox_row is not None and self.db.is_postgres:
            await pg_move.finish(self.conn, key, encoded.response, encoded.outbox_row)
        else:
            if encoded.outbox_row is not None:
                await ledger_sql.insert_outbox(self.conn, encoded.outbox_row)
            await idempotency_sql.finish_record(self.conn, key, response=encoded.response)
        return codec.as_stored(result, encoded)

    # --- wallets and events ----------------------------------------------------------

    async def insert_wallet(self, wallet: domain.Wallet, event: domain.WalletEvent) -> bool:
        """A new wallet and its first event; False (nothing written) when the id is taken."""
        if not await ledger_sql.insert_wallet(self.conn, wallet):
            return False
        await ledger_sql.insert_event(self.conn, event)
        return True

    async def lock_wallet(self, wallet_id: str) -> domain.Wallet | None:
        """The wallet, locked until the transaction ends (None: no such wallet)."""
        return await ledger_sql.get_wallet(self.conn, wallet_id, for_update=True)

    async def save_change(self, wallet: domain.Wallet, event: domain.WalletEvent) -> None:
        """Write the new state of a LOCKED wallet and append its event."""
        await ledger_sql.save_change(self.conn, wallet, event)

    # --- transfer holds --------------------------------------------------------------

    async def hold(self, transfer_id: str, *, lock: bool = False) -> holds.Hold | None:
        """The transfer's hold; with ``lock`` it stays locked until the transaction ends."""
        return await hold_store.get_hold(self.conn, transfer_id, for_update=lock)

    async def open_hold(self, hold: holds.Hold, at: datetime) -> None:
        await hold_store.open_hold(self.conn, hold, at)

    async def settle_hold(self, transfer_id: str, state: str, at: datetime) -> None:
        await hold_store.settle_hold(self.conn, transfer_id, state, at)

    # --- the PostgreSQL single-request statement -------------------------------------

    async def try_move(
        self, command: MoveCommand, event_id: str, now: datetime
    ) -> pg_move.FastMove:
        """PostgreSQL only: claim, check and apply ``command`` in one statement.

        ``claimed`` False: the key is taken (:meth:`stored_outcome`). ``wallet`` None
        with the key claimed: a rule does not hold; the portable path (lock, ask the
        domain) says which, in this same transaction.
        """
        return await pg_move.move(self.conn, command, event_id, now)
