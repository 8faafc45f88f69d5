"""``walletctl reconcile``: clean after real traffic, and each planted drift is caught.

Drift is planted the way it happens in real life: SQL run behind the service's back
(a balance edited, an outbox row lost, an outbox row stuck, a settled hold reopened).
A rogue saga step (a refund sent for a transfer that already completed) is refused by
the ledger's hold and leaves nothing to find. Each drift must turn the exit code to 1
and be named in the report.
"""

from __future__ import annotations

import asyncio

import grpc
import pytest
from sqlalchemy import create_engine, text

from tests.integration.walletctl_harness import Ctl, running_stack, walletctl
from wallet.v1 import wallet_pb2, wallet_pb2_grpc
from wallet_platform.server.status import error_reason
from wallet_platform.storage.database import sync_url
from walletctl import exitcodes
from walletctl.reconcile import ReconcileOptions, reconcile


async def execute(database_url: str, sql: str, **params: object) -> int:
    """Plain SQL on a worker thread (the stack's tasks must keep running meanwhile);
    returns the number of rows it changed."""

    def run() -> int:
        engine = create_engine(sync_url(database_url))
        try:
            with engine.begin() as conn:
                return int(conn.execute(text(sql), params).rowcount or 0)
        finally:
            engine.dispose()

    return await asyncio.to_thread(run)


def drifted(report: dict) -> dict[str, dict]:
    return {c["name"]: c for c in report["checks"] if not c["ok"] and c["severity"] == "error"}


