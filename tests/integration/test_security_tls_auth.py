"""TLS, mutual TLS and bearer-token roles, against a real WalletService server.

The tests make their own CA and certificates (``cryptography``), start servers with
``WALLET_TLS_*`` / ``WALLET_AUTH_TOKENS`` settings and connect through
``wallet_platform.channels.make_channel``, exactly as the orchestrator and walletctl do.
"""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from sqlalchemy import select

from tests.pki import CertificateAuthority
from wallet.v1 import wallet_pb2, wallet_pb2_grpc
from wallet_platform.channels import make_channel
from wallet_platform.config import Settings
from wallet_platform.server.plumbing import AUDIT_WRITER
from wallet_platform.server.process import start_server
from wallet_platform.storage.schema import audit_log, wallet_events
from wallet_service.bootstrap import build_components


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory):
    directory = tmp_path_factory.mktemp("pki")
    ca = CertificateAuthority(directory, "wallet-test-ca")
    rogue = CertificateAuthority(directory, "rogue-ca")
    return {
        "ca": ca,
        "server": ca.issue("wallet-service", server=True),
        "client": ca.issue("orchestrator", server=False),
        "rogue_client": rogue.issue("intruder", server=False),
    }


@pytest.fixture
def base_settings(tmp_path: Path) -> Settings:
    return Settings(
        database_url=f"sqlite:///{tmp_path / 'wallet.db'}",
        listen="127.0.0.1:0",
        log_format="console",
    )


async def _create_wallet(channel: grpc.aio.Channel, wallet_id: str = "w1") -> None:
    stub = wallet_pb2_grpc.WalletServiceStub(channel)
    await stub.CreateWallet(
        wallet_pb2.CreateWalletRequest(wallet_id=wallet_id, currency="USD", request_id=wallet_id),
        timeout=10,
    )


async def _refused_code(channel: grpc.aio.Channel) -> grpc.StatusCode:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await _create_wallet(channel)
    return refused.value.code()


# --- TLS ---------------------------------------------------------------------------------


async def test_tls_client_works_and_plaintext_client_fails(pki, base_settings: Settings):
    server_settings = base_settings.replace(
        tls_cert=str(pki["server"].cert), tls_key=str(pki["server"].key)
    )
    running = await start_server(server_settings, build_components, role="wallet-service")
    try:
        client = Settings(tls_ca=pki["ca"].path)
        async with make_channel(running.target, client) as channel:
            await _create_wallet(channel)
        async with make_channel(running.target, Settings()) as plaintext:
            assert await _refused_code(plaintext) == grpc.StatusCode.UNAVAILABLE
        # A client that trusts another CA refuses the server.
        other_ca = Settings(tls_ca=str(pki["rogue_client"].cert))
        async with make_channel(running.target, other_ca) as channel:
            assert await _refused_code(channel) == grpc.StatusCode.UNAVAILABLE
    finally:
        await running.stop()


async def test_mtls_refuses_clients_without_a_valid_certificate(pki, base_settings: Settings):
    server_settings = base_settings.replace(
        tls_cert=str(pki["server"].cert),
        tls_key=str(pki["server"].key),
        tls_client_ca=pki["ca"].path,
    )
    running = await start_server(server_settings, build_components, role="wallet-service")
    try:
        good = Settings(
            tls_ca=pki["ca"].path,
            tls_client_cert=str(pki["client"].cert),
            tls_client_key=str(pki["client"].key),
        )
        async with make_channel(running.target, good) as channel:
            await _create_wallet(channel, "mtls-ok")
        no_cert = Settings(tls_ca=pki["ca"].path)
        async with make_channel(running.target, no_cert) as channel:
            assert await _refused_code(channel) == grpc.StatusCode.UNAVAILABLE
        rogue = Settings(
            tls_ca=pki["ca"].path,
            tls_client_cert=str(pki["rogue_client"].cert),
            tls_client_key=str(pki["rogue_client"].key),
        )
        async with make_channel(running.target, rogue) as channel:
            assert await _refused_code(channel) == grpc.StatusCode.UNAVAILABLE
        await running.runtime.extras[AUDIT_WRITER].flush()
        async with running.runtime.db.read() as conn:
            callers = (await conn.execute(select(audit_log.c.caller))).scalars().all()
        assert callers == ["cn=orchestrator"]  # the refused handshakes never reached a call
    finally:
        await running.stop()


# --- tokens and roles ---------------------------------------------------------------


