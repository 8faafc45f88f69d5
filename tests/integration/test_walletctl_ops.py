"""Operator commands against a running stack: stats, alerts, projections, audit, dlq.

Everything here reads what the platform really produced: the analytics and fraud
workers consume the events of the CLI's own deposits and withdrawals, the audit
interceptor records the CLI's calls, and the in-process bus's dead letters are
inspected, replayed and purged with ``walletctl dlq``.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import create_engine, text

from tests.eventually import eventually
from tests.integration.walletctl_harness import Ctl, running_stack
from wallet_platform.storage.database import sync_url
from walletctl import exitcodes


async def sql(database_url: str, statement: str, **params: Any) -> list[dict[str, Any]]:
    """Plain SQL on a worker thread (the stack's tasks keep running meanwhile)."""

    def run() -> list[dict[str, Any]]:
        engine = create_engine(sync_url(database_url))
        try:
            with engine.begin() as conn:
                result = conn.execute(text(statement), params)
                return [dict(r._mapping) for r in result] if result.returns_rows else []
        finally:
            engine.dispose()

    return await asyncio.to_thread(run)


async def test_stats_alerts_projections_audit_and_dlq(database_url: str) -> None:
    async with running_stack(database_url, fraud_large_withdrawal=500) as running:
        ctl = Ctl(running, database_url)
        await ctl.ok("wallets", "create", "--currency", "USD", "--wallet-id", "o-1")
        await ctl.ok("wallets", "create", "--currency", "USD", "--wallet-id", "o-2")
        await ctl.ok("wallets", "deposit", "o-1", "2000")
        for amount in ("10", "20", "30"):  # three quick withdrawals: RAPID_WITHDRAWALS
            await ctl.ok("wallets", "withdraw", "o-1", amount)
        await ctl.ok("wallets", "withdraw", "o-1", "600")  # >= 500: LARGE_WITHDRAWAL
        rejected = await ctl("wallets", "withdraw", "o-2", "1", "--request-id", "o-rejected")
        assert rejected.code == exitcodes.FAILED

        # stats (AnalyticsService), once the worker has caught up
        stats = await eventually(
            lambda: ctl("stats", "o-1", "--json"),
            lambda r: r.code == 0 and r.json["stats"]["events_applied"] == 6,
        )
        assert stats.code == 0, stats
        assert stats.json["stats"] | {} == stats.json["stats"] | {
            "total_deposited": 2000, "deposit_count": 1,
            "total_withdrawn": 660, "withdrawal_count": 4, "events_applied": 6,
        }  # fmt: skip
        readable = await ctl("stats", "o-1")
        assert "total_withdrawn" in readable.out and "6.60 USD" in readable.out
        assert (await ctl("stats", "nobody")).code == exitcodes.FAILED

        # alerts (FraudService)
        alerts = await eventually(
            lambda: ctl("alerts", "--wallet", "o-1", "--json"),
            lambda r: r.code == 0 and len(r.json["alerts"]) >= 2,
        )
        assert sorted(a["rule"] for a in alerts.json["alerts"]) == [
            "LARGE_WITHDRAWAL",
            "RAPID_WITHDRAWALS",
        ]
        assert (await ctl.ok("alerts", "--wallet", "o-2"))["alerts"] == []
        table = await ctl("alerts")
        assert "RAPID_WITHDRAWALS" in table.out and "RULE" in table.out

        # projections: check, plant drift, rebuild
        assert (await ctl("projections", "check")).code == exitcodes.OK
        await sql(
            database_url,
            "UPDATE wallet_stats SET total_deposited = total_deposited + 7 WHERE wallet_id = 'o-1'",
        )
        drift = await ctl("projections", "check", "--json")
        assert drift.code == exitcodes.FAILED
        assert drift.json["drift"][0]["differences"]["total_deposited"] == {
            "projected": 2007,
            "log": 2000,
        }
        reconciled = await ctl("reconcile", "--check", "projection_matches_log", "--json")
        assert reconciled.code == exitcodes.FAILED
        rebuilt = await ctl.ok("projections", "rebuild")
        assert rebuilt["rebuilt_wallets"] == 2
        assert (await ctl("projections", "check")).code == exitcodes.OK
        assert (await ctl("reconcile")).code == exitcodes.OK

        # audit: filters, and one id followed into the ledger
        deposits = await eventually(
            lambda: ctl("audit", "--method", "deposit", "--json"),
            lambda r: r.code == 0 and len(r.json["records"]) == 1,
        )
        record = deposits.json["records"][0]
        assert record["method"].endswith("/Deposit") and record["status_code"] == "OK"
        assert record["request"]["wallet_id"] == "o-1"
        failed = await eventually(
            lambda: ctl("audit", "--failed", "--json"),
            lambda r: r.code == 0 and len(r.json["records"]) == 1,
        )
        assert failed.json["records"][0]["status_code"] == "FAILED_PRECONDITION"
        by_status = await ctl.ok("audit", "--status", "failed_precondition")
        assert [r["request"]["request_id"] for r in by_status["records"]] == ["o-rejected"]
        assert len((await ctl.ok("audit", "--method", "Withdraw", "--limit", "2"))["records"]) == 2
        future = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
        assert (await ctl.ok("audit", "--since", future))["records"] == []
        until = await eventually(
            lambda: ctl("audit", "--until", future, "--json"),
            lambda r: r.code == 0 and len(r.json["records"]) >= 8,
        )
        assert len(until.json["records"]) >= 8  # 2 creates, 1 deposit, 5 withdrawals
        detail = await ctl.ok("audit", "--audit-id", record["audit_id"])
        assert [e["type"] for e in detail["events"]] == ["funds_deposited"]
        readable = await ctl("audit", "--audit-id", record["audit_id"])
        assert "funds_deposited" in readable.out and "request:" in readable.out
        assert (await ctl("audit", "--audit-id", "nope")).code == exitcodes.FAILED

        # dlq on the in-process bus: a copy of a real event and a garbage message
        if not (await ctl.ok("dlq", "list"))["bus"].startswith("in-process"):
            return
        event = (
            await sql(
                database_url,
                "SELECT message_id, routing_key, message_type, payload FROM outbox "
                "WHERE routing_key = 'wallet.funds_deposited'",
            )
        )[0]
        now = datetime.now(UTC)
        for message_id, message_type, body in (
            (event["message_id"], event["message_type"], bytes(event["payload"])),
            ("garbage-1", event["message_type"], b"\xff\x00 not protobuf"),
        ):
            await sql(
                database_url,
                "INSERT INTO bus_messages (queue, message_id, routing_key, message_type, body, "
                "state, attempt, available_at_ms, last_error, created_at, dead_at) VALUES "
                "('analytics.wallet-events', :m, :rk, :t, :b, 'dead', 5, 0, 'planted', :n, :n)",
                m=message_id,
                rk=event["routing_key"],
                t=message_type,
                b=body,
                n=now.replace(tzinfo=None) if not database_url.startswith("postgres") else now,
            )
        listed = await ctl.ok("dlq", "list", "analytics")
        assert listed["counts"]["analytics.wallet-events"] == 2
        assert {d["message_id"] for d in listed["dead_letters"]} == {
            event["message_id"],
            "garbage-1",
        }
        shown = await ctl.ok("dlq", "show", "analytics", event["message_id"])
        assert shown["dead_letter"]["body"]["event"]["wallet_id"] == "o-1"
        assert shown["dead_letter"]["reason"] == "planted"
        garbage = await ctl.ok("dlq", "show", "analytics.wallet-events.dlq", "garbage-1")
        assert garbage["dead_letter"]["body"] is None and garbage["dead_letter"]["body_hex"]
        assert (await ctl("dlq", "show", "analytics", "missing")).code == exitcodes.FAILED
        assert (await ctl("dlq", "list", "nosuchqueue")).code == exitcodes.USAGE

        replayed = await ctl.ok("dlq", "replay", "analytics", event["message_id"])
        assert replayed["replayed"] == 1 and replayed["not_found"] == 0
        assert (await ctl("dlq", "purge", "analytics", "--all")).code == exitcodes.USAGE
        purged = await ctl.ok("dlq", "purge", "analytics", "garbage-1", "--yes")
        assert purged["purged"] == 1
        after = await eventually(
            lambda: ctl("dlq", "list", "--json"),
            lambda r: r.code == 0 and sum(r.json["counts"].values()) == 0,
        )
        assert sum(after.json["counts"].values()) == 0
        # the replayed duplicate was absorbed by the inbox: stats unchanged, still clean
        stats_after = await ctl.ok("stats", "o-1")
        assert stats_after["stats"]["total_deposited"] == 2000
        assert (await ctl("reconcile")).code == exitcodes.OK
