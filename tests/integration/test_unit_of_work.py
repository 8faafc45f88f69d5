"""The unit of work (wallet_platform.storage.unit_of_work): committed work stays,
anything else rolls back; a deadline drops a stalled connection instead of waiting.

Both transaction holders: Core (SQLite and PostgreSQL) and the psycopg pipeline
(PostgreSQL). The stalled connection goes through :class:`tests.tcp_proxy.TcpProxy`.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from urllib.parse import urlsplit

import pytest
import sqlalchemy as sa

from tests.conftest import requires_postgres
from tests.tcp_proxy import TcpProxy
from wallet_platform.config import Settings
from wallet_platform.storage.database import Database
from wallet_platform.storage.schema import inbox
from wallet_platform.storage.unit_of_work import (
    CoreUnitOfWork,
    PipelineUnitOfWork,
    UnitOfWork,
)

# The two implementations (both take the database); the base class takes nothing.
Kind = type[CoreUnitOfWork] | type[PipelineUnitOfWork]


async def add_row(uow: UnitOfWork, message_id: str) -> None:
    """One inbox row, in the style of the unit of work at hand."""
    values = {"consumer": "uow-test", "message_id": message_id, "processed_at": datetime.now(UTC)}
    if isinstance(uow, PipelineUnitOfWork):
        await uow.conn.execute(
            "INSERT INTO inbox (consumer, message_id, processed_at) "
            "VALUES (%(consumer)s, %(message_id)s, %(processed_at)s)",
            values,
        )
    else:
        assert isinstance(uow, CoreUnitOfWork)
        await uow.conn.execute(sa.insert(inbox).values(**values))


async def stored(db: Database) -> set[str]:
    async with db.read() as conn:
        rows = await conn.execute(
            sa.select(inbox.c.message_id).where(inbox.c.consumer == "uow-test")
        )
        return {row[0] for row in rows}


def kinds(database: Database) -> list[Kind]:
    return [CoreUnitOfWork, PipelineUnitOfWork] if database.is_postgres else [CoreUnitOfWork]


async def test_only_committed_work_stays(database: Database) -> None:
    for kind in kinds(database):
        kept, forgotten, failed = (f"{kind.__name__}-{n}" for n in ("kept", "forgotten", "failed"))
        async with kind(database) as uow:
            await add_row(uow, kept)
            await uow.commit()
        async with kind(database) as uow:
            await add_row(uow, forgotten)  # no commit: rolled back
        with pytest.raises(RuntimeError, match="changed my mind"):
            async with kind(database) as uow:
                await add_row(uow, failed)
                raise RuntimeError("changed my mind")
        assert kept in await stored(database)
        assert not {forgotten, failed} & await stored(database)


@pytest.fixture
async def stalling_database(pg_database_url_fresh: str) -> AsyncIterator[tuple[Database, TcpProxy]]:
    """The test database reached through a proxy that can stall."""
    parts = urlsplit(pg_database_url_fresh)
    proxy = TcpProxy((parts.hostname or "127.0.0.1", parts.port or 5432))
    await proxy.start()
    user = parts.netloc.rsplit("@", 1)[0]
    url = parts._replace(netloc=f"{user}@127.0.0.1:{proxy.port}").geturl()
    db = Database.from_settings(Settings(database_url=url, db_pool_size=2))
    try:
        yield db, proxy
    finally:
        await proxy.stop()
        await db.dispose()


@requires_postgres
@pytest.mark.parametrize("kind", [CoreUnitOfWork, PipelineUnitOfWork])
async def test_a_deadline_drops_a_stalled_connection(
    stalling_database: tuple[Database, TcpProxy], kind: Kind
) -> None:
    db, proxy = stalling_database
    first = uuid.uuid4().hex
    async with kind(db) as uow:
        await add_row(uow, first)
        await uow.commit()
    # The connection goes silent (never closed); new connections get through.
    proxy.stall()
    stuck = kind(db)
    stuck.deadline = 1.0
    async with asyncio.timeout(20):  # a hang fails the test instead of blocking it
        with pytest.raises(TimeoutError, match=r"not done within 1\.0s"):
            async with stuck as uow:
                await add_row(uow, uuid.uuid4().hex)
                await uow.commit()
    proxy.forget()
    second = uuid.uuid4().hex
    retry = kind(db)
    retry.deadline = 5.0
    async with asyncio.timeout(20):
        async with retry as uow:  # a fresh connection: the stalled one is not reused
            await add_row(uow, second)
            await uow.commit()
    assert await stored(db) == {first, second}


@requires_postgres
@pytest.mark.parametrize("kind", [CoreUnitOfWork, PipelineUnitOfWork])
async def test_after_a_stall_the_idle_pooled_connections_are_not_reused(
    stalling_database: tuple[Database, TcpProxy], kind: Kind
) -> None:
    """A partition stalls every pooled connection at once: one expired deadline must
    be enough, not one per idle connection."""
    db, proxy = stalling_database

    async def add_one(message_id: str, deadline: float | None = None) -> None:
        unit = kind(db)
        unit.deadline = deadline
        async with unit as uow:
            await add_row(uow, message_id)
            await asyncio.sleep(0.1)  # held at the same time: three pooled connections
            await uow.commit()

    before = [uuid.uuid4().hex for _ in range(3)]
    await asyncio.gather(*(add_one(message_id) for message_id in before))
    pool = db.engine.pool
    assert isinstance(pool, sa.QueuePool) and pool.checkedin() == 3
    proxy.stall()
    proxy.forget()  # those three stay silent; new connections get through
    async with asyncio.timeout(20):
        with pytest.raises(TimeoutError, match=r"not done within 1\.0s"):
            await add_one(uuid.uuid4().hex, deadline=1.0)
        after = uuid.uuid4().hex
        await add_one(after, deadline=1.0)  # a fresh connection, not a silent sibling
    assert await stored(db) == {*before, after}


@requires_postgres
@pytest.mark.parametrize("kind", [CoreUnitOfWork, PipelineUnitOfWork])
async def test_a_stalled_transaction_does_not_keep_its_locks(
    stalling_database: tuple[Database, TcpProxy], kind: Kind
) -> None:
    """The server still holds the stalled transaction (the middlebox never told it):
    retrying the same work must not wait for that transaction's locks."""
    db, proxy = stalling_database
    message_id = uuid.uuid4().hex
    stuck = kind(db)
    stuck.deadline = 1.0
    async with asyncio.timeout(20):
        with pytest.raises(TimeoutError, match=r"not done within 1\.0s"):
            async with stuck as uow:
                await add_row(uow, message_id)  # the server has the row, uncommitted
                await round_trip(uow)
                proxy.stall()
                proxy.forget()  # this connection stays silent; new ones get through
                await round_trip(uow)
                await uow.commit()
        retry = kind(db)
        retry.deadline = 5.0
        async with retry as uow:  # the same key: waits on the stalled insert unless ended
            await add_row(uow, message_id)
            await uow.commit()
    assert await stored(db) == {message_id}


