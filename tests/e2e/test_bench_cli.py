"""The ``wallet-bench`` console script against a running stack: JSON report, exit 0."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import pytest

from wallet_platform.config import Settings
from wallet_platform.server.process import start_server
from wallet_stack.main import build_stack

pytestmark = pytest.mark.slow


async def test_wallet_bench_json_report_and_exit_status(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'wallet.db'}"
    settings = Settings(database_url=url, listen="127.0.0.1:0", log_format="console")
    running = await start_server(settings, build_stack, role="stack")
    try:
        process = await asyncio.create_subprocess_exec(
            str(Path(sys.executable).parent / "wallet-bench"),
            "--target",
            running.target,
            "--database-url",
            url,
            "--requests",
            "60",
            "--concurrency",
            "4",
            "--wallets",
            "6",
            "--retry-share",
            "0.2",
            "--mix",
            "deposit=2,withdraw=1,transfer=1",
            "--connections",
            "2",
            "--json",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        stdout, stderr = await asyncio.wait_for(process.communicate(), 120)
    finally:
        await running.stop()
    assert process.returncode == 0, stderr.decode()[-2000:]
    report = json.loads(stdout)
    assert report["ok"] is True
    assert report["load"]["requests"] == 60
    assert set(report["load"]["operations"]) <= {"deposit", "withdraw", "transfer", "replay"}
    assert {c["name"] for c in report["checks"] if c["ok"]} >= {
        "conservation",
        "sagas_terminal",
        "applied_once",
        "analytics_equal_log",
    }
    assert b"errors " not in stderr  # no progress bar when stderr is not a terminal
