"""BatchDeposit and BatchWithdraw end to end: a real server, real stubs, both backends.

Each item must answer exactly what its single call answers (response, or code,
message and ErrorInfo/BadRequest details), in request order, independently of its
neighbours, with its own request_id idempotency; the batch itself is refused only
for its size (or, see test_wallet_batch_security, its caller).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import grpc
import pytest
from google.rpc import code_pb2, status_pb2
from grpc_status import rpc_status

from tests.e2e.test_wallet_grpc import create, expect, wallet_only
from wallet.v1 import wallet_pb2 as pb
from wallet.v1 import wallet_pb2_grpc
from wallet_platform.config import Settings
from wallet_platform.server.batches import MAX_BATCH_ITEMS
from wallet_platform.server.builder import create_server
from wallet_platform.server.process import start_server
from wallet_platform.storage.database import Database
from wallet_service.bootstrap import WalletComponent
from wallet_service.service import WalletService

Code = grpc.StatusCode


@pytest.fixture
async def stub(settings: Settings) -> AsyncIterator[wallet_pb2_grpc.WalletServiceStub]:
    running = await start_server(settings, wallet_only, role="wallet-service")
    try:
        async with grpc.aio.insecure_channel(running.target) as channel:
            yield wallet_pb2_grpc.WalletServiceStub(channel)
    finally:
        await running.stop(grace=1)


def rid() -> str:
    return uuid.uuid4().hex


async def single_status(call) -> status_pb2.Status:
    """The google.rpc.Status a single call failed with."""
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call
    status = rpc_status.from_call(raised.value)
    assert status is not None
    return status


async def test_each_item_answers_as_its_single_call_in_order(stub):
    alice, bob = await create(stub), await create(stub, balance=50)
    await stub.FreezeWallet(pb.FreezeWalletRequest(wallet_id=bob, request_id=rid()))
    items = [
        pb.DepositRequest(wallet_id=alice, amount=100, request_id=rid()),
        pb.DepositRequest(wallet_id="nobody", amount=100, request_id=rid()),
        pb.DepositRequest(wallet_id=alice, amount=0, request_id=rid()),
        pb.DepositRequest(wallet_id=bob, amount=5, request_id=rid()),
        pb.DepositRequest(wallet_id=alice, amount=7, request_id=""),
        pb.DepositRequest(wallet_id=alice, amount=20, request_id=rid()),
    ]
    answer = await stub.BatchDeposit(pb.BatchDepositRequest(requests=items))
    kinds = [r.WhichOneof("result") for r in answer.results]
    assert kinds == ["response", "error", "error", "error", "error", "response"]
    # The refused items carry exactly what their single calls end with.
    for index in (1, 2, 3, 4):
        alone = pb.DepositRequest()
        alone.CopyFrom(items[index])
        if alone.request_id:
            alone.request_id = rid()  # a fresh key: the batch's outcome is stored under its own
        assert answer.results[index].error == await single_status(stub.Deposit(alone)), index
    codes = [answer.results[i].error.code for i in (1, 2, 3, 4)]
    assert codes == [
        code_pb2.NOT_FOUND,
        code_pb2.INVALID_ARGUMENT,
        code_pb2.FAILED_PRECONDITION,
        code_pb2.INVALID_ARGUMENT,
    ]
    # Neighbours of refused items applied, in order, each with its own event.
    first, last = answer.results[0].response, answer.results[5].response
    assert not first.replayed and not last.replayed
    assert {first.wallet.balance, last.wallet.balance} <= {100, 120, 20}
    got = await stub.GetWallet(pb.GetWalletRequest(wallet_id=alice))
    assert got.wallet.balance == 120 and got.wallet.version == 3
    assert first.event.event_id != last.event.event_id


async def test_a_repeated_batch_replays_item_by_item(stub):
    alice = await create(stub, balance=10)
    items = [
        pb.WithdrawRequest(wallet_id=alice, amount=4, request_id=rid()),
        pb.WithdrawRequest(wallet_id=alice, amount=100, request_id=rid()),
        pb.WithdrawRequest(wallet_id=alice, amount=5, request_id=rid()),
    ]
    first = await stub.BatchWithdraw(pb.BatchWithdrawRequest(requests=items))
    assert [r.WhichOneof("result") for r in first.results] == ["response", "error", "response"]
    assert first.results[1].error.code == code_pb2.FAILED_PRECONDITION
    # Money arrives; the replay still answers the stored outcomes, item by item.
    await stub.Deposit(pb.DepositRequest(wallet_id=alice, amount=1000, request_id=rid()))
    again = await stub.BatchWithdraw(pb.BatchWithdrawRequest(requests=items))
    replayed_error, original_error = again.results[1].error, first.results[1].error
    assert (replayed_error.code, replayed_error.message) == (
        original_error.code,
        original_error.message,
    )
    # ... exactly as a single call replaying that key answers.
    assert replayed_error == await single_status(stub.Withdraw(items[1]))
    for index in (0, 2):
        replay, original = again.results[index].response, first.results[index].response
        assert replay.replayed and not original.replayed
        assert replay.event == original.event and replay.wallet == original.wallet
    # A single call with one of the batch's request_ids replays the batch's item.
    single = await stub.Withdraw(items[0])
    assert single.replayed and single.event == first.results[0].response.event
    got = await stub.GetWallet(pb.GetWalletRequest(wallet_id=alice))
    assert got.wallet.balance == 1001


async def test_a_request_id_twice_in_one_batch_refuses_the_repeat(stub):
    alice = await create(stub)
    key = rid()
    items = [
        pb.DepositRequest(wallet_id=alice, amount=10, request_id=key),
        pb.DepositRequest(wallet_id=alice, amount=10, request_id=key),
        pb.DepositRequest(wallet_id=alice, amount=99, request_id=key),
    ]
    answer = await stub.BatchDeposit(pb.BatchDepositRequest(requests=items))
    assert answer.results[0].response.wallet.balance == 10
    for index in (1, 2):
        error = answer.results[index].error
        assert error.code == code_pb2.INVALID_ARGUMENT
        assert f"requests[{index}] repeats request_id" in error.message
        assert "requests[0]" in error.message
    got = await stub.GetWallet(pb.GetWalletRequest(wallet_id=alice))
    assert got.wallet.balance == 10


@pytest.mark.parametrize("count", [0, MAX_BATCH_ITEMS + 1])
async def test_an_empty_or_oversized_batch_is_refused_whole(stub, count):
    alice = await create(stub)
    items = [pb.DepositRequest(wallet_id=alice, amount=1, request_id=rid()) for _ in range(count)]
    error = await expect(
        stub.BatchDeposit(pb.BatchDepositRequest(requests=items)), Code.INVALID_ARGUMENT
    )
    assert "requests" in (error.details() or "")
    assert str(MAX_BATCH_ITEMS) in (error.details() or "") or count == 0
    got = await stub.GetWallet(pb.GetWalletRequest(wallet_id=alice))
    assert got.wallet.balance == 0 and got.wallet.version == 1


async def test_a_full_batch_applies_every_item(stub):
    wallets = [await create(stub) for _ in range(4)]
    items = [
        pb.DepositRequest(wallet_id=wallets[i % 4], amount=i + 1, request_id=rid())
        for i in range(MAX_BATCH_ITEMS)
    ]
    answer = await stub.BatchDeposit(pb.BatchDepositRequest(requests=items))
    assert len(answer.results) == MAX_BATCH_ITEMS
    assert all(r.WhichOneof("result") == "response" for r in answer.results)
    for offset, wallet_id in enumerate(wallets):
        got = await stub.GetWallet(pb.GetWalletRequest(wallet_id=wallet_id))
        expected = sum(i + 1 for i in range(offset, MAX_BATCH_ITEMS, 4))
        assert got.wallet.balance == expected and got.wallet.version == 1 + MAX_BATCH_ITEMS // 4


async def test_a_message_over_the_size_limit_is_refused_by_the_transport(stub):
    alice = await create(stub)
    # 600 items with 8 KiB request ids: over the 4 MiB limit but under 1,000 items.
    items = [
        pb.DepositRequest(wallet_id=alice, amount=1, request_id=f"{i}-" + "x" * 8192)
        for i in range(600)
    ]
    await expect(stub.BatchDeposit(pb.BatchDepositRequest(requests=items)), Code.RESOURCE_EXHAUSTED)
    got = await stub.GetWallet(pb.GetWalletRequest(wallet_id=alice))
    assert got.wallet.balance == 0


async def test_a_database_that_is_down_makes_each_item_unavailable():
    """Each item fails as its single call would (UNAVAILABLE, retry with the same key);
    the batch call itself is answered, and an invalid item keeps its own reason."""
    database = Database.from_settings(
        Settings(database_url="postgresql+psycopg://root@127.0.0.1:1/none")
    )
    server, port, _health = await create_server(
        "127.0.0.1:0", [WalletComponent(WalletService(database))]
    )
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = wallet_pb2_grpc.WalletServiceStub(channel)
            items = [
                pb.DepositRequest(wallet_id="w", amount=1, request_id="r1"),
                pb.DepositRequest(wallet_id="w", amount=-1, request_id="r2"),
            ]
            answer = await stub.BatchDeposit(pb.BatchDepositRequest(requests=items))
            single = await single_status(stub.Deposit(items[0]))
    finally:
        await server.stop(None)
        await database.dispose()
    assert answer.results[0].error == single
    assert single.code == code_pb2.UNAVAILABLE
    assert answer.results[1].error.code == code_pb2.INVALID_ARGUMENT
