"""``walletctl projections rebuild|check``: the analytics projection vs the event log.

``rebuild`` replaces ``wallet_stats`` by SQL aggregates over the events the analytics
consumer has applied (``analytics_worker.rebuild``); it is safe while the consumer
runs and the rebuilt numbers equal the live ones. ``check`` reports drift without
changing anything (exit 1 on drift), plus how many events are not applied yet.
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from walletctl import exitcodes, render
from walletctl.commands import group, leaf
from walletctl.context import Context


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    _, cmds = group(sub, "projections", "rebuild or check the analytics projection", __doc__)
    leaf(
        cmds,
        "rebuild",
        common,
        rebuild,
        "recompute wallet_stats from the event log (safe while the worker runs)",
    )
    leaf(cmds, "check", common, check, "compare wallet_stats with the event log; exit 1 on drift")


def _database(ctx: Context) -> Any:
    from wallet_platform.config import Settings
    from wallet_platform.storage.database import Database
    from walletctl.dbutil import snapshot_engine

    snapshot_engine(ctx.database_url).dispose()  # validates the URL / file exists
    return Database.from_settings(Settings(database_url=ctx.database_url, db_pool_size=1))


def rebuild(ctx: Context, args: argparse.Namespace) -> int:
    from analytics_worker.rebuild import count_unapplied, rebuild_wallet_stats

    async def go() -> tuple[int, int]:
        db = _database(ctx)
        try:
            written = await rebuild_wallet_stats(db)
            return written, await count_unapplied(db)
        finally:
            await db.dispose()

    written, unapplied = asyncio.run(go())
    ctx.emit(
        {"rebuilt_wallets": written, "events_not_applied": unapplied},
        f"rebuilt wallet_stats for {written} wallet(s) from the event log; "
        f"{unapplied} event(s) not applied by the analytics worker yet",
    )
    return exitcodes.OK


def check(ctx: Context, args: argparse.Namespace) -> int:
    from analytics_worker.rebuild import compare_with_log, count_unapplied

    async def go() -> tuple[list[Any], int]:
        db = _database(ctx)
        try:
            return await compare_with_log(db), await count_unapplied(db)
        finally:
            await db.dispose()

    drifts, unapplied = asyncio.run(go())
    rows = [_drift(d) for d in drifts]
    ctx.emit(
        {"ok": not rows, "drift": rows, "events_not_applied": unapplied},
        lambda: (
            (
                render.table(rows, ("wallet_id", "summary"), ("wallet", "differences"))
                if rows
                else "wallet_stats matches the event log"
            )
            + f"\n{unapplied} event(s) not applied by the analytics worker yet"
        ),
    )
    return exitcodes.FAILED if rows else exitcodes.OK


def _drift(drift: Any) -> dict[str, Any]:
    differences = {
        name: {"projected": _plain(projected), "log": _plain(expected)}
        for name, (projected, expected) in drift.differences().items()
    }
    return {
        "wallet_id": drift.wallet_id,
        "differences": differences,
        "summary": ", ".join(
            f"{name} {d['projected']} (log {d['log']})" for name, d in differences.items()
        ),
    }


def _plain(value: Any) -> Any:
    return render.iso(value) if hasattr(value, "isoformat") else value
