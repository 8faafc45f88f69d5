"""Input validation shared by every service. Each failure names the field."""

from __future__ import annotations

import re

from wallet_platform.errors import InvalidArgumentError

INT64_MAX = 2**63 - 1
WALLET_ID_RE = re.compile(r"[A-Za-z0-9._:-]{1,64}")
CURRENCY_RE = re.compile(r"[A-Z]{3}")
REQUEST_ID_RE = re.compile(r"[\x21-\x7e]{1,128}")
DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000


def _shown(value: str, limit: int = 40) -> str:
    """A safe excerpt of bad input for an error message (no NULs, no megabytes)."""
    text = value[:limit].encode("unicode_escape").decode("ascii")
    return text + ("..." if len(value) > limit else "")


def _identifier(value: str, field: str) -> str:
    """Wallet and transfer ids share one shape: 1-64 characters of [A-Za-z0-9._:-]."""
    if not value:
        raise InvalidArgumentError(f"{field} is required", field=field)
    if not WALLET_ID_RE.fullmatch(value):
        raise InvalidArgumentError(
            f"{field} must be 1-64 characters of [A-Za-z0-9._:-], got {_shown(value)!r}",
            field=field,
        )
    return value


def wallet_id(value: str, field: str = "wallet_id") -> str:
    return _identifier(value, field)


def transfer_id(value: str, field: str = "transfer_id") -> str:
    return _identifier(value, field)


def currency(value: str, field: str = "currency") -> str:
    if not value:
        raise InvalidArgumentError(f"{field} is required", field=field)
    if not CURRENCY_RE.fullmatch(value):
        raise InvalidArgumentError(
            f"{field} must be an ISO 4217 code of three upper-case letters, got {_shown(value)!r}",
            field=field,
        )
    return value


def amount(value: int, field: str = "amount") -> int:
    if value <= 0:
        raise InvalidArgumentError(f"{field} must be > 0 minor units, got {value}", field=field)
    if value > INT64_MAX:
        raise InvalidArgumentError(f"{field} exceeds int64", field=field)
    return value


def request_id(value: str, field: str = "request_id") -> str:
    if not value:
        raise InvalidArgumentError(f"{field} is required", field=field)
    if not REQUEST_ID_RE.fullmatch(value):
        raise InvalidArgumentError(
            f"{field} must be 1-128 printable ASCII characters without spaces, "
            f"got {_shown(value)!r} ({len(value)} characters)",
            field=field,
        )
    return value


def page_size(value: int, field: str = "page_size") -> int:
    if value < 0 or value > MAX_PAGE_SIZE:
        raise InvalidArgumentError(f"{field} must be 0-{MAX_PAGE_SIZE}, got {value}", field=field)
    return value or DEFAULT_PAGE_SIZE
