"""The saga's grouped writes on PostgreSQL give exactly what the one-by-one writes give.

``TransferRepository`` on PostgreSQL sends ``insert`` and ``finish_step`` through
``SagaGroupCommitter`` (many sagas in one statement). The reference is the plain
transaction path (the one SQLite uses), run here on the same PostgreSQL database by
switching the group committer off. Every scenario runs both ways on separate sagas and
the stored rows must be identical; the per-saga guarantees (fence, duplicate
request_id, an error confined to its own write) are checked inside real batches.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select, update
from sqlalchemy.dialects.postgresql import psycopg as psycopg_dialect
from sqlalchemy.exc import IntegrityError

from saga_orchestrator.domain import (
    StepName,
    StepOutcome,
    Transfer,
    TransferState,
)
from saga_orchestrator.group_commit import _WRITE_MANY, SagaGroupCommitter, SagaWrite
from saga_orchestrator.milestones import milestone_outbox_row
from saga_orchestrator.repository import (
    DuplicateRequestError,
    LeaseLostError,
    TransferRepository,
)
from saga_orchestrator.step_errors import StepError
from wallet_platform.config import Settings
from wallet_platform.errors import UnavailableError
from wallet_platform.storage.database import Database
from wallet_platform.storage.schema import outbox, transfer_steps, transfers

OWNER = "r1"
T0 = datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


@pytest.fixture
async def pg(pg_database_url_fresh: str) -> Any:
    db = Database.from_settings(Settings(database_url=pg_database_url_fresh))
    yield db
    await db.dispose()


def record_batch_sizes(group: SagaGroupCommitter) -> list[int]:
    """The size of every statement ``group`` executes from now on, in order."""
    sizes: list[int] = []
    execute = group._execute

    async def counted(batch: list[SagaWrite]) -> set[str]:
        sizes.append(len(batch))
        return await execute(batch)

    group._execute = counted  # type: ignore[method-assign]  # counts what it executes
    return sizes


def saga(transfer_id: str, owner: str | None = OWNER, *, debit_begun: bool = True) -> Transfer:
    transfer = Transfer.pending(
        transfer_id=transfer_id,
        request_id=f"req-{transfer_id}",
        from_wallet_id="a",
        to_wallet_id="b",
        amount=7,
        currency="USD",
        lease_owner=owner,
        lease_expires_at=at(30) if owner else None,
        now=at(0),
        audit_id="00000000-0000-4000-8000-000000000001",
    )
    return transfer.begin_step(StepName.DEBIT, at(0)) if debit_begun else transfer


async def succeed(repo: TransferRepository, transfer: Transfer, step: StepName) -> Transfer:
    """``step`` succeeded; the next step's first call is recorded by the same write."""
    finish = transfer.succeed_step(step, at(len(transfer.steps)), at(60))
    return await repo.finish_step(finish, OWNER, outbox_row=milestone_outbox_row)


async def reject(repo: TransferRepository, transfer: Transfer, step: StepName) -> Transfer:
    error = StepError("FAILED_PRECONDITION", "WALLET_FROZEN", "frozen")
    finish = transfer.reject_step(step, error, at(10 + len(transfer.steps)), at(90))
    return await repo.finish_step(finish, OWNER, outbox_row=milestone_outbox_row)


# Each scenario: the saga as CreateTransfer inserts it, then its writes in order.
Write = Callable[[TransferRepository, Transfer], Awaitable[Transfer]]


async def begin_credit_early(repo: TransferRepository, transfer: Transfer) -> Transfer:
    """A credit row that exists before the debit finishes: ``begin_next`` then counts a
    call on it (the 'count' branch) instead of inserting it."""
    return await repo.begin_attempt(transfer, StepName.CREDIT, OWNER, at(0.5), at(45))


async def fail_debit_once(repo: TransferRepository, transfer: Transfer) -> Transfer:
    """A transient failure recorded on the debit (its error stays after it succeeds)."""
    return await repo.record_failure(
        transfer, StepName.DEBIT, OWNER, "UNAVAILABLE: down", at(0.2), at(40)
    )


async def debit_without_next(repo: TransferRepository, transfer: Transfer) -> Transfer:
    """A finish that records no next call: the lease keeps its expiry."""
    return await repo.finish_step(transfer.succeed_step(StepName.DEBIT, at(3)), OWNER)


async def begin_credit(repo: TransferRepository, transfer: Transfer) -> Transfer:
    return await repo.begin_attempt(transfer, StepName.CREDIT, OWNER, at(4), at(50))


