"""The saga writes of one transaction: :class:`SagaUnitOfWork`.

    async with SagaUnitOfWork(db) as uow:
        await uow.finish(decision, owner, outbox_row)
        await uow.commit()

Every write that moves a saga is *fenced*: it applies only while the writer still
holds the saga's lease and the saga is still in the state the writer read; otherwise
:class:`~saga_orchestrator.domain.LeaseLostError` is raised and, the block failing,
nothing of the transaction is committed. What each write contains is the domain's
decision (``Transfer.begin_step``, ``Transfer.succeed_step``...); this module only
turns it into statements.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import insert, or_, select, update

from saga_orchestrator.adapters.queries import UNFINISHED
from saga_orchestrator.adapters.rows import insert_values, new_step, step_values
from saga_orchestrator.domain import LeaseLostError, StepFinish, StepName, Transfer
from wallet_platform.storage.schema import outbox, transfer_steps, transfers
from wallet_platform.storage.unit_of_work import CoreUnitOfWork


def finish_values(finish: StepFinish) -> dict[str, Any]:
    """The ``transfers`` columns a finished step sets (the others are kept)."""
    after = finish.after
    values: dict[str, Any] = {
        "state": after.state.value,
        "updated_at": after.updated_at,
        "attempts": after.attempts,
        "last_error": None,
        "next_attempt_at": None,
    }
    if finish.begin_next is not None or after.is_terminal:
        values["lease_expires_at"] = after.lease_expires_at
    if after.is_terminal:
        values["lease_owner"] = None
    if finish.records_failure:
        values["failure_reason"] = after.failure_reason
        values["failure_code"] = after.failure_code
    return values


class SagaUnitOfWork(CoreUnitOfWork):
    """One transaction of saga writes (SQLAlchemy Core, SQLite and PostgreSQL)."""

    async def insert(self, transfer: Transfer) -> None:
        """A new saga and the step rows it already has (the first debit call)."""
        await self.conn.execute(insert(transfers).values(**insert_values(transfer)))
        for step in transfer.steps:
            await self.conn.execute(
                insert(transfer_steps).values(step_values(transfer.transfer_id, step))
            )

    async def begin_step(
        self, before: Transfer, after: Transfer, step: StepName, owner: str
    ) -> None:
        """One more call of ``step`` (``Transfer.begin_step`` made ``after``)."""
        await self._fence(
            before,
            owner,
            {"lease_expires_at": after.lease_expires_at, "attempts": transfers.c.attempts + 1},
        )
        await self._count_call(after, step, new=before.step(step) is None)

    async def record_failure(
        self, before: Transfer, after: Transfer, step: StepName, owner: str
    ) -> None:
        """A transient failure (``Transfer.record_failure`` made ``after``)."""
        await self._fence(
            before,
            owner,
            {
                "last_error": after.last_error,
                "next_attempt_at": after.next_attempt_at,
                "lease_expires_at": after.lease_expires_at,
            },
        )
        await self.conn.execute(
            update(transfer_steps)
            .where(
                transfer_steps.c.transfer_id == before.transfer_id,
                transfer_steps.c.name == step.value,
            )
            .values(error=after.last_error)
        )

    async def finish(
        self, finish: StepFinish, owner: str, outbox_row: dict[str, Any] | None
    ) -> None:
        """The step's outcome, the next state, the next call, the milestone: one write."""
        transfer_id = finish.before.transfer_id
        await self._fence(finish.before, owner, finish_values(finish))
        step_update: dict[str, Any] = {
            "outcome": finish.outcome.value,
            "finished_at": finish.after.updated_at,
        }
        if finish.step_error:
            step_update["error"] = finish.step_error
        await self.conn.execute(
            update(transfer_steps)
            .where(
                transfer_steps.c.transfer_id == transfer_id,
                transfer_steps.c.name == finish.step.value,
            )
            .values(**step_update)
        )
        if finish.begin_next is not None:
            await self._count_call(finish.after, finish.begin_next, new=finish.next_is_new)
        if outbox_row is not None:
            await self.conn.execute(insert(outbox).values(**outbox_row))

    async def claim_due(
        self, owner: str, now: datetime, lease_until: datetime, limit: int, *, skip_locked: bool
    ) -> list[str]:
        """Lease unfinished sagas nobody holds (never leased, released, or expired).

        ``skip_locked`` (PostgreSQL): concurrent claimers skip each other's rows instead
        of blocking on, or both taking, the same saga. SQLite's write transaction
        already serialises claimers.
        """
        candidates = (
            select(transfers.c.transfer_id)
            .where(
                transfers.c.state.in_(UNFINISHED),
                or_(transfers.c.lease_expires_at.is_(None), transfers.c.lease_expires_at < now),
            )
            .order_by(transfers.c.created_at)
            .limit(limit)
        )
        if skip_locked:
            candidates = candidates.with_for_update(skip_locked=True)
        ids = list((await self.conn.execute(candidates)).scalars())
        if ids:
            await self.conn.execute(
                update(transfers)
                .where(transfers.c.transfer_id.in_(ids))
                .values(lease_owner=owner, lease_expires_at=lease_until)
            )
        return ids

    async def release(self, transfer_id: str, owner: str) -> None:
        """Give a saga back (shutdown) so another replica can take it at once."""
        await self.conn.execute(
            update(transfers)
            .where(transfers.c.transfer_id == transfer_id, transfers.c.lease_owner == owner)
            .values(lease_owner=None, lease_expires_at=None)
        )

    async def _count_call(self, after: Transfer, step: StepName, *, new: bool) -> None:
        """Count one call of ``step``: its new RUNNING row, or one more attempt on it."""
        if new:
            await self.conn.execute(
                insert(transfer_steps).values(step_values(after.transfer_id, new_step(after, step)))
            )
            return
        await self.conn.execute(
            update(transfer_steps)
            .where(
                transfer_steps.c.transfer_id == after.transfer_id,
                transfer_steps.c.name == step.value,
            )
            .values(attempts=transfer_steps.c.attempts + 1)
        )

    async def _fence(self, transfer: Transfer, owner: str, values: dict[str, Any]) -> None:
        result = await self.conn.execute(
            update(transfers)
            .where(
                transfers.c.transfer_id == transfer.transfer_id,
                transfers.c.lease_owner == owner,
                transfers.c.state == transfer.state.value,
            )
            .values(**values)
        )
        if result.rowcount != 1:
            raise lease_lost(transfer, owner)


def lease_lost(transfer: Transfer, owner: str) -> LeaseLostError:
    return LeaseLostError(
        f"transfer {transfer.transfer_id}: lease lost or state moved on "
        f"(expected {transfer.state} owned by {owner})"
    )
