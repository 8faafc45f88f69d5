"""A BatchCreateTransfers whose orchestrator dies mid-batch (a real process, kill -9).

The orchestrator exits at the first credit call (``saga.before_credit=exit``), with
the batch's sagas inserted, some debited, none credited. A fresh orchestrator must
finish every transfer the dead one accepted without any help from the client; the
client's retry of the whole batch (same request_ids) then gets each accepted transfer
as a replay and starts the rest; every balance is exact and no step ran twice.
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
from wallet_platform.server.process import RunningServer
from wallet_platform.storage.database import Database
from wallet_platform.storage.schema import transfers, wallet_events

pytestmark = pytest.mark.slow

ITEMS = 300
WALLETS = 6


async def stored(db: Database, request_ids: list[str]) -> list[tuple[str, str, str]]:
    async with db.read() as conn:
        rows = await conn.execute(
            select(transfers.c.request_id, transfers.c.transfer_id, transfers.c.state).where(
                transfers.c.request_id.in_(request_ids)
            )
        )
        return [(r.request_id, r.transfer_id, r.state) for r in rows]


@requires_postgres
async def test_orchestrator_killed_mid_batch_every_accepted_transfer_finishes(
    tmp_path: Path,
    pg_database_url_fresh: str,
    wallet_server: RunningServer,
    db: Database,
) -> None:
    async with grpc.aio.insecure_channel(wallet_server.target) as wallet_channel:
        wallet_stub = wallet_pb2_grpc.WalletServiceStub(wallet_channel)
        ids = [await new_wallet(wallet_stub, 10_000) for _ in range(WALLETS)]
        items = [
            transfer_pb2.CreateTransferRequest(
                request_id=rid(),
                from_wallet_id=ids[n % WALLETS],
                to_wallet_id=ids[(n + 1 + n // WALLETS % (WALLETS - 1)) % WALLETS],
                amount=1 + n % 13,
            )
            for n in range(ITEMS)
        ]
        request = transfer_pb2.BatchCreateTransfersRequest(requests=items)
        keys = [i.request_id for i in items]

        doomed = orchestrator(
            tmp_path, pg_database_url_fresh, wallet_server.target, "saga.before_credit=exit"
        )
        await doomed.ready()
        async with grpc.aio.insecure_channel(doomed.target) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await transfer_pb2_grpc.TransferServiceStub(channel).BatchCreateTransfers(request)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        assert await doomed.exited() == 137

        accepted = await stored(db, keys)
        assert accepted, "the orchestrator died before accepting anything"
        assert {state for _, _, state in accepted} <= {"PENDING", "DEBITED"}
        assert "DEBITED" in {state for _, _, state in accepted}  # mid-saga, not before

        successor = orchestrator(tmp_path, pg_database_url_fresh, wallet_server.target)
        try:
            await successor.ready()
            async with grpc.aio.insecure_channel(successor.target) as channel:
                stub = transfer_pb2_grpc.TransferServiceStub(channel)
                # The sweeper finishes what the dead process accepted, unasked.
                for _, transfer_id, _ in accepted:
                    assert (await wait_terminal(stub, transfer_id)).state == COMPLETED
                retried = await stub.BatchCreateTransfers(request)
                first_ids = {key: transfer_id for key, transfer_id, _ in accepted}
                for key, result in zip(keys, retried.results, strict=True):
                    assert result.WhichOneof("result") == "response", result
                    response = result.response
                    assert response.replayed == (key in first_ids)
                    if key in first_ids:
                        assert response.transfer.transfer_id == first_ids[key]
                    done = await wait_terminal(stub, response.transfer.transfer_id)
                    assert done.state == COMPLETED, done
        finally:
            await successor.stop()

        final = await stored(db, keys)
        assert len(final) == ITEMS and {state for _, _, state in final} == {"COMPLETED"}
        expected = dict.fromkeys(ids, 10_000)
        for item in items:
            expected[item.from_wallet_id] -= item.amount
            expected[item.to_wallet_id] += item.amount
        for wallet_id in ids:
            assert await balance(wallet_stub, wallet_id) == expected[wallet_id]
        async with db.read() as conn:
            per_transfer = (
                await conn.execute(
                    select(wallet_events.c.type, func.count())
                    .where(wallet_events.c.transfer_id.in_([t for _, t, _ in final]))
                    .group_by(wallet_events.c.type)
                )
            ).all()
        assert dict(per_transfer) == {"transfer_debited": ITEMS, "transfer_credited": ITEMS}
    await assert_reconciled(pg_database_url_fresh)
