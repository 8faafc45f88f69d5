"""The raw-SQL baselines: pgbench running ``bench/*.sql`` on a fresh, migrated database.

The scripts do the rows of a deposit and of a completed transfer saga with the fewest
statements (one each), so ``service rate / pgbench rate`` says how close the platform
gets to what PostgreSQL alone can do on the same machine in the same run.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.engine import make_url

from wallet_bench import procs

BENCH_DIR = Path(__file__).resolve().parent.parent / "bench"
SCRIPTS = {"deposit": "deposit.sql", "transfer": "transfer.sql"}


@dataclass
class PgbenchResult:
    script: str
    tps: float
    latency_ms: float
    transactions: int
    failed: int
    command: str
    # CPU per transaction of the local PostgreSQL server and of the whole machine
    # (pgbench included), to set beside the platform's own per-request costs.
    postgres_cpu_ms: float = 0.0
    machine_cpu_ms: float = 0.0

    def as_dict(self) -> dict[str, object]:
        return {
            "script": self.script,
            "tps": round(self.tps, 1),
            "latency_avg_ms": round(self.latency_ms, 3),
            "transactions": self.transactions,
            "failed": self.failed,
            "command": self.command,
            "postgres_cpu_ms_per_transaction": round(self.postgres_cpu_ms, 3),
            "machine_cpu_ms_per_transaction": round(self.machine_cpu_ms, 3),
        }


def libpq_url(sqlalchemy_url: str) -> str:
    """``postgresql+psycopg://...`` -> ``postgresql://...`` for psql and pgbench."""
    url = make_url(sqlalchemy_url).set(drivername="postgresql")
    return str(url.render_as_string(hide_password=False))


def available() -> bool:
    return shutil.which("pgbench") is not None and shutil.which("psql") is not None


def seed(database_url: str, wallets: int) -> None:
    """Create the baseline's wallets (bench/seed.sql) in a migrated database."""
    subprocess.run(
        [
            "psql",
            "-X",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "-v",
            f"wallets={wallets}",
            "-f",
            str(BENCH_DIR / "seed.sql"),
            libpq_url(database_url),
        ],
        check=True,
        capture_output=True,
    )


def run_pgbench(
    database_url: str,
    name: str,
    *,
    clients: int = 32,
    threads: int = 2,
    duration_s: int = 15,
    wallets: int = 1000,
) -> PgbenchResult:
    """Run one baseline script and parse its summary."""
    script = BENCH_DIR / SCRIPTS[name]
    args = [
        "pgbench",
        "-n",
        "-M",
        "prepared",
        "-c",
        str(clients),
        "-j",
        str(threads),
        "-T",
        str(duration_s),
        "-D",
        f"wallets={wallets}",
        "-f",
        str(script),
        libpq_url(database_url),
    ]
    for attempt in range(5):
        done, servers_before, servers_after, busy_s = _run_measured(args)
        output = done.stdout + done.stderr
        # A shared server may be out of connections for a moment: wait, try again.
        if done.returncode == 0 or "too many clients" not in output or attempt == 4:
            break
        time.sleep(5)
    if done.returncode != 0:
        raise RuntimeError(f"pgbench {name} failed ({done.returncode}):\n{output[-2000:]}")
    shown = " ".join([*args[:-1], "$DB"]).replace(str(BENCH_DIR), "bench")
    transactions = int(_number(r"actually processed: (\d+)", output))
    postgres_s = sum(t - servers_before.get(pid, 0.0) for pid, t in servers_after.items())
    per_tx = 1000 / transactions if transactions else 0.0
    return PgbenchResult(
        script=name,
        tps=_number(r"tps = ([\d.]+)", output),
        latency_ms=_number(r"latency average = ([\d.]+) ms", output),
        transactions=transactions,
        failed=int(_number(r"failed transactions: (\d+)", output, default=0.0)),
        command=shown,
        postgres_cpu_ms=postgres_s * per_tx,
        machine_cpu_ms=busy_s * per_tx,
    )


def _run_measured(
    args: list[str],
) -> tuple[subprocess.CompletedProcess[str], dict[int, float], dict[int, float], float]:
    """Run pgbench while watching the PostgreSQL server's CPU.

    pgbench's backends exit with it, so their CPU is sampled while they live (every
    0.2 s; the last fraction of a second of each is not seen, a few per cent at most).
    """
    postgres = procs.LOCAL_SERVERS["postgresql"]
    before = procs.server_cpu(postgres)
    busy_before = procs.machine_busy_seconds()
    seen = dict(before)
    with subprocess.Popen(
        args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as process:
        reader = ThreadPoolExecutor(max_workers=1)
        output = reader.submit(process.communicate)
        while process.poll() is None:
            seen.update(procs.server_cpu(postgres))
            time.sleep(0.2)
        stdout, stderr = output.result()
        reader.shutdown()
    busy_s = procs.machine_busy_seconds() - busy_before
    seen.update(procs.server_cpu(postgres))
    done = subprocess.CompletedProcess(args, process.returncode, stdout, stderr)
    return done, before, seen, busy_s


def _number(pattern: str, text: str, default: float | None = None) -> float:
    match = re.search(pattern, text)
    if match is None:
        if default is not None:
            return default
        raise RuntimeError(f"cannot find {pattern!r} in pgbench output:\n{text[-2000:]}")
    return float(match.group(1))
