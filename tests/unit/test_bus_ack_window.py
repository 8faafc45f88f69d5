"""The RabbitMQ bus's ack window: which delivery tags one flush may ack, and how.

``basic.ack(multiple=True)`` acks every unacked tag up to the given one on the
channel, so it must never cover a delivery still being handled, retried or
dead-lettered; those stay unacked while settled tags above them are acked singly.
"""

from __future__ import annotations

from wallet_platform.messaging.rabbit import AckWindow


def window(*tags: int) -> AckWindow:
    # No channel: these tests read what take() would ack instead of sending it.
    result = AckWindow(channel=None)  # type: ignore[arg-type]
    for tag in tags:
        result.delivered(tag)
    return result


def test_a_settled_run_at_the_bottom_is_one_multiple_ack() -> None:
    acks = window(1, 2, 3, 4, 5)
    assert [acks.settled(tag) for tag in (1, 2, 3)] == [1, 2, 3]  # acks due so far
    assert acks.settled(3) == 0  # settled already: nothing new
    assert acks.take() == (3, [])
    assert list(acks.unsettled) == [4, 5] and acks.due == 0
    assert acks.take() == (None, [])


def test_an_unsettled_delivery_below_keeps_the_tags_above_out_of_a_multiple_ack() -> None:
    acks = window(1, 2, 3, 4, 5)
    for tag in (1, 3, 5):
        acks.settled(tag)
    # 2 and 4 are still in flight (e.g. waiting to be retried): 1 may go with
    # multiple (it is alone at the bottom), 3 and 5 only singly.
    assert acks.take() == (1, [3, 5])
    assert list(acks.unsettled) == [2, 4] and acks.due == 0
    acks.settled(2)
    acks.settled(4)
    assert acks.take() == (4, [])
    assert not acks.unsettled


def test_a_nacked_or_rejected_delivery_is_never_acked() -> None:
    acks = window(1, 2, 3)
    acks.forget(1)  # nacked / rejected: settled otherwise
    acks.settled(2)
    acks.settled(3)
    assert acks.take() == (3, [])
    assert acks.settled(1) == 0  # unknown now: nothing to ack
    assert acks.take() == (None, [])


def test_tags_out_of_order_are_acked_singly() -> None:
    acks = window(2, 1, 3)
    for tag in (1, 2, 3):
        acks.settled(tag)
    assert acks.take() == (None, [2, 1, 3])
