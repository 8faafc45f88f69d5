"""A real ``wallet-stack`` subprocess on a free port, for tests that run README text.

SQLite in the test's tmp dir and the in-process bus, as ``make run`` serves; ready when
gRPC health says SERVING; stopped with SIGTERM, which must end it cleanly (exit 0).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def stack_env(tmp_path: Path) -> dict[str, str]:
    """The environment the stack (and commands run beside it) get: this venv first."""
    env = {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "WALLET_DATABASE_URL": f"sqlite:///{tmp_path / 'wallet.db'}",
        "WALLET_AMQP_URL": "",
        "WALLET_LOG_LEVEL": "WARNING",
    }
    env.pop("WALLET_FAILPOINTS", None)
    return env


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


def start_stack(
    tmp_path: Path, address: str, bin_dir: Path = BIN, failpoints: str = ""
) -> subprocess.Popen[bytes]:
    """A ``wallet-stack`` on ``address``, healthy; its output goes to tmp_path/stack.log."""
    with (tmp_path / "stack.log").open("ab") as log:
        stack = subprocess.Popen(
            [str(bin_dir / "wallet-stack"), "--listen", address],
            env={**stack_env(tmp_path), "WALLET_FAILPOINTS": failpoints},
            cwd=tmp_path,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_serving(address, stack)
    except BaseException:
        stack.kill()
        raise
    return stack


@contextmanager
def stack_process(tmp_path: Path, bin_dir: Path = BIN, address: str | None = None) -> Iterator[str]:
    """Yield the address of a healthy ``wallet-stack`` (from ``bin_dir``); stop it after."""
    address = address or f"127.0.0.1:{free_port()}"
    stack = start_stack(tmp_path, address, bin_dir)
    try:
        yield address
    finally:
        stack.terminate()
        try:
            assert stack.wait(timeout=20) == 0, "wallet-stack did not stop cleanly on SIGTERM"
        finally:
            if stack.poll() is None:
                stack.kill()
