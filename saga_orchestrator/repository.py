"""Persistence of sagas: the ``transfers`` and ``transfer_steps`` tables (SQLAlchemy Core).

Every write that moves a saga is *fenced*: it only applies while the writer still
holds the saga's lease (``lease_owner``) and the saga is still in the state the
writer read. A replica that lost its lease (it stalled, another one took over) gets
:class:`LeaseLostError` and stops driving that saga; its late writes change nothing.
Correctness does not depend on the lease itself (every step is idempotent on its
request_id in WalletService); the lease only keeps two replicas from doing the same
work at once.

Claiming work (``claim_due``) uses ``SELECT ... FOR UPDATE SKIP LOCKED`` on
PostgreSQL, so concurrent sweepers of several replicas never block on, or both take,
the same saga. On SQLite the write transaction (``BEGIN IMMEDIATE``) already
serialises claimers.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from sqlalchemy import and_, func, insert, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from saga_orchestrator.domain import (
    STEP_POSITION,
    UNFINISHED_STATES,
    Step,
    StepName,
    StepOutcome,
    Transfer,
    TransferState,
    check_transition,
)
from saga_orchestrator.group_commit import (
    FINISH_COLUMNS,
    INSERT_COLUMNS,
    OUTBOX_COLUMNS,
    STEP_COLUMNS,
    SagaGroupCommitter,
    SagaWrite,
)
from wallet_platform.clock import ensure_utc
from wallet_platform.storage.database import Database
from wallet_platform.storage.schema import outbox, transfer_steps, transfers


class LeaseLostError(RuntimeError):
    """This replica no longer owns the saga (or its state moved on): stop driving it."""


class DuplicateRequestError(RuntimeError):
    """A transfer with this request_id already exists (insert lost the race)."""


@dataclass(frozen=True)
class StateCount:
    state: TransferState
    count: int


@dataclass(frozen=True)
class Summary:
    counts: list[StateCount]
    unfinished: int
    oldest_unfinished: Transfer | None
    retrying: list[Transfer]


# Builds the outbox row announcing a terminal transfer (see runner); None = no row.
OutboxRowFactory = Callable[[Transfer, datetime], dict[str, Any] | None]

_UNFINISHED = [state.value for state in UNFINISHED_STATES]


def _utc(value: datetime | None) -> datetime | None:
    return None if value is None else ensure_utc(value)


def _transfer(row: Any, steps: Sequence[Any] = ()) -> Transfer:
    return Transfer(
        transfer_id=row.transfer_id,
        request_id=row.request_id,
        fingerprint=row.fingerprint,
        from_wallet_id=row.from_wallet_id,
        to_wallet_id=row.to_wallet_id,
        amount=int(row.amount),
        currency=row.currency or "",
        state=TransferState(row.state),
        failure_reason=row.failure_reason or "",
        failure_code=row.failure_code or "",
        attempts=int(row.attempts or 0),
        last_error=row.last_error or "",
        next_attempt_at=_utc(row.next_attempt_at),
        lease_owner=row.lease_owner,
        lease_expires_at=_utc(row.lease_expires_at),
        created_at=ensure_utc(row.created_at),
        updated_at=ensure_utc(row.updated_at),
        steps=[
            Step(
                name=StepName(step.name),
                outcome=StepOutcome(step.outcome),
                attempts=int(step.attempts),
                error=step.error or "",
                started_at=ensure_utc(step.started_at),
                finished_at=_utc(step.finished_at),
            )
            for step in steps
        ],
        audit_id=row.audit_id or "",
        traceparent=row.traceparent,
    )


async def _load(conn: AsyncConnection, transfer_id: str) -> Transfer | None:
    row = (
        await conn.execute(select(transfers).where(transfers.c.transfer_id == transfer_id))
    ).first()
    if row is None:
        return None
    steps = (
        await conn.execute(
            select(transfer_steps)
            .where(transfer_steps.c.transfer_id == transfer_id)
            .order_by(transfer_steps.c.position)
        )
    ).all()
    return _transfer(row, steps)


async def _load_many(conn: AsyncConnection, rows: Sequence[Any]) -> list[Transfer]:
    """Transfers with their steps, in the order of ``rows`` (one query for all steps)."""
    if not rows:
        return []
    ids = [row.transfer_id for row in rows]
    step_rows = (
        await conn.execute(
            select(transfer_steps)
            .where(transfer_steps.c.transfer_id.in_(ids))
            .order_by(transfer_steps.c.transfer_id, transfer_steps.c.position)
        )
    ).all()
    by_id: dict[str, list[Any]] = {}
    for step in step_rows:
        by_id.setdefault(step.transfer_id, []).append(step)
    return [_transfer(row, by_id.get(row.transfer_id, ())) for row in rows]


def _step_values(transfer_id: str, step: Step) -> dict[str, Any]:
    return {
        "transfer_id": transfer_id,
        "name": step.name.value,
        "position": STEP_POSITION[step.name],
        "outcome": step.outcome.value,
        "attempts": step.attempts,
        "error": step.error or None,
        "started_at": step.started_at,
        "finished_at": step.finished_at,
    }


def _step_row(transfer_id: str, step: Step) -> tuple[Any, ...]:
    """A new step row for the group committer (``group_commit.STEP_COLUMNS`` order)."""
    values = _step_values(transfer_id, step)
    return tuple(values[c] for c in STEP_COLUMNS)


def begun_step(transfer: Transfer, step: StepName, now: datetime) -> Transfer:
    """``transfer`` with a first call of ``step`` recorded (row RUNNING, attempts 1), for
    :meth:`TransferRepository.insert` to write as the step's 'before' write."""
    return replace(
        transfer,
        attempts=transfer.attempts + 1,
        steps=[*transfer.steps, Step(step, StepOutcome.RUNNING, 1, "", now, None)],
    )


