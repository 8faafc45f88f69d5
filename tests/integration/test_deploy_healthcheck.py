"""The container health probe against a real server.

``python -m wallet_platform.server.healthcheck`` is what the image's HEALTHCHECK, the
Compose health checks and the Kubernetes exec probes run; against a TLS server (every
shipped deployment) it must verify with ``WALLET_TLS_CA`` and need no token.
"""

from __future__ import annotations

import asyncio
import os
import socket
import sys
from collections.abc import Mapping

import pytest

from tests.integration.test_security_tls_auth import CertificateAuthority
from wallet_platform.config import Settings
from wallet_platform.server.process import start_server
from wallet_service.bootstrap import build_components


async def _probe(*args: str, env: Mapping[str, str] | None = None) -> tuple[int, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("WALLET_")}
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "wallet_platform.server.healthcheck",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env={**clean, **(env or {})},
    )
    output, _ = await process.communicate()
    return process.returncode or 0, output.decode()


@pytest.mark.slow
async def test_probe_reports_serving_and_fails_on_a_dead_port(tmp_path):
    settings = Settings(
        database_url=f"sqlite:///{tmp_path / 'w.db'}",
        listen="127.0.0.1:0",
        auth_tokens="secret=admin",  # health stays open even with authentication on
    )
    running = await start_server(settings, build_components, role="wallet-service")
    try:
        code, output = await _probe(running.target)
        assert code == 0 and "SERVING" in output
        code, output = await _probe(running.target, "wallet.v1.WalletService")
        assert code == 0, output
        code, output = await _probe(running.target, "wallet.v1.NoSuchService")
        assert code == 1 and "NOT_FOUND" in output
    finally:
        await running.stop()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{probe.getsockname()[1]}"
    code, output = await _probe(dead, "--timeout", "1")
    assert code == 1 and "UNAVAILABLE" in output


@pytest.mark.slow
async def test_probe_verifies_a_tls_server_with_the_ca_and_no_token(tmp_path):
    ca = CertificateAuthority(tmp_path, "probe-ca")
    issued = ca.issue("wallet-service", server=True)
    settings = Settings(
        database_url=f"sqlite:///{tmp_path / 'w.db'}",
        listen="127.0.0.1:0",
        tls_cert=str(issued.cert),
        tls_key=str(issued.key),
        auth_tokens="secret=admin",
    )
    running = await start_server(settings, build_components, role="wallet-service")
    try:
        code, output = await _probe(running.target, env={"WALLET_TLS_CA": ca.path})
        assert code == 0 and "SERVING" in output, output
        code, output = await _probe(running.target, "--timeout", "2")
        assert code == 1 and "UNAVAILABLE" in output  # plaintext against TLS
        other = CertificateAuthority(tmp_path, "other-ca")
        code, output = await _probe(
            running.target, "--timeout", "2", env={"WALLET_TLS_CA": other.path}
        )
        assert code == 1 and "UNAVAILABLE" in output  # a server this CA did not sign
    finally:
        await running.stop()
