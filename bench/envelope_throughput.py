"""Events per second the event pipeline carries, envelopes off vs on.

    .venv/bin/python bench/envelope_throughput.py [--deposits 20000] [--batch-size 500]
        [--batches-in-flight 2] [--wallets 1000] [--modes off,on] [--envelope-max 100]
        [--json]

Needs PostgreSQL (``WALLET_TEST_DATABASE_URL`` or ``--database-url``, a server URL) and
RabbitMQ (``WALLET_AMQP_URL``, ``rabbitmqctl`` for a fresh vhost). Per mode, on a fresh
database and vhost, it starts ``wallet-service`` (its outbox relay publishing, with
``WALLET_AMQP_ENVELOPES`` off or on), ``analytics-worker`` and ``fraud-worker``, opens
the wallets (not measured, the consumers caught up on them), then sends the deposits as
``BatchDeposit`` calls and waits until both consumers have applied every one of them.

With ``--relay-only`` no service runs: this process fills the outbox with
``--deposits`` rows (one routing key, as a deposit load) and runs the relay's rounds
(:func:`relay_batch`) until it is empty: the relay's events/s and its CPU per event
(this process), with RabbitMQ's.

With ``--backlog`` the consumers start only after the load, once the relay published
it all: then it reports how fast they drain the queued backlog (events/s from their
first applied event until both applied the last one, CPU over the same span), the
capacity of the consuming side whatever the writer's rate.

It reports per mode: deposits/s while loading, events/s carried (deposits over the time
from the first call until both consumers applied the last one), the analytics and
fraud lag (event time -> applied, from the inbox), and the CPU milliseconds per event of
each process and of RabbitMQ (``beam.smp``, every vhost: indicative). Every deposit
must be applied exactly once by each consumer (their inbox counts), the analytics
totals must equal the log's, or the script exits 1.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import grpc
import psycopg
from batch_deposits import send_batch_deposits  # bench/, the directory of this script
from sqlalchemy.engine import make_url

from wallet.v1 import wallet_pb2 as pb
from wallet.v1 import wallet_pb2_grpc
from wallet_bench import procs
from wallet_bench.platform import create_database, create_vhost, delete_vhost, drop_database
from wallet_platform.config import Settings
from wallet_platform.messaging.outbox.relay import relay_batch
from wallet_platform.messaging.rabbit import RabbitBus
from wallet_platform.storage.database import Database

PROCESSES = ("wallet-service", "analytics-worker", "fraud-worker")
CONSUMERS = ("analytics", "fraud")
CAUGHT_UP_TIMEOUT_SECONDS = 300.0


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database-url", default=os.environ.get("WALLET_TEST_DATABASE_URL"))
    parser.add_argument(
        "--amqp-url", default=os.environ.get("WALLET_AMQP_URL", "amqp://guest:guest@127.0.0.1/")
    )
    parser.add_argument("--deposits", type=int, default=20000)
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--batches-in-flight", type=int, default=2)
    parser.add_argument("--wallets", type=int, default=1000)
    parser.add_argument("--modes", default="off,on", help="envelopes off/on, in order")
    parser.add_argument("--envelope-max", type=int, default=100)
    parser.add_argument(
        "--backlog",
        action="store_true",
        help="start the consumers only once the load is relayed: their drain rate",
    )
    parser.add_argument(
        "--relay-only",
        action="store_true",
        help="the outbox relay alone, in this process, on --deposits pre-written outbox rows",
    )
    parser.add_argument("--json", action="store_true")
    return parser.parse_args()


def _conninfo(database_url: str) -> str:
    return str(make_url(database_url).set(drivername="postgresql").render_as_string(False))


def _applied(conninfo: str) -> dict[str, int]:
    with psycopg.connect(conninfo) as conn:
        rows = conn.execute("SELECT consumer, count(*) FROM inbox GROUP BY consumer").fetchall()
    counts = dict.fromkeys(CONSUMERS, 0)
    counts.update({consumer: int(n) for consumer, n in rows})
    return counts


async def _caught_up(conninfo: str, events: int) -> float:
    """Wait until both consumers applied ``events`` events; the monotonic time then."""
    give_up = time.monotonic() + CAUGHT_UP_TIMEOUT_SECONDS
    while True:
        counts = await asyncio.to_thread(_applied, conninfo)
        if all(counts[c] >= events for c in CONSUMERS):
            if any(counts[c] > events for c in CONSUMERS):
                raise SystemExit(f"more inbox rows than events: {counts} > {events}")
            return time.monotonic()
        if time.monotonic() > give_up:
            raise SystemExit(f"consumers not caught up: {counts} of {events}")
        await asyncio.sleep(0.05)


def _lag(conninfo: str, since: Any) -> dict[str, dict[str, float]]:
    query = (
        "SELECT i.consumer,"
        " percentile_cont(0.5) WITHIN GROUP (ORDER BY e) AS p50,"
        " percentile_cont(0.99) WITHIN GROUP (ORDER BY e) AS p99, max(e) AS max"
        " FROM (SELECT i.consumer, extract(epoch FROM i.processed_at - w.occurred_at) AS e"
        "       FROM inbox i JOIN wallet_events w ON w.event_id = i.message_id"
        "       WHERE w.occurred_at >= %s) AS i GROUP BY i.consumer"
    )
    with psycopg.connect(conninfo) as conn:
        rows = conn.execute(query, (since,)).fetchall()
    return {
        consumer: {"p50_s": round(p50, 3), "p99_s": round(p99, 3), "max_s": round(top, 3)}
        for consumer, p50, p99, top in rows
    }


def _stats_match_log(conninfo: str) -> bool:
    with psycopg.connect(conninfo) as conn:
        stats = conn.execute(
            "SELECT coalesce(sum(total_deposited), 0), coalesce(sum(deposit_count), 0)"
            " FROM wallet_stats"
        ).fetchone()
        log = conn.execute(
            "SELECT coalesce(sum(amount), 0), count(*) FROM wallet_events"
            " WHERE type = 'funds_deposited'"
        ).fetchone()
    return tuple(stats or ()) == tuple(log or ())


async def _deposits(target: str, plan: list[tuple[str, int]], size: int, in_flight: int) -> None:
    async with grpc.aio.insecure_channel(target) as channel:
        stub = wallet_pb2_grpc.WalletServiceStub(channel)
        await send_batch_deposits(stub, plan, size, in_flight)


async def _open_wallets(target: str, wallets: list[str]) -> None:
    async with grpc.aio.insecure_channel(target) as channel:
        stub = wallet_pb2_grpc.WalletServiceStub(channel)
        for wallet_id in wallets:
            await stub.CreateWallet(
                pb.CreateWalletRequest(wallet_id=wallet_id, currency="USD", request_id=wallet_id)
            )


def _cpu() -> float:
    return sum(procs.server_cpu(("beam.smp",)).values())


def _unpublished(conninfo: str) -> int:
    with psycopg.connect(conninfo) as conn:
        row = conn.execute("SELECT count(*) FROM outbox WHERE status <> 'published'").fetchone()
    return int(row[0]) if row else 0


async def _drain(
    args: argparse.Namespace, services: dict[str, procs.Service], env: dict[str, str], work: Path
) -> Any:
    """--backlog: the writer loads with no consumer; then the consumers drain the queues."""
    conninfo = _conninfo(env["WALLET_DATABASE_URL"])
    target = services["wallet-service"].target
    wallets = [f"env-{i}" for i in range(args.wallets)]
    await _open_wallets(target, wallets)
    rng = random.Random(11)
    plan = [(rng.choice(wallets), rng.randint(1, 1000)) for _ in range(args.deposits)]
    await _deposits(target, plan, args.batch_size, args.batches_in_flight)
    while True:
        if not await asyncio.to_thread(_unpublished, conninfo):
            break
        await asyncio.sleep(0.1)
    total = len(wallets) + len(plan)
    for process in PROCESSES[1:]:
        services[process] = procs.start_service(process, process, env, work)
    # Measured from the first applied event (the processes' start-up is not consuming).
    while True:
        first = await asyncio.to_thread(_applied, conninfo)
        if any(first.values()):
            break
        await asyncio.sleep(0.01)
    started = time.monotonic()
    cpu0 = {name: services[name].cpu_seconds() for name in PROCESSES[1:]}
    rabbit0 = _cpu()
    done = await _caught_up(conninfo, total)
    events = total - min(first.values())
    cpu = {name: services[name].cpu_seconds() - cpu0[name] for name in PROCESSES[1:]}
    cpu["rabbitmq (beam.smp, shared)"] = _cpu() - rabbit0
    if not _stats_match_log(conninfo):
        raise SystemExit("analytics totals differ from the log")
    return {
        "events": events,
        "events_per_s_drained": round(events / (done - started), 1),
        "cpu_ms_per_event": {name: round(s * 1000 / events, 3) for name, s in cpu.items()},
    }


async def _measure(args: argparse.Namespace, services: dict[str, procs.Service], db: str) -> Any:
    conninfo = _conninfo(db)
    target = services["wallet-service"].target
    wallets = [f"env-{i}" for i in range(args.wallets)]
    await _open_wallets(target, wallets)
    await _caught_up(conninfo, len(wallets))
    rng = random.Random(11)
    plan = [(rng.choice(wallets), rng.randint(1, 1000)) for _ in range(args.deposits)]
    with psycopg.connect(conninfo) as conn:
        since = conn.execute("SELECT now()").fetchone()[0]  # type: ignore[index]
    cpu0 = {name: s.cpu_seconds() for name, s in services.items()}
    rabbit0 = _cpu()
    started = time.monotonic()
    await _deposits(target, plan, args.batch_size, args.batches_in_flight)
    loaded = time.monotonic()
    done = await _caught_up(conninfo, len(wallets) + len(plan))
    cpu = {name: s.cpu_seconds() - cpu0[name] for name, s in services.items()}
    cpu["rabbitmq (beam.smp, shared)"] = _cpu() - rabbit0
    if not _stats_match_log(conninfo):
        raise SystemExit("analytics totals differ from the log")
    events = len(plan)
    return {
        "deposits": events,
        "deposits_per_s_loading": round(events / (loaded - started), 1),
        "events_per_s_carried": round(events / (done - started), 1),
        "drain_after_load_s": round(done - loaded, 2),
        "lag": await asyncio.to_thread(_lag, conninfo, since),
        "cpu_ms_per_event": {name: round(s * 1000 / events, 3) for name, s in cpu.items()},
    }


FILL_OUTBOX = (
    "INSERT INTO outbox (message_id, routing_key, message_type, payload, status, attempts,"
    " created_at) SELECT gen_random_uuid()::text, 'wallet.funds_deposited',"
    " 'wallet.v1.FundsDeposited', convert_to(repeat('x', 120), 'UTF8'), 'pending', 0, now()"
    " FROM generate_series(1, %s)"
)


async def _relay_only(args: argparse.Namespace, database_url: str, amqp_url: str) -> Any:
    with psycopg.connect(_conninfo(database_url)) as conn:
        conn.execute(FILL_OUTBOX, (args.deposits,))
    envelope_max = args.envelope_max if args.mode_envelopes else 0
    db = Database.from_settings(Settings(database_url=database_url))
    bus = RabbitBus(amqp_url, envelope_max=envelope_max)
    await bus.start()
    try:
        rabbit0 = _cpu()
        cpu0 = time.process_time()
        started = time.monotonic()
        published = 0
        while batch := await relay_batch(db, bus):
            published += batch
        seconds = time.monotonic() - started
        cpu = {"relay (this process)": time.process_time() - cpu0}
        cpu["rabbitmq (beam.smp, shared)"] = _cpu() - rabbit0
    finally:
        await bus.close()
        await db.dispose()
    if published != args.deposits:
        raise SystemExit(f"relayed {published} rows of {args.deposits}")
    return {
        "events": published,
        "events_per_s_relayed": round(published / seconds, 1),
        "cpu_ms_per_event": {name: round(s * 1000 / published, 3) for name, s in cpu.items()},
    }


def _run_mode(args: argparse.Namespace, envelopes: bool) -> dict[str, Any]:
    name = f"env_bench_{uuid.uuid4().hex[:8]}"
    database_url = create_database(args.database_url, name)
    services: dict[str, procs.Service] = {}
    try:
        amqp_url = create_vhost(args.amqp_url, name)
        if args.relay_only:
            args.mode_envelopes = envelopes
            return dict(asyncio.run(_relay_only(args, database_url, amqp_url)))
        with tempfile.TemporaryDirectory() as work:
            env = {
                "WALLET_DATABASE_URL": database_url,
                "WALLET_AMQP_URL": amqp_url,
                "WALLET_AMQP_ENVELOPES": "1" if envelopes else "0",
                "WALLET_AMQP_ENVELOPE_MAX": str(args.envelope_max),
                "WALLET_LOG_LEVEL": "WARNING",
                "WALLET_FAILPOINTS": "",
            }
            try:
                starting = PROCESSES[:1] if args.backlog else PROCESSES
                for process in starting:
                    services[process] = procs.start_service(process, process, env, Path(work))
                for service in services.values():
                    asyncio.run(procs.wait_healthy(service))
                if args.backlog:
                    return dict(asyncio.run(_drain(args, services, env, Path(work))))
                return dict(asyncio.run(_measure(args, services, database_url)))
            finally:
                for service in services.values():
                    service.stop()
    finally:
        delete_vhost(name)
        drop_database(args.database_url, name)


def main() -> int:
    args = _arguments()
    if not args.database_url:
        print("need --database-url or WALLET_TEST_DATABASE_URL (PostgreSQL)", file=sys.stderr)
        return 2
    results: dict[str, Any] = {}
    for mode in args.modes.split(","):
        results[mode] = _run_mode(args, envelopes=mode == "on")
    results["settings"] = {
        k: v
        for k, v in vars(args).items()
        if k not in ("database_url", "amqp_url", "mode_envelopes")
    }
    results["machine"] = {"cpus": os.cpu_count(), "loadavg_after": os.getloadavg()}
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    for mode in args.modes.split(","):
        row = results[mode]
        if args.relay_only:
            cpu = ", ".join(f"{k} {v}" for k, v in row["cpu_ms_per_event"].items())
            print(
                f"envelopes {mode:3}: {row['events_per_s_relayed']:>8} events/s relayed "
                f"({row['events']} events); CPU ms/event: {cpu}"
            )
            continue
        if args.backlog:
            cpu = ", ".join(f"{k} {v}" for k, v in row["cpu_ms_per_event"].items())
            print(
                f"envelopes {mode:3}: {row['events_per_s_drained']:>8} events/s drained "
                f"({row['events']} events); CPU ms/event: {cpu}"
            )
            continue
        lag = row["lag"].get("analytics", {})
        cpu = ", ".join(f"{k} {v}" for k, v in row["cpu_ms_per_event"].items())
        print(
            f"envelopes {mode:3}: {row['events_per_s_carried']:>8} events/s carried "
            f"(loading {row['deposits_per_s_loading']}/s, drain {row['drain_after_load_s']}s), "
            f"analytics lag p50 {lag.get('p50_s')}s p99 {lag.get('p99_s')}s; "
            f"CPU ms/event: {cpu}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
