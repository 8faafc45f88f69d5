"""WalletService end to end: a real server on port 0, real stubs, both backends.

Covers every status code of the contract's table and every kind of bad input, as a
client sees them: the code, the ErrorInfo reason and the BadRequest field.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from wallet.v1 import wallet_pb2 as pb
from wallet.v1 import wallet_pb2_grpc
from wallet_platform.config import Settings
from wallet_platform.runtime import Runtime
from wallet_platform.server.builder import Component, create_server
from wallet_platform.server.process import start_server
from wallet_platform.server.status import error_reason
from wallet_platform.storage.database import Database
from wallet_service.bootstrap import WalletComponent
from wallet_service.service import WalletService

INT64_MAX = 2**63 - 1
Code = grpc.StatusCode


def wallet_only(runtime: Runtime) -> list[Component]:
    """Just the WalletService component: these tests are about its API, not the relay."""
    return [WalletComponent(WalletService(runtime.db))]


@pytest.fixture
async def target(settings: Settings) -> AsyncIterator[str]:
    running = await start_server(settings, wallet_only, role="wallet-service")
    try:
        yield running.target
    finally:
        await running.stop(grace=1)


@pytest.fixture
async def stub(target: str) -> AsyncIterator[wallet_pb2_grpc.WalletServiceStub]:
    async with grpc.aio.insecure_channel(target) as channel:
        yield wallet_pb2_grpc.WalletServiceStub(channel)


def rid() -> str:
    return uuid.uuid4().hex


def bad_field(error: grpc.aio.AioRpcError) -> str | None:
    status = rpc_status.from_call(error)
    assert status is not None
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad_request = error_details_pb2.BadRequest()
            detail.Unpack(bad_request)
            return str(bad_request.field_violations[0].field)
    return None


async def expect(call, code: grpc.StatusCode, reason: str | None = None) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call
    assert raised.value.code() == code, raised.value.details()
    if reason is not None:
        assert error_reason(raised.value) == reason
    return raised.value


async def create(stub, balance: int = 0, currency: str = "USD") -> str:
    wallet = (
        await stub.CreateWallet(pb.CreateWalletRequest(currency=currency, request_id=rid()))
    ).wallet
    if balance:
        await stub.Deposit(
            pb.DepositRequest(wallet_id=wallet.wallet_id, amount=balance, request_id=rid())
        )
    return str(wallet.wallet_id)


async def test_a_wallet_lifecycle_through_the_api(stub):
    created = await stub.CreateWallet(
        pb.CreateWalletRequest(wallet_id="carol", currency="USD", request_id="c1")
    )
    assert created.wallet.status == pb.WALLET_STATUS_ACTIVE and not created.replayed
    deposit = pb.DepositRequest(wallet_id="carol", amount=1_000, request_id="d1")
    first = await stub.Deposit(deposit)
    again = await stub.Deposit(deposit)
    assert (first.replayed, again.replayed) == (False, True)
    assert again.event == first.event and again.wallet.balance == 1_000
    withdrawn = await stub.Withdraw(
        pb.WithdrawRequest(wallet_id="carol", amount=250, request_id="w1")
    )
    assert withdrawn.wallet.balance == 750 and withdrawn.event.sequence == 3
    debit = await stub.DebitForTransfer(
        pb.DebitForTransferRequest(
            wallet_id="carol",
            amount=50,
            transfer_id="tx",
            request_id="tx:debit",
            currency="USD",
            to_wallet_id="dave",
        )
    )
    assert debit.event.transfer_id == "tx" and debit.wallet.balance == 700
    frozen = await stub.FreezeWallet(pb.FreezeWalletRequest(wallet_id="carol", request_id="f1"))
    assert frozen.wallet.status == pb.WALLET_STATUS_FROZEN
    refund = await stub.RefundForTransfer(
        pb.RefundForTransferRequest(
            wallet_id="carol", amount=50, transfer_id="tx", request_id="tx:refund", currency="USD"
        )
    )
    assert refund.wallet.balance == 750
    unfrozen = await stub.UnfreezeWallet(
        pb.UnfreezeWalletRequest(wallet_id="carol", request_id="u1")
    )
    assert unfrozen.wallet.status == pb.WALLET_STATUS_ACTIVE
    # Money for carol held by a transfer from dave; the credit settles that hold.
    await stub.CreateWallet(
        pb.CreateWalletRequest(wallet_id="dave", currency="USD", request_id="cd")
    )
    await stub.Deposit(pb.DepositRequest(wallet_id="dave", amount=5, request_id="dd"))
    await stub.DebitForTransfer(
        pb.DebitForTransferRequest(
            wallet_id="dave", amount=5, transfer_id="ty", currency="USD", to_wallet_id="carol"
        )
    )
    credit = await stub.CreditForTransfer(
        pb.CreditForTransferRequest(
            wallet_id="carol", amount=5, transfer_id="ty", request_id="ty:credit", currency="USD"
        )
    )
    assert credit.event.type == pb.WALLET_EVENT_TYPE_TRANSFER_CREDITED

    page = await stub.ListWalletEvents(pb.ListWalletEventsRequest(wallet_id="carol", page_size=4))
    assert [e.sequence for e in page.events] == [8, 7, 6, 5] and page.next_page_token
    rest = await stub.ListWalletEvents(
        pb.ListWalletEventsRequest(wallet_id="carol", page_size=4, page_token=page.next_page_token)
    )
    assert [e.sequence for e in rest.events] == [4, 3, 2, 1] and not rest.next_page_token
    assert [e.balance_after for e in rest.events] == [700, 750, 1_000, 0]

    now = (await stub.GetWallet(pb.GetWalletRequest(wallet_id="carol"))).wallet
    assert (now.balance, now.version) == (755, 8)
    past = (await stub.GetWallet(pb.GetWalletRequest(wallet_id="carol", as_of_sequence=5))).wallet
    assert (past.balance, past.status, past.version) == (700, pb.WALLET_STATUS_FROZEN, 5)
    by_time = (
        await stub.GetWallet(
            pb.GetWalletRequest(wallet_id="carol", as_of_time=page.events[-1].occurred_at)
        )
    ).wallet
    assert by_time.version >= 5  # the last event at or before that instant


async def test_every_status_code_of_the_contract(stub):
    funded = await create(stub, 100)
    sender = await create(stub, 10)
    await stub.DebitForTransfer(  # money held for `funded`, credited once it is frozen
        pb.DebitForTransferRequest(
            wallet_id=sender, amount=1, transfer_id="t", currency="USD", to_wallet_id=funded
        )
    )
    # INVALID_ARGUMENT: malformed id, amount <= 0, missing request_id, oversized field
    await expect(
        stub.Deposit(pb.DepositRequest(wallet_id="a b", amount=1, request_id=rid())),
        Code.INVALID_ARGUMENT,
    )
    await expect(
        stub.Deposit(pb.DepositRequest(wallet_id=funded, amount=0, request_id=rid())),
        Code.INVALID_ARGUMENT,
    )
    await expect(
        stub.Withdraw(pb.WithdrawRequest(wallet_id=funded, amount=5)), Code.INVALID_ARGUMENT
    )
    await expect(
        stub.Deposit(pb.DepositRequest(wallet_id=funded, amount=1, request_id="r" * 10_000)),
        Code.INVALID_ARGUMENT,
    )
    # NOT_FOUND
    await expect(
        stub.GetWallet(pb.GetWalletRequest(wallet_id="missing")), Code.NOT_FOUND, "WALLET_NOT_FOUND"
    )
    await expect(
        stub.Deposit(pb.DepositRequest(wallet_id="missing", amount=1, request_id=rid())),
        Code.NOT_FOUND,
        "WALLET_NOT_FOUND",
    )
    # FAILED_PRECONDITION: insufficient funds, frozen wallet, currency mismatch
    await expect(
        stub.Withdraw(pb.WithdrawRequest(wallet_id=funded, amount=101, request_id=rid())),
        Code.FAILED_PRECONDITION,
        "INSUFFICIENT_FUNDS",
    )
    await expect(
        stub.DebitForTransfer(
            pb.DebitForTransferRequest(
                wallet_id=funded, amount=1, transfer_id="t2", currency="EUR", to_wallet_id=sender
            )
        ),
        Code.FAILED_PRECONDITION,
        "CURRENCY_MISMATCH",
    )
    await stub.FreezeWallet(pb.FreezeWalletRequest(wallet_id=funded, request_id=rid()))
    await expect(
        stub.Deposit(pb.DepositRequest(wallet_id=funded, amount=1, request_id=rid())),
        Code.FAILED_PRECONDITION,
        "WALLET_FROZEN",
    )
    await expect(
        stub.CreditForTransfer(
            pb.CreditForTransferRequest(wallet_id=funded, amount=1, transfer_id="t", currency="USD")
        ),
        Code.FAILED_PRECONDITION,
        "WALLET_FROZEN",
    )
    # ALREADY_EXISTS: request_id reused with other parameters; wallet_id taken
    await expect(
        stub.UnfreezeWallet(pb.UnfreezeWalletRequest(wallet_id="other", request_id="dup")),
        Code.NOT_FOUND,
    )
    await expect(
        stub.UnfreezeWallet(pb.UnfreezeWalletRequest(wallet_id=funded, request_id="dup")),
        Code.ALREADY_EXISTS,
        "REQUEST_ID_REUSED",
    )
    await expect(
        stub.CreateWallet(
            pb.CreateWalletRequest(wallet_id=funded, currency="USD", request_id=rid())
        ),
        Code.ALREADY_EXISTS,
        "WALLET_ALREADY_EXISTS",
    )
    # OUT_OF_RANGE: balance would overflow int64
    rich = await create(stub, INT64_MAX)
    await expect(
        stub.Deposit(pb.DepositRequest(wallet_id=rich, amount=1, request_id=rid())),
        Code.OUT_OF_RANGE,
        "BALANCE_OVERFLOW",
    )
    # A replayed error is the very same error.
    request = pb.WithdrawRequest(wallet_id=rich, amount=INT64_MAX, request_id="drain")
    await stub.Withdraw(request)
    replay = await stub.Withdraw(request)
    assert replay.replayed and replay.wallet.balance == 0


NUL = "ab\x00cd"
HUGE = "x" * 10_000


@pytest.mark.parametrize(
    ("method", "message", "field"),
    [
        (
            "CreateWallet",
            pb.CreateWalletRequest(currency="USD", request_id="r", wallet_id="bad id"),
            "wallet_id",
        ),
        (
            "CreateWallet",
            pb.CreateWalletRequest(currency="USD", request_id="r", wallet_id=NUL),
            "wallet_id",
        ),
        (
            "CreateWallet",
            pb.CreateWalletRequest(currency="USD", request_id="r", wallet_id=HUGE),
            "wallet_id",
        ),
        (
            "CreateWallet",
            pb.CreateWalletRequest(currency="USD", request_id="r", wallet_id="w" * 65),
            "wallet_id",
        ),
        ("CreateWallet", pb.CreateWalletRequest(currency="", request_id="r"), "currency"),
        ("CreateWallet", pb.CreateWalletRequest(currency="usd", request_id="r"), "currency"),
        ("CreateWallet", pb.CreateWalletRequest(currency="US", request_id="r"), "currency"),
        ("CreateWallet", pb.CreateWalletRequest(currency="US\x00", request_id="r"), "currency"),
        ("CreateWallet", pb.CreateWalletRequest(currency=HUGE, request_id="r"), "currency"),
        ("CreateWallet", pb.CreateWalletRequest(currency="USD"), "request_id"),
        (
            "CreateWallet",
            pb.CreateWalletRequest(currency="USD", request_id="r" * 129),
            "request_id",
        ),
        ("CreateWallet", pb.CreateWalletRequest(currency="USD", request_id=NUL), "request_id"),
        (
            "CreateWallet",
            pb.CreateWalletRequest(currency="USD", request_id="has space"),
            "request_id",
        ),
        ("GetWallet", pb.GetWalletRequest(), "wallet_id"),
        ("GetWallet", pb.GetWalletRequest(wallet_id=NUL), "wallet_id"),
        ("GetWallet", pb.GetWalletRequest(wallet_id="w", as_of_sequence=-1), "as_of_sequence"),
        ("Deposit", pb.DepositRequest(wallet_id="", amount=1, request_id="r"), "wallet_id"),
        ("Deposit", pb.DepositRequest(wallet_id="w", amount=0, request_id="r"), "amount"),
        ("Deposit", pb.DepositRequest(wallet_id="w", amount=-5, request_id="r"), "amount"),
        ("Deposit", pb.DepositRequest(wallet_id="w", amount=1, request_id=""), "request_id"),
        ("Deposit", pb.DepositRequest(wallet_id="w", amount=1, request_id=HUGE), "request_id"),
        ("Withdraw", pb.WithdrawRequest(wallet_id=HUGE, amount=1, request_id="r"), "wallet_id"),
        ("Withdraw", pb.WithdrawRequest(wallet_id="w", amount=-1, request_id="r"), "amount"),
        ("Withdraw", pb.WithdrawRequest(wallet_id="w", amount=1, request_id="r\x00"), "request_id"),
        ("ListWalletEvents", pb.ListWalletEventsRequest(wallet_id=""), "wallet_id"),
        ("ListWalletEvents", pb.ListWalletEventsRequest(wallet_id="w", page_size=-1), "page_size"),
        (
            "ListWalletEvents",
            pb.ListWalletEventsRequest(wallet_id="w", page_size=1001),
            "page_size",
        ),
        (
            "ListWalletEvents",
            pb.ListWalletEventsRequest(wallet_id="w", page_token="@@bogus@@"),
            "page_token",
        ),
        (
            "ListWalletEvents",
            pb.ListWalletEventsRequest(wallet_id="w", page_token=HUGE),
            "page_token",
        ),
        ("FreezeWallet", pb.FreezeWalletRequest(wallet_id="w"), "request_id"),
        ("FreezeWallet", pb.FreezeWalletRequest(wallet_id="a/b", request_id="r"), "wallet_id"),
        ("UnfreezeWallet", pb.UnfreezeWalletRequest(wallet_id=NUL, request_id="r"), "wallet_id"),
        (
            "DebitForTransfer",
            pb.DebitForTransferRequest(wallet_id="w", amount=1, request_id="r"),
            "transfer_id",
        ),
        (
            "DebitForTransfer",
            pb.DebitForTransferRequest(wallet_id="w", amount=1, request_id="r", transfer_id=NUL),
            "transfer_id",
        ),
        (
            "CreditForTransfer",
            pb.CreditForTransferRequest(
                wallet_id="w", amount=1, request_id="r", transfer_id="t", currency="usd"
            ),
            "currency",
        ),
        (
            "RefundForTransfer",
            pb.RefundForTransferRequest(wallet_id="w", amount=0, request_id="r", transfer_id="t"),
            "amount",
        ),
        (
            "RefundForTransfer",
            pb.RefundForTransferRequest(wallet_id="w", amount=1, transfer_id="t"),
            "currency",
        ),
        (
            "CreditForTransfer",
            pb.CreditForTransferRequest(
                wallet_id="w", amount=1, transfer_id="t", currency="USD", request_id="t:refund"
            ),
            "request_id",
        ),
        (
            "DebitForTransfer",
            pb.DebitForTransferRequest(wallet_id="w", amount=1, transfer_id="t", currency="USD"),
            "to_wallet_id",
        ),
        (
            "DebitForTransfer",
            pb.DebitForTransferRequest(
                wallet_id="w", amount=1, transfer_id="t", currency="USD", to_wallet_id="w"
            ),
            "to_wallet_id",
        ),
        (
            "CreditForTransfer",
            pb.CreditForTransferRequest(wallet_id="w", amount=1, transfer_id="t"),
            "currency",
        ),
    ],
)
async def test_bad_input_is_invalid_argument_naming_the_field(stub, method, message, field):
    error = await expect(getattr(stub, method)(message), Code.INVALID_ARGUMENT, "INVALID_ARGUMENT")
    assert bad_field(error) == field
    assert field in (error.details() or "")
    assert len(error.details() or "") < 500  # a huge input is never echoed back whole


async def test_undecodable_bytes_do_not_crash_the_server(stub, target):
    wallet_id = await create(stub)
    async with grpc.aio.insecure_channel(target) as channel:
        raw = channel.unary_unary(
            "/wallet.v1.WalletService/Deposit",
            request_serializer=lambda body: body,
            response_deserializer=lambda body: body,
        )
        # invalid UTF-8 in a string field, garbage tags, a truncated varint
        for body in (b"\x0a\x02\xff\xfe", b"\xff\xff\xff\xff", b"\x10" + b"\xff" * 11):
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await raw(body)
            assert raised.value.code() == Code.INVALID_ARGUMENT
    deposited = await stub.Deposit(
        pb.DepositRequest(wallet_id=wallet_id, amount=1, request_id=rid())
    )
    assert deposited.wallet.balance == 1


async def test_a_database_that_is_down_is_unavailable():
    # Nothing listens on port 1: every database call fails to connect.
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
            await expect(
                stub.Deposit(pb.DepositRequest(wallet_id="w", amount=1, request_id="r")),
                Code.UNAVAILABLE,
                "UNAVAILABLE",
            )
            await expect(stub.GetWallet(pb.GetWalletRequest(wallet_id="w")), Code.UNAVAILABLE)
    finally:
        await server.stop(None)
        await database.dispose()
