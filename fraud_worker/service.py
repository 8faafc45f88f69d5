"""FraudService use cases (no protobuf here)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from fraud_worker.store import FraudStore, StoredAlert
from wallet_platform import page_tokens, validation
from wallet_platform.clock import ensure_utc
from wallet_platform.errors import InvalidArgumentError


@dataclass(frozen=True)
class AlertPage:
    alerts: list[StoredAlert]
    next_page_token: str


ALERTS_LISTING = "fraud_alerts"


def _filters(wallet_id: str) -> dict[str, str]:
    return {"wallet_id": wallet_id}


def _cursor(token: str, wallet_id: str) -> tuple[datetime, str] | None:
    """The (created_at, alert_id) of the previous page's last alert, from a token
    issued for the same ``wallet_id`` filter."""
    position = page_tokens.redeem(token, ALERTS_LISTING, _filters(wallet_id), {"c": str, "a": str})
    if position is None:
        return None
    try:
        created_at = ensure_utc(datetime.fromisoformat(str(position["c"])))
    except (ValueError, OverflowError):  # not a time, or one UTC cannot hold
        raise InvalidArgumentError("page_token is malformed", field="page_token") from None
    return created_at, str(position["a"])


class FraudService:
    def __init__(self, store: FraudStore) -> None:
        self._store = store

    async def list_alerts(self, wallet_id: str, page_size: int, page_token: str) -> AlertPage:
        """Alerts newest first, optionally of one wallet (an unknown wallet has none).

        The cursor is the (created_at, alert_id) of the last alert returned, so pages
        stay stable while new alerts arrive (they sort before the first page).
        """
        if wallet_id:
            validation.wallet_id(wallet_id)
        size = validation.page_size(page_size)
        after = _cursor(page_token, wallet_id)
        rows = await self._store.list_alerts(
            wallet_id=wallet_id or None, limit=size + 1, after=after
        )
        token = ""
        if len(rows) > size:
            rows = rows[:size]
            last = rows[-1]
            token = page_tokens.issue(
                ALERTS_LISTING,
                _filters(wallet_id),
                {"c": last.created_at.isoformat(), "a": last.alert_id},
            )
        return AlertPage(rows, token)
