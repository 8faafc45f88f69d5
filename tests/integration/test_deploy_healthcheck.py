"""The container health probe against a real server.

``python -m wallet_platform.server.healthcheck`` is what the image's HEALTHCHECK runs.
"""

from __future__ import annotations

import asyncio
import socket
import sys

import pytest

from wallet_platform.config import Settings
from wallet_platform.server.process import start_server
from wallet_service.bootstrap import build_components


async def _probe(*args: str) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "wallet_platform.server.healthcheck",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await process.communicate()
    return process.returncode or 0, output.decode()


@pytest.mark.slow
async def test_probe_reports_serving_and_fails_on_a_dead_port(tmp_path):
    settings = Settings(
        database_url=f"sqlite:///{tmp_path / 'w.db'}",
        listen="127.0.0.1:0",
        auth_tokens="secret=admin",  # health stays open even with authentication on
    )
    running = await start_server(settings, build_components, role="wallet-service")
    try:
        code, output = await _probe(running.target)
        assert code == 0 and "SERVING" in output
        code, output = await _probe(running.target, "wallet.v1.WalletService")
        assert code == 0, output
        code, output = await _probe(running.target, "wallet.v1.NoSuchService")
        assert code == 1 and "NOT_FOUND" in output
    finally:
        await running.stop()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{probe.getsockname()[1]}"
    code, output = await _probe(dead, "--timeout", "1")
    assert code == 1 and "UNAVAILABLE" in output
