"""The README's grpcurl walkthrough, run for real against `wallet-stack`.

The block between ``walkthrough:begin`` and ``walkthrough:end`` is executed with bash
and the real grpcurl binary against a stack subprocess on a free port, so the README
cannot rot. The only change to the text: the address, the scratch file, and the
``sleep 1`` before the consumer reads becomes a bounded wait for the consumers.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from tests.e2e.stack_process import stack_env, stack_process

ROOT = Path(__file__).resolve().parents[2]

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


@pytest.mark.slow
def test_readme_walkthrough_runs_against_wallet_stack(tmp_path: Path) -> None:
    with stack_process(tmp_path) as address:
        script = (
            walkthrough_block()
            .replace("sleep 1\n", WAIT_FOR_CONSUMERS + "\n")
            .replace("127.0.0.1:50051", address)
            .replace("ADDR", address)
            .replace("/tmp/transfer.json", str(tmp_path / "transfer.json"))
        )
        result = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", script],
            env=stack_env(tmp_path),
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "wallet.v1.WalletService" in out and "wallet.v1.TransferService" in out
    assert '"replayed": true' in out
    assert "WALLET_NOT_FOUND" in out  # the batch's refused item, beside its applied one
    assert "TRANSFER_STATE_COMPLETED" in out
    assert "FRAUD_RULE_LARGE_WITHDRAWAL" in out
    assert '"total_deposited": "3000000"' in out
    assert '"total_withdrawn": "1200000"' in out
    assert '"status": "SERVING"' in out
