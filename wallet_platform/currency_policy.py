"""Which currencies a NEW wallet may hold: ISO 4217 codes with a minor unit, optionally
narrowed by the operator's allow-list (``WALLET_CURRENCIES`` / ``--currencies``).

The rule applies to ``CreateWallet`` only. A wallet's currency never changes, and
reads and moves of an existing wallet never consult this policy: a currency that
leaves the allow-list (or a code ISO withdraws) stops new wallets, never the money
already held. Transfer steps name a currency only as an expectation that the wallet
itself decides (``CURRENCY_MISMATCH`` when it differs).

Default (empty allow-list): every code of ISO 4217 list one that has a minor unit and
is not a fund code. Fund codes (BOV, CHE, CHW, CLF, COU, MXV, USN, UYI) are accepted
only when the allow-list names them; codes without a minor unit (XAU, XDR, XXX...)
are never accepted, and naming one in the allow-list stops the server at start-up.
"""

from __future__ import annotations

from dataclasses import dataclass

from wallet_platform import currencies
from wallet_platform.errors import InvalidArgumentError


class UnknownCurrencyError(InvalidArgumentError):
    """Not an active ISO 4217 code a wallet can hold (ZZZ, a historic code, XAU...)."""

    reason = "UNKNOWN_CURRENCY"


class CurrencyNotAllowedError(InvalidArgumentError):
    """A valid ISO code this deployment does not open wallets in."""

    reason = "CURRENCY_NOT_ALLOWED"


def _default_codes() -> frozenset[str]:
    return frozenset(
        c.code for c in currencies.iso_table().values() if c.holdable and not c.is_fund
    )


def parse_allow_list(spec: str) -> frozenset[str]:
    """``"USD, eur;JPY"`` -> ``{"USD", "EUR", "JPY"}``; empty -> empty (no narrowing).

    Separators are commas, semicolons or spaces; case is ignored (an operator's
    ``usd`` is unambiguous). Raises ValueError naming every entry that is not an ISO
    code with a minor unit, so a typo stops the server instead of refusing wallets.
    """
    codes = frozenset(
        part.strip().upper() for part in spec.replace(";", ",").replace(" ", ",").split(",")
    ) - {""}
    unknown: list[str] = []
    unholdable: list[str] = []
    for code in sorted(codes):
        known = currencies.find(code)
        if known is None:
            unknown.append(code)
        elif not known.holdable:
            unholdable.append(code)
    problems = []
    if unknown:
        problems.append(f"not ISO 4217 list-one codes: {', '.join(unknown)}")
    if unholdable:
        problems.append(f"codes without a minor unit: {', '.join(unholdable)}")
    if problems:
        raise ValueError(f"WALLET_CURRENCIES: {'; '.join(problems)}")
    return codes


@dataclass(frozen=True)
class CurrencyPolicy:
    """The currencies new wallets may hold (see the module docstring)."""

    allowed: frozenset[str]
    narrowed: bool  # True when an operator's allow-list is in force

    @classmethod
    def from_setting(cls, spec: str) -> CurrencyPolicy:
        """From ``Settings.currencies``; ValueError for a bad list (see parse_allow_list)."""
        listed = parse_allow_list(spec)
        if listed:
            return cls(listed, narrowed=True)
        return cls(_default_codes(), narrowed=False)

    def check_new_wallet(self, code: str, field: str = "currency") -> None:
        """Raise INVALID_ARGUMENT (naming ``field``) unless a new wallet may hold ``code``.

        ``code`` has passed ``validation.currency`` (three upper-case letters).
        """
        if code in self.allowed:
            return
        known = currencies.find(code)
        if known is None:
            raise UnknownCurrencyError(
                f"{field} {code!r} is not an active ISO 4217 currency code", field=field
            )
        if not known.holdable:
            raise UnknownCurrencyError(
                f"{field} {code!r} ({known.name}) has no minor unit; wallets cannot hold it",
                field=field,
            )
        if self.narrowed:
            raise CurrencyNotAllowedError(
                f"{field} {code!r} is not among the currencies this platform opens wallets "
                f"in ({', '.join(sorted(self.allowed))})",
                field=field,
            )
        raise CurrencyNotAllowedError(
            f"{field} {code!r} ({known.name}) is an ISO fund code; list it in "
            "WALLET_CURRENCIES to open wallets in it",
            field=field,
        )
