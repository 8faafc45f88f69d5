"""Deposits per second and CPU per deposit: single ``Deposit`` calls vs ``BatchDeposit``.

    .venv/bin/python bench/batch_deposits.py [--deposits 20000] [--batch-size 500]
        [--concurrency 32] [--batches-in-flight 2] [--wallets 1000] [--json]

Needs PostgreSQL (``WALLET_TEST_DATABASE_URL`` or ``--database-url``, a server URL: a
fresh database is created and dropped) and RabbitMQ (``WALLET_AMQP_URL``; a fresh vhost
when ``rabbitmqctl`` is there). Starts one ``wallet-service`` process, opens the
wallets (not measured), then runs the same number of deposits twice, to random wallets:

- ``single``: ``Deposit`` calls, ``--concurrency`` in flight (wallet-bench's default);
- ``batch``: ``BatchDeposit`` calls of ``--batch-size`` items, ``--batches-in-flight``
  in flight.

For each it reports deposits per second (wall clock) and CPU milliseconds per deposit
of the wallet-service process and of this load generator (from /proc and os.times),
plus every ``postgres`` process on the machine (shared with anything else using that
server: indicative only). Every answer must be a fresh success, and each wallet's
balance must equal what was sent to it, or the script exits 1.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import grpc

from wallet.v1 import wallet_pb2 as pb
from wallet.v1 import wallet_pb2_grpc
from wallet_bench import procs
from wallet_bench.suite import create_database, create_vhost, delete_vhost, drop_database


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database-url", default=os.environ.get("WALLET_TEST_DATABASE_URL"))
    parser.add_argument(
        "--amqp-url", default=os.environ.get("WALLET_AMQP_URL", "amqp://guest:guest@127.0.0.1/")
    )
    parser.add_argument("--deposits", type=int, default=20000)
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--batches-in-flight", type=int, default=2)
    parser.add_argument("--wallets", type=int, default=1000)
    parser.add_argument("--modes", default="single,batch", help="which runs, in order")
    parser.add_argument("--py-spy", metavar="FILE", help="profile the service's batch run")
    parser.add_argument("--json", action="store_true")
    return parser.parse_args()


class Window:
    """CPU seconds of the service, this process and postgres over one run."""

    def __init__(self, service: procs.Service) -> None:
        self.service = service

    def __enter__(self) -> Window:
        self.t0 = time.monotonic()
        self.svc0 = self.service.cpu_seconds()
        times = os.times()
        self.me0 = times.user + times.system
        self.pg0 = procs.server_cpu(("postgres",))
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.monotonic() - self.t0
        self.svc = self.service.cpu_seconds() - self.svc0
        times = os.times()
        self.me = times.user + times.system - self.me0
        now = procs.server_cpu(("postgres",))
        self.pg = sum(t - self.pg0.get(pid, 0.0) for pid, t in now.items())

    def report(self, deposits: int) -> dict[str, Any]:
        return {
            "deposits": deposits,
            "seconds": round(self.wall, 2),
            "deposits_per_s": round(deposits / self.wall, 1),
            "cpu_ms_per_deposit": {
                "wallet-service": round(self.svc * 1000 / deposits, 3),
                "load generator": round(self.me * 1000 / deposits, 3),
                "postgres (all, shared)": round(self.pg * 1000 / deposits, 3),
            },
        }


async def _singles(stub: Any, plan: list[tuple[str, int]], concurrency: int) -> None:
    queue = iter(plan)

    async def worker() -> None:
        for wallet_id, amount in queue:
            answer = await stub.Deposit(
                pb.DepositRequest(wallet_id=wallet_id, amount=amount, request_id=str(uuid.uuid4()))
            )
            if answer.replayed:
                raise SystemExit("a fresh deposit came back replayed")

    await asyncio.gather(*(worker() for _ in range(concurrency)))


async def send_batch_deposits(
    stub: Any, plan: list[tuple[str, int]], size: int, in_flight: int
) -> None:
    """Deposit ``plan`` as BatchDeposit calls of ``size``, ``in_flight`` at a time; every
    item must be a fresh success (shared with ``envelope_throughput.py``)."""
    chunks = iter([plan[i : i + size] for i in range(0, len(plan), size)])

    async def worker() -> None:
        for chunk in chunks:
            request = pb.BatchDepositRequest(
                requests=[
                    pb.DepositRequest(wallet_id=w, amount=a, request_id=str(uuid.uuid4()))
                    for w, a in chunk
                ]
            )
            answer = await stub.BatchDeposit(request, timeout=120)
            for result in answer.results:
                if result.WhichOneof("result") != "response" or result.response.replayed:
                    raise SystemExit(f"a batch item was not a fresh success: {result}")

    await asyncio.gather(*(worker() for _ in range(in_flight)))


def _profiler(service: procs.Service, out: str) -> subprocess.Popen[bytes]:
    """py-spy on the service (raw folded stacks), until SIGINT."""
    command = [str(procs.BIN_DIR / "py-spy"), "record", "-p", str(service.process.pid)]
    command += ["-r", "100", "-f", "raw", "-o", out, "--nonblocking"]
    spy = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1)  # attached before the load starts
    return spy


async def _run(args: argparse.Namespace, service: procs.Service) -> dict[str, Any]:
    rng = random.Random(7)
    async with grpc.aio.insecure_channel(service.target) as channel:
        stub = wallet_pb2_grpc.WalletServiceStub(channel)
        wallets = [f"bb-{i}" for i in range(args.wallets)]
        for wallet_id in wallets:
            await stub.CreateWallet(
                pb.CreateWalletRequest(wallet_id=wallet_id, currency="USD", request_id=wallet_id)
            )
        expected = dict.fromkeys(wallets, 0)
        results: dict[str, Any] = {}
        for name in args.modes.split(","):
            plan = [(rng.choice(wallets), rng.randint(1, 1000)) for _ in range(args.deposits)]
            for wallet_id, amount in plan:
                expected[wallet_id] += amount
            spy = _profiler(service, args.py_spy) if name == "batch" and args.py_spy else None
            with Window(service) as window:
                if name == "single":
                    await _singles(stub, plan, args.concurrency)
                else:
                    await send_batch_deposits(stub, plan, args.batch_size, args.batches_in_flight)
            if spy is not None:
                spy.send_signal(signal.SIGINT)
                spy.wait(30)
            results[name] = window.report(len(plan))
        for wallet_id in wallets:
            got = await stub.GetWallet(pb.GetWalletRequest(wallet_id=wallet_id))
            if got.wallet.balance != expected[wallet_id]:
                raise SystemExit(
                    f"{wallet_id}: balance {got.wallet.balance} != {expected[wallet_id]}"
                )
    return results


def main() -> int:
    args = _arguments()
    if not args.database_url:
        print("need --database-url or WALLET_TEST_DATABASE_URL (PostgreSQL)", file=sys.stderr)
        return 2
    name = f"batch_bench_{uuid.uuid4().hex[:8]}"
    database_url = create_database(args.database_url, name)
    amqp_url = create_vhost(args.amqp_url, name)
    try:
        with tempfile.TemporaryDirectory() as work:
            env = {
                "WALLET_DATABASE_URL": database_url,
                "WALLET_AMQP_URL": amqp_url,
                "WALLET_LOG_LEVEL": "WARNING",
                "WALLET_FAILPOINTS": "",
            }
            service = procs.start_service("wallet-service", "wallet-service", env, Path(work))
            try:
                asyncio.run(procs.wait_healthy(service))
                results = asyncio.run(_run(args, service))
            finally:
                service.stop()
    finally:
        delete_vhost(name)
        drop_database(args.database_url, name)
    results["settings"] = {
        k: v for k, v in vars(args).items() if k not in ("database_url", "amqp_url")
    }
    results["machine"] = {"cpus": os.cpu_count(), "loadavg_after": os.getloadavg()}
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        for mode in args.modes.split(","):
            row = results[mode]
            cpu = ", ".join(f"{k} {v}" for k, v in row["cpu_ms_per_deposit"].items())
            print(f"{mode:6} {row['deposits_per_s']:>8} deposits/s   CPU ms/deposit: {cpu}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
