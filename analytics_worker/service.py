"""AnalyticsService use cases (no protobuf here)."""

from __future__ import annotations

from analytics_worker import repository
from analytics_worker.domain import WalletStats
from wallet_platform import validation
from wallet_platform.errors import NotFoundError
from wallet_platform.storage.database import Database


class WalletStatsNotFoundError(NotFoundError):
    """The worker has applied no event of this wallet (unknown, or not yet consumed)."""

    reason = "WALLET_STATS_NOT_FOUND"

    def __init__(self, wallet_id: str) -> None:
        super().__init__(
            f"no statistics for wallet {wallet_id!r} (unknown wallet, or its events "
            "are not consumed yet)",
            field="wallet_id",
        )


class AnalyticsService:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def get_wallet_stats(self, wallet_id: str) -> WalletStats:
        """The projected stats; NOT_FOUND until the first event of the wallet is applied.

        We deliberately do not look at ``wallets`` (WalletService's table): the answer
        comes from this projection only, as the proto documents.
        """
        validation.wallet_id(wallet_id)
        async with self._db.read() as conn:
            stats = await repository.get_stats(conn, wallet_id)
        if stats is None:
            raise WalletStatsNotFoundError(wallet_id)
        return stats
