"""docs/architecture.md agrees with the code: the import contracts, the RPCs, the
failpoints and the error reasons it lists as the public contract are the real ones."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from wallet.v1 import analytics_pb2, fraud_pb2, transfer_pb2, wallet_pb2
from wallet_platform import errors

ROOT = Path(__file__).resolve().parents[2]
DOC = (ROOT / "docs" / "architecture.md").read_text()
CODE_DIRS = ("wallet_platform", "wallet_service", "saga_orchestrator", "analytics_worker")


def _named(text: str) -> set[str]:
    return set(re.findall(r"`([^`\n]+)`", text))


def test_the_import_contracts_are_the_ones_the_doc_lists():
    with (ROOT / "pyproject.toml").open("rb") as handle:
        contracts = tomllib.load(handle)["tool"]["importlinter"]["contracts"]
    ids = {contract["id"] for contract in contracts}
    section = DOC.split("## Layers and what may import what", 1)[1].split("\n## ", 1)[0]
    listed = {
        line.split("|")[1].strip().strip("`")
        for line in section.splitlines()
        if line.startswith("| `")
    }
    assert ids == listed


def test_every_rpc_is_listed():
    named = _named(DOC)
    for module in (wallet_pb2, transfer_pb2, analytics_pb2, fraud_pb2):
        for service in module.DESCRIPTOR.services_by_name.values():
            assert service.full_name in named
            for method in service.methods:
                assert method.name in named, f"{service.full_name}/{method.name}"


def test_every_failpoint_in_the_code_is_listed():
    used: set[str] = set()
    for folder in (*CODE_DIRS, "fraud_worker"):
        for path in (ROOT / folder).rglob("*.py"):
            used |= set(re.findall(r'failpoint\("([a-z_.]+)"\)', path.read_text()))
    assert len(used) >= 7
    assert used <= _named(DOC), sorted(used - _named(DOC))


def test_every_error_reason_is_listed():
    reasons = {
        cls.reason
        for cls in vars(errors).values()
        if isinstance(cls, type) and issubclass(cls, errors.WalletPlatformError)
    }
    assert len(reasons) > 10
    assert reasons <= _named(DOC), sorted(reasons - _named(DOC))
