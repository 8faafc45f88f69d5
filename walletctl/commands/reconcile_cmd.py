"""``walletctl reconcile``: check the ledger's invariants against the database.

The checks live in :mod:`wallet_checks` (shared with ``wallet-bench``); this module
only parses options, runs them and prints the report. Exit 0 when clean (warnings
allowed), 1 on any drift, 3 when the database cannot be reached.
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from wallet_checks.catalog import CHECK_DESCRIPTIONS as CHECKS
from walletctl import exitcodes
from walletctl.commands import leaf, positive_int
from walletctl.context import Context, UsageError


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    checks = "\n".join(f"  {name:<30} {text}" for name, text in CHECKS.items())
    p = leaf(
        sub,
        "reconcile",
        common,
        run,
        "check the ledger invariants; exit 1 on any drift",
        "Check the invariants of docs/architecture.md against the database (--database-url / "
        "WALLET_DATABASE_URL) in one consistent snapshot. Exit 0 when clean "
        "(warnings allowed), 1 on drift, 3 when the database is unreachable.\n\n"
        f"checks:\n{checks}",
    )
    p.add_argument(
        "--outbox-max-age",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="a pending outbox row older than this is drift (default 60)",
    )
    p.add_argument(
        "--saga-max-age",
        type=float,
        default=300.0,
        metavar="SECONDS",
        help="an unfinished saga unchanged for this long is stuck (default 300)",
    )
    p.add_argument(
        "--projection-lag",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="warn about events this old not yet applied by analytics (default 60)",
    )
    p.add_argument(
        "--delivery-max-age",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="a published event this old must be applied or queued for each consumer (default 60)",
    )
    p.add_argument(
        "--check",
        action="append",
        default=None,
        metavar="NAME",
        help="run only this check (repeatable)",
    )
    p.add_argument(
        "--skip", action="append", default=[], metavar="NAME", help="skip this check (repeatable)"
    )
    p.add_argument(
        "--examples",
        type=positive_int,
        default=20,
        help="offending rows listed per check (default 20; counts are always complete)",
    )
    p.add_argument(
        "--strict", action="store_true", help="treat warnings (projection lag) as drift too"
    )


def run(ctx: Context, args: argparse.Namespace) -> int:
    unknown = [n for n in [*(args.check or ()), *args.skip] if n not in CHECKS]
    if unknown:
        raise UsageError(f"unknown check(s) {', '.join(unknown)}; known: {', '.join(CHECKS)}")
    from walletctl.reconcile import ReconcileOptions, reconcile

    options = ReconcileOptions(
        outbox_max_age_seconds=args.outbox_max_age,
        saga_max_age_seconds=args.saga_max_age,
        projection_lag_seconds=args.projection_lag,
        example_limit=args.examples,
        checks=args.check,
        skip=args.skip,
        delivery_max_age_seconds=args.delivery_max_age,
    )
    wanted = args.check is None or "events_delivered" in args.check
    if ctx.amqp_url and wanted and "events_delivered" not in args.skip:
        try:
            options.broker_depths = asyncio.run(_broker_depths(ctx.amqp_url))
            options.bus = "rabbitmq"
        except Exception as error:
            ctx.note(f"broker not reachable ({type(error).__name__}): events_delivered skipped")
    elif not ctx.amqp_url:
        options.bus = "inprocess"
    report = reconcile(ctx.database_url, options)
    ctx.emit(report.to_dict(), report.render_text)
    if not report.ok or (args.strict and report.warnings):
        return exitcodes.FAILED
    return exitcodes.OK


async def _broker_depths(amqp_url: str) -> dict[str, int]:
    """Per consumer queue: messages ready in it plus those in its DLQ (passive declares)."""
    import aio_pika

    from wallet_platform.messaging.bus import QUEUES

    connection = await aio_pika.connect(amqp_url, timeout=10)
    try:
        channel = await connection.channel()
        depths: dict[str, int] = {}
        for queue, dlq in QUEUES.items():
            total = 0
            for name in (queue, dlq):
                declared = await channel.declare_queue(name, passive=True)
                total += int(declared.declaration_result.message_count or 0)
            depths[queue] = total
        return depths
    finally:
        await connection.close()
