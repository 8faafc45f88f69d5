"""The README's grpcurl walkthrough, run for real against `wallet-stack`.

The block between ``walkthrough:begin`` and ``walkthrough:end`` is executed with bash
and the real grpcurl binary against a stack subprocess on a free port, so the README
cannot rot. The only change to the text: the address, the scratch file, and the
``sleep 1`` before the consumer reads becomes a bounded wait for the consumers.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent

WAIT_FOR_CONSUMERS = (
    "for _ in $(seq 1 100); do "
    'grpcurl -plaintext -d \'{"wallet_id":"alice"}\' ADDR wallet.v1.FraudService/ListFraudAlerts'
    " | grep -q LARGE_WITHDRAWAL && break; sleep 0.2; done"
)


def walkthrough_block() -> str:
    text = (ROOT / "README.md").read_text()
    match = re.search(
        r"<!-- walkthrough:begin -->\s*```sh\n(.*?)```\s*<!-- walkthrough:end -->", text, re.S
    )
    assert match, "README.md has no walkthrough block"
    return match.group(1)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_serving(address: str, process: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, "wallet-stack exited during start-up"
        check = subprocess.run(
            [str(BIN / "grpcurl"), "-plaintext", address, "grpc.health.v1.Health/Check"],
            capture_output=True,
            text=True,
        )
        if check.returncode == 0 and "SERVING" in check.stdout and "NOT" not in check.stdout:
            return
        time.sleep(0.2)
    raise AssertionError("wallet-stack did not become healthy")


@pytest.mark.slow
def test_readme_walkthrough_runs_against_wallet_stack(tmp_path: Path) -> None:
    port = free_port()
    address = f"127.0.0.1:{port}"
    env = {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "WALLET_DATABASE_URL": f"sqlite:///{tmp_path / 'wallet.db'}",
        "WALLET_AMQP_URL": "",
        "WALLET_LOG_LEVEL": "WARNING",
    }
    env.pop("WALLET_FAILPOINTS", None)
    log = (tmp_path / "stack.log").open("wb")
    stack = subprocess.Popen(
        [str(BIN / "wallet-stack"), "--listen", address],
        env=env,
        cwd=tmp_path,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_serving(address, stack)
        script = (
            walkthrough_block()
            .replace("sleep 1\n", WAIT_FOR_CONSUMERS + "\n")
            .replace("127.0.0.1:50051", address)
            .replace("ADDR", address)
            .replace("/tmp/transfer.json", str(tmp_path / "transfer.json"))
        )
        result = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", script],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        out = result.stdout
        assert "wallet.v1.WalletService" in out and "wallet.v1.TransferService" in out
        assert '"replayed": true' in out
        assert "TRANSFER_STATE_COMPLETED" in out
        assert "FRAUD_RULE_LARGE_WITHDRAWAL" in out
        assert '"total_deposited": "3000000"' in out
        assert '"total_withdrawn": "1200000"' in out
        assert '"status": "SERVING"' in out
    finally:
        stack.terminate()
        try:
            assert stack.wait(timeout=20) == 0, "wallet-stack did not stop cleanly on SIGTERM"
        finally:
            if stack.poll() is None:
                stack.kill()
            log.close()
