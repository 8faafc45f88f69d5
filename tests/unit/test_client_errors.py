"""The client's one reason table mirrors every reason the server can send.

The server's reasons are the ``reason`` of each ``WalletPlatformError`` subclass in its
packages (found by importing them all), with the status code the server maps it to; the
client must know each one, with the same code, under the class for that code.
"""

from __future__ import annotations

import importlib
import pkgutil
import re
from pathlib import Path

import grpc
import pytest

import wallet_client
from tests.unit.test_lock import SERVER_PACKAGES
from wallet_client.errors import REASONS, WalletError, exception_class
from wallet_platform.errors import ReplayedError, WalletPlatformError
from wallet_platform.server.status import grpc_code


def _server_reasons() -> dict[str, grpc.StatusCode]:
    for name in SERVER_PACKAGES:
        package = importlib.import_module(name)
        for module in pkgutil.walk_packages(package.__path__, f"{name}."):
            if ".migrations" not in module.name:  # alembic scripts, run by alembic only
                importlib.import_module(module.name)
    reasons = {}
    pending = [WalletPlatformError]
    while pending:
        cls = pending.pop()
        pending.extend(cls.__subclasses__())
        if cls is ReplayedError:  # carries a stored reason, one of the others
            continue
        reasons[cls.reason] = grpc_code(cls.__new__(cls))
    return reasons


SERVER_REASONS = _server_reasons()


def test_the_server_side_scan_finds_the_known_reasons():
    assert {"INSUFFICIENT_FUNDS", "REQUEST_ID_REUSED", "WALLET_STATS_NOT_FOUND"} <= set(
        SERVER_REASONS
    )


@pytest.mark.parametrize("reason", sorted(SERVER_REASONS))
def test_every_server_reason_has_its_class_and_code(reason: str):
    cls, code = REASONS[reason]
    assert code == SERVER_REASONS[reason]
    generic, generic_code = REASONS[code.name]
    assert generic_code == code and issubclass(cls, generic)
    assert cls.__name__ in wallet_client.__all__


def test_client_only_rows_are_status_code_names():
    for reason, (_, code) in REASONS.items():
        if reason not in SERVER_REASONS:
            assert reason == code.name, reason


def test_unknown_reason_falls_back_to_its_status_codes_class():
    assert exception_class("DAILY_LIMIT", grpc.StatusCode.FAILED_PRECONDITION) is (
        wallet_client.FailedPreconditionError
    )
    assert exception_class("", grpc.StatusCode.ABORTED) is WalletError
    assert exception_class("INSUFFICIENT_FUNDS", grpc.StatusCode.FAILED_PRECONDITION) is (
        wallet_client.InsufficientFundsError
    )


def test_the_client_readme_table_is_the_table():
    readme = (Path(__file__).resolve().parents[2] / "clients/python/README.md").read_text()
    rows = re.findall(r"^\| `([A-Z_]+)` \| `(\w+)` \| `([A-Z_]+)` \|$", readme, re.M)
    assert rows == [(reason, cls.__name__, code.name) for reason, (cls, code) in REASONS.items()]
