"""The saga survives its orchestrator: real ``saga-orchestrator`` processes, killed and replaced.

WalletService runs in this process (a real gRPC server on PostgreSQL); orchestrators
run as subprocesses of the installed console script. Each failpoint test starts one
with ``WALLET_FAILPOINTS=<point>=exit``, which dies (exit 137, like kill -9) mid-
transfer; a fresh one takes the saga over once the dead one's lease expires and must
finish it with exactly one debit and one credit in the ledger. The replica test runs
two orchestrators side by side under 200 concurrent transfers and kills one of them.
The last test runs the happy path through ``wallet-stack`` on SQLite.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from sqlalchemy import func, select

from tests.conftest import requires_postgres
from tests.integration.test_saga_transfers import (
    COMPENSATED,
    COMPLETED,
    FAILED,
    balance,
    new_wallet,
    rid,
    transfer_events,
    wait_terminal,
)
from wallet.v1 import transfer_pb2, transfer_pb2_grpc, wallet_pb2, wallet_pb2_grpc
from wallet_platform.server.process import RunningServer
from wallet_platform.storage.database import Database
from wallet_platform.storage.schema import outbox, transfers, wallet_events, wallets
from walletctl.reconcile import ReconcileOptions, reconcile

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
LEASE_MS = 2000


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Process:
    """One server subprocess; stopping it never blocks the event loop."""

    def __init__(self, argv: list[str], env: dict[str, str], target: str, log: Path) -> None:
        self.target = target
        self.log = log
        self._log_file = log.open("ab")
        self.proc = subprocess.Popen(argv, env=env, stdout=self._log_file, stderr=subprocess.STDOUT)

    async def ready(self, within: float = 30.0) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        async with grpc.aio.insecure_channel(self.target) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while True:
                assert self.proc.poll() is None, self.log.read_text()[-3000:]
                try:
                    response = await stub.Check(health_pb2.HealthCheckRequest(), timeout=1)
                    if response.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.aio.AioRpcError:
                    pass
                assert loop.time() < deadline, self.log.read_text()[-3000:]
                await asyncio.sleep(0.1)

    async def exited(self, within: float = 20.0) -> int:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while self.proc.poll() is None:
            if loop.time() > deadline:
                self.proc.kill()
            await asyncio.sleep(0.05)
        self._log_file.close()
        return int(self.proc.returncode)

    async def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        await self.exited()


def orchestrator(
    tmp_path: Path, database_url: str, wallet_target: str, failpoints: str = ""
) -> Process:
    port = free_port()
    env = {
        **os.environ,
        "WALLET_DATABASE_URL": database_url,
        "WALLET_SERVICE_TARGET": wallet_target,
        "WALLET_FAILPOINTS": failpoints,
        "WALLET_SAGA_LEASE_MS": str(LEASE_MS),
        "WALLET_SAGA_SWEEP_INTERVAL_MS": "200",
        "WALLET_SAGA_STEP_DEADLINE_MS": "3000",
        "WALLET_SAGA_RETRY_MAX_MS": "500",
        "WALLET_TRANSFER_WAIT_MS": "5000",
        "WALLET_LOG_FORMAT": "console",
        "WALLET_LOG_LEVEL": "WARNING",
        "WALLET_DB_POOL_SIZE": "5",  # two replicas + WalletService stay well under 100
    }
    env.pop("WALLET_LISTEN", None)
    log = tmp_path / f"saga-{port}.log"
    return Process(
        [str(BIN / "saga-orchestrator"), "--listen", f"127.0.0.1:{port}"],
        env,
        f"127.0.0.1:{port}",
        log,
    )


async def assert_reconciled(database_url: str) -> None:
    """``walletctl reconcile`` finds no drift after the test's traffic (the relay is not
    running in these tests, so the outbox is not expected to drain)."""
    options = ReconcileOptions(skip=("outbox_drained",))
    report = await asyncio.to_thread(reconcile, database_url, options)
    assert report.ok, report.render_text()


@requires_postgres
@pytest.mark.parametrize("point", ["saga.after_debit", "saga.before_credit", "saga.after_credit"])
async def test_orchestrator_killed_at_failpoint_and_replaced(
    point: str,
    tmp_path: Path,
    pg_database_url_fresh: str,
    wallet_server: RunningServer,
    db: Database,
) -> None:
    async with grpc.aio.insecure_channel(wallet_server.target) as wallet_channel:
        wallet_stub = wallet_pb2_grpc.WalletServiceStub(wallet_channel)
        source = await new_wallet(wallet_stub, 1000)
        target = await new_wallet(wallet_stub)
        request = transfer_pb2.CreateTransferRequest(
            request_id=rid(), from_wallet_id=source, to_wallet_id=target, amount=300
        )

        doomed = orchestrator(
            tmp_path, pg_database_url_fresh, wallet_server.target, f"{point}=exit"
        )
        await doomed.ready()
        async with grpc.aio.insecure_channel(doomed.target) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await transfer_pb2_grpc.TransferServiceStub(channel).CreateTransfer(request)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        assert await doomed.exited() == 137

        async with db.read() as conn:
            stuck = (
                await conn.execute(
                    select(transfers).where(transfers.c.request_id == request.request_id)
                )
            ).one()
        expected_state = "PENDING" if point == "saga.after_debit" else "DEBITED"
        assert stuck.state == expected_state
        assert stuck.lease_owner is not None  # the dead process still holds it

        successor = orchestrator(tmp_path, pg_database_url_fresh, wallet_server.target)
        try:
            await successor.ready()
            async with grpc.aio.insecure_channel(successor.target) as channel:
                stub = transfer_pb2_grpc.TransferServiceStub(channel)
                done = await wait_terminal(stub, stuck.transfer_id)
                assert done.state == COMPLETED, done
                # The client's retry of the lost call gets the finished transfer.
                retried = await stub.CreateTransfer(request)
                assert retried.replayed
                assert retried.transfer.transfer_id == stuck.transfer_id
                assert retried.transfer.state == COMPLETED
        finally:
            await successor.stop()

        assert await transfer_events(db, stuck.transfer_id) == [
            "transfer_credited",
            "transfer_debited",
        ]
        assert await balance(wallet_stub, source) == 700
        assert await balance(wallet_stub, target) == 300
        async with db.read() as conn:
            milestones = (
                await conn.execute(
                    select(outbox.c.message_id).where(
                        outbox.c.message_id.like(f"{stuck.transfer_id}:%")
                    )
                )
            ).scalars()
            assert list(milestones) == [f"{stuck.transfer_id}:completed"]
    await assert_reconciled(pg_database_url_fresh)


@requires_postgres
async def test_two_replicas_200_concurrent_transfers_one_replica_killed(
    tmp_path: Path,
    pg_database_url_fresh: str,
    wallet_server: RunningServer,
    db: Database,
) -> None:
    """Every saga ends terminal, money is conserved, nothing negative, no step twice."""
    rng = random.Random(7)
    async with grpc.aio.insecure_channel(wallet_server.target) as wallet_channel:
        wallet_stub = wallet_pb2_grpc.WalletServiceStub(wallet_channel)
        ids = [await new_wallet(wallet_stub, 1000) for _ in range(10)]
        frozen = ids[-1]  # transfers to it are compensated, from it fail
        await wallet_stub.FreezeWallet(
            wallet_pb2.FreezeWalletRequest(wallet_id=frozen, request_id=rid())
        )
        total_before = 10 * 1000

        replicas = [
            orchestrator(tmp_path, pg_database_url_fresh, wallet_server.target) for _ in range(2)
        ]
        try:
            await asyncio.gather(*(replica.ready() for replica in replicas))
            channels = [grpc.aio.insecure_channel(r.target) for r in replicas]
            stubs = [transfer_pb2_grpc.TransferServiceStub(c) for c in channels]
            requests = []
            for _ in range(200):
                source, target = rng.sample(ids, 2)
                requests.append(
                    transfer_pb2.CreateTransferRequest(
                        request_id=rid(),
                        from_wallet_id=source,
                        to_wallet_id=target,
                        amount=rng.randint(1, 400),
                    )
                )

            cut_off: list[str] = []

            async def send(index: int, request: transfer_pb2.CreateTransferRequest) -> str:
                """Alternate replicas; when one is gone, retry the same request_id on the
                other (what a client behind a load balancer would do)."""
                order = [stubs[index % 2], stubs[(index + 1) % 2]]
                for attempt in range(120):
                    try:
                        response = await order[min(attempt, 1)].CreateTransfer(request)
                        return str(response.transfer.transfer_id)
                    except grpc.aio.AioRpcError as error:
                        if error.code() != grpc.StatusCode.UNAVAILABLE:
                            raise
                        cut_off.append(request.request_id)
                        await asyncio.sleep(0.25)
                raise AssertionError(f"request {request.request_id} never got through")

            async def kill_first_replica() -> None:
                await asyncio.sleep(0.5)
                replicas[0].proc.send_signal(signal.SIGKILL)

            sent, _ = await asyncio.gather(
                asyncio.gather(*(send(i, r) for i, r in enumerate(requests))),
                kill_first_replica(),
            )
            transfer_ids = set(sent)
            assert len(transfer_ids) == 200
            assert await replicas[0].exited() == -signal.SIGKILL
            assert cut_off, "the kill should have interrupted calls in flight"

            survivor = stubs[1]
            finals = [await wait_terminal(survivor, tid, within=60) for tid in transfer_ids]
            states = [t.state for t in finals]
            assert set(states) <= {COMPLETED, FAILED, COMPENSATED}, states
            for channel in channels:
                await channel.close()
        finally:
            for replica in replicas:
                await replica.stop()

    async with db.read() as conn:
        balances = (await conn.execute(select(wallets.c.balance))).scalars().all()
        assert sum(balances) == total_before
        assert min(balances) >= 0
        unfinished = (
            await conn.execute(
                select(func.count()).where(
                    transfers.c.state.in_(["PENDING", "DEBITED", "COMPENSATING"])
                )
            )
        ).scalar_one()
        assert unfinished == 0
        ledger: dict[str, list[str]] = {}
        for transfer_id, kind in (
            await conn.execute(
                select(wallet_events.c.transfer_id, wallet_events.c.type).where(
                    wallet_events.c.transfer_id.is_not(None)
                )
            )
        ).all():
            ledger.setdefault(transfer_id, []).append(kind)
        milestone_count = (
            await conn.execute(select(func.count()).where(outbox.c.message_id.like("%:%ed")))
        ).scalar_one()
    expected = {
        COMPLETED: ["transfer_credited", "transfer_debited"],
        FAILED: [],
        COMPENSATED: ["transfer_debited", "transfer_refunded"],
    }
    by_state: dict[int, int] = {}
    for final in finals:
        assert sorted(ledger.get(final.transfer_id, [])) == expected[final.state], final
        by_state[final.state] = by_state.get(final.state, 0) + 1
    assert set(ledger) <= transfer_ids
    assert milestone_count == 200
    # The mix really exercised every path.
    assert by_state.get(COMPLETED, 0) > 0 and by_state.get(COMPENSATED, 0) > 0
    assert by_state.get(FAILED, 0) > 0
    await assert_reconciled(pg_database_url_fresh)


async def test_happy_path_through_wallet_stack_on_sqlite(tmp_path: Path) -> None:
    """``wallet-stack`` (every service in one process, SQLite, in-process bus)."""
    port = free_port()
    env = {
        **os.environ,
        "WALLET_DATABASE_URL": f"sqlite:///{tmp_path / 'wallet.db'}",
        "WALLET_AMQP_URL": "",
        "WALLET_LOG_FORMAT": "console",
        "WALLET_LOG_LEVEL": "WARNING",
    }
    for name in ("WALLET_SERVICE_TARGET", "WALLET_FAILPOINTS", "WALLET_LISTEN"):
        env.pop(name, None)
    stack = Process(
        [str(BIN / "wallet-stack"), "--listen", f"127.0.0.1:{port}"],
        env,
        f"127.0.0.1:{port}",
        tmp_path / "stack.log",
    )
    try:
        await stack.ready()
        async with grpc.aio.insecure_channel(stack.target) as channel:
            wallet_stub = wallet_pb2_grpc.WalletServiceStub(channel)
            transfer_stub = transfer_pb2_grpc.TransferServiceStub(channel)
            source = await new_wallet(wallet_stub, 500)
            target = await new_wallet(wallet_stub)
            response = await transfer_stub.CreateTransfer(
                transfer_pb2.CreateTransferRequest(
                    request_id=str(uuid.uuid4()),
                    from_wallet_id=source,
                    to_wallet_id=target,
                    amount=125,
                )
            )
            assert response.transfer.state == COMPLETED
            assert await balance(wallet_stub, source) == 375
            assert await balance(wallet_stub, target) == 125
    finally:
        await stack.stop()
