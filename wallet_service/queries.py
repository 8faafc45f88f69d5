"""The read use cases of WalletService: a wallet now or in the past, and its log.

Validation first, then reads through the persistence adapter
(:class:`~wallet_service.adapters.store.WalletStore`); answers are domain objects.
"""

from __future__ import annotations

from datetime import datetime

from wallet_platform import page_tokens, validation
from wallet_platform.clock import ensure_utc
from wallet_platform.errors import InvalidArgumentError, NotFoundError, WalletNotFoundError
from wallet_service import domain
from wallet_service.adapters.store import WalletStore

# ListWalletEvents' page tokens (wallet_platform.page_tokens), bound to the wallet.
EVENTS_LISTING = "wallet_events"


class WalletQueries:
    """GetWallet and ListWalletEvents; :class:`WalletService` inherits them."""

    store: WalletStore

    async def get_wallet(
        self, wallet_id: str, as_of_sequence: int = 0, as_of_time: datetime | None = None
    ) -> domain.Wallet:
        """The wallet now, or as it stood after event ``as_of_sequence`` / at ``as_of_time``."""
        validation.wallet_id(wallet_id)
        if as_of_sequence < 0:
            raise InvalidArgumentError(
                f"as_of_sequence must be >= 0, got {as_of_sequence}", field="as_of_sequence"
            )
        if as_of_sequence == 0 and as_of_time is None:
            # The plain read (the orchestrator's currency check): the adapter's
            # cheapest statement.
            current = await self.store.current_wallet(wallet_id)
            if current is None:
                raise WalletNotFoundError(wallet_id)
            return current
        async with self.store.reader() as reader:
            wallet = await reader.wallet(wallet_id)
            if wallet is None:
                raise WalletNotFoundError(wallet_id)
            if as_of_sequence > 0:
                if as_of_sequence > wallet.version:
                    raise InvalidArgumentError(
                        f"as_of_sequence {as_of_sequence} is after the wallet's last event "
                        f"({wallet.version})",
                        field="as_of_sequence",
                    )
                event = await reader.event_at_sequence(wallet_id, as_of_sequence)
            else:
                assert as_of_time is not None
                event = await reader.last_event_at_time(wallet_id, ensure_utc(as_of_time))
                if event is None:
                    raise NotFoundError(
                        f"wallet {wallet_id!r} did not exist yet at {as_of_time.isoformat()}",
                        field="as_of_time",
                    )
            if event is None:  # the log is gap-free, so only a broken database gets here
                raise NotFoundError(f"event {as_of_sequence} of wallet {wallet_id!r} is missing")
            status = await reader.status_at_sequence(wallet_id, event.sequence)
        return domain.state_after(wallet, event, status)

    async def list_events(
        self, wallet_id: str, page_size: int = 0, page_token: str = ""
    ) -> tuple[list[domain.WalletEvent], str]:
        """One page of the log, newest first, and the token of the next page ('' at end)."""
        validation.wallet_id(wallet_id)
        size = validation.page_size(page_size)
        before = self._decode_token(wallet_id, page_token)
        async with self.store.reader() as reader:
            events = await reader.events_page(wallet_id, before, size + 1)
            if not events and not await reader.wallet_exists(wallet_id):
                raise WalletNotFoundError(wallet_id)
        next_token = ""
        if len(events) > size:
            events = events[:size]
            next_token = page_tokens.issue(
                EVENTS_LISTING, {"wallet_id": wallet_id}, {"s": events[-1].sequence}
            )
        return events, next_token

    @staticmethod
    def _decode_token(wallet_id: str, page_token: str) -> int | None:
        """The sequence the next page starts below (a token bound to ``wallet_id``)."""
        position = page_tokens.redeem(
            page_token, EVENTS_LISTING, {"wallet_id": wallet_id}, {"s": int}
        )
        if position is None:
            return None
        sequence = int(position["s"])
        if sequence < 1:
            raise InvalidArgumentError("page_token is malformed", field="page_token")
        return sequence
