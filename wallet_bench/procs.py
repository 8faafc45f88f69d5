"""The platform's processes for a suite run: start, wait healthy, measure, stop.

Each service runs as its own console script from this virtualenv, on a port picked
in 51000-59999, logging at WARNING into a file under the suite's work directory.
Memory is read from ``/proc`` (resident set size of the process and of every child
it forked, e.g. ``--workers`` processes).
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

BIN_DIR = Path(sys.executable).parent


def free_port() -> int:
    """A port in the range reserved for manual experiments, free right now."""
    for _ in range(200):
        port = random.randint(51000, 59999)
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port in 51000-59999")


@dataclass
class Service:
    """One started server process (a console script) and where it listens."""

    name: str
    script: str
    port: int
    process: subprocess.Popen[bytes]
    log_path: Path
    args: list[str] = field(default_factory=list)

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def alive(self) -> bool:
        return self.process.poll() is None

    def pids(self) -> list[int]:
        """This process and all its descendants (workers)."""
        return [self.process.pid, *descendants(self.process.pid)]

    def cpu_seconds(self) -> float:
        return sum(cpu_seconds(pid) for pid in self.pids())

    def rss_mb(self) -> dict[int, float]:
        return {pid: rss for pid in self.pids() if (rss := rss_mb(pid)) is not None}

    def stop(self, timeout_s: float = 15.0) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


def descendants(pid: int) -> list[int]:
    """Child processes, recursively, from /proc/<pid>/task/*/children."""
    found: list[int] = []
    frontier = [pid]
    while frontier:
        parent = frontier.pop()
        task_dir = Path(f"/proc/{parent}/task")
        try:
            tasks = list(task_dir.iterdir())
        except OSError:
            continue
        for task in tasks:
            try:
                children = (task / "children").read_text().split()
            except OSError:
                continue
            for child in children:
                found.append(int(child))
                frontier.append(int(child))
    return found


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of one process so far (0 when it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    # After "pid (comm)": state is field 0, utime 11, stime 12 (see proc(5)).
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# Local server processes whose CPU the suite also reports, by /proc comm name: the
# database and the broker do real work for every request, and on a small machine they
# compete for the same cores as the platform.
LOCAL_SERVERS = {"postgresql": ("postgres",), "rabbitmq": ("beam.smp",)}


def pids_named(names: tuple[str, ...]) -> list[int]:
    """Every process whose command name (``/proc/<pid>/comm``) is one of ``names``."""
    found: list[int] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            comm = (entry / "comm").read_text().strip()
        except OSError:
            continue
        if comm in names:
            found.append(int(entry.name))
    return found


def server_cpu(names: tuple[str, ...]) -> dict[int, float]:
    """CPU seconds so far of each process named ``names`` (pid -> seconds)."""
    return {pid: cpu_seconds(pid) for pid in pids_named(names)}


def machine_busy_seconds() -> float:
    """CPU seconds the whole machine spent not idle, over all cores (``/proc/stat``)."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    values = [int(v) for v in fields[:8]]  # user nice system idle iowait irq softirq steal
    idle = values[3] + values[4]
    return (sum(values) - idle) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float | None:
    """Resident set size of one process in MiB (None when it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def start_service(
    name: str,
    script: str,
    env: dict[str, str],
    work_dir: Path,
    args: list[str] | None = None,
    port: int | None = None,
) -> Service:
    port = port or free_port()
    log_path = work_dir / f"{name}.log"
    full_env = {**os.environ, **env, "WALLET_LISTEN": f"127.0.0.1:{port}"}
    with open(log_path, "ab") as log_file:
        process = subprocess.Popen(
            [str(BIN_DIR / script), *(args or [])],
            env=full_env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return Service(name, script, port, process, log_path, list(args or []))


async def wait_healthy(service: Service, timeout_s: float = 90.0) -> None:
    """Until the server answers SERVING on its overall health (or died/timed out)."""
    give_up = time.monotonic() + timeout_s
    async with grpc.aio.insecure_channel(service.target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while True:
            if not service.alive():
                tail = service.log_path.read_text(errors="replace")[-3000:]
                raise RuntimeError(f"{service.name} exited during start-up:\n{tail}")
            try:
                reply = await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=2)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.aio.AioRpcError:
                pass
            if time.monotonic() > give_up:
                raise RuntimeError(f"{service.name} not healthy after {timeout_s:.0f}s")
            await asyncio.sleep(0.2)
