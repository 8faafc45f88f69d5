"""Batch RPCs against roles, tenants, the audit trail and the call limits, on both backends.

- A batch needs the role of its items' single RPC: ``writer`` for BatchDeposit and
  BatchWithdraw, ``orchestrator`` for BatchApplyTransferSteps.
- A tenant-limited caller naming ANY wallet outside its prefix in ANY item is refused
  as a whole (PERMISSION_DENIED) before an item runs: none of the batch applies.
- Every answered batch leaves one audit row for itself and one per item (the item's
  single method, its own audit id, stamped on its events, and a link to the batch).
- A batch is one call for WALLET_MAX_UNARY_CALLS.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator

import grpc
import pytest
from sqlalchemy import select

from tests.e2e.test_wallet_grpc import wallet_only
from wallet.v1 import wallet_pb2 as pb
from wallet.v1 import wallet_pb2_grpc
from wallet_platform.channels import AUDIT_ID_HEADER, make_channel
from wallet_platform.config import Settings
from wallet_platform.server.batches import BATCH_METHODS, item_audit_id
from wallet_platform.server.plumbing import AUDIT_WRITER, CALL_LIMITER
from wallet_platform.server.process import RunningServer, start_server
from wallet_platform.server.rpc_policy import policy
from wallet_platform.storage.database import Database
from wallet_platform.storage.schema import audit_log, wallet_events, wallets

TOKENS = (
    "t-admin=admin@root;t-orch=orchestrator@saga;t-write=writer@teller;t-read=reader@viewer;"
    "t-acme=writer[acme-]@acme;t-acme-orch=orchestrator[acme-]@acme-saga"
)
DENIED = grpc.StatusCode.PERMISSION_DENIED


@pytest.fixture
async def server(settings: Settings) -> AsyncIterator[RunningServer]:
    running = await start_server(
        settings.replace(auth_tokens=TOKENS), wallet_only, role="wallet-service"
    )
    try:
        yield running
    finally:
        await running.stop(grace=1)


def stub_as(server: RunningServer, token: str) -> grpc.aio.Channel:
    return make_channel(server.target, Settings(auth_token=token))


async def setup_wallets(server: RunningServer, *wallet_ids: str) -> None:
    async with stub_as(server, "t-admin") as channel:
        admin = wallet_pb2_grpc.WalletServiceStub(channel)
        for wallet_id in wallet_ids:
            await admin.CreateWallet(
                pb.CreateWalletRequest(wallet_id=wallet_id, currency="USD", request_id=wallet_id)
            )
            await admin.Deposit(
                pb.DepositRequest(wallet_id=wallet_id, amount=1000, request_id=f"d-{wallet_id}")
            )


async def balances(db: Database) -> dict[str, int]:
    async with db.read() as conn:
        rows = (await conn.execute(select(wallets.c.wallet_id, wallets.c.balance))).all()
    return {row.wallet_id: row.balance for row in rows}


def deposits(*wallet_ids: str) -> pb.BatchDepositRequest:
    return pb.BatchDepositRequest(
        requests=[
            pb.DepositRequest(wallet_id=w, amount=5, request_id=uuid.uuid4().hex)
            for w in wallet_ids
        ]
    )


def test_a_batch_needs_the_role_of_its_items():
    for method, shape in BATCH_METHODS.items():
        assert {policy(single).role for single in shape.kinds.values()} == {policy(method).role}


async def test_roles_are_those_of_the_single_calls(server, database):
    await setup_wallets(server, "w-1", "w-2")
    before = await balances(database)
    steps = pb.BatchApplyTransferStepsRequest(
        operations=[
            pb.StepOperation(
                debit=pb.DebitForTransferRequest(
                    wallet_id="w-1", to_wallet_id="w-2", amount=5, transfer_id="t1", currency="USD"
                )
            )
        ]
    )
    for token, call in (
        ("t-read", lambda s: s.BatchDeposit(deposits("w-1"))),
        ("t-read", lambda s: s.BatchWithdraw(pb.BatchWithdrawRequest(requests=[]))),
        ("t-orch", lambda s: s.BatchDeposit(deposits("w-1"))),
        ("t-write", lambda s: s.BatchApplyTransferSteps(steps)),
        ("t-read", lambda s: s.BatchApplyTransferSteps(steps)),
    ):
        async with stub_as(server, token) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await call(wallet_pb2_grpc.WalletServiceStub(channel))
            assert refused.value.code() == DENIED, token
    assert await balances(database) == before
    async with stub_as(server, "t-write") as channel:
        answer = await wallet_pb2_grpc.WalletServiceStub(channel).BatchDeposit(deposits("w-1"))
        assert answer.results[0].response.wallet.balance == 1005
    async with stub_as(server, "t-orch") as channel:
        answer = await wallet_pb2_grpc.WalletServiceStub(channel).BatchApplyTransferSteps(steps)
        assert answer.results[0].debit.wallet.balance == 1000


async def test_one_foreign_item_refuses_a_tenants_whole_batch(server, database):
    await setup_wallets(server, "acme-1", "acme-2", "beta-1")
    before = await balances(database)
    async with stub_as(server, "t-acme") as channel:
        acme = wallet_pb2_grpc.WalletServiceStub(channel)
        for request, call in (
            (deposits("acme-1", "beta-1", "acme-2"), acme.BatchDeposit),
            (
                pb.BatchWithdrawRequest(
                    requests=[pb.WithdrawRequest(wallet_id="beta-1", amount=5, request_id="x")]
                ),
                acme.BatchWithdraw,
            ),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await call(request)
            assert refused.value.code() == DENIED
            assert "requests[" in (refused.value.details() or "")
            assert "beta-1" in (refused.value.details() or "")
        assert await balances(database) == before
        answer = await acme.BatchDeposit(deposits("acme-1", "acme-2"))
        assert [r.response.wallet.balance for r in answer.results] == [1005, 1005]
    # A tenant's orchestrator: a debit towards another tenant, or an empty step.
    async with stub_as(server, "t-acme-orch") as channel:
        saga = wallet_pb2_grpc.WalletServiceStub(channel)
        own = pb.StepOperation(
            debit=pb.DebitForTransferRequest(
                wallet_id="acme-1",
                to_wallet_id="acme-2",
                amount=5,
                transfer_id="t1",
                currency="USD",
            )
        )
        leak = pb.StepOperation(
            debit=pb.DebitForTransferRequest(
                wallet_id="acme-1",
                to_wallet_id="beta-1",
                amount=5,
                transfer_id="t2",
                currency="USD",
            )
        )
        for operations in ([own, leak], [own, pb.StepOperation()]):
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await saga.BatchApplyTransferSteps(
                    pb.BatchApplyTransferStepsRequest(operations=operations)
                )
            assert refused.value.code() == DENIED
            assert "operations[1]" in (refused.value.details() or "")
    after = await balances(database)
    assert after["beta-1"] == before["beta-1"] and after["acme-1"] == 1005


async def test_every_item_has_its_audit_row_and_stamps_its_events(server, database):
    await setup_wallets(server, "w-1")
    async with stub_as(server, "t-write") as channel:
        stub = wallet_pb2_grpc.WalletServiceStub(channel)
        request = pb.BatchDepositRequest(
            requests=[
                pb.DepositRequest(wallet_id="w-1", amount=7, request_id="b-0"),
                pb.DepositRequest(wallet_id="nobody", amount=7, request_id="b-1"),
                pb.DepositRequest(wallet_id="w-1", amount=-7, request_id="b-2"),
            ]
        )
        # An x-audit-id names one transfer, never a batch: it is not honoured here.
        foreign = str(uuid.uuid4())
        call = stub.BatchDeposit(request, metadata=((AUDIT_ID_HEADER, foreign),))
        answer = await call
        trailers = dict(await call.trailing_metadata())
        batch_audit_id = trailers[AUDIT_ID_HEADER]
        with pytest.raises(grpc.aio.AioRpcError):
            await stub.BatchDeposit(deposits("w-1", *["w-1"] * 1000))
    await server.runtime.extras[AUDIT_WRITER].flush()
    async with database.read() as conn:
        rows = {
            row.audit_id: row._mapping
            for row in (await conn.execute(select(audit_log))).all()
            if row.caller == "teller"
        }
        stamped = (
            await conn.execute(
                select(wallet_events.c.audit_id).where(
                    wallet_events.c.event_id == answer.results[0].response.event.event_id
                )
            )
        ).scalar_one()
    batch_row = rows.pop(batch_audit_id)
    assert batch_row["method"].endswith("/BatchDeposit") and batch_row["status_code"] == "OK"
    assert json.loads(batch_row["request_json"])["items"] == 3
    items = [rows.pop(item_audit_id(batch_audit_id, i)) for i in range(3)]
    assert [(r["method"].rsplit("/", 1)[-1], r["status_code"]) for r in items] == [
        ("Deposit", "OK"),
        ("Deposit", "NOT_FOUND"),
        ("Deposit", "INVALID_ARGUMENT"),
    ]
    first = json.loads(items[0]["request_json"])
    assert first["request_id"] == "b-0" and first["amount"] == "7"
    assert first["batch"] == {"audit_id": batch_audit_id, "index": 0}
    refused = json.loads(items[2]["request_json"])  # a refused item keeps the summary only
    assert refused["omitted"] == "refused call" and refused["batch"]["index"] == 2
    assert "wallet 'nobody' not found" in items[1]["error_message"]
    assert stamped == item_audit_id(batch_audit_id, 0) != foreign
    assert answer.results[0].response.event.audit_id == stamped
    # The oversized batch: one row, refused, and no item rows.
    (oversized,) = rows.values()
    assert oversized["status_code"] == "INVALID_ARGUMENT"
    assert not any(r["audit_id"] == item_audit_id(oversized["audit_id"], 0) for r in items)


async def test_a_batch_is_one_call_for_the_call_limit(settings, database):
    running = await start_server(
        settings.replace(max_unary_calls=1), wallet_only, role="wallet-service"
    )
    try:
        await setup_wallets(running, "w-1")
        async with stub_as(running, "") as channel:
            answer = await wallet_pb2_grpc.WalletServiceStub(channel).BatchDeposit(
                deposits(*["w-1"] * 50)
            )
        assert len(answer.results) == 50
        assert all(r.WhichOneof("result") == "response" for r in answer.results)
        assert running.runtime.extras[CALL_LIMITER].unary_in_flight == 0
    finally:
        await running.stop(grace=1)


async def test_undecodable_batch_bytes_are_invalid_argument_for_everyone(server, database):
    await setup_wallets(server, "acme-1")
    # Invalid UTF-8 inside an item's wallet_id: the whole message does not decode.
    body = b"\x0a\x06\x0a\x04\xff\xfe\xfd\xfc"
    for token, code in (
        ("t-write", grpc.StatusCode.INVALID_ARGUMENT),
        ("t-acme", DENIED),  # a tenant cannot be checked against undecodable items
    ):
        async with stub_as(server, token) as channel:
            raw = channel.unary_unary(
                "/wallet.v1.WalletService/BatchDeposit",
                request_serializer=lambda b: b,
                response_deserializer=lambda b: b,
            )
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await raw(body)
            assert refused.value.code() == code, token
    await server.runtime.extras[AUDIT_WRITER].flush()
    async with database.read() as conn:
        statuses = sorted(
            row.status_code
            for row in (
                await conn.execute(select(audit_log).where(audit_log.c.method.like("%Batch%")))
            ).all()
        )
    assert statuses == ["INVALID_ARGUMENT", "PERMISSION_DENIED"]


async def test_a_batch_reserves_audit_room_for_its_item_rows(server, database):
    await setup_wallets(server, "w-1")
    writer = server.runtime.extras[AUDIT_WRITER]
    await writer.flush()
    backlog = writer.backlog
    # Other batches in flight hold all but 20 KB of the backlog.
    held = backlog.max_bytes - backlog.bytes - 20_000
    assert backlog.reserve(held)
    try:
        async with stub_as(server, "t-write") as channel:
            stub = wallet_pb2_grpc.WalletServiceStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.BatchDeposit(deposits(*["w-1"] * 100))  # ~70 KB of item rows
            assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "audit trail" in (refused.value.details() or "")
            single = await stub.Deposit(
                pb.DepositRequest(wallet_id="w-1", amount=1, request_id="s")
            )
            assert single.wallet.balance == 1001
            backlog.release(held)
            held = 0
            answer = await stub.BatchDeposit(deposits(*["w-1"] * 100))
            assert all(r.WhichOneof("result") == "response" for r in answer.results)
    finally:
        backlog.release(held)
    assert backlog.reserved == 0
    assert (await balances(database))["w-1"] == 1001 + 500
