"""Event type names: the ``wallet_events.type`` column and the ``<type>`` of each
routing key ``wallet.<type>``. Pure Python, so domain code may import it."""

from __future__ import annotations

WALLET_CREATED = "wallet_created"
FUNDS_DEPOSITED = "funds_deposited"
FUNDS_WITHDRAWN = "funds_withdrawn"
TRANSFER_DEBITED = "transfer_debited"
TRANSFER_CREDITED = "transfer_credited"
TRANSFER_REFUNDED = "transfer_refunded"
WALLET_FROZEN = "wallet_frozen"
WALLET_UNFROZEN = "wallet_unfrozen"

# Every wallet log entry type, in the order of the WalletEventType enum.
WALLET_EVENT_TYPES: tuple[str, ...] = (
    WALLET_CREATED,
    FUNDS_DEPOSITED,
    FUNDS_WITHDRAWN,
    TRANSFER_DEBITED,
    TRANSFER_CREDITED,
    TRANSFER_REFUNDED,
    WALLET_FROZEN,
    WALLET_UNFROZEN,
)

# Messages published through the same outbox that are not wallet log entries.
TRANSFER_COMPLETED = "transfer_completed"
TRANSFER_FAILED = "transfer_failed"
TRANSFER_COMPENSATED = "transfer_compensated"
FRAUD_ALERT_RAISED = "fraud_alert_raised"
