"""One audit id leads from a CreateTransfer call to the saga, the ledger and the steps.

Runs the whole platform in one process (``wallet-stack`` components) with token
authentication on, the way an operator would deploy it: a client token with the
``writer`` role starts a transfer; the stack's own orchestrator reaches WalletService
with its ``orchestrator`` token (``WALLET_AUTH_TOKEN``) through
``wallet_platform.channels``.
"""

from __future__ import annotations

import inspect

import grpc
from sqlalchemy import select

from wallet.v1 import transfer_pb2, transfer_pb2_grpc, wallet_pb2, wallet_pb2_grpc
from wallet_platform.channels import AUDIT_ID_HEADER, make_channel
from wallet_platform.config import Settings
from wallet_platform.server.plumbing import AUDIT_WRITER
from wallet_platform.server.process import start_server
from wallet_platform.storage.schema import audit_log, transfers, wallet_events
from wallet_stack.main import build_stack


async def _audit_id(call) -> str:
    metadata = call.trailing_metadata()
    if inspect.isawaitable(metadata):
        metadata = await metadata
    return dict(metadata)[AUDIT_ID_HEADER]


async def test_create_transfer_audit_id_reaches_transfer_events_and_steps(settings: Settings):
    stack_settings = settings.replace(
        auth_tokens="internal=orchestrator@saga;client=writer@teller",
        auth_token="internal",
    )
    running = await start_server(stack_settings, build_stack, role="stack")
    try:
        async with make_channel(running.target, Settings(auth_token="client")) as channel:
            wallets = wallet_pb2_grpc.WalletServiceStub(channel)
            for wallet_id in ("from", "to"):
                await wallets.CreateWallet(
                    wallet_pb2.CreateWalletRequest(
                        wallet_id=wallet_id, currency="USD", request_id=f"c-{wallet_id}"
                    )
                )
            await wallets.Deposit(
                wallet_pb2.DepositRequest(wallet_id="from", amount=100, request_id="d")
            )
            call = transfer_pb2_grpc.TransferServiceStub(channel).CreateTransfer(
                transfer_pb2.CreateTransferRequest(
                    request_id="t-1", from_wallet_id="from", to_wallet_id="to", amount=40
                ),
                timeout=30,
            )
            response = await call
            audit_id = await _audit_id(call)
            assert response.transfer.state == transfer_pb2.TRANSFER_STATE_COMPLETED
            # A client with only the writer role may not call a step RPC itself.
            try:
                await wallets.DebitForTransfer(
                    wallet_pb2.DebitForTransferRequest(
                        wallet_id="from", amount=1, transfer_id="x", request_id="x:debit"
                    )
                )
                raise AssertionError("step RPC allowed for a writer")
            except grpc.aio.AioRpcError as error:
                assert error.code() == grpc.StatusCode.PERMISSION_DENIED

        await running.runtime.extras[AUDIT_WRITER].flush()
        transfer_id = response.transfer.transfer_id
        async with running.runtime.db.read() as conn:
            stored = (
                await conn.execute(
                    select(transfers.c.audit_id).where(transfers.c.transfer_id == transfer_id)
                )
            ).scalar_one()
            stamped = (
                await conn.execute(
                    select(wallet_events.c.type, wallet_events.c.audit_id).where(
                        wallet_events.c.transfer_id == transfer_id
                    )
                )
            ).all()
            rows = (
                await conn.execute(
                    select(audit_log.c.method, audit_log.c.caller, audit_log.c.request_json)
                    .where(audit_log.c.method.like("%Transfer"))
                    .order_by(audit_log.c.started_at)
                )
            ).all()
        assert stored == audit_id
        assert dict(stamped) == {"transfer_debited": audit_id, "transfer_credited": audit_id}
        steps = [(m.rsplit("/", 1)[-1], caller) for m, caller, body in rows if transfer_id in body]
        assert ("CreateTransfer", "teller") in [
            (m.rsplit("/", 1)[-1], caller) for m, caller, _ in rows
        ]
        assert steps == [("DebitForTransfer", "saga"), ("CreditForTransfer", "saga")]
    finally:
        await running.stop()