async def test_reconcile_clean_then_catches_planted_drift(database_url: str) -> None:
    async with running_stack(database_url) as running:
        ctl = Ctl(running, database_url)
        for wallet_id in ("r-a", "r-b", "r-c"):
            await ctl.ok("wallets", "create", "--currency", "USD", "--wallet-id", wallet_id)
        await ctl.ok("wallets", "create", "--currency", "EUR", "--wallet-id", "r-eur")
        await ctl.ok("wallets", "deposit", "r-a", "1000")
        await ctl.ok("wallets", "deposit", "r-eur", "70")
        await ctl.ok("wallets", "withdraw", "r-a", "100")
        completed = await ctl.ok("transfers", "create", "r-a", "r-b", "250")
        assert completed["transfer"]["state"] == "COMPLETED"
        await ctl.ok("wallets", "freeze", "r-c")
        compensated = await ctl("transfers", "create", "r-a", "r-c", "40", "--json")
        assert compensated.json["transfer"]["state"] == "COMPENSATED"
        failed = await ctl("transfers", "create", "r-b", "r-a", "9999", "--json")
        assert failed.json["transfer"]["state"] == "FAILED"

        # clean, as text and as JSON; the library gives the same verdict
        clean = await ctl("reconcile")
        assert clean.code == exitcodes.OK, clean.out
        assert "CLEAN" in clean.out and "DRIFT" not in clean.out
        report = (await ctl("reconcile", "--json")).json
        assert report["ok"] and report["errors"] == 0
        conservation = next(c for c in report["checks"] if c["name"] == "conservation")
        assert conservation["facts"]["USD"] == {
            "balances": 900, "deposits": 1000, "withdrawals": 100, "in_flight": 0,
        }  # fmt: skip
        assert conservation["facts"]["EUR"]["balances"] == 70
        assert (await asyncio.to_thread(reconcile, database_url)).ok

        # every published event is applied or queued for both consumers (in-process bus)
        delivered = ["reconcile", "--check", "events_delivered", "--delivery-max-age", "0"]
        assert (await ctl(*delivered)).code == exitcodes.OK

        # 0. an event the fraud consumer never got: neither applied nor queued
        lost = await ctl("wallets", "deposit", "r-eur", "1", "--json")
        lost_id = lost.json["event"]["event_id"]
        deleted = 0
        for _ in range(200):  # once the fraud worker has applied and acked it, forget it
            deleted = await execute(
                database_url,
                "DELETE FROM inbox WHERE consumer = 'fraud' AND message_id = :m "
                "AND NOT EXISTS (SELECT 1 FROM bus_messages "
                "WHERE queue = 'fraud.wallet-events' AND message_id = :m)",
                m=lost_id,
            )
            if deleted:
                break
            await asyncio.sleep(0.05)
        assert deleted == 1
        result = await ctl(*delivered, "--json")
        assert result.code == exitcodes.FAILED
        examples = drifted(result.json)["events_delivered"]["examples"]
        assert [(e["consumer"], e["event_id"]) for e in examples] == [("fraud", lost_id)]
        await execute(
            database_url,
            "INSERT INTO inbox (consumer, message_id, processed_at) VALUES ('fraud', :m, :t)",
            m=lost_id,
            t="2026-01-01 00:00:00",
        )

        # 1. a balance changed behind the service's back
        await execute(
            database_url, "UPDATE wallets SET balance = balance + 5 WHERE wallet_id = 'r-b'"
        )
        result = await ctl("reconcile", "--json")
        assert result.code == exitcodes.FAILED
        found = drifted(result.json)
        assert {"balance_equals_event_sum", "balance_equals_last_event", "conservation"} <= set(
            found
        )
        assert found["balance_equals_event_sum"]["examples"] == [
            {"wallet_id": "r-b", "balance": 255, "event_sum": 250, "difference": 5}
        ]
        assert found["conservation"]["examples"][0]["difference"] == 5
        text_report = await ctl("reconcile")
        assert text_report.code == exitcodes.FAILED
        assert "DRIFT FOUND" in text_report.out and "r-b" in text_report.out
        await execute(
            database_url, "UPDATE wallets SET balance = balance - 5 WHERE wallet_id = 'r-b'"
        )
        assert (await ctl("reconcile")).code == exitcodes.OK

        # 2. an event without its outbox row
        await execute(
            database_url,
            "DELETE FROM outbox WHERE message_id = (SELECT event_id FROM wallet_events "
            "WHERE wallet_id = 'r-eur' AND sequence = 2)",
        )
        result = await ctl("reconcile", "--json")
        assert result.code == exitcodes.FAILED
        assert set(drifted(result.json)) == {"outbox_row_per_event"}
        assert drifted(result.json)["outbox_row_per_event"]["examples"][0]["wallet_id"] == "r-eur"
        skipped = await ctl("reconcile", "--skip", "outbox_row_per_event")
        assert skipped.code == exitcodes.OK

        # 3. a rogue refund of a COMPLETED transfer is refused by its POSTED hold ...
        transfer_id = completed["transfer"]["transfer_id"]
        async with grpc.aio.insecure_channel(running.target) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await wallet_pb2_grpc.WalletServiceStub(channel).RefundForTransfer(
                    wallet_pb2.RefundForTransferRequest(
                        wallet_id="r-a",
                        amount=250,
                        transfer_id=transfer_id,
                        request_id=f"{transfer_id}:refund",
                        currency="USD",
                    )
                )
        assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert error_reason(refused.value) == "HOLD_ALREADY_POSTED"
        options = ReconcileOptions(skip=("outbox_row_per_event", "outbox_drained"))
        assert (await asyncio.to_thread(reconcile, database_url, options)).ok
        # ... and a hold reopened behind the ledger's back is money counted twice
        reopened = f"UPDATE transfer_holds SET state = '{{}}' WHERE transfer_id = '{transfer_id}'"
        assert await execute(database_url, reopened.format("OPEN")) == 1
        report_obj = await asyncio.to_thread(reconcile, database_url, options)
        assert {r.name for r in report_obj.errors} == {
            "conservation",
            "holds_match_events",
            "holds_match_transfers",
        }
        assert report_obj.result("conservation").examples[0]["difference"] == 250
        held = report_obj.result("holds_match_events").examples
        assert held == [
            {
                "transfer_id": transfer_id,
                "state": "OPEN",
                "amount": 250,
                "debits": 1,
                "credits": 1,
                "refunds": 0,
            }
        ]
        saga = report_obj.result("holds_match_transfers").examples[0]
        assert (saga["transfer_state"], saga["hold_state"]) == ("COMPLETED", "OPEN")
        assert "DRIFT FOUND in 3 check(s)" in report_obj.render_text()
        await execute(database_url, reopened.format("POSTED"))
        assert (await asyncio.to_thread(reconcile, database_url, options)).ok

    # 4. with the stack (and its relay) stopped: an outbox row left unpublished too long
    await execute(
        database_url,
        "UPDATE outbox SET status = 'pending', created_at = :old WHERE id = "
        "(SELECT MIN(id) FROM outbox)",
        old="2000-01-01 00:00:00",
    )
    only = await walletctl(
        "reconcile", "--check", "outbox_drained", "--json", database_url=database_url
    )
    assert only.code == exitcodes.FAILED
    assert [c["name"] for c in only.json["checks"]] == ["outbox_drained"]