SCENARIOS: dict[str, list[Write]] = {
    "completed": [
        lambda r, t: succeed(r, t, StepName.DEBIT),
        lambda r, t: succeed(r, t, StepName.CREDIT),
    ],
    "failed": [lambda r, t: reject(r, t, StepName.DEBIT)],
    "compensated": [
        lambda r, t: succeed(r, t, StepName.DEBIT),
        lambda r, t: reject(r, t, StepName.CREDIT),
        lambda r, t: succeed(r, t, StepName.REFUND),
    ],
    "retried": [
        fail_debit_once,
        lambda r, t: succeed(r, t, StepName.DEBIT),
        lambda r, t: reject(r, t, StepName.CREDIT),
        lambda r, t: succeed(r, t, StepName.REFUND),
    ],
    "unbegun": [
        debit_without_next,
        begin_credit,
        lambda r, t: succeed(r, t, StepName.CREDIT),
    ],
    "counted": [
        begin_credit_early,
        lambda r, t: succeed(r, t, StepName.DEBIT),
        lambda r, t: succeed(r, t, StepName.CREDIT),
    ],
}


async def run_scenarios(repo: TransferRepository, prefix: str, *, together: bool) -> None:
    """Every scenario 3 times; ``together``: all sagas' n-th writes at once (batches)."""
    plans = [
        (f"{prefix}-{name}-{copy}", writes)
        for name, writes in SCENARIOS.items()
        for copy in range(3)
    ]
    current: dict[str, Transfer] = {}

    async def first(transfer_id: str) -> None:
        current[transfer_id] = await repo.insert(saga(transfer_id))

    async def nth(transfer_id: str, write: Write) -> None:
        current[transfer_id] = await write(repo, current[transfer_id])
        stored = await repo.get(transfer_id)
        assert stored == current[transfer_id]  # the returned copy mirrors the disk

    if together:
        await asyncio.gather(*(first(tid) for tid, _ in plans))
    else:
        for tid, _ in plans:
            await first(tid)
    for index in range(max(len(writes) for _, writes in plans)):
        due = [(tid, writes[index]) for tid, writes in plans if index < len(writes)]
        if together:
            await asyncio.gather(*(nth(tid, write) for tid, write in due))
        else:
            for tid, write in due:
                await nth(tid, write)


async def stored_rows(db: Database, prefix: str) -> dict[str, list[dict[str, Any]]]:
    """Every row the sagas whose ids start with ``prefix`` wrote, the prefix replaced."""

    def clean(row: Any) -> dict[str, Any]:
        values = dict(row._mapping)
        values.pop("id", None)  # the outbox's serial key
        return {k: v.replace(prefix, "X") if isinstance(v, str) else v for k, v in values.items()}

    async with db.read() as conn:
        saga_rows = (
            await conn.execute(select(transfers).where(transfers.c.transfer_id.like(f"{prefix}%")))
        ).all()
        step_rows = (
            await conn.execute(
                select(transfer_steps).where(transfer_steps.c.transfer_id.like(f"{prefix}%"))
            )
        ).all()
        outbox_rows = (
            await conn.execute(select(outbox).where(outbox.c.message_id.like(f"{prefix}%")))
        ).all()
    result = {
        "transfers": [clean(r) for r in saga_rows],
        "steps": [clean(r) for r in step_rows],
        "outbox": [
            {**clean(r), "payload": r.payload.replace(prefix.encode(), b"X")} for r in outbox_rows
        ],
    }
    for rows in result.values():
        rows.sort(key=repr)
    return result


async def test_grouped_writes_store_exactly_what_single_writes_store(pg: Database) -> None:
    grouped = TransferRepository(pg)
    single = TransferRepository(pg)
    single.group = None  # the plain transaction path (SQLite's), as the reference
    assert grouped.group is not None

    await run_scenarios(grouped, "grp", together=True)
    await run_scenarios(single, "one", together=False)

    assert grouped.group.batched_writes > grouped.group.batches  # batches really formed
    got, want = await stored_rows(pg, "grp"), await stored_rows(pg, "one")
    assert len(want["transfers"]) == 18 and len(want["outbox"]) == 18
    assert got == want


