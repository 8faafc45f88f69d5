"""The runner, sweeper and leases against a real database, with a scripted WalletService.

The fake gateway stands in for the remote service (it is not the database): it applies
each step request_id at most once, like WalletService, and fails the calls a test
scripts. The database is real, on SQLite and PostgreSQL.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from datetime import timedelta

import pytest
from sqlalchemy import update

from saga_orchestrator.domain import (
    StepName,
    StepOutcome,
    Transfer,
    TransferState,
)
from saga_orchestrator.engine.runner import RetryPolicy, SagaRunner
from saga_orchestrator.gateway import StepCall, StepFailedError, WalletInfo
from saga_orchestrator.notifier import TransferNotifier
from saga_orchestrator.repository import LeaseLostError, TransferRepository
from saga_orchestrator.step_errors import StepError
from saga_orchestrator.sweeper import Sweeper
from tests.eventually import eventually
from wallet_platform.clock import utcnow
from wallet_platform.storage.database import Database
from wallet_platform.storage.schema import transfers

FAST = RetryPolicy(step_deadline=1.0, initial_backoff=0.01, max_backoff=0.02, jitter=0.01, lease=5)


class ScriptedWallets:
    """Applies each request_id once; ``failures[step]`` are raised first, in order."""

    def __init__(self) -> None:
        self.failures: dict[StepName, list[StepError]] = {}
        self.applied: Counter[str] = Counter()
        self.calls: Counter[StepName] = Counter()
        self.block: dict[StepName, asyncio.Event] = {}
        self.called: dict[StepName, asyncio.Event] = {}

    async def wait_called(self, step: StepName) -> None:
        await asyncio.wait_for(self.called.setdefault(step, asyncio.Event()).wait(), 10)

    async def call_step(self, call: StepCall, deadline: float) -> bool:
        self.calls[call.step] += 1
        self.called.setdefault(call.step, asyncio.Event()).set()
        gate = self.block.get(call.step)
        if gate is not None:
            await gate.wait()
        queue = self.failures.get(call.step)
        if queue:
            raise StepFailedError(queue.pop(0))
        replayed = call.request_id in self.applied
        if not replayed:
            self.applied[call.request_id] += 1
        return replayed

    async def get_wallet(self, wallet_id: str, deadline: float) -> WalletInfo:
        return WalletInfo(wallet_id, "USD", frozen=False)


def new_transfer(owner: str | None, lease_seconds: float = 5) -> Transfer:
    now = utcnow()
    return Transfer.pending(
        transfer_id=str(uuid.uuid4()),
        request_id=uuid.uuid4().hex,
        from_wallet_id="a",
        to_wallet_id="b",
        amount=5,
        currency="USD",
        lease_owner=owner,
        lease_expires_at=now + timedelta(seconds=lease_seconds) if owner else None,
        now=now,
    )


def make_runner(database: Database, wallets: ScriptedWallets, owner: str) -> SagaRunner:
    return SagaRunner(TransferRepository(database), wallets, TransferNotifier(), FAST, owner=owner)


async def test_transient_errors_are_retried_and_recorded(database: Database) -> None:
    wallets = ScriptedWallets()
    wallets.failures[StepName.CREDIT] = [
        StepError("UNAVAILABLE", "", "down"),
        StepError("INTERNAL", "", "unknown outcome"),
        StepError("DEADLINE_EXCEEDED", "", "slow"),
    ]
    runner = make_runner(database, wallets, "r1")
    transfer = await runner.repository.insert(new_transfer("r1"))

    done = await runner.drive(transfer.transfer_id)

    assert done is not None and done.state is TransferState.COMPLETED
    debit, credit = done.steps
    assert (debit.name, debit.outcome, debit.attempts) == (
        StepName.DEBIT,
        StepOutcome.SUCCEEDED,
        1,
    )
    assert (credit.name, credit.outcome, credit.attempts) == (
        StepName.CREDIT,
        StepOutcome.SUCCEEDED,
        4,
    )
    assert "DEADLINE_EXCEEDED" in credit.error  # the last error it overcame
    assert done.attempts == 0 and done.last_error == ""  # cleared by the transition
    assert wallets.applied == {
        f"{transfer.transfer_id}:debit": 1,
        f"{transfer.transfer_id}:credit": 1,
    }


async def test_rejected_credit_is_compensated_and_refund_never_gives_up(database: Database) -> None:
    wallets = ScriptedWallets()
    wallets.failures[StepName.CREDIT] = [StepError("FAILED_PRECONDITION", "WALLET_FROZEN", "no")]
    wallets.failures[StepName.REFUND] = [
        StepError("OUT_OF_RANGE", "BALANCE_OVERFLOW", "full"),
        StepError("UNAVAILABLE", "", "down"),
    ]
    runner = make_runner(database, wallets, "r1")
    transfer = await runner.repository.insert(new_transfer("r1"))

    done = await runner.drive(transfer.transfer_id)

    assert done is not None and done.state is TransferState.COMPENSATED
    assert done.failure_code == "FAILED_PRECONDITION"
    assert "WALLET_FROZEN" in done.failure_reason
    assert [(s.name, s.outcome) for s in done.steps] == [
        (StepName.DEBIT, StepOutcome.SUCCEEDED),
        (StepName.CREDIT, StepOutcome.REJECTED),
        (StepName.REFUND, StepOutcome.SUCCEEDED),
    ]
    assert done.steps[2].attempts == 3


async def test_a_replica_without_the_lease_cannot_write(database: Database) -> None:
    wallets = ScriptedWallets()
    owner = make_runner(database, wallets, "r1")
    intruder = make_runner(database, wallets, "r2")
    transfer = await owner.repository.insert(new_transfer("r1"))

    with pytest.raises(LeaseLostError):
        await intruder.drive(transfer.transfer_id)
    with pytest.raises(LeaseLostError):
        await intruder.repository.begin_attempt(
            transfer, StepName.DEBIT, "r2", utcnow(), intruder.lease_until()
        )
    # A live lease is not claimable either.
    assert await intruder.repository.claim_due("r2", utcnow(), intruder.lease_until(), 10) == []
    assert wallets.calls == Counter()


async def test_expired_lease_is_taken_over_and_the_old_owner_is_fenced_out(
    database: Database,
) -> None:
    wallets = ScriptedWallets()
    wallets.block[StepName.CREDIT] = asyncio.Event()  # the first owner stalls in the credit
    first = make_runner(database, wallets, "r1")
    transfer = await first.repository.insert(new_transfer("r1"))
    first.spawn(transfer.transfer_id)
    await wallets.wait_called(StepName.CREDIT)
    # Move the lease into the past, as if r1 had stalled beyond it.
    async with database.transaction() as conn:
        await conn.execute(
            update(transfers)
            .where(transfers.c.transfer_id == transfer.transfer_id)
            .values(lease_expires_at=utcnow() - timedelta(seconds=1))
        )
    stalled = await first.repository.get(transfer.transfer_id)
    assert stalled is not None and stalled.state is TransferState.DEBITED

    second = make_runner(database, wallets, "r2")
    sweeper = Sweeper(second.repository, second, interval=0.05)
    await eventually(
        sweeper.sweep_once, lambda claimed: claimed > 0, what="r2 claiming the saga", within=10
    )
    # r2 drives it now; let both callers through, r2 finishes, r1's late write is refused.
    wallets.block[StepName.CREDIT].set()
    await asyncio.wait_for(asyncio.gather(first.join(), second.join()), 10)
    done = await second.repository.get(transfer.transfer_id)
    assert done is not None and done.state is TransferState.COMPLETED
    assert wallets.applied[f"{transfer.transfer_id}:credit"] == 1  # replays, never repeats
    assert wallets.calls[StepName.CREDIT] == 2


async def test_stop_hands_leases_back(database: Database) -> None:
    wallets = ScriptedWallets()
    wallets.block[StepName.DEBIT] = asyncio.Event()
    runner = make_runner(database, wallets, "r1")
    transfer = await runner.repository.insert(new_transfer("r1"))
    runner.spawn(transfer.transfer_id)
    await wallets.wait_called(StepName.DEBIT)

    await runner.stop()

    released = await runner.repository.get(transfer.transfer_id)
    assert released is not None
    assert released.lease_owner is None and released.state is TransferState.PENDING
    successor = make_runner(database, wallets, "r2")
    assert await successor.repository.claim_due("r2", utcnow(), successor.lease_until(), 10) == [
        transfer.transfer_id
    ]


async def test_concurrent_claimers_never_share_a_saga(database: Database) -> None:
    repository = TransferRepository(database)
    ids = {(await repository.insert(new_transfer(None))).transfer_id for _ in range(40)}
    until = utcnow() + timedelta(seconds=30)

    batches = await asyncio.gather(
        *(repository.claim_due(f"r{i}", utcnow(), until, 7) for i in range(8))
    )

    claimed = [tid for batch in batches for tid in batch]
    assert len(claimed) == len(set(claimed))
    assert set(claimed) <= ids
    assert len(claimed) == 40  # 8 x 7 slots: every saga found exactly one claimer
