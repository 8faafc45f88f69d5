"""The outbox event each terminal saga state publishes (``wallet.transfer_<state>``)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from saga_orchestrator.domain import TERMINAL_STATES, Transfer, TransferState
from saga_orchestrator.mapping import transfer_to_proto
from wallet.v1 import events_pb2
from wallet_platform.messaging.outbox.rows import outbox_row
from wallet_platform.observability import tracing

# The saga milestone each terminal state publishes through the outbox.
MILESTONES: dict[TransferState, tuple[str, Any]] = {
    TransferState.COMPLETED: ("completed", events_pb2.TransferCompleted),
    TransferState.FAILED: ("failed", events_pb2.TransferFailed),
    TransferState.COMPENSATED: ("compensated", events_pb2.TransferCompensated),
}


# Every terminal state announces itself, and nothing else does.
assert set(MILESTONES) == TERMINAL_STATES


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
