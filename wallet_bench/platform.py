"""What ``wallet-bench suite`` runs on: fresh PostgreSQL databases and RabbitMQ vhosts,
and the platform started as one process per service (``--workers`` each).

Every service gets the suite's database and vhost through its environment; they are
started one at a time because each migrates the database at start-up.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import psycopg
from sqlalchemy.engine import make_url

from wallet_bench import baseline
from wallet_bench.client import Targets
from wallet_bench.procs import Service, start_service, wait_healthy
from wallet_platform.storage import migrate


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


def machine() -> dict[str, object]:
    """The machine the suite ran on (cores, CPU model, memory), for the report."""
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
