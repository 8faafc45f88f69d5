"""``wallets``, ``wallet_events`` and ``outbox`` (SQLAlchemy Core), for both backends.

Writes take the unit of work's connection (:mod:`wallet_service.adapters.unit_of_work`),
so a balance change, its event and its outbox row commit or roll back together. The
wallet row lock is :func:`get_wallet` with ``for_update`` (``SELECT ... FOR UPDATE`` on
PostgreSQL; SQLite's ``BEGIN IMMEDIATE`` already serialises writers) or the
conditional ``UPDATE`` of the PostgreSQL statements (:mod:`wallet_service.adapters.pg_move`).
Reads take a read connection (:meth:`Database.read`).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import and_, bindparam, func, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from wallet_platform.storage.schema import outbox, wallet_events, wallets
from wallet_service import domain
from wallet_service.adapters.idempotency_sql import dialect_insert
from wallet_service.adapters.rows import event_from_row, wallet_from_row


async def insert_wallet(conn: AsyncConnection, wallet: domain.Wallet) -> bool:
    """Insert a new wallet row; False when the id is taken."""
    statement = (
        dialect_insert(conn, wallets)
        .values(
            wallet_id=wallet.wallet_id,
            currency=wallet.currency,
            balance=wallet.balance,
            status=wallet.status,
            version=wallet.version,
            created_at=wallet.created_at,
            updated_at=wallet.updated_at,
        )
        .on_conflict_do_nothing()
        .returning(wallets.c.wallet_id)
    )
    return (await conn.execute(statement)).first() is not None


# Built once: building the expression per call (and its cache key) cost more CPU than
# the read itself on the GetWallet path (docs/benchmarks.md).
_GET_WALLET = select(wallets).where(wallets.c.wallet_id == bindparam("wallet_id"))
_GET_WALLET_FOR_UPDATE = _GET_WALLET.with_for_update()


async def get_wallet(
    conn: AsyncConnection, wallet_id: str, *, for_update: bool = False
) -> domain.Wallet | None:
    """The wallet row; with ``for_update`` it stays locked until the transaction ends."""
    statement = _GET_WALLET_FOR_UPDATE if for_update else _GET_WALLET
    row = (await conn.execute(statement, {"wallet_id": wallet_id})).first()
    return None if row is None else wallet_from_row(row)


async def save_change(
    conn: AsyncConnection, wallet: domain.Wallet, event: domain.WalletEvent
) -> None:
    """Write the new state of a LOCKED wallet row and append its event."""
    await conn.execute(
        update(wallets)
        .where(wallets.c.wallet_id == wallet.wallet_id)
        .values(
            balance=wallet.balance,
            status=wallet.status,
            version=wallet.version,
            updated_at=wallet.updated_at,
        )
    )
    await insert_event(conn, event)


async def insert_event(conn: AsyncConnection, event: domain.WalletEvent) -> None:
    await conn.execute(
        wallet_events.insert().values(
            event_id=event.event_id,
            wallet_id=event.wallet_id,
            sequence=event.sequence,
            type=event.type,
            amount=event.amount,
            balance_after=event.balance_after,
            currency=event.currency,
            transfer_id=event.transfer_id,
            request_id=event.request_id,
            audit_id=event.audit_id,
            occurred_at=event.occurred_at,
        )
    )


async def insert_outbox(conn: AsyncConnection, row: dict[str, Any]) -> None:
    await conn.execute(outbox.insert().values(**row))


async def events_page(
    conn: AsyncConnection, wallet_id: str, before_sequence: int | None, limit: int
) -> list[domain.WalletEvent]:
    """Up to ``limit`` events, newest first, with sequence < ``before_sequence``."""
    statement = select(wallet_events).where(wallet_events.c.wallet_id == wallet_id)
    if before_sequence is not None:
        statement = statement.where(wallet_events.c.sequence < before_sequence)
    statement = statement.order_by(wallet_events.c.sequence.desc()).limit(limit)
    return [event_from_row(row) for row in await conn.execute(statement)]


async def event_at_sequence(
    conn: AsyncConnection, wallet_id: str, sequence: int
) -> domain.WalletEvent | None:
    row = (
        await conn.execute(
            select(wallet_events).where(
                wallet_events.c.wallet_id == wallet_id, wallet_events.c.sequence == sequence
            )
        )
    ).first()
    return None if row is None else event_from_row(row)


async def last_event_at_time(
    conn: AsyncConnection, wallet_id: str, moment: datetime
) -> domain.WalletEvent | None:
    """The newest event that had happened at ``moment`` (times are monotone per wallet)."""
    row = (
        await conn.execute(
            select(wallet_events)
            .where(
                wallet_events.c.wallet_id == wallet_id,
                wallet_events.c.occurred_at <= moment,
            )
            .order_by(wallet_events.c.sequence.desc())
            .limit(1)
        )
    ).first()
    return None if row is None else event_from_row(row)


async def status_at_sequence(conn: AsyncConnection, wallet_id: str, sequence: int) -> str:
    """ACTIVE or FROZEN as of ``sequence``, from the last status-changing event."""
    event_type = (
        await conn.execute(
            select(wallet_events.c.type)
            .where(
                wallet_events.c.wallet_id == wallet_id,
                wallet_events.c.sequence <= sequence,
                wallet_events.c.type.in_(domain.STATUS_EVENTS),
            )
            .order_by(wallet_events.c.sequence.desc())
            .limit(1)
        )
    ).scalar()
    return domain.status_after(event_type or domain.WALLET_CREATED, domain.ACTIVE)


async def wallet_exists(conn: AsyncConnection, wallet_id: str) -> bool:
    found = await conn.execute(
        select(func.count()).select_from(wallets).where(and_(wallets.c.wallet_id == wallet_id))
    )
    return bool(found.scalar())
