"""The saga reads: one saga, a page, the summary, the changes the watch feed polls.

Each runs on a read connection (``Database.read``: autocommit on PostgreSQL, never
SQLite's write lock); a saga and its steps are two statements, a page and its steps
two as well (one query for every step of the page).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import and_, func, or_, select
from sqlalchemy.ext.asyncio import AsyncConnection

from saga_orchestrator.adapters.rows import transfer_from_row
from saga_orchestrator.domain import UNFINISHED_STATES, Transfer, TransferState
from wallet_platform.storage.database import Database
from wallet_platform.storage.schema import transfer_steps, transfers

UNFINISHED = [state.value for state in UNFINISHED_STATES]


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


async def load(conn: AsyncConnection, transfer_id: str) -> Transfer | None:
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
    return transfer_from_row(row, steps)


async def load_many(conn: AsyncConnection, rows: Sequence[Any]) -> list[Transfer]:
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
    return [transfer_from_row(row, by_id.get(row.transfer_id, ())) for row in rows]


class TransferQueries:
    """The reads of the saga tables."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def get(self, transfer_id: str) -> Transfer | None:
        async with self.db.read() as conn:
            return await load(conn, transfer_id)

    async def get_by_request_id(self, request_id: str) -> Transfer | None:
        async with self.db.read() as conn:
            transfer_id = (
                await conn.execute(
                    select(transfers.c.transfer_id).where(transfers.c.request_id == request_id)
                )
            ).scalar_one_or_none()
            if transfer_id is None:
                return None
            return await load(conn, transfer_id)

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
            return await load_many(conn, rows)

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
                    .where(transfers.c.state.in_(UNFINISHED))
                    .order_by(transfers.c.created_at)
                    .limit(1)
                )
            ).first()
            retry_rows = (
                await conn.execute(
                    select(transfers)
                    .where(
                        transfers.c.state.in_(UNFINISHED),
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
            oldest_unfinished=None if oldest_row is None else transfer_from_row(oldest_row),
            retrying=[transfer_from_row(row) for row in retry_rows],
        )

    async def changed_since(self, since: datetime, limit: int = 500) -> list[Transfer]:
        """Transfers whose state changed at or after ``since``, oldest change first
        (the watch feed polls this to see changes made by other replicas)."""
        async with self.db.read() as conn:
            rows = (
                await conn.execute(
                    select(transfers)
                    .where(transfers.c.updated_at >= since)
                    .order_by(transfers.c.updated_at, transfers.c.transfer_id)
                    .limit(limit)
                )
            ).all()
            return await load_many(conn, rows)
