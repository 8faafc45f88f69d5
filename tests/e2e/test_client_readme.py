"""The README's Python client example, run for real against ``wallet-stack``.

The block between ``client:begin`` and ``client:end`` appears in README.md and in
clients/python/README.md; both must be the same text, and that text is run with Python
against a stack subprocess. The only change: the address.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.stack_process import stack_process

ROOT = Path(__file__).resolve().parents[2]
READMES = [ROOT / "README.md", ROOT / "clients" / "python" / "README.md"]
EXPECTED_LINES = [
    "TRANSFER_STATE_COMPLETED",
    "INSUFFICIENT_FUNDS StatusCode.FAILED_PRECONDITION {'field': 'amount'}",
    "7500",
]


def client_block() -> str:
    """The example's code; the same in both READMEs."""
    blocks = []
    for readme in READMES:
        match = re.search(
            r"<!-- client:begin -->\s*```python\n(.*?)```\s*<!-- client:end -->",
            readme.read_text(),
            re.S,
        )
        assert match, f"{readme.name} has no client block"
        blocks.append(match.group(1))
    assert blocks[0] == blocks[1], "the two READMEs show different client examples"
    assert len(blocks[0].splitlines()) <= 16
    return blocks[0]


def run_client_block(python: Path, address: str, tmp_path: Path) -> list[str]:
    """Run the README block with ``python`` against ``address``; its output lines."""
    script = client_block().replace("127.0.0.1:50051", address)
    result = subprocess.run(
        [str(python), "-c", script],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout.splitlines()


@pytest.mark.slow
def test_readme_client_example_runs_against_wallet_stack(tmp_path: Path) -> None:
    with stack_process(tmp_path) as address:
        assert run_client_block(Path(sys.executable), address, tmp_path) == EXPECTED_LINES
