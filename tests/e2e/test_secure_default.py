"""Secure by default, checked on the real console scripts.

A server on a non-loopback address without authentication must exit non-zero with a
one-line message naming the fix, before it migrates a database or binds a port;
``--allow-insecure`` / ``WALLET_ALLOW_INSECURE=1`` or tokens let it start (with
warnings in its log); loopback needs nothing.
"""

from __future__ import annotations

import os
import select
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

BIN = Path(sys.executable).parent
SERVERS = (
    "wallet-stack",
    "wallet-service",
    "saga-orchestrator",
    "analytics-worker",
    "fraud-worker",
)

pytestmark = pytest.mark.slow


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("WALLET_") or key == "WALLET_UVLOOP"
    }
    env.update(
        WALLET_DATABASE_URL=f"sqlite:///{tmp_path / 'wallet.db'}",
        WALLET_LOG_FORMAT="console",
        **extra,
    )
    return env


@pytest.mark.parametrize("script", SERVERS)
@pytest.mark.parametrize("listen", ["0.0.0.0:0", "[::]:0"])
def test_every_server_refuses_a_reachable_address_without_authentication(
    tmp_path: Path, script: str, listen: str
):
    result = subprocess.run(
        [str(BIN / script), "--listen", listen],
        env=_env(tmp_path),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"{script.replace('wallet-stack', 'stack')}: refusing to serve")
    assert "--allow-insecure" in lines[0] and "WALLET_AUTH_TOKENS" in lines[0]
    assert "listening" not in result.stdout
    # Refused before anything happened: no database was created or migrated.
    assert not (tmp_path / "wallet.db").exists()


def test_workers_are_not_forked_for_a_refused_server(tmp_path: Path):
    result = subprocess.run(
        [str(BIN / "wallet-service"), "--listen", "0.0.0.0:50999", "--workers", "2"],
        env=_env(tmp_path),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0 and "refusing to serve" in result.stderr
    assert not (tmp_path / "wallet.db").exists()


@contextmanager
def _serving(tmp_path: Path, argv: list[str], **env: str) -> Iterator[tuple[str, Path]]:
    """Start a server, wait for its "listening on HOST:PORT" line; yield (target, log)."""
    log_path = tmp_path / "server.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [str(BIN / argv[0]), *argv[1:]],
            env=_env(tmp_path, **env),
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=log,
        )
    assert process.stdout is not None
    try:
        deadline = time.monotonic() + 60
        line = b""
        while b"listening on" not in line:
            assert process.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline, "no 'listening on' line"
            ready, _, _ = select.select([process.stdout], [], [], 0.5)
            if ready:
                line = process.stdout.readline()
        yield line.decode().rsplit(" ", 1)[-1].strip(), log_path
    finally:
        process.terminate()
        assert process.wait(timeout=30) == 0
        process.stdout.close()


async def _serving_health(target: str) -> None:
    async with grpc.aio.insecure_channel(target) as channel:
        answer = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=""), timeout=10
        )
    assert answer.status == health_pb2.HealthCheckResponse.SERVING


async def test_allow_insecure_starts_on_every_interface_with_a_loud_warning(tmp_path: Path):
    with _serving(tmp_path, ["wallet-stack", "--listen", "0.0.0.0:0", "--allow-insecure"]) as (
        target,
        log,
    ):
        await _serving_health(target)
    text = log.read_text()
    assert "WARNING" in text and "INSECURE: serving 0.0.0.0:0 without authentication" in text


async def test_the_environment_variable_does_the_same(tmp_path: Path):
    with _serving(
        tmp_path, ["wallet-service", "--listen", "0.0.0.0:0"], WALLET_ALLOW_INSECURE="1"
    ) as (target, log):
        await _serving_health(target)
    assert "INSECURE: serving 0.0.0.0:0" in log.read_text()


async def test_tokens_start_on_every_interface_and_warn_about_plaintext(tmp_path: Path):
    with _serving(
        tmp_path, ["wallet-service", "--listen", "0.0.0.0:0"], WALLET_AUTH_TOKENS="t=admin"
    ) as (target, log):
        await _serving_health(target)
    text = log.read_text()
    assert "bearer tokens travel in plaintext on 0.0.0.0:0" in text
    assert "INSECURE" not in text


@pytest.mark.parametrize("listen", ["127.0.0.1:0", "localhost:0"])
async def test_loopback_starts_with_nothing_and_warns_about_nothing(tmp_path: Path, listen: str):
    with _serving(tmp_path, ["wallet-stack", "--listen", listen]) as (target, log):
        await _serving_health(target)
    assert "WARNING" not in log.read_text()
