"""x-audit-id spoofing against a real WalletService with tokens off.

Without tokens the header is honoured from a caller on the same host only: the same
deposit call with the same header stamps the caller's id when it comes over loopback
and its own id when it comes over the machine's network address. (With tokens on,
``test_security_tls_auth`` checks that a writer cannot set it and the end-to-end test
``test_audit_follow_through`` that the orchestrator can.)
"""

from __future__ import annotations

import socket

import grpc
import pytest
from sqlalchemy import select

from wallet.v1 import wallet_pb2, wallet_pb2_grpc
from wallet_platform.config import Settings
from wallet_platform.server.audit_ids import is_local_peer
from wallet_platform.server.process import start_server
from wallet_platform.storage.database import Database
from wallet_platform.storage.schema import wallet_events
from wallet_service.bootstrap import build_components

SPOOFED = "00000000-0000-4000-8000-0000000000aa"


def network_address() -> str | None:
    """This machine's address on its default route, if it has one besides loopback."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("203.0.113.1", 9))  # a UDP connect sends nothing
        except OSError:
            return None
        address = str(probe.getsockname()[0])
    return None if is_local_peer(f"ipv4:{address}:0") else address


async def stamped(db: Database, request_id: str) -> str:
    async with db.read() as conn:
        return str(
            (
                await conn.execute(
                    select(wallet_events.c.audit_id).where(wallet_events.c.request_id == request_id)
                )
            ).scalar_one()
        )


async def test_without_tokens_only_a_same_host_caller_sets_the_audit_id(
    settings: Settings, database: Database
) -> None:
    address = network_address()
    if address is None:
        pytest.skip("this machine has no network address besides loopback")
    server = await start_server(
        settings.replace(listen="0.0.0.0:0"), build_components, role="wallet-service"
    )
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as local:
            stub = wallet_pb2_grpc.WalletServiceStub(local)
            await stub.CreateWallet(
                wallet_pb2.CreateWalletRequest(wallet_id="w", currency="USD", request_id="c")
            )
            await stub.Deposit(
                wallet_pb2.DepositRequest(wallet_id="w", amount=1, request_id="local"),
                metadata=(("x-audit-id", SPOOFED),),
            )
        async with grpc.aio.insecure_channel(f"{address}:{server.port}") as remote:
            call = wallet_pb2_grpc.WalletServiceStub(remote).Deposit(
                wallet_pb2.DepositRequest(wallet_id="w", amount=1, request_id="remote"),
                metadata=(("x-audit-id", SPOOFED),),
            )
            response = await call
            own = dict(await call.trailing_metadata())["x-audit-id"]
        assert await stamped(database, "local") == SPOOFED
        assert await stamped(database, "remote") == own != SPOOFED
        assert response.event.audit_id == own
    finally:
        await server.stop()
