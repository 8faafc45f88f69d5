"""Page tokens: opaque to clients, bound to the listing and filters they were issued for.

A list RPC hands out ``next_page_token`` and takes it back as ``page_token``. The token
records three things: which listing issued it (``"transfers"``), the filters of that
listing (``{"state": 3, "wallet_id": "alice"}``) and the position of the last item
returned. A token presented with other filters than it was issued for is refused
(``INVALID_ARGUMENT`` naming the filters that differ): the position of one listing means
nothing in another, and silently paging on would skip or repeat items. ``page_size``
is not a filter and may change from page to page.

Format: URL-safe base64 (no padding) of a small JSON object ``{"l": listing, "f":
filters, "p": position}``. Clients must treat it as opaque; it is not encrypted.

Not signed (no HMAC), on purpose: the filters of a page come from the request, never
from the token, and the query applies them (and the caller's authorisation) as for a
first page, so a forged token can only move the starting point inside a listing the
caller may read anyway. A signature would buy no access control and cost a key shared
by every replica and its rotation. What a forged or garbled token must never do is
reach the database with a value it cannot take: :func:`redeem` accepts only the exact
position fields a listing issues, each of its exact type, integers within int64 and
short printable strings, and answers everything else ``INVALID_ARGUMENT``.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping

from wallet_platform.errors import InvalidArgumentError

FIELD = "page_token"
MAX_TOKEN_LENGTH = 512
MAX_POSITION_STRING = 128
INT64_MAX = 2**63 - 1

Value = str | int
Filters = Mapping[str, Value]


def issue(listing: str, filters: Filters, position: Mapping[str, Value]) -> str:
    """The token of the page after ``position`` in ``listing`` under ``filters``."""
    document = {"l": listing, "f": dict(filters), "p": dict(position)}
    raw = json.dumps(document, separators=(",", ":"), sort_keys=True).encode()
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def redeem(
    token: str, listing: str, filters: Filters, shape: Mapping[str, type]
) -> dict[str, Value] | None:
    """The position in ``token`` (None for an empty token: the first page).

    ``shape`` names each position field and its type (``str`` or ``int``). Anything
    that is not a token this listing issued under these ``filters`` is
    :class:`InvalidArgumentError` on ``page_token``.
    """
    if not token:
        return None
    document = _decode(token)
    if document.get("l") != listing:
        raise InvalidArgumentError(f"{FIELD} was issued by another listing", field=FIELD)
    issued = document.get("f")
    if not isinstance(issued, dict):
        raise _malformed()
    differ = sorted(name for name in {*issued, *filters} if issued.get(name) != filters.get(name))
    if differ:
        raise InvalidArgumentError(
            f"{FIELD} was issued for other filters ({', '.join(differ)} differ): send the "
            f"filters of the first page again, or start over without a {FIELD}",
            field=FIELD,
        )
    return _position(document.get("p"), shape)


def _decode(token: str) -> dict[str, object]:
    if len(token) > MAX_TOKEN_LENGTH:
        raise InvalidArgumentError(f"{FIELD} is too long", field=FIELD)
    try:
        padded = token + "=" * (-len(token) % 4)
        raw = base64.urlsafe_b64decode(padded.encode("ascii"))
        document = json.loads(raw)
    except (ValueError, binascii.Error, UnicodeError, RecursionError):
        raise _malformed() from None
    if not isinstance(document, dict) or set(document) != {"l", "f", "p"}:
        raise _malformed()
    return document


def _position(position: object, shape: Mapping[str, type]) -> dict[str, Value]:
    if not isinstance(position, dict) or set(position) != set(shape):
        raise _malformed()
    for name, kind in shape.items():
        value = position[name]
        if kind is int:
            if type(value) is not int or not 0 <= value <= INT64_MAX:
                raise _malformed()
        elif kind is str:
            if (
                not isinstance(value, str)
                or not 0 < len(value) <= MAX_POSITION_STRING
                or not value.isprintable()
            ):
                raise _malformed()
        else:
            raise TypeError(f"position fields are str or int, not {kind!r}")
    return dict(position)


def _malformed() -> InvalidArgumentError:
    return InvalidArgumentError(f"{FIELD} is malformed", field=FIELD)
