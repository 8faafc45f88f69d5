"""Database rows -> domain objects, for every statement of the adapter.

Rows come from SQLAlchemy results and from psycopg's ``namedtuple_row`` alike: both
expose columns as attributes. Timestamps are made timezone-aware (SQLite returns them
naive) so the domain only ever sees UTC datetimes.
"""

from __future__ import annotations

from typing import Any

from wallet_platform.clock import ensure_utc
from wallet_service import domain, holds


def wallet_from_row(row: Any) -> domain.Wallet:
    return domain.Wallet(
        wallet_id=row.wallet_id,
        currency=row.currency,
        balance=row.balance,
        status=row.status,
        version=row.version,
        created_at=ensure_utc(row.created_at),
        updated_at=ensure_utc(row.updated_at),
    )


def event_from_row(row: Any) -> domain.WalletEvent:
    return domain.WalletEvent(
        event_id=row.event_id,
        wallet_id=row.wallet_id,
        sequence=row.sequence,
        type=row.type,
        amount=row.amount,
        balance_after=row.balance_after,
        currency=row.currency,
        transfer_id=row.transfer_id,
        request_id=row.request_id,
        audit_id=row.audit_id,
        occurred_at=ensure_utc(row.occurred_at),
    )


def hold_from_row(row: Any) -> holds.Hold:
    return holds.Hold(
        transfer_id=row.transfer_id,
        from_wallet_id=row.from_wallet_id,
        to_wallet_id=row.to_wallet_id,
        amount=row.amount,
        currency=row.currency,
        state=row.state,
    )
