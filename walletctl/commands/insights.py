"""``walletctl stats`` (AnalyticsService) and ``walletctl alerts`` (FraudService).

Both read projections that the workers build from the event stream, so they lag the
ledger by the pipeline's delay; ``walletctl reconcile`` compares them with the log.

The analytics projection holds no currency, so the text output of ``stats`` asks
WalletService for the wallet's currency to show the totals in major units (``--json``
keeps minor units and makes no extra call).
"""

from __future__ import annotations

import argparse
from typing import Any

import grpc

from wallet.v1 import analytics_pb2, fraud_pb2, wallet_pb2
from walletctl import render
from walletctl.commands import MORE_HINT, fetch_pages, leaf, positive_int
from walletctl.context import Context

STATS_KEYS = (
    "wallet_id",
    "total_deposited",
    "deposit_count",
    "total_withdrawn",
    "withdrawal_count",
    "total_transferred_in",
    "transfer_in_count",
    "total_transferred_out",
    "transfer_out_count",
    "events_applied",
    "last_activity_at",
)


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    p = leaf(
        sub,
        "stats",
        common,
        stats,
        "a wallet's analytics: totals and counts (AnalyticsService)",
        "A wallet's running totals from the analytics projection. Transfer-out figures "
        "are net of refunds (a compensated transfer counts as no transfer out).",
    )
    p.add_argument("wallet_id")

    p = leaf(sub, "alerts", common, alerts, "fraud alerts, newest first (FraudService)")
    p.add_argument("--wallet", default="", help="only this wallet's alerts")
    p.add_argument("--limit", type=positive_int, default=50, help="at most this many (default 50)")
    p.add_argument("--all", action="store_true", help="every alert (pages through)")


def stats(ctx: Context, args: argparse.Namespace) -> int:
    response = ctx.call(
        "analytics",
        "GetWalletStats",
        analytics_pb2.GetWalletStatsRequest(wallet_id=args.wallet_id),
    )
    data = render.stats(response.stats)
    ctx.emit({"stats": data}, lambda: _stats_text(ctx, data))
    return 0


MONEY_KEYS = (
    "total_deposited",
    "total_withdrawn",
    "total_transferred_in",
    "total_transferred_out",
)


def _stats_text(ctx: Context, data: dict[str, Any]) -> str:
    try:
        currency = ctx.call(
            "wallet", "GetWallet", wallet_pb2.GetWalletRequest(wallet_id=data["wallet_id"])
        ).wallet.currency
    except grpc.RpcError as error:
        note = f"(amounts in minor units: the wallet's currency is unknown, {error.code().name})"
        return render.record(data, STATS_KEYS) + "\n" + note
    return render.record(render.with_money(data, *MONEY_KEYS, currency=currency), STATS_KEYS)


def alerts(ctx: Context, args: argparse.Namespace) -> int:
    found, more = fetch_pages(
        lambda page_size, token: ctx.call(
            "fraud",
            "ListFraudAlerts",
            fraud_pb2.ListFraudAlertsRequest(
                wallet_id=args.wallet, page_size=page_size, page_token=token
            ),
        ),
        lambda response: (render.alert(a) for a in response.alerts),
        None if args.all else args.limit,
    )
    ctx.emit(
        {"alerts": found, "more": more},
        lambda: (
            render.table(
                found,
                ("created_at", "wallet_id", "rule", "detail", "alert_id"),
                ("created at", "wallet", "rule", "detail", "alert"),
            )
            + (MORE_HINT if more else "")
        ),
    )
    return 0
