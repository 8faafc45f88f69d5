"""wallet_platform.page_tokens: bound to listing and filters, forged input refused."""

from __future__ import annotations

import base64
import json
import random

import pytest

from wallet_platform import page_tokens
from wallet_platform.errors import InvalidArgumentError

FILTERS: page_tokens.Filters = {"state": 3, "wallet_id": "alice"}
SHAPE = {"c": str, "t": str}
POSITION = {"c": "2026-01-01T00:00:00+00:00", "t": "t-1"}


def raw_token(document: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(document).encode()).decode().rstrip("=")


def refused(token: str, filters: page_tokens.Filters | None = None) -> str:
    with pytest.raises(InvalidArgumentError) as raised:
        page_tokens.redeem(token, "transfers", filters or FILTERS, SHAPE)
    assert raised.value.field == "page_token"
    return raised.value.message


def test_round_trip_and_first_page():
    token = page_tokens.issue("transfers", FILTERS, POSITION)
    assert page_tokens.redeem(token, "transfers", dict(FILTERS), SHAPE) == POSITION
    assert page_tokens.redeem("", "transfers", FILTERS, SHAPE) is None
    assert "=" not in token and token.isascii()


@pytest.mark.parametrize(
    ("other", "named"),
    [
        ({"state": 4, "wallet_id": "alice"}, "state"),
        ({"state": 3, "wallet_id": "bob"}, "wallet_id"),
        ({"state": 3, "wallet_id": ""}, "wallet_id"),
        ({"state": 0, "wallet_id": ""}, "state, wallet_id"),
        ({"state": 3}, "wallet_id"),
    ],
)
def test_other_filters_are_refused_naming_them(other, named):
    token = page_tokens.issue("transfers", FILTERS, POSITION)
    message = refused(token, other)
    assert f"({named} differ)" in message and "start over" in message
    assert "alice" not in message and "bob" not in message  # names, never values


def test_a_token_of_another_listing_is_refused():
    token = page_tokens.issue("fraud_alerts", FILTERS, POSITION)
    assert "another listing" in refused(token)


@pytest.mark.parametrize(
    "position",
    [
        {},
        {"c": "x"},
        {"c": "x", "t": "y", "extra": 1},
        {"c": 5, "t": "y"},
        {"c": "x", "t": None},
        {"c": "x", "t": ""},
        {"c": "x", "t": "a\x00b"},  # NUL: PostgreSQL text cannot hold it
        {"c": "x", "t": "\ud800"},  # a lone surrogate: not encodable
        {"c": "x", "t": "y" * 129},
        {"c": "x", "t": ["y"]},
    ],
)
def test_positions_of_the_wrong_shape_are_malformed(position):
    assert "malformed" in refused(raw_token({"l": "transfers", "f": FILTERS, "p": position}))


@pytest.mark.parametrize("value", [-1, 2**63, 10**100, 1.5, True, "7", float("nan")])
def test_integer_positions_must_fit_int64(value):
    token = raw_token({"l": "w", "f": {}, "p": {"s": value}})
    with pytest.raises(InvalidArgumentError, match="malformed"):
        page_tokens.redeem(token, "w", {}, {"s": int})


def test_the_largest_int64_is_accepted():
    token = page_tokens.issue("w", {}, {"s": 2**63 - 1})
    assert page_tokens.redeem(token, "w", {}, {"s": int}) == {"s": 2**63 - 1}


@pytest.mark.parametrize(
    "token",
    [
        "%%%garbage",
        "not-a-token!!",
        "AAAA",  # base64 of three NUL bytes: not JSON
        raw_token([1, 2]),
        raw_token("text"),
        raw_token({"l": "transfers", "f": FILTERS}),
        raw_token({"l": "transfers", "f": "alice", "p": POSITION}),
        raw_token({"l": "transfers", "f": FILTERS, "p": POSITION, "x": 1}),
        base64.urlsafe_b64encode(b"\xff\xfe{").decode(),
        base64.urlsafe_b64encode(b"[" * 300 + b"]" * 300).decode()[:512],
        "é" * 10,
    ],
)
def test_garbage_is_malformed(token):
    assert "malformed" in refused(token)


def test_an_oversized_token_is_refused_before_decoding():
    assert "too long" in refused("A" * 513)


def test_random_bytes_never_escape_as_anything_but_invalid_argument():
    rng = random.Random(42)
    for _ in range(2000):
        blob = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 200)))
        token = base64.urlsafe_b64encode(blob).decode().rstrip("=")
        try:
            page_tokens.redeem(token, "transfers", FILTERS, SHAPE)
        except InvalidArgumentError:
            continue
        raise AssertionError(f"accepted {blob!r}")


def test_flipped_characters_of_a_real_token_are_refused_or_still_well_formed():
    token = page_tokens.issue("transfers", FILTERS, POSITION)
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    rng = random.Random(9)
    for _ in range(2000):
        index = rng.randrange(len(token))
        mutated = token[:index] + rng.choice(alphabet) + token[index + 1 :]
        try:
            position = page_tokens.redeem(mutated, "transfers", FILTERS, SHAPE)
        except InvalidArgumentError:
            continue
        assert position is not None  # accepted only with the exact shape and types
        assert set(position) == {"c", "t"}
        assert all(isinstance(v, str) and v.isprintable() for v in position.values())
