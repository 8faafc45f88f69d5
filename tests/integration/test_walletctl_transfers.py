"""``walletctl transfers ...`` and ``walletctl sagas watch`` against a running stack."""

from __future__ import annotations

import asyncio
import io
import json

from tests.integration.walletctl_harness import Ctl, running_stack
from walletctl import exitcodes
from walletctl.cli import main


async def _wallets(ctl: Ctl, *ids: str, fund: int = 0) -> None:
    for wallet_id in ids:
        await ctl.ok("wallets", "create", "--currency", "USD", "--wallet-id", wallet_id)
        if fund:
            await ctl.ok("wallets", "deposit", wallet_id, str(fund))


async def test_transfers_and_the_saga_dashboard(database_url: str) -> None:
    async with running_stack(database_url) as running:
        ctl = Ctl(running, database_url)
        await _wallets(ctl, "t-alice", "t-bob", fund=1000)
        await _wallets(ctl, "t-frozen")
        await ctl.ok("wallets", "freeze", "t-frozen")

        done = await ctl.ok("transfers", "create", "t-alice", "t-bob", "300", "--request-id", "x1")
        transfer = done["transfer"]
        assert transfer["state"] == "COMPLETED"
        assert [(s["name"], s["outcome"]) for s in transfer["steps"]] == [
            ("debit", "SUCCEEDED"),
            ("credit", "SUCCEEDED"),
        ]
        replay = await ctl.ok("transfers", "create", "t-alice", "t-bob", "300",
                              "--request-id", "x1")  # fmt: skip
        assert replay["replayed"] and replay["transfer"]["transfer_id"] == transfer["transfer_id"]

        # business outcomes exit 1: the money did not move
        failed = await ctl("transfers", "create", "t-alice", "t-bob", "99999", "--json")
        assert failed.code == exitcodes.FAILED
        assert failed.json["transfer"]["state"] == "FAILED"
        assert failed.json["transfer"]["failure_code"] == "FAILED_PRECONDITION"
        compensated = await ctl("transfers", "create", "t-bob", "t-frozen", "50", "--json")
        assert compensated.code == exitcodes.FAILED
        assert compensated.json["transfer"]["state"] == "COMPENSATED"
        self_transfer = await ctl("transfers", "create", "t-bob", "t-bob", "5")
        assert self_transfer.code == exitcodes.USAGE

        shown = await ctl("transfers", "show", transfer["transfer_id"])
        assert shown.code == 0 and "COMPLETED" in shown.out and "debit" in shown.out
        missing = await ctl("transfers", "show", "no-such-transfer")
        assert missing.code == exitcodes.FAILED and "NOT_FOUND" in missing.err

        listed = await ctl.ok("transfers", "list", "--wallet", "t-bob")
        assert len(listed["transfers"]) == 3
        only_failed = await ctl.ok("transfers", "list", "--state", "failed")
        assert [t["state"] for t in only_failed["transfers"]] == ["FAILED"]
        page = await ctl.ok("transfers", "list", "--limit", "1")
        assert len(page["transfers"]) == 1 and page["more"]
        table = await ctl("transfers", "list")
        assert table.code == 0 and "STATE" in table.out and "COMPENSATED" in table.out

        summary = await ctl.ok("transfers", "summary")
        assert summary["counts"] == {"COMPLETED": 1, "FAILED": 1, "COMPENSATED": 1}
        assert summary["unfinished"] == 0
        text = await ctl("transfers", "summary")
        assert "COMPLETED" in text.out and "unfinished: 0" in text.out

        once = await ctl.ok("sagas", "watch", "--once")
        assert once["kind"] == "summary" and once["counts"]["COMPLETED"] == 1

        # the live dashboard as JSON lines, watching one wallet until it sees a change;
        # transfers go on until the stream (attached in the background) reports one
        watch = asyncio.create_task(
            ctl("sagas", "watch", "--wallet", "t-frozen", "--max-changes", "2",
                "--duration", "60", "--interval", "0.2", "--json")
        )  # fmt: skip
        made = set()
        for _ in range(100):
            bounced = await ctl("transfers", "create", "t-bob", "t-frozen", "5", "--json")
            made.add(bounced.json["transfer"]["transfer_id"])
            await asyncio.sleep(0.05)
            if watch.done():
                break
        watched = await watch
        assert watched.code == 0, watched
        lines = watched.lines()
        changes = [line["transfer"] for line in lines if line["kind"] == "change"]
        assert len(changes) == 2 and {c["transfer_id"] for c in changes} <= made
        assert {c["state"] for c in changes} <= {"PENDING", "DEBITED", "COMPENSATING",
                                                 "COMPENSATED"}  # fmt: skip
        assert all(c["to_wallet_id"] == "t-frozen" for c in changes)
        summaries = [line for line in lines if line["kind"] == "summary"]
        assert summaries[-1]["counts"]["COMPLETED"] == 1
        assert summaries[-1]["stream"] == "connected"

        # the same dashboard as text (not a terminal: change lines and a summary)
        plain = await ctl("sagas", "watch", "--duration", "0.3", "--wallet", "t-bob")
        assert plain.code == 0 and "unfinished: 0" in plain.out and "stream:" in plain.out


async def test_saga_dashboard_survives_a_server_restart(tmp_path) -> None:
    """The watch stream reconnects by itself: changes after a restart still arrive."""
    database_url = f"sqlite:///{tmp_path / 'wallet.db'}"
    out = io.StringIO()
    async with running_stack(database_url) as first:
        target = first.target
        ctl = Ctl(first, database_url)
        await _wallets(ctl, "rs-a", "rs-b", fund=100)
        argv = ["--target", target, "sagas", "watch", "--duration", "60", "--max-changes", "1"]
        watch = asyncio.create_task(
            asyncio.to_thread(main, [*argv, "--json"], stdout=out, stderr=io.StringIO(),
                              environ={})
        )  # fmt: skip
        await asyncio.sleep(0.3)
    await asyncio.sleep(0.3)  # the server is gone for a moment; the dashboard keeps trying
    async with running_stack(database_url, listen=target) as second:
        ctl = Ctl(second, database_url)
        # Transfers until the re-attached stream shows one and the watch stops (it
        # streams changes from the moment it attaches; earlier ones are only counted).
        made = set()
        for _ in range(50):
            done = await ctl.ok("transfers", "create", "rs-a", "rs-b", "1")
            made.add(done["transfer"]["transfer_id"])
            await asyncio.sleep(0.1)
            if watch.done():
                break
        assert await watch == 0
    lines = [json.loads(line) for line in out.getvalue().splitlines() if line.strip()]
    changes = [line["transfer"] for line in lines if line["kind"] == "change"]
    assert len(changes) == 1 and changes[0]["transfer_id"] in made
    assert lines[-1]["kind"] == "summary" and lines[-1]["stream"] == "connected"
