"""``WalletStore``: the one door between the wallet service and its database.

The service layer gets everything persistent from here, in domain objects:

* :meth:`WalletStore.unit_of_work` - one write transaction
  (:class:`~wallet_service.adapters.unit_of_work.WalletUnitOfWork`);
* :meth:`WalletStore.submit_move` - a balance change through the PostgreSQL group
  commit (:mod:`~wallet_service.adapters.group_commit`), when it is on;
* :meth:`WalletStore.reader` and :meth:`WalletStore.current_wallet` - reads.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import datetime

from wallet_platform.clock import utcnow
from wallet_platform.storage.database import Database
from wallet_service import domain
from wallet_service.adapters.group_commit import GroupCommitter
from wallet_service.adapters.reads import WalletReader, pg_read_wallet
from wallet_service.adapters.unit_of_work import WalletUnitOfWork
from wallet_service.moves import MoveCommand


class WalletStore:
    """The wallet service's persistence adapter (see the module docstring)."""

    def __init__(
        self,
        db: Database,
        clock: Callable[[], datetime] = utcnow,
        *,
        group_commit: bool = True,
    ) -> None:
        self.db = db
        # PostgreSQL only: the single-request statement (pg_move) and the group commit.
        self.fast_path = db.is_postgres
        self.group = GroupCommitter(db, clock) if group_commit and db.is_postgres else None

    def unit_of_work(self) -> WalletUnitOfWork:
        return WalletUnitOfWork(self.db)

    async def submit_move(self, command: MoveCommand) -> domain.WriteResult | None:
        """The committed result of ``command`` through the group commit, or None: not
        decided there (off, a replay, a rule not met, a failed batch); then the caller
        runs it in a unit of work of its own."""
        if self.group is None:
            return None
        return await self.group.submit(command)

    @asynccontextmanager
    async def reader(self) -> AsyncIterator[WalletReader]:
        """Reads on one read-only connection."""
        async with self.db.read() as conn:
            yield WalletReader(conn)

    async def current_wallet(self, wallet_id: str) -> domain.Wallet | None:
        """The wallet now; on PostgreSQL one driver-level statement (see pg_read_wallet)."""
        if self.db.is_postgres:
            return await pg_read_wallet(self.db, wallet_id)
        async with self.reader() as reader:
            return await reader.wallet(wallet_id)

    async def stop(self) -> None:
        """Wait for the group commit's batches in flight."""
        if self.group is not None:
            await self.group.stop()
