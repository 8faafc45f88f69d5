"""``walletctl bulk transfer --csv FILE`` against a running stack."""

from __future__ import annotations

from pathlib import Path

from tests.integration.walletctl_harness import Ctl, running_stack
from walletctl import exitcodes


async def _wallets(ctl: Ctl, *ids: str, fund: int = 0) -> None:
    for wallet_id in ids:
        await ctl.ok("wallets", "create", "--currency", "USD", "--wallet-id", wallet_id)
        if fund:
            await ctl.ok("wallets", "deposit", wallet_id, str(fund))


async def _balance(ctl: Ctl, wallet_id: str) -> int:
    shown = await ctl.ok("wallets", "show", wallet_id)
    return int(shown["wallet"]["balance"])


async def test_a_file_of_transfers_runs_once_however_often_it_is_sent(
    database_url: str, tmp_path: Path
) -> None:
    rows = ["from_wallet_id,to_wallet_id,amount,request_id"]
    rows += [f"b-alice,b-bob,{n}," for n in range(1, 31)]  # derived keys
    rows.append("b-alice,b-bob,5,my-own-key")
    rows.append("b-alice,b-nobody,5,")  # refused: unknown wallet
    rows.append("b-alice,b-bob,999999,")  # accepted, FAILED (insufficient funds)
    sheet = tmp_path / "payments.csv"
    sheet.write_text("\n".join(rows) + "\n")
    async with running_stack(database_url) as running:
        ctl = Ctl(running, database_url)
        await _wallets(ctl, "b-alice", fund=10_000)
        await _wallets(ctl, "b-bob")

        first = await ctl("bulk", "transfer", "--csv", str(sheet), "--chunk", "7",
                          "--wait", "30", "--json")  # fmt: skip
        assert first.code == exitcodes.FAILED, first
        assert first.json["summary"] == {
            "COMPLETED": 31,
            "FAILED": 1,
            "refused WALLET_NOT_FOUND": 1,
        }
        assert "sent 7/33 transfers" in first.err and "sent 33/33 transfers" in first.err
        results = first.json["results"]
        assert [r["line"] for r in results] == list(range(2, 35))
        assert results[30]["request_id"] == "my-own-key"
        assert results[31]["error"]["reason"] == "WALLET_NOT_FOUND"
        moved = sum(range(1, 31)) + 5
        assert await _balance(ctl, "b-bob") == moved

        again = await ctl("bulk", "transfer", "--csv", str(sheet), "--json")
        assert again.json["summary"] == {
            "COMPLETED (replayed)": 31,
            "FAILED (replayed)": 1,
            "refused WALLET_NOT_FOUND": 1,
        }
        keys = [r["request_id"] for r in again.json["results"]]
        assert keys == [r["request_id"] for r in results]
        assert await _balance(ctl, "b-bob") == moved  # nothing moved twice

        text = await ctl("bulk", "transfer", "--csv", str(sheet))
        assert "33 transfers:" in text.out and "line 33: WALLET_NOT_FOUND" in text.out

        bad = tmp_path / "bad.csv"
        bad.write_text("from_wallet_id,to_wallet_id,amount\nb-alice,b-bob,12\nb-alice,b-bob,x\n")
        refused = await ctl("bulk", "transfer", "--csv", str(bad))
        assert refused.code == exitcodes.USAGE and "bad.csv:3" in refused.err
        assert await _balance(ctl, "b-bob") == moved  # a bad file sends nothing
