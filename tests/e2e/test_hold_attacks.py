"""The ledger refuses to create money, whoever calls it: each attack on the transfer
steps, over gRPC, against a real server on both backends, with the most privileged
tokens (``admin`` and ``orchestrator``).

After every call the conservation invariant is checked in the database (sum of
balances + sum of OPEN holds = deposits - withdrawals), and every refusal must leave
the ledger exactly as it was (wallets, holds, events and idempotency records).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from sqlalchemy import func, select

from tests.e2e.test_wallet_grpc import wallet_only
from wallet.v1 import wallet_pb2 as pb
from wallet.v1 import wallet_pb2_grpc
from wallet_platform.channels import make_channel
from wallet_platform.config import Settings
from wallet_platform.server.process import start_server
from wallet_platform.server.status import error_reason
from wallet_platform.storage.database import Database
from wallet_platform.storage.schema import (
    idempotency_records,
    transfer_holds,
    wallet_events,
    wallets,
)

Code = grpc.StatusCode
TOKENS = "t-admin=admin;t-orch=orchestrator;t-write=writer"


Stubs = tuple[wallet_pb2_grpc.WalletServiceStub, wallet_pb2_grpc.WalletServiceStub]


@pytest.fixture(params=["t-admin", "t-orch"])
async def stubs(request: pytest.FixtureRequest, settings: Settings) -> AsyncIterator[Stubs]:
    """(set-up stub with the admin token, attacker stub with the parametrized token)."""
    running = await start_server(
        settings.replace(auth_tokens=TOKENS), wallet_only, role="wallet-service"
    )
    try:
        async with (
            make_channel(running.target, Settings(auth_token="t-admin")) as admin,
            make_channel(running.target, Settings(auth_token=request.param)) as attacker,
        ):
            yield (
                wallet_pb2_grpc.WalletServiceStub(admin),
                wallet_pb2_grpc.WalletServiceStub(attacker),
            )
    finally:
        await running.stop(grace=1)


async def ledger_state(db: Database) -> dict[str, Any]:
    """Everything a step could change, to prove a refusal changed nothing."""
    async with db.read() as conn:
        return {
            "wallets": sorted(
                (r.wallet_id, r.balance, r.version, r.status)
                for r in await conn.execute(select(wallets))
            ),
            "holds": sorted(
                (r.transfer_id, r.state, r.amount)
                for r in await conn.execute(select(transfer_holds))
            ),
            "events": (
                await conn.execute(select(func.count()).select_from(wallet_events))
            ).scalar(),
            "records": (
                await conn.execute(select(func.count()).select_from(idempotency_records))
            ).scalar(),
        }


async def hold_state(db: Database, transfer_id: str) -> str | None:
    async with db.read() as conn:
        return (
            await conn.execute(
                select(transfer_holds.c.state).where(transfer_holds.c.transfer_id == transfer_id)
            )
        ).scalar()


async def assert_conserved(db: Database) -> None:
    """Sum of balances + sum of OPEN holds = deposits - withdrawals."""
    async with db.read() as conn:
        balances = (
            await conn.execute(select(func.coalesce(func.sum(wallets.c.balance), 0)))
        ).scalar_one()
        held = (
            await conn.execute(
                select(func.coalesce(func.sum(transfer_holds.c.amount), 0)).where(
                    transfer_holds.c.state == "OPEN"
                )
            )
        ).scalar_one()
        flows = {
            kind: (
                await conn.execute(
                    select(func.coalesce(func.sum(wallet_events.c.amount), 0)).where(
                        wallet_events.c.type == kind
                    )
                )
            ).scalar_one()
            for kind in ("funds_deposited", "funds_withdrawn")
        }
    assert balances + held == flows["funds_deposited"] - flows["funds_withdrawn"]


class Ledger:
    """The server under attack plus its database."""

    def __init__(
        self,
        admin: wallet_pb2_grpc.WalletServiceStub,
        stub: wallet_pb2_grpc.WalletServiceStub,
        db: Database,
    ) -> None:
        self.admin = admin  # sets up wallets and money
        self.stub = stub  # sends the steps: an admin or the orchestrator's token
        self.db = db

    async def wallet(self, balance: int = 0, currency: str = "USD") -> str:
        wallet_id = f"w-{uuid.uuid4().hex[:10]}"
        await self.admin.CreateWallet(
            pb.CreateWalletRequest(wallet_id=wallet_id, currency=currency, request_id=wallet_id)
        )
        if balance:
            await self.admin.Deposit(
                pb.DepositRequest(wallet_id=wallet_id, amount=balance, request_id=f"d-{wallet_id}")
            )
        return wallet_id

    async def balance(self, wallet_id: str) -> int:
        response = await self.admin.GetWallet(pb.GetWalletRequest(wallet_id=wallet_id))
        return int(response.wallet.balance)

    def debit(self, source: str, target: str, amount: int, transfer_id: str, **extra: Any):
        fields = {"currency": "USD", "to_wallet_id": target, **extra}
        return self.stub.DebitForTransfer(
            pb.DebitForTransferRequest(
                wallet_id=source, amount=amount, transfer_id=transfer_id, **fields
            )
        )

    def credit(self, wallet_id: str, amount: int, transfer_id: str, **extra: Any):
        fields = {"currency": "USD", **extra}
        return self.stub.CreditForTransfer(
            pb.CreditForTransferRequest(
                wallet_id=wallet_id, amount=amount, transfer_id=transfer_id, **fields
            )
        )

    def refund(self, wallet_id: str, amount: int, transfer_id: str, **extra: Any):
        fields = {"currency": "USD", **extra}
        return self.stub.RefundForTransfer(
            pb.RefundForTransferRequest(
                wallet_id=wallet_id, amount=amount, transfer_id=transfer_id, **fields
            )
        )

    async def refused(self, call: Any, code: grpc.StatusCode, reason: str) -> None:
        """The call fails with ``code``/``reason`` and the ledger is exactly as before."""
        before = await ledger_state(self.db)
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await call
        assert raised.value.code() == code, raised.value.details()
        assert error_reason(raised.value) == reason, raised.value.details()
        assert await ledger_state(self.db) == before
        await assert_conserved(self.db)

    async def applied(self, call: Any) -> Any:
        response = await call
        await assert_conserved(self.db)
        return response


@pytest.fixture
async def ledger(stubs: Stubs, database: Database) -> Ledger:
    return Ledger(*stubs, database)


async def test_minting_by_credit_or_refund_of_a_made_up_transfer_is_refused(ledger: Ledger):
    eve = await ledger.wallet()
    await ledger.refused(ledger.credit(eve, 1_000_000, "made-up"), Code.NOT_FOUND, "HOLD_NOT_FOUND")
    await ledger.refused(ledger.refund(eve, 1_000_000, "made-up"), Code.NOT_FOUND, "HOLD_NOT_FOUND")
    # The grpcurl attack verbatim: a request_id of the caller's choosing is refused too.
    await ledger.refused(
        ledger.credit(eve, 1_000_000, "made-up", request_id="x1"),
        Code.INVALID_ARGUMENT,
        "INVALID_ARGUMENT",
    )
    # A frozen wallet still takes refunds, but only of its own held money.
    await ledger.admin.FreezeWallet(pb.FreezeWalletRequest(wallet_id=eve, request_id="f-eve"))
    await ledger.refused(ledger.refund(eve, 500, "made-up-2"), Code.NOT_FOUND, "HOLD_NOT_FOUND")
    assert await ledger.balance(eve) == 0


async def test_a_credit_must_match_the_hold(ledger: Ledger):
    alice, bob, eve = await ledger.wallet(1_000), await ledger.wallet(), await ledger.wallet()
    await ledger.applied(ledger.debit(alice, bob, 300, "t1"))
    await ledger.refused(ledger.credit(bob, 301, "t1"), Code.FAILED_PRECONDITION, "HOLD_MISMATCH")
    await ledger.refused(ledger.credit(bob, 299, "t1"), Code.FAILED_PRECONDITION, "HOLD_MISMATCH")
    await ledger.refused(ledger.credit(eve, 300, "t1"), Code.FAILED_PRECONDITION, "HOLD_MISMATCH")
    await ledger.refused(ledger.credit(alice, 300, "t1"), Code.FAILED_PRECONDITION, "HOLD_MISMATCH")
    await ledger.refused(
        ledger.credit(bob, 300, "t1", currency="EUR"), Code.FAILED_PRECONDITION, "HOLD_MISMATCH"
    )
    await ledger.refused(
        ledger.refund(eve, 300, "t1"), Code.FAILED_PRECONDITION, "HOLD_MISMATCH"
    )  # a refund to a wrong wallet
    await ledger.refused(
        ledger.refund(bob, 300, "t1"), Code.FAILED_PRECONDITION, "HOLD_MISMATCH"
    )  # the destination is not the source
    credited = await ledger.applied(ledger.credit(bob, 300, "t1"))
    assert credited.wallet.balance == 300 and not credited.replayed
    assert (await ledger.balance(alice), await ledger.balance(eve)) == (700, 0)


async def test_a_settled_hold_is_settled_once(ledger: Ledger):
    alice, bob = await ledger.wallet(1_000), await ledger.wallet()
    await ledger.applied(ledger.debit(alice, bob, 300, "t1"))
    first = await ledger.applied(ledger.credit(bob, 300, "t1"))
    # The same step again replays; the balance moved once.
    again = await ledger.applied(ledger.credit(bob, 300, "t1", request_id="t1:credit"))
    assert again.replayed and again.event == first.event
    # A second credit under a request of its own choosing, or with other parameters.
    await ledger.refused(
        ledger.credit(bob, 300, "t1", request_id="second-credit"),
        Code.INVALID_ARGUMENT,
        "INVALID_ARGUMENT",
    )
    await ledger.refused(ledger.credit(bob, 30, "t1"), Code.FAILED_PRECONDITION, "HOLD_MISMATCH")
    # A refund after the credit.
    await ledger.refused(
        ledger.refund(alice, 300, "t1"), Code.FAILED_PRECONDITION, "HOLD_ALREADY_POSTED"
    )
    # A credit after a refund.
    await ledger.applied(ledger.debit(alice, bob, 100, "t2"))
    await ledger.applied(ledger.refund(alice, 100, "t2"))
    await ledger.refused(
        ledger.credit(bob, 100, "t2"), Code.FAILED_PRECONDITION, "HOLD_ALREADY_VOIDED"
    )
    # A second debit of a transfer that has its hold.
    await ledger.refused(
        ledger.debit(alice, bob, 50, "t1"), Code.ALREADY_EXISTS, "HOLD_ALREADY_EXISTS"
    )
    assert (await ledger.balance(alice), await ledger.balance(bob)) == (700, 300)


async def test_a_refused_step_leaves_the_key_free_for_the_real_one(ledger: Ledger):
    """Hold refusals are not stored: a credit sent before its debit existed (or with a
    wrong amount) does not block the real credit of that transfer."""
    alice, bob = await ledger.wallet(1_000), await ledger.wallet()
    await ledger.refused(ledger.credit(bob, 100, "t4"), Code.NOT_FOUND, "HOLD_NOT_FOUND")
    await ledger.applied(ledger.debit(alice, bob, 100, "t4"))
    await ledger.refused(ledger.credit(bob, 99, "t4"), Code.FAILED_PRECONDITION, "HOLD_MISMATCH")
    credited = await ledger.applied(ledger.credit(bob, 100, "t4"))
    assert not credited.replayed and credited.wallet.balance == 100


async def test_steps_need_currency_and_the_debit_its_destination(ledger: Ledger):
    alice, bob = await ledger.wallet(1_000), await ledger.wallet()
    for call, field in (
        (ledger.debit(alice, bob, 10, "t5", currency=""), "currency"),
        (ledger.debit(alice, "", 10, "t5"), "to_wallet_id"),
        (ledger.debit(alice, alice, 10, "t5"), "to_wallet_id"),
        (ledger.credit(bob, 10, "t5", currency=""), "currency"),
        (ledger.refund(alice, 10, "t5", currency=""), "currency"),
    ):
        before = await ledger_state(ledger.db)
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await call
        assert raised.value.code() == Code.INVALID_ARGUMENT
        assert field in (raised.value.details() or "")
        assert await ledger_state(ledger.db) == before
    await assert_conserved(ledger.db)


async def test_client_keys_cannot_squat_step_keys(ledger: Ledger):
    """A Deposit under "<T>:credit" lives in the clients' key space, not the steps'."""
    alice, bob, mallory = await ledger.wallet(1_000), await ledger.wallet(), await ledger.wallet()
    for step in ("debit", "credit", "refund"):
        await ledger.applied(
            ledger.admin.Deposit(
                pb.DepositRequest(wallet_id=mallory, amount=1, request_id=f"t6:{step}")
            )
        )
    await ledger.applied(ledger.debit(alice, bob, 200, "t6"))
    credited = await ledger.applied(ledger.credit(bob, 200, "t6"))
    assert not credited.replayed and credited.wallet.balance == 200
    assert await ledger.balance(mallory) == 3