async def round_trip(uow: UnitOfWork) -> None:
    """A statement whose answer is awaited: what was sent before has reached the server."""
    if isinstance(uow, PipelineUnitOfWork):
        cursor = await uow.conn.execute("SELECT 1")
        await cursor.fetchone()
    else:
        assert isinstance(uow, CoreUnitOfWork)
        await uow.conn.execute(sa.text("SELECT 1"))


@requires_postgres
@pytest.mark.parametrize("kind", [CoreUnitOfWork, PipelineUnitOfWork])
async def test_a_connection_that_cannot_be_set_up_fails_at_the_deadline(
    stalling_database: tuple[Database, TcpProxy], kind: Kind
) -> None:
    """No pooled connection, and the new one's handshake goes unanswered: the unit of
    work gives up at its deadline, not at the driver's connect timeout (5 s) or never."""
    db, proxy = stalling_database
    proxy.stall()  # new connections are accepted and then held
    stuck = kind(db)
    stuck.deadline = 1.0
    started = asyncio.get_running_loop().time()
    with pytest.raises(TimeoutError, match=r"not done within 1\.0s"):
        async with stuck as uow:
            await add_row(uow, uuid.uuid4().hex)
            await uow.commit()
    assert asyncio.get_running_loop().time() - started < 4.0
    await proxy.heal()
    after = uuid.uuid4().hex
    async with kind(db) as uow:
        await add_row(uow, after)
        await uow.commit()
    assert await stored(db) == {after}
