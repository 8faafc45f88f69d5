"""In-process fan-out of saga state changes (for WatchTransfers and CreateTransfer's wait).

Changes made by this process arrive here at once; changes made by other replicas are
found by the watch feed polling the table (see ``watch_feed``, the one subscriber).
Subscribers get a bounded queue: a subscriber that does not keep up loses the oldest
changes rather than growing memory without limit (the feed's next poll of the table,
the source of truth, finds them again).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator

from saga_orchestrator.domain import Transfer

QUEUE_SIZE = 1000


class TransferNotifier:
    def __init__(self) -> None:
        self._subscribers: set[asyncio.Queue[Transfer]] = set()
        self._waiters: dict[str, set[TransferWaiter]] = {}

    def publish(self, transfer: Transfer) -> None:
        """Called after a change was committed."""
        for queue in list(self._subscribers):
            if queue.full():
                with contextlib.suppress(asyncio.QueueEmpty):
                    queue.get_nowait()
            queue.put_nowait(transfer)
        for waiter in list(self._waiters.get(transfer.transfer_id, ())):
            waiter.notify(transfer)

    @contextlib.contextmanager
    def subscribe(self) -> Iterator[asyncio.Queue[Transfer]]:
        queue: asyncio.Queue[Transfer] = asyncio.Queue(QUEUE_SIZE)
        self._subscribers.add(queue)
        try:
            yield queue
        finally:
            self._subscribers.discard(queue)

    @contextlib.contextmanager
    def waiter(self, transfer_id: str) -> Iterator[TransferWaiter]:
        """Follows one transfer's changes made by this process (the newest in ``latest``)."""
        waiter = TransferWaiter()
        self._waiters.setdefault(transfer_id, set()).add(waiter)
        try:
            yield waiter
        finally:
            waiters = self._waiters.get(transfer_id)
            if waiters is not None:
                waiters.discard(waiter)
                if not waiters:
                    del self._waiters[transfer_id]


class TransferWaiter:
    """Set whenever its transfer changes; ``latest`` is the newest state published."""

    def __init__(self) -> None:
        self.changed = asyncio.Event()
        self.latest: Transfer | None = None

    def notify(self, transfer: Transfer) -> None:
        self.latest = transfer
        self.changed.set()
