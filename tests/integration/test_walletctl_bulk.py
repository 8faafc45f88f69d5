"""``walletctl bulk deposit|withdraw --csv FILE`` against a running stack, both backends."""

from __future__ import annotations

from pathlib import Path

from tests.integration.walletctl_harness import Ctl, running_stack, walletctl
from walletctl import exitcodes
from walletctl.commands.bulk import derived_key


async def _wallets(ctl: Ctl, *specs: tuple[str, str]) -> None:
    for wallet_id, currency in specs:
        await ctl.ok("wallets", "create", "--currency", currency, "--wallet-id", wallet_id)


async def _balance(ctl: Ctl, wallet_id: str) -> int:
    return int((await ctl.ok("wallets", "show", wallet_id))["wallet"]["balance"])


async def test_a_file_applies_then_replays_and_reports_refusals(database_url: str, tmp_path: Path):
    async with running_stack(database_url) as running:
        ctl = Ctl(running, database_url)
        await _wallets(ctl, ("alice", "USD"), ("bob", "USD"), ("yen", "JPY"))
        rows = ["wallet_id,amount,currency,request_id"]
        rows += [f"alice,{i + 1},USD," for i in range(25)]  # derived keys
        rows += [
            "bob,500,,bob-1",
            "nobody,5,,",
            "yen,100,USD,",  # a file written for dollars: refused before sending
            "bob,7,usd,",
        ]
        path = tmp_path / "deposits.csv"
        path.write_text("\n".join(rows) + "\n")

        first = await ctl("bulk", "deposit", "--csv", str(path), "--chunk-size", "10", "--json")
        assert first.code == exitcodes.FAILED, first
        summary = first.json
        assert (summary["rows"], summary["applied"], summary["replayed"]) == (29, 27, 0)
        assert summary["refused_by_reason"] == {"CURRENCY_MISMATCH": 1, "WALLET_NOT_FOUND": 1}
        lines = {r["reason"]: r["line"] for r in summary["refusals"]}
        assert lines == {"WALLET_NOT_FOUND": 28, "CURRENCY_MISMATCH": 29}
        assert first.err.count("rows sent") == 3  # one progress line per call
        assert await _balance(ctl, "alice") == sum(range(1, 26))
        assert await _balance(ctl, "bob") == 507 and await _balance(ctl, "yen") == 0

        # The same file again: every row replays; the keys are the file's and line's.
        again = await ctl("bulk", "deposit", "--csv", str(path), "--json")
        assert again.code == exitcodes.FAILED
        assert (again.json["applied"], again.json["replayed"]) == (0, 27)
        assert await _balance(ctl, "alice") == sum(range(1, 26))
        deposited = await ctl.ok("wallets", "deposit", "alice", "1", "--request-id",
                                 derived_key(str(path.resolve()), 2))  # fmt: skip
        assert deposited["replayed"] is True

        # Withdrawals, text output: applied, and refused by reason with their lines.
        out = tmp_path / "out.csv"
        out.write_text("wallet_id,amount\nbob,500\nbob,500\n")
        withdrawn = await ctl("bulk", "withdraw", "--csv", str(out))
        assert withdrawn.code == exitcodes.FAILED
        assert "2 rows: 1 applied, 0 replayed, 1 refused" in withdrawn.out
        assert "INSUFFICIENT_FUNDS: 1 (lines " in withdrawn.out
        assert await _balance(ctl, "bob") == 7

        clean = tmp_path / "clean.csv"
        clean.write_text("amount,wallet_id\n3,bob\n")
        assert (await ctl("bulk", "deposit", "--csv", str(clean))).code == exitcodes.OK


async def test_a_bad_file_sends_nothing(database_url: str, tmp_path: Path):
    async with running_stack(database_url) as running:
        ctl = Ctl(running, database_url)
        await _wallets(ctl, ("alice", "USD"))
        for content, expected in (
            ("wallet,amount\nalice,1\n", "missing wallet_id"),
            ("wallet_id,amount\nalice,1\nalice,1.5\nalice,-2\n,3\n", "3 bad rows"),
            ("wallet_id,amount,request_id\nalice,1,k\nalice,2,k\n", "repeats line 2"),
            ("wallet_id,amount\n", "has no rows"),
        ):
            path = tmp_path / "bad.csv"
            path.write_text(content)
            result = await ctl("bulk", "deposit", "--csv", str(path))
            assert result.code == exitcodes.USAGE, (content, result)
            assert expected in result.err, (content, result.err)
        missing = await ctl("bulk", "deposit", "--csv", str(tmp_path / "none.csv"))
        assert missing.code == exitcodes.USAGE and "cannot read" in missing.err
        assert await _balance(ctl, "alice") == 0


async def test_rows_without_an_answer_exit_3(tmp_path: Path, unused_tcp_port: int):
    path = tmp_path / "deposits.csv"
    path.write_text("wallet_id,amount\nalice,1\nbob,2\n")
    result = await walletctl(
        "bulk", "deposit", "--csv", str(path), "--json", target=f"127.0.0.1:{unused_tcp_port}"
    )
    assert result.code == exitcodes.UNAVAILABLE, result
    assert "run the same command again" in result.err
    assert result.json["refused_by_reason"] == {"UNAVAILABLE": 2}
    assert [r["sent"] for r in result.json["refusals"]] == [True, True]
