"""The step batcher: which calls travel together, and what each caller gets back.

A fake gateway stands for WalletService: its batch call waits on a gate the test
opens, so "calls issued while a batch is in flight" is a state the test controls.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Sequence

import pytest

from saga_orchestrator.bootstrap import retry_policy, step_gateway
from saga_orchestrator.domain import StepName
from saga_orchestrator.gateway import (
    GrpcWalletGateway,
    StepCall,
    StepFailedError,
    StepOutcome,
    WalletInfo,
)
from saga_orchestrator.step_batcher import BATCHES_IN_FLIGHT, MAX_STEP_BATCH, StepBatcher
from saga_orchestrator.step_errors import StepError, is_final
from wallet_platform.config import Settings
from wallet_platform.server.batches import MAX_BATCH_ITEMS

caller_tag: contextvars.ContextVar[str] = contextvars.ContextVar("caller_tag", default="")


def call(transfer_id: str, step: StepName = StepName.DEBIT) -> StepCall:
    return StepCall(
        step=step,
        wallet_id="w-1",
        amount=5,
        transfer_id=transfer_id,
        request_id=f"{transfer_id}:{step.value}",
        currency="USD",
        to_wallet_id="w-2" if step is StepName.DEBIT else "",
    )


class FakeGateway:
    """Records every send; answers each step from ``outcomes`` (default: applied)."""

    def __init__(self) -> None:
        self.sends: list[tuple[str, list[str]]] = []  # ("single"|"batch", transfer ids)
        self.outcomes: dict[str, StepOutcome] = {}
        self.batch_error: BaseException | None = None
        self.gate = asyncio.Event()
        self.gate.set()
        self.sent = asyncio.Event()  # set once a first call was sent
        self.tags: list[str] = []
        self.timeouts: list[float] = []

    def outcome(self, c: StepCall) -> StepOutcome:
        return self.outcomes.get(c.transfer_id, False)

    async def call_step(self, c: StepCall, deadline: float) -> bool:
        self.sends.append(("single", [c.transfer_id]))
        self.sent.set()
        self.tags.append(caller_tag.get())
        self.timeouts.append(deadline)
        await self.gate.wait()
        result = self.outcome(c)
        if isinstance(result, StepError):
            raise StepFailedError(result)
        return result

    async def apply_steps(self, calls: Sequence[StepCall], deadline: float) -> list[StepOutcome]:
        self.sends.append(("batch", [c.transfer_id for c in calls]))
        self.sent.set()
        self.tags.append(caller_tag.get())
        self.timeouts.append(deadline)
        await self.gate.wait()
        if self.batch_error is not None:
            raise self.batch_error
        return [self.outcome(c) for c in calls]

    async def get_wallet(self, wallet_id: str, deadline: float) -> WalletInfo:
        return WalletInfo(wallet_id, "USD", False)


async def settle(*tasks: asyncio.Task[bool]) -> list[bool | BaseException]:
    return list(await asyncio.gather(*tasks, return_exceptions=True))


async def queued_behind_first(
    batcher: StepBatcher, gateway: FakeGateway, ids: list[str]
) -> list[asyncio.Task[bool]]:
    """Start ``ids[0]`` (it leaves alone and blocks on the gate), then queue the rest."""
    gateway.gate.clear()
    tasks = [asyncio.create_task(batcher.call_step(call(ids[0]), 5.0))]
    await gateway.sent.wait()  # the first send has started
    tasks += [asyncio.create_task(batcher.call_step(call(t), 5.0)) for t in ids[1:]]
    await asyncio.sleep(0)  # one loop turn: every task just created has enqueued its step
    return tasks


async def test_calls_issued_while_a_batch_is_in_flight_leave_together_in_call_order() -> None:
    gateway = FakeGateway()
    batcher = StepBatcher(gateway, max_batch=100, max_in_flight=1)
    ids = [f"t{n}" for n in range(11)]
    tasks = await queued_behind_first(batcher, gateway, ids)
    assert gateway.sends == [("single", ["t0"])]  # nothing else left while it was out
    gateway.gate.set()
    assert await settle(*tasks) == [False] * 11
    assert gateway.sends == [("single", ["t0"]), ("batch", ids[1:])]
    assert (batcher.batches, batcher.batched_steps) == (2, 11)


async def test_a_batch_never_exceeds_max_batch() -> None:
    gateway = FakeGateway()
    batcher = StepBatcher(gateway, max_batch=4, max_in_flight=1)
    ids = [f"t{n}" for n in range(11)]
    tasks = await queued_behind_first(batcher, gateway, ids)
    gateway.gate.set()
    await settle(*tasks)
    assert [ids for _, ids in gateway.sends] == [["t0"], ids[1:5], ids[5:9], ids[9:11]]


async def test_two_steps_of_one_transfer_never_share_a_batch() -> None:
    gateway = FakeGateway()
    batcher = StepBatcher(gateway, max_batch=100, max_in_flight=1)
    tasks = await queued_behind_first(batcher, gateway, ["t0", "a", "b"])
    tasks.append(asyncio.create_task(batcher.call_step(call("a", StepName.CREDIT), 5.0)))
    tasks.append(asyncio.create_task(batcher.call_step(call("c"), 5.0)))
    await asyncio.sleep(0)
    gateway.gate.set()
    assert await settle(*tasks) == [False] * 5
    assert [ids for _, ids in gateway.sends] == [["t0"], ["a", "b", "c"], ["a"]]
    for _, ids in gateway.sends:
        assert len(ids) == len(set(ids))


async def test_each_caller_gets_its_own_item_outcome() -> None:
    gateway = FakeGateway()
    gateway.outcomes = {
        "replay": True,
        "poor": StepError("FAILED_PRECONDITION", "INSUFFICIENT_FUNDS", "not enough"),
        "busy": StepError("UNAVAILABLE", "", "database unavailable"),
    }
    batcher = StepBatcher(gateway, max_batch=100, max_in_flight=1)
    tasks = await queued_behind_first(batcher, gateway, ["t0", "fresh", "replay", "poor", "busy"])
    gateway.gate.set()
    results = await settle(*tasks)
    assert gateway.sends[1] == ("batch", ["fresh", "replay", "poor", "busy"])
    assert results[:3] == [False, False, True]
    poor, busy = results[3], results[4]
    assert isinstance(poor, StepFailedError) and isinstance(busy, StepFailedError)
    assert poor.error == gateway.outcomes["poor"]
    assert is_final(poor.error, StepName.DEBIT)
    assert busy.error == gateway.outcomes["busy"]
    assert not is_final(busy.error, StepName.DEBIT)


@pytest.mark.parametrize("code", ["UNAVAILABLE", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED"])
async def test_a_whole_call_failure_is_every_items_transient_failure(code: str) -> None:
    gateway = FakeGateway()
    failure = StepError(code, "", "the batch call failed", whole_batch=True)
    gateway.batch_error = StepFailedError(failure)
    batcher = StepBatcher(gateway, max_batch=100, max_in_flight=1)
    tasks = await queued_behind_first(batcher, gateway, ["t0", "a", "b", "c"])
    gateway.gate.set()
    results = await settle(*tasks)
    assert results[0] is False  # the lone first call was not part of the batch
    for result in results[1:]:
        assert isinstance(result, StepFailedError)
        assert result.error == failure
        assert not is_final(result.error, StepName.DEBIT)


async def test_a_refused_batch_is_transient_even_with_a_final_looking_code() -> None:
    """INVALID_ARGUMENT on the whole call is about the batch, not any step: retry."""
    refused = StepError("INVALID_ARGUMENT", "", "operations has 1001 items", whole_batch=True)
    assert not is_final(refused, StepName.DEBIT)
    assert is_final(StepError("INVALID_ARGUMENT", "", "bad amount"), StepName.DEBIT)


async def test_an_unexpected_error_fails_every_item_transiently() -> None:
    gateway = FakeGateway()
    gateway.batch_error = RuntimeError("boom")
    batcher = StepBatcher(gateway, max_batch=100, max_in_flight=1)
    tasks = await queued_behind_first(batcher, gateway, ["t0", "a", "b"])
    gateway.gate.set()
    results = await settle(*tasks)
    for result in results[1:]:
        assert isinstance(result, StepFailedError)
        assert (result.error.code, result.error.whole_batch) == ("UNKNOWN", True)
        assert "boom" in result.error.message


async def test_unimplemented_switches_to_single_calls() -> None:
    gateway = FakeGateway()
    gateway.batch_error = StepFailedError(
        StepError("UNIMPLEMENTED", "", "unknown method", whole_batch=True)
    )
    batcher = StepBatcher(gateway, max_batch=100, max_in_flight=1)
    tasks = await queued_behind_first(batcher, gateway, ["t0", "a", "b"])
    gateway.gate.set()
    results = await settle(*tasks)
    assert all(isinstance(r, StepFailedError) for r in results[1:])  # retried by the runner
    gateway.sends.clear()
    assert await settle(
        asyncio.create_task(batcher.call_step(call("a"), 5.0)),
        asyncio.create_task(batcher.call_step(call("b"), 5.0)),
    ) == [False, False]
    assert gateway.sends == [("single", ["a"]), ("single", ["b"])]


async def test_a_cancelled_caller_leaves_the_batch_before_it_is_sent() -> None:
    gateway = FakeGateway()
    batcher = StepBatcher(gateway, max_batch=100, max_in_flight=1)
    tasks = await queued_behind_first(batcher, gateway, ["t0", "a", "gone", "b"])
    tasks[2].cancel()
    gateway.gate.set()
    results = await settle(*tasks)
    assert isinstance(results[2], asyncio.CancelledError)
    assert gateway.sends[1] == ("batch", ["a", "b"])
    assert results[1] is False and results[3] is False


async def test_a_step_queued_past_its_deadline_is_not_sent() -> None:
    gateway = FakeGateway()
    batcher = StepBatcher(gateway, max_batch=100, max_in_flight=1)
    tasks = await queued_behind_first(batcher, gateway, ["t0", "a"])
    late = asyncio.create_task(batcher.call_step(call("late"), 0.0))  # expires at once
    await asyncio.sleep(0)
    gateway.gate.set()
    results = await settle(*tasks, late)
    assert gateway.sends[1] == ("single", ["a"])  # "late" was dropped from the batch
    assert all("late" not in ids for _, ids in gateway.sends)
    expired = results[2]
    assert isinstance(expired, StepFailedError)
    assert expired.error.code == "DEADLINE_EXCEEDED" and not is_final(expired.error, StepName.DEBIT)


async def test_the_batch_timeout_is_the_earliest_remaining_deadline() -> None:
    gateway = FakeGateway()
    batcher = StepBatcher(gateway, max_batch=100, max_in_flight=1)
    gateway.gate.clear()
    first = asyncio.create_task(batcher.call_step(call("t0"), 5.0))
    await gateway.sent.wait()
    short = asyncio.create_task(batcher.call_step(call("a"), 2.0))
    long = asyncio.create_task(batcher.call_step(call("b"), 9.0))
    await asyncio.sleep(0)
    gateway.gate.set()
    await settle(first, short, long)
    assert gateway.sends[1] == ("batch", ["a", "b"])
    assert 0 < gateway.timeouts[1] <= 2.0


async def test_a_lone_step_is_the_single_call_in_its_callers_context() -> None:
    """A lone step carries its saga's audit id and trace (read from the caller's
    context); a batch belongs to no saga and runs in an empty context."""
    gateway = FakeGateway()
    batcher = StepBatcher(gateway, max_batch=100, max_in_flight=1)

    async def tagged(transfer_id: str) -> bool:
        caller_tag.set(f"saga {transfer_id}")
        return await batcher.call_step(call(transfer_id), 5.0)

    gateway.gate.clear()
    first = asyncio.create_task(tagged("t0"))
    await gateway.sent.wait()
    rest = [asyncio.create_task(tagged(t)) for t in ("a", "b")]
    await asyncio.sleep(0)
    gateway.gate.set()
    assert await settle(first, *rest) == [False, False, False]
    assert gateway.sends == [("single", ["t0"]), ("batch", ["a", "b"])]
    assert gateway.tags == ["saga t0", ""]


async def test_batches_in_flight_are_limited() -> None:
    gateway = FakeGateway()
    batcher = StepBatcher(gateway, max_batch=2, max_in_flight=2)
    gateway.gate.clear()
    tasks = [asyncio.create_task(batcher.call_step(call(f"t{n}"), 5.0)) for n in range(7)]
    for _ in range(5):
        await asyncio.sleep(0)
    assert len(gateway.sends) == 2  # two calls out, the rest waiting
    gateway.gate.set()
    assert await settle(*tasks) == [False] * 7
    assert sorted(t for _, ids in gateway.sends for t in ids) == sorted(f"t{n}" for n in range(7))


async def test_steps_issued_in_one_loop_turn_leave_together() -> None:
    """Nothing in flight: the steps that sagas issue in the same turn (all those woken
    by one answer) still share one call instead of the first going alone."""
    gateway = FakeGateway()
    batcher = StepBatcher(gateway, max_batch=100, max_in_flight=2)
    ids = [f"t{n}" for n in range(5)]
    results = await asyncio.gather(*(batcher.call_step(call(t), 5.0) for t in ids))
    assert results == [False] * 5
    assert gateway.sends == [("batch", ids)]


async def test_close_cancels_the_calls_in_flight() -> None:
    gateway = FakeGateway()
    batcher = StepBatcher(gateway, max_batch=100, max_in_flight=1)
    gateway.gate.clear()
    waiting = [asyncio.create_task(batcher.call_step(call(t), 5.0)) for t in ("a", "b")]
    await gateway.sent.wait()
    await batcher.close()
    results = await settle(*waiting)
    assert all(isinstance(r, asyncio.CancelledError) for r in results)
    assert not gateway.gate.is_set()  # the batch never got its answer


def test_the_setting_switches_batching_and_widens_the_bulkhead() -> None:
    plain = GrpcWalletGateway(lambda: None)  # never called: no channel is opened
    on = Settings(saga_step_batch=1, saga_step_batch_max=300)
    assert isinstance(step_gateway(on, plain), StepBatcher)
    assert retry_policy(on).max_concurrent_calls == 300 * BATCHES_IN_FLIGHT
    off = Settings(saga_step_batch=0)
    assert step_gateway(off, plain) is plain
    assert retry_policy(off).max_concurrent_calls == 64
    with pytest.raises(SystemExit, match="WALLET_SAGA_STEP_BATCH must be 0 or 1"):
        step_gateway(Settings(saga_step_batch=2), plain)
    with pytest.raises(SystemExit, match=r"WALLET_SAGA_STEP_BATCH_MAX must be 1\.\.1000"):
        step_gateway(Settings(saga_step_batch_max=1001), plain)
    with pytest.raises(SystemExit, match="WALLET_SAGA_STEP_BATCH_MAX"):
        step_gateway(Settings(saga_step_batch=0, saga_step_batch_max=0), plain)


def test_the_batch_size_is_bounded_by_the_servers_cap() -> None:
    assert MAX_STEP_BATCH == MAX_BATCH_ITEMS
    gateway = FakeGateway()
    with pytest.raises(ValueError, match="max_batch"):
        StepBatcher(gateway, max_batch=MAX_STEP_BATCH + 1)
    with pytest.raises(ValueError, match="max_batch"):
        StepBatcher(gateway, max_batch=0)
