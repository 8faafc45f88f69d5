"""WalletClient.batch_deposit / batch_withdraw against a real server, both backends."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

import wallet_client as wc
from tests.e2e.test_wallet_grpc import wallet_only
from tests.integration.walletctl_harness import running_stack
from wallet_platform import failpoints
from wallet_platform.config import Settings
from wallet_platform.server.process import RunningServer, start_server


@pytest.fixture
async def server(settings: Settings) -> AsyncIterator[RunningServer]:
    running = await start_server(settings, wallet_only, role="wallet-service")
    try:
        yield running
    finally:
        await running.stop(grace=1)


async def test_chunks_outcomes_typed_errors_and_a_replaying_rerun(server):
    def work() -> tuple[list[wc.ItemOutcome], list[wc.ItemOutcome], list[wc.ItemOutcome], int]:
        # A generous deadline: a chunk resent after a timeout would answer `replayed`.
        with wc.WalletClient(server.target, timeout=120) as client:
            wallet = client.create_wallet("USD").wallet.wallet_id
            items = [wc.MoveItem(wallet, 1, f"bulk-{uuid.uuid4().hex}") for _ in range(1200)]
            items[7] = wc.MoveItem("nobody", 1, "bulk-nobody")
            items[900] = wc.MoveItem(wallet, -5, "bulk-negative")
            first = client.batch_deposit(items, chunk_size=500)
            again = client.batch_deposit(items, chunk_size=1000)
            withdrawn = client.batch_withdraw(
                [wc.MoveItem(wallet, 1000), wc.MoveItem(wallet, 1000)]
            )
            return first, again, withdrawn, client.get_wallet(wallet).wallet.balance

    first, again, withdrawn, balance = await asyncio.to_thread(work)
    assert [o.index for o in first] == list(range(1200))
    assert sum(o.ok for o in first) == 1198 and not any(o.replayed for o in first)
    assert isinstance(first[7].error, wc.WalletNotFoundError)
    assert first[7].error.request_id == "bulk-nobody"
    assert isinstance(first[900].error, wc.InvalidArgumentError)
    assert first[900].error.metadata.get("field") == "amount"
    # The rerun replays every applied item and refuses the same ones again.
    assert all(o.replayed for i, o in enumerate(again) if i not in (7, 900))
    assert [type(again[i].error) for i in (7, 900)] == [type(first[i].error) for i in (7, 900)]
    # Withdrawals: one applied, the other refused with its typed error (items of one
    # batch run concurrently: which one wins is not defined).
    applied = [o for o in withdrawn if o.ok]
    refused = [o for o in withdrawn if not o.ok]
    assert len(applied) == 1 and isinstance(refused[0].error, wc.InsufficientFundsError)
    assert balance == 1198 - 1000


async def test_a_batch_past_its_deadline_is_sent_again_with_the_same_keys(tmp_path: Path):
    """The first attempt commits every item, then outlives its deadline; the retry of
    the whole batch (same request_ids) is a replay of each item."""
    database_url = f"sqlite:///{tmp_path / 'wallet.db'}"
    try:
        async with running_stack(database_url, failpoints="wallet.after_commit=sleep(1500)") as s:

            def scenario() -> list[wc.ItemOutcome]:
                policy = wc.RetryPolicy(max_attempts=3, initial_backoff=0.01, total_timeout=20)
                with wc.WalletClient(s.target, timeout=0.5, retry=policy) as client:
                    client.create_wallet("USD", wallet_id="alice")
                    items = [wc.MoveItem("alice", 100 + i) for i in range(3)]
                    outcomes = client.batch_deposit(items)
                    assert client.get_wallet("alice").wallet.balance == 303
                    return outcomes

            outcomes = await asyncio.to_thread(scenario)
    finally:
        failpoints.configure("")
    assert all(o.ok and o.replayed for o in outcomes), outcomes
    assert len({o.request_id for o in outcomes}) == 3
