"""Domain transfer <-> protobuf, in one place (the API and the outbox both need it)."""

from __future__ import annotations

from datetime import UTC, datetime

from google.protobuf.timestamp_pb2 import Timestamp

from saga_orchestrator.domain import StepOutcome, Transfer, TransferState
from wallet.v1 import transfer_pb2

STATE_TO_PROTO: dict[TransferState, int] = {
    TransferState.PENDING: transfer_pb2.TRANSFER_STATE_PENDING,
    TransferState.DEBITED: transfer_pb2.TRANSFER_STATE_DEBITED,
    TransferState.COMPLETED: transfer_pb2.TRANSFER_STATE_COMPLETED,
    TransferState.FAILED: transfer_pb2.TRANSFER_STATE_FAILED,
    TransferState.COMPENSATING: transfer_pb2.TRANSFER_STATE_COMPENSATING,
    TransferState.COMPENSATED: transfer_pb2.TRANSFER_STATE_COMPENSATED,
}
PROTO_TO_STATE = {value: key for key, value in STATE_TO_PROTO.items()}

OUTCOME_TO_PROTO: dict[StepOutcome, int] = {
    StepOutcome.RUNNING: transfer_pb2.TRANSFER_STEP_OUTCOME_RUNNING,
    StepOutcome.SUCCEEDED: transfer_pb2.TRANSFER_STEP_OUTCOME_SUCCEEDED,
    StepOutcome.REJECTED: transfer_pb2.TRANSFER_STEP_OUTCOME_REJECTED,
}


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def timestamp(value: datetime) -> Timestamp:
    """The same value as ``Timestamp.FromDatetime`` (a naive datetime counts as UTC), in
    integer arithmetic and about five times faster: every CreateTransfer answer and
    milestone event carries up to eight of them."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    delta = value - _EPOCH
    return Timestamp(seconds=delta.days * 86_400 + delta.seconds, nanos=delta.microseconds * 1000)


def transfer_to_proto(transfer: Transfer) -> transfer_pb2.Transfer:
    message = transfer_pb2.Transfer(
        transfer_id=transfer.transfer_id,
        request_id=transfer.request_id,
        from_wallet_id=transfer.from_wallet_id,
        to_wallet_id=transfer.to_wallet_id,
        amount=transfer.amount,
        currency=transfer.currency,
        state=STATE_TO_PROTO[transfer.state],  # type: ignore[arg-type]
        failure_reason=transfer.failure_reason,
        failure_code=transfer.failure_code,
        created_at=timestamp(transfer.created_at),
        updated_at=timestamp(transfer.updated_at),
    )
    for step in transfer.steps:
        entry = message.steps.add(
            name=step.name.value,
            outcome=OUTCOME_TO_PROTO[step.outcome],
            attempts=step.attempts,
            error=step.error,
            started_at=timestamp(step.started_at),
        )
        if step.finished_at is not None:
            entry.finished_at.CopyFrom(timestamp(step.finished_at))
    return message
