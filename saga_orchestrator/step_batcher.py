"""The step calls of concurrent sagas, sent to WalletService as BatchApplyTransferSteps.

:class:`StepBatcher` is a :class:`~saga_orchestrator.gateway.WalletGateway`: the runner
calls ``call_step`` exactly as on the plain gateway and gets exactly what the single
call would give (``replayed``, or :class:`StepFailedError` with the same
classification). What changes is the wire: calls that arrive together leave together.

- **When a batch leaves** is the group commit's rule (``storage.batching``, shared
  with the saga's and the wallet service's writes), with one difference: a batch is
  started at the end of the event-loop turn in which its first step was issued, not
  by that step itself, so the steps that many sagas issue in one turn (all those
  woken by one answer) leave together instead of the first of them alone. At most
  ``max_in_flight`` calls are outstanding; steps that arrive while none is free wait
  and leave together as soon as one answers, at most ``max_batch`` each. There is no
  linger: at low load a step waits one loop turn; the busier WalletService is, the
  bigger the batches.
- **A batch of one is the single call**, sent in its caller's context: it carries the
  saga's audit id (``x-audit-id``) and trace like an unbatched step, and skips the
  batch's per-item work on the server.
- **One step per transfer.** A batch never holds two steps of one transfer (the
  server refuses a repeated transfer_id within a batch): the later one waits for the
  next batch, in call order. A saga has one step in flight anyway: this is the guard.
- **Failures.** An item's error is its own (``gateway.step_outcome``). A failure of
  the whole call (UNAVAILABLE, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED, or the batch
  refused) is every item's transient failure (``StepError.whole_batch``): the runner
  retries each step with the same request_id, which the server answers as a replay if
  the step had in fact been applied. A server without the batch RPC (UNIMPLEMENTED)
  switches this batcher to single calls for good.
- **Deadlines.** A step's deadline counts from its call: a batch's timeout is the
  earliest remaining deadline of its steps, and a step still queued at its deadline
  fails as DEADLINE_EXCEEDED (transient) without being sent.
- **Cancellation.** A caller cancelled before its step left takes it out of the batch;
  once sent, the answer is dropped (as a cancelled single call's would be).

The audit trail of a batched step: the server gives each item its own audit id (a
batch ignores ``x-audit-id``), so the step's ledger events carry the item's id; its
audit row holds the step request (``transfer_id``) and the batch it came in, and the
transfer row holds the CreateTransfer's audit id (docs/saga.md).
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from saga_orchestrator.gateway import StepCall, StepFailedError, StepOutcome, WalletInfo
from saga_orchestrator.step_errors import StepError
from wallet_platform.failpoints import failpoint
from wallet_platform.server.batches import MAX_BATCH_ITEMS
from wallet_platform.storage.batching import BatchScheduler

log = logging.getLogger(__name__)

# The most steps one batch may carry: the server's cap.
MAX_STEP_BATCH = MAX_BATCH_ITEMS
# Batch calls outstanding at once (measured: docs/benchmarks.md).
BATCHES_IN_FLIGHT = 2


class BatchingGateway(Protocol):
    """What the batcher needs of the wallet gateway (``GrpcWalletGateway``)."""

    async def call_step(self, call: StepCall, deadline: float) -> bool: ...

    async def apply_steps(
        self, calls: Sequence[StepCall], deadline: float
    ) -> list[StepOutcome]: ...

    async def get_wallet(self, wallet_id: str, deadline: float) -> WalletInfo: ...


@dataclass(eq=False)
class QueuedStep:
    """A step waiting for its batch: its call, when its caller stops waiting (loop
    time), its answer, and its caller's context (audit id, trace) for a lone send."""

    call: StepCall
    expires: float
    future: asyncio.Future[bool]
    context: contextvars.Context = field(default_factory=contextvars.copy_context)


