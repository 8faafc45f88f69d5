"""Tenant-limited tokens against the whole stack: no RPC reaches another team's wallets.

The stack (every service, as ``wallet-stack`` runs it) has tokens for an unlimited
admin, the stack's own orchestrator, and the acme team: ``writer[acme-]`` for its
service and ``admin[acme-]`` (every role, so only the tenant limit can refuse).
"""

from __future__ import annotations

import grpc
import pytest
from google.protobuf import descriptor_pool

from tests.integration.walletctl_harness import running_stack
from wallet.v1 import (
    analytics_pb2,
    fraud_pb2,
    transfer_pb2,
    transfer_pb2_grpc,
    wallet_pb2,
    wallet_pb2_grpc,
)
from wallet_platform.channels import make_channel
from wallet_platform.config import Settings
from wallet_platform.server.rpc_policy import POLICIES

TOKENS = (
    "t-admin=admin@root;t-saga=orchestrator@saga;t-acme=writer[acme-]@acme;t-acme-all=admin[acme-]"
)
_MODULES = {
    m.DESCRIPTOR.package + "." + name: getattr(m, name)
    for m in (wallet_pb2, transfer_pb2, analytics_pb2, fraud_pb2)
    for name in m.DESCRIPTOR.message_types_by_name
}
DENIED = grpc.StatusCode.PERMISSION_DENIED
# The RPCs a tenant may call, with the request fields that must carry its prefix.
WALLET_FIELDS = {m: p.wallet_fields for m, p in POLICIES.items() if p.wallet_fields}


def _request_class(method: str):
    service, name = method.strip("/").split("/")
    descriptor = descriptor_pool.Default().FindServiceByName(service).FindMethodByName(name)
    return _MODULES[descriptor.input_type.full_name], descriptor.server_streaming


async def _call_raw(channel: grpc.aio.Channel, method: str, request) -> None:
    """Call ``method`` without a generated stub (responses are left as bytes)."""
    _, streaming = _request_class(method)
    if streaming:
        call = channel.unary_stream(method, request_serializer=type(request).SerializeToString)
        async for _ in call(request, timeout=10):
            break
        return
    call = channel.unary_unary(method, request_serializer=type(request).SerializeToString)
    await call(request, timeout=10)


async def _code(channel: grpc.aio.Channel, method: str, request) -> grpc.StatusCode:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await _call_raw(channel, method, request)
    return refused.value.code()


def _as(target: str, token: str) -> grpc.aio.Channel:
    return make_channel(target, Settings(auth_token=token))


async def _balance(channel: grpc.aio.Channel, wallet_id: str) -> tuple[int, int]:
    answer = await wallet_pb2_grpc.WalletServiceStub(channel).GetWallet(
        wallet_pb2.GetWalletRequest(wallet_id=wallet_id)
    )
    return answer.wallet.balance, answer.wallet.status