async def test_tokens_and_roles(base_settings: Settings):
    server_settings = base_settings.replace(
        auth_tokens="t-read=reader;t-write=writer@teller;t-ops=operator@oncall;t-admin=admin"
    )
    running = await start_server(server_settings, build_components, role="wallet-service")
    target = running.target

    def as_(token: str) -> grpc.aio.Channel:
        return make_channel(target, Settings(auth_token=token))

    try:
        async with as_("") as channel:
            assert await _refused_code(channel) == grpc.StatusCode.UNAUTHENTICATED
            # Health stays open for probes and load balancers.
            health = health_pb2_grpc.HealthStub(channel)
            answer = await health.Check(health_pb2.HealthCheckRequest(service=""))
            assert answer.status == health_pb2.HealthCheckResponse.SERVING
            # So does reflection (grpcurl list / describe).
            reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
            stream = reflection.ServerReflectionInfo()
            await stream.write(reflection_pb2.ServerReflectionRequest(list_services=""))
            listed = await stream.read()
            await stream.done_writing()
            names = {s.name for s in listed.list_services_response.service}
            assert "wallet.v1.WalletService" in names
        async with as_("not-a-token") as channel:
            assert await _refused_code(channel) == grpc.StatusCode.UNAUTHENTICATED
        async with as_("t-read") as channel:
            assert await _refused_code(channel) == grpc.StatusCode.PERMISSION_DENIED
        async with as_("t-write") as channel:
            await _create_wallet(channel)
            stub = wallet_pb2_grpc.WalletServiceStub(channel)
            await stub.GetWallet(wallet_pb2.GetWalletRequest(wallet_id="w1"))  # writer reads
            with pytest.raises(grpc.aio.AioRpcError) as denied:
                await stub.FreezeWallet(
                    wallet_pb2.FreezeWalletRequest(wallet_id="w1", request_id="f1")
                )
            assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
            with pytest.raises(grpc.aio.AioRpcError) as denied:
                await stub.DebitForTransfer(
                    wallet_pb2.DebitForTransferRequest(
                        wallet_id="w1", amount=1, transfer_id="t", request_id="t:debit"
                    )
                )
            assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
            # A writer cannot stamp its events with another call's audit id.
            spoofed = "00000000-0000-4000-8000-000000000000"
            await stub.Deposit(
                wallet_pb2.DepositRequest(wallet_id="w1", amount=5, request_id="dep"),
                metadata=(("x-audit-id", spoofed),),
            )
        async with running.runtime.db.read() as conn:
            stamped = (
                await conn.execute(
                    select(wallet_events.c.audit_id).where(wallet_events.c.request_id == "dep")
                )
            ).scalar_one()
        assert stamped and stamped != spoofed
        async with as_("t-ops") as channel:
            stub = wallet_pb2_grpc.WalletServiceStub(channel)
            await stub.FreezeWallet(wallet_pb2.FreezeWalletRequest(wallet_id="w1", request_id="f1"))
        async with as_("t-admin") as channel:
            stub = wallet_pb2_grpc.WalletServiceStub(channel)
            await stub.UnfreezeWallet(
                wallet_pb2.UnfreezeWalletRequest(wallet_id="w1", request_id="u1")
            )

        await running.runtime.extras[AUDIT_WRITER].flush()
        async with running.runtime.db.read() as conn:
            rows = (
                await conn.execute(
                    select(
                        audit_log.c.method, audit_log.c.caller, audit_log.c.status_code
                    ).order_by(audit_log.c.started_at)
                )
            ).all()
        summary = [(m.rsplit("/", 1)[-1], caller, code) for m, caller, code in rows]
        assert summary[:3] == [
            ("CreateWallet", "anonymous", "UNAUTHENTICATED"),
            ("CreateWallet", "anonymous", "UNAUTHENTICATED"),
            ("CreateWallet", summary[2][1], "PERMISSION_DENIED"),
        ]
        assert summary[2][1].startswith("token:")  # no subject given: a hash, never the token
        assert "t-read" not in summary[2][1]
        assert summary[3:] == [
            ("CreateWallet", "teller", "OK"),
            ("FreezeWallet", "teller", "PERMISSION_DENIED"),
            ("DebitForTransfer", "teller", "PERMISSION_DENIED"),
            ("Deposit", "teller", "OK"),
            ("FreezeWallet", "oncall", "OK"),
            ("UnfreezeWallet", summary[-1][1], "OK"),
        ]
    finally:
        await running.stop()
