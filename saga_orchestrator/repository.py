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
from functools import lru_cache
from typing import Any

from sqlalchemy import CTE, Select, and_, bindparam, func, insert, or_, select, update
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
from wallet_common.clock import ensure_utc
from wallet_common.db import Database
from wallet_common.schema import outbox, transfer_steps, transfers


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
_INSERT_COLUMNS = [
    transfers.c[name]
    for name in (
        "transfer_id",
        "request_id",
        "fingerprint",
        "from_wallet_id",
        "to_wallet_id",
        "amount",
        "currency",
        "state",
        "attempts",
        "lease_owner",
        "lease_expires_at",
        "audit_id",
        "created_at",
        "updated_at",
    )
]


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


_STEP_COLUMNS = ("name", "position", "outcome", "attempts", "error", "started_at", "finished_at")


def _insert_step_from(source: CTE, prefix: str) -> CTE:
    """A CTE inserting a step row (values bound as ``<prefix>_<column>``) for the
    transfer id ``source`` returns, if any."""
    return (
        insert(transfer_steps)
        .from_select(
            ["transfer_id", *_STEP_COLUMNS],
            select(
                source.c.transfer_id,
                *(
                    bindparam(f"{prefix}_{c}", type_=transfer_steps.c[c].type)
                    for c in _STEP_COLUMNS
                ),
            ),
        )
        .cte(prefix)
    )


def _step_params(prefix: str, step: Step) -> dict[str, Any]:
    values = _step_values("", step)
    return {f"{prefix}_{c}": values[c] for c in _STEP_COLUMNS}


# Performance: the PostgreSQL statements below are built once per shape with bound
# parameters and reused, so SQLAlchemy neither rebuilds the expression tree nor
# recomputes its cache key on every write (that was a third of the CPU of a write).


@lru_cache(maxsize=64)
def _insert_statement(steps: int) -> Select[Any]:
    created = (
        insert(transfers)
        .values({c.name: bindparam(f"t_{c.name}", type_=c.type) for c in _INSERT_COLUMNS})
        .returning(transfers.c.transfer_id)
        .cte("created")
    )
    ctes = [_insert_step_from(created, f"step{index}") for index in range(steps)]
    return select(func.count()).select_from(created).add_cte(*ctes)


@lru_cache(maxsize=256)
def _finish_statement(
    value_keys: tuple[str, ...],
    step_keys: tuple[str, ...],
    next_step: str | None,
    outbox_keys: tuple[str, ...] | None,
) -> Select[Any]:
    """``next_step``: None, ``"insert"`` (new row) or ``"count"`` (one more attempt)."""
    fenced = (
        update(transfers)
        .where(
            transfers.c.transfer_id == bindparam("f_transfer_id"),
            transfers.c.lease_owner == bindparam("f_owner"),
            transfers.c.state == bindparam("f_state"),
        )
        .values({k: bindparam(f"v_{k}", type_=transfers.c[k].type) for k in value_keys})
        .returning(transfers.c.transfer_id)
        .cte("fenced")
    )
    fenced_ids = select(fenced.c.transfer_id)
    ctes = [
        update(transfer_steps)
        .where(
            transfer_steps.c.transfer_id.in_(fenced_ids),
            transfer_steps.c.name == bindparam("s_name"),
        )
        .values({k: bindparam(f"s_{k}", type_=transfer_steps.c[k].type) for k in step_keys})
        .cte("step_done")
    ]
    if next_step == "insert":
        ctes.append(_insert_step_from(fenced, "next"))
    elif next_step == "count":
        ctes.append(
            update(transfer_steps)
            .where(
                transfer_steps.c.transfer_id.in_(fenced_ids),
                transfer_steps.c.name == bindparam("next_name"),
            )
            .values(attempts=transfer_steps.c.attempts + 1)
            .cte("next")
        )
    if outbox_keys is not None:
        ctes.append(
            insert(outbox)
            .from_select(
                list(outbox_keys),
                select(
                    *(bindparam(f"o_{k}", type_=outbox.c[k].type) for k in outbox_keys)
                ).select_from(fenced),
            )
            .cte("milestone")
        )
    return select(func.count()).select_from(fenced).add_cte(*ctes)


def begun_step(transfer: Transfer, step: StepName, now: datetime) -> Transfer:
    """``transfer`` with a first call of ``step`` recorded (row RUNNING, attempts 1), for
    :meth:`TransferRepository.insert` to write as the step's 'before' write."""
    return replace(
        transfer,
        attempts=transfer.attempts + 1,
        steps=[*transfer.steps, Step(step, StepOutcome.RUNNING, 1, "", now, None)],
    )


class TransferRepository:
    """Each method is one short transaction; the saga's progress is always on disk."""

    def __init__(self, db: Database) -> None:
        self.db = db

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
            "created_at": transfer.created_at,
            "updated_at": transfer.updated_at,
        }
        try:
            if self.db.is_postgres:
                await self._insert_pg(transfer, values)
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
        if self.db.is_postgres:
            await self._finish_step_pg(
                transfer, owner, values, step, step_values, begin_next, next_position, now, row
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

    # --- PostgreSQL: each write as one statement ----------------------------------
    #
    # Performance (docs/benchmarks.md, "Saga throughput"): on PostgreSQL the writes of
    # insert and finish_step run as ONE statement of data-modifying CTEs, in autocommit.
    # A single statement is atomic by itself, so this is the same transaction as the
    # SQLite path's BEGIN; statements; COMMIT, in one round trip instead of four or
    # five. Every other CTE reads the transfer ids the fenced (or inserted) transfers
    # row returned: when the fence matches nothing, nothing at all is written.

    async def _insert_pg(self, transfer: Transfer, values: dict[str, Any]) -> None:
        params = {f"t_{c.name}": values[c.name] for c in _INSERT_COLUMNS}
        for index, step in enumerate(transfer.steps):
            params.update(_step_params(f"step{index}", step))
        async with self.db.autocommit() as conn:
            await conn.execute(_insert_statement(len(transfer.steps)), params)

    async def _finish_step_pg(
        self,
        transfer: Transfer,
        owner: str,
        values: dict[str, Any],
        step: StepName,
        step_values: dict[str, Any],
        begin_next: StepName | None,
        next_position: int | None,
        now: datetime,
        row: dict[str, Any] | None,
    ) -> None:
        params: dict[str, Any] = {
            "f_transfer_id": transfer.transfer_id,
            "f_owner": owner,
            "f_state": transfer.state.value,
            "s_name": step.value,
        }
        params.update({f"v_{k}": v for k, v in values.items()})
        params.update({f"s_{k}": v for k, v in step_values.items()})
        next_step = None
        if begin_next is not None and next_position is None:
            next_step = "insert"
            params.update(
                _step_params("next", Step(begin_next, StepOutcome.RUNNING, 1, "", now, None))
            )
        elif begin_next is not None:
            next_step = "count"
            params["next_name"] = begin_next.value
        if row is not None:
            params.update({f"o_{k}": v for k, v in row.items()})
        statement = _finish_statement(
            tuple(values), tuple(step_values), next_step, None if row is None else tuple(row)
        )
        async with self.db.autocommit() as conn:
            count = (await conn.execute(statement, params)).scalar_one()
        if count != 1:
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