async def test_a_tenant_reaches_its_own_wallets_and_no_others(database_url: str):
    async with running_stack(database_url, auth_tokens=TOKENS, auth_token="t-saga") as stack:
        target = stack.target
        async with _as(target, "t-admin") as admin_channel:
            admin = wallet_pb2_grpc.WalletServiceStub(admin_channel)
            for wallet_id in ("beta-1", "acme-1", "acme-2"):
                await admin.CreateWallet(
                    wallet_pb2.CreateWalletRequest(
                        wallet_id=wallet_id, currency="USD", request_id=f"c-{wallet_id}"
                    )
                )
            await admin.Deposit(
                wallet_pb2.DepositRequest(wallet_id="beta-1", amount=500, request_id="d-beta")
            )
            before = await _balance(admin_channel, "beta-1")

            async with _as(target, "t-acme") as acme_channel:
                acme = wallet_pb2_grpc.WalletServiceStub(acme_channel)
                transfers = transfer_pb2_grpc.TransferServiceStub(acme_channel)
                await acme.Deposit(
                    wallet_pb2.DepositRequest(wallet_id="acme-1", amount=300, request_id="d-a")
                )
                done = await transfers.CreateTransfer(
                    transfer_pb2.CreateTransferRequest(
                        request_id="tr-1",
                        from_wallet_id="acme-1",
                        to_wallet_id="acme-2",
                        amount=100,
                    )
                )
                assert done.transfer.state == transfer_pb2.TRANSFER_STATE_COMPLETED
                listed = await transfers.ListTransfers(
                    transfer_pb2.ListTransfersRequest(wallet_id="acme-1")
                )
                assert [t.transfer_id for t in listed.transfers] == [done.transfer.transfer_id]
                # Its own wallet's watch opens (the token reaches streaming calls too): the
                # guard would have refused at once, so the stream runs into the deadline.
                watch = transfers.WatchTransfers(
                    transfer_pb2.WatchTransfersRequest(wallet_id="acme-1"), timeout=1
                )
                with pytest.raises(grpc.aio.AioRpcError) as quiet:
                    async for _ in watch:
                        break
                assert quiet.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED

                # Out of the tenant: refused before anything happens.
                steal = transfer_pb2.CreateTransferRequest(
                    request_id="tr-2", from_wallet_id="beta-1", to_wallet_id="acme-1", amount=100
                )
                assert (
                    await _code(acme_channel, "/wallet.v1.TransferService/CreateTransfer", steal)
                    == DENIED
                )
                leak = transfer_pb2.CreateTransferRequest(
                    request_id="tr-3", from_wallet_id="acme-1", to_wallet_id="beta-1", amount=100
                )
                assert (
                    await _code(acme_channel, "/wallet.v1.TransferService/CreateTransfer", leak)
                    == DENIED
                )
                # What cannot be scoped from the request alone is closed to tenants.
                by_id = transfer_pb2.GetTransferRequest(transfer_id=done.transfer.transfer_id)
                assert (
                    await _code(acme_channel, "/wallet.v1.TransferService/GetTransfer", by_id)
                    == DENIED
                )
                everything = transfer_pb2.ListTransfersRequest()
                assert (
                    await _code(
                        acme_channel, "/wallet.v1.TransferService/ListTransfers", everything
                    )
                    == DENIED
                )

            # admin[acme-] holds every role: only the tenant limit can refuse it.
            async with _as(target, "t-acme-all") as acme_all:
                for method, fields in sorted(WALLET_FIELDS.items()):
                    cls, _ = _request_class(method)
                    for field in fields:
                        values = {f: "acme-1" for f in fields} | {field: "beta-1"}
                        request = cls(**values)
                        for extra in ("request_id", "transfer_id"):
                            if extra in cls.DESCRIPTOR.fields_by_name:
                                setattr(request, extra, f"x-{field}")
                        if "amount" in cls.DESCRIPTOR.fields_by_name:
                            request.amount = 1
                        if "currency" in cls.DESCRIPTOR.fields_by_name:
                            request.currency = "USD"
                        assert await _code(acme_all, method, request) == DENIED, (method, field)
                    # The unfiltered form of every list or watch RPC is refused too.
                    assert await _code(acme_all, method, cls()) == DENIED, method
                for method in (
                    "/wallet.v1.TransferService/GetTransfer",
                    "/wallet.v1.TransferService/GetTransferSummary",
                ):
                    cls, _ = _request_class(method)
                    assert await _code(acme_all, method, cls()) == DENIED, method
                # Its own wallets stay reachable with the same token.
                assert (await _balance(acme_all, "acme-1"))[0] == 200

            # Nothing of beta-1 moved or changed, and no unknown transfer exists.
            assert await _balance(admin_channel, "beta-1") == before
            everything = await transfer_pb2_grpc.TransferServiceStub(admin_channel).ListTransfers(
                transfer_pb2.ListTransfersRequest()
            )
            assert len(everything.transfers) == 1
