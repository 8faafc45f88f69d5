"""A client cannot squat the saga's step keys: the attack replayed against real servers.

A writer who learns a transfer id sends ``Deposit(mallory, 1, "<T>:credit")`` and
``Deposit(mallory, 1, "<T>:refund")`` while the saga waits between its debit and its
credit (``WALLET_FAILPOINTS=saga.before_credit=sleep(...)`` on a real
``saga-orchestrator`` process). The steps' keys live in their own idempotency scope, so
the deposits are ordinary deposits and the transfer still completes (or, when the
receiver is frozen meanwhile, is refunded) with every balance exact and
``walletctl reconcile`` clean.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from sqlalchemy import select

from tests.conftest import requires_postgres
from tests.e2e.test_hold_attacks import hold_state
from tests.e2e.test_saga_recovery import assert_reconciled, orchestrator
from tests.eventually import eventually
from tests.integration.test_saga_transfers import (
    COMPENSATED,
    COMPLETED,
    balance,
    new_wallet,
    rid,
    start_wallet_service,
    wait_terminal,
)
from wallet.v1 import transfer_pb2, transfer_pb2_grpc, wallet_pb2, wallet_pb2_grpc
from wallet_platform.config import Settings
from wallet_platform.server.process import RunningServer
from wallet_platform.storage.database import Database
from wallet_platform.storage.schema import transfers

pytestmark = [pytest.mark.slow, requires_postgres]


@pytest.fixture
async def ledger_server(pg_database_url_fresh: str) -> AsyncIterator[RunningServer]:
    server = await start_wallet_service(pg_database_url_fresh, pool_size=10)
    yield server
    await server.stop(grace=1)


async def debited_transfer_id(db: Database, request_id: str) -> str:
    """The transfer's id once its debit is recorded (the saga then sleeps before credit)."""

    async def current() -> Any:
        async with db.read() as conn:
            query = select(transfers.c.transfer_id, transfers.c.state).where(
                transfers.c.request_id == request_id
            )
            return (await conn.execute(query)).first()

    row = await eventually(
        current,
        lambda row: row is not None and row.state == "DEBITED",
        what=f"the transfer of request {request_id} DEBITED",
        within=15,
    )
    return str(row.transfer_id)


@pytest.mark.parametrize("receiver_frozen", [False, True], ids=["completes", "compensates"])
async def test_client_deposits_under_step_keys_do_not_stop_the_saga(
    receiver_frozen: bool,
    tmp_path: Path,
    pg_database_url_fresh: str,
    ledger_server: RunningServer,
) -> None:
    db = Database.from_settings(Settings(database_url=pg_database_url_fresh))
    saga = orchestrator(
        tmp_path, pg_database_url_fresh, ledger_server.target, "saga.before_credit=sleep(2000)"
    )
    try:
        async with grpc.aio.insecure_channel(ledger_server.target) as wallet_channel:
            wallets = wallet_pb2_grpc.WalletServiceStub(wallet_channel)
            sender, receiver = await new_wallet(wallets, 1_000), await new_wallet(wallets)
            mallory = await new_wallet(wallets)
            await saga.ready()
            request = transfer_pb2.CreateTransferRequest(
                request_id=rid(), from_wallet_id=sender, to_wallet_id=receiver, amount=300
            )
            async with grpc.aio.insecure_channel(saga.target) as saga_channel:
                stub = transfer_pb2_grpc.TransferServiceStub(saga_channel)
                created = asyncio.ensure_future(stub.CreateTransfer(request, timeout=30))
                transfer_id = await debited_transfer_id(db, request.request_id)
                for step in ("credit", "refund", "debit"):
                    squatted = await wallets.Deposit(
                        wallet_pb2.DepositRequest(
                            wallet_id=mallory, amount=1, request_id=f"{transfer_id}:{step}"
                        )
                    )
                    assert not squatted.replayed
                if receiver_frozen:
                    await wallets.FreezeWallet(
                        wallet_pb2.FreezeWalletRequest(wallet_id=receiver, request_id=rid())
                    )
                await created
                done = await wait_terminal(stub, transfer_id)
            if receiver_frozen:
                assert done.state == COMPENSATED, done
                expected = {sender: 1_000, receiver: 0, mallory: 3}
                settled = "VOIDED"
            else:
                assert done.state == COMPLETED, done
                expected = {sender: 700, receiver: 300, mallory: 3}
                settled = "POSTED"
            assert {w: await balance(wallets, w) for w in expected} == expected
        assert await hold_state(db, transfer_id) == settled
        await assert_reconciled(pg_database_url_fresh)
    finally:
        await saga.stop()
        await db.dispose()
