"""Batched saga steps through the real WalletService (SQLite and PostgreSQL).

The gateway tests drive :class:`StepBatcher` over a real gRPC channel: every step's
answer must be what its single call gives (checked against the single call itself),
and the ledger must hold each step once. The platform tests run the orchestrator
with batching on and check exact balances, a clean reconcile, the audit trail of a
batched step, and (PostgreSQL) that the sagas of a batch persist in few statements.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

import grpc
import pytest
from sqlalchemy import func, select

from saga_orchestrator.domain import StepName, step_request_id
from saga_orchestrator.gateway import GrpcWalletGateway, StepCall, StepFailedError, StepOutcome
from saga_orchestrator.group_commit import SagaWrite
from saga_orchestrator.step_batcher import StepBatcher
from saga_orchestrator.step_errors import StepError, is_final
from tests.conftest import requires_postgres
from tests.integration.test_saga_transfers import (
    COMPLETED,
    FAILED,
    balance,
    new_wallet,
    rid,
    saga_settings,
    start_orchestrator,
    start_wallet_service,
    wait_terminal,
)
from wallet.v1 import transfer_pb2, transfer_pb2_grpc, wallet_pb2_grpc
from wallet_platform.config import Settings
from wallet_platform.server.plumbing import AUDIT_WRITER
from wallet_platform.server.process import RunningServer
from wallet_platform.storage.database import Database
from wallet_platform.storage.schema import audit_log, wallet_events
from walletctl.reconcile import ReconcileOptions, reconcile

BATCH_METHOD = "/wallet.v1.WalletService/BatchApplyTransferSteps"


@dataclass
class Wallets:
    server: RunningServer
    channel: grpc.aio.Channel
    db: Database

    @property
    def stub(self) -> wallet_pb2_grpc.WalletServiceStub:
        return wallet_pb2_grpc.WalletServiceStub(self.channel)


@pytest.fixture
async def wallets(database_url: str) -> AsyncIterator[Wallets]:
    server = await start_wallet_service(database_url)
    channel = grpc.aio.insecure_channel(server.target)
    db = Database.from_settings(Settings(database_url=database_url))
    yield Wallets(server, channel, db)
    await channel.close()
    await server.stop(grace=1)
    await db.dispose()


def step(kind: StepName, transfer_id: str, wallet_id: str, amount: int, to: str = "") -> StepCall:
    return StepCall(
        step=kind,
        wallet_id=wallet_id,
        amount=amount,
        transfer_id=transfer_id,
        request_id=step_request_id(transfer_id, kind),
        currency="USD",
        to_wallet_id=to if kind is StepName.DEBIT else "",
    )


async def outcome(gateway: object, call: StepCall) -> bool | tuple[str, str, str]:
    """``replayed``, or the error as (code, reason, message)."""
    try:
        return await gateway.call_step(call, 5.0)  # type: ignore[attr-defined]
    except StepFailedError as failed:
        return (failed.error.code, failed.error.reason, failed.error.message)


async def all_outcomes(gateway: object, calls: list[StepCall]) -> list[bool | tuple[str, str, str]]:
    return list(await asyncio.gather(*(outcome(gateway, c) for c in calls)))


async def test_batched_steps_answer_exactly_as_single_calls(wallets: Wallets) -> None:
    source = await new_wallet(wallets.stub, 1_000)
    target = await new_wallet(wallets.stub)
    poor = await new_wallet(wallets.stub, 5)
    plain = GrpcWalletGateway(lambda: grpc.aio.insecure_channel(wallets.server.target))
    batcher = StepBatcher(plain, max_batch=500, max_in_flight=1)
    try:
        ids = [f"t-{rid()}" for _ in range(30)]
        debits = [step(StepName.DEBIT, t, source, 10, target) for t in ids]
        refused = [
            step(StepName.DEBIT, f"t-{rid()}", poor, 50, target),  # INSUFFICIENT_FUNDS
            step(StepName.DEBIT, f"t-{rid()}", "w-nobody", 1, target),  # WALLET_NOT_FOUND
            step(StepName.CREDIT, f"t-{rid()}", target, 1),  # HOLD_NOT_FOUND
            step(StepName.DEBIT, f"t-{rid()}", source, 0, target),  # INVALID_ARGUMENT
        ]
        first = await all_outcomes(batcher, debits + refused)
        assert batcher.batches < batcher.batched_steps  # steps really shared calls

        assert first[:30] == [False] * 30
        for call, got in zip(refused, first[30:], strict=True):
            # The single call with the same request_id answers the same, word for word.
            assert await outcome(plain, call) == got
        classes = [(got[0], got[1]) for got in first[30:] if isinstance(got, tuple)]
        assert classes == [
            ("FAILED_PRECONDITION", "INSUFFICIENT_FUNDS"),
            ("NOT_FOUND", "WALLET_NOT_FOUND"),
            ("NOT_FOUND", "HOLD_NOT_FOUND"),
            ("INVALID_ARGUMENT", "INVALID_ARGUMENT"),
        ]

        # The same steps again are replays, batched or not.
        assert await all_outcomes(batcher, debits) == [True] * 30
        assert await outcome(plain, debits[0]) is True

        # Half the transfers are credited, the other half refunded, in one go.
        settle = [step(StepName.CREDIT, t, target, 10) for t in ids[:15]]
        settle += [step(StepName.REFUND, t, source, 10) for t in ids[15:]]
        assert await all_outcomes(batcher, settle) == [False] * 30
        # A credit after the refund is refused, as the single call would be.
        late = await outcome(batcher, step(StepName.CREDIT, ids[20], target, 10))
        assert isinstance(late, tuple) and late[:2] == (
            "FAILED_PRECONDITION",
            "HOLD_ALREADY_VOIDED",
        )
        assert is_final(
            (await _error(batcher, step(StepName.CREDIT, ids[21], target, 10))), StepName.CREDIT
        )
    finally:
        await batcher.close()

    assert await balance(wallets.stub, source) == 1_000 - 15 * 10
    assert await balance(wallets.stub, target) == 15 * 10
    async with wallets.db.read() as conn:
        counts: dict[str, int] = dict(
            (
                await conn.execute(
                    select(wallet_events.c.type, func.count())
                    .where(wallet_events.c.transfer_id.in_(ids))
                    .group_by(wallet_events.c.type)
                )
            ).all()
        )
    assert counts == {"transfer_debited": 30, "transfer_credited": 15, "transfer_refunded": 15}


async def _error(gateway: StepBatcher, call: StepCall) -> StepError:
    with pytest.raises(StepFailedError) as caught:
        await gateway.call_step(call, 5.0)
    return caught.value.error


async def test_a_batched_steps_audit_row_names_its_transfer(wallets: Wallets) -> None:
    """A batched step's ledger event carries the item's audit id; that row is the step
    (method, transfer_id) and links to its batch row."""
    source = await new_wallet(wallets.stub, 100)
    target = await new_wallet(wallets.stub)
    plain = GrpcWalletGateway(lambda: grpc.aio.insecure_channel(wallets.server.target))
    batcher = StepBatcher(plain, max_batch=500, max_in_flight=1)
    ids = [f"t-{rid()}" for _ in range(6)]
    try:
        await all_outcomes(batcher, [step(StepName.DEBIT, t, source, 1, target) for t in ids])
    finally:
        await batcher.close()
    await wallets.server.runtime.extras[AUDIT_WRITER].flush()
    async with wallets.db.read() as conn:
        stamped = dict(
            (
                await conn.execute(
                    select(wallet_events.c.transfer_id, wallet_events.c.audit_id).where(
                        wallet_events.c.transfer_id.in_(ids)
                    )
                )
            ).all()
        )
        rows = {
            r.audit_id: r
            for r in (
                await conn.execute(
                    select(audit_log).where(audit_log.c.audit_id.in_(list(stamped.values())))
                )
            ).all()
        }
        batch_rows = (
            await conn.execute(select(audit_log).where(audit_log.c.method == BATCH_METHOD))
        ).all()
    assert set(stamped) == set(ids)
    batched = 0
    for transfer_id, audit_id in stamped.items():
        row = rows[audit_id]
        assert row.method == "/wallet.v1.WalletService/DebitForTransfer"
        request = json.loads(row.request_json)
        assert request["transfer_id"] == transfer_id
        if "batch" in request:
            batched += 1
            assert request["batch"]["audit_id"] in {b.audit_id for b in batch_rows}
    assert batched == len(ids)  # issued in one loop turn: one batch


class LosesFirstAnswer(GrpcWalletGateway):
    """The real gateway, except that the first batch's answer is lost on the way back
    (the steps were applied by WalletService, the caller sees UNAVAILABLE)."""

    lost = False

    async def apply_steps(self, calls: Sequence[StepCall], deadline: float) -> list[StepOutcome]:
        outcomes = await super().apply_steps(calls, deadline)
        if not self.lost:
            self.lost = True
            raise StepFailedError(StepError("UNAVAILABLE", "", "connection lost", whole_batch=True))
        return outcomes


async def test_a_lost_batch_answer_is_retried_as_replays(wallets: Wallets) -> None:
    source = await new_wallet(wallets.stub, 100)
    target = await new_wallet(wallets.stub)
    lossy = LosesFirstAnswer(lambda: grpc.aio.insecure_channel(wallets.server.target))
    batcher = StepBatcher(lossy, max_batch=500, max_in_flight=1)
    ids = [f"t-{rid()}" for _ in range(8)]
    debits = [step(StepName.DEBIT, t, source, 5, target) for t in ids]
    try:
        first = await all_outcomes(batcher, debits)  # one batch: its answer is lost
        assert lossy.lost
        assert first == [("UNAVAILABLE", "", "connection lost")] * 8
        assert await balance(wallets.stub, source) == 100 - 8 * 5  # yet every debit applied
        # The runner's retry: the same steps again, each answered as a replay.
        assert await all_outcomes(batcher, debits) == [True] * 8
    finally:
        await batcher.close()
    assert await balance(wallets.stub, source) == 100 - 8 * 5


@requires_postgres
async def test_the_whole_batch_is_refused_when_too_big_for_the_server(
    pg_database_url_fresh: str,
) -> None:
    """A whole-call refusal (not any step's) is transient for every step."""
    server = await start_wallet_service(pg_database_url_fresh)
    plain = GrpcWalletGateway(lambda: grpc.aio.insecure_channel(server.target))
    try:
        calls = [step(StepName.DEBIT, f"t-{n}", "w-x", 1, "w-y") for n in range(1001)]
        with pytest.raises(StepFailedError) as caught:
            await plain.apply_steps(calls, 5.0)
        assert caught.value.error.code == "INVALID_ARGUMENT"
        assert caught.value.error.whole_batch
        assert not is_final(caught.value.error, StepName.DEBIT)
    finally:
        await plain.close()
        await server.stop(grace=1)


async def test_transfers_through_batched_steps_end_exact_and_reconciled(
    database_url: str,
) -> None:
    wallet_server = await start_wallet_service(database_url)
    saga_server = await start_orchestrator(
        saga_settings(database_url, wallet_server.target, saga_step_batch=1)
    )
    component = saga_server.components[0]
    batcher = component.gateway  # type: ignore[attr-defined]
    assert isinstance(batcher, StepBatcher)
    group = component.service.repository.group  # type: ignore[attr-defined]
    finish_statements: list[int] = []
    if group is not None:  # PostgreSQL: count the step writes of each statement
        execute = group._execute

        async def counted(writes: list[SagaWrite]) -> set[str]:
            finishes = sum(w.insert_row is None for w in writes)
            if finishes:
                finish_statements.append(finishes)
            return await execute(writes)

        group._execute = counted
    try:
        async with (
            grpc.aio.insecure_channel(wallet_server.target) as wallet_channel,
            grpc.aio.insecure_channel(saga_server.target) as saga_channel,
        ):
            wallet_stub = wallet_pb2_grpc.WalletServiceStub(wallet_channel)
            stub = transfer_pb2_grpc.TransferServiceStub(saga_channel)
            ids = [await new_wallet(wallet_stub, 1_000) for _ in range(8)]
            poor = await new_wallet(wallet_stub, 3)
            plan = [(ids[n % 8], ids[(n * 3 + 1) % 8], 1 + n % 7) for n in range(120)]
            plan = [(s, t, a) for s, t, a in plan if s != t]
            plan += [(poor, ids[0], 50)] * 3  # refused debits: FAILED

            async def create(source: str, target: str, amount: int) -> transfer_pb2.Transfer:
                response = await stub.CreateTransfer(
                    transfer_pb2.CreateTransferRequest(
                        request_id=rid(), from_wallet_id=source, to_wallet_id=target, amount=amount
                    )
                )
                return await wait_terminal(stub, response.transfer.transfer_id)

            done = await asyncio.gather(*(create(*p) for p in plan))
            expected = dict.fromkeys(ids, 1_000) | {poor: 3}
            for (source, target, amount), transfer in zip(plan, done, strict=True):
                if source == poor:
                    assert transfer.state == FAILED
                    continue
                assert transfer.state == COMPLETED, transfer
                expected[source] -= amount
                expected[target] += amount
            for wallet_id, value in expected.items():
                assert await balance(wallet_stub, wallet_id) == value
    finally:
        await saga_server.stop(grace=1)
        await wallet_server.stop(grace=1)
    assert batcher.batches < batcher.batched_steps  # concurrent sagas shared calls
    if group is not None:
        # About 2 step writes per transfer; concurrent sagas share statements.
        assert sum(finish_statements) >= 2 * (len(plan) - 3)
        assert len(finish_statements) < sum(finish_statements) / 4, finish_statements
    report = await asyncio.to_thread(
        reconcile, database_url, ReconcileOptions(skip=("outbox_drained",))
    )
    assert report.ok, report.render_text()
