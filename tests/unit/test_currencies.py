"""The ISO 4217 table, exact minor <-> major conversion and the new-wallet policy."""

from __future__ import annotations

from datetime import date

import pytest

from wallet_platform import currencies
from wallet_platform.config import load_settings
from wallet_platform.currency_policy import (
    CurrencyNotAllowedError,
    CurrencyPolicy,
    UnknownCurrencyError,
    parse_allow_list,
)
from wallet_platform.errors import InvalidArgumentError


@pytest.mark.parametrize(
    ("code", "exponent", "is_fund"),
    [
        ("USD", 2, False),
        ("EUR", 2, False),
        ("JPY", 0, False),
        ("KRW", 0, False),
        ("BHD", 3, False),
        ("KWD", 3, False),
        ("UYW", 4, False),
        ("CLF", 4, True),
        ("USN", 2, True),
        ("XOF", 0, False),
        ("XAU", None, False),
        ("XDR", None, False),
        ("XTS", None, False),
        ("XXX", None, False),
    ],
)
def test_the_table_carries_iso_list_one_exponents(code, exponent, is_fund) -> None:
    entry = currencies.find(code)
    assert entry is not None and entry.code == code
    assert (entry.exponent, entry.is_fund) == (exponent, is_fund)
    assert entry.holdable == (exponent is not None)


def test_the_table_is_a_recent_iso_list_without_historic_codes() -> None:
    table = currencies.iso_table()
    assert currencies.iso_list_published() >= date(2025, 1, 1)
    assert len(table) > 150 and all(len(code) == 3 and code.isupper() for code in table)
    # Withdrawn codes (ISO list three) are not active: DEM, FRF, HRK (Croatia, 2023).
    for historic in ("DEM", "FRF", "HRK", "ZWL"):
        assert currencies.find(historic) is None, historic
    assert currencies.find("usd") is None  # lookups are exact: validation decides case


@pytest.mark.parametrize(
    ("amount", "code", "text"),
    [
        (10000, "USD", "100.00 USD"),
        (5, "USD", "0.05 USD"),
        (0, "USD", "0.00 USD"),
        (100, "JPY", "100 JPY"),
        (0, "JPY", "0 JPY"),
        (1000, "BHD", "1.000 BHD"),
        (1, "BHD", "0.001 BHD"),
        (12345, "CLF", "1.2345 CLF"),
        (-250, "USD", "-2.50 USD"),
        (2**63 - 1, "USD", "92233720368547758.07 USD"),
        (7, "XAU", "7 XAU (minor units)"),
        (7, "ZZZ", "7 ZZZ (minor units)"),
    ],
)
def test_format_minor(amount, code, text) -> None:
    assert currencies.format_minor(amount, code) == text


@pytest.mark.parametrize(
    ("text", "code", "minor"),
    [
        ("1.50", "USD", 150),
        ("1", "USD", 100),
        ("0.01", "USD", 1),
        ("100", "JPY", 100),
        ("1.000", "BHD", 1000),
        ("0.001", "BHD", 1),
        ("92233720368547758.07", "USD", 2**63 - 1),
    ],
)
def test_parse_major_is_exact(text, code, minor) -> None:
    assert currencies.parse_major(text, code) == minor
    shown, shown_code = currencies.format_minor(minor, code).split()
    assert shown_code == code and currencies.parse_major(shown, code) == minor  # round trip


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ("1.001", "USD"),  # more decimals than cents
        ("1.000", "USD"),
        ("1.5", "JPY"),
        ("0.0001", "BHD"),
        ("-1", "USD"),
        ("+1", "USD"),
        ("1e3", "USD"),
        ("1,50", "USD"),
        ("1 000", "USD"),
        ("", "USD"),
        (".", "USD"),
        ("1.2.3", "USD"),
        ("NaN", "USD"),
        ("Infinity", "USD"),
        ("\u0661", "USD"),  # Arabic-Indic digit one: isdigit() but not ASCII
        ("1", "XAU"),  # no minor unit
        ("1", "ZZZ"),
    ],
)
def test_parse_major_refuses_anything_inexact(text, code) -> None:
    with pytest.raises(ValueError):
        currencies.parse_major(text, code)


def test_default_policy_takes_every_active_code_with_a_minor_unit_but_no_funds() -> None:
    policy = CurrencyPolicy.from_setting("")
    for code in ("USD", "EUR", "JPY", "BHD", "XOF", "UYW"):
        policy.check_new_wallet(code)
    for code, error in (
        ("ZZZ", UnknownCurrencyError),
        ("DEM", UnknownCurrencyError),
        ("XAU", UnknownCurrencyError),
        ("XDR", UnknownCurrencyError),
        ("XXX", UnknownCurrencyError),
        ("USN", CurrencyNotAllowedError),
        ("CLF", CurrencyNotAllowedError),
    ):
        with pytest.raises(error) as raised:
            policy.check_new_wallet(code)
        assert isinstance(raised.value, InvalidArgumentError)
        assert raised.value.field == "currency" and code in raised.value.message


def test_an_allow_list_narrows_and_may_name_fund_codes() -> None:
    policy = CurrencyPolicy.from_setting("usd; JPY ,USN")
    assert policy.allowed == {"USD", "JPY", "USN"} and policy.narrowed
    for code in ("USD", "JPY", "USN"):
        policy.check_new_wallet(code)
    with pytest.raises(CurrencyNotAllowedError) as raised:
        policy.check_new_wallet("EUR")
    assert raised.value.reason == "CURRENCY_NOT_ALLOWED"
    assert "JPY, USD, USN" in raised.value.message
    with pytest.raises(UnknownCurrencyError) as unknown:
        policy.check_new_wallet("ZZZ")
    assert unknown.value.reason == "UNKNOWN_CURRENCY"


@pytest.mark.parametrize(
    ("spec", "named"),
    [("USD,ZZZ", "ZZZ"), ("XAU", "XAU"), ("EUR DEM", "DEM"), ("US", "US")],
)
def test_a_bad_allow_list_is_a_configuration_error(spec, named) -> None:
    with pytest.raises(ValueError) as raised:
        parse_allow_list(spec)
    assert named in str(raised.value) and "WALLET_CURRENCIES" in str(raised.value)


def test_the_allow_list_is_a_setting() -> None:
    assert load_settings(environ={}).currencies == ""
    assert load_settings(environ={"WALLET_CURRENCIES": "USD,EUR"}).currencies == "USD,EUR"
