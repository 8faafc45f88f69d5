"""The installed ``walletctl`` console script against a ``wallet-stack`` process.

Both are real processes, configured only through the environment the way an
operator's shell would be: ``WALLET_TARGET`` and ``WALLET_DATABASE_URL``. The stack is
stopped with SIGTERM at the end, as ``make run``'s Ctrl-C would.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent
pytestmark = pytest.mark.slow


@pytest.fixture
def stack(database_url: str) -> Iterator[dict[str, str]]:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("WALLET")},
        "WALLET_DATABASE_URL": database_url,
        "WALLET_LOG_FORMAT": "console",
        "WALLET_LOG_LEVEL": "WARNING",
    }
    process = subprocess.Popen(
        [str(BIN / "wallet-stack"), "--listen", "127.0.0.1:0"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()  # "stack listening on HOST:PORT"
        assert "listening on" in line, line
        yield {**env, "WALLET_TARGET": line.rsplit(" ", 1)[-1].strip()}
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)


def walletctl(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "walletctl"), *args], env=env, capture_output=True, text=True, timeout=60
    )


def test_console_script_end_to_end(stack: dict[str, str]) -> None:
    assert walletctl(stack, "--help").returncode == 0
    created = walletctl(stack, "wallets", "create", "--currency", "EUR", "--wallet-id", "cs-1")
    assert created.returncode == 0, created.stderr
    assert "retry with --request-id" in created.stderr
    walletctl(stack, "wallets", "create", "--currency", "EUR", "--wallet-id", "cs-2")
    deposit = walletctl(stack, "wallets", "deposit", "cs-1", "900", "--json")
    assert json.loads(deposit.stdout)["wallet"]["balance"] == 900
    transfer = walletctl(stack, "transfers", "create", "cs-1", "cs-2", "400", "--json")
    assert transfer.returncode == 0 and json.loads(transfer.stdout)["transfer"]["state"] in (
        "COMPLETED",
        "PENDING",
        "DEBITED",
    )
    refused = walletctl(stack, "wallets", "withdraw", "cs-2", "401")
    assert refused.returncode == 1 and "INSUFFICIENT_FUNDS" in refused.stderr
    assert walletctl(stack, "wallets", "withdraw", "cs-2", "x").returncode == 2
    summary = walletctl(stack, "sagas", "watch", "--once", "--json")
    assert summary.returncode == 0 and json.loads(summary.stdout)["kind"] == "summary"
    reconciled = walletctl(stack, "reconcile")
    assert reconciled.returncode == 0, reconciled.stdout
    assert "CLEAN" in reconciled.stdout
    elsewhere = walletctl({**stack, "WALLET_TARGET": "127.0.0.1:1"}, "wallets", "show", "cs-1")
    assert elsewhere.returncode == 3
