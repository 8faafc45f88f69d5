"""Packing a relay round into envelopes and reading them back."""

from __future__ import annotations

import pytest

from wallet.v1 import envelope_pb2
from wallet_platform.messaging.bus import OutgoingMessage
from wallet_platform.messaging.envelope import Envelope, EnvelopeError, pack, unpack


def message(i: int, key: str, traceparent: str | None = None) -> OutgoingMessage:
    return OutgoingMessage(f"id-{i}", key, "wallet.v1.FundsDeposited", bytes([i]), traceparent)


def test_a_round_is_grouped_per_routing_key_in_order_and_split_at_the_limit() -> None:
    a, b = "wallet.funds_deposited", "wallet.funds_withdrawn"
    round_ = [message(0, a), message(1, b), message(2, a), message(3, a), message(4, a)]
    packed = pack(round_, 3)
    assert [type(p).__name__ for p in packed] == ["Envelope", "OutgoingMessage", "OutgoingMessage"]
    first, lone_a, lone_b = packed
    assert isinstance(first, Envelope)
    assert first.routing_key == a
    assert [e.message_id for e in first.events] == ["id-0", "id-2", "id-3"]
    assert first.message_id == "envelope:id-0"
    assert lone_b == round_[1]  # one event of a key: a plain message
    assert lone_a == round_[4]


def test_below_two_events_per_envelope_nothing_is_packed() -> None:
    round_ = [message(i, "wallet.funds_deposited") for i in range(5)]
    assert pack(round_, 1) == round_
    assert pack(round_, 0) == round_


def test_an_envelope_reads_back_as_its_events() -> None:
    events = (message(1, "k", "00-abc-def-01"), message(2, "k"))
    [event_1, event_2] = unpack(Envelope("k", events).body(), 2)
    assert (event_1.message_id, event_1.message_type, event_1.body, event_1.traceparent) == (
        "id-1",
        "wallet.v1.FundsDeposited",
        bytes([1]),
        "00-abc-def-01",
    )
    assert (event_2.message_id, event_2.traceparent) == ("id-2", None)


@pytest.mark.parametrize(
    ("body", "count"),
    [
        (b"\xff\xff\xff", 1),  # not protobuf
        (Envelope("k", (message(1, "k"), message(2, "k"))).body(), 3),  # header disagrees
        (envelope_pb2.EventEnvelope().SerializeToString(), 0),  # empty
        (Envelope("k", tuple(message(i % 250, "k") for i in range(1001))).body(), 1001),
    ],
)
def test_a_broken_envelope_is_an_error(body: bytes, count: int) -> None:
    with pytest.raises(EnvelopeError):
        unpack(body, count)
