"""``transfer_holds`` reads and writes (SQLAlchemy Core), for both backends.

Used by the portable write path, always inside the caller's transaction: the hold row
is locked (``SELECT ... FOR UPDATE`` on PostgreSQL; SQLite's ``BEGIN IMMEDIATE``
already serialises writers) before the wallet row, the same order the PostgreSQL
statements lock them in, and written in the same transaction as the balance change.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import bindparam, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from wallet_platform.storage.schema import transfer_holds
from wallet_service import holds
from wallet_service.adapters.rows import hold_from_row

_GET_HOLD = select(
    transfer_holds.c.transfer_id,
    transfer_holds.c.from_wallet_id,
    transfer_holds.c.to_wallet_id,
    transfer_holds.c.amount,
    transfer_holds.c.currency,
    transfer_holds.c.state,
).where(transfer_holds.c.transfer_id == bindparam("transfer_id"))
_GET_HOLD_FOR_UPDATE = _GET_HOLD.with_for_update()


async def get_hold(
    conn: AsyncConnection, transfer_id: str, *, for_update: bool = False
) -> holds.Hold | None:
    """The transfer's hold; with ``for_update`` it stays locked until the transaction ends."""
    statement = _GET_HOLD_FOR_UPDATE if for_update else _GET_HOLD
    row = (await conn.execute(statement, {"transfer_id": transfer_id})).first()
    return None if row is None else hold_from_row(row)


async def open_hold(conn: AsyncConnection, hold: holds.Hold, at: datetime) -> None:
    """Insert a debit's hold; a second hold for the transfer id violates the key."""
    await conn.execute(
        transfer_holds.insert().values(
            transfer_id=hold.transfer_id,
            from_wallet_id=hold.from_wallet_id,
            to_wallet_id=hold.to_wallet_id,
            amount=hold.amount,
            currency=hold.currency,
            state=hold.state,
            created_at=at,
            updated_at=at,
        )
    )


async def settle_hold(conn: AsyncConnection, transfer_id: str, state: str, at: datetime) -> None:
    """Post or void a LOCKED OPEN hold (anything else is a bug: the transaction fails)."""
    result = await conn.execute(
        update(transfer_holds)
        .where(transfer_holds.c.transfer_id == transfer_id, transfer_holds.c.state == holds.OPEN)
        .values(state=state, updated_at=at)
    )
    if result.rowcount != 1:
        raise RuntimeError(f"hold of transfer {transfer_id!r} was not OPEN when settled")
