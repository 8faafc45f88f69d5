"""Checks through the public API only, and waiting for the consumers to drain.

The client ledger's prediction (:meth:`wallet_bench.ledger.Ledger.expected_wallets`) is
read back over gRPC: balances and statistics must be what the acknowledged writes and
terminal transfers add up to. Without a database URL these are the run's only checks.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import TypeVar

import grpc

from wallet.v1 import analytics_pb2, wallet_pb2
from wallet_bench.checks import STAT_FIELDS, Check, LogReader, verdict
from wallet_bench.client import Clients
from wallet_bench.ledger import Ledger, LoadConfig

T = TypeVar("T")


async def check_api(clients: Clients, ledger: Ledger, config: LoadConfig) -> list[Check]:
    """Balances and statistics read back over gRPC against the client's prediction."""
    expected = ledger.expected_wallets(config)
    balances = await _gather_limited(
        [_get_balance(clients, wallet_id) for wallet_id in expected], limit=32
    )
    problems = []
    negative = []
    for (wallet_id, want), have in zip(expected.items(), balances, strict=True):
        if have != want["balance"]:
            problems.append(f"{wallet_id}: balance {have} != expected {want['balance']}")
        if have is not None and have < 0:
            negative.append(f"{wallet_id}: {have}")
    checks = [
        verdict(
            "balances_match_client",
            problems,
            f"{len(expected)} wallets, total {sum(w['balance'] for w in expected.values())}",
        ),
        verdict("no_negative_balance", negative),
    ]
    unfinished = [f"{op.request_id}: not terminal" for op in ledger.unfinished_transfers.values()]
    checks.append(verdict("sagas_terminal", unfinished, _states_text(ledger)))
    unresolved = [f"{op.kind} {r}: outcome unknown" for r, op in ledger.unknown.items()]
    checks.append(
        verdict(
            "applied_once",
            unresolved + ledger.replay_mismatches,
            f"{ledger.replays} replays matched",
        )
    )
    return checks


def _states_text(ledger: Ledger) -> str:
    states = ledger.transfer_states()
    return ", ".join(f"{s} {n}" for s, n in sorted(states.items())) or "no transfers"


async def _gather_limited(coroutines: list[Awaitable[T]], limit: int) -> list[T]:
    semaphore = asyncio.Semaphore(limit)

    async def one(coroutine: Awaitable[T]) -> T:
        async with semaphore:
            return await coroutine

    return await asyncio.gather(*(one(c) for c in coroutines))


async def _get_balance(clients: Clients, wallet_id: str) -> int | None:
    try:
        response = await clients.wallet.GetWallet(
            wallet_pb2.GetWalletRequest(wallet_id=wallet_id), timeout=10
        )
    except grpc.aio.AioRpcError:
        return None
    return int(response.wallet.balance)


async def _get_stats(clients: Clients, wallet_id: str) -> dict[str, int] | None:
    try:
        response = await clients.analytics.GetWalletStats(
            analytics_pb2.GetWalletStatsRequest(wallet_id=wallet_id), timeout=10
        )
    except grpc.aio.AioRpcError:
        return None
    return {name: int(getattr(response.stats, name)) for name in STAT_FIELDS}


async def api_stats_mismatches(clients: Clients, ledger: Ledger, config: LoadConfig) -> list[str]:
    expected = ledger.expected_wallets(config)
    wanted = {w: {k: v[k] for k in STAT_FIELDS} for w, v in expected.items()}
    have = await _gather_limited([_get_stats(clients, w) for w in wanted], limit=32)
    actual = {w: s for w, s in zip(wanted, have, strict=True) if s is not None}
    return _compare_stats(wanted, actual)


@dataclass
class DrainResult:
    drained: bool
    seconds: float
    remaining: str = ""


async def wait_for_drain(
    clients: Clients,
    ledger: Ledger,
    config: LoadConfig,
    reader: LogReader | None,
    timeout_s: float = 60.0,
) -> DrainResult:
    """Wait until every event is published and the analytics projection caught up."""
    started = time.monotonic()
    remaining = ""
    while True:
        if reader is not None:
            pending, lagging = await asyncio.to_thread(reader.drain_state)
            done = pending == 0 and lagging == 0
            remaining = (
                f"{pending} unpublished outbox rows, {lagging} events not applied by analytics"
            )
        else:
            problems = await api_stats_mismatches(clients, ledger, config)
            done = not problems
            remaining = f"{len(problems)} wallets behind"
        elapsed = time.monotonic() - started
        if done:
            return DrainResult(True, elapsed)
        if elapsed > timeout_s:
            return DrainResult(False, elapsed, remaining)
        await asyncio.sleep(0.1)


def _compare_stats(
    expected: dict[str, dict[str, int]], actual: dict[str, dict[str, int]]
) -> list[str]:
    problems = []
    for wallet_id, want in sorted(expected.items()):
        have = actual.get(wallet_id)
        if have is None:
            if any(want.values()):
                problems.append(f"{wallet_id}: no statistics yet")
            continue
        diffs = [f"{k} {have[k]} != {want[k]}" for k in STAT_FIELDS if have[k] != want[k]]
        if diffs:
            problems.append(f"{wallet_id}: " + ", ".join(diffs))
    return problems
