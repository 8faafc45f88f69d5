"""``wallet-bench suite`` (``make bench``): baselines and the platform, in one run.

1. A fresh PostgreSQL database, migrated and seeded, for pgbench: the deposit and the
   transfer baselines (``bench/*.sql``, 32 clients).
2. Another fresh database and a fresh RabbitMQ vhost for the platform, every service
   as its own process (``--workers`` each), then three measured runs at concurrency
   32 with 1,000 wallets: deposits only, transfers only, and a mixed run with retries
   and hot wallets. Each run waits for the consumers to drain and checks the
   invariants.
3. The ratios against the targets of issue 6 and the memory of every process, then
   everything started is stopped and dropped (``--keep`` keeps the database).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import psycopg
from sqlalchemy.engine import make_url

from wallet_bench import baseline, procs
from wallet_bench.client import Targets
from wallet_bench.load import LoadConfig, parse_mix
from wallet_bench.procs import LOCAL_SERVERS, Service, start_service, wait_healthy
from wallet_bench.run import RunReport, bench_run, render
from wallet_platform.config import load_settings
from wallet_platform.storage import migrate

DEFAULT_PG = "postgresql+psycopg://root@127.0.0.1:5432/postgres"
DEFAULT_AMQP = "amqp://guest:guest@127.0.0.1:5672/"

# Issue 6's targets.
DEPOSIT_RATIO = 0.3
TRANSFER_RATIO = 0.3
DEPOSIT_P99_MS = 50.0
TRANSFER_P99_MS = 150.0
LAG_S = 1.0
DRAIN_S = 5.0
RSS_MB = 200.0


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


def _admin(pg_url: str, statement: str) -> None:
    conninfo = baseline.libpq_url(
        str(make_url(pg_url).set(database="postgres").render_as_string(hide_password=False))
    )
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(statement.encode())


def create_database(pg_url: str, name: str) -> str:
    _admin(pg_url, f'CREATE DATABASE "{name}"')
    url = make_url(pg_url).set(drivername="postgresql+psycopg", database=name)
    database_url = str(url.render_as_string(hide_password=False))
    migrate.upgrade(database_url)
    return database_url


def drop_database(pg_url: str, name: str) -> None:
    """Best effort: a failed clean-up is reported, never hides the run's own error."""
    try:
        _admin(pg_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    except psycopg.Error as error:
        print(f"wallet-bench: could not drop database {name}: {error}", file=sys.stderr)


def create_vhost(amqp_url: str, vhost: str) -> str:
    """A fresh vhost (rabbitmqctl) and the URL that uses it; the base URL if impossible."""
    if shutil.which("rabbitmqctl") is None:
        print("wallet-bench: rabbitmqctl not found, using the given vhost", file=sys.stderr)
        return amqp_url
    user = make_url(amqp_url.replace("amqp://", "postgresql://", 1)).username or "guest"
    subprocess.run(["rabbitmqctl", "-q", "add_vhost", vhost], check=True, capture_output=True)
    subprocess.run(
        ["rabbitmqctl", "-q", "set_permissions", "-p", vhost, user, ".*", ".*", ".*"],
        check=True,
        capture_output=True,
    )
    return amqp_url.rstrip("/") + "/" + quote(vhost, safe="")


def delete_vhost(vhost: str) -> None:
    if shutil.which("rabbitmqctl") is not None:
        subprocess.run(["rabbitmqctl", "-q", "delete_vhost", vhost], capture_output=True)


# --- the platform ------------------------------------------------------------------------


@dataclass
class Platform:
    services: dict[str, Service] = field(default_factory=dict)

    @property
    def targets(self) -> Targets:
        return Targets(
            wallet=self.services["wallet-service"].target,
            transfer=self.services["saga-orchestrator"].target,
            analytics=self.services["analytics-worker"].target,
        )

    def memory(self) -> dict[str, list[float]]:
        return {
            name: [round(v, 1) for v in service.rss_mb().values()]
            for name, service in self.services.items()
        }

    def stop(self) -> None:
        for service in reversed(list(self.services.values())):
            service.stop()


async def start_platform(
    database_url: str, amqp_url: str, work_dir: Path, args: argparse.Namespace
) -> Platform:
    platform = Platform()
    env = {
        "WALLET_DATABASE_URL": database_url,
        "WALLET_AMQP_URL": amqp_url,
        "WALLET_LOG_LEVEL": "WARNING",
        "WALLET_LOG_FORMAT": "json",
        "WALLET_FAILPOINTS": "",
        # 2 x 8 connections per process at most: the whole platform stays well under
        # PostgreSQL's default max_connections (100) even with several workers.
        "WALLET_DB_POOL_SIZE": str(args.db_pool_size),
    }
    layout = [
        ("wallet-service", "wallet-service", args.wallet_workers),
        ("saga-orchestrator", "saga-orchestrator", args.saga_workers),
        ("analytics-worker", "analytics-worker", args.consumer_workers),
        ("fraud-worker", "fraud-worker", args.consumer_workers),
    ]
    try:
        for name, script, workers in layout:
            service_env = dict(env)
            if name == "saga-orchestrator":
                service_env["WALLET_SERVICE_TARGET"] = platform.services["wallet-service"].target
            service = start_service(
                name, script, service_env, work_dir, args=["--workers", str(workers)]
            )
            platform.services[name] = service
            # Start one at a time: they migrate the same database at start-up.
            await wait_healthy(service)
    except BaseException:
        platform.stop()
        raise
    return platform


async def restart_wallet_service(
    platform: Platform,
    workers: int,
    database_url: str,
    amqp_url: str,
    work_dir: Path,
    args: argparse.Namespace,
) -> None:
    old = platform.services["wallet-service"]
    old.stop()
    env = {
        "WALLET_DATABASE_URL": database_url,
        "WALLET_AMQP_URL": amqp_url,
        "WALLET_LOG_LEVEL": "WARNING",
        "WALLET_DB_POOL_SIZE": str(args.db_pool_size),
    }
    service = start_service(
        "wallet-service", "wallet-service", env, work_dir, ["--workers", str(workers)], old.port
    )
    platform.services["wallet-service"] = service
    await wait_healthy(service)


# --- the runs --------------------------------------------------------------------------


class CpuProbe:
    """CPU seconds of every platform process and of this load generator over a window,
    and the database's committed transactions: where the cores go, per request.

    CPU time (not wall time) is what decides throughput on a small machine, and it is
    far less disturbed by other work on the machine than a rate is.
    """

    def __init__(self, platform: Platform, database_url: str) -> None:
        self.platform = platform
        self.database_name = str(make_url(database_url).database)
        self.admin_url = database_url
        self._cpu: dict[str, float] = {}
        self._servers: dict[str, dict[int, float]] = {}
        self._busy = 0.0
        self._xacts = 0
        self.seconds: dict[str, float] = {}
        self.transactions = 0
        self._wall = 0.0
        self.wall_s = 0.0

    def _sample(self) -> tuple[dict[str, float], int]:
        cpu = {name: svc.cpu_seconds() for name, svc in self.platform.services.items()}
        times = os.times()
        cpu["wallet-bench"] = times.user + times.system
        return cpu, self._transactions()

    def _transactions(self) -> int:
        conninfo = baseline.libpq_url(self.admin_url)
        with psycopg.connect(conninfo, autocommit=True) as conn:
            row = conn.execute(
                b"SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = %s",
                (self.database_name,),
            ).fetchone()
        return int(row[0]) if row else 0

    def start(self) -> None:
        self._cpu, self._xacts = self._sample()
        self._servers = {name: procs.server_cpu(comms) for name, comms in LOCAL_SERVERS.items()}
        self._busy = procs.machine_busy_seconds()
        self._wall = time.monotonic()

    def stop(self) -> None:
        cpu, xacts = self._sample()
        self.seconds = {name: cpu[name] - self._cpu.get(name, 0.0) for name in cpu}
        # PostgreSQL and RabbitMQ when they run on this machine (a backend that started
        # during the window counts from zero; one that ended is lost: the pools keep
        # theirs open, so that is the suite's own short probe connections only).
        for name, comms in LOCAL_SERVERS.items():
            before = self._servers.get(name, {})
            now = procs.server_cpu(comms)
            if now:
                self.seconds[name] = sum(t - before.get(pid, 0.0) for pid, t in now.items())
        self.seconds["machine (all cores busy)"] = procs.machine_busy_seconds() - self._busy
        self.transactions = xacts - self._xacts
        self.wall_s = time.monotonic() - self._wall

    def per_request(self, requests: int) -> dict[str, Any]:
        if requests <= 0:
            return {}
        return {
            "cpu_ms_per_request": {
                name: round(seconds * 1000 / requests, 3) for name, seconds in self.seconds.items()
            },
            "db_transactions_per_request": round(self.transactions / requests, 2),
            "window_s": round(self.wall_s, 2),
        }


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


def verdicts(
    baselines: dict[str, baseline.PgbenchResult],
    runs: dict[str, RunReport],
    memory: dict[str, list[float]],
) -> list[dict[str, Any]]:
    """Each target of issue 6: measured value, the bound, met or not."""
    rows: list[dict[str, Any]] = []

    def add(name: str, value: float, bound: float, higher_is_better: bool, note: str) -> None:
        met = value >= bound if higher_is_better else value < bound
        rows.append(
            {
                "target": name,
                "value": round(value, 3),
                "bound": bound,
                "op": ">=" if higher_is_better else "<",
                "met": met,
                "note": note,
            }
        )

    deposit = runs.get("deposit")
    if deposit is not None:
        ops = deposit.load["operations"].get("deposit", {})
        rate = ops.get("per_second", 0.0)
        if "deposit" in baselines:
            tps = baselines["deposit"].tps
            add("deposit ratio", rate / tps, DEPOSIT_RATIO, True, f"{rate:,.0f}/s vs {tps:,.0f}")
        add("deposit p99 ms", ops.get("p99_ms", 0.0), DEPOSIT_P99_MS, False, "concurrency 32")
        analytics_lag = [v for k, v in deposit.lag.items() if "analytics" in k]
        if analytics_lag:
            lag = analytics_lag[0]
            add(
                "analytics lag p99 s",
                lag["p99_s"],
                LAG_S,
                False,
                f"max {lag['max_s']:.3f}s, event time -> applied",
            )
        if deposit.drain:
            add("drain s", deposit.drain["seconds"], DRAIN_S, False, "after the deposit run")
    transfer = runs.get("transfer")
    if transfer is not None:
        ops = transfer.load["operations"].get("transfer", {})
        rate = transfer.load.get("transfers_completed_per_second", 0.0)
        if "transfer" in baselines:
            tps = baselines["transfer"].tps
            add(
                "transfer ratio",
                rate / tps,
                TRANSFER_RATIO,
                True,
                f"{rate:,.0f} completed/s vs {tps:,.0f}",
            )
        add("transfer p99 ms", ops.get("p99_ms", 0.0), TRANSFER_P99_MS, False, "concurrency 32")
    if memory:
        worst_name, worst = max(
            ((n, max(v)) for n, v in memory.items() if v), key=lambda item: item[1]
        )
        add("max RSS MB", worst, RSS_MB, False, f"largest: {worst_name}")
    for name, report in runs.items():
        failed = [c.name for c in report.checks if not c.ok]
        rows.append(
            {
                "target": f"invariants ({name})",
                "value": 0 if failed else 1,
                "bound": 1,
                "op": "==",
                "met": not failed,
                "note": ", ".join(failed) or "all held",
            }
        )
    return rows


def render_verdicts(rows: list[dict[str, Any]]) -> str:
    lines = ["", "targets (issue 6):"]
    for row in rows:
        mark = "MET " if row["met"] else "MISS"
        lines.append(
            f"  [{mark}] {row['target']:<22} {row['value']:>10} {row['op']} {row['bound']:<6} "
            f"{row['note']}"
        )
    return "\n".join(lines)


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


def machine() -> dict[str, Any]:
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_kb = 0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_kb = int(line.split()[1])
    except OSError:
        pass
    return {"cpus": os.cpu_count(), "cpu": cpu, "memory_gb": round(mem_kb / 1024 / 1024, 1)}


def suite_command(args: argparse.Namespace) -> int:
    started = time.monotonic()
    result = asyncio.run(run_suite(args))
    result["seconds"] = round(time.monotonic() - started, 1)
    if args.json:
        print(json.dumps(result, indent=2))
    return 0 if result["ok"] else 1
