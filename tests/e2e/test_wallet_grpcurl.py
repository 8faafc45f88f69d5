"""An operator's view: the real ``grpcurl`` binary against a running WalletService.

grpcurl finds everything through server reflection (no .proto files given), exactly
as the README shows it.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator, Mapping
from pathlib import Path

import pytest

from wallet_platform.config import Settings
from wallet_platform.runtime import Runtime
from wallet_platform.server.builder import Component
from wallet_platform.server.process import start_server
from wallet_service.bootstrap import WalletComponent
from wallet_service.service import WalletService

GRPCURL = Path(sys.executable).parent / "grpcurl"


def wallet_only(runtime: Runtime) -> list[Component]:
    return [WalletComponent(WalletService(runtime.db))]


@pytest.fixture
async def target(settings: Settings) -> AsyncIterator[str]:
    running = await start_server(settings, wallet_only, role="wallet-service")
    try:
        yield running.target
    finally:
        await running.stop(grace=1)


async def grpcurl(
    target: str, *args: str, data: Mapping[str, object] | None = None
) -> tuple[int | None, str, str]:
    """Run grpcurl without blocking the event loop that serves the server."""
    command = [str(GRPCURL), "-plaintext", "-max-time", "20"]
    if data is not None:
        command += ["-d", json.dumps(data)]
    process = await asyncio.create_subprocess_exec(
        *command,
        target,
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout=30)
    return process.returncode, out.decode(), err.decode()


async def test_grpcurl_lists_describes_and_moves_money(target):
    code, out, err = await grpcurl(target, "list")
    assert code == 0, err
    services = out.split()
    assert "wallet.v1.WalletService" in services
    assert "grpc.health.v1.Health" in services

    code, out, err = await grpcurl(target, "describe", "wallet.v1.WalletService")
    assert code == 0, err
    assert (
        "rpc Deposit ( .wallet.v1.DepositRequest ) returns ( .wallet.v1.DepositResponse );" in out
    )
    assert "rpc RefundForTransfer" in out

    code, out, err = await grpcurl(
        target,
        "wallet.v1.WalletService/CreateWallet",
        data={"wallet_id": "ops-1", "currency": "USD", "request_id": "create-ops-1"},
    )
    assert code == 0, err
    created = json.loads(out)
    assert created["wallet"]["wallet_id"] == "ops-1"
    assert created["wallet"]["status"] == "WALLET_STATUS_ACTIVE"

    deposit = {"wallet_id": "ops-1", "amount": "1500", "request_id": "dep-ops-1"}
    code, out, err = await grpcurl(target, "wallet.v1.WalletService/Deposit", data=deposit)
    assert code == 0, err
    deposited = json.loads(out)
    assert deposited["wallet"]["balance"] == "1500"
    assert deposited["event"]["type"] == "WALLET_EVENT_TYPE_FUNDS_DEPOSITED"
    assert "replayed" not in deposited  # false is the default: not printed

    code, out, err = await grpcurl(target, "wallet.v1.WalletService/Deposit", data=deposit)
    assert code == 0, err
    assert json.loads(out)["replayed"] is True

    code, out, err = await grpcurl(
        target,
        "wallet.v1.WalletService/Withdraw",
        data={"wallet_id": "ops-1", "amount": 400, "request_id": "wd-ops-1"},
    )
    assert code == 0, err
    assert json.loads(out)["wallet"]["balance"] == "1100"

    code, out, err = await grpcurl(
        target,
        "wallet.v1.WalletService/Withdraw",
        data={"wallet_id": "ops-1", "amount": 5000, "request_id": "wd-ops-2"},
    )
    assert code != 0
    assert "FailedPrecondition" in err and "INSUFFICIENT_FUNDS" in err

    code, out, err = await grpcurl(
        target, "wallet.v1.WalletService/GetWallet", data={"wallet_id": "ops-1"}
    )
    assert code == 0, err
    assert json.loads(out)["wallet"]["version"] == "3"
