"""A client retry across a server crash applies the deposit once.

``wallet-stack`` runs with ``wallet.after_commit=exit``: the deposit commits and the
process dies before answering (kill -9 at the worst moment). The client sees
``UNAVAILABLE`` and keeps retrying with the same request_id while a new process starts on
the same port and database; the retry that gets through is answered from the
idempotency record (``replayed``), and the wallet holds the amount once.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

import wallet_client as wc
from tests.e2e.stack_process import free_port, stack_process, start_stack
from wallet.v1 import wallet_pb2


@pytest.mark.slow
def test_deposit_retried_across_a_crash_after_commit_is_applied_once(tmp_path: Path) -> None:
    address = f"127.0.0.1:{free_port()}"
    crashing = start_stack(tmp_path, address, failpoints="wallet.after_commit=exit")
    policy = wc.RetryPolicy(max_attempts=100, initial_backoff=0.05, max_backoff=0.5)
    outcome: dict[str, object] = {}

    def deposit() -> None:
        with wc.WalletClient(address, timeout=5, retry=policy) as client:
            client.create_wallet("USD", wallet_id="alice")
            try:
                outcome["answer"] = client.deposit("alice", 4_200)
            except wc.WalletError as error:
                outcome["error"] = error

    caller = threading.Thread(target=deposit)
    try:
        caller.start()
        assert crashing.wait(timeout=60) == 137, "the failpoint did not kill the stack"
        assert caller.is_alive(), "the client gave up instead of retrying"
        with stack_process(tmp_path, address=address):
            caller.join(timeout=60)
            assert not caller.is_alive()
            assert "error" not in outcome, outcome
            answer = outcome["answer"]
            assert isinstance(answer, wallet_pb2.DepositResponse)
            assert answer.replayed and answer.wallet.balance == 4_200
            with wc.WalletClient(address) as client:
                events = client.list_wallet_events("alice").events
                assert [e.amount for e in events if e.amount] == [4_200]
                assert events[0].request_id
    finally:
        if crashing.poll() is None:
            crashing.kill()
        caller.join(timeout=60)
