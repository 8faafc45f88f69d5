"""walletctl and currencies: text output in major units by the ISO 4217 exponent,
``--json`` in minor units, ``--major`` input converted exactly, codes refused."""

from __future__ import annotations

import re

from tests.integration.walletctl_harness import Ctl, running_stack
from walletctl import exitcodes


def _line(text: str, key: str) -> str:
    """The value of ``key`` in a ``key  value`` record."""
    match = re.search(rf"^{key}\s+(.*)$", text, re.M)
    assert match, (key, text)
    return match.group(1).strip()


async def test_amounts_print_by_exponent_and_json_stays_minor(database_url: str) -> None:
    async with running_stack(database_url) as running:
        ctl = Ctl(running, database_url)
        for wallet_id, currency in (("u1", "USD"), ("u2", "USD"), ("j1", "JPY"), ("b1", "BHD")):
            await ctl.ok("wallets", "create", "--currency", currency, "--wallet-id", wallet_id)

        deposited = await ctl("wallets", "deposit", "u1", "10000")
        assert deposited.code == 0
        assert deposited.out.startswith("deposited 100.00 USD (event #2 ")
        assert "balance now 100.00 USD" in deposited.out
        yen = await ctl("wallets", "deposit", "j1", "100")
        assert yen.out.startswith("deposited 100 JPY ") and "balance now 100 JPY" in yen.out
        dinar = await ctl("wallets", "deposit", "b1", "1000")
        assert dinar.out.startswith("deposited 1.000 BHD ")
        withdrew = await ctl("wallets", "withdraw", "b1", "1")
        assert "withdrew 0.001 BHD" in withdrew.out and "balance now 0.999 BHD" in withdrew.out

        # --json keeps integers of minor units
        as_json = await ctl.ok("wallets", "show", "b1")
        assert as_json["wallet"]["balance"] == 999 and as_json["wallet"]["currency"] == "BHD"
        assert _line((await ctl("wallets", "show", "u1")).out, "balance") == "100.00 USD"
        assert _line((await ctl("wallets", "show", "j1")).out, "balance") == "100 JPY"

        history = (await ctl("wallets", "history", "b1")).out
        assert re.search(r"funds_withdrawn\s+0\.001 BHD\s+0\.999 BHD", history), history
        assert re.search(r"funds_deposited\s+1\.000 BHD\s+1\.000 BHD", history), history

        transfer = await ctl("transfers", "create", "u1", "u2", "2550", "--request-id", "t-1")
        assert transfer.code == 0 and _line(transfer.out, "amount") == "25.50 USD"
        transfer_json = await ctl.ok("transfers", "show", _line(transfer.out, "transfer_id"))
        assert transfer_json["transfer"]["amount"] == 2550
        listed = (await ctl("transfers", "list")).out
        assert re.search(r"COMPLETED\s+u1\s+u2\s+25\.50 USD", listed), listed

        # stats: the projection has no currency; the text view asks WalletService
        stats = await ctl("stats", "u1")
        assert stats.code == 0 and _line(stats.out, "total_deposited") == "100.00 USD"
        assert (await ctl.ok("stats", "u1"))["stats"]["total_deposited"] == 10000


async def test_major_unit_input_is_exact(database_url: str) -> None:
    async with running_stack(database_url) as running:
        ctl = Ctl(running, database_url)
        for wallet_id, currency in (("u1", "USD"), ("u2", "USD"), ("j1", "JPY"), ("b1", "BHD")):
            await ctl.ok("wallets", "create", "--currency", currency, "--wallet-id", wallet_id)
        usd = await ctl.ok("wallets", "deposit", "u1", "12.34", "--major")
        assert usd["event"]["amount"] == 1234
        assert (await ctl.ok("wallets", "deposit", "j1", "1234", "--major"))["event"]["amount"] == (
            1234
        )
        assert (await ctl.ok("wallets", "deposit", "b1", "1.5", "--major"))["event"]["amount"] == (
            1500
        )
        moved = await ctl.ok("transfers", "create", "u1", "u2", "0.34", "--major")
        assert moved["transfer"]["amount"] == 34

        for argv in (
            ("wallets", "deposit", "u1", "1.001", "--major"),  # finer than a cent
            ("wallets", "deposit", "j1", "1.5", "--major"),  # yen have no decimals
            ("wallets", "withdraw", "b1", "0.0001", "--major"),
            ("wallets", "deposit", "u1", "0.00", "--major"),
            ("wallets", "deposit", "u1", "99999999999999999.99", "--major"),  # > int64 cents
            ("wallets", "deposit", "u1", "1.50"),  # a decimal without --major
            ("transfers", "create", "u1", "u2", "0.001", "--major"),
        ):
            refused = await ctl(*argv)
            assert refused.code == exitcodes.USAGE, (argv, refused)
        # nothing above moved money
        balances = {w: (await ctl.ok("wallets", "show", w))["wallet"]["balance"] for w in
                    ("u1", "u2", "j1", "b1")}  # fmt: skip
        assert balances == {"u1": 1200, "u2": 34, "j1": 1234, "b1": 1500}
        missing = await ctl("wallets", "deposit", "nobody", "1.00", "--major")
        assert missing.code == exitcodes.FAILED and "NOT_FOUND" in missing.err


async def test_walletctl_reports_refused_currencies(database_url: str) -> None:
    async with running_stack(database_url, currencies="USD,JPY") as running:
        ctl = Ctl(running, database_url)
        for currency, reason in (
            ("ZZZ", "UNKNOWN_CURRENCY"),
            ("EUR", "CURRENCY_NOT_ALLOWED"),
            ("usd", "INVALID_ARGUMENT"),  # lower case: the shape rule, no case folding
        ):
            refused = await ctl("wallets", "create", "--currency", currency, "--json")
            assert refused.code == exitcodes.USAGE, refused
            assert refused.json["error"]["reason"] == reason
            assert currency in refused.json["error"]["message"]
