"""The one change feed behind every WatchTransfers stream of a process.

Two sources are merged once per process, however many streams watch:

- the in-process notifier: changes this replica made, pushed at once;
- a poll of the ``transfers`` table every second: changes other replicas made. Each
  poll reaches a little further back than the last (commit delays, small clock
  differences between replicas).

One memory of the last state seen per transfer (progress order: a transfer never
appears to step back) drops what both sources report and what a poll sees twice; each
change that is news is handed to the subscribers that want it, found through an index
by transfer and by wallet, so a change costs work for its own watchers only.

The poll loop starts with the first subscriber and stops when the last one leaves; at
start it remembers, without sending, what the overlap window already holds (it
happened before anyone subscribed). :meth:`TransferFeed.subscribe` returns once the
subscriber is registered and the loop primed: every later change reaches it.

Each subscriber has a bounded queue (:data:`SUBSCRIBER_QUEUE`). A subscriber whose
client does not keep up is ended with RESOURCE_EXHAUSTED (reason ``WATCH_TOO_SLOW``:
resubscribe and read the current state with GetTransfer/ListTransfers); the feed never
waits for it and its memory never grows past the queue.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta

from saga_orchestrator.domain import Transfer
from saga_orchestrator.notifier import TransferNotifier
from saga_orchestrator.repository import TransferRepository
from wallet_platform.clock import utcnow
from wallet_platform.errors import ResourceExhaustedError, UnavailableError
from wallet_platform.observability.limit_metrics import WATCH_SUBSCRIBERS, WATCH_TOO_SLOW

log = logging.getLogger(__name__)

POLL_SECONDS = 1.0
POLL_OVERLAP = timedelta(seconds=3)
POLL_BATCH = 500
MEMORY = 10_000  # transfers whose last state the feed remembers
SUBSCRIBER_QUEUE = 1000  # changes waiting for one slow client before it is ended


class WatchTooSlowError(ResourceExhaustedError):
    reason = "WATCH_TOO_SLOW"


class FeedStoppedError(UnavailableError):
    reason = "SERVER_STOPPING"


@dataclass(frozen=True)
class WatchFilter:
    """Which transfers a subscriber wants: one transfer, one wallet's, or all (empty)."""

    transfer_id: str = ""
    wallet_id: str = ""

    def wants(self, transfer: Transfer) -> bool:
        if self.transfer_id and transfer.transfer_id != self.transfer_id:
            return False
        return not self.wallet_id or transfer.involves(self.wallet_id)


class Subscription:
    """One stream's view of the feed; iterate it for the changes it wants."""

    def __init__(self, wanted: WatchFilter, capacity: int) -> None:
        self.wanted = wanted
        self.capacity = capacity
        self._queue: collections.deque[Transfer] = collections.deque()
        self._wakeup = asyncio.Event()
        self._error: BaseException | None = None

    @property
    def queued(self) -> int:
        return len(self._queue)

    def _push(self, transfer: Transfer) -> bool:
        """Queue a change; False (and nothing queued) when the queue is full."""
        if len(self._queue) >= self.capacity:
            return False
        self._queue.append(transfer)
        self._wakeup.set()
        return True

    def _end(self, error: BaseException, *, drop_queued: bool) -> None:
        if self._error is None:
            self._error = error
        if drop_queued:
            self._queue.clear()
        self._wakeup.set()

    def _raise_if_ended(self) -> None:
        if self._error is not None:
            raise self._error

    async def _wait(self) -> None:
        await self._wakeup.wait()
        self._wakeup.clear()

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Transfer:
        while not self._queue:
            self._raise_if_ended()
            await self._wait()
        return self._queue.popleft()


class _Run:
    """One life of the poll loop: from its first subscriber until none is left."""

    def __init__(self) -> None:
        self.primed = False
        self.task: asyncio.Task[None] | None = None


