"""Transfers per second: BatchCreateTransfers (batches of 500) against single CreateTransfer.

    .venv/bin/python bench/batch_transfers.py --database-url postgresql+psycopg://root@127.0.0.1:5432/postgres

Creates a fresh database beside the one named (dropped at the end), starts
``wallet-service`` and ``saga-orchestrator`` as separate processes on loopback ports, funds
``--wallets`` wallets, then runs the same number of transfers (random pairs, so few
transfers contend for one wallet) twice: as single CreateTransfer calls with
``--concurrency`` in flight, and as BatchCreateTransfers calls of ``--batch`` items
(``--batch-concurrency`` in flight). For each: the time until every call was answered
(accepted/s) and until every saga was terminal (completed/s, from GetTransferSummary),
and the CPU each server process spent per transfer. Bounded: it sends exactly
``--transfers`` transfers per mode.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import grpc
import psycopg
from grpc_health.v1 import health_pb2, health_pb2_grpc

from wallet.v1 import transfer_pb2, transfer_pb2_grpc, wallet_pb2, wallet_pb2_grpc

BIN = Path(sys.executable).parent


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux ``/proc``): a cost per transfer
    that other load on the machine does not distort, unlike a rate."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start(
    script: str, database_url: str, env: dict[str, str]
) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    full = {**os.environ, "WALLET_DATABASE_URL": database_url, "WALLET_LOG_LEVEL": "WARNING", **env}
    proc = subprocess.Popen(
        [str(BIN / script), "--listen", f"127.0.0.1:{port}"],
        env=full,
        stdout=subprocess.DEVNULL,
        stderr=open(f"/tmp/bench-{script}.log", "ab"),  # noqa: SIM115
    )
    return proc, f"127.0.0.1:{port}"


async def ready(target: str, within: float = 60.0) -> None:
    deadline = time.monotonic() + within
    async with grpc.aio.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while True:
            try:
                answer = await stub.Check(health_pb2.HealthCheckRequest(), timeout=1)
                if answer.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.aio.AioRpcError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit(f"{target} did not become ready")
            await asyncio.sleep(0.2)


def requests(
    wallets: list[str], count: int, rng: random.Random
) -> list[transfer_pb2.CreateTransferRequest]:
    made = []
    for _ in range(count):
        source, target = rng.sample(wallets, 2)
        made.append(
            transfer_pb2.CreateTransferRequest(
                request_id=uuid.uuid4().hex, from_wallet_id=source, to_wallet_id=target, amount=1
            )
        )
    return made


async def all_terminal(stub: transfer_pb2_grpc.TransferServiceStub, within: float = 300) -> None:
    deadline = time.monotonic() + within
    while (await stub.GetTransferSummary(transfer_pb2.GetTransferSummaryRequest())).unfinished:
        if time.monotonic() > deadline:
            raise SystemExit("sagas did not finish")
        await asyncio.sleep(0.05)


async def single(
    stub: transfer_pb2_grpc.TransferServiceStub, items: list, concurrency: int
) -> float:
    queue = list(reversed(items))

    async def worker() -> None:
        while queue:
            await stub.CreateTransfer(queue.pop(), timeout=60)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return time.perf_counter() - started


async def batched(
    stub: transfer_pb2_grpc.TransferServiceStub, items: list, size: int, concurrency: int
) -> float:
    chunks = [items[i : i + size] for i in range(0, len(items), size)]
    chunks.reverse()

    async def worker() -> None:
        while chunks:
            chunk = chunks.pop()
            answer = await stub.BatchCreateTransfers(
                transfer_pb2.BatchCreateTransfersRequest(requests=chunk), timeout=120
            )
            refused = [r for r in answer.results if r.WhichOneof("result") != "response"]
            if refused:
                raise SystemExit(f"{len(refused)} items refused: {refused[0].error}")

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return time.perf_counter() - started


async def run(args: argparse.Namespace, database_url: str) -> None:
    wallet_proc, wallet_target = start("wallet-service", database_url, {})
    saga_proc, saga_target = start(
        "saga-orchestrator", database_url, {"WALLET_SERVICE_TARGET": wallet_target}
    )
    try:
        await ready(wallet_target)
        await ready(saga_target)
        rng = random.Random(args.seed)
        async with (
            grpc.aio.insecure_channel(wallet_target) as wallet_channel,
            grpc.aio.insecure_channel(saga_target) as saga_channel,
        ):
            wallets_stub = wallet_pb2_grpc.WalletServiceStub(wallet_channel)
            stub = transfer_pb2_grpc.TransferServiceStub(saga_channel)
            wallets = [f"bench-{n}" for n in range(args.wallets)]
            for wallet_id in wallets:
                await wallets_stub.CreateWallet(
                    wallet_pb2.CreateWalletRequest(
                        wallet_id=wallet_id, currency="USD", request_id=uuid.uuid4().hex
                    )
                )
                await wallets_stub.Deposit(
                    wallet_pb2.DepositRequest(
                        wallet_id=wallet_id, amount=10**9, request_id=uuid.uuid4().hex
                    )
                )
            # Warm-up (connections, the orchestrator's wallet cache) outside the timings.
            await single(stub, requests(wallets, 200, rng), args.concurrency)
            await all_terminal(stub)
            modes = {
                f"single CreateTransfer x{args.concurrency} in flight": lambda items: single(
                    stub, items, args.concurrency
                ),
                f"BatchCreateTransfers of {args.batch} x{args.batch_concurrency} in flight": (
                    lambda items: batched(stub, items, args.batch, args.batch_concurrency)
                ),
            }
            for name, send in modes.items():
                items = requests(wallets, args.transfers, rng)
                cpu_before = [cpu_seconds(p.pid) for p in (saga_proc, wallet_proc)]
                started = time.perf_counter()
                answered = await send(items)
                await all_terminal(stub)
                finished = time.perf_counter() - started
                saga_cpu, wallet_cpu = (
                    (cpu_seconds(p.pid) - before) * 1000 / args.transfers
                    for p, before in zip((saga_proc, wallet_proc), cpu_before, strict=True)
                )
                count = args.transfers
                print(
                    f"{name}: {count} transfers, accepted {count / answered:,.0f}/s"
                    f" ({answered:.2f} s), completed {count / finished:,.0f}/s ({finished:.2f} s);"
                    f" CPU per transfer: orchestrator {saga_cpu:.2f} ms,"
                    f" wallet service {wallet_cpu:.2f} ms",
                    flush=True,
                )
    finally:
        for proc in (saga_proc, wallet_proc):
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--database-url", required=True, help="a PostgreSQL server's URL")
    parser.add_argument("--transfers", type=int, default=3000)
    parser.add_argument("--wallets", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--batch-concurrency", type=int, default=2)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    if shutil.which(str(BIN / "saga-orchestrator")) is None:
        raise SystemExit("run from the project's virtualenv (make install)")
    base = args.database_url
    name = f"bench_batch_{uuid.uuid4().hex[:8]}"
    admin = base.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        asyncio.run(run(args, base.rsplit("/", 1)[0] + f"/{name}"))
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


if __name__ == "__main__":
    main()