class StepBatcher(BatchScheduler[QueuedStep]):
    """Batches ``call_step`` calls over ``gateway``; ``get_wallet`` passes through."""

    def __init__(
        self,
        gateway: BatchingGateway,
        *,
        max_batch: int = 500,
        max_in_flight: int = BATCHES_IN_FLIGHT,
    ) -> None:
        if not 1 <= max_batch <= MAX_STEP_BATCH:
            raise ValueError(f"max_batch must be 1..{MAX_STEP_BATCH}, got {max_batch}")
        if max_in_flight < 1:
            raise ValueError(f"max_in_flight must be at least 1, got {max_in_flight}")
        super().__init__(max_batch=max_batch, max_in_flight=max_in_flight, task_name="step-batch")
        self._gateway = gateway
        self._single_only = False
        self._kick_due = False
        # Counters for benchmarks and tests.
        self.batches = 0
        self.batched_steps = 0

    async def call_step(self, call: StepCall, deadline: float) -> bool:
        if self._single_only:
            return await self._gateway.call_step(call, deadline)
        loop = asyncio.get_running_loop()
        item = QueuedStep(call, loop.time() + deadline, loop.create_future())
        self._enqueue(item)
        # Cancelling the caller cancels the future: the step is dropped if not yet sent.
        return await item.future

    async def get_wallet(self, wallet_id: str, deadline: float) -> WalletInfo:
        return await self._gateway.get_wallet(wallet_id, deadline)

    async def close(self) -> None:
        """Stop the calls in flight and close the gateway (``SagaComponent.stop``, after
        the runner cancelled its sagas: nobody waits for those answers any more, as
        for a cancelled single call; the sagas' next owner repeats their steps)."""
        for task in list(self._tasks):
            task.cancel()
        await self._wait_idle()
        close = getattr(self._gateway, "close", None)
        if close is not None:
            await close()

    def _enqueue(self, item: QueuedStep) -> None:
        self._queue.add(item, self.conflict_keys(item))
        if not self._kick_due:  # once per loop turn, in no saga's context
            self._kick_due = True
            asyncio.get_running_loop().call_soon(self._turn_end, context=contextvars.Context())

    def _turn_end(self) -> None:
        self._kick_due = False
        self._kick()

    def conflict_keys(self, item: QueuedStep) -> list[str]:
        return [item.call.transfer_id]

    async def _run(self, batch: list[QueuedStep]) -> None:
        try:
            outcomes = await self._send(batch)
        except BaseException:  # cancelled (loop shutting down): release the callers
            for item in batch:
                item.future.cancel()
            raise
        for item, outcome in zip(batch, outcomes, strict=True):
            if item.future.done():  # cancelled while in flight: nobody to answer
                continue
            if isinstance(outcome, StepError):
                item.future.set_exception(StepFailedError(outcome))
            else:
                item.future.set_result(outcome)

    async def _send(self, queued: list[QueuedStep]) -> list[StepOutcome]:
        """Every step's outcome (never raises but for cancellation)."""
        now = asyncio.get_running_loop().time()
        outcomes: list[StepOutcome | None] = [
            _expired(item.call) if item.expires <= now else None for item in queued
        ]
        batch = [item for item, outcome in zip(queued, outcomes, strict=True) if outcome is None]
        if not batch:
            return [outcome for outcome in outcomes if outcome is not None]
        timeout = min(item.expires for item in batch) - now
        self.batches += 1
        self.batched_steps += len(batch)
        try:
            if len(batch) == 1:  # the single call, with its caller's audit id and trace
                single = self._gateway.call_step(batch[0].call, timeout)
                sent: list[StepOutcome] = [
                    await asyncio.create_task(single, context=batch[0].context)
                ]
            else:  # a batch belongs to no single saga: no audit id, no trace
                many = self._gateway.apply_steps([item.call for item in batch], timeout)
                sent = await asyncio.create_task(many, context=contextvars.Context())
                # Every step of the batch answered (applied or refused), no saga told yet.
                await failpoint("saga.after_step_batch")
        except StepFailedError as failed:
            if len(batch) > 1 and failed.error.code == "UNIMPLEMENTED":
                log.warning("WalletService has no BatchApplyTransferSteps: single step calls")
                self._single_only = True
            sent = [failed.error] * len(batch)
        except Exception as error:  # a bug or an unexpected error: each step retries
            sent = [_unexpected(error)] * len(batch)
        answers = iter(sent)
        return [outcome if outcome is not None else next(answers) for outcome in outcomes]


def _expired(call: StepCall) -> StepError:
    return StepError(
        code="DEADLINE_EXCEEDED",
        reason="",
        message=f"the {call.step.value} step waited its whole deadline for a batch",
        whole_batch=True,
    )


def _unexpected(error: Exception) -> StepError:
    return StepError(
        code="UNKNOWN", reason="", message=f"{type(error).__name__}: {error}", whole_batch=True
    )
