"""An orchestrator killed while its sagas' steps travel in BatchApplyTransferSteps calls.

A real ``saga-orchestrator`` process (step batching on) dies at the failpoint
``saga.after_step_batch=exit``: a batch of steps was answered by WalletService (each
of its steps applied there), none of its sagas has learned or saved that, and other
batches may be on the wire. A successor must finish every saga with exactly one debit
and one credit each (the replayed steps move no money twice), exact balances and a
clean reconcile. (A batch answer lost without a crash: tests/integration/
test_saga_step_batch.py.)
"""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from sqlalchemy import func, select

from tests.conftest import requires_postgres
from tests.e2e.test_saga_recovery import assert_reconciled, orchestrator
from tests.integration.test_saga_transfers import (
    COMPLETED,
    balance,
    new_wallet,
    rid,
    wait_terminal,
)
from wallet.v1 import transfer_pb2, transfer_pb2_grpc, wallet_pb2_grpc
from wallet_platform.server.plumbing import AUDIT_WRITER
from wallet_platform.server.process import RunningServer
from wallet_platform.storage.database import Database
from wallet_platform.storage.schema import audit_log, transfers, wallet_events

pytestmark = pytest.mark.slow

ITEMS = 200
WALLETS = 6
BATCH_METHOD = "/wallet.v1.WalletService/BatchApplyTransferSteps"


def plan(ids: list[str]) -> list[transfer_pb2.CreateTransferRequest]:
    return [
        transfer_pb2.CreateTransferRequest(
            request_id=rid(),
            from_wallet_id=ids[n % WALLETS],
            to_wallet_id=ids[(n + 1 + n // WALLETS % (WALLETS - 1)) % WALLETS],
            amount=1 + n % 13,
        )
        for n in range(ITEMS)
    ]


async def check_ledger(
    db: Database, wallet_stub: wallet_pb2_grpc.WalletServiceStub, ids: list[str], items: list
) -> None:
    async with db.read() as conn:
        stored = (
            await conn.execute(
                select(transfers.c.transfer_id, transfers.c.state).where(
                    transfers.c.request_id.in_([i.request_id for i in items])
                )
            )
        ).all()
        assert len(stored) == ITEMS and {state for _, state in stored} == {"COMPLETED"}
        per_type: dict[str, int] = dict(
            (
                await conn.execute(
                    select(wallet_events.c.type, func.count())
                    .where(wallet_events.c.transfer_id.in_([t for t, _ in stored]))
                    .group_by(wallet_events.c.type)
                )
            ).all()
        )
    assert per_type == {"transfer_debited": ITEMS, "transfer_credited": ITEMS}
    expected = dict.fromkeys(ids, 10_000)
    for item in items:
        expected[item.from_wallet_id] -= item.amount
        expected[item.to_wallet_id] += item.amount
    for wallet_id in ids:
        assert await balance(wallet_stub, wallet_id) == expected[wallet_id]


async def batch_calls(server: RunningServer, db: Database) -> int:
    await server.runtime.extras[AUDIT_WRITER].flush()
    async with db.read() as conn:
        return int(
            (
                await conn.execute(
                    select(func.count()).where(
                        audit_log.c.method == BATCH_METHOD, audit_log.c.status_code == "OK"
                    )
                )
            ).scalar_one()
        )


@requires_postgres
async def test_orchestrator_killed_with_step_batches_in_flight_successor_finishes_all(
    tmp_path: Path,
    pg_database_url_fresh: str,
    wallet_server: RunningServer,
    db: Database,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("WALLET_SAGA_STEP_BATCH", "1")
    async with grpc.aio.insecure_channel(wallet_server.target) as wallet_channel:
        wallet_stub = wallet_pb2_grpc.WalletServiceStub(wallet_channel)
        ids = [await new_wallet(wallet_stub, 10_000) for _ in range(WALLETS)]
        items = plan(ids)
        request = transfer_pb2.BatchCreateTransfersRequest(requests=items)

        doomed = orchestrator(
            tmp_path, pg_database_url_fresh, wallet_server.target, "saga.after_step_batch=exit"
        )
        await doomed.ready()
        async with grpc.aio.insecure_channel(doomed.target) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await transfer_pb2_grpc.TransferServiceStub(channel).BatchCreateTransfers(request)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        assert await doomed.exited() == 137
        # It died right after a batch was answered: steps applied that no saga recorded.
        assert await batch_calls(wallet_server, db) >= 1
        async with db.read() as conn:
            accepted = (
                await conn.execute(
                    select(transfers.c.transfer_id, transfers.c.state).where(
                        transfers.c.request_id.in_([i.request_id for i in items])
                    )
                )
            ).all()
            debited_in_ledger = (
                await conn.execute(
                    select(func.count()).where(
                        wallet_events.c.type == "transfer_debited",
                        wallet_events.c.transfer_id.in_([t for t, _ in accepted]),
                    )
                )
            ).scalar_one()
        assert accepted
        saved_debited = sum(state == "DEBITED" for _, state in accepted)
        assert debited_in_ledger > saved_debited  # the answered batch was never saved

        successor = orchestrator(tmp_path, pg_database_url_fresh, wallet_server.target)
        try:
            await successor.ready()
            async with grpc.aio.insecure_channel(successor.target) as channel:
                stub = transfer_pb2_grpc.TransferServiceStub(channel)
                for transfer_id, _ in accepted:  # the sweeper finishes them, unasked
                    assert (await wait_terminal(stub, transfer_id)).state == COMPLETED
                retried = await stub.BatchCreateTransfers(request)  # the client's retry
                for result in retried.results:
                    assert result.WhichOneof("result") == "response", result
                    done = await wait_terminal(stub, result.response.transfer.transfer_id)
                    assert done.state == COMPLETED, done
        finally:
            await successor.stop()
        await check_ledger(db, wallet_stub, ids, items)
    await assert_reconciled(pg_database_url_fresh)
