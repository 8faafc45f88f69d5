"""The step calls of concurrent sagas, sent to WalletService as BatchApplyTransferSteps.

:class:`StepBatcher` is a :class:`~saga_orchestrator.gateway.WalletGateway`: the runner
calls ``call_step`` exactly as on the plain gateway and gets exactly what the single
call would give (``replayed``, or :class:`StepFailedError` with the same
classification). What changes is the wire: calls that arrive together leave together.

- **When a batch leaves.** A call is queued and a send is scheduled for the end of the
  current event-loop iteration (or after ``linger`` seconds), so the calls that many
  saga tasks issue in one iteration share a batch. At most ``max_in_flight`` batches
  are outstanding; while they are, new calls wait and leave together as soon as one
  answers (the busier WalletService is, the bigger the batches). A batch holds at
  most ``max_batch`` steps.
- **A batch of one is the single call**, sent in its caller's context: it carries the
  saga's audit id (``x-audit-id``) and trace like an unbatched step, and skips the
  batch's per-item work on the server.
- **One step per transfer.** A batch never holds two steps of one transfer, and a
  transfer's step is not sent while another of its steps is still outstanding (the
  server refuses a repeated transfer_id within a batch; across batches the two would
  race). A saga has one step in flight anyway: this is the guard.
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
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from saga_orchestrator.gateway import StepCall, StepFailedError, StepOutcome, WalletInfo
from saga_orchestrator.step_errors import StepError

log = logging.getLogger(__name__)

# The most steps one batch may carry: the server's cap (wallet_platform.server.batches).
MAX_STEP_BATCH = 1000


class BatchingGateway(Protocol):
    """What the batcher needs of the wallet gateway (``GrpcWalletGateway``)."""

    async def call_step(self, call: StepCall, deadline: float) -> bool: ...

    async def apply_steps(
        self, calls: Sequence[StepCall], deadline: float
    ) -> list[StepOutcome]: ...

    async def get_wallet(self, wallet_id: str, deadline: float) -> WalletInfo: ...


@dataclass(eq=False)
class _Waiting:
    """A queued step: its call, when its caller stops waiting (loop time), its answer."""

    call: StepCall
    expires: float
    future: asyncio.Future[bool]
    context: contextvars.Context = field(default_factory=contextvars.copy_context)


class StepBatcher:
    """Batches ``call_step`` calls over ``gateway``; ``get_wallet`` passes through."""

    def __init__(
        self,
        gateway: BatchingGateway,
        *,
        max_batch: int = 500,
        max_in_flight: int = 4,
        linger: float = 0.0,
    ) -> None:
        if not 1 <= max_batch <= MAX_STEP_BATCH:
            raise ValueError(f"max_batch must be 1..{MAX_STEP_BATCH}, got {max_batch}")
        if max_in_flight < 1:
            raise ValueError(f"max_in_flight must be at least 1, got {max_in_flight}")
        self._gateway = gateway
        self._max_batch = max_batch
        self._max_in_flight = max_in_flight
        self._linger = max(0.0, linger)
        self._waiting: deque[_Waiting] = deque()
        self._in_flight = 0
        self._outstanding: set[str] = set()  # transfer ids of steps sent, not answered
        self._scheduled = False
        self._sends: set[asyncio.Task[None]] = set()
        self._single_only = False

    async def call_step(self, call: StepCall, deadline: float) -> bool:
        if self._single_only:
            return await self._gateway.call_step(call, deadline)
        loop = asyncio.get_running_loop()
        item = _Waiting(call, loop.time() + deadline, loop.create_future())
        self._waiting.append(item)
        self._schedule()
        # Cancelling the caller cancels the future: the step is skipped if not yet sent.
        return await item.future

    async def get_wallet(self, wallet_id: str, deadline: float) -> WalletInfo:
        return await self._gateway.get_wallet(wallet_id, deadline)

    async def close(self) -> None:
        """Wait for the batches in flight, then close the gateway (``stop``)."""
        await asyncio.gather(*self._sends, return_exceptions=True)
        close = getattr(self._gateway, "close", None)
        if close is not None:
            await close()

    # --- forming and sending batches ------------------------------------------------

    def _schedule(self) -> None:
        if self._scheduled or not self._waiting or self._in_flight >= self._max_in_flight:
            return
        self._scheduled = True
        loop = asyncio.get_running_loop()
        # An empty context: a batch belongs to no single saga (no audit id, no trace).
        if self._linger:
            loop.call_later(self._linger, self._flush, context=contextvars.Context())
        else:
            loop.call_soon(self._flush, context=contextvars.Context())

    def _flush(self) -> None:
        self._scheduled = False
        loop = asyncio.get_running_loop()
        while self._waiting and self._in_flight < self._max_in_flight:
            batch = self._take(loop.time())
            if not batch:
                break
            self._in_flight += 1
            self._outstanding.update(item.call.transfer_id for item in batch)
            if len(batch) == 1:  # the single call, in its caller's context
                task = loop.create_task(self._send(batch), context=batch[0].context)
            else:
                task = loop.create_task(self._send(batch))
            self._sends.add(task)
            task.add_done_callback(self._sends.discard)

    def _take(self, now: float) -> list[_Waiting]:
        """The next batch, in call order: live steps of distinct transfers that have no
        step outstanding; the steps passed over keep their place for the next batch."""
        batch: list[_Waiting] = []
        in_batch: set[str] = set()
        passed_over: list[_Waiting] = []
        while self._waiting and len(batch) < self._max_batch:
            item = self._waiting.popleft()
            transfer_id = item.call.transfer_id
            if item.future.done():  # its caller was cancelled
                continue
            if transfer_id in in_batch or transfer_id in self._outstanding:
                passed_over.append(item)
                continue
            if item.expires <= now:
                item.future.set_exception(StepFailedError(_expired(item.call)))
                continue
            in_batch.add(transfer_id)
            batch.append(item)
        self._waiting.extendleft(reversed(passed_over))
        return batch

    async def _send(self, batch: list[_Waiting]) -> None:
        loop = asyncio.get_running_loop()
        timeout = max(0.001, min(item.expires for item in batch) - loop.time())
        try:
            if len(batch) == 1:
                outcomes: list[StepOutcome] = [
                    await self._gateway.call_step(batch[0].call, timeout)
                ]
            else:
                outcomes = await self._gateway.apply_steps([i.call for i in batch], timeout)
        except StepFailedError as failed:
            if len(batch) > 1 and failed.error.code == "UNIMPLEMENTED":
                log.warning("WalletService has no BatchApplyTransferSteps: single step calls")
                self._single_only = True
            outcomes = [failed.error] * len(batch)
        except Exception as error:  # a bug or an unexpected error: each step retries
            outcomes = [_unexpected(error)] * len(batch)
        except BaseException:  # cancelled (loop shutting down): release the callers
            for item in batch:
                item.future.cancel()
            raise
        finally:
            self._in_flight -= 1
            self._outstanding.difference_update(item.call.transfer_id for item in batch)
            self._schedule()
        for item, outcome in zip(batch, outcomes, strict=True):
            if item.future.done():  # cancelled while in flight: nobody to answer
                continue
            if isinstance(outcome, StepError):
                item.future.set_exception(StepFailedError(outcome))
            else:
                item.future.set_result(outcome)


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
