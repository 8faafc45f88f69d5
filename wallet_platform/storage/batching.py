"""The scheduling half of group commit, shared by the wallet service and the saga.

Both group committers gather concurrent writes into one database statement. What they
share is *when* a batch leaves and *what* may travel together:

- at most ``max_in_flight`` batches run at once (1 by default: the biggest batches,
  and PostgreSQL's commit is the serial point anyway); items that arrive while one
  runs leave together in the next, so batches form by themselves under load and a lone
  item goes at once;
- a batch holds at most ``max_batch`` items and never two that share a conflict key
  (the same wallet, idempotency key or transfer): those wait for a later batch, so
  the statement never has to order two changes of one row.

What a batch does (the statement, its fallbacks, resolving each item's future) is the
subclass's :meth:`BatchScheduler._run`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any, Generic, Protocol, TypeVar


class BatchItem(Protocol):
    """A queued write: its caller awaits ``future``."""

    @property
    def future(self) -> asyncio.Future[Any]: ...


ItemT = TypeVar("ItemT", bound=BatchItem)


class BatchScheduler(Generic[ItemT]):
    """Queue, batch formation and in-flight limit (see the module docstring)."""

    def __init__(self, *, max_batch: int, max_in_flight: int, task_name: str) -> None:
        self.max_batch = max_batch
        self.max_in_flight = max_in_flight
        self._task_name = task_name
        self._queue: list[ItemT] = []
        self._in_flight = 0
        self._tasks: set[asyncio.Task[None]] = set()

    def conflict_keys(self, item: ItemT) -> Iterable[str]:
        """Keys that no two items of one batch may share."""
        raise NotImplementedError

    async def _run(self, batch: list[ItemT]) -> None:
        """Write ``batch`` and settle every item's future (also on failure)."""
        raise NotImplementedError

    def _enqueue(self, item: ItemT) -> None:
        self._queue.append(item)
        self._kick()

    async def _wait_idle(self) -> None:
        """Until no batch is running (items queued meanwhile are started and awaited)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    def _kick(self) -> None:
        while self._queue and self._in_flight < self.max_in_flight:
            batch = self._take_batch()
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

    def _take_batch(self) -> list[ItemT]:
        """Up to ``max_batch`` queued items with no conflict key in common."""
        batch: list[ItemT] = []
        left: list[ItemT] = []
        taken: set[str] = set()
        for item in self._queue:
            if item.future.done():  # the caller went away (cancelled) before its turn
                continue
            keys = set(self.conflict_keys(item))
            if len(batch) < self.max_batch and not keys & taken:
                batch.append(item)
                taken |= keys
            else:
                left.append(item)
        self._queue = left
        return batch
