"""The wallet-platform-client distribution on its own: installable alone, and typed.

A fresh, empty venv installs the client from a copy of the repository's ``protos/`` and
``clients/python/`` (no generated code: the build makes it) the ordinary way, ``pip
install clients/python``; it holds none of the server's dependencies, and the README's
client example runs there against a real ``wallet-stack``. The typing test runs mypy
over code that misuses the messages, the gRPC stubs and the client, and expects exactly
those errors: proof that the ``.pyi`` files (messages and gRPC stubs) are used.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.stack_process import stack_process
from tests.e2e.test_client_readme import EXPECTED_LINES, run_client_block
from tests.e2e.venvs import importable, installed, make_venv

ROOT = Path(__file__).resolve().parents[2]
CLIENT_DEPENDENCIES = {
    "wallet-platform-client",
    "grpcio",
    "grpcio-status",
    "protobuf",
    "googleapis-common-protos",
    "typing-extensions",  # grpcio's
}


def _copy_client_sources(destination: Path) -> Path:
    """protos/ and clients/python/ as a checkout has them (nothing generated or built)."""
    shutil.copytree(ROOT / "protos", destination / "protos")
    shutil.copytree(
        ROOT / "clients" / "python",
        destination / "clients" / "python",
        ignore=shutil.ignore_patterns("wallet", "build", "*.egg-info", "__pycache__"),
    )
    assert not (destination / "clients/python/src/wallet").exists()
    return destination / "clients" / "python"


@pytest.mark.slow
def test_client_installs_into_an_empty_venv_and_calls_a_real_server(tmp_path: Path) -> None:
    source = _copy_client_sources(tmp_path / "checkout")
    venv = tmp_path / "venv"
    python = make_venv(venv)
    install = subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", str(source)],
        capture_output=True,
        text=True,
        timeout=540,
    )
    assert install.returncode == 0, install.stdout + install.stderr
    assert set(installed(python)) - {"pip", "setuptools"} == CLIENT_DEPENDENCIES

    server_modules = ["sqlalchemy", "psycopg", "alembic", "aio_pika", "grpc_tools"]
    server_modules += ["wallet_platform", "wallet_service"]
    assert importable(python, server_modules, tmp_path) == []

    site = next((venv / "lib").glob("python3.*/site-packages"))
    for typed in ("wallet/py.typed", "wallet_client/py.typed", "wallet/v1/wallet_pb2.pyi"):
        assert (site / typed).is_file(), typed
    assert (site / "wallet/v1/transfer_pb2_grpc.pyi").is_file()

    with stack_process(tmp_path) as address:
        assert run_client_block(python, address, tmp_path) == EXPECTED_LINES


MISUSE = """
from wallet.v1 import wallet_pb2, wallet_pb2_grpc
from wallet_client import WalletClient

client = WalletClient()
client.deposit("alice", "100")
balance: str = client.get_wallet("alice").wallet.balance
wallet_pb2.DepositRequest(amount="ten")


class Servicer(wallet_pb2_grpc.WalletServiceServicer):
    def Deposit(self, request: int, context: object) -> None: ...


wallet_pb2_grpc.WalletServiceStub(object()).NoSuchRpc
"""


def test_type_checkers_see_the_message_and_grpc_stubs(tmp_path: Path) -> None:
    program = tmp_path / "misuse.py"
    program.write_text(MISUSE)
    result = subprocess.run(
        [
            str(Path(sys.executable).parent / "mypy"),
            "--no-incremental",
            "--config-file=",
            "--ignore-missing-imports",
            "--python-executable",
            sys.executable,
            str(program),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    lines = {int(m[1]) for m in re.finditer(r"misuse\.py:(\d+): error", result.stdout)}
    # deposit(amount=str), an int into a str, an int64 field given a str, a servicer
    # method with the wrong request and response types, an RPC the stub does not have.
    assert lines == {6, 7, 8, 12, 15}, result.stdout
