"""``walletctl wallets ...`` against a running stack, on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import datetime, timedelta

from tests.integration.walletctl_harness import Ctl, running_stack
from walletctl import exitcodes


async def test_wallet_lifecycle_through_the_cli(database_url: str) -> None:
    async with running_stack(database_url) as running:
        ctl = Ctl(running, database_url)

        # create: explicit id, replay with the same request id, reuse with other params
        created = await ctl.ok("wallets", "create", "--currency", "USD", "--wallet-id", "alice",
                               "--request-id", "c-alice")  # fmt: skip
        assert created["wallet"] == created["wallet"] | {
            "wallet_id": "alice", "balance": 0, "status": "ACTIVE", "version": 1,
        }  # fmt: skip
        again = await ctl.ok("wallets", "create", "--currency", "USD", "--wallet-id", "alice",
                             "--request-id", "c-alice")  # fmt: skip
        assert again["replayed"] is True
        clash = await ctl("wallets", "create", "--currency", "EUR", "--request-id", "c-alice")
        assert clash.code == exitcodes.FAILED and "ALREADY_EXISTS" in clash.err

        # a generated request id is announced for retries, and a server UUID is made
        generated = await ctl("wallets", "create", "--currency", "USD")
        assert generated.code == 0
        assert "retry with --request-id walletctl-" in generated.err
        assert "wallet_id" in generated.out and "ACTIVE" in generated.out

        # money in and out; a retried withdrawal is replayed, not repeated
        deposit = await ctl.ok("wallets", "deposit", "alice", "1000")
        assert deposit["wallet"]["balance"] == 1000
        assert deposit["event"]["type"] == "funds_deposited"
        assert deposit["request_id"].startswith("walletctl-")
        first = await ctl.ok("wallets", "withdraw", "alice", "300", "--request-id", "w-1")
        second = await ctl.ok("wallets", "withdraw", "alice", "300", "--request-id", "w-1")
        assert first["wallet"]["balance"] == second["wallet"]["balance"] == 700
        assert second["replayed"] is True and first["event"] == second["event"]

        too_much = await ctl("wallets", "withdraw", "alice", "701", "--json")
        assert too_much.code == exitcodes.FAILED
        assert too_much.json["error"]["reason"] == "INSUFFICIENT_FUNDS"
        assert (await ctl("wallets", "deposit", "alice", "0")).code == exitcodes.USAGE
        bad_id = await ctl("wallets", "show", "no such wallet!")
        assert bad_id.code == exitcodes.USAGE and "INVALID_ARGUMENT" in bad_id.err
        missing = await ctl("wallets", "show", "nobody")
        assert missing.code == exitcodes.FAILED and "NOT_FOUND" in missing.err

        # show and history (newest first, paged)
        shown = await ctl("wallets", "show", "alice")
        assert shown.code == 0 and "balance" in shown.out and "7.00 USD" in shown.out
        history = await ctl.ok("wallets", "history", "alice", "--limit", "2")
        assert [e["sequence"] for e in history["events"]] == [3, 2] and history["more"]
        full = await ctl.ok("wallets", "history", "alice", "--all")
        assert [e["type"] for e in full["events"]] == [
            "funds_withdrawn", "funds_deposited", "wallet_created",
        ]  # fmt: skip
        assert [e["balance_after"] for e in full["events"]] == [700, 1000, 0]
        table = await ctl("wallets", "history", "alice")
        assert "BALANCE AFTER" in table.out and "funds_deposited" in table.out

        # time travel by sequence and by time
        at_two = await ctl.ok("wallets", "balance-at", "alice", "--sequence", "2")
        assert at_two["wallet"]["balance"] == 1000 and at_two["wallet"]["version"] == 2
        deposited_at = datetime.fromisoformat(full["events"][1]["occurred_at"])
        between = (deposited_at + timedelta(microseconds=1)).isoformat()
        at_time = await ctl.ok("wallets", "balance-at", "alice", "--time", between)
        assert at_time["wallet"]["balance"] == 1000
        now = await ctl.ok("wallets", "balance-at", "alice", "--time", "2999-01-01T00:00:00Z")
        assert now["wallet"]["balance"] == 700

        # freeze blocks money movement until unfreeze
        frozen = await ctl.ok("wallets", "freeze", "alice")
        assert frozen["wallet"]["status"] == "FROZEN"
        blocked = await ctl("wallets", "deposit", "alice", "5", "--json")
        assert blocked.code == exitcodes.FAILED
        assert blocked.json["error"]["reason"] == "WALLET_FROZEN"
        assert (await ctl.ok("wallets", "unfreeze", "alice"))["wallet"]["status"] == "ACTIVE"
        assert (await ctl.ok("wallets", "deposit", "alice", "5"))["wallet"]["balance"] == 705
