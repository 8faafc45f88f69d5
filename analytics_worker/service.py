"""AnalyticsService use cases (no protobuf here)."""

from __future__ import annotations

from analytics_worker.domain import WalletStats
from analytics_worker.store import AnalyticsStore
from wallet_platform import validation
from wallet_platform.errors import NotFoundError


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
    def __init__(self, store: AnalyticsStore) -> None:
        self._store = store

    async def get_wallet_stats(self, wallet_id: str) -> WalletStats:
        """The projected stats; NOT_FOUND until the first event of the wallet is applied.

        We deliberately do not look at ``wallets`` (WalletService's table): the answer
        comes from this projection only, as the proto documents.
        """
        validation.wallet_id(wallet_id)
        stats = await self._store.get_stats(wallet_id)
        if stats is None:
            raise WalletStatsNotFoundError(wallet_id)
        return stats
