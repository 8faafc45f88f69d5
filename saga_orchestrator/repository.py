"""Persistence of sagas: writes what the domain decided, reads what was written.

The domain (``saga_orchestrator.domain``) decides every change of a saga; this class
only persists it, through the adapters (``saga_orchestrator.adapters``), each write
one short transaction so the saga's progress is always on disk.

Every write that moves a saga is *fenced*: it only applies while the writer still
holds the saga's lease (``lease_owner``) and the saga is still in the state the
writer read. A replica that lost its lease (it stalled, another one took over) gets
:class:`LeaseLostError` and stops driving that saga; its late writes change nothing.
Correctness does not depend on the lease itself (every step is idempotent on its
request_id in WalletService); the lease only keeps two replicas from doing the same
work at once.

On PostgreSQL, :meth:`TransferRepository.insert` and
:meth:`TransferRepository.finish_step` (the writes every transfer makes) go through a
:class:`~saga_orchestrator.group_commit.SagaGroupCommitter`: the writes of sagas that
write at the same moment share one statement, each with its own fence and outcome.
SQLite runs each as its own transaction.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from sqlalchemy.exc import IntegrityError

from saga_orchestrator.adapters.grouped import finish_write, insert_write
from saga_orchestrator.adapters.queries import StateCount, Summary, TransferQueries
from saga_orchestrator.adapters.unit_of_work import SagaUnitOfWork, lease_lost
from saga_orchestrator.domain import (
    DuplicateRequestError,
    LeaseLostError,
    StepFinish,
    StepName,
    Transfer,
)
from saga_orchestrator.group_commit import SagaGroupCommitter
from wallet_platform.storage.database import Database

__all__ = [
    "DuplicateRequestError",
    "LeaseLostError",
    "OutboxRowFactory",
    "StateCount",
    "Summary",
    "TransferRepository",
]

# Builds the outbox row announcing a terminal transfer (see ``milestones``); None = no row.
OutboxRowFactory = Callable[[Transfer, datetime], dict[str, Any] | None]


class TransferRepository(TransferQueries):
    """The reads (:class:`TransferQueries`) and the fenced writes of sagas."""

    def __init__(self, db: Database) -> None:
        super().__init__(db)
        self.group: SagaGroupCommitter | None = SagaGroupCommitter(db) if db.is_postgres else None

    async def drain(self) -> None:
        """Wait for the grouped writes in flight (shutdown, before leases are released)."""
        if self.group is not None:
            await self.group.stop()

    async def insert(self, transfer: Transfer) -> Transfer:
        """Persist a new PENDING saga already leased to its creator.

        Step rows already in ``transfer.steps`` are written in the same transaction:
        CreateTransfer passes the first debit call as begun (``Transfer.begin_step``),
        which makes this insert the debit's 'before' write too and saves a transaction
        per transfer. A request_id that exists raises :class:`DuplicateRequestError`.
        """
        try:
            if self.group is not None:
                if not await self.group.submit(insert_write(transfer)):
                    raise DuplicateRequestError(transfer.request_id)
                return transfer
            async with SagaUnitOfWork(self.db) as uow:
                await uow.insert(transfer)
                await uow.commit()
        except IntegrityError:
            raise DuplicateRequestError(transfer.request_id) from None
        return transfer

    async def begin_attempt(
        self,
        transfer: Transfer,
        step: StepName,
        owner: str,
        now: datetime,
        lease_until: datetime,
    ) -> Transfer:
        """Record that a call of ``step`` is about to be made (the 'before' write)."""
        after = transfer.begin_step(step, now, lease_until)
        async with SagaUnitOfWork(self.db) as uow:
            await uow.begin_step(transfer, after, step, owner)
            await uow.commit()
        return after

    async def record_failure(
        self,
        transfer: Transfer,
        step: StepName,
        owner: str,
        error: str,
        next_attempt_at: datetime,
        lease_until: datetime,
    ) -> Transfer:
        """A call failed transiently: keep the error visible (summary) until it works."""
        after = transfer.record_failure(step, error, next_attempt_at, lease_until)
        async with SagaUnitOfWork(self.db) as uow:
            await uow.record_failure(transfer, after, step, owner)
            await uow.commit()
        return after

    async def finish_step(
        self, finish: StepFinish, owner: str, *, outbox_row: OutboxRowFactory | None = None
    ) -> Transfer:
        """The 'after' write of ``finish`` (``Transfer.succeed_step``/``reject_step``).

        When the saga becomes terminal the lease is released and the milestone outbox
        row (``outbox_row``) is inserted in this same write, so the announcement exists
        exactly when the terminal state does.
        """
        after = finish.after
        row = outbox_row(after, after.updated_at) if after.is_terminal and outbox_row else None
        if self.group is not None:
            if not await self.group.submit(finish_write(finish, owner, row)):
                raise lease_lost(finish.before, owner)
            return after
        async with SagaUnitOfWork(self.db) as uow:
            await uow.finish(finish, owner, row)
            await uow.commit()
        return after

    async def claim_due(
        self,
        owner: str,
        now: datetime,
        lease_until: datetime,
        limit: int,
    ) -> list[str]:
        """Lease unfinished sagas nobody holds (never leased, released, or expired)."""
        async with SagaUnitOfWork(self.db) as uow:
            ids = await uow.claim_due(
                owner, now, lease_until, limit, skip_locked=self.db.is_postgres
            )
            await uow.commit()
            return ids

    async def release(self, transfer_id: str, owner: str) -> None:
        """Give a saga back (shutdown) so another replica can take it at once."""
        async with SagaUnitOfWork(self.db) as uow:
            await uow.release(transfer_id, owner)
            await uow.commit()
