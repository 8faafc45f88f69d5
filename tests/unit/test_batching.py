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
