"""Acks of committed deliveries, batched per channel.

One ``basic.ack(multiple=True)`` frame covers the longest run of settled delivery
tags at the bottom of a channel's unsettled ones, so a committed batch of deliveries
costs one ack frame instead of one per message (docs/benchmarks.md).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import aiormq

log = logging.getLogger(__name__)

# Acks of committed deliveries wait at most this long for company (one frame for all);
# a quarter of the prefetch due is sent at once. Unacked deliveries only hold prefetch
# slots meanwhile: a crash before the ack redelivers them and the inbox skips them.
ACK_DELAY_SECONDS = 0.02


class AckWindow:
    """The unsettled deliveries of ONE aiormq channel, and their acks, batched.

    ``basic.ack(multiple=True)`` acks every unacked tag up to the given one on the
    channel, so it may only cover a run of tags that are ALL settled: a delivery still
    in the consumer's hands, waiting to be retried or being dead-lettered must never
    sit below it. Tags are kept in delivery order (= tag order: aiormq starts the
    callback of each delivery in the order the frames arrive); a flush acks the settled
    run at the bottom with one frame and any settled tag above the first unsettled one
    on its own. Should tags ever arrive out of order, every ack is sent singly.

    When acks are sent is the consumer's choice (:func:`ack_later`): at once
    when a quarter of the prefetch is due, else after :data:`ACK_DELAY_SECONDS`, so a
    stream of small committed batches shares one frame (one socket write) too.
    """

    def __init__(self, channel: aiormq.abc.AbstractChannel) -> None:
        self.channel = channel
        self.unsettled: dict[int, bool] = {}  # tag -> settled (ack due); delivery order
        self.last_tag = 0
        self.ordered = True
        self.due = 0  # settled tags not yet taken
        self.flush_soon = False  # a flush task is scheduled
        self.timer: asyncio.TimerHandle | None = None  # a delayed flush is scheduled

    def delivered(self, tag: int) -> None:
        if tag <= self.last_tag:
            self.ordered = False
        self.last_tag = max(tag, self.last_tag)
        self.unsettled[tag] = False

    def settled(self, tag: int) -> int:
        """Mark ``tag`` for ack; returns how many acks are due (0: unknown tag)."""
        if self.unsettled.get(tag) is not False:
            return 0
        self.unsettled[tag] = True
        self.due += 1
        return self.due

    def forget(self, tag: int) -> None:
        """``tag`` is settled otherwise (nack, reject): never ack it."""
        self.unsettled.pop(tag, None)

    def take(self) -> tuple[int | None, list[int]]:
        """The acks due: (tag to ack with ``multiple``, or None; tags to ack singly)."""
        self.flush_soon = False
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        upto: int | None = None
        singles: list[int] = []
        bottom = self.ordered
        for tag, done in self.unsettled.items():
            if not done:
                bottom = False
            elif bottom:
                upto = tag
            else:
                singles.append(tag)
        for tag in singles:
            del self.unsettled[tag]
        if upto is not None:
            for tag in [t for t in self.unsettled if t <= upto]:
                del self.unsettled[tag]
        self.due = sum(1 for done in self.unsettled.values() if done)  # 0: all taken
        return upto, singles

    async def flush(self) -> None:
        upto, singles = self.take()
        try:
            if upto is not None:
                await self.channel.basic_ack(upto, multiple=True, wait=False)
            for tag in singles:
                await self.channel.basic_ack(tag, wait=False)
        except Exception as error:
            # The channel is gone: the broker redelivers them (the inbox dedupes).
            log.warning("could not ack deliveries (%s); they will be redelivered", error)


def ack_later(window: AckWindow, tag: int, batch: int, tasks: set[asyncio.Task[Any]]) -> None:
    """Ack ``tag`` with the window's next flush: now if ``batch`` acks are due, else
    after :data:`ACK_DELAY_SECONDS` (``tasks`` keeps the flush task referenced)."""
    due = window.settled(tag)
    if not due or window.flush_soon:
        return
    if due >= batch:
        _flush_now(window, tasks)
    elif window.timer is None:
        window.timer = asyncio.get_running_loop().call_later(
            ACK_DELAY_SECONDS, _timer_fired, window, tasks
        )


def _timer_fired(window: AckWindow, tasks: set[asyncio.Task[Any]]) -> None:
    window.timer = None
    if not window.flush_soon:
        _flush_now(window, tasks)


def _flush_now(window: AckWindow, tasks: set[asyncio.Task[Any]]) -> None:
    window.flush_soon = True
    task = asyncio.get_running_loop().create_task(window.flush())
    tasks.add(task)  # keep a reference until it is done
    task.add_done_callback(tasks.discard)


async def settle_otherwise(window: AckWindow, tag: int, *, requeue: bool) -> None:
    """Nack one delivery (``requeue``: back to its queue) or reject it (to the
    queue's dead-letter exchange); never ack it afterwards."""
    window.forget(tag)
    try:
        if requeue:
            await window.channel.basic_nack(tag, requeue=True)
        else:
            await window.channel.basic_reject(tag, requeue=False)
    except Exception as error:
        # The channel is gone: the broker puts the message back anyway.
        log.warning("could not settle delivery %d (%s); the broker will redeliver it", tag, error)
