"""Driving one saga to a terminal state: call the step its state asks for, persist, repeat.

The loop for one saga is simple because every hard part lives elsewhere:

- *what* to call and where it leads is the domain's (``STEP_FOR_STATE``, and
  ``Transfer.succeed_step``/``reject_step`` decide the next state and what the write
  holds); whether an error is final is ``step_errors.is_final``;
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

Retries (``engine.retrying``) have no overall limit: once a call may have moved money
its outcome must be learned. Every failed call is written to the saga (attempts, last
error, next attempt time) so a saga that keeps failing is visible in
GetTransferSummary rather than stuck silently.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from datetime import datetime, timedelta

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_never

from saga_orchestrator.domain import (
    STEP_FOR_STATE,
    LeaseLostError,
    StepFinish,
    StepName,
    Transfer,
    step_request_id,
)
from saga_orchestrator.engine.retrying import (
    RetryPolicy,
    StoppingError,
    describe,
    first_then_retrying,
    is_transient_for,
)
from saga_orchestrator.gateway import StepCall, StepFailedError, WalletGateway
from saga_orchestrator.milestones import milestone_outbox_row
from saga_orchestrator.notifier import TransferNotifier
from saga_orchestrator.repository import TransferRepository
from saga_orchestrator.step_errors import StepError
from wallet_platform.clock import Clock, utcnow
from wallet_platform.failpoints import failpoint
from wallet_platform.observability import tracing
from wallet_platform.observability.logs import log_context

log = logging.getLogger(__name__)


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
        log.warning("saga loop failed (%s); resuming from the stored state", describe(error))

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
            text = describe(error)
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
                log.warning("could not record the failure: %s", describe(record_error))

        transient = is_transient_for(step)

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
        return await self._persist(current.succeed_step(step, self.clock(), self.lease_until()))

    async def _rejected(
        self, transfer: Transfer, step: StepName, error: StepError
    ) -> tuple[Transfer, bool]:
        finish = transfer.reject_step(step, error, self.clock(), self.lease_until())
        log.info("%s rejected (%s): saga goes %s", step.value, error.describe(), finish.after.state)
        return await self._persist(finish)

    async def _persist(self, finish: StepFinish) -> tuple[Transfer, bool]:
        """Write ``finish``; returns the saga and whether its next call is recorded."""
        updated = await self.repository.finish_step(
            finish, self.owner, outbox_row=milestone_outbox_row
        )
        log.info("saga %s is %s", updated.transfer_id, updated.state)
        self.notifier.publish(updated)
        return updated, finish.begin_next is not None
