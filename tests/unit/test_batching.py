"""The shared group-commit scheduler: what may travel together, and when a batch leaves."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from wallet_platform.storage.batching import BatchScheduler


@dataclass
class Item:
    name: str
    keys: tuple[str, ...]
    future: asyncio.Future[str] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


async def settle() -> None:
    """Let submitted tasks enqueue and started batches record themselves."""
    for _ in range(5):
        await asyncio.sleep(0)


class Recorder(BatchScheduler[Item]):
    """Records each batch; a batch finishes when the test releases it."""

    def __init__(self, *, max_batch: int = 64, max_in_flight: int = 1) -> None:
        super().__init__(max_batch=max_batch, max_in_flight=max_in_flight, task_name="test")
        self.batches: list[list[str]] = []
        self.release = asyncio.Event()

    def conflict_keys(self, item: Item) -> tuple[str, ...]:
        return item.keys

    async def _run(self, batch: list[Item]) -> None:
        self.batches.append([item.name for item in batch])
        await self.release.wait()
        for item in batch:
            item.future.set_result(item.name)

    async def submit(self, item: Item) -> str:
        self._enqueue(item)
        return await item.future


async def test_items_arriving_during_a_batch_leave_together_without_conflicts() -> None:
    scheduler = Recorder(max_batch=3)
    first = asyncio.create_task(scheduler.submit(Item("a", ("w1",))))
    await settle()  # a lone item leaves at once
    assert scheduler.batches == [["a"]]
    names = ["b", "c", "d", "e", "f"]
    keys = [("w1",), ("w2",), ("w2",), ("w3",), ("w4",)]
    items = [Item(n, k) for n, k in zip(names, keys, strict=True)]
    rest = [asyncio.create_task(scheduler.submit(item)) for item in items]
    await settle()
    assert scheduler.batches == [["a"]]  # one batch in flight: the others wait
    scheduler.release.set()
    assert await asyncio.gather(first, *rest) == ["a", *names]
    # "d" shares w2 with "c", and "f" is over max_batch: both go in the batch after.
    assert scheduler.batches == [["a"], ["b", "c", "e"], ["d", "f"]]
    await scheduler._wait_idle()


async def test_in_flight_limit_and_a_cancelled_caller_is_dropped() -> None:
    scheduler = Recorder(max_in_flight=2)
    a = asyncio.create_task(scheduler.submit(Item("a", ("x",))))
    await settle()
    b = asyncio.create_task(scheduler.submit(Item("b", ("y",))))
    await settle()
    gone = Item("gone", ("z",))
    gone.future.cancel()  # its caller went away before its turn
    scheduler._enqueue(gone)
    c = asyncio.create_task(scheduler.submit(Item("c", ("z",))))
    await settle()
    assert scheduler.batches == [["a"], ["b"]]  # two in flight, "c" waits
    scheduler.release.set()
    assert await asyncio.gather(a, b, c) == ["a", "b", "c"]
    await scheduler._wait_idle()
    assert scheduler.batches == [["a"], ["b"], ["c"]]  # "gone" never ran


class CountingRecorder(Recorder):
    """Finishes each batch at once and counts every ``conflict_keys`` call."""

    def __init__(self, *, max_batch: int = 64) -> None:
        super().__init__(max_batch=max_batch)
        self.release.set()
        self.key_lookups = 0

    def conflict_keys(self, item: Item) -> tuple[str, ...]:
        self.key_lookups += 1
        return item.keys


async def test_a_hot_wallet_queue_costs_linear_work_and_blocks_no_other_wallet() -> None:
    """10,000 queued writes to one wallet: one per batch, in order, each looked at a
    bounded number of times (not once per batch it waits through); the writes to
    other wallets queued behind them leave in the first batches."""
    hot = 10_000
    scheduler = CountingRecorder()
    blocker = Item("blocker", ("w-hot",))
    scheduler.release.clear()  # hold the first batch so the whole queue builds up
    first = asyncio.create_task(scheduler.submit(blocker))
    await settle()
    items = [Item(f"hot-{n}", ("w-hot", f"key-hot-{n}")) for n in range(hot)]
    items += [Item(f"cold-{n}", (f"w-cold-{n}", f"key-cold-{n}")) for n in range(100)]
    for item in items:
        scheduler._enqueue(item)
    scheduler.release.set()
    await first
    await asyncio.gather(*(item.future for item in items))
    await scheduler._wait_idle()

    hot_order = [name for batch in scheduler.batches for name in batch if name.startswith("hot")]
    assert hot_order == [f"hot-{n}" for n in range(hot)]
    assert all(sum(n.startswith("hot") for n in batch) <= 1 for batch in scheduler.batches)
    cold_batches = [i for i, batch in enumerate(scheduler.batches) if "cold-99" in batch]
    assert cold_batches and cold_batches[0] <= 3  # not behind the 10,000 hot writes
    total = hot + 100 + 1
    assert scheduler.key_lookups == total  # once per item, when it arrives
    # Arrival, promotion to ready and leaving: a few looks per item, never per batch.
    assert scheduler._queue.examined <= 4 * total
    assert len(scheduler._queue) == 0


async def test_an_item_with_two_keys_waits_for_both_and_keeps_per_key_order() -> None:
    scheduler = Recorder()
    scheduler.release.clear()
    first = asyncio.create_task(scheduler.submit(Item("first", ("other",))))
    await settle()
    a = Item("a", ("w1",))
    b = Item("b", ("w2",))
    both = Item("both", ("w1", "w2"))
    after = Item("after", ("w2",))
    for item in (a, b, both, after):
        scheduler._enqueue(item)
    scheduler.release.set()
    await asyncio.gather(first, *(i.future for i in (a, b, both, after)))
    await scheduler._wait_idle()
    # "both" waits for a and b; "after" (w2) waits for "both" although w2 is free
    # of "b" by then: writes to one key leave in arrival order.
    assert scheduler.batches == [["first"], ["a", "b"], ["both"], ["after"]]