async def test_a_fenced_out_saga_in_a_batch_writes_nothing(pg: Database) -> None:
    repo = TransferRepository(pg)
    mine = [await repo.insert(saga(f"own-{i}")) for i in range(4)]
    taken = await repo.insert(saga("taken"))
    moved = await repo.insert(saga("moved"))
    ending = await succeed(repo, await repo.insert(saga("ending")), StepName.DEBIT)
    async with pg.transaction() as conn:  # other replicas took two; one moved on
        await conn.execute(
            update(transfers)
            .where(transfers.c.transfer_id.in_(["taken", "ending"]))
            .values(lease_owner="r2")
        )
        await conn.execute(
            update(transfers)
            .where(transfers.c.transfer_id == "moved")
            .values(state=TransferState.DEBITED.value)
        )
    before = [await stored_rows(pg, name) for name in ("taken", "moved", "ending")]

    results = await asyncio.gather(
        *(succeed(repo, t, StepName.DEBIT) for t in [*mine, taken, moved]),
        succeed(repo, ending, StepName.CREDIT),  # a terminal write: no milestone either
        return_exceptions=True,
    )

    assert [type(r) for r in results[:4]] == [Transfer] * 4
    assert all(isinstance(r, LeaseLostError) for r in results[4:])
    after = [await stored_rows(pg, name) for name in ("taken", "moved", "ending")]
    assert after == before  # not a step row, not an outbox row, not a column
    for transfer in mine:
        stored = await repo.get(transfer.transfer_id)
        assert stored is not None and stored.state is TransferState.DEBITED
        assert [(s.name, s.outcome) for s in stored.steps] == [
            (StepName.DEBIT, StepOutcome.SUCCEEDED),
            (StepName.CREDIT, StepOutcome.RUNNING),
        ]


async def test_duplicate_request_ids_in_and_across_batches(pg: Database) -> None:
    repo = TransferRepository(pg)
    await repo.insert(saga("existing"))
    again = replace(saga("again"), request_id="req-existing")  # an earlier request's key
    twins = [replace(saga(f"twin-{i}"), request_id="req-twin") for i in range(2)]

    results = await asyncio.gather(
        *(repo.insert(t) for t in [saga("fresh"), again, *twins]), return_exceptions=True
    )

    assert isinstance(results[0], Transfer)
    assert isinstance(results[1], DuplicateRequestError)
    assert sorted(type(r).__name__ for r in results[2:]) == ["DuplicateRequestError", "Transfer"]
    async with pg.read() as conn:
        ids = set((await conn.execute(select(transfers.c.transfer_id))).scalars())
        step_owners = set((await conn.execute(select(transfer_steps.c.transfer_id))).scalars())
    winner = next(t.transfer_id for t, r in zip(twins, results[2:], strict=True) if r == t)
    assert ids == {"existing", "fresh", winner}
    assert step_owners == ids  # a refused insert leaves no step row behind


async def test_an_error_stays_with_the_write_that_caused_it(pg: Database) -> None:
    repo = TransferRepository(pg)
    group = repo.group
    assert group is not None
    sagas = [await repo.insert(saga(f"s-{i}")) for i in range(5)]
    debited = await asyncio.gather(*(succeed(repo, t, StepName.DEBIT) for t in sagas))
    # s-4's milestone message id is taken already: its terminal write must fail alone.
    async with pg.transaction() as conn:
        await conn.execute(
            outbox.insert().values(
                message_id="s-4:completed",
                routing_key="x",
                message_type="x",
                payload=b"",
                status="published",
                attempts=0,
                created_at=at(0),
            )
        )
    sizes = record_batch_sizes(group)

    results = await asyncio.gather(
        *(succeed(repo, t, StepName.CREDIT) for t in debited), return_exceptions=True
    )

    # s-0 alone, then s-1..s-4 together: that statement fails, each runs again alone.
    assert sizes == [1, 4, 1, 1, 1, 1]
    assert all(isinstance(r, Transfer) for r in results[:4])
    assert isinstance(results[4], IntegrityError)
    stored = [await repo.get(t.transfer_id) for t in sagas]
    states = {t.transfer_id: t.state for t in stored if t is not None}
    assert states == {
        **{f"s-{i}": TransferState.COMPLETED for i in range(4)},
        "s-4": TransferState.DEBITED,
    }


def test_the_statement_stays_within_psycopg_query_cache() -> None:
    """psycopg re-parses (does not cache) a query longer than this on every execute."""
    from psycopg import _queries

    sent = str(_WRITE_MANY.compile(dialect=psycopg_dialect.dialect()))
    assert len(sent) <= _queries.MAX_CACHED_STATEMENT_LENGTH
    assert sent.count("%(") <= _queries.MAX_CACHED_STATEMENT_PARAMS


async def test_an_unreachable_database_fails_every_write_of_the_batch() -> None:
    """No write runs alone again (each would wait for the same dead server)."""
    db = Database.from_settings(
        Settings(database_url="postgresql+psycopg://root@127.0.0.1:1/nowhere")
    )
    repo = TransferRepository(db)
    group = repo.group
    assert group is not None
    sizes = record_batch_sizes(group)
    try:
        results = await asyncio.gather(
            *(repo.insert(saga(f"d-{i}")) for i in range(4)), return_exceptions=True
        )
    finally:
        await db.dispose()
    assert all(isinstance(r, UnavailableError) for r in results)
    assert sizes == [1, 3]  # the lone first write, then the rest together; no retries
