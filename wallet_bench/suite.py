"""``wallet-bench suite`` (``make bench``): baselines and the platform, in one run.

1. A fresh PostgreSQL database, migrated and seeded, for pgbench: the deposit and the
   transfer baselines (``bench/*.sql``, 32 clients).
2. Another fresh database and a fresh RabbitMQ vhost for the platform, every service
   as its own process (``--workers`` each), then three measured runs at concurrency
   32 with 1,000 wallets: deposits only, transfers only, and a mixed run with retries
   and hot wallets. Each run waits for the consumers to drain and checks the
   invariants.
3. The targets (:mod:`wallet_bench.targets`: throughput as a ratio to the pgbench
   baselines, latency, lag, drain and memory bounds) and the memory of every process,
   then everything started is stopped and dropped (``--keep`` keeps the database).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from wallet_bench import baseline
from wallet_bench.cpu_probe import CpuProbe
from wallet_bench.ledger import LoadConfig, parse_mix
from wallet_bench.platform import (
    Platform,
    create_database,
    create_vhost,
    delete_vhost,
    drop_database,
    machine,
    restart_wallet_service,
    start_platform,
)
from wallet_bench.run import RunReport, bench_run, render
from wallet_bench.targets import render_verdicts, verdicts
from wallet_platform.config import load_settings

DEFAULT_PG = "postgresql+psycopg://root@127.0.0.1:5432/postgres"
DEFAULT_AMQP = "amqp://guest:guest@127.0.0.1:5672/"


def add_suite_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--pg-url",
        default=os.environ.get("WALLET_BENCH_PG_URL", DEFAULT_PG),
        help="a PostgreSQL server where databases may be created [WALLET_BENCH_PG_URL]",
    )
    parser.add_argument(
        "--amqp-url",
        default=os.environ.get("WALLET_BENCH_AMQP_URL", DEFAULT_AMQP),
        help="RabbitMQ; the suite adds a fresh vhost with rabbitmqctl [WALLET_BENCH_AMQP_URL]",
    )
    parser.add_argument("--duration", type=float, default=15.0, help="seconds per run [15]")
    parser.add_argument(
        "--pgbench-duration", type=int, default=15, help="seconds per pgbench baseline [15]"
    )
    parser.add_argument(
        "--runs",
        default="deposit,transfer,mixed",
        help="which service runs: deposit, transfer, mixed [all three]",
    )
    parser.add_argument(
        "--wallet-workers", type=int, default=1, help="wallet-service processes [1]"
    )
    parser.add_argument("--saga-workers", type=int, default=1, help="orchestrator processes [1]")
    parser.add_argument(
        "--consumer-workers", type=int, default=1, help="processes per consumer [1]"
    )
    parser.add_argument(
        "--scale-out",
        action="store_true",
        help="also run deposits with 1 and with 2 wallet-service workers",
    )
    parser.add_argument(
        "--db-pool-size", type=int, default=8, help="WALLET_DB_POOL_SIZE of each process [8]"
    )
    parser.add_argument("--skip-pgbench", action="store_true", help="no baselines")
    parser.add_argument("--keep", action="store_true", help="keep the database and vhost")


# --- resources -------------------------------------------------------------------------


# --- the runs --------------------------------------------------------------------------


RUN_SHAPES: dict[str, dict[str, Any]] = {
    "deposit": {"mix": "deposit=100"},
    "transfer": {"mix": "transfer=100"},
    "mixed": {"mix": "deposit=60,withdraw=20,transfer=20", "retry_share": 0.05, "hot_skew": 0.1},
}


def _config(name: str, args: argparse.Namespace, duration: float) -> LoadConfig:
    shape = RUN_SHAPES[name]
    progress = sys.stderr.isatty() if args.progress is None else args.progress
    return LoadConfig(
        duration_s=duration,
        concurrency=args.concurrency,
        mix=parse_mix(shape["mix"]),
        wallets=args.wallets,
        hot_skew=shape.get("hot_skew", args.hot_skew),
        hot_wallets=args.hot_wallets,
        retry_share=shape.get("retry_share", args.retry_share),
        progress=progress,
        seed=args.seed,
        label=name,
    )


async def _service_run(
    name: str, platform: Platform, database_url: str, args: argparse.Namespace, duration: float
) -> RunReport:
    probe = CpuProbe(platform, database_url)
    report = await bench_run(
        _config(name, args, duration),
        platform.targets,
        load_settings(environ={}),
        database_url=database_url,
        connections=args.connections,
        drain_timeout_s=60.0,
        probe=probe,
    )
    report.load["cost"] = probe.per_request(int(report.load["requests"]))
    if not args.json:
        print(render(report), flush=True)
        cost = report.load["cost"]
        if cost:
            parts = ", ".join(f"{k} {v:.2f}" for k, v in cost["cpu_ms_per_request"].items())
            print(
                f"  CPU ms per request (load + drain, {cost['window_s']:.1f}s): {parts}; "
                f"{cost['db_transactions_per_request']} DB transactions per request",
                flush=True,
            )
    return report


# --- verdicts ------------------------------------------------------------------------


# --- the suite ---------------------------------------------------------------------------


async def run_suite(args: argparse.Namespace) -> dict[str, Any]:
    run_id = uuid.uuid4().hex[:8]
    work_dir = Path(tempfile.mkdtemp(prefix=f"wallet-bench-{run_id}-"))
    names = [n.strip() for n in args.runs.split(",") if n.strip()]
    unknown = [n for n in names if n not in RUN_SHAPES]
    if unknown:
        raise SystemExit(f"wallet-bench: unknown run(s) {', '.join(unknown)}")
    say = (lambda text: None) if args.json else (lambda text: print(text, flush=True))
    result: dict[str, Any] = {"run_id": run_id, "machine": machine(), "work_dir": str(work_dir)}

    baselines: dict[str, baseline.PgbenchResult] = {}
    if not args.skip_pgbench:
        if not baseline.available():
            raise SystemExit("wallet-bench: pgbench/psql not found (or use --skip-pgbench)")
        sql_db = f"wallet_bench_{run_id}_sql"
        database_url = create_database(args.pg_url, sql_db)
        try:
            baseline.seed(database_url, args.wallets)
            for script in ("deposit", "transfer"):
                say(f"pgbench {script} baseline, {args.pgbench_duration}s ...")
                baselines[script] = await asyncio.to_thread(
                    baseline.run_pgbench,
                    database_url,
                    script,
                    clients=args.concurrency,
                    duration_s=args.pgbench_duration,
                    wallets=args.wallets,
                )
                say(
                    f"  {script}: {baselines[script].tps:,.0f} tps, "
                    f"latency {baselines[script].latency_ms:.2f} ms; CPU ms per transaction: "
                    f"postgresql {baselines[script].postgres_cpu_ms:.2f}, "
                    f"machine (all cores busy, pgbench included) "
                    f"{baselines[script].machine_cpu_ms:.2f}"
                )
        finally:
            if not args.keep:
                drop_database(args.pg_url, sql_db)
    result["pgbench"] = {k: v.as_dict() for k, v in baselines.items()}

    db_name = f"wallet_bench_{run_id}"
    vhost = f"wallet-bench-{run_id}"
    database_url = create_database(args.pg_url, db_name)
    amqp_url = create_vhost(args.amqp_url, vhost)
    platform = Platform()
    runs: dict[str, RunReport] = {}
    try:
        say(
            f"starting the platform (wallet-service x{args.wallet_workers}, "
            f"saga-orchestrator x{args.saga_workers}, consumers x{args.consumer_workers}) ..."
        )
        platform = await start_platform(database_url, amqp_url, work_dir, args)
        for name in names:
            runs[name] = await _service_run(name, platform, database_url, args, args.duration)
        memory = platform.memory()
        result["memory_mb"] = memory
        say(
            "memory (RSS MiB per process): "
            + "; ".join(
                f"{name} {', '.join(str(v) for v in values)}" for name, values in memory.items()
            )
        )
        if args.scale_out:
            scale: dict[str, float] = {}
            for workers in (1, 2):
                await restart_wallet_service(
                    platform, workers, database_url, amqp_url, work_dir, args
                )
                report = await _service_run(
                    "deposit", platform, database_url, args, min(args.duration, 10.0)
                )
                scale[str(workers)] = report.load["operations"]["deposit"]["per_second"]
                say(f"  wallet-service x{workers}: {scale[str(workers)]:,.0f} deposits/s")
            result["scale_out_deposits_per_second"] = scale
    finally:
        platform.stop()
        if not args.keep:
            drop_database(args.pg_url, db_name)
            delete_vhost(vhost)
            shutil.rmtree(work_dir, ignore_errors=True)
        else:
            say(f"kept: database {db_name}, vhost {vhost}, logs in {work_dir}")
    result["runs"] = {name: report.as_dict() for name, report in runs.items()}
    rows = verdicts(baselines, runs, result.get("memory_mb", {}))
    result["targets"] = rows
    result["ok"] = all(report.ok for report in runs.values())
    say(render_verdicts(rows))
    return result


def suite_command(args: argparse.Namespace) -> int:
    started = time.monotonic()
    result = asyncio.run(run_suite(args))
    result["seconds"] = round(time.monotonic() - started, 1)
    if args.json:
        print(json.dumps(result, indent=2))
    return 0 if result["ok"] else 1
