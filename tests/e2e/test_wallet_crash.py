"""Crash after commit: a real ``wallet-service`` process dies (failpoint ``exit``) right
after committing a deposit and before replying. The client retries the same
``request_id`` on a restarted process and gets the committed result, applied once.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from wallet.v1 import wallet_pb2 as pb
from wallet.v1 import wallet_pb2_grpc

WALLET_SERVICE = Path(sys.executable).parent / "wallet-service"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def read(log: Path) -> str:
    """The process log (small; read synchronously on purpose)."""
    return log.read_text(errors="replace")


async def start(database_url: str, port: int, log: Path, failpoints: str = ""):
    env = {
        **os.environ,
        "WALLET_DATABASE_URL": database_url,
        "WALLET_FAILPOINTS": failpoints,
        "WALLET_LOG_FORMAT": "console",
    }
    with log.open("ab") as sink:
        process = await asyncio.create_subprocess_exec(
            str(WALLET_SERVICE),
            "--listen",
            f"127.0.0.1:{port}",
            env=env,
            stdout=sink,
            stderr=sink,
        )
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for _ in range(300):
            if process.returncode is not None:
                raise AssertionError(f"wallet-service exited early:\n{read(log)}")
            try:
                reply = await health.Check(health_pb2.HealthCheckRequest(), timeout=1)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return process
            except grpc.aio.AioRpcError:
                pass
            await asyncio.sleep(0.1)
    process.kill()
    raise AssertionError(f"wallet-service did not become ready:\n{read(log)}")


@pytest.mark.slow
async def test_a_deposit_committed_before_a_crash_is_replayed_after_restart(database_url, tmp_path):
    port = free_port()
    target = f"127.0.0.1:{port}"
    log = tmp_path / "wallet-service.log"
    deposit = pb.DepositRequest(wallet_id="crash", amount=700, request_id="dep-crash")

    doomed = await start(database_url, port, log, failpoints="wallet.after_commit=exit")
    try:
        async with grpc.aio.insecure_channel(target) as channel:
            stub = wallet_pb2_grpc.WalletServiceStub(channel)
            await stub.CreateWallet(
                pb.CreateWalletRequest(wallet_id="crash", currency="USD", request_id="c"),
                timeout=10,
            )
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await stub.Deposit(deposit, timeout=10)
            assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
        assert await asyncio.wait_for(doomed.wait(), timeout=30) == 137, read(log)
    finally:
        if doomed.returncode is None:
            doomed.kill()
            await doomed.wait()
    assert "failpoint wallet.after_commit: exit" in read(log)

    restarted = await start(database_url, port, log)
    try:
        async with grpc.aio.insecure_channel(target) as channel:
            stub = wallet_pb2_grpc.WalletServiceStub(channel)
            retried = await stub.Deposit(deposit, timeout=10)
            assert retried.replayed
            assert retried.wallet.balance == 700
            assert retried.event.sequence == 2
            wallet = (await stub.GetWallet(pb.GetWalletRequest(wallet_id="crash"))).wallet
            assert (wallet.balance, wallet.version) == (700, 2)
            events = await stub.ListWalletEvents(pb.ListWalletEventsRequest(wallet_id="crash"))
            assert [e.request_id for e in events.events] == ["dep-crash", "c"]
    finally:
        await stop(restarted, log)


async def stop(process: asyncio.subprocess.Process, log: Path) -> None:
    """SIGTERM must end the server cleanly; a hang is a failure that shows the log."""
    process.send_signal(signal.SIGTERM)
    try:
        code = await asyncio.wait_for(process.wait(), timeout=60)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise AssertionError(f"wallet-service ignored SIGTERM for 60 s:\n{read(log)}") from None
    assert code == 0, read(log)
