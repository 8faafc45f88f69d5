"""A second server on a port already in use fails instead of silently sharing it."""

from __future__ import annotations

import pytest

from wallet_platform.config import Settings
from wallet_platform.server.process import start_server
from wallet_stack.main import build_stack


async def test_second_stack_on_the_same_port_refuses_to_start(tmp_path) -> None:
    settings = Settings(
        database_url=f"sqlite:///{tmp_path / 'wallet.db'}",
        listen="127.0.0.1:0",
        log_format="console",
    )
    first = await start_server(settings, build_stack, role="stack")
    try:
        taken = settings.replace(listen=first.target)
        with pytest.raises(OSError, match="cannot listen"):
            second = await start_server(taken, build_stack, role="stack")
            await second.stop()
    finally:
        await first.stop()
