"""Client certificates that authorise (``WALLET_TLS_CLIENT_ROLES``), against real servers.

The tests make their own CA and client certificates (``tests.pki``), start
WalletService with mutual TLS and a certificate -> role mapping and no tokens, and call
it through ``wallet_platform.channels.make_channel`` with each certificate.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from sqlalchemy import select

from tests.pki import CertificateAuthority
from wallet.v1 import wallet_pb2, wallet_pb2_grpc
from wallet_platform.channels import make_channel
from wallet_platform.config import Settings
from wallet_platform.server.plumbing import AUDIT_WRITER
from wallet_platform.server.process import RunningServer, start_server
from wallet_platform.storage.schema import audit_log, wallet_events
from wallet_service.bootstrap import build_components

ROLES = (
    # The DNS SAN comes before the common name: teller is a writer, not an admin.
    "teller.example.com=writer;teller-cn=admin;"
    "saga-orchestrator=orchestrator;oncall=operator;acme-svc=writer[acme-]"
)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory):
    directory = tmp_path_factory.mktemp("pki")
    ca = CertificateAuthority(directory, "wallet-test-ca")
    return {
        "ca": ca,
        "server": ca.issue("wallet-service", server=True),
        "teller": ca.issue("teller-cn", server=False, dns_names=["teller.example.com"]),
        "saga": ca.issue("saga-orchestrator", server=False),
        "oncall": ca.issue("oncall", server=False),
        "acme": ca.issue("acme-svc", server=False),
        "stranger": ca.issue("stranger", server=False),
        "san-only": ca.issue("", server=False, dns_names=["nobody.example.com"]),
    }


def _server_settings(pki, database_url: str, **changes) -> Settings:
    return Settings(
        database_url=database_url,
        listen="127.0.0.1:0",
        log_format="console",
        tls_cert=str(pki["server"].cert),
        tls_key=str(pki["server"].key),
        tls_client_ca=pki["ca"].path,
        **changes,
    )


def _as(running: RunningServer, pki, who: str | None, token: str = "") -> grpc.aio.Channel:
    client = Settings(tls_ca=pki["ca"].path, auth_token=token)
    if who is not None:
        client = client.replace(
            tls_client_cert=str(pki[who].cert), tls_client_key=str(pki[who].key)
        )
    return make_channel(running.target, client)


async def _code(call) -> grpc.StatusCode:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await call
    return refused.value.code()


def _rid() -> str:
    return uuid.uuid4().hex


async def test_certificates_authorise_by_their_mapped_roles(pki, database_url: str):
    running = await start_server(
        _server_settings(pki, database_url, tls_client_roles=ROLES),
        build_components,
        role="wallet-service",
    )
    denied = grpc.StatusCode.PERMISSION_DENIED
    spoofed = str(uuid.uuid4())
    try:
        async with _as(running, pki, "teller") as channel:
            teller = wallet_pb2_grpc.WalletServiceStub(channel)
            for wallet_id in ("w1", "acme-1"):
                await teller.CreateWallet(
                    wallet_pb2.CreateWalletRequest(
                        wallet_id=wallet_id, currency="USD", request_id=_rid()
                    )
                )
            await teller.Deposit(
                wallet_pb2.DepositRequest(wallet_id="w1", amount=100, request_id="dep-1"),
                metadata=(("x-audit-id", spoofed),),  # a writer may not choose its audit id
            )
            await teller.GetWallet(wallet_pb2.GetWalletRequest(wallet_id="w1"))
            freeze = wallet_pb2.FreezeWalletRequest(wallet_id="w1", request_id=_rid())
            assert await _code(teller.FreezeWallet(freeze)) == denied
            debit = wallet_pb2.DebitForTransferRequest(
                wallet_id="w1", amount=10, transfer_id="t1", currency="USD", to_wallet_id="acme-1"
            )
            assert await _code(teller.DebitForTransfer(debit)) == denied

        async with _as(running, pki, "saga") as channel:
            saga = wallet_pb2_grpc.WalletServiceStub(channel)
            await saga.DebitForTransfer(debit, metadata=(("x-audit-id", spoofed),))
            await saga.GetWallet(wallet_pb2.GetWalletRequest(wallet_id="w1"))  # reads too
            deposit = wallet_pb2.DepositRequest(wallet_id="w1", amount=1, request_id=_rid())
            assert await _code(saga.Deposit(deposit)) == denied

        async with _as(running, pki, "oncall") as channel:
            oncall = wallet_pb2_grpc.WalletServiceStub(channel)
            await oncall.FreezeWallet(freeze)
            assert await _code(oncall.Deposit(deposit)) == denied

        async with _as(running, pki, "acme") as channel:
            acme = wallet_pb2_grpc.WalletServiceStub(channel)
            own = wallet_pb2.DepositRequest(wallet_id="acme-1", amount=5, request_id=_rid())
            await acme.Deposit(own)
            foreign = wallet_pb2.DepositRequest(wallet_id="w1", amount=5, request_id=_rid())
            assert await _code(acme.Deposit(foreign)) == denied
            assert await _code(acme.GetWallet(wallet_pb2.GetWalletRequest(wallet_id="w1"))) == (
                denied
            )

        # Verified by the CA but not in the mapping: nothing that needs a role.
        for unmapped in ("stranger", "san-only"):
            async with _as(running, pki, unmapped) as channel:
                stub = wallet_pb2_grpc.WalletServiceStub(channel)
                read = stub.GetWallet(wallet_pb2.GetWalletRequest(wallet_id="w1"))
                assert await _code(read) == denied
                assert await _code(stub.Deposit(deposit)) == denied
                health = await health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(service="")
                )
                assert health.status == health_pb2.HealthCheckResponse.SERVING

        # No certificate at all: the handshake fails, no call is made.
        async with _as(running, pki, None) as channel:
            stub = wallet_pb2_grpc.WalletServiceStub(channel)
            read = stub.GetWallet(wallet_pb2.GetWalletRequest(wallet_id="w1"))
            assert await _code(read) == grpc.StatusCode.UNAVAILABLE

        async with running.runtime.db.read() as conn:
            deposited = (
                await conn.execute(
                    select(wallet_events.c.audit_id).where(wallet_events.c.request_id == "dep-1")
                )
            ).scalar_one()
            debited = (
                await conn.execute(
                    select(wallet_events.c.audit_id).where(wallet_events.c.transfer_id == "t1")
                )
            ).scalar_one()
        stamped = {"dep-1": deposited, "t1:debit": debited}
        assert stamped["dep-1"] != spoofed  # the writer's header was ignored
        assert stamped["t1:debit"] == spoofed  # the orchestrator's was honoured

        await running.runtime.extras[AUDIT_WRITER].flush()
        async with running.runtime.db.read() as conn:
            rows = (
                await conn.execute(
                    select(audit_log.c.method, audit_log.c.caller, audit_log.c.status_code)
                )
            ).all()
        seen = {(m.rsplit("/", 1)[-1], caller, code) for m, caller, code in rows}
        assert ("FreezeWallet", "cn=teller-cn", "PERMISSION_DENIED") in seen
        assert ("FreezeWallet", "cn=oncall", "OK") in seen
        assert ("DebitForTransfer", "cn=saga-orchestrator", "OK") in seen
        assert ("Deposit", "cn=stranger", "PERMISSION_DENIED") in seen
    finally:
        await running.stop()


async def test_with_tokens_and_certificate_roles_both_must_allow(pki, database_url: str):
    running = await start_server(
        _server_settings(
            pki,
            database_url,
            tls_client_roles=ROLES,
            auth_tokens="t-admin=admin@root;t-ops=operator@ops",
        ),
        build_components,
        role="wallet-service",
    )
    try:
        async with _as(running, pki, "oncall", token="t-admin") as channel:
            stub = wallet_pb2_grpc.WalletServiceStub(channel)
            create = wallet_pb2.CreateWalletRequest(wallet_id="w2", currency="USD", request_id="c")
            # The admin token does not lift the operator certificate to a writer.
            assert await _code(stub.CreateWallet(create)) == grpc.StatusCode.PERMISSION_DENIED
        async with _as(running, pki, "teller", token="t-admin") as channel:
            await wallet_pb2_grpc.WalletServiceStub(channel).CreateWallet(create)
        async with _as(running, pki, "oncall") as channel:  # a certificate but no token
            freeze = wallet_pb2.FreezeWalletRequest(wallet_id="w2", request_id="f")
            stub = wallet_pb2_grpc.WalletServiceStub(channel)
            assert await _code(stub.FreezeWallet(freeze)) == grpc.StatusCode.UNAUTHENTICATED
        async with _as(running, pki, "stranger", token="t-admin") as channel:
            stub = wallet_pb2_grpc.WalletServiceStub(channel)
            assert await _code(stub.FreezeWallet(freeze)) == grpc.StatusCode.PERMISSION_DENIED
        async with _as(running, pki, "oncall", token="t-ops") as channel:
            await wallet_pb2_grpc.WalletServiceStub(channel).FreezeWallet(freeze)
    finally:
        await running.stop()


async def test_mtls_without_roles_or_tokens_lets_every_certificate_call_everything(
    pki, tmp_path: Path
):
    running = await start_server(
        _server_settings(pki, f"sqlite:///{tmp_path / 'wallet.db'}"),
        build_components,
        role="wallet-service",
    )
    try:
        async with _as(running, pki, "stranger") as channel:
            stub = wallet_pb2_grpc.WalletServiceStub(channel)
            await stub.CreateWallet(
                wallet_pb2.CreateWalletRequest(wallet_id="w3", currency="USD", request_id="c")
            )
            await stub.FreezeWallet(wallet_pb2.FreezeWalletRequest(wallet_id="w3", request_id="f"))
    finally:
        await running.stop()
