"""wallet-bench against an in-process ``wallet-stack``: the checker passes on a healthy
platform and catches planted violations (it is only worth something if it can fail).

Small runs (200 requests, 20 wallets) on SQLite and, when configured, PostgreSQL.
Nothing here measures speed: benchmarks prove numbers, tests prove behaviour.
"""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from datetime import UTC, datetime

from sqlalchemy import create_engine, insert, update
from sqlalchemy.pool import NullPool

from wallet_bench.checks import LogReader, check_log
from wallet_bench.client import Targets
from wallet_bench.ledger import LoadConfig
from wallet_bench.run import bench_run, render
from wallet_platform.config import Settings
from wallet_platform.server.process import start_server
from wallet_platform.storage.database import sync_url
from wallet_platform.storage.schema import transfers, wallets
from wallet_stack.main import build_stack


def _config() -> LoadConfig:
    """A small seeded run (each call its own run id, so its own wallets)."""
    return LoadConfig(
        duration_s=None,
        requests=200,
        concurrency=8,
        wallets=20,
        hot_skew=0.3,
        hot_wallets=3,
        retry_share=0.1,
        initial_balance=5_000,
        max_amount=400,
        progress=False,
        seed=7,
    )


def _plant_violations(database_url: str, config: LoadConfig) -> None:
    """Money from nowhere in one wallet, and a saga left half done (without its hold)."""
    engine = create_engine(sync_url(database_url), poolclass=NullPool)
    now = datetime.now(UTC)
    try:
        with engine.begin() as conn:
            conn.execute(
                update(wallets)
                .where(wallets.c.wallet_id == config.wallet_id(0))
                .values(balance=wallets.c.balance + 1)
            )
            conn.execute(
                insert(transfers).values(
                    transfer_id=str(uuid.uuid4()),
                    request_id=f"planted-{uuid.uuid4()}",
                    fingerprint="x",
                    from_wallet_id=config.wallet_id(1),
                    to_wallet_id=config.wallet_id(2),
                    amount=1,
                    currency="USD",
                    state="DEBITED",
                    attempts=0,
                    created_at=now,
                    updated_at=now,
                )
            )
    finally:
        engine.dispose()


async def test_a_bench_run_passes_every_check_and_the_checker_catches_planted_violations(
    database_url: str,
) -> None:
    settings = Settings(database_url=database_url, listen="127.0.0.1:0", log_format="console")
    running = await start_server(settings, build_stack, role="stack")
    config = _config()
    try:
        report = await bench_run(
            config,
            Targets.single(running.target),
            settings,
            database_url=database_url,
            connections=2,
            drain_timeout_s=60,
        )
    finally:
        await running.stop()
    assert report.ok, render(report)
    names = {check.name for check in report.checks}
    assert {
        "conservation",
        "holds_match",
        "no_negative_balance",
        "sagas_terminal",
        "applied_once",
        "outbox_complete",
        "analytics_equal_log",
        "balances_match_client",
        "analytics_match_client",
        "drained",
    } <= names
    load = report.load
    assert load["requests"] == 200
    assert load["replays"] > 0 and load["replay_mismatches"] == 0
    assert sum(load["transfers"].values()) == load["operations"]["transfer"]["count"]
    assert report.ledger is not None

    # The same checks, after someone tampered with the ledger behind the service's back.
    await asyncio.to_thread(_plant_violations, database_url, config)
    reader = LogReader(database_url, config.wallet_prefix)
    try:
        snapshot = await asyncio.to_thread(reader.snapshot)
    finally:
        reader.close()
    verdict = {check.name: check for check in check_log(snapshot, report.ledger, config)}
    assert not verdict["conservation"].ok
    assert config.wallet_id(0) in verdict["conservation"].examples[0]
    assert not verdict["balances_match_client"].ok
    assert not verdict["sagas_terminal"].ok
    assert verdict["sagas_terminal"].examples[0].startswith("sagas_finished:")
    assert "state=DEBITED" in verdict["sagas_terminal"].examples[0]
    assert not verdict["holds_match"].ok
    assert "transfer_state=DEBITED  hold_state=None" in verdict["holds_match"].examples[0]
    assert verdict["applied_once"].ok  # untouched invariants still hold


async def test_the_checker_catches_a_lost_acknowledged_write(database_url: str) -> None:
    """A request the client saw acknowledged must be in the log exactly once."""
    settings = Settings(database_url=database_url, listen="127.0.0.1:0", log_format="console")
    running = await start_server(settings, build_stack, role="stack")
    config = dataclasses.replace(
        _config(), requests=40, mix={"deposit": 1}, retry_share=0.0, wallets=5
    )
    try:
        report = await bench_run(
            config, Targets.single(running.target), settings, database_url=database_url
        )
    finally:
        await running.stop()
    assert report.ok, render(report)
    assert report.ledger is not None
    # Pretend the client was told "OK" for a deposit the platform never saw.
    ghost = next(iter(report.ledger.acked.values()))
    ghost_id = f"ghost-{uuid.uuid4()}"
    report.ledger.acked[ghost_id] = type(ghost)("deposit", ghost_id, ghost.wallet_id, 10)
    reader = LogReader(database_url, config.wallet_prefix)
    try:
        snapshot = await asyncio.to_thread(reader.snapshot)
    finally:
        reader.close()
    verdict = {check.name: check for check in check_log(snapshot, report.ledger, config)}
    assert not verdict["applied_once"].ok
    assert any(ghost_id in example for example in verdict["applied_once"].examples)
    assert not verdict["balances_match_client"].ok
    assert verdict["conservation"].ok
