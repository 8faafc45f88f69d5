"""An unreachable PostgreSQL is UnavailableError (gRPC UNAVAILABLE) on every access path."""

from __future__ import annotations

import pytest

from wallet_platform.config import Settings
from wallet_platform.errors import UnavailableError
from wallet_platform.storage.database import Database


@pytest.mark.parametrize("path", ["transaction", "read", "autocommit"])
async def test_closed_port_is_unavailable(path: str) -> None:
    db = Database.from_settings(
        Settings(database_url="postgresql+psycopg://root@127.0.0.1:1/nowhere")
    )
    try:
        with pytest.raises(UnavailableError, match="database unavailable"):
            async with getattr(db, path)():
                pass
    finally:
        await db.dispose()
