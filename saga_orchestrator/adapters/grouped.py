"""The two writes every transfer makes, as rows for the PostgreSQL group commit.

``saga_orchestrator.group_commit`` sends the writes of sagas that write at the same
moment as one statement; these functions give it the same rows a
:class:`~saga_orchestrator.adapters.unit_of_work.SagaUnitOfWork` would write, in its
column orders (``INSERT_COLUMNS``, ``FINISH_COLUMNS``...).
"""

from __future__ import annotations

from typing import Any

from saga_orchestrator.adapters.rows import insert_values, new_step, step_values
from saga_orchestrator.domain import Step, StepFinish, Transfer
from saga_orchestrator.group_commit import (
    FINISH_COLUMNS,
    INSERT_COLUMNS,
    OUTBOX_COLUMNS,
    STEP_COLUMNS,
    SagaWrite,
)


def _step_row(transfer_id: str, step: Step) -> tuple[Any, ...]:
    values = step_values(transfer_id, step)
    return tuple(values[c] for c in STEP_COLUMNS)


def insert_write(transfer: Transfer) -> SagaWrite:
    """A new saga with its step rows (applied unless its request_id exists)."""
    values = insert_values(transfer)
    return SagaWrite(
        transfer.transfer_id,
        transfer.request_id,
        insert_row=tuple(values[c] for c in INSERT_COLUMNS),
        step_rows=[_step_row(transfer.transfer_id, s) for s in transfer.steps],
    )


def finish_write(finish: StepFinish, owner: str, outbox_row: dict[str, Any] | None) -> SagaWrite:
    """A finished step, fenced on ``finish.before`` (applied only while the fence holds).

    A column the write keeps goes as NULL (``lease_expires_at``, ``failure_reason``);
    a terminal state releases the lease.
    """
    before, after = finish.before, finish.after
    step_rows: list[tuple[Any, ...]] = []
    count_next = None
    if finish.begin_next is not None and finish.next_is_new:
        step_rows.append(_step_row(after.transfer_id, new_step(after, finish.begin_next)))
    elif finish.begin_next is not None:
        count_next = finish.begin_next.value
    outbox_rows = []
    if outbox_row is not None:
        outbox_rows.append((after.transfer_id, *(outbox_row[c] for c in OUTBOX_COLUMNS[1:])))
    finish_row = (
        after.transfer_id,
        owner,
        before.state.value,
        after.state.value,
        after.updated_at,
        after.attempts,
        after.lease_expires_at if finish.begin_next is not None else None,
        after.is_terminal,  # release the lease
        after.failure_reason if finish.records_failure else None,
        after.failure_code if finish.records_failure else None,
        finish.step.value,
        finish.outcome.value,
        finish.step_error or None,
        count_next,
    )
    assert len(finish_row) == len(FINISH_COLUMNS)
    return SagaWrite(
        after.transfer_id,
        None,
        finish_row=finish_row,
        step_rows=step_rows,
        outbox_rows=outbox_rows,
    )
