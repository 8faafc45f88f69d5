"""Domain transfers <-> rows of ``transfers`` and ``transfer_steps`` (no statements)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from saga_orchestrator.domain import (
    STEP_POSITION,
    Step,
    StepName,
    StepOutcome,
    Transfer,
    TransferState,
)
from wallet_platform.clock import ensure_utc


def _utc(value: datetime | None) -> datetime | None:
    return None if value is None else ensure_utc(value)


def transfer_from_row(row: Any, steps: Sequence[Any] = ()) -> Transfer:
    """A ``transfers`` row and its ``transfer_steps`` rows (in position order)."""
    return Transfer(
        transfer_id=row.transfer_id,
        request_id=row.request_id,
        fingerprint=row.fingerprint,
        from_wallet_id=row.from_wallet_id,
        to_wallet_id=row.to_wallet_id,
        amount=int(row.amount),
        currency=row.currency or "",
        state=TransferState(row.state),
        failure_reason=row.failure_reason or "",
        failure_code=row.failure_code or "",
        attempts=int(row.attempts or 0),
        last_error=row.last_error or "",
        next_attempt_at=_utc(row.next_attempt_at),
        lease_owner=row.lease_owner,
        lease_expires_at=_utc(row.lease_expires_at),
        created_at=ensure_utc(row.created_at),
        updated_at=ensure_utc(row.updated_at),
        steps=[
            Step(
                name=StepName(step.name),
                outcome=StepOutcome(step.outcome),
                attempts=int(step.attempts),
                error=step.error or "",
                started_at=ensure_utc(step.started_at),
                finished_at=_utc(step.finished_at),
            )
            for step in steps
        ],
        audit_id=row.audit_id or "",
        traceparent=row.traceparent,
    )


def insert_values(transfer: Transfer) -> dict[str, Any]:
    """The ``transfers`` row of a new saga."""
    return {
        "transfer_id": transfer.transfer_id,
        "request_id": transfer.request_id,
        "fingerprint": transfer.fingerprint,
        "from_wallet_id": transfer.from_wallet_id,
        "to_wallet_id": transfer.to_wallet_id,
        "amount": transfer.amount,
        "currency": transfer.currency or None,
        "state": transfer.state.value,
        "attempts": transfer.attempts,
        "lease_owner": transfer.lease_owner,
        "lease_expires_at": transfer.lease_expires_at,
        "audit_id": transfer.audit_id or None,
        "traceparent": transfer.traceparent,
        "created_at": transfer.created_at,
        "updated_at": transfer.updated_at,
    }


def step_values(transfer_id: str, step: Step) -> dict[str, Any]:
    """A ``transfer_steps`` row."""
    return {
        "transfer_id": transfer_id,
        "name": step.name.value,
        "position": STEP_POSITION[step.name],
        "outcome": step.outcome.value,
        "attempts": step.attempts,
        "error": step.error or None,
        "started_at": step.started_at,
        "finished_at": step.finished_at,
    }


def new_step(transfer: Transfer, name: StepName) -> Step:
    """The step ``name`` of ``transfer`` (the domain recorded it before the write)."""
    step = transfer.step(name)
    assert step is not None, f"{transfer.transfer_id} has no {name} step"
    return step
