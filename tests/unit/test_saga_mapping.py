"""The orchestrator's own datetime -> Timestamp conversion equals protobuf's."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta, timezone

from google.protobuf.timestamp_pb2 import Timestamp

from saga_orchestrator.mapping import timestamp

EDGES = [
    datetime(1970, 1, 1, tzinfo=UTC),
    datetime(1969, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC),  # negative seconds
    datetime(1900, 3, 1, 0, 0, 0, 1, tzinfo=UTC),
    datetime(2026, 11, 27, 16, 0, 0, 123_456),  # naive: taken as UTC
    datetime(2026, 11, 27, 16, 0, 0, 999_999, tzinfo=timezone(timedelta(hours=-7))),
    datetime(9999, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC),
]


def reference(value: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(value)
    return stamp


def test_timestamp_equals_from_datetime() -> None:
    rng = random.Random(6)
    values = list(EDGES)
    for _ in range(5000):
        value = datetime(1950, 1, 1, tzinfo=UTC) + timedelta(
            microseconds=rng.randrange(0, 200 * 365 * 86_400 * 10**6)
        )
        values.append(value.astimezone(timezone(timedelta(minutes=rng.randrange(-720, 720, 15)))))
    for value in values:
        assert timestamp(value) == reference(value), value
