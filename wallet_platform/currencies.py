"""ISO 4217 currencies and their minor-unit exponents; exact minor <-> major conversion.

The table is ISO 4217 list one (the active codes) as the ``iso4217`` package ships it:
the maintenance agency's own XML file, republished on PyPI within weeks of each
amendment, public domain, 12 kB and no dependencies (docs/wallet-service.md says why
this package and how to refresh it). Historic codes (list three) are not in it.

A code's exponent is the number of decimal places of its minor unit: USD 2 (cents),
JPY 0, BHD 3, CLF 4. Some codes have none ("N.A." in the list): precious metals
(XAU, XAG, XPD, XPT), the SDR (XDR), bond-market and accounting units (XBA-XBD,
XSU, XUA), the test code XTS and "no currency" XXX. They are in the table with
``exponent = None``: known to ISO, but no wallet can hold them, because an amount in
minor units means nothing without an exponent.

Money is an ``int`` of minor units everywhere; the conversions here exist for people
(walletctl's output and ``--major`` input) and never touch a float.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from xml.etree.ElementTree import Element

import iso4217


@dataclass(frozen=True)
class Currency:
    """One entry of ISO 4217 list one."""

    code: str
    name: str
    number: int
    exponent: int | None  # None: ISO gives no minor unit (XAU, XDR, XXX...)
    is_fund: bool  # a fund code (BOV, CLF, USN...), not a circulating currency

    @property
    def holdable(self) -> bool:
        """Whether a wallet can be opened in it at all (it has a minor unit)."""
        return self.exponent is not None


def _text(node: Element, tag: str) -> str:
    found = node.find(tag)
    return (found.text or "").strip() if found is not None else ""


@functools.cache
def iso_table() -> Mapping[str, Currency]:
    """Every code of ISO 4217 list one, by code (entries without a code are skipped)."""
    table: dict[str, Currency] = {}
    for entry in iso4217.raw_xml.findall("CcyTbl/CcyNtry"):
        code = _text(entry, "Ccy")
        if not code or code in table:  # one entry per country: the first one suffices
            continue
        name_node = entry.find("CcyNm")
        minor = _text(entry, "CcyMnrUnts")
        table[code] = Currency(
            code=code,
            name=_text(entry, "CcyNm"),
            number=int(_text(entry, "CcyNbr") or 0),
            exponent=int(minor) if minor.isdigit() else None,
            is_fund=name_node is not None and name_node.get("IsFund", "").lower() == "true",
        )
    return table


def iso_list_published() -> date:
    """The publication date of the ISO list this build carries."""
    return iso4217.__published__


def find(code: str) -> Currency | None:
    """The ISO entry of ``code`` (exact, upper-case), or None for an unknown code."""
    return iso_table().get(code)


def exponent(code: str) -> int | None:
    """Decimal places of ``code``'s minor unit; None when unknown or not applicable."""
    currency = find(code)
    return currency.exponent if currency is not None else None


def format_minor(amount: int, code: str) -> str:
    """``10050, "USD"`` -> ``"100.50 USD"``; ``100, "JPY"`` -> ``"100 JPY"``.

    A code without a known exponent (a wallet opened before its code was checked, or
    an X-code) prints the integer with ``(minor units)``, never a guess.
    """
    places = exponent(code)
    if places is None:
        return f"{amount} {code} (minor units)"
    sign = "-" if amount < 0 else ""
    digits = str(abs(amount))
    if places == 0:
        return f"{sign}{digits} {code}"
    digits = digits.rjust(places + 1, "0")
    return f"{sign}{digits[:-places]}.{digits[-places:]} {code}"


def parse_major(text: str, code: str) -> int:
    """``"1.50", "USD"`` -> ``150``, exactly; ValueError for anything inexact.

    Accepts plain decimal notation only (digits, at most one point, no sign, no
    exponent, no separators), with at most as many decimals as the currency's minor
    unit has: ``1.001`` USD and ``1.5`` JPY are refused, not rounded.
    """
    places = exponent(code)
    if places is None:
        raise ValueError(f"{code} has no ISO 4217 minor unit; give the amount in minor units")
    raw = text.strip()
    whole, point, fraction = raw.partition(".")
    if not (whole or fraction) or not (whole + fraction).isdigit() or not raw.isascii():
        raise ValueError(f"not a plain decimal amount: {text!r} (e.g. 12.34)")
    if point and len(fraction) > places:
        decimals = "no decimals" if places == 0 else f"at most {places} decimal(s)"
        raise ValueError(f"{code} amounts have {decimals}: {text!r} is not exact")
    # Only ASCII digits and one point got here, with no more decimals than the minor
    # unit has: the shifted Decimal is a whole number, exactly.
    return int(Decimal(raw).scaleb(places))