class TransferFeed:
    """Merges, deduplicates and fans out transfer changes (see the module docstring)."""

    def __init__(
        self,
        repository: TransferRepository,
        notifier: TransferNotifier,
        *,
        poll_seconds: float = POLL_SECONDS,
        subscriber_queue: int = SUBSCRIBER_QUEUE,
    ) -> None:
        self.repository = repository
        self.notifier = notifier
        self.poll_seconds = poll_seconds
        self.subscriber_queue = subscriber_queue
        self._subscribers: set[Subscription] = set()
        self._everything: set[Subscription] = set()
        self._by_transfer: dict[str, set[Subscription]] = {}
        self._by_wallet: dict[str, set[Subscription]] = {}
        self._run: _Run | None = None
        self._stopped = False

    @property
    def subscribers(self) -> int:
        return len(self._subscribers)

    @property
    def polling(self) -> bool:
        """True while the poll loop runs (it runs only while someone subscribes)."""
        return self._run is not None

    @contextlib.asynccontextmanager
    async def subscribe(self, wanted: WatchFilter) -> AsyncIterator[Subscription]:
        """Register a subscriber; enter returns once every later change reaches it."""
        if self._stopped:
            raise FeedStoppedError("server stopping; resubscribe to another replica")
        subscription = Subscription(wanted, self.subscriber_queue)
        self._add(subscription)
        try:
            run = self._run
            while run is not None and not run.primed:
                subscription._raise_if_ended()
                await subscription._wait()
            subscription._raise_if_ended()
            yield subscription
        finally:
            self._remove(subscription)

    async def stop(self) -> None:
        """End every subscriber (UNAVAILABLE: resubscribe) and the poll loop; refuse new ones."""
        self._stopped = True
        for subscription in list(self._subscribers):
            subscription._end(FeedStoppedError("server stopping; resubscribe"), drop_queued=True)
        run, self._run = self._run, None
        if run is not None and run.task is not None:
            run.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await run.task

    # --- subscribers -----------------------------------------------------------------

    def _index_of(self, subscription: Subscription) -> set[Subscription]:
        wanted = subscription.wanted
        if wanted.transfer_id:
            return self._by_transfer.setdefault(wanted.transfer_id, set())
        if wanted.wallet_id:
            return self._by_wallet.setdefault(wanted.wallet_id, set())
        return self._everything

    def _add(self, subscription: Subscription) -> None:
        self._subscribers.add(subscription)
        self._index_of(subscription).add(subscription)
        WATCH_SUBSCRIBERS.inc()
        if self._run is None:
            run = _Run()
            run.task = asyncio.get_running_loop().create_task(
                self._poll_loop(run), name="watch-feed"
            )
            self._run = run

    def _remove(self, subscription: Subscription) -> None:
        if subscription not in self._subscribers:
            return
        self._subscribers.discard(subscription)
        WATCH_SUBSCRIBERS.dec()
        wanted = subscription.wanted
        index = self._index_of(subscription)
        index.discard(subscription)
        if not index and index is not self._everything:
            if wanted.transfer_id:
                del self._by_transfer[wanted.transfer_id]
            else:
                del self._by_wallet[wanted.wallet_id]
        if not self._subscribers and self._run is not None:
            run, self._run = self._run, None  # nobody watches: stop polling
            if run.task is not None:
                run.task.cancel()

    def _fan_out(self, transfer: Transfer) -> None:
        targets = {
            *self._everything,
            *self._by_transfer.get(transfer.transfer_id, ()),
            *self._by_wallet.get(transfer.from_wallet_id, ()),
            *self._by_wallet.get(transfer.to_wallet_id, ()),
        }
        for subscription in targets:
            if not subscription.wanted.wants(transfer) or subscription._push(transfer):
                continue
            WATCH_TOO_SLOW.inc()
            subscription._end(
                WatchTooSlowError(
                    f"too slow: more than {subscription.capacity} changes waited for this "
                    "stream; resubscribe (GetTransfer/ListTransfers give the current state)"
                ),
                drop_queued=True,
            )
            self._remove(subscription)

    # --- the poll loop ---------------------------------------------------------------

    async def _poll_loop(self, run: _Run) -> None:
        seen: collections.OrderedDict[str, int] = collections.OrderedDict()

        def is_news(transfer: Transfer) -> bool:
            rank = transfer.state.progress  # a watcher never sees a transfer step back
            previous = seen.get(transfer.transfer_id)
            if previous is not None and previous >= rank:
                return False
            seen[transfer.transfer_id] = rank
            seen.move_to_end(transfer.transfer_id)
            while len(seen) > MEMORY:
                seen.popitem(last=False)
            return True

        try:
            with self.notifier.subscribe() as local:
                since = utcnow() - POLL_OVERLAP
                for transfer in await self.repository.changed_since(since, POLL_BATCH):
                    is_news(transfer)  # before anyone subscribed: remembered, not sent
                run.primed = True
                for subscription in list(self._subscribers):
                    subscription._wakeup.set()
                next_poll = time.monotonic() + self.poll_seconds
                while True:
                    pending: list[Transfer] = []
                    timeout = next_poll - time.monotonic()
                    if timeout > 0:
                        with contextlib.suppress(TimeoutError):
                            pending.append(await asyncio.wait_for(local.get(), timeout))
                        while not local.empty():
                            pending.append(local.get_nowait())
                    else:
                        poll_started = utcnow()
                        batch = await self.repository.changed_since(since, POLL_BATCH)
                        pending.extend(batch)
                        if len(batch) >= POLL_BATCH and batch[-1].updated_at > since:
                            # More changed than one batch: continue from the last at once.
                            since = batch[-1].updated_at
                            next_poll = time.monotonic()
                        else:
                            since = poll_started - POLL_OVERLAP
                            next_poll = time.monotonic() + self.poll_seconds
                    for transfer in pending:
                        if is_news(transfer):
                            self._fan_out(transfer)
        except asyncio.CancelledError:
            raise
        except Exception as error:
            # The database failed: every stream ends with the error (UNAVAILABLE for a
            # lost connection) as its own poll would have; the next subscriber restarts.
            log.warning("watch feed stopped: %s", error)
            if self._run is run:
                self._run = None
            for subscription in list(self._subscribers):
                subscription._end(error, drop_queued=False)
                self._remove(subscription)
