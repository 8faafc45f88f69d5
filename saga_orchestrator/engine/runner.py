"""Driving one saga to a terminal state: call the step its state asks for, persist, repeat.

The loop for one saga is simple because every hard part lives elsewhere:

- *what* to call and where it leads comes from ``domain`` (``STEP_FOR_STATE``,
  ``NEXT_STATE``, ``is_final``);
- *persistence* is fenced by the lease in ``repository``: the call is recorded before
  it is made (``begin_attempt``) and its outcome with the next state after
  (``finish_step``), so a crash anywhere leaves a saga that the sweeper can resume.
  The first call of the next step is recorded by that same ``finish_step``
  transaction (and the first debit by CreateTransfer's insert): one transaction per
  step boundary; retries record each further call with ``begin_attempt``;
- *repeating a call is safe* because each step's request_id is derived from the
  transfer (``<transfer_id>:debit``): WalletService replays the original outcome.

Tracing (when on): each round of the loop is a ``saga run`` span, a child of the
context stored with the saga at CreateTransfer (never of whatever task spawned the
driver), so a saga resumed by the sweeper, on any replica, continues the original
trace; each step call is a CLIENT span inside it (the gateway sends its context).

Retries (tenacity): a transient error (see ``domain.is_final``) is retried with
exponential backoff and jitter, each call bounded by a gRPC deadline, and with no
overall limit: once a call may have moved money its outcome must be learned, and once
a saga is DEBITED it must end COMPLETED or COMPENSATED. Every failed call is written
to the saga (attempts, last error, next attempt time) so a saga that keeps failing is
visible in GetTransferSummary rather than stuck silently.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, TypeVar

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_never,
    wait_exponential,
    wait_random,
)

from saga_orchestrator.domain import (
    NEXT_STATE,
    STEP_FOR_STATE,
    StepError,
    StepName,
    StepOutcome,
    Transfer,
    TransferState,
    is_final,
    step_request_id,
)
from saga_orchestrator.gateway import StepCall, StepFailedError, WalletGateway
from saga_orchestrator.mapping import transfer_to_proto
from saga_orchestrator.notifier import TransferNotifier
from saga_orchestrator.repository import LeaseLostError, TransferRepository
from wallet.v1 import events_pb2
from wallet_platform.clock import Clock, utcnow
from wallet_platform.failpoints import failpoint
from wallet_platform.messaging.outbox.rows import outbox_row
from wallet_platform.observability import tracing
from wallet_platform.observability.logs import log_context

log = logging.getLogger(__name__)

T = TypeVar("T")

# The saga milestone each terminal state publishes through the outbox.
MILESTONES: dict[TransferState, tuple[str, Any]] = {
    TransferState.COMPLETED: ("completed", events_pb2.TransferCompleted),
    TransferState.FAILED: ("failed", events_pb2.TransferFailed),
    TransferState.COMPENSATED: ("compensated", events_pb2.TransferCompensated),
}


def milestone_outbox_row(transfer: Transfer, now: datetime) -> dict[str, Any] | None:
    """The outbox row announcing a terminal saga (message_id ``<transfer_id>:<state>``)."""
    milestone = MILESTONES.get(transfer.state)
    if milestone is None:
        return None
    suffix, message_class = milestone
    return outbox_row(
        f"{transfer.transfer_id}:{suffix}",
        f"wallet.transfer_{suffix}",
        message_class(transfer=transfer_to_proto(transfer)),
        now,
        tracing.current_traceparent(),
    )


@dataclass(frozen=True)
class RetryPolicy:
    """How hard the runner tries. All durations in seconds."""

    step_deadline: float = 5.0  # gRPC deadline of one call
    initial_backoff: float = 0.05
    max_backoff: float = 2.0
    jitter: float = 0.2
    lease: float = 15.0  # renewed at every call; must outlast deadline + backoff
    # Step calls in flight per replica. A bulkhead: after an outage hundreds of sagas
    # resume at once, and flooding WalletService past its capacity would only make
    # every call time out and be retried (congestion collapse).
    max_concurrent_calls: int = 64

    def __post_init__(self) -> None:
        if self.lease <= self.step_deadline + self.max_backoff:
            log.warning(
                "saga lease %.1fs is not longer than a call plus a backoff (%.1fs): "
                "replicas may duplicate work (still safe, just wasteful)",
                self.lease,
                self.step_deadline + self.max_backoff,
            )

    def wait(self) -> Any:
        # Exponential growth capped at max_backoff, plus random jitter so sagas that
        # failed together (one outage) do not retry in lockstep.
        return wait_exponential(multiplier=self.initial_backoff, max=self.max_backoff) + (
            wait_random(0, self.jitter)
        )


def _is_transient_for(step: StepName) -> Callable[[BaseException], bool]:
    """Retry predicate of one step: everything except a final rejection and a lost lease."""

    def predicate(error: BaseException) -> bool:
        if isinstance(error, LeaseLostError):
            return False
        if isinstance(error, StepFailedError):
            return not is_final(error.error, step)
        return isinstance(error, Exception)

    return predicate


class StoppingError(RuntimeError):
    """The runner is shutting down; the saga stays leased until ``stop`` releases it."""


def _describe(error: BaseException | None) -> str:
    if error is None:
        return "unknown error"
    if isinstance(error, StepFailedError):
        return error.error.describe()
    return f"{type(error).__name__}: {error}"


async def first_then_retrying(
    body: Callable[[], Awaitable[T]],
    retryable: Callable[[BaseException], bool],
    retrying: Callable[[], AsyncRetrying],
) -> T:
    """``body()`` under ``retrying()``'s policy, with the first attempt outside tenacity.

    Why: almost every call succeeds at once, and tenacity's per-loop set-up and
    per-attempt state machine were ~5 % of the orchestrator's CPU (three loops per
    transfer; docs/benchmarks.md). Only when the first attempt fails with an error
    ``retryable`` accepts does tenacity take over, and its first attempt re-raises that
    very error instead of calling ``body`` again: attempt numbers, the ``before_sleep``
    record of each failure, the waits and ``reraise`` are exactly what the plain
    tenacity loop gives. ``retryable`` must be the loop's own retry predicate. An error
    it refuses (and any BaseException) propagates at once, as tenacity with
    ``reraise=True`` would let it.
    """
    try:
        return await body()
    except Exception as error:
        if not retryable(error):
            raise
        first: BaseException | None = error
    async for attempt in retrying():
        with attempt:
            if first is not None:
                failed, first = first, None
                raise failed
            return await body()
    raise AssertionError("unreachable: the retry loop returns or raises")  # pragma: no cover


class SagaRunner:
    """Drives sagas of this replica, one asyncio task per saga it holds the lease of."""

    def __init__(
        self,
        repository: TransferRepository,
        gateway: WalletGateway,
        notifier: TransferNotifier,
        policy: RetryPolicy | None = None,
        *,
        owner: str | None = None,
        clock: Clock = utcnow,
    ) -> None:
        self.repository = repository
        self.gateway = gateway
        self.notifier = notifier
        self.policy = policy or RetryPolicy()
        self.owner = owner or f"saga-{uuid.uuid4().hex[:12]}"
        self.clock = clock
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._stopping = False
        self._call_slots = asyncio.Semaphore(self.policy.max_concurrent_calls)

    # --- task management -----------------------------------------------------------

    @property
    def active(self) -> int:
        return len(self._tasks)

    def is_driving(self, transfer_id: str) -> bool:
        return transfer_id in self._tasks

    def lease_until(self) -> datetime:
        return self.clock() + timedelta(seconds=self.policy.lease)

    def spawn(
        self, transfer_id: str, transfer: Transfer | None = None, *, begun: bool = False
    ) -> bool:
        """Start driving a saga this replica has just leased; False if already driven.

        ``transfer`` is the saga as just written (CreateTransfer), saving a read;
        ``begun`` says that write already recorded the first call of the step its state
        waits for (so the runner makes that call without another 'before' write).
        """
        if self._stopping or transfer_id in self._tasks:
            return False
        task = asyncio.get_running_loop().create_task(
            self._drive_guarded(transfer_id, transfer, begun), name=f"saga {transfer_id}"
        )
        self._tasks[transfer_id] = task
        task.add_done_callback(lambda _t: self._tasks.pop(transfer_id, None))
        return True

    async def join(self) -> None:
        """Wait until every saga this replica is driving has stopped (tests, shutdown)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks.values()), return_exceptions=True)

    async def stop(self) -> None:
        """Cancel every saga task and hand their leases back for another replica."""
        self._stopping = True
        tasks = dict(self._tasks)
        for task in tasks.values():
            task.cancel()
        await asyncio.gather(*tasks.values(), return_exceptions=True)
        # A cancelled saga's write may still be in a grouped statement: let it land (or
        # be fenced out) before the lease is handed back.
        await self.repository.drain()
        for transfer_id in tasks:
            try:
                await self.repository.release(transfer_id, self.owner)
            except Exception:
                log.warning("could not release saga %s (its lease will expire)", transfer_id)

    async def _drive_guarded(
        self, transfer_id: str, transfer: Transfer | None, begun: bool
    ) -> None:
        with log_context(transfer_id=transfer_id):
            try:
                await self.drive(transfer_id, transfer, begun=begun)
            except (LeaseLostError, StoppingError) as error:
                log.info("stopped driving saga: %s", error)
            except asyncio.CancelledError:
                raise
            except Exception:
                if not self._stopping:
                    log.exception("saga driver crashed; the sweeper will resume it")

    # --- the saga loop ----------------------------------------------------------------

    async def drive(
        self, transfer_id: str, known: Transfer | None = None, *, begun: bool = False
    ) -> Transfer | None:
        """Run the saga until it is terminal (or this replica loses it).

        Any unexpected failure (database down, a bug) restarts the loop from the state
        on disk after a backoff: re-running a step only replays it. ``begun``: ``known``
        already has the first call of its next step recorded (see ``spawn``).
        """
        first_round = True

        async def one_round() -> Transfer | None:
            nonlocal first_round
            # The first round may start from the caller's copy; a restart re-reads.
            # A step counts as begun only when the copy in hand comes straight from
            # the write that recorded its call; a re-read always records a new call.
            transfer = known if first_round else None
            next_begun = transfer is not None and begun
            resumed = known is None or not first_round  # the sweeper, or a restart
            first_round = False
            transfer = transfer or await self.repository.get(transfer_id)
            if transfer is None:
                log.warning("saga %s vanished", transfer_id)
                return None
            with (
                log_context(audit_id=transfer.audit_id or None),
                tracing.span(
                    "saga run",
                    parent=transfer.traceparent,
                    use_parent=True,
                    attributes={
                        "wallet.transfer.id": transfer_id,
                        "wallet.transfer.state": transfer.state.value,
                        "wallet.saga.resumed": resumed,
                    },
                ),
            ):
                while not transfer.is_terminal:
                    if transfer.lease_owner != self.owner:
                        raise LeaseLostError(f"transfer {transfer_id} is leased elsewhere")
                    transfer, next_begun = await self._run_step(
                        transfer, STEP_FOR_STATE[transfer.state], begun=next_begun
                    )
            return transfer

        return await first_then_retrying(
            one_round,
            self._worth_restarting,
            lambda: AsyncRetrying(
                retry=retry_if_exception(self._worth_restarting),
                wait=self.policy.wait(),
                stop=stop_never,
                before_sleep=self._log_restart,
                reraise=True,
            ),
        )

    def _worth_restarting(self, error: BaseException) -> bool:
        # When stopping, a cancellation may surface as a driver error (a database call
        # interrupted mid-flight): never let a retry loop outlive stop().
        return isinstance(error, Exception) and not isinstance(
            error, LeaseLostError | StoppingError
        )

    async def _log_restart(self, state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome else None
        log.warning("saga loop failed (%s); resuming from the stored state", _describe(error))

    def _call_for(self, transfer: Transfer, step: StepName) -> StepCall:
        wallet_id = transfer.to_wallet_id if step is StepName.CREDIT else transfer.from_wallet_id
        return StepCall(
            step=step,
            wallet_id=wallet_id,
            amount=transfer.amount,
            transfer_id=transfer.transfer_id,
            request_id=step_request_id(transfer.transfer_id, step),
            currency=transfer.currency,
            to_wallet_id=transfer.to_wallet_id if step is StepName.DEBIT else "",
        )

    async def _run_step(
        self, transfer: Transfer, step: StepName, *, begun: bool = False
    ) -> tuple[Transfer, bool]:
        """One step to its outcome: retried until it succeeds or is finally rejected.

        Returns the saga after the step and whether that write already recorded the
        first call of the next step (``begun``: the first call skips ``begin_attempt``;
        every retry records its own).
        """
        call = self._call_for(transfer, step)
        current = transfer
        recorded = begun

        async def record_failure(state: RetryCallState) -> None:
            nonlocal current
            error = state.outcome.exception() if state.outcome else None
            delay = state.upcoming_sleep
            text = _describe(error)
            log.warning(
                "%s failed (attempt %d, retry in %.2fs): %s",
                step.value,
                state.attempt_number,
                delay,
                text,
            )
            try:
                current = await self.repository.record_failure(
                    current,
                    step,
                    self.owner,
                    text,
                    self.clock() + timedelta(seconds=delay),
                    self.lease_until(),
                )
            except LeaseLostError:
                raise
            except Exception as record_error:  # the database may be what is failing
                log.warning("could not record the failure: %s", _describe(record_error))

        transient = _is_transient_for(step)

        def retryable(error: BaseException) -> bool:
            return transient(error) and not self._stopping

        async def attempt_call() -> None:
            nonlocal current, recorded
            if self._stopping:
                raise StoppingError("orchestrator stopping")
            if recorded:
                recorded = False  # the previous write recorded this call
            else:
                current = await self.repository.begin_attempt(
                    current, step, self.owner, self.clock(), self.lease_until()
                )
            if step is StepName.CREDIT:
                await failpoint("saga.before_credit")
            elif step is StepName.REFUND:
                await failpoint("saga.before_refund")
            async with self._call_slots:
                await self.gateway.call_step(call, self.policy.step_deadline)

        try:
            await first_then_retrying(
                attempt_call,
                retryable,
                lambda: AsyncRetrying(
                    retry=retry_if_exception(retryable),
                    wait=self.policy.wait(),
                    stop=stop_never,
                    before_sleep=record_failure,
                    reraise=True,
                ),
            )
        except StepFailedError as rejected:
            return await self._rejected(current, step, rejected.error)
        if step is StepName.DEBIT:
            await failpoint("saga.after_debit")
        elif step is StepName.CREDIT:
            await failpoint("saga.after_credit")
        new_state = NEXT_STATE[step][0]
        begin_next = STEP_FOR_STATE.get(new_state)
        return await self._persist(
            current.transfer_id,
            lambda: self.repository.finish_step(
                current,
                step,
                self.owner,
                outcome=StepOutcome.SUCCEEDED,
                new_state=new_state,
                now=self.clock(),
                outbox_row=milestone_outbox_row,
                begin_next=begin_next,
                lease_until=self.lease_until() if begin_next else None,
            ),
        ), begin_next is not None

    async def _rejected(
        self, transfer: Transfer, step: StepName, error: StepError
    ) -> tuple[Transfer, bool]:
        new_state = NEXT_STATE[step][1]
        assert new_state is not None, f"{step} cannot be rejected"
        log.info("%s rejected (%s): saga goes %s", step.value, error.describe(), new_state)
        begin_next = STEP_FOR_STATE.get(new_state)
        return await self._persist(
            transfer.transfer_id,
            lambda: self.repository.finish_step(
                transfer,
                step,
                self.owner,
                outcome=StepOutcome.REJECTED,
                new_state=new_state,
                now=self.clock(),
                step_error=error.describe(),
                failure_reason=f"{step.value} rejected: {error.describe()}",
                failure_code=error.code,
                outbox_row=milestone_outbox_row,
                begin_next=begin_next,
                lease_until=self.lease_until() if begin_next else None,
            ),
        ), begin_next is not None

    async def _persist(
        self, transfer_id: str, write: Callable[[], Awaitable[Transfer]]
    ) -> Transfer:
        updated = await write()
        log.info("saga %s is %s", transfer_id, updated.state)
        self.notifier.publish(updated)
        return updated
