"""Currencies through the real servers: ISO 4217 codes only, the allow-list, and
wallets whose currency later leaves the allow-list (they keep working).

Each test runs the whole ``wallet-stack`` (the composition ``make run`` starts) on
port 0 against each backend, so the allow-list comes in through Settings exactly as
``WALLET_CURRENCIES`` / ``--currencies`` bring it.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import grpc
import pytest

from tests.e2e.test_wallet_grpc import bad_field, expect
from tests.integration.walletctl_harness import running_stack
from wallet.v1 import transfer_pb2, transfer_pb2_grpc, wallet_pb2_grpc
from wallet.v1 import wallet_pb2 as pb
from wallet_platform.config import Settings
from wallet_platform.server.process import start_server
from wallet_stack.main import build_stack

Code = grpc.StatusCode


@asynccontextmanager
async def stubs(
    database_url: str, currencies: str = ""
) -> AsyncIterator[tuple[wallet_pb2_grpc.WalletServiceStub, transfer_pb2_grpc.TransferServiceStub]]:
    async with (
        running_stack(database_url, currencies=currencies) as running,
        grpc.aio.insecure_channel(running.target) as channel,
    ):
        yield (
            wallet_pb2_grpc.WalletServiceStub(channel),
            transfer_pb2_grpc.TransferServiceStub(channel),
        )


def create(currency: str, request_id: str = "", wallet_id: str = "") -> pb.CreateWalletRequest:
    return pb.CreateWalletRequest(
        wallet_id=wallet_id, currency=currency, request_id=request_id or uuid.uuid4().hex
    )


@pytest.mark.parametrize(
    ("currency", "reason"),
    [
        ("ZZZ", "UNKNOWN_CURRENCY"),  # three capital letters, but no currency
        ("DEM", "UNKNOWN_CURRENCY"),  # historic (ISO list three)
        ("XAU", "UNKNOWN_CURRENCY"),  # gold: ISO gives no minor unit
        ("XXX", "UNKNOWN_CURRENCY"),
        ("USN", "CURRENCY_NOT_ALLOWED"),  # a fund code: only when the allow-list names it
        ("usd", "INVALID_ARGUMENT"),  # lower case: the shape rule, no case folding
    ],
)
async def test_create_wallet_refuses_what_is_not_an_active_iso_currency(
    database_url: str, currency: str, reason: str
) -> None:
    async with stubs(database_url) as (wallets, _):
        error = await expect(
            wallets.CreateWallet(create(currency, "r-bad")), Code.INVALID_ARGUMENT, reason
        )
        assert bad_field(error) == "currency"
        assert currency in (error.details() or "")
        # Nothing was stored under the key: the corrected request may reuse it.
        fixed = await wallets.CreateWallet(create("USD", "r-bad"))
        assert fixed.wallet.currency == "USD" and not fixed.replayed


async def test_create_wallet_accepts_exponents_0_2_3(database_url: str) -> None:
    async with stubs(database_url) as (wallets, _):
        for currency in ("JPY", "USD", "BHD", "XOF", "UYW"):
            created = await wallets.CreateWallet(create(currency))
            assert created.wallet.currency == currency


async def test_the_allow_list_decides_which_currencies_new_wallets_hold(
    database_url: str,
) -> None:
    async with stubs(database_url, currencies="USD,JPY,USN") as (wallets, _):
        for currency in ("USD", "JPY", "USN"):
            assert (await wallets.CreateWallet(create(currency))).wallet.currency == currency
        error = await expect(
            wallets.CreateWallet(create("EUR")), Code.INVALID_ARGUMENT, "CURRENCY_NOT_ALLOWED"
        )
        assert bad_field(error) == "currency" and "EUR" in (error.details() or "")
        await expect(wallets.CreateWallet(create("ZZZ")), Code.INVALID_ARGUMENT, "UNKNOWN_CURRENCY")


async def test_wallets_keep_working_after_their_currency_leaves_the_allow_list(
    database_url: str,
) -> None:
    async with stubs(database_url) as (wallets, _):  # every active code
        for wallet_id in ("eu-a", "eu-b"):
            await wallets.CreateWallet(create("EUR", f"create-{wallet_id}", wallet_id))
        await wallets.Deposit(pb.DepositRequest(wallet_id="eu-a", amount=5_000, request_id="d1"))

    async with stubs(database_url, currencies="USD") as (wallets, transfers):
        # New EUR wallets are refused...
        await expect(
            wallets.CreateWallet(create("EUR")), Code.INVALID_ARGUMENT, "CURRENCY_NOT_ALLOWED"
        )
        # ...but a retry of the request that opened one gets that wallet back.
        again = await wallets.CreateWallet(create("EUR", "create-eu-a", "eu-a"))
        assert again.replayed and again.wallet.wallet_id == "eu-a"
        # Reads, deposits, withdrawals, freezes and transfers of existing EUR wallets go on.
        assert (await wallets.GetWallet(pb.GetWalletRequest(wallet_id="eu-a"))).wallet.balance == (
            5_000
        )
        await wallets.Deposit(pb.DepositRequest(wallet_id="eu-a", amount=1_000, request_id="d2"))
        await wallets.Withdraw(pb.WithdrawRequest(wallet_id="eu-a", amount=500, request_id="w1"))
        moved = await transfers.CreateTransfer(
            transfer_pb2.CreateTransferRequest(
                request_id="t1", from_wallet_id="eu-a", to_wallet_id="eu-b", amount=2_500
            )
        )
        assert moved.transfer.state == transfer_pb2.TRANSFER_STATE_COMPLETED, moved.transfer
        assert moved.transfer.currency == "EUR"
        balances = [
            (await wallets.GetWallet(pb.GetWalletRequest(wallet_id=w))).wallet.balance
            for w in ("eu-a", "eu-b")
        ]
        assert balances == [3_000, 2_500]
        # A transfer step naming a currency the wallet does not hold is the wallet's
        # business rule (CURRENCY_MISMATCH), whether or not the code exists.
        for currency in ("ZZZ", "USD"):
            await expect(
                wallets.DebitForTransfer(
                    pb.DebitForTransferRequest(
                        wallet_id="eu-a",
                        amount=1,
                        transfer_id="tx",
                        request_id=f"tx:{currency}",
                        currency=currency,
                    )
                ),
                Code.FAILED_PRECONDITION,
                "CURRENCY_MISMATCH",
            )
        frozen = await wallets.FreezeWallet(
            pb.FreezeWalletRequest(wallet_id="eu-b", request_id="f")
        )
        assert frozen.wallet.status == pb.WALLET_STATUS_FROZEN


@pytest.mark.parametrize("spec", ["USD,ZZZ", "EUR,XAU"])
async def test_a_bad_allow_list_stops_the_server_at_start(tmp_path, spec: str) -> None:
    settings = Settings(
        database_url=f"sqlite:///{tmp_path / 'w.db'}", listen="127.0.0.1:0", currencies=spec
    )
    with pytest.raises(SystemExit) as stopped:
        await start_server(settings, build_stack, role="stack")
    assert spec.split(",")[1] in str(stopped.value)
