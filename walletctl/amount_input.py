"""Amounts an operator types: minor units by default, major units with ``--major``.

``walletctl wallets deposit alice 1050`` means 1050 minor units (10.50 USD), as the
API does. ``--major`` takes ``10.50`` instead: walletctl reads the wallet's currency
(one GetWallet; a currency never changes) and converts exactly by its ISO 4217
exponent, refusing what does not fit (``1.001`` USD, ``1.5`` JPY) rather than
rounding. No float is involved at any step.
"""

from __future__ import annotations

import argparse
from typing import Any

from wallet.v1 import wallet_pb2
from wallet_platform.currencies import parse_major
from wallet_platform.validation import INT64_MAX
from walletctl.commands import amount
from walletctl.context import Context, UsageError


def amount_text(raw: str) -> str:
    """Parse-time shape check: ASCII digits with at most one decimal point."""
    whole, _, fraction = raw.partition(".")
    if not raw.isascii() or not (whole + fraction).isdigit():
        raise argparse.ArgumentTypeError(
            f"amount must be a positive integer of minor units (or a decimal with --major), "
            f"got {raw!r}"
        )
    return raw


def add_amount_arguments(parser: argparse.ArgumentParser, whose: str) -> None:
    parser.add_argument(
        "amount",
        type=amount_text,
        help="minor units (cents), a positive integer; with --major, major units (12.34)",
    )
    parser.add_argument(
        "--major",
        action="store_true",
        help=f"AMOUNT is in major units of {whose} currency, converted exactly "
        "by its ISO 4217 exponent (USD 12.34 -> 1234, JPY 1234 -> 1234)",
    )


def minor_units(ctx: Context, args: Any, wallet_id: str) -> int:
    """The amount to send, in minor units (UsageError for anything inexact)."""
    raw = str(args.amount)
    if not args.major:
        if "." in raw:
            raise UsageError(
                f"amount is in minor units (cents), got {raw!r}; add --major for major units"
            )
        try:
            return amount(raw)
        except argparse.ArgumentTypeError as error:
            raise UsageError(str(error)) from None
    currency = ctx.call(
        "wallet", "GetWallet", wallet_pb2.GetWalletRequest(wallet_id=wallet_id)
    ).wallet.currency
    try:
        value = parse_major(raw, currency)
    except ValueError as error:
        raise UsageError(str(error)) from None
    if value <= 0:
        raise UsageError(f"amount must be > 0, got {raw} {currency}")
    if value > INT64_MAX:
        raise UsageError(f"amount {raw} {currency} exceeds the int64 range of minor units")
    return value
