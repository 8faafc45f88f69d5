"""Domain <-> protobuf mapping of the wallet service (``wallet_service.messages``)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from wallet_service import domain
from wallet_service.messages import (
    event_from_pb,
    event_to_pb,
    response_to_pb,
    result_from_stored,
    timestamp,
    wallet_from_pb,
    wallet_to_pb,
)

MOMENTS = [
    datetime(2026, 3, 1, 12, 30, 5, 123456, tzinfo=UTC),
    datetime(1969, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),  # before the epoch
    datetime(1, 1, 1, tzinfo=UTC),
    datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
    datetime(2024, 2, 29, 1, 2, 3, 4, tzinfo=timezone(timedelta(hours=-5))),  # not UTC
    datetime(2024, 2, 29, 1, 2, 3, 4),  # naive = UTC (SQLite)
]


@pytest.mark.parametrize("moment", MOMENTS)
def test_timestamp_sets_what_from_datetime_sets(moment):
    expected = Timestamp()
    aware = moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment
    expected.FromDatetime(aware.astimezone(UTC))
    assert timestamp(moment) == expected


def test_wallet_and_event_survive_the_round_trip():
    at = MOMENTS[0]
    wallet = domain.Wallet("w1", "JPY", 42, domain.FROZEN, 7, MOMENTS[1], at)
    event = domain.WalletEvent(
        "e1", "w1", 7, domain.TRANSFER_REFUNDED, 5, 42, "JPY", "t1", "t1:refund", "a1", at
    )
    assert wallet_from_pb(wallet_to_pb(wallet)) == wallet
    assert event_from_pb(event_to_pb(event)) == event
    bare = domain.WalletEvent(
        "e2", "w1", 1, domain.WALLET_CREATED, 0, 0, "JPY", None, "r", None, at
    )
    assert event_from_pb(event_to_pb(bare)) == bare


def test_a_replay_is_the_stored_message_with_replayed_set():
    at = MOMENTS[0]
    wallet = domain.Wallet("w1", "USD", 10, domain.ACTIVE, 2, at, at)
    event = domain.WalletEvent(
        "e1", "w1", 2, domain.FUNDS_DEPOSITED, 10, 10, "USD", None, "r1", None, at
    )
    stored = response_to_pb("Deposit", domain.WriteResult(wallet, event)).SerializeToString()
    replay = result_from_stored("Deposit", stored)
    assert (replay.wallet, replay.event, replay.replayed) == (wallet, event, True)
    answer = response_to_pb("Deposit", replay)
    assert answer.replayed  # type: ignore[attr-defined]
    answer.replayed = False  # type: ignore[attr-defined]
    assert answer.SerializeToString() == stored


def test_a_stored_answer_this_version_cannot_name_is_still_replayed_as_stored():
    # An empty stored response (status and event type 0): the domain view keeps the
    # protobuf names, the answer is the stored bytes.
    replay = result_from_stored("Deposit", b"")
    assert replay.wallet.status == "WALLET_STATUS_UNSPECIFIED"
    answer = response_to_pb("Deposit", replay)
    assert answer.replayed and answer.wallet.wallet_id == ""  # type: ignore[attr-defined]