class TransferRepository:
    """Each method is one short transaction; the saga's progress is always on disk.

    On PostgreSQL, :meth:`insert` and :meth:`finish_step` (the writes every transfer
    makes) go through a :class:`~saga_orchestrator.group_commit.SagaGroupCommitter`:
    the writes of sagas that write at the same moment share one statement, each with
    its own fence and outcome (see that module). SQLite runs each as its own
    transaction.
    """

    def __init__(self, db: Database) -> None:
        self.db = db
        self.group: SagaGroupCommitter | None = SagaGroupCommitter(db) if db.is_postgres else None

    async def drain(self) -> None:
        """Wait for the grouped writes in flight (shutdown, before leases are released)."""
        if self.group is not None:
            await self.group.stop()

    # --- reads ---------------------------------------------------------------------

    async def get(self, transfer_id: str) -> Transfer | None:
        async with self.db.read() as conn:
            return await _load(conn, transfer_id)

    async def get_by_request_id(self, request_id: str) -> Transfer | None:
        async with self.db.read() as conn:
            transfer_id = (
                await conn.execute(
                    select(transfers.c.transfer_id).where(transfers.c.request_id == request_id)
                )
            ).scalar_one_or_none()
            if transfer_id is None:
                return None
            return await _load(conn, transfer_id)

    async def list_page(
        self,
        *,
        state: TransferState | None,
        wallet_id: str | None,
        limit: int,
        after: tuple[datetime, str] | None,
    ) -> list[Transfer]:
        """Newest first; ``after`` is the (created_at, transfer_id) of the previous page's
        last item (a keyset cursor: stable while new transfers keep arriving)."""
        query = select(transfers)
        if state is not None:
            query = query.where(transfers.c.state == state.value)
        if wallet_id:
            query = query.where(
                or_(transfers.c.from_wallet_id == wallet_id, transfers.c.to_wallet_id == wallet_id)
            )
        if after is not None:
            created_at, transfer_id = after
            query = query.where(
                or_(
                    transfers.c.created_at < created_at,
                    and_(
                        transfers.c.created_at == created_at,
                        transfers.c.transfer_id < transfer_id,
                    ),
                )
            )
        query = query.order_by(transfers.c.created_at.desc(), transfers.c.transfer_id.desc())
        async with self.db.read() as conn:
            rows = (await conn.execute(query.limit(limit))).all()
            return await _load_many(conn, rows)

    async def summary(self, retrying_limit: int = 100) -> Summary:
        async with self.db.read() as conn:
            count_rows = (
                await conn.execute(
                    select(transfers.c.state, func.count()).group_by(transfers.c.state)
                )
            ).all()
            oldest_row = (
                await conn.execute(
                    select(transfers)
                    .where(transfers.c.state.in_(_UNFINISHED))
                    .order_by(transfers.c.created_at)
                    .limit(1)
                )
            ).first()
            retry_rows = (
                await conn.execute(
                    select(transfers)
                    .where(
                        transfers.c.state.in_(_UNFINISHED),
                        transfers.c.last_error.is_not(None),
                    )
                    .order_by(transfers.c.attempts.desc(), transfers.c.created_at)
                    .limit(retrying_limit)
                )
            ).all()
        counts = sorted(
            (StateCount(TransferState(state), int(count)) for state, count in count_rows),
            key=lambda c: list(TransferState).index(c.state),
        )
        return Summary(
            counts=counts,
            unfinished=sum(c.count for c in counts if c.state in UNFINISHED_STATES),
            oldest_unfinished=None if oldest_row is None else _transfer(oldest_row),
            retrying=[_transfer(row) for row in retry_rows],
        )

    async def changed_since(self, since: datetime, limit: int = 500) -> list[Transfer]:
        """Transfers whose state changed at or after ``since``, oldest change first
        (the watch stream polls this to see changes made by other replicas)."""
        async with self.db.read() as conn:
            rows = (
                await conn.execute(
                    select(transfers)
                    .where(transfers.c.updated_at >= since)
                    .order_by(transfers.c.updated_at, transfers.c.transfer_id)
                    .limit(limit)
                )
            ).all()
            return await _load_many(conn, rows)

    # --- writes --------------------------------------------------------------------

    async def insert(self, transfer: Transfer) -> Transfer:
        """Persist a new PENDING saga already leased to its creator.

        Step rows already in ``transfer.steps`` are written in the same transaction:
        CreateTransfer passes the first debit call as begun (see
        :func:`begun_step`), which makes this insert the debit's 'before' write too and
        saves a transaction per transfer.
        """
        values = {
            "transfer_id": transfer.transfer_id,
            "request_id": transfer.request_id,
            "fingerprint": transfer.fingerprint,
            "from_wallet_id": transfer.from_wallet_id,
            "to_wallet_id": transfer.to_wallet_id,
            "amount": transfer.amount,
            "currency": transfer.currency or None,
            "state": transfer.state.value,
            "attempts": transfer.attempts,
            "lease_owner": transfer.lease_owner,
            "lease_expires_at": transfer.lease_expires_at,
            "audit_id": transfer.audit_id or None,
            "traceparent": transfer.traceparent,
            "created_at": transfer.created_at,
            "updated_at": transfer.updated_at,
        }
        try:
            if self.group is not None:
                created = await self.group.submit(
                    SagaWrite(
                        transfer.transfer_id,
                        transfer.request_id,
                        insert_row=tuple(values[c] for c in INSERT_COLUMNS),
                        step_rows=[_step_row(transfer.transfer_id, s) for s in transfer.steps],
                    )
                )
                if not created:
                    raise DuplicateRequestError(transfer.request_id)
                return transfer
            async with self.db.transaction() as conn:
                await conn.execute(insert(transfers).values(**values))
                for step in transfer.steps:
                    await conn.execute(
                        insert(transfer_steps).values(_step_values(transfer.transfer_id, step))
                    )
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
        """Record that a call of ``step`` is about to be made (the 'before' write).

        Creates the step row (RUNNING) on the first call, counts the call, and renews
        the lease; so after any crash the disk says which call may be in flight.
        Two statements; the returned transfer mirrors them (no re-read).
        """
        position = next((i for i, s in enumerate(transfer.steps) if s.name is step), None)
        async with self.db.transaction() as conn:
            await self._fence(
                conn,
                transfer,
                owner,
                {"lease_expires_at": lease_until, "attempts": transfers.c.attempts + 1},
            )
            await self._begin_step_row(conn, transfer.transfer_id, step, position, now)
        steps = list(transfer.steps)
        if position is None:
            steps.append(Step(step, StepOutcome.RUNNING, 1, "", now, None))
        else:
            steps[position] = replace(steps[position], attempts=steps[position].attempts + 1)
        return replace(
            transfer, attempts=transfer.attempts + 1, lease_expires_at=lease_until, steps=steps
        )

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
        async with self.db.transaction() as conn:
            await self._fence(
                conn,
                transfer,
                owner,
                {
                    "last_error": error,
                    "next_attempt_at": next_attempt_at,
                    "lease_expires_at": lease_until,
                },
            )
            await conn.execute(
                update(transfer_steps)
                .where(
                    transfer_steps.c.transfer_id == transfer.transfer_id,
                    transfer_steps.c.name == step.value,
                )
                .values(error=error)
            )
        steps = [replace(s, error=error) if s.name is step else s for s in transfer.steps]
        return replace(
            transfer,
            last_error=error,
            next_attempt_at=next_attempt_at,
            lease_expires_at=lease_until,
            steps=steps,
        )

    async def finish_step(
        self,
        transfer: Transfer,
        step: StepName,
        owner: str,
        *,
        outcome: StepOutcome,
        new_state: TransferState,
        now: datetime,
        step_error: str = "",
        failure_reason: str = "",
        failure_code: str = "",
        outbox_row: OutboxRowFactory | None = None,
        begin_next: StepName | None = None,
        lease_until: datetime | None = None,
    ) -> Transfer:
        """The 'after' write: the step's outcome and the saga's next state, atomically.

        When ``new_state`` is terminal the lease is released and the milestone outbox
        row is inserted in this same transaction, so the announcement exists exactly
        when the terminal state does.

        ``begin_next`` (the step ``new_state`` waits for) folds that step's 'before'
        write (what :meth:`begin_attempt` does for its first call) into this
        transaction, renewing the lease to ``lease_until``: one transaction per step
        boundary instead of two, with the same rows on disk at every point a crash can
        hit (the call is recorded as begun before it is made).
        """
        check_transition(transfer.state, new_state)
        values: dict[str, Any] = {
            "state": new_state.value,
            "updated_at": now,
            "attempts": 0,
            "last_error": None,
            "next_attempt_at": None,
        }
        if begin_next is not None:
            assert not new_state.is_terminal and lease_until is not None
            values["attempts"] = 1
            values["lease_expires_at"] = lease_until
        if failure_reason:
            values["failure_reason"] = failure_reason
            values["failure_code"] = failure_code
        if new_state.is_terminal:
            values["lease_owner"] = None
            values["lease_expires_at"] = None
        # A succeeded step keeps the last transient error it overcame (diagnostics).
        step_values: dict[str, Any] = {"outcome": outcome.value, "finished_at": now}
        if step_error:
            step_values["error"] = step_error
        steps = [
            replace(s, outcome=outcome, finished_at=now, error=step_error or s.error)
            if s.name is step
            else s
            for s in transfer.steps
        ]
        next_position = None
        if begin_next is not None:
            next_position = next((i for i, s in enumerate(steps) if s.name is begin_next), None)
            if next_position is None:
                steps.append(Step(begin_next, StepOutcome.RUNNING, 1, "", now, None))
            else:
                steps[next_position] = replace(
                    steps[next_position], attempts=steps[next_position].attempts + 1
                )
        updated = replace(
            transfer,
            state=new_state,
            updated_at=now,
            attempts=values["attempts"],
            last_error="",
            next_attempt_at=None,
            failure_reason=failure_reason or transfer.failure_reason,
            failure_code=failure_code if failure_reason else transfer.failure_code,
            lease_owner=None if new_state.is_terminal else transfer.lease_owner,
            lease_expires_at=None
            if new_state.is_terminal
            else values.get("lease_expires_at", transfer.lease_expires_at),
            steps=steps,
        )
        row = outbox_row(updated, now) if new_state.is_terminal and outbox_row else None
        if self.group is not None:
            await self._finish_step_grouped(
                transfer, owner, values, step, outcome, step_error, begin_next, next_position, row
            )
            return updated
        async with self.db.transaction() as conn:
            await self._fence(conn, transfer, owner, values)
            await conn.execute(
                update(transfer_steps)
                .where(
                    transfer_steps.c.transfer_id == transfer.transfer_id,
                    transfer_steps.c.name == step.value,
                )
                .values(**step_values)
            )
            if begin_next is not None:
                await self._begin_step_row(
                    conn, transfer.transfer_id, begin_next, next_position, now
                )
            if row is not None:
                await conn.execute(insert(outbox).values(**row))
        return updated

    async def claim_due(
        self,
        owner: str,
        now: datetime,
        lease_until: datetime,
        limit: int,
    ) -> list[str]:
        """Lease unfinished sagas nobody holds (never leased, released, or expired)."""
        candidates = (
            select(transfers.c.transfer_id)
            .where(
                transfers.c.state.in_(_UNFINISHED),
                or_(transfers.c.lease_expires_at.is_(None), transfers.c.lease_expires_at < now),
            )
            .order_by(transfers.c.created_at)
            .limit(limit)
        )
        async with self.db.transaction() as conn:
            if self.db.is_postgres:
                candidates = candidates.with_for_update(skip_locked=True)
            ids = list((await conn.execute(candidates)).scalars())
            if not ids:
                return []
            await conn.execute(
                update(transfers)
                .where(transfers.c.transfer_id.in_(ids))
                .values(lease_owner=owner, lease_expires_at=lease_until)
            )
            return ids

    async def release(self, transfer_id: str, owner: str) -> None:
        """Give a saga back (shutdown) so another replica can take it at once."""
        async with self.db.transaction() as conn:
            await conn.execute(
                update(transfers)
                .where(transfers.c.transfer_id == transfer_id, transfers.c.lease_owner == owner)
                .values(lease_owner=None, lease_expires_at=None)
            )

    # --- PostgreSQL: finish_step through the group committer ------------------------

    async def _finish_step_grouped(
        self,
        transfer: Transfer,
        owner: str,
        values: dict[str, Any],
        step: StepName,
        outcome: StepOutcome,
        step_error: str,
        begin_next: StepName | None,
        next_position: int | None,
        row: dict[str, Any] | None,
    ) -> None:
        """The same write as the SQLite transaction, as rows for one grouped statement.

        ``values`` are the ``transfers`` columns :meth:`finish_step` sets; a column it
        leaves out is kept (NULL in the row), a terminal state releases the lease.
        """
        now = values["updated_at"]
        step_rows: list[tuple[Any, ...]] = []
        count_next = None
        if begin_next is not None and next_position is None:
            step_rows.append(
                _step_row(
                    transfer.transfer_id, Step(begin_next, StepOutcome.RUNNING, 1, "", now, None)
                )
            )
        elif begin_next is not None:
            count_next = begin_next.value
        outbox_rows = []
        if row is not None:
            outbox_rows.append((transfer.transfer_id, *(row[c] for c in OUTBOX_COLUMNS[1:])))
        finish_row = (
            transfer.transfer_id,
            owner,
            transfer.state.value,
            values["state"],
            now,
            values["attempts"],
            values.get("lease_expires_at"),
            TransferState(values["state"]).is_terminal,  # release the lease
            values.get("failure_reason"),
            values.get("failure_code"),
            step.value,
            outcome.value,
            step_error or None,
            count_next,
        )
        assert len(finish_row) == len(FINISH_COLUMNS)
        applied = await self.group.submit(  # type: ignore[union-attr]
            SagaWrite(
                transfer.transfer_id,
                None,
                finish_row=finish_row,
                step_rows=step_rows,
                outbox_rows=outbox_rows,
            )
        )
        if not applied:
            raise LeaseLostError(
                f"transfer {transfer.transfer_id}: lease lost or state moved on "
                f"(expected {transfer.state} owned by {owner})"
            )

    # --- helpers -------------------------------------------------------------------

    async def _begin_step_row(
        self,
        conn: AsyncConnection,
        transfer_id: str,
        step: StepName,
        position: int | None,
        now: datetime,
    ) -> None:
        """Count one call of ``step``: a new RUNNING row, or one more attempt on it."""
        if position is None:
            await conn.execute(
                insert(transfer_steps).values(
                    _step_values(transfer_id, Step(step, StepOutcome.RUNNING, 1, "", now, None))
                )
            )
        else:
            await conn.execute(
                update(transfer_steps)
                .where(
                    transfer_steps.c.transfer_id == transfer_id,
                    transfer_steps.c.name == step.value,
                )
                .values(attempts=transfer_steps.c.attempts + 1)
            )

    async def _fence(
        self, conn: AsyncConnection, transfer: Transfer, owner: str, values: dict[str, Any]
    ) -> None:
        result = await conn.execute(
            update(transfers)
            .where(
                transfers.c.transfer_id == transfer.transfer_id,
                transfers.c.lease_owner == owner,
                transfers.c.state == transfer.state.value,
            )
            .values(**values)
        )
        if result.rowcount != 1:
            raise LeaseLostError(
                f"transfer {transfer.transfer_id}: lease lost or state moved on "
                f"(expected {transfer.state} owned by {owner})"
            )
