"""The scheduling half of group commit, shared by the wallet service and the saga.

Both group committers gather concurrent writes into one database statement. What they
share is *when* a batch leaves and *what* may travel together:

- at most ``max_in_flight`` batches run at once (1 by default: the biggest batches,
  and PostgreSQL's commit is the serial point anyway); items that arrive while one
  runs leave together in the next, so batches form by themselves under load and a lone
  item goes at once;
- a batch holds at most ``max_batch`` items and never two that share a conflict key
  (the same wallet, idempotency key or transfer): those wait for a later batch, so
  the statement never has to order two changes of one row. Items sharing a key leave
  in the order they arrived.

Forming a batch costs work proportional to the batch, however long the queue and
however hot one key is (:class:`KeyLanes`): a queue of 10,000 deposits to one wallet
is taken one item per batch without rescanning the 9,999 behind it each time, and the
items for other wallets queued behind them are not held up.

What a batch does (the statement, its fallbacks, resolving each item's future) is the
subclass's :meth:`BatchScheduler._run`.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Iterable
from typing import Any, Generic, Protocol, TypeVar


class BatchItem(Protocol):
    """A queued write: its caller awaits ``future``."""

    @property
    def future(self) -> asyncio.Future[Any]: ...


ItemT = TypeVar("ItemT", bound=BatchItem)


class KeyLanes(Generic[ItemT]):
    """Queued items in one FIFO lane per conflict key, plus the queue of ready items.

    An item is *ready* when it is first in the lane of every one of its keys. Two
    ready items therefore never share a key, so a batch is simply the first ready
    items. Taking an item out of its lanes makes the next item of each lane ready
    when that one is first in all of its own lanes. An item waiting behind others of
    its key sits in its lanes only: it is looked at once when it arrives and once
    when it reaches the front, never while it waits.

    ``examined`` counts the items looked at (tests check that work stays linear).
    """

    def __init__(self) -> None:
        self._lanes: dict[str, deque[ItemT]] = {}
        # id(item) -> (arrival number, its keys) for every queued item
        self._entries: dict[int, tuple[int, tuple[str, ...]]] = {}
        self._arrived = 0
        self._ready: deque[ItemT] = deque()
        self.examined = 0

    def __len__(self) -> int:
        return len(self._entries)

    def add(self, item: ItemT, keys: Iterable[str]) -> None:
        own = tuple(dict.fromkeys(keys))  # each key once, in order
        self._entries[id(item)] = (self._arrived, own)
        self._arrived += 1
        self.examined += 1
        first_everywhere = True
        for key in own:
            lane = self._lanes.setdefault(key, deque())
            if lane:
                first_everywhere = False
            lane.append(item)
        if first_everywhere:
            self._ready.append(item)

    def take(self, limit: int) -> list[ItemT]:
        """Up to ``limit`` ready items in arrival order; callers that went away are dropped."""
        batch: list[ItemT] = []
        while self._ready and len(batch) < limit:
            item = self._ready.popleft()
            self.examined += 1
            if item.future.done():  # the caller was cancelled before its turn
                self._leave_lanes(item)  # its successors may still join this batch
            else:
                batch.append(item)
        # The batch's items leave their lanes only now, so that the next item of a
        # lane becomes ready for the next batch, never for this one.
        batch.sort(key=lambda item: self._entries[id(item)][0])  # the statement's order
        for item in batch:
            self._leave_lanes(item)
        return batch

    def _leave_lanes(self, item: ItemT) -> None:
        for key in self._entries.pop(id(item))[1]:
            lane = self._lanes[key]
            lane.popleft()  # a ready item is first in each of its lanes
            if not lane:
                del self._lanes[key]
                continue
            successor = lane[0]
            self.examined += 1
            if all(self._lanes[k][0] is successor for k in self._entries[id(successor)][1]):
                self._ready.append(successor)


class BatchScheduler(Generic[ItemT]):
    """Queue, batch formation and in-flight limit (see the module docstring)."""

    def __init__(self, *, max_batch: int, max_in_flight: int, task_name: str) -> None:
        self.max_batch = max_batch
        self.max_in_flight = max_in_flight
        self._task_name = task_name
        self._queue: KeyLanes[ItemT] = KeyLanes()
        self._in_flight = 0
        self._tasks: set[asyncio.Task[None]] = set()

    def conflict_keys(self, item: ItemT) -> Iterable[str]:
        """Keys that no two items of one batch may share."""
        raise NotImplementedError

    async def _run(self, batch: list[ItemT]) -> None:
        """Write ``batch`` and settle every item's future (also on failure)."""
        raise NotImplementedError

    def _enqueue(self, item: ItemT) -> None:
        self._queue.add(item, self.conflict_keys(item))
        self._kick()

    async def _wait_idle(self) -> None:
        """Until no batch is running (items queued meanwhile are started and awaited)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    def _kick(self) -> None:
        while len(self._queue) and self._in_flight < self.max_in_flight:
            batch = self._queue.take(self.max_batch)
            if not batch:
                return
            self._in_flight += 1
            task = asyncio.get_running_loop().create_task(self._run(batch), name=self._task_name)
            self._tasks.add(task)
            task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._in_flight -= 1
        self._kick()
