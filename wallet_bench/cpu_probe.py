"""Where the cores go during a measured run: CPU seconds per process, per request."""

from __future__ import annotations

import os
import time
from typing import TypedDict

import psycopg
from sqlalchemy.engine import make_url

from wallet_bench import baseline, procs
from wallet_bench.platform import Platform
from wallet_bench.procs import LOCAL_SERVERS


class RequestCost(TypedDict, total=False):
    """A run's cost per request (empty when it made none)."""

    cpu_ms_per_request: dict[str, float]  # process -> CPU milliseconds
    db_transactions_per_request: float
    window_s: float  # the measured window: load + drain


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

    def per_request(self, requests: int) -> RequestCost:
        if requests <= 0:
            return {}
        return {
            "cpu_ms_per_request": {
                name: round(seconds * 1000 / requests, 3) for name, seconds in self.seconds.items()
            },
            "db_transactions_per_request": round(self.transactions / requests, 2),
            "window_s": round(self.wall_s, 2),
        }
