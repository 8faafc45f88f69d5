"""FraudService use cases (no protobuf here)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from fraud_worker.store import FraudStore, StoredAlert
from wallet_platform import validation
from wallet_platform.clock import ensure_utc
from wallet_platform.errors import InvalidArgumentError


@dataclass(frozen=True)
class AlertPage:
    alerts: list[StoredAlert]
    next_page_token: str


def _cursor(token: str) -> tuple[datetime, str] | None:
    position = validation.decode_page_token(token)
    if position is None:
        return None
    try:
        created_at = ensure_utc(datetime.fromisoformat(position["c"]))
        alert_id = str(position["a"])
    except (KeyError, TypeError, ValueError):
        raise InvalidArgumentError("page_token is malformed", field="page_token") from None
    return created_at, alert_id


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
        after = _cursor(page_token)
        rows = await self._store.list_alerts(
            wallet_id=wallet_id or None, limit=size + 1, after=after
        )
        token = ""
        if len(rows) > size:
            rows = rows[:size]
            last = rows[-1]
            token = validation.encode_page_token(
                {"c": last.created_at.isoformat(), "a": last.alert_id}
            )
        return AlertPage(rows, token)
